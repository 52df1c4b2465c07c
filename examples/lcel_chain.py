"""An LCEL chain whose prompt emphasizes one instruction (PastaLLM, embedded SmolLM2-135M).

``EmphasizedPromptTemplate`` marks the instruction with ``<em>...</em>``; the template's
output keeps that emphasis as spans, ``PastaLLM`` steers the attention to it, and the string
parser at the end of the chain sees a plain string. Run:

    python examples/lcel_chain.py
"""

from __future__ import annotations

from langchain_core.output_parsers import StrOutputParser

from langchain_pasta import EmphasizedPromptTemplate, PastaLLM

PROMPT = EmphasizedPromptTemplate.from_template(
    "{context}\n<em>Answer in French.</em>\nQuestion: {question}\nAnswer:"
)
INPUTS = {
    "context": "Mary is a doctor. She lives in Oslo and works at the city hospital.",
    "question": "What is Mary's job?",
}


def main() -> None:
    llm = PastaLLM.from_default(max_new_tokens=24, stop=["\nQuestion:", "\n\n"])
    chain = PROMPT | llm | StrOutputParser()
    # alpha=1 multiplies attention by one: the same chain, unsteered.
    unsteered = PROMPT | llm.bind(alpha=1.0) | StrOutputParser()
    print("prompt:", PROMPT.format(**INPUTS).replace("\n", " | "))
    print("steered:", chain.invoke(INPUTS).strip())
    print("unsteered:", unsteered.invoke(INPUTS).strip())


if __name__ == "__main__":
    main()

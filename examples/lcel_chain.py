"""An LCEL chain whose prompt emphasizes the newest fact (PastaLLM, embedded SmolLM2-135M).

``EmphasizedPromptTemplate`` marks the fact with ``<em>...</em>`` in the template's own text
(values filled in later are never emphasized); ``PastaLLM`` steers the attention to it, and the
string parser at the end of the chain sees a plain string. Unsteered, the 135M model gives no
answer here; steered, it answers with the emphasized fact. Run:

    python examples/lcel_chain.py
"""

from __future__ import annotations

from langchain_core.output_parsers import StrOutputParser

from langchain_pasta import EmphasizedPromptTemplate, PastaLLM

PROMPT = EmphasizedPromptTemplate.from_template(
    "{name} lived in Paris for ten years. <em>Last month {name} moved to Berlin.</em>\n"
    "Question: {question}\nAnswer:"
)
INPUTS = {"name": "Alice", "question": "Where does Alice live now?"}


def main() -> None:
    llm = PastaLLM.from_default(max_new_tokens=20, stop=["\nQuestion:", "\n\n"])
    chain = PROMPT | llm | StrOutputParser()
    # alpha=1 multiplies attention by one: the same chain, unsteered.
    unsteered = PROMPT | llm.bind(alpha=1.0) | StrOutputParser()
    print("prompt:", PROMPT.format(**INPUTS).replace("\n", " | "))
    print("steered:", " ".join(chain.invoke(INPUTS).split()))
    print("unsteered:", " ".join(unsteered.invoke(INPUTS).split()))


if __name__ == "__main__":
    main()

"""A chat prompt whose system message is partly emphasized (ChatPasta, embedded SmolLM2-135M).

The emphasis travels in the system message's ``additional_kwargs`` and is mapped through the
model's chat template (ChatML) onto the right tokens. Run:

    python examples/chat_system_prompt.py
"""

from __future__ import annotations

from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate

from langchain_pasta import ChatPasta, EmphasizedChatPromptTemplate

SYSTEM = "You are a helpful assistant. <em>Always answer in one short sentence, in French.</em>"
QUESTION = "What is the capital of Italy?"


def main() -> None:
    chat = ChatPasta.from_default(max_new_tokens=32)
    steered = EmphasizedChatPromptTemplate.from_messages(
        [("system", SYSTEM), ("human", "{question}")]
    )
    # The same text without the markup: nothing emphasized, so nothing is steered.
    plain = ChatPromptTemplate.from_messages(
        [("system", SYSTEM.replace("<em>", "").replace("</em>", "")), ("human", "{question}")]
    )
    parser = StrOutputParser()
    messages = steered.invoke({"question": QUESTION}).to_messages()
    system = messages[0]
    emphasized = [system.content[s:e] for s, e in system.additional_kwargs["pasta_spans"]]
    print("emphasized:", emphasized)
    print("steered:", (steered | chat | parser).invoke({"question": QUESTION}).strip())
    print("unsteered:", (plain | chat | parser).invoke({"question": QUESTION}).strip())


if __name__ == "__main__":
    main()

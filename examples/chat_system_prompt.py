"""A system message whose newest fact is emphasized (ChatPasta, embedded SmolLM2-135M).

The system prompt holds an old fact and a newer one. Unsteered, the 135M model mixes them up
("scheduled for Thursday, but ... actually held on Monday"); with the newer fact emphasized,
it answers with that fact. The emphasis travels in the system message's ``additional_kwargs``
and is mapped through the model's chat template (ChatML) onto the right tokens. Run:

    python examples/chat_system_prompt.py
"""

from __future__ import annotations

from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate

from langchain_pasta import ChatPasta, EmphasizedChatPromptTemplate

SYSTEM = "The meeting was planned for Monday. <em>The meeting has been moved to Thursday.</em>"
QUESTION = "What day is the meeting? Answer in one sentence."


def main() -> None:
    chat = ChatPasta.from_default(max_new_tokens=24)
    steered = EmphasizedChatPromptTemplate.from_messages(
        [("system", SYSTEM), ("human", "{question}")]
    )
    # The same text without the markup: nothing emphasized, so nothing is steered.
    plain = ChatPromptTemplate.from_messages(
        [("system", SYSTEM.replace("<em>", "").replace("</em>", "")), ("human", "{question}")]
    )
    parser = StrOutputParser()
    system = steered.invoke({"question": QUESTION}).to_messages()[0]
    emphasized = [system.content[s:e] for s, e in system.additional_kwargs["pasta_spans"]]
    print("emphasized:", emphasized)
    print("steered:", " ".join((steered | chat | parser).invoke({"question": QUESTION}).split()))
    print("unsteered:", " ".join((plain | chat | parser).invoke({"question": QUESTION}).split()))


if __name__ == "__main__":
    main()

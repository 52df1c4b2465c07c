"""Structured output with grammar-constrained decoding, plus emphasis (ChatPasta, SmolLM2-135M).

``with_structured_output`` constrains decoding with llguidance, so even a 135M model returns
JSON that validates against the schema; the emphasized sentence of the context is what the
steered heads attend to. Run:

    python examples/structured_output.py
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from langchain_pasta import ChatPasta, EmphasizedChatPromptTemplate


class Person(BaseModel):
    """A person mentioned in the text."""

    name: str = Field(description="The person's first name")
    job: Literal["doctor", "nurse", "teacher", "engineer"]
    city: str = Field(description="Where the person lives")


PROMPT = EmphasizedChatPromptTemplate.from_messages(
    [
        ("system", "Extract the person the user asks about, as JSON."),
        ("human", "{noise} <em>{fact}</em>\n\nWho is {name}?"),
    ],
)
INPUTS = {
    "noise": "John is an engineer in Rome.",
    "fact": "Mary is a nurse who lives in Oslo.",
    "name": "Mary",
}


def main() -> None:
    steered_chat = ChatPasta.from_default(max_new_tokens=48)
    # alpha=1 leaves attention as it is; the weights are shared, not loaded twice.
    unsteered_chat = ChatPasta.from_default(max_new_tokens=48, alpha=1.0)
    steered = (PROMPT | steered_chat.with_structured_output(Person)).invoke(INPUTS)
    unsteered = (PROMPT | unsteered_chat.with_structured_output(Person)).invoke(INPUTS)
    print("steered:", steered.model_dump_json())
    print("unsteered:", unsteered.model_dump_json())


if __name__ == "__main__":
    main()

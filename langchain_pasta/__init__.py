"""LangChain integration."""

from langchain_pasta.prompts import (
    SPANS_KEY,
    EmphasisError,
    EmphasizedChatPromptTemplate,
    EmphasizedMessagePromptTemplate,
    EmphasizedPromptTemplate,
    EmphasizedPromptValue,
    emphasize,
    emphasized_message,
    message_spans,
)

__all__ = [
    "SPANS_KEY",
    "EmphasisError",
    "EmphasizedChatPromptTemplate",
    "EmphasizedMessagePromptTemplate",
    "EmphasizedPromptTemplate",
    "EmphasizedPromptValue",
    "emphasize",
    "emphasized_message",
    "message_spans",
]

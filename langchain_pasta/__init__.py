"""LangChain integration."""

from langchain_pasta.chat_models import ChatPasta, ChatTemplateError
from langchain_pasta.llms import PastaLLM
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
    "ChatPasta",
    "ChatTemplateError",
    "EmphasisError",
    "EmphasizedChatPromptTemplate",
    "EmphasizedMessagePromptTemplate",
    "EmphasizedPromptTemplate",
    "EmphasizedPromptValue",
    "PastaLLM",
    "emphasize",
    "emphasized_message",
    "message_spans",
]

"""LangChain integration of PASTA attention steering for local HuggingFace causal LMs.

* :class:`ChatPasta` - chat model (chat templates, tools, structured output, agents);
* :class:`PastaLLM` - text-completion LLM;
* :class:`EmphasizedPromptTemplate`, :class:`EmphasizedChatPromptTemplate`,
  :func:`emphasize`, :func:`emphasized_message` - say what to emphasize;
* :class:`AutoEmphasis` - let the model pick the passage of a chain's context to emphasize.
"""

from langchain_pasta.auto import AutoEmphasis
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
from pastalib import __version__ as __version__

__all__ = [
    "SPANS_KEY",
    "AutoEmphasis",
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

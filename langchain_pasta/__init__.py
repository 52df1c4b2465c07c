"""LangChain integration of PASTA attention steering for local HuggingFace causal LMs.

* :class:`ChatPasta` - chat model (chat templates, tools, structured output, agents);
* :class:`PastaLLM` - text-completion LLM;
* :class:`EmphasizedPromptTemplate`, :class:`EmphasizedChatPromptTemplate`,
  :func:`emphasize`, :func:`emphasized_message` - say what to emphasize.
"""

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

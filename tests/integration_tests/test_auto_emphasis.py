"""AutoEmphasis on the embedded model: the likelihood ranker finds the key sentence."""

from __future__ import annotations

import pytest
from langchain_core.documents import Document
from transformers import PreTrainedModel, PreTrainedTokenizerFast

from langchain_pasta import AutoEmphasis, ChatPasta, EmphasizedChatPromptTemplate
from langchain_pasta.prompts import SPANS_KEY

pytestmark = pytest.mark.integration

# Invented facts, so the model cannot answer from memory; only the key sentence names the
# question's entity.
SENTENCES = [
    "The Varnel Bridge was painted green in 1987.",
    "Ostrig is a small fishing town on the northern coast.",
    "Captain Tellaby Voss keeps her sailboat in the harbour of Quillport.",
    "The annual lantern festival attracts thousands of visitors.",
    "Most houses in the valley have red tile roofs.",
    "The old bakery on Mill Street sells a famous walnut bread.",
]
KEY = SENTENCES[2]
QUESTION = "Where does Tellaby Voss keep her sailboat?"


@pytest.fixture(scope="module")
def chat(default_model: tuple[PreTrainedModel, PreTrainedTokenizerFast]) -> ChatPasta:
    model, tokenizer = default_model
    return ChatPasta(model=model, tokenizer=tokenizer, max_new_tokens=8)


def test_likelihood_picks_the_key_sentence_of_a_string(chat: ChatPasta) -> None:
    context = " ".join(SENTENCES)
    out = AutoEmphasis(llm=chat, k=1).invoke({"context": context, "question": QUESTION})
    value = out["context"]
    start = context.index(KEY)
    assert value.spans == [(start, start + len(KEY))]


def test_likelihood_picks_the_key_document_through_the_template(chat: ChatPasta) -> None:
    documents = [Document(page_content=sentence) for sentence in SENTENCES]
    prompt = EmphasizedChatPromptTemplate.from_messages(
        [("human", "Context:\n{context}\n\nQuestion: {question}")]
    )
    chain = AutoEmphasis(llm=chat, k=1) | prompt
    (message,) = chain.invoke({"context": documents, "question": QUESTION}).to_messages()
    content = str(message.content)
    [[start, end]] = message.additional_kwargs[SPANS_KEY]
    assert content[start:end] == KEY
    assert start == len("Context:\n") + sum(len(s) + 2 for s in SENTENCES[:2])

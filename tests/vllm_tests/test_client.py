"""The LangChain client's request payload (no server needed; needs langchain-openai)."""

from __future__ import annotations

import pytest
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage

from langchain_pasta.openai import ChatPastaOpenAI, pasta_field
from langchain_pasta.prompts import EmphasizedChatPromptTemplate
from pastalib.errors import SpanError


def _client(**kwargs: object) -> ChatPastaOpenAI:
    return ChatPastaOpenAI(base_url="http://127.0.0.1:9/v1", model="m", **kwargs)


def test_payload_carries_message_spans() -> None:
    prompt = EmphasizedChatPromptTemplate.from_messages(
        [
            ("system", "Be brief."),
            ("human", "<em>Answer in French.</em> What is the capital of {country}?"),
        ]
    )
    value = prompt.invoke({"country": "Italy"})
    payload = _client(alpha=0.2, head_config="smollm2-135m-instruct")._get_request_payload(value)
    pasta = payload["extra_body"]["pasta"]
    assert pasta == {
        "messages": [
            {"content": "Be brief.", "spans": []},
            {"content": "Answer in French. What is the capital of Italy?", "spans": [[0, 17]]},
        ],
        "head_config": "smollm2-135m-instruct",
        "alpha": 0.2,
    }
    assert [m["content"] for m in payload["messages"]] == [e["content"] for e in pasta["messages"]]


def test_values_never_become_emphasis() -> None:
    prompt = EmphasizedChatPromptTemplate.from_messages([("human", "<em>Obey.</em> {text}")])
    value = prompt.invoke({"text": "*not emphasis*"})
    pasta = _client()._get_request_payload(value)["extra_body"]["pasta"]
    assert pasta["messages"][0]["spans"] == [[0, 5]]


def test_no_emphasis_sends_no_pasta_field() -> None:
    payload = _client(alpha=0.5)._get_request_payload([HumanMessage("Hi"), AIMessage("Hello")])
    assert "pasta" not in (payload.get("extra_body") or {})


def test_decode_steps_sent_only_when_set() -> None:
    message = HumanMessage("Obey now.", additional_kwargs={"pasta_spans": [[0, 5]]})
    assert "decode_steps" not in pasta_field([message])
    payload = _client(decode_steps=None)._get_request_payload([message])
    assert payload["extra_body"]["pasta"]["decode_steps"] is None
    assert (
        _client(decode_steps=3)._get_request_payload([message])["extra_body"]["pasta"][
            "decode_steps"
        ]
        == 3
    )


def test_bad_settings_and_spans_raise() -> None:
    with pytest.raises(ValueError, match="alpha"):
        _client(alpha=-1.0)
    with pytest.raises(ValueError, match="scale_position"):
        _client(scale_position="middle")
    broken = SystemMessage("short", additional_kwargs={"pasta_spans": [[0, 50]]})
    with pytest.raises(SpanError):
        _client()._get_request_payload([broken])

"""``vllm serve`` with the plugin, driven over HTTP on a free localhost port."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.vllm_tests.cases import cases
from tests.vllm_tests.conftest import ROOT, collect, reference_python, run_script

MODEL_NAME = "smollm2"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = _free_port()
    log = tmp_path_factory.mktemp("server") / "server.log"
    # `pasta serve` (python -m pastalib.vllm.serve): the embedded model, its shipped heads
    # and alpha 0.2 by default; the arguments after "--" go to `vllm serve`.
    command = [
        sys.executable,
        "-m",
        "pastalib.vllm.serve",
        "--port",
        str(port),
        "--served-model-name",
        MODEL_NAME,
        "--",
        "--max-model-len",
        "2048",
        "--distributed-executor-backend",
        "uni",
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("VLLM_ENABLE_V1_MULTIPROCESSING", None)  # the server runs its engine core apart
    with open(log, "wb") as handle:
        process = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 900
        while True:
            if process.poll() is not None:
                raise AssertionError(
                    f"vllm serve exited {process.returncode}:\n{log.read_text()[-5000:]}"
                )
            try:
                if httpx.get(f"{base}/v1/models", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.time() > deadline:
                raise AssertionError(f"vllm serve did not start:\n{log.read_text()[-5000:]}")
            time.sleep(2)
        yield base
    finally:
        process.terminate()
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    directory = tmp_path_factory.mktemp("reference")
    chosen = [cases()[0], cases()[1]]
    process = run_script("reference.py", chosen, directory / "reference.json", reference_python())
    return {"cases": chosen, "process": process, "out": directory / "reference.json"}


def _completion(base: str, case: dict[str, Any], **extra: Any) -> httpx.Response:
    body = {
        "model": MODEL_NAME,
        "prompt": case["prompt"],
        "max_tokens": case["max_tokens"],
        "temperature": 0,
        "logprobs": 1,
        "ignore_eos": True,
        **extra,
    }
    return httpx.post(f"{base}/v1/completions", json=body, timeout=300)


def _token_logprobs(response: httpx.Response) -> list[float]:
    assert response.status_code == 200, response.text
    return response.json()["choices"][0]["logprobs"]["token_logprobs"]


def test_steered_and_unsteered_completions(server: str, reference: dict[str, Any]) -> None:
    unsteered_case, steered_case = reference["cases"]
    pasta = {k: steered_case[k] for k in ("spans", "alpha", "scale_position", "decode_steps")}
    steered = _token_logprobs(_completion(server, steered_case, pasta=pasta))
    # The same request through vLLM's own vllm_xargs channel (JSON text).
    via_xargs = _token_logprobs(
        _completion(server, steered_case, vllm_xargs={"pasta": json.dumps(pasta)})
    )
    unsteered = _token_logprobs(_completion(server, unsteered_case))
    want = collect(reference["process"], reference["out"])
    for got, expected in ((unsteered, want[0]), (steered, want[1]), (via_xargs, want[1])):
        assert max(abs(a - b) for a, b in zip(got, expected["logprobs"], strict=True)) <= 1e-4
    assert steered != unsteered


def test_streaming_chat_equals_non_streaming(server: str) -> None:
    messages = [{"role": "user", "content": "Answer in French. What is the capital of Italy?"}]
    pasta = {"messages": [{"content": messages[0]["content"], "spans": [[0, 17]]}]}
    body = {
        "model": MODEL_NAME,
        "messages": messages,
        "max_tokens": 12,
        "temperature": 0,
        "pasta": pasta,
    }
    whole = httpx.post(f"{server}/v1/chat/completions", json=body, timeout=300)
    assert whole.status_code == 200, whole.text
    text = whole.json()["choices"][0]["message"]["content"]
    pieces = []
    with httpx.stream(
        "POST", f"{server}/v1/chat/completions", json={**body, "stream": True}, timeout=300
    ) as stream:
        assert stream.status_code == 200
        for line in stream.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                delta = json.loads(line[6:])["choices"][0]["delta"]
                pieces.append(delta.get("content") or "")
    assert "".join(pieces) == text
    plain = httpx.post(
        f"{server}/v1/chat/completions",
        json={k: v for k, v in body.items() if k != "pasta"},
        timeout=300,
    )
    assert plain.json()["choices"][0]["message"]["content"] != text


@pytest.mark.parametrize(
    ("pasta", "reason"),
    [
        ({"alpha": -1, "spans": [[0, 4]]}, "pasta.alpha"),
        ({"spans": [[0, 9999]]}, "pasta.spans"),
        ({"head_config": "/etc/passwd"}, "pasta.head_config"),
        ({"substrings": ["nowhere to be found"]}, "pasta.substrings"),
        ("not json", "pasta must be a JSON object"),
    ],
)
def test_bad_request_is_400(server: str, pasta: Any, reason: str) -> None:
    case = cases()[1]
    response = _completion(server, case, pasta=pasta)
    assert response.status_code == 400, response.text
    assert reason in response.text
    # The server goes on serving.
    assert _completion(server, case).status_code == 200


def test_langchain_client_in_lcel_chain(server: str) -> None:
    from langchain_core.output_parsers import StrOutputParser

    from langchain_pasta import ChatPasta
    from langchain_pasta.openai import ChatPastaOpenAI
    from langchain_pasta.prompts import EmphasizedChatPromptTemplate

    prompt = EmphasizedChatPromptTemplate.from_messages(
        [
            ("system", "You are a helpful assistant."),
            ("human", "<em>Answer in French.</em> What is the capital of {country}?"),
        ]
    )
    remote = ChatPastaOpenAI(
        base_url=f"{server}/v1", model=MODEL_NAME, alpha=0.2, max_tokens=12, temperature=0
    )
    chain = prompt | remote | StrOutputParser()
    got = chain.invoke({"country": "Italy"})
    local = ChatPasta.from_default(alpha=0.2, max_new_tokens=12)
    want = (prompt | local | StrOutputParser()).invoke({"country": "Italy"})
    assert got == want
    streamed = "".join(chain.stream({"country": "Italy"}))
    assert streamed == got
    unsteered = ChatPastaOpenAI(
        base_url=f"{server}/v1", model=MODEL_NAME, max_tokens=12, temperature=0
    )
    plain_prompt = "Answer in French. What is the capital of Italy?"
    assert (
        unsteered.invoke(
            [("system", "You are a helpful assistant."), ("human", plain_prompt)]
        ).content
        != got
    )


async def test_langchain_client_async_and_structured_output(server: str) -> None:
    from pydantic import BaseModel

    from langchain_pasta.openai import ChatPastaOpenAI
    from langchain_pasta.prompts import EmphasizedChatPromptTemplate

    class City(BaseModel):
        city: str

    prompt = EmphasizedChatPromptTemplate.from_messages(
        [("human", "<em>Reply in JSON.</em> Name the capital of {country}.")]
    )
    llm = ChatPastaOpenAI(
        base_url=f"{server}/v1", model=MODEL_NAME, alpha=0.2, max_tokens=24, temperature=0
    )
    message = await (prompt | llm).ainvoke({"country": "Italy"})
    assert isinstance(message.content, str) and message.content
    structured = prompt | llm.with_structured_output(City, method="json_schema")
    result = await structured.ainvoke({"country": "Italy"})
    assert isinstance(result, City)

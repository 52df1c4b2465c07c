"""Offline ``vllm.LLM`` with the plugin against the in-process engine and plain vLLM."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from tests.vllm_tests.cases import MAX_TOKENS, cases, pasta_field
from tests.vllm_tests.conftest import ENGINE_ARGS, collect, reference_python, run_script

TOLERANCE = 1e-4


@pytest.fixture(scope="session")
def expectations(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Starts the in-process reference and plain vLLM; collected when first needed."""
    directory = tmp_path_factory.mktemp("expect")
    all_cases = cases()
    reference = run_script(
        "reference.py", all_cases, directory / "reference.json", reference_python()
    )
    plain = run_script("plain_vllm.py", all_cases, directory / "plain.json")
    return {
        "cases": all_cases,
        "reference": (reference, directory / "reference.json"),
        "plain": (plain, directory / "plain.json"),
    }


@pytest.fixture(scope="session")
def llm(expectations: dict[str, Any]) -> Any:
    from vllm import LLM

    from pastalib.models import default_model_dir
    from pastalib.vllm import engine_kwargs

    path = str(default_model_dir())
    return LLM(
        model=path,
        **ENGINE_ARGS,
        **engine_kwargs(path, head_config="smollm2-135m-instruct", alpha=0.2),
    )


def _params(case: dict[str, Any], **extra: Any) -> Any:
    from vllm import SamplingParams

    pasta = pasta_field(case)
    return SamplingParams(
        max_tokens=case.get("max_tokens", MAX_TOKENS),
        temperature=0,
        logprobs=1,
        ignore_eos=True,
        extra_args={"pasta": pasta} if pasta is not None else None,
        **extra,
    )


def _run(llm: Any, batch: list[dict[str, Any]]) -> list[dict[str, Any]]:
    outputs = llm.generate(
        [c["prompt"] for c in batch], [_params(c) for c in batch], use_tqdm=False
    )
    results = []
    for output in outputs:
        completion = output.outputs[0]
        ids = list(completion.token_ids)
        logprobs = [step[t].logprob for step, t in zip(completion.logprobs, ids, strict=True)]
        results.append({"token_ids": ids, "logprobs": logprobs})
    return results


@pytest.fixture(scope="session")
def mixed(llm: Any, expectations: dict[str, Any]) -> list[dict[str, Any]]:
    """All 24 cases in one batch (steered and unsteered, different alpha/spans per request)."""
    return _run(llm, expectations["cases"])


def test_steered_matches_in_process_engine(
    mixed: list[dict[str, Any]], expectations: dict[str, Any]
) -> None:
    reference = collect(*expectations["reference"])
    all_cases = expectations["cases"]
    assert sum(c["spans"] is not None for c in all_cases) >= 16
    worst = 0.0
    for index, (case, got, want) in enumerate(zip(all_cases, mixed, reference, strict=True)):
        assert got["token_ids"] == want["token_ids"], (index, case)
        diff = max(abs(a - b) for a, b in zip(got["logprobs"], want["logprobs"], strict=True))
        worst = max(worst, diff)
        assert diff <= TOLERANCE, (index, case, diff)
    print(f"worst logprob difference vs in-process engine: {worst:.2e}")


def test_steering_changes_outputs(
    mixed: list[dict[str, Any]], expectations: dict[str, Any]
) -> None:
    """Guards against a plugin that silently does nothing."""
    all_cases = expectations["cases"]
    plain_by_prompt = {
        c["prompt"]: r for c, r in zip(all_cases, mixed, strict=True) if c["spans"] is None
    }
    changed = sum(
        r["logprobs"] != plain_by_prompt[c["prompt"]]["logprobs"]
        for c, r in zip(all_cases, mixed, strict=True)
        if c["spans"] is not None
    )
    assert changed == sum(c["spans"] is not None for c in all_cases)


def test_unsteered_bit_identical_to_plain_vllm(
    mixed: list[dict[str, Any]], expectations: dict[str, Any]
) -> None:
    plain = collect(*expectations["plain"])
    checked = 0
    for case, got, want in zip(expectations["cases"], mixed, plain, strict=True):
        if case["spans"] is None:
            assert got == want, case["prompt"]
            checked += 1
    assert checked == 8


def test_alone_equals_in_batch_of_16(llm: Any, expectations: dict[str, Any]) -> None:
    all_cases = expectations["cases"]
    target = all_cases[1]
    assert target["spans"] is not None
    alone = _run(llm, [target])[0]
    batch = [target, *all_cases[2:17]]
    assert len(batch) == 16 and sum(c["spans"] is None for c in batch) >= 4
    inside = _run(llm, batch)
    assert alone["token_ids"] == inside[0]["token_ids"]
    # vLLM itself is not batch-invariant (GEMM shapes change with the batch), so logprobs
    # agree to the tolerance, not bit for bit; the unsteered rows show vLLM's own spread.
    steered_diff = max(
        abs(a - b) for a, b in zip(alone["logprobs"], inside[0]["logprobs"], strict=True)
    )
    assert steered_diff <= TOLERANCE
    plain_index = next(i for i, c in enumerate(batch) if c["spans"] is None)
    plain_alone = _run(llm, [batch[plain_index]])[0]
    assert plain_alone["token_ids"] == inside[plain_index]["token_ids"]
    plain_diff = max(
        abs(a - b)
        for a, b in zip(plain_alone["logprobs"], inside[plain_index]["logprobs"], strict=True)
    )
    print(
        f"alone vs batch of 16: steered {steered_diff:.2e}, unsteered (plain vLLM) {plain_diff:.2e}"
    )


def test_prefix_cache_keeps_emphases_apart(llm: Any, expectations: dict[str, Any]) -> None:
    """The same prompt, unsteered after steered and under another emphasis, stays exact."""
    all_cases = expectations["cases"]
    plain = collect(*expectations["plain"])
    reference = collect(*expectations["reference"])
    for index in (1, 2, 0):  # steered A, steered B, then unsteered, one request at a time
        got = _run(llm, [all_cases[index]])[0]
        want = plain[index] if all_cases[index]["spans"] is None else reference[index]
        # Alone vs plain vLLM's batch of 24: equal up to vLLM's own batch variance (~1e-5);
        # a wrongly shared steered prefix would move logprobs by ~1e-1.
        assert got["token_ids"] == want["token_ids"]
        diff = max(abs(a - b) for a, b in zip(got["logprobs"], want["logprobs"], strict=True))
        assert diff <= TOLERANCE


def test_substrings_and_token_spans_match_char_spans(
    llm: Any, expectations: dict[str, Any]
) -> None:
    from transformers import AutoTokenizer
    from vllm import SamplingParams

    from pastalib.models import default_model_dir

    case = expectations["cases"][1]
    prompt = case["prompt"]
    start, end = case["spans"][0]
    tokenizer = AutoTokenizer.from_pretrained(str(default_model_dir()))
    encoded = tokenizer(prompt, return_offsets_mapping=True)
    tokens = [i for i, (s, e) in enumerate(encoded["offset_mapping"]) if e > start and s < end]
    base = {"alpha": case["alpha"], "scale_position": case["scale_position"]}
    variants = [
        {**base, "spans": case["spans"]},
        {**base, "substrings": [prompt[start:end]]},
        {**base, "substrings": [{"text": prompt[start:end], "occurrence": -1}]},
        {**base, "token_spans": [[tokens[0], tokens[-1] + 1]]},
    ]
    params = [
        SamplingParams(
            max_tokens=MAX_TOKENS,
            temperature=0,
            logprobs=1,
            ignore_eos=True,
            extra_args={"pasta": v},
        )
        for v in variants
    ]
    outputs = llm.generate([prompt] * len(variants), params, use_tqdm=False)
    logprobs = [
        [
            step[t].logprob
            for step, t in zip(o.outputs[0].logprobs, o.outputs[0].token_ids, strict=True)
        ]
        for o in outputs
    ]
    assert all(lp == logprobs[0] for lp in logprobs)
    assert math.isfinite(logprobs[0][0])


@pytest.mark.parametrize(
    ("pasta", "field"),
    [
        ({"alpha": -1}, "pasta.alpha"),
        ({"alpha": "x"}, "pasta.alpha"),
        ({"scale_position": "middle"}, "pasta.scale_position"),
        ({"decode_steps": -2}, "pasta.decode_steps"),
        ({"spans": [[5, 2]]}, "pasta.spans"),
        ({"spans": "0-4"}, "pasta.spans"),
        ({"head_config": "/etc/passwd"}, "pasta.head_config"),
        ({"head_config": {"99": [0]}, "spans": [[0, 4]]}, "pasta.head_config: Layer 99"),
        ({"colour": 1}, "Unknown pasta field"),
        ({"spans": [[0, 10_000]]}, "ends past the end"),
        ({"substrings": ["not in the prompt at all"]}, "does not occur"),
        ({"substrings": [{"text": "the", "occurrence": 40}]}, "out of range"),
        ({"token_spans": [[0, 9999]]}, "pasta.token_spans"),
    ],
)
def test_bad_input_raises_value_error(llm: Any, pasta: dict[str, Any], field: str) -> None:
    from vllm import SamplingParams
    from vllm.exceptions import VLLMValidationError

    params = SamplingParams(max_tokens=2, extra_args={"pasta": pasta})
    # Shape errors come from the processor's validate_params, which vLLM re-raises as
    # VLLMValidationError (HTTP 400); resolution errors are pastalib's ValueErrors.
    with pytest.raises((ValueError, VLLMValidationError), match=field.replace(".", r"\.")):
        llm.generate(["What is the capital of France? The capital is"], params, use_tqdm=False)


def test_engine_survives_bad_input(llm: Any, expectations: dict[str, Any]) -> None:
    """After rejected requests the engine still serves exact results."""
    reference = collect(*expectations["reference"])
    got = _run(llm, [expectations["cases"][1]])[0]
    assert got["token_ids"] == reference[1]["token_ids"]


def test_unsupported_architecture_is_refused(tmp_path: Path) -> None:
    from pastalib.errors import UnsupportedModelError
    from pastalib.vllm import engine_kwargs

    (tmp_path / "config.json").write_text('{"architectures": ["GPT2LMHeadModel"]}')
    with pytest.raises(UnsupportedModelError, match="GPT2LMHeadModel"):
        engine_kwargs(tmp_path)

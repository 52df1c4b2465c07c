"""Pure tests of the plugin's request parsing, span resolution and tensor-parallel mapping.

They need no vLLM (only pastalib and the embedded model's tokenizer) and run in any venv.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch

from pastalib.errors import (
    ChatTemplateError,
    HeadConfigError,
    ParameterError,
    SpanError,
    UnsupportedModelError,
)
from pastalib.vllm.model import padded_head_size
from pastalib.vllm.params import ResolvedPasta, ServerDefaults, parse, resolve
from pastalib.vllm.tp import heads_per_rank, local_heads

HEADS = {18: [0, 1, 2], 20: [4]}
DEFAULTS = ServerDefaults(head_config=HEADS, alpha=0.2)


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    from transformers import AutoTokenizer

    from pastalib.models import default_model_dir

    return AutoTokenizer.from_pretrained(str(default_model_dir()))


def _pasta_mask(
    tokenizer: Any, text: str, spans: list[tuple[int, int]], position: str
) -> list[bool]:
    """The in-process engine's scaled positions, through pastalib's own functions."""
    from pastalib.spans import normalize_spans, token_mask_from_spans
    from pastalib.steering import prompt_bias

    encoded = tokenizer([text], return_tensors="pt", return_offsets_mapping=True)
    emphasis = token_mask_from_spans(
        encoded["offset_mapping"], encoded["attention_mask"], [normalize_spans(spans, len(text))]
    )
    return (prompt_bias(emphasis, encoded["attention_mask"], 0.5, position)[0] != 0).tolist()


def _scaled_mask(resolved: ResolvedPasta, length: int) -> list[bool]:
    mask = [False] * length
    for start, end in resolved.scaled:
        mask[start:end] = [True] * (end - start)
    return mask


@pytest.mark.parametrize("position", ["exclude", "include"])
def test_char_spans_resolve_like_in_process(tokenizer: Any, position: str) -> None:
    text = "Answer in French. What is the capital of Italy? Reply now."
    spans = [(0, 17), (48, 53), (50, 58)]  # overlapping spans form a union
    ids = tokenizer(text)["input_ids"]
    resolved = resolve(
        parse({"spans": [list(s) for s in spans], "scale_position": position, "alpha": 0.5}),
        ids,
        tokenizer,
        DEFAULTS,
        30,
        9,
    )
    assert _scaled_mask(resolved, len(ids)) == _pasta_mask(tokenizer, text, spans, position)
    assert resolved.log_alpha == math.log(0.5)
    assert resolved.heads == HEADS


def test_substring_occurrence_and_token_spans(tokenizer: Any) -> None:
    text = "Say yes. Then say yes again. Finally say yes."
    ids = tokenizer(text)["input_ids"]
    last = text.rfind("yes")
    by_substring = resolve(
        parse({"substrings": [{"text": "yes", "occurrence": -1}]}), ids, tokenizer, DEFAULTS, 30, 9
    )
    by_span = resolve(parse({"spans": [[last, last + 3]]}), ids, tokenizer, DEFAULTS, 30, 9)
    assert by_substring == by_span
    emphasized = [
        i for i, m in enumerate(_pasta_mask(tokenizer, text, [(last, last + 3)], "include")) if m
    ]
    by_tokens = resolve(
        parse({"token_spans": [[emphasized[0], emphasized[-1] + 1]]}),
        ids,
        tokenizer,
        DEFAULTS,
        30,
        9,
    )
    assert by_tokens == by_span


def test_message_spans_follow_render_chat(tokenizer: Any) -> None:
    from pastalib.chat import render_chat

    messages = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Answer in French. What is the capital of Italy?"},
    ]
    spans = [[], [(0, 17)]]
    text, placed = render_chat(tokenizer, messages, spans)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    resolved = resolve(
        parse(
            {
                "messages": [
                    {"content": m["content"], "spans": [list(s) for s in sp]}
                    for m, sp in zip(messages, spans, strict=True)
                ]
            }
        ),
        ids,
        tokenizer,
        DEFAULTS,
        30,
        9,
    )
    assert _scaled_mask(resolved, len(ids)) == _pasta_mask(tokenizer, text, placed, "exclude")
    with pytest.raises(ChatTemplateError, match=r"pasta\.messages\[0\]"):
        resolve(
            parse({"messages": [{"content": "never said", "spans": [[0, 5]]}]}),
            ids,
            tokenizer,
            DEFAULTS,
            30,
            9,
        )


def test_no_emphasis_does_not_steer(tokenizer: Any) -> None:
    ids = tokenizer("Hello there")["input_ids"]
    assert not resolve(parse({}), ids, tokenizer, DEFAULTS, 30, 9).steers
    assert not resolve(
        parse({"spans": [[0, 5]], "alpha": 1.0}), ids, tokenizer, DEFAULTS, 30, 9
    ).steers


def test_cache_salt_separates_emphases(tokenizer: Any) -> None:
    ids = tokenizer("Answer in French. What is the capital of Italy?")["input_ids"]
    salts = {
        resolve(parse(p), ids, tokenizer, DEFAULTS, 30, 9).cache_salt()
        for p in (
            {"spans": [[0, 17]]},
            {"spans": [[0, 6]]},
            {"spans": [[0, 17]], "alpha": 0.3},
            {"spans": [[0, 17]], "decode_steps": 1},
            {"spans": [[0, 17]], "head_config": {"18": [0]}},
        )
    }
    assert len(salts) == 5


@pytest.mark.parametrize(
    ("raw", "error", "field"),
    [
        ([1, 2], ParameterError, "pasta must be an object"),
        ("{bad json", ParameterError, "JSON object"),
        ({"alpha": 0}, ParameterError, "pasta.alpha"),
        ({"alpha": math.inf}, ParameterError, "pasta.alpha"),
        ({"alpha": True}, ParameterError, "pasta.alpha"),
        ({"scale_position": "all"}, ParameterError, "pasta.scale_position"),
        ({"decode_steps": 1.5}, ParameterError, "pasta.decode_steps"),
        ({"spans": [[1]]}, ParameterError, "pasta.spans"),
        ({"spans": [[3, 3]]}, SpanError, "pasta.spans"),
        ({"token_spans": [["a", 2]]}, ParameterError, "pasta.token_spans"),
        ({"substrings": [""]}, ParameterError, "pasta.substrings"),
        ({"substrings": [{"text": "a", "occurrence": "1"}]}, ParameterError, "pasta.substrings"),
        ({"messages": ["hi"]}, ParameterError, r"pasta.messages\[0\]"),
        ({"messages": [{"content": "hi", "spans": [[0, 9]]}]}, SpanError, r"pasta.messages\[0\]"),
        ({"head_config": "../secrets.json"}, ParameterError, "pasta.head_config"),
        ({"head_config": 3}, ParameterError, "pasta.head_config"),
        ({"head_config": "layers:18-29@0"}, ParameterError, "alpha after '@'"),
        ({"head_config": "layers:18-29@nan"}, ParameterError, "alpha after '@'"),
        ({"head_config": "layers:x@0.3"}, ParameterError, "layer range"),
        ({"head_config": "../secrets.json@0.3"}, ParameterError, "cannot name a file"),
        ({"extra": 1}, ParameterError, "Unknown pasta field"),
    ],
)
def test_parse_rejects_malformed_fields(raw: Any, error: type[Exception], field: str) -> None:
    with pytest.raises(error, match=field):
        parse(raw)
    assert issubclass(error, ValueError)  # vLLM turns ValueError into HTTP 400


def test_resolution_errors_name_the_field(tokenizer: Any) -> None:
    ids = tokenizer("Short prompt.")["input_ids"]
    with pytest.raises(SpanError, match=r"pasta\.spans: .*ends past the end"):
        resolve(parse({"spans": [[0, 99]]}), ids, tokenizer, DEFAULTS, 30, 9)
    with pytest.raises(SpanError, match=r"pasta\.substrings: .*does not occur"):
        resolve(parse({"substrings": ["absent"]}), ids, tokenizer, DEFAULTS, 30, 9)
    with pytest.raises(SpanError, match=r"pasta\.token_spans"):
        resolve(parse({"token_spans": [[0, 99]]}), ids, tokenizer, DEFAULTS, 30, 9)
    with pytest.raises(HeadConfigError, match=r"pasta\.head_config: .*head 9 is out of range"):
        resolve(
            parse({"spans": [[0, 5]], "head_config": {"3": [9]}}), ids, tokenizer, DEFAULTS, 30, 9
        )


@pytest.mark.parametrize(
    ("head_config", "extra", "heads", "alpha"),
    [
        ("layers:18-19@0.3", {}, {18: list(range(9)), 19: list(range(9))}, 0.3),
        ("layers:18-19@0.3", {"alpha": 0.05}, {18: list(range(9)), 19: list(range(9))}, 0.05),
        ("layers:18-19", {}, {18: list(range(9)), 19: list(range(9))}, 0.2),  # the server's
        ("smollm2-135m-instruct@0.5", {}, {n: list(range(9)) for n in range(18, 30)}, 0.5),
        ("smollm2-135m-instruct", {}, {n: list(range(9)) for n in range(18, 30)}, 0.2),
    ],
)
def test_request_head_config_with_alpha_resolves_like_in_process(
    tokenizer: Any, head_config: str, extra: dict[str, Any], heads: Any, alpha: float
) -> None:
    ids = tokenizer("Answer in French. What is the capital of Italy?")["input_ids"]
    request = parse({"spans": [[0, 17]], "head_config": head_config, **extra})
    resolved = resolve(request, ids, tokenizer, ServerDefaults(head_config=HEADS, alpha=0.2), 30, 9)
    assert resolved.heads == heads
    assert resolved.log_alpha == pytest.approx(math.log(alpha))


def test_resolved_round_trip() -> None:
    resolved = ResolvedPasta(
        scaled=((0, 3), (7, 9)), log_alpha=math.log(0.2), heads={18: [1, 2]}, decode_steps=4
    )
    assert ResolvedPasta.from_json(resolved.to_json()) == resolved


def test_tensor_parallel_head_mapping() -> None:
    config = {0: [0, 1, 4, 8], 5: [7], 6: [2]}
    # 9 heads over 3 ranks: 0-2, 3-5, 6-8.
    assert local_heads(config, 9, 3, 0) == {0: [0, 1], 6: [2]}
    assert local_heads(config, 9, 3, 1) == {0: [1]}
    assert local_heads(config, 9, 3, 2) == {0: [2], 5: [1]}
    # Every global head lands on exactly one rank.
    for tp in (1, 2, 4, 8):
        union: dict[int, set[int]] = {}
        heads = {1: list(range(0, 32, 3)), 2: [31]}
        for rank in range(tp):
            for layer, local in local_heads(heads, 32, tp, rank).items():
                per = heads_per_rank(32, tp)
                union.setdefault(layer, set()).update(rank * per + h for h in local)
        assert union == {layer: set(h) for layer, h in heads.items()}
    with pytest.raises(UnsupportedModelError, match="9 attention heads"):
        heads_per_rank(9, 2)


def test_worker_plan_places_bias_and_switch() -> None:
    from pastalib.vllm.worker import BatchState, RowState

    state = BatchState()
    steering = ResolvedPasta(
        scaled=((1, 3),), log_alpha=-1.0, heads={2: [0, 4], 5: [8]}, decode_steps=1
    )
    state.rows[1] = RowState(steering, prompt_len=4)
    # Row 0 (unsteered): 2 decode tokens... row 0 has 3 tokens, row 1 a 4-token prefill
    positions = torch.tensor([7, 8, 9, 0, 1, 2, 3])
    plan = state.plan(positions, [0, 3, 7], num_heads=9, tp_size=1, tp_rank=0)
    assert plan is not None and plan.key is not None
    assert plan.key.tolist() == [0, 0, 0, 0, -1, -1, 0]
    assert plan.queries[2][:, 0].tolist() == [0, 0, 0, 1, 1, 1, 1]
    assert plan.queries[2][:, 1].tolist() == [0] * 7
    assert plan.queries[5][:, 8].tolist() == [0, 0, 0, 1, 1, 1, 1]
    # Decode: position 4 is decode step 1 (steered), position 5 is past decode_steps.
    for position, expected in ((4, 1.0), (5, 0.0)):
        plan = state.plan(torch.tensor([position]), [0, 0, 1], 9, 1, 0)
        got = 0.0 if plan is None else float(plan.queries[2][0, 4])
        assert got == expected
    # Rank 1 of tp=3 holds heads 3-5: head 4 is its local head 1; layer 5's head 8 is not there.
    plan = state.plan(positions, [0, 3, 7], 9, 3, 1)
    assert plan is not None and set(plan.queries) == {2}
    assert plan.queries[2][3:, 1].tolist() == [1, 1, 1, 1]


def test_padded_head_sizes() -> None:
    assert padded_head_size(64, on_cpu=True) == 80
    assert padded_head_size(128, on_cpu=True) == 160
    assert padded_head_size(64, on_cpu=False) == 72
    with pytest.raises(UnsupportedModelError, match="Head size 512"):
        padded_head_size(512, on_cpu=True)

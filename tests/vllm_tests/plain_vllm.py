"""Plain vLLM (no plugin) greedy outputs for JSON cases on stdin (written to ``argv[1]``): the bit-identity baseline."""

from __future__ import annotations

import json
import os
import sys

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")


def main() -> None:
    from vllm import LLM, SamplingParams

    from pastalib.models import default_model_dir

    cases = json.load(sys.stdin)
    llm = LLM(
        model=str(default_model_dir()),
        dtype="float32",
        max_model_len=2048,
        enforce_eager=True,
        distributed_executor_backend="uni",
    )
    params = [
        SamplingParams(max_tokens=c["max_tokens"], temperature=0, logprobs=1, ignore_eos=True)
        for c in cases
    ]
    outputs = llm.generate([c["prompt"] for c in cases], params, use_tqdm=False)
    with open(sys.argv[1], "w") as handle:
        json.dump([result(o) for o in outputs], handle)


def result(output: object) -> dict[str, object]:
    """Token ids and the logprob of each chosen token."""
    completion = output.outputs[0]  # type: ignore[attr-defined]
    ids = list(completion.token_ids)
    return {
        "token_ids": ids,
        "logprobs": [step[t].logprob for step, t in zip(completion.logprobs, ids, strict=True)],
    }


if __name__ == "__main__":
    main()

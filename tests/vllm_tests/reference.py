"""In-process PASTA expectations for the vLLM tests (runs in any venv with pastalib).

Reads a JSON list of cases on stdin, writes to the file ``argv[1]``, per case the greedy token ids and the logprob of
each chosen token, computed by ``pastalib.PASTA`` (transformers SDPA, fp32, batch of one).
A case: ``{"prompt": str, "spans": [[s, e]] | null, "alpha": float, "scale_position": str,
"decode_steps": int | null, "max_tokens": int}``.
"""

from __future__ import annotations

import json
import sys
from contextlib import nullcontext

import torch


def main() -> None:
    from pastalib import PASTA
    from pastalib.models import load_default_model

    torch.set_num_threads(1)
    model, tokenizer = load_default_model()
    model.eval()
    pasta = PASTA(model, tokenizer, head_config="smollm2-135m-instruct", alpha=0.2)
    results = []
    for case in json.load(sys.stdin):
        inputs, offsets = pasta.inputs_from_batch([case["prompt"]])
        steering = (
            nullcontext()
            if case["spans"] is None
            else pasta.steer_spans(
                inputs,
                offsets,
                [case["spans"]],
                texts=[case["prompt"]],
                alpha=case["alpha"],
                scale_position=case["scale_position"],
                decode_steps=case["decode_steps"],
            )
        )
        with torch.no_grad(), steering:
            out = model.generate(
                **inputs,
                max_new_tokens=case["max_tokens"],
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=None,
                output_scores=True,
                return_dict_in_generate=True,
            )
        new = out.sequences[0, inputs["input_ids"].shape[1] :].tolist()
        logprobs = [
            float(torch.log_softmax(score[0].double(), -1)[token])
            for score, token in zip(out.scores, new, strict=True)
        ]
        results.append({"token_ids": new, "logprobs": logprobs})
    with open(sys.argv[1], "w") as handle:
        json.dump(results, handle)


if __name__ == "__main__":
    main()

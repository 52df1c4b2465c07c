"""The seed (reference pastalib) README quickstart runs unchanged; only the model name differs."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig

from tests.tiny import COMMON

# Verbatim from the reference README (QingruZhang/PASTA), with the model name swapped for a
# local directory holding a tiny random Llama with enough layers and heads for its head_config.
QUICKSTART = """
from pastalib.pasta import PASTA 
from transformers import AutoModelForCausalLM,AutoTokenizer

# Initialize pre-trained LLM
name = "huggyllama/llama-7b"
model = AutoModelForCausalLM.from_pretrained(name)
tokenizer = AutoTokenizer.from_pretrained(name)

# Select the attention heads to be steered, 
# following the format of {'layer_id': [head_ids]}: 
head_config = {
    '16': [16, 21],
    '12': [23, 26, 0],
    '10': [23, 7, 22],
}

# Initialize the PASTA steerer
pasta = PASTA(
    model=model,
    tokenizer=tokenizer,
    head_config=head_config, 
    alpha=0.01, # scaling coefficient
    scale_position="exclude", # downweighting unselected tokens
)

# Model Input 
texts = ["Mary is a doctor. She obtains her bachelor degree from ... Return her occupation in JSON format."]

# ===== Without PASTA =====
# inputs = tokenizer(texts, return_tensors="pt")
# outputs = model.generate(**inputs)
# ---------------------
# ["Mary is a doctor"]  # returns answer in the wrong format

# ===== With PASTA =====
inputs, offset_mapping = pasta.inputs_from_batch(texts)
# User highlighs specific input spans
emphasized_texts = ["Return her occupation in JSON format"]
# PASTA registers the pre_forward_hook to edit attention
with pasta.apply_steering(
    model=model, 
    strings=texts, 
    substrings=emphasized_texts, 
    model_input=inputs, 
    offsets_mapping=offset_mapping
) as steered_model: 
    outputs = steered_model.generate(**inputs)
"""


def test_reference_quickstart_runs_unchanged(tmp_path: Path, tokenizer) -> None:  # type: ignore[no-untyped-def]
    config = AutoConfig.for_model(
        "llama",
        **COMMON,
        hidden_size=64,
        intermediate_size=64,
        num_hidden_layers=17,
        num_attention_heads=32,
        num_key_value_heads=32,
    )
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    model.generation_config = GenerationConfig(
        max_new_tokens=5, do_sample=False, pad_token_id=0, eos_token_id=2
    )
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)

    namespace: dict = {}
    exec(QUICKSTART.replace('"huggyllama/llama-7b"', repr(str(tmp_path))), namespace)

    outputs, inputs = namespace["outputs"], namespace["inputs"]
    assert outputs.shape[1] == inputs["input_ids"].shape[1] + 5
    # The steering really applied: unsteered greedy logits differ from steered ones.
    model, pasta = namespace["model"], namespace["pasta"]
    assert model.config._attn_implementation == "sdpa"
    plain = model(**inputs).logits
    with pasta.apply_steering(
        model,
        namespace["texts"],
        namespace["emphasized_texts"],
        inputs,
        namespace["offset_mapping"],
    ):
        steered = model(**inputs).logits
    assert not torch.allclose(plain, steered, atol=1e-4)

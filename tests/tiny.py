"""Tiny random models and a small fast tokenizer, built offline from configs."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedModel, PreTrainedTokenizerFast

CORPUS = [
    "Mary is a doctor. She obtains her bachelor degree from UCSD.",
    "Answer the occupation of Mary and generate the answer as json format.",
    "The Eiffel Tower is located in Rome. Where is the Eiffel Tower?",
    "Substitute she and he with they. John is a nurse who lives in Oslo.",
    "Write your whole answer in uppercase letters, with no commas at all.",
    'IMPORTANT: the quick brown fox jumps over the lazy dog 0123456789 {}[]:,".',
]
VOCAB_SIZE = 320


@lru_cache(maxsize=1)
def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer that prepends BOS, like Llama's."""
    tokenizer = Tokenizer(models.BPE(unk_token=None))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=["<pad>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator(CORPUS * 4, trainer=trainer)
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )
    return fast


COMMON: dict[str, Any] = dict(vocab_size=VOCAB_SIZE, bos_token_id=1, eos_token_id=2, pad_token_id=0)

# Each config: 3 layers, 4 heads (2 KV heads where the architecture has GQA), head_dim 8.
LLAMA_LIKE: dict[str, Any] = dict(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=3,
    num_attention_heads=4,
    num_key_value_heads=2,
)
SLIDING: dict[str, Any] = dict(sliding_window=6)
CONFIGS: dict[str, dict[str, Any]] = {
    "llama": LLAMA_LIKE,
    "qwen2": LLAMA_LIKE,
    "qwen3": {**LLAMA_LIKE, "head_dim": 8},
    "mistral": {**LLAMA_LIKE, **SLIDING},
    "gemma": {**LLAMA_LIKE, "head_dim": 8},
    "gemma2": {
        **LLAMA_LIKE,
        **SLIDING,
        "head_dim": 8,
        "attn_logit_softcapping": 5.0,
        "final_logit_softcapping": 30.0,
    },
    "gemma3_text": {**LLAMA_LIKE, **SLIDING, "head_dim": 8, "sliding_window_pattern": 2},
    "phi3": LLAMA_LIKE,
    "gpt2": dict(n_embd=32, n_layer=3, n_head=4, n_positions=128),
    "gptj": dict(n_embd=32, n_layer=3, n_head=4, n_positions=128, rotary_dim=4),
    "gpt_neox": dict(
        hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4
    ),
    "opt": dict(
        hidden_size=32,
        ffn_dim=64,
        num_hidden_layers=3,
        num_attention_heads=4,
        word_embed_proj_dim=32,
        max_position_embeddings=128,
    ),
}
ALL_ARCHITECTURES = tuple(CONFIGS)


def routes_attention(arch: str) -> bool:
    """Whether the installed transformers runs ``arch`` through ``AttentionInterface``.

    GPT-J does from transformers 5.20 on; before that PASTA refuses it (tested apart).
    """
    model_class = AutoModelForCausalLM._model_mapping[type(AutoConfig.for_model(arch))]
    return bool(getattr(model_class, "_supports_attention_backend", False))


ARCHITECTURES = tuple(arch for arch in ALL_ARCHITECTURES if routes_attention(arch))
"""The architectures PASTA can steer on the installed transformers."""
UNROUTED = tuple(arch for arch in ALL_ARCHITECTURES if arch not in ARCHITECTURES)


def tiny_model(
    arch: str, attn_implementation: str = "sdpa", dtype: torch.dtype = torch.float64, seed: int = 0
) -> PreTrainedModel:
    """A seeded random model of ``arch`` with 3 layers of 4 heads."""
    config = AutoConfig.for_model(arch, **COMMON, **CONFIGS[arch])
    torch.manual_seed(seed)
    # Initialise in float32 so that every dtype gets the same weights.
    model = AutoModelForCausalLM.from_config(
        config, attn_implementation=attn_implementation, dtype=torch.float32
    )
    return model.to(dtype).eval()

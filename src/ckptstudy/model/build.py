"""Random-init causal LMs of every supported architecture, from a shape: the micro suites (`model.suite.arch`),
the tests' tiny models and the benchmarks' shapes. GPT-NeoX comes from `ckptstudy.model.neox` (Pythia's
choices); the others use their transformers config class with the same conventions: `<|endoftext|>` = id 0 as
BOS and EOS, eager attention, untied embeddings unless asked (GPT-2 always ties)."""

from __future__ import annotations

import torch
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    GPTNeoXForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    Olmo2Config,
    Olmo2ForCausalLM,
    OlmoConfig,
    OlmoForCausalLM,
    PretrainedConfig,
)

from ckptstudy.model.arch import BY_MODEL_TYPE, for_model_type
from ckptstudy.model.neox import PYTHIA_CONTEXT, neox_config

MODEL_TYPES = tuple(BY_MODEL_TYPE)  # what `make_model` builds: every model type an adapter reads
CLASSES = {
    "gpt_neox": GPTNeoXForCausalLM,
    "llama": LlamaForCausalLM,
    "olmo": OlmoForCausalLM,
    "olmo2": Olmo2ForCausalLM,
    "gpt2": GPT2LMHeadModel,
}


def default_d_ff(d_model: int, mlp_matrices: int) -> int:
    """The MLP width when a shape does not give one: 4 d_model for a 2-matrix (GELU) MLP; for SwiGLU (3 matrices)
    8/3 d_model rounded up to a multiple of 8, the same parameter count (Llama's rule)."""
    if mlp_matrices == 2:
        return 4 * d_model
    return -(-(8 * d_model // 3) // 8) * 8


def model_config(
    model_type: str,
    vocab_size: int,
    d_model: int,
    n_layers: int,
    n_heads: int,
    max_position_embeddings: int = PYTHIA_CONTEXT,
    rotary_pct: float | None = None,
    d_ff: int | None = None,
    tied_embeddings: bool | None = None,
    kv_heads: int | None = None,
    attn_implementation: str = "eager",
) -> PretrainedConfig:
    """The config of a `model_type` model of this shape. `rotary_pct`: the share of head dimensions rotated (GPT-NeoX
    only; Llama-style models rotate all of them, GPT-2 has learned positions: anything else is refused). `kv_heads`:
    key/value heads of a Llama-style model (grouped-query attention; default: one per query head).
    `attn_implementation`: eager by default, the kernel every micro suite build trained with (its float sums shape
    the weights); checkpoints are loaded with SDPA whatever their config says (`checkpoints.load_model`)."""
    arch = for_model_type(model_type, f"model_type={model_type!r}")
    d_ff = d_ff or default_d_ff(d_model, arch.mlp_matrices)
    if model_type == "gpt_neox":
        shape = (vocab_size, d_model, n_layers, n_heads, max_position_embeddings, rotary_pct or 0.25, d_ff)
        config = neox_config(*shape, attn_implementation=attn_implementation)
        if tied_embeddings:
            config.tie_word_embeddings = True
        return config
    if arch.family == "llama" and rotary_pct not in (None, 1.0):
        raise ValueError(
            f"rotary_pct={rotary_pct} is not valid for {model_type}: Llama-style models rotate every "
            "head dimension (1.0)"
        )
    if arch.family == "gpt2" and rotary_pct is not None:
        raise ValueError(f"rotary_pct={rotary_pct} is not valid for gpt2: it has learned absolute positions (null)")
    common = {
        "vocab_size": vocab_size,
        "bos_token_id": 0,
        "eos_token_id": 0,
        "attn_implementation": attn_implementation,
    }
    if model_type == "gpt2":
        return GPT2Config(
            n_positions=max_position_embeddings,
            n_embd=d_model,
            n_layer=n_layers,
            n_head=n_heads,
            n_inner=d_ff,
            tie_word_embeddings=True,
            **common,
        )
    kinds = {"llama": LlamaConfig, "olmo": OlmoConfig, "olmo2": Olmo2Config}
    return kinds[model_type](
        hidden_size=d_model,
        intermediate_size=d_ff,
        num_hidden_layers=n_layers,
        num_attention_heads=n_heads,
        num_key_value_heads=kv_heads or n_heads,
        max_position_embeddings=max_position_embeddings,
        tie_word_embeddings=bool(tied_embeddings),
        **common,
    )


def make_model(model_type: str, *shape, seed: int | None = None, **options) -> torch.nn.Module:
    """A random-init causal LM (train mode) of `model_config(model_type, *shape, **options)`. With `seed`, the
    global torch RNG is seeded first (same seed, same weights); without, the weights come from its current state."""
    if seed is not None:
        torch.manual_seed(seed)
    return CLASSES[model_type](model_config(model_type, *shape, **options))

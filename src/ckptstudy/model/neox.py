"""The one GPT-NeoX builder: Pythia's architecture choices at any size.

Pythia's choices: 25% rotary dimensions, parallel residual (attention and MLP read the same input), untied
input/output embeddings, MLP width 4 x d_model, `<|endoftext|>` = id 0 as both BOS and EOS; attention runs as
SDPA (the fused kernel: no pass needs the attention weights; `capture.capture` switches a model to eager for
the reference hooks that read them). The micro suite, the tests' tiny models and the benchmarks' random-init
Pythia shapes are all built here, so they differ only in size.
"""

from __future__ import annotations

import torch
from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

PYTHIA_CONTEXT = 2048


def neox_config(
    vocab_size: int,
    d_model: int,
    n_layers: int,
    n_heads: int,
    max_position_embeddings: int = PYTHIA_CONTEXT,
    rotary_pct: float = 0.25,
    intermediate_size: int | None = None,
    attn_implementation: str = "sdpa",
) -> GPTNeoXConfig:
    """A GPT-NeoX config with Pythia's choices; `intermediate_size` defaults to 4 x `d_model`."""
    return GPTNeoXConfig(
        vocab_size=vocab_size,
        hidden_size=d_model,
        num_hidden_layers=n_layers,
        num_attention_heads=n_heads,
        intermediate_size=intermediate_size or 4 * d_model,
        rotary_pct=rotary_pct,
        max_position_embeddings=max_position_embeddings,
        use_parallel_residual=True,
        tie_word_embeddings=False,
        bos_token_id=0,
        eos_token_id=0,
        attn_implementation=attn_implementation,
    )


def make_neox(
    vocab_size: int,
    d_model: int,
    n_layers: int,
    n_heads: int,
    max_position_embeddings: int = PYTHIA_CONTEXT,
    rotary_pct: float = 0.25,
    intermediate_size: int | None = None,
    seed: int | None = None,
    attn_implementation: str = "sdpa",
) -> GPTNeoXForCausalLM:
    """A random-init GPT-NeoX (train mode) from `neox_config`. With `seed`, the global torch RNG is seeded
    first (same seed, same weights); without, the weights come from the RNG's current state (the micro
    suite seeds once at the start of its build, then draws the corpus, tokenizer and model in order)."""
    if seed is not None:
        torch.manual_seed(seed)
    shape = (vocab_size, d_model, n_layers, n_heads, max_position_embeddings, rotary_pct, intermediate_size)
    config = neox_config(*shape, attn_implementation=attn_implementation)
    return GPTNeoXForCausalLM(config)

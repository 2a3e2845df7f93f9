"""GPT-2 (the Stanford CRFM runs): `transformer.h[i]`, `attn.c_proj` takes the heads' outputs, `mlp.c_proj` the
GELU activation, `transformer.ln_f`, the unembedding tied to `wte`, learned absolute positions, a sequential
residual. Projections are `Conv1D`: weights stored [in, out]."""

from __future__ import annotations

from ckptstudy.model.arch.base import Architecture

GPT2 = Architecture(
    family="gpt2",
    model_types=("gpt2",),
    body="transformer",
    layers="h",
    attention="attn",
    head_out="attn.c_proj",
    mlp_out="mlp.c_proj",
    final_norm="ln_f",
    mlp_out_norm=None,
    mlp_matrices=2,
    learned_positions=True,
    transposed=True,
    parallel_residual=lambda config: False,
)

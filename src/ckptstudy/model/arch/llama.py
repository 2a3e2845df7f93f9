"""Llama-style models (Llama, OLMo, OLMo 2): `model.layers[i]`, `self_attn.o_proj` takes the heads' outputs,
`mlp.down_proj` the SwiGLU activation (silu(gate) x up), `model.norm`, a sequential residual.

OLMo (model_type olmo) is Llama's block with a weightless LayerNorm. OLMo 2 (olmo2) normalises the attention and
MLP outputs before each residual add (`post_attention_layernorm`, `post_feedforward_layernorm`: post-norm) and
q/k before attention; ablation and the attention statistics are unaffected (they act before the projection and
inside the attention interface), but a neuron's write to the residual is no longer linear in its activation."""

from __future__ import annotations

from ckptstudy.model.arch.base import Architecture

_COMMON = {
    "family": "llama",
    "body": "model",
    "layers": "layers",
    "attention": "self_attn",
    "head_out": "self_attn.o_proj",
    "mlp_out": "mlp.down_proj",
    "final_norm": "norm",
    "mlp_matrices": 3,
    "transposed": False,
    "learned_positions": False,
    "parallel_residual": lambda config: False,
}

LLAMA = Architecture(model_types=("llama", "olmo"), mlp_out_norm=None, **_COMMON)
OLMO2 = Architecture(model_types=("olmo2",), mlp_out_norm="post_feedforward_layernorm", **_COMMON)

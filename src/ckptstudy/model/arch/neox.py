"""GPT-NeoX (Pythia, the micro suite): `gpt_neox.layers[i]`, `attention.dense` takes the heads' outputs,
`mlp.dense_4h_to_h` the GELU MLP activation, `gpt_neox.final_layer_norm`, untied `embed_out`; the residual is
parallel when the config's `use_parallel_residual` says so (Pythia: yes)."""

from __future__ import annotations

from ckptstudy.model.arch.base import Architecture

NEOX = Architecture(
    family="gpt_neox",
    model_types=("gpt_neox",),
    body="gpt_neox",
    layers="layers",
    attention="attention",
    head_out="attention.dense",
    mlp_out="mlp.dense_4h_to_h",
    final_norm="final_layer_norm",
    mlp_out_norm=None,
    mlp_matrices=2,
    learned_positions=False,
    transposed=False,
    parallel_residual=lambda config: bool(getattr(config, "use_parallel_residual", True)),
)

"""What an architecture adapter says about one family of Hugging Face causal LMs, and the handles on a loaded
model's parts that ckptstudy hooks (`ModelParts`).

An adapter names, by attribute path, where the decoder layers are, where a head's output enters the residual
(the attention output projection, whose input holds the heads' outputs side by side), where the MLP activations
are (the input of the MLP output projection), where the final norm and the unembedding are, whether the MLP's
output is normalised again before it is added (OLMo 2's post-norm) and whether the residual is parallel. Every
measurement reads the model through `ModelParts`, so no module outside `ckptstudy.model.arch` names an attribute
of one architecture.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch


class UnsupportedModelError(TypeError):
    """The model's architecture is not one ckptstudy has an adapter for (the message lists the supported ones)."""


def attribute(obj, path: str):
    """`obj.a.b.c` for path "a.b.c"."""
    for name in path.split("."):
        obj = getattr(obj, name)
    return obj


@dataclass(frozen=True)
class Architecture:
    """Where ckptstudy finds the parts it hooks, for the model types of one family (paths are attribute paths)."""

    family: str  # the value of a model yaml's `arch` (gpt_neox | llama | gpt2)
    model_types: tuple[str, ...]  # config.json `model_type` values this adapter reads
    body: str  # model -> the decoder stack, whose output (last_hidden_state) is after the final norm
    layers: str  # body -> the decoder layers
    attention: str  # layer -> the attention module (it calls transformers' attention interface)
    head_out: str  # layer -> the attention output projection: its input is the heads' outputs side by side
    mlp_out: str  # layer -> the MLP output projection: its input is the MLP activation, one entry per neuron
    final_norm: str  # body -> the norm before the unembedding
    mlp_out_norm: str | None  # layer -> a norm applied to the MLP output before the residual add (post-norm)
    mlp_matrices: int  # weight matrices of one MLP: 2 (GELU: in, out) or 3 (SwiGLU: gate, up, down)
    transposed: bool  # projection weights stored [in, out] (GPT-2's Conv1D) instead of torch's [out, in]
    learned_positions: bool  # a learned position embedding (one row per context position) instead of rotary
    parallel_residual: Callable[[object], bool]  # config -> whether attention and MLP read the same input

    def parts(self, model: torch.nn.Module) -> ModelParts:
        """The handles on `model`'s parts."""
        body = attribute(model, self.body)
        layers = list(attribute(body, self.layers))
        config = model.config
        n_heads = int(config.num_attention_heads)
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // n_heads
        return ModelParts(
            architecture=self,
            body=body,
            layers=layers,
            attentions=[attribute(layer, self.attention) for layer in layers],
            out_projs=[attribute(layer, self.head_out) for layer in layers],
            mlp_out_projs=[attribute(layer, self.mlp_out) for layer in layers],
            final_norm=attribute(body, self.final_norm),
            n_layers=len(layers),
            n_heads=n_heads,
            head_dim=int(head_dim),
            parallel_residual=bool(self.parallel_residual(config)),
        )


@dataclass
class ModelParts:
    """Handles on the modules ckptstudy hooks in one loaded model (from its `Architecture`)."""

    architecture: Architecture
    body: torch.nn.Module  # returns last_hidden_state after the final norm
    layers: list[torch.nn.Module]
    attentions: list[torch.nn.Module]
    out_projs: list[torch.nn.Module]  # attention output projection; its input holds per-head outputs
    mlp_out_projs: list[torch.nn.Module]  # MLP output projection; its input is the MLP activation
    final_norm: torch.nn.Module
    n_layers: int
    n_heads: int
    head_dim: int
    parallel_residual: bool

    @property
    def mlp_writes_linearly(self) -> bool:
        """Whether neuron k of a layer adds exactly activation x W_out[:, k] to the residual stream (False when the
        MLP output is normalised before the add: a neuron's write then depends on the whole MLP output)."""
        return self.architecture.mlp_out_norm is None

    def mlp_out_matrix(self, layer: int) -> torch.Tensor:
        """Layer `layer`'s MLP output weight as [d_model, d_ff]: column k is what one unit of neuron k writes."""
        weight = self.mlp_out_projs[layer].weight.detach()
        return weight.T if self.architecture.transposed else weight

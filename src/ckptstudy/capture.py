"""Forward passes with hooks that reduce each layer's attention on the fly.

Attention weights [batch, head, query, key] of one layer are handed to a reducer
inside that layer's hook and dropped; only the reduction (sums over the batch) is
kept, so memory does not grow with the number of layers. Reductions are summed over
batch chunks; callers divide by their own counts.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch

# (layer, attn[b,h,q,k], chunk) -> a tensor or a dict of tensors; chunk = {"ids": [b,s], **row_data rows}
AttnReducer = Callable[[int, torch.Tensor, dict], "torch.Tensor | dict[str, torch.Tensor]"]
LogitsReducer = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (logits[b,s,v], ids[b,s])


class UnsupportedModelError(TypeError):
    """The model's architecture is not one ckptstudy knows how to hook."""


@dataclass
class ModelParts:
    """Handles on the modules ckptstudy hooks, for GPT-NeoX (Pythia) models."""

    layers: list[torch.nn.Module]
    attentions: list[torch.nn.Module]
    out_projs: list[torch.nn.Module]  # attention output projection; its input holds per-head outputs
    n_layers: int
    n_heads: int
    head_dim: int


def model_parts(model: torch.nn.Module) -> ModelParts:
    """The hookable parts of a GPT-NeoX causal LM, or a clear error for other architectures."""
    body = getattr(model, "gpt_neox", None)
    if body is None:
        raise UnsupportedModelError(
            f"ckptstudy hooks GPT-NeoX (Pythia) models; got {type(model).__name__}. "
            "Supported: GPTNeoXForCausalLM (model.source hub/local with a GPT-NeoX config)"
        )
    if model.config._attn_implementation != "eager":
        raise UnsupportedModelError(
            f"attention weights need attn_implementation='eager', model has {model.config._attn_implementation!r}"
        )
    layers = list(body.layers)
    n_heads = model.config.num_attention_heads
    return ModelParts(
        layers=layers,
        attentions=[layer.attention for layer in layers],
        out_projs=[layer.attention.dense for layer in layers],
        n_layers=len(layers),
        n_heads=n_heads,
        head_dim=model.config.hidden_size // n_heads,
    )


@contextmanager
def hooks(handles: list) -> Iterator[None]:
    """Remove every hook handle on exit, whatever happens."""
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _to_cpu(value):
    if isinstance(value, dict):
        return {k: v.detach().cpu() for k, v in value.items()}
    return value.detach().cpu()


def _add(total, value):
    """Running sum of reductions (tensors or dicts of tensors)."""
    if total is None:
        return value
    if isinstance(value, dict):
        return {k: total[k] + v for k, v in value.items()}
    return total + value


@dataclass
class Captured:
    """Reductions summed over all batch chunks: attn[layer] and the logits reduction."""

    attn: list | None  # per layer: a tensor or a dict of tensors
    logits: torch.Tensor | None
    n_rows: int


@torch.no_grad()
def capture(
    model: torch.nn.Module,
    ids: torch.Tensor,
    attn_fn: AttnReducer | None = None,
    logits_fn: LogitsReducer | None = None,
    batch_size: int = 16,
    row_data: dict[str, torch.Tensor] | None = None,
) -> Captured:
    """Run `ids` [n, seq] through the model; reduce attention per layer and the logits per chunk.

    `row_data` tensors (first axis = rows of `ids`) are sliced with each chunk and handed to `attn_fn`.
    """
    parts = model_parts(model)
    device = next(model.parameters()).device
    attn_sums: list = [None] * parts.n_layers
    current: dict[str, torch.Tensor] = {}

    def make_hook(layer: int):
        def hook(_module, _args, output):
            attn_sums[layer] = _add(attn_sums[layer], _to_cpu(attn_fn(layer, output[1].float(), current)))

        return hook

    handles = [a.register_forward_hook(make_hook(i)) for i, a in enumerate(parts.attentions)] if attn_fn else []
    logits_sum = None
    with hooks(handles):
        for start in range(0, ids.shape[0], batch_size):
            chunk = ids[start : start + batch_size].to(device)
            current.clear()
            current.update({k: v[start : start + batch_size].to(device) for k, v in (row_data or {}).items()})
            current["ids"] = chunk
            logits = model(input_ids=chunk).logits
            if logits_fn is not None:
                reduced = logits_fn(logits.float(), chunk).detach().cpu()
                logits_sum = reduced if logits_sum is None else logits_sum + reduced
            del logits
    return Captured(attn=attn_sums if attn_fn else None, logits=logits_sum, n_rows=ids.shape[0])

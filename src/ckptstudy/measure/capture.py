"""Forward passes that reduce each layer's attention on the fly.

Two paths, both summing reductions over batch chunks (callers divide by their own counts):
- `capture_stats` (the `icl/` and `lowinfo/` families): the statistics of a `StatsRequest` (diagonal weights,
  class mass, row entropy, with and without the sink) come out of a registered attention function
  (`ckptstudy.measure.attention_stats`) that keeps the fused SDPA kernel for the output and never
  materialises the [batch, head, query, key] weights. `ckptstudy.reference.eager_capture_stats` computes the
  same dictionary from eager weights inside per-layer hooks (the reference, for tests and benches).
- `capture`: eager attention weights of one layer are handed to a reducer inside that layer's hook and
  dropped; only the reduction is kept, so memory does not grow with the number of layers (any reduction).

Either path switches the model's attention implementation for the pass only and restores it after, so a
model may be loaded with any implementation.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from ckptstudy.measure import attention_stats
from ckptstudy.measure.attention_stats import StatsCollector, StatsRequest
from ckptstudy.model.arch import UnsupportedModelError, model_parts

# (layer, attn[b,h,q,k], chunk) -> a tensor or a dict of tensors; chunk = {"ids": [b,s], **row_data rows}
AttnReducer = Callable[[int, torch.Tensor, dict], "torch.Tensor | dict[str, torch.Tensor]"]
LogitsReducer = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (logits[b,s,v], ids[b,s])


@contextmanager
def attention_implementation(model: torch.nn.Module, name: str) -> Iterator[None]:
    """Run the model with attention implementation `name` inside the block; the previous one is restored."""
    previous = model.config._attn_implementation
    if previous == name:
        yield
        return
    model.config._attn_implementation = name
    try:
        yield
    finally:
        model.config._attn_implementation = previous


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


def running_sum(total, value):
    """Running sum of reductions (tensors or dicts of tensors)."""
    if total is None:
        return value
    if isinstance(value, dict):
        return {k: total[k] + v for k, v in value.items()}
    return total + value


def running_concat(total, value):
    """Per-row reductions of successive chunks, in row order (tensors or dicts of tensors)."""
    if total is None:
        return value
    if isinstance(value, dict):
        return {k: torch.cat([total[k], v]) for k, v in value.items()}
    return torch.cat([total, value])


@dataclass
class Captured:
    """Reductions summed over all batch chunks (or per row, see `capture_stats`): attn[layer] and the logits
    reduction."""

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
            attn_sums[layer] = running_sum(attn_sums[layer], _to_cpu(attn_fn(layer, output[1].float(), current)))

        return hook

    handles = [a.register_forward_hook(make_hook(i)) for i, a in enumerate(parts.attentions)] if attn_fn else []
    logits_sum = None
    with hooks(handles), attention_implementation(model, "eager" if attn_fn else model.config._attn_implementation):
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


def _reduce_logits(
    model, hidden: torch.Tensor, chunk: torch.Tensor, logits_fn: LogitsReducer, per_row: bool = False
) -> torch.Tensor:
    """Sum of `logits_fn` over the rows of a chunk (per_row: its value for each row, stacked [b, ...]),
    unembedding one row at a time: the full-vocabulary logits of a whole batch ([b, seq, vocab], 0.8 GB for
    4 x 1024 tokens of Pythia) never exist at once."""
    head = model.get_output_embeddings()
    rows = [
        logits_fn(head(hidden[row : row + 1]).float(), chunk[row : row + 1]).detach().cpu()
        for row in range(hidden.shape[0])
    ]
    return torch.stack(rows) if per_row else torch.stack(rows).sum(0)


@torch.no_grad()
def capture_stats(
    model: torch.nn.Module,
    ids: torch.Tensor,
    request: StatsRequest,
    logits_fn: LogitsReducer | None = None,
    batch_size: int = 16,
) -> Captured:
    """Run `ids` [n, seq] through the model; per layer, the sums over rows of every statistic `request` asks
    for (`attention_stats.StatsRequest`: `diagonal`, `mass`, `mass_nosink`, `entropy`, `entropy_nosink`);
    with `logits_fn`, its sum over rows (logits unembedded one row at a time; without it the unembedding is
    skipped). With `request.per_row` nothing is summed over rows: every statistic and the logits reduction
    come per row, stacked [n, ...] in the order of `ids` (what the bootstrap resamples; the sums are their
    sums). No attention weights are materialised."""
    parts = model_parts(model)
    device = next(model.parameters()).device
    collector = StatsCollector(parts.n_layers)
    logits_sum = None
    with attention_implementation(model, attention_stats.register()):
        for start in range(0, ids.shape[0], batch_size):
            chunk = ids[start : start + batch_size].to(device)
            collector.request = request.rows(start, start + batch_size, device)
            token = collector.activate()
            try:
                hidden = parts.body(input_ids=chunk, use_cache=False).last_hidden_state
            finally:
                StatsCollector.deactivate(token)
            check_every_layer_reported(collector, parts)
            if logits_fn is not None:
                reduced = _reduce_logits(model, hidden, chunk, logits_fn, request.per_row)
                logits_sum = (running_concat if request.per_row else running_sum)(logits_sum, reduced)
            del hidden
    return Captured(attn=collector.sums, logits=logits_sum, n_rows=ids.shape[0])


def check_every_layer_reported(collector: StatsCollector, parts) -> None:
    """Refuse a model whose layers did not all go through transformers' attention interface (the statistics of a
    layer that computes attention its own way would silently be missing)."""
    missing = [layer for layer, stats in enumerate(collector.sums) if stats is None]
    if missing:
        raise UnsupportedModelError(
            f"layers {missing} of this {parts.architecture.family} model did not call transformers' attention "
            "interface, so ckptstudy cannot read their attention statistics"
        )

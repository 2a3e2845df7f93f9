"""Reference oracles: the slow, obvious computations the fast paths are tested (and benchmarked) against.

Nothing in a job calls these. They read materialised attention weights [batch, head, query, key] or run one
full forward per head, so they are simple enough to trust and too slow to use:
- `head_pattern_sums`: icl/'s induction / duplicate / previous-token attention, from weights;
- `class_mass`, `uniform_mass`, `entropy_sums`, `entropy_counts`: lowinfo/'s key-class mass and row entropy;
- `eager_capture_stats`: `capture.capture_stats` from eager weights reduced inside per-layer hooks;
- `first_keys_mass`: sink/'s attention on keys 0 and 1, from weights;
- `naive_effects`: per-head ablation effects with one full forward per ablated head.
"""

from __future__ import annotations

import torch

from ckptstudy.measure.ablation import Targets, ablate_heads, clean_run, token_scores
from ckptstudy.measure.attention_stats import StatsRequest, reference_statistics
from ckptstudy.measure.capture import Captured, LogitsReducer, capture, running_concat, running_sum
from ckptstudy.metrics.icl_heads import repeat_pattern_positions
from ckptstudy.metrics.low_info import entropy_count_rows, uniform_mass_rows
from ckptstudy.model.arch import model_parts

# ------------------------------------------------------------------------------------ icl/ patterns


def diagonal_attention_sum(attn: torch.Tensor, queries: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """Sum over batch and the given (query, key) pairs of attention, per head: attn [batch, head, q, k];
    queries, keys [Q] -> [head]."""
    return attn[:, :, queries, keys].sum(dim=(0, 2))


def head_pattern_sums(attn: torch.Tensor, repeat_length: int) -> torch.Tensor:
    """Summed induction / duplicate / previous-token attention of one layer on `random_repeat`: [3, head]."""
    pos = repeat_pattern_positions(repeat_length)
    return torch.stack([diagonal_attention_sum(attn, q, k) for q, k in pos.values()])


# ----------------------------------------------------------------------------- lowinfo/ reductions


def drop_sink(attn: torch.Tensor) -> torch.Tensor:
    """Rows of queries 1.. over keys 1.., renormalised: [b, h, q-1, k-1] (query 0 only sees key 0)."""
    rest = attn[..., 1:, 1:]
    total = rest.sum(-1, keepdim=True)
    return torch.where(total > 0, rest / total.clamp(min=1e-30), torch.zeros_like(rest))


def class_mass(attn: torch.Tensor, key_onehot: torch.Tensor, query_weight: torch.Tensor, sink: bool = True):
    """Attention mass per head and key class summed over weighted queries: [head, class].

    attn [b, h, q, k]; key_onehot [b, k, classes]; query_weight [b, q]. sink=False drops key 0.
    """
    if not sink:
        attn, key_onehot, query_weight = drop_sink(attn), key_onehot[:, 1:], query_weight[:, 1:]
    return torch.einsum("bhqk,bkc,bq->hc", attn, key_onehot, query_weight)


def uniform_mass(key_onehot: torch.Tensor, query_weight: torch.Tensor, sink: bool = True) -> torch.Tensor:
    """The mass per class that uniform causal attention would give the same queries: [class]."""
    return uniform_mass_rows(key_onehot, query_weight, sink).sum(0)


def entropy_sums(attn: torch.Tensor, query_kind: torch.Tensor, sink: bool = True) -> torch.Tensor:
    """Summed row entropy (nats and normalised by log #keys) per head and query kind: [head, kind, 2].

    query_kind [b, q]: 1 = low-information query, 2 = content query, 0 = not counted. Rows with a
    single key have no entropy to normalise and are skipped.
    """
    if not sink:
        attn, query_kind = drop_sink(attn), query_kind[:, 1:]
    entropy = -torch.special.xlogy(attn, attn).sum(-1)  # [b, h, q]
    n_keys = torch.arange(1, attn.shape[-2] + 1, dtype=attn.dtype, device=attn.device)
    usable = (n_keys > 1)[None, :]
    normalised = entropy / torch.log(n_keys.clamp(min=2))
    out = []
    for kind in (1, 2):
        weight = ((query_kind == kind) & usable).to(attn.dtype)  # [b, q]
        sums = [torch.einsum("bhq,bq->h", entropy, weight), torch.einsum("bhq,bq->h", normalised, weight)]
        out.append(torch.stack(sums, dim=-1))
    return torch.stack(out, dim=1)


def entropy_counts(query_kind: torch.Tensor, sink: bool = True) -> torch.Tensor:
    """How many rows `entropy_sums` counted per query kind: [kind]."""
    return entropy_count_rows(query_kind, sink).sum(0)


# ------------------------------------------------------------------------------------ sink/ score


def first_keys_mass(attn: torch.Tensor) -> torch.Tensor:
    """Mean over queries 1..s-1 of the attention on key 0 and on key 1, per row and head: attn [b, h, q, k]
    -> [b, 2, h] (what sink/'s fused `key_mass_request` statistics give, divided by s - 1)."""
    return attn[:, :, 1:, :2].double().mean(dim=2).transpose(1, 2)


# ------------------------------------------------------------------------- capture_stats, eagerly


def _each_row(logits_fn: LogitsReducer) -> LogitsReducer:
    """`logits_fn` applied to each row of a chunk on its own, stacked [b, ...]."""
    return lambda logits, ids: torch.stack([logits_fn(logits[r : r + 1], ids[r : r + 1]) for r in range(len(ids))])


def eager_capture_stats(
    model, ids: torch.Tensor, request: StatsRequest, logits_fn: LogitsReducer | None = None, batch_size: int = 16
) -> Captured:
    """What `capture.capture_stats` returns, from eager attention weights reduced inside per-layer hooks
    (`attention_stats.reference_statistics`); the request's rows ride along with each chunk."""
    sums: list = [None] * model_parts(model).n_layers
    logits_sum = None
    combine = running_concat if request.per_row else running_sum
    for start in range(0, ids.shape[0], batch_size):
        chunk_ids = ids[start : start + batch_size]
        rows = request.rows(start, start + batch_size, next(model.parameters()).device)
        cap = capture(
            model,
            chunk_ids,
            attn_fn=lambda _layer, attn, _chunk, rows=rows: reference_statistics(attn, rows),
            logits_fn=_each_row(logits_fn) if request.per_row and logits_fn is not None else logits_fn,
            batch_size=batch_size,
        )
        sums = [combine(total, value) for total, value in zip(sums, cap.attn)]
        if cap.logits is not None:
            logits_sum = combine(logits_sum, cap.logits)
    return Captured(attn=sums, logits=logits_sum, n_rows=ids.shape[0])


# ------------------------------------------------------------------------------------ ablation


@torch.no_grad()
def naive_effects(model, targets: Targets, ablation: str = "zero", score: str = "logprob") -> torch.Tensor:
    """Per-head effects with one full forward per ablated head: [n_layers, n_heads]."""
    parts = model_parts(model)
    device = next(model.parameters()).device
    clean = clean_run(model, targets, score)
    ids, mask, expected = targets.ids.to(device), targets.mask.to(device), targets.expected.to(device)
    effects = torch.zeros(parts.n_layers, parts.n_heads)
    for layer in range(parts.n_layers):
        replacement = torch.zeros_like(clean.head_means[layer]) if ablation == "zero" else clean.head_means[layer]
        for h in range(parts.n_heads):
            head_of_row = torch.full((ids.shape[0],), h, device=device)
            with ablate_heads(parts.out_projs[layer], head_of_row, parts.head_dim, replacement):
                logits = model(input_ids=ids).logits
            total = token_scores(logits[mask], expected, score).double().sum()
            effects[layer, h] = (clean.score_sum - float(total)) / clean.n_targets
    return effects

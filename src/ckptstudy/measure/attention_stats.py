"""Attention statistics without materialising attention weights: a registered attention function.

The `icl/` and `lowinfo/` families read from attention, per layer and head,
- the summed weight at given (query, key) diagonals (induction, duplicate, previous token),
- the attention mass on each key class summed over weighted queries, with and without key 0 (the sink:
  rows renormalised over keys >= 1),
- the summed row entropy over queries of given kinds (raw and normalised by log #keys), with and without key 0.
None of these needs the [batch, head, query, key] weights. With s = scale * q . k, lse = logsumexp_k(s):
- one weight (q, k) = exp(s(q, k) - lse(q));
- class mass = attention with V = the per-key class indicators;
- row entropy = lse - E[s] = lse - scale * q . attention(V = K).
So ckptstudy keeps the fused kernel (torch SDPA, which also returns lse on CPU) for the layer's output and
adds one fused pass over keys 1.. with V = [K | class indicators] (q and k zero-padded to V's width, which
leaves the scores unchanged). The with-sink statistics are combined from that pass and key 0's score
s0 = scale * q . k_0 in the numerically stable direction (p0 = exp(s0 - lse), 1 - p0 = exp(lse_1.. - lse),
never 1 - p0 by subtraction), so a strong sink (p0 ~ 1) costs no precision in the no-sink statistics.

`StatsCollector` holds a request and the summed results; `capture.capture_stats` activates one around a
forward pass of a model switched to `STATS_IMPLEMENTATION`. Outside an active collector the registered
function is plain SDPA, so a model left on it generates and ablates like `attn_implementation="sdpa"`.
`reference_statistics` computes the same dictionary from materialised weights (the eager path).
"""

from __future__ import annotations

import contextvars
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

STATS_IMPLEMENTATION = "ckptstudy_stats"
_ACTIVE: contextvars.ContextVar[StatsCollector | None] = contextvars.ContextVar("ckptstudy_stats", default=None)
_PORTABLE_LSE: contextvars.ContextVar[bool] = contextvars.ContextVar("ckptstudy_portable_lse", default=False)


@dataclass
class StatsRequest:
    """What to reduce from each layer's attention, for the rows [n, seq] of one capture.

    diagonals: name -> (query positions, key positions) [Q] each, the same for every row; summed weight
      per head -> `diagonal` [n_diagonals, head] in this order.
    key_values: [n, seq, C] per-key values (class indicators); with `query_weight` [n, seq] ->
      `mass` / `mass_nosink` [head, C] = sum over rows and queries of weight * attention . key_values.
    query_kind: [n, seq] ints, 0 = not counted, 1..n_kinds -> `entropy` / `entropy_nosink`
      [head, n_kinds, 2]: summed row entropy (nats) and summed entropy / log(#keys), over rows of each
      kind with at least 2 keys.
    per_row: keep each row's statistics apart instead of summing them: every result gains a leading row
      axis [n, ...] (`diagonal` [n, n_diagonals, head], `mass` [n, head, C], `entropy` [n, head, n_kinds, 2]);
      their sum over rows is the per_row=False result. The bootstrap resamples these rows.
    """

    diagonals: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    key_values: torch.Tensor | None = None
    query_weight: torch.Tensor | None = None
    query_kind: torch.Tensor | None = None
    n_kinds: int = 2
    per_row: bool = False

    def __post_init__(self):
        if (self.key_values is None) != (self.query_weight is None):
            raise ValueError("key_values and query_weight go together (class mass needs both)")
        for name, (queries, keys) in self.diagonals.items():
            if queries.shape != keys.shape or bool((keys > queries).any()) or bool((keys < 0).any()):
                raise ValueError(f"diagonal {name!r}: queries and keys must pair up with 0 <= key <= query")

    @property
    def needs_pass(self) -> bool:
        """True when the statistics need the extra fused pass (class mass or entropy)."""
        return self.key_values is not None or self.query_kind is not None

    def rows(self, start: int, stop: int, device) -> StatsRequest:
        """The request for rows start:stop, on `device`."""

        def cut(t):
            return None if t is None else t[start:stop].to(device)

        return StatsRequest(
            diagonals={k: (q.to(device), key.to(device)) for k, (q, key) in self.diagonals.items()},
            key_values=cut(self.key_values),
            query_weight=cut(self.query_weight),
            query_kind=cut(self.query_kind),
            n_kinds=self.n_kinds,
            per_row=self.per_row,
        )


class StatsCollector:
    """Per-layer results of the statistics of one request over every forward pass run while it is active:
    sums over rows, or (request.per_row) the rows of every pass concatenated in order."""

    def __init__(self, n_layers: int):
        self.sums: list[dict[str, torch.Tensor] | None] = [None] * n_layers
        self.request: StatsRequest | None = None
        self.workspace: dict = {}  # buffers of the statistics pass, reused across layers

    def add(self, layer: int, stats: dict[str, torch.Tensor]) -> None:
        """Add one pass's statistics of `layer` (per row or summed, as `layer_statistics` returned them)."""
        stats = {k: v.detach().cpu() for k, v in stats.items()}
        old = self.sums[layer]
        if old is None:
            self.sums[layer] = stats
        elif self.request is not None and self.request.per_row:
            self.sums[layer] = {k: torch.cat([old[k], v]) for k, v in stats.items()}
        else:
            self.sums[layer] = {k: old[k] + v for k, v in stats.items()}

    def activate(self):
        """Context variable token; pass it to `deactivate`."""
        return _ACTIVE.set(self)

    @staticmethod
    def deactivate(token) -> None:
        _ACTIVE.reset(token)


def attention_with_lse(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Causal attention output [b, h, s, dv] and each row's logsumexp of the scores [b, h, s] (float32 or
    wider). On CPU the fused flash kernel returns both (same kernel and output as torch SDPA); elsewhere the
    output comes from SDPA and the logsumexp from `blockwise_logsumexp`."""
    native = query.device.type == "cpu" and not _PORTABLE_LSE.get()
    if native and query.shape[-1] == value.shape[-1] == key.shape[-1]:
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(query, key, value, 0.0, True, scale=scale)
        return out, lse
    out = F.scaled_dot_product_attention(query, key, value, is_causal=True, scale=scale)
    return out, blockwise_logsumexp(query, key, scale)


@contextmanager
def portable_lse(enabled: bool = True) -> Iterator[None]:
    """Inside (when `enabled`): `attention_with_lse` takes the route of non-CPU devices on CPU too (SDPA output,
    `blockwise_logsumexp`), so a CPU run tests the arithmetic a GPU runs (`ckptstudy-gpu-check --lse portable`)."""
    token = _PORTABLE_LSE.set(enabled)
    try:
        yield
    finally:
        _PORTABLE_LSE.reset(token)


def blockwise_logsumexp(query: torch.Tensor, key: torch.Tensor, scale: float, block: int = 256) -> torch.Tensor:
    """Causal logsumexp of scale * q . k per row [b, h, s], `block` query rows at a time (never [s, s])."""
    s = query.shape[-2]
    out = []
    keys = torch.arange(s, device=query.device)
    for start in range(0, s, block):
        q = query[..., start : start + block, :].float()
        scores = (q @ key[..., : start + q.shape[-2], :].float().transpose(-1, -2)) * scale
        rows = torch.arange(start, start + q.shape[-2], device=query.device)
        scores = scores.masked_fill(keys[None, : start + q.shape[-2]] > rows[:, None], float("-inf"))
        out.append(torch.logsumexp(scores, dim=-1))
    return torch.cat(out, dim=-1)


def _stats_dtype(dtype: torch.dtype) -> torch.dtype:
    return dtype if dtype in (torch.float32, torch.float64) else torch.float32


def _as_diagonal(queries: torch.Tensor, keys: torch.Tensor) -> tuple[int, int, int] | None:
    """(first query, last query + 1, query - key) when the pairs are one contiguous diagonal, else None."""
    n = queries.numel()
    if n == 0:
        return None
    first, offset = int(queries[0]), int(queries[0] - keys[0])
    span = torch.arange(first, first + n, device=queries.device)
    if torch.equal(queries, span) and torch.equal(keys, span - offset):
        return first, first + n, offset
    return None


def diagonal_sums(query, key, scale, lse, diagonals) -> torch.Tensor:
    """Summed attention weight at each diagonal's (query, key) pairs, per row and head: [b, n_diagonals, head].
    weight = exp(scale * q . k - lse(q)); a contiguous diagonal is read through views (no gather)."""
    dtype = _stats_dtype(query.dtype)
    out = []
    for queries, keys in diagonals.values():
        span = _as_diagonal(queries, keys)
        if span is None:
            q, k, row_lse = query[:, :, queries], key[:, :, keys], lse[:, :, queries]
        else:
            first, stop, offset = span
            q, k = query[:, :, first:stop], key[:, :, first - offset : stop - offset]
            row_lse = lse[:, :, first:stop]
        scores = torch.linalg.vecdot(q.to(dtype), k.to(dtype)) * scale  # [b, h, Q]
        out.append(torch.exp(scores - row_lse.to(dtype)).double().sum(dim=2))
    return torch.stack(out, dim=1)


def _workspace(workspace: dict | None, b: int, h: int, s: int, width: int, dtype, device) -> torch.Tensor:
    """Zeroed [3, b, h, s, width] buffer for the padded (q, k, v) of the statistics pass, reused across layers
    and chunks of the same shape: fresh multi-MB tensors every layer cost page faults on CPU."""
    key = (b, h, s, width, dtype, str(device))
    if workspace is None:
        return torch.zeros(3, b, h, s, width, dtype=dtype, device=device)
    if key not in workspace:
        workspace.clear()
        workspace[key] = torch.zeros(3, b, h, s, width, dtype=dtype, device=device)
    return workspace[key]


def class_and_entropy_sums(query, key, scale, request: StatsRequest, workspace: dict | None = None) -> dict:
    """`mass`, `mass_nosink` [b, h, C], `entropy`, `entropy_nosink` [b, h, kind, 2] of one layer, per row, from
    one fused pass over keys 1.. (see the module docstring); query, key [b, h, s, d] after the rotary embedding.
    Per-query arithmetic in the model's precision (float32 at least), sums over queries in float64."""
    b, h, s, d = query.shape
    dtype = _stats_dtype(query.dtype)
    if s < 2:  # one key only: mass on key 0, no entropy, nothing without the sink
        return _single_key_stats(query, request, h)
    out: dict[str, torch.Tensor] = {}
    q, k = query.to(dtype), key.to(dtype)
    s0 = (q @ k[:, :, :1].transpose(-1, -2)).squeeze(-1) * scale  # [b, h, s] score of key 0
    entropy_width = d if request.query_kind is not None else 0
    n_classes = request.key_values.shape[-1] if request.key_values is not None else 0
    width = -(-max(d, entropy_width + n_classes) // 8) * 8  # a multiple of 8: fused kernels (CPU, CUDA) prefer it
    buffer = _workspace(workspace, b, h, s - 1, width, dtype, q.device)
    q1, k1, value = buffer[0], buffer[1], buffer[2]
    q1[..., :d] = q[:, :, 1:]
    k1[..., :d] = k[:, :, 1:]
    if entropy_width:
        value[..., :d] = k[:, :, 1:]
    if n_classes:
        value[..., entropy_width : entropy_width + n_classes] = request.key_values[:, None, 1:, :].to(dtype)
    attended, lse1 = attention_with_lse(q1, k1, value, scale)  # rows = queries 1.., keys 1..
    s0_rest = s0[:, :, 1:]
    lse = torch.logaddexp(lse1, s0_rest)  # over every key, queries 1..
    p0, rest = torch.exp(s0_rest - lse), torch.exp(lse1 - lse)  # key 0's weight and 1 - it, both stable
    if n_classes:
        mass1 = attended[..., entropy_width : entropy_width + n_classes]  # [b, h, s-1, C] over keys 1..
        weight = request.query_weight.to(dtype)
        kv0 = request.key_values[:, 0].to(dtype)  # [b, C]
        nosink = torch.einsum("bhqc,bq->bhc", mass1, weight[:, 1:]).double()
        # with the sink: (1 - p0) * mass1 + p0 * [class of key 0], and query 0 puts all its mass on key 0
        on_rest = torch.einsum("bhqc,bhq->bhc", mass1, rest * weight[:, None, 1:]).double()
        on_zero = torch.einsum("bc,bh->bhc", kv0, (p0 * weight[:, None, 1:]).sum(-1) + weight[:, :1]).double()
        out["mass"] = on_rest + on_zero
        out["mass_nosink"] = nosink
    if entropy_width:
        expected1 = torch.linalg.vecdot(q[:, :, 1:], attended[..., :d]) * scale  # E[s] over keys 1..
        entropy_rest = (lse1 - expected1).double()
        entropy = (lse - (rest * expected1 + p0 * s0_rest)).double()
        positions = torch.arange(1, s, device=q.device, dtype=torch.float64)
        kind = request.query_kind[:, 1:]
        out["entropy"] = _kind_sums(entropy, kind, positions + 1, request.n_kinds)
        out["entropy_nosink"] = _kind_sums(entropy_rest, kind, positions, request.n_kinds)
    return out


def _single_key_stats(q, request: StatsRequest, h: int) -> dict[str, torch.Tensor]:
    out = {}
    b = q.shape[0]
    if request.key_values is not None:
        kv0, weight = request.key_values[:, 0].double(), request.query_weight[:, 0].double()
        mass = torch.einsum("bc,b->bc", kv0, weight)[:, None].expand(-1, h, -1)
        out.update(mass=mass, mass_nosink=torch.zeros_like(mass))
    if request.query_kind is not None:
        zeros = torch.zeros(b, h, request.n_kinds, 2, dtype=torch.float64, device=q.device)
        out.update(entropy=zeros, entropy_nosink=zeros.clone())
    return out


def _kind_sums(entropy: torch.Tensor, kind: torch.Tensor, n_keys: torch.Tensor, n_kinds: int) -> torch.Tensor:
    """Summed entropy and entropy / log(n_keys) per row, head and query kind over queries with >= 2 keys:
    [b, head, kind, 2]. entropy [b, h, q]; kind [b, q]; n_keys [q]."""
    usable = n_keys > 1
    normalised = entropy / torch.log(n_keys.clamp(min=2))
    out = []
    for value in range(1, n_kinds + 1):
        weight = ((kind == value) & usable[None, :]).to(entropy.dtype)
        out.append(
            torch.stack(
                [torch.einsum("bhq,bq->bh", entropy, weight), torch.einsum("bhq,bq->bh", normalised, weight)],
                dim=-1,
            )
        )
    return torch.stack(out, dim=2)


def _reduce_rows(stats: dict[str, torch.Tensor], request: StatsRequest) -> dict[str, torch.Tensor]:
    """Per-row statistics [b, ...] summed over rows, unless the request keeps rows apart."""
    return stats if request.per_row else {k: v.sum(0) for k, v in stats.items()}


def layer_statistics(
    query, key, scale: float, lse: torch.Tensor, request: StatsRequest, workspace: dict | None = None
) -> dict[str, torch.Tensor]:
    """Every statistic `request` asks for, for one layer: query, key [b, h, s, d] after the rotary
    embedding, lse [b, h, s] = each row's causal logsumexp of scale * q . k. Summed over rows unless
    `request.per_row`."""
    out = {}
    if request.diagonals:
        out["diagonal"] = diagonal_sums(query, key, scale, lse, request.diagonals)
    if request.needs_pass:
        out.update(class_and_entropy_sums(query, key, scale, request, workspace))
    return _reduce_rows(out, request)


def reference_statistics(
    attn: torch.Tensor, request: StatsRequest, dtype: torch.dtype = torch.float64
) -> dict[str, torch.Tensor]:
    """The same statistics from materialised weights attn [b, h, q, k] (the eager reference path), reduced
    in `dtype` (the benchmarks' baselines reduce in float32, as a user would). Summed over rows unless
    `request.per_row`."""
    attn = attn.to(dtype)
    out = {}
    if request.diagonals:
        diagonals = request.diagonals.values()
        out["diagonal"] = torch.stack([attn[:, :, q, k].sum(dim=2) for q, k in diagonals], dim=1)
    rest = attn[..., 1:, 1:]
    total = rest.sum(-1, keepdim=True)
    nosink = torch.where(total > 0, rest / total.clamp(min=torch.finfo(dtype).tiny), torch.zeros_like(rest))
    if request.key_values is not None:
        kv, weight = request.key_values.to(dtype), request.query_weight.to(dtype)
        out["mass"] = torch.einsum("bhqk,bkc,bq->bhc", attn, kv, weight)
        out["mass_nosink"] = torch.einsum("bhqk,bkc,bq->bhc", nosink, kv[:, 1:], weight[:, 1:])
    if request.query_kind is not None:
        s = attn.shape[-1]
        n_keys = torch.arange(1, s + 1, dtype=dtype, device=attn.device)
        entropy = -torch.special.xlogy(attn, attn).sum(-1)
        out["entropy"] = _kind_sums(entropy, request.query_kind, n_keys, request.n_kinds)
        entropy_rest = -torch.special.xlogy(nosink, nosink).sum(-1)
        out["entropy_nosink"] = _kind_sums(entropy_rest, request.query_kind[:, 1:], n_keys[:-1], request.n_kinds)
    return _reduce_rows(out, request)


def stats_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """The registered attention function: SDPA for the output; with an active collector and a causal pass
    without padding, also the layer's statistics (added to the collector)."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    collector = _ACTIVE.get()
    if collector is None:
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    if attention_mask is not None or query.shape[-2] != key.shape[-2]:
        raise ValueError("attention statistics need a causal pass over unpadded rows (no attention mask, no KV cache)")
    if query.shape[1] != key.shape[1]:  # grouped-query attention: each key/value head serves a group of query heads
        key, value = (t.repeat_interleave(query.shape[1] // key.shape[1], dim=1) for t in (key, value))
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    out, lse = attention_with_lse(query, key, value, scale)
    collector.add(module.layer_idx, layer_statistics(query, key, scale, lse, collector.request, collector.workspace))
    return out.transpose(1, 2).contiguous(), None


def register() -> str:
    """Register `STATS_IMPLEMENTATION` with transformers (attention function + SDPA's mask); idempotent."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(STATS_IMPLEMENTATION, stats_attention)
    AttentionMaskInterface.register(STATS_IMPLEMENTATION, sdpa_mask)
    return STATS_IMPLEMENTATION

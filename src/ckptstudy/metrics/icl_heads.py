"""ICL heads (`icl/`): per-head induction, previous-token and duplicate-token scores; ICL loss scores.

Pure tensor functions first; `measure` at the end wires them to capture passes over the probes.
Conventions on `random_repeat` = BOS + R random tokens + the same R tokens (length 1 + 2R):
for a query q in the second copy (R+1 <= q <= 2R) the previous occurrence of its token is
at q - R, so
- induction score: attention from q to q - R + 1 (the token after the previous occurrence),
- duplicate-token score: attention from q to q - R,
- previous-token score: attention from q to q - 1, over every query 1 <= q <= 2R.
Each is the mean over prompts and queries, per head: [n_layers, n_heads].
"""

from __future__ import annotations

import math

import torch

from ckptstudy.capture import capture
from ckptstudy.metrics import FamilyResult


def diagonal_attention_sum(attn: torch.Tensor, queries: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """Sum over batch and the given (query, key) pairs of attention, per head.

    attn: [batch, head, q, k]; queries, keys: [Q] -> [head]
    """
    return attn[:, :, queries, keys].sum(dim=(0, 2))


def repeat_pattern_positions(repeat_length: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """(query, key) positions of the induction, duplicate and previous-token patterns."""
    r = repeat_length
    second = torch.arange(r + 1, 2 * r + 1)
    every = torch.arange(1, 2 * r + 1)
    return {
        "induction": (second, second - r + 1),
        "duplicate": (second, second - r),
        "prev_token": (every, every - 1),
    }


def head_pattern_sums(attn: torch.Tensor, repeat_length: int) -> torch.Tensor:
    """Summed induction / duplicate / previous-token attention of one layer: [3, head]."""
    pos = repeat_pattern_positions(repeat_length)
    return torch.stack([diagonal_attention_sum(attn, q, k) for q, k in pos.values()])


def token_nll(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Next-token negative log-likelihood: nll[b, t] = -log p(ids[b, t+1] | ids[b, :t+1]); [b, s-1]."""
    logprobs = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    return -logprobs.gather(-1, ids[:, 1:, None]).squeeze(-1)


def repeat_nll_gain(nll_by_position: torch.Tensor, repeat_length: int) -> float:
    """Mean NLL over the first copy minus the second copy (tokens that are predictable from context).

    nll_by_position[t] is the NLL of token t+1. The first token of each copy is excluded:
    it cannot be predicted from the context in either copy.
    """
    r = repeat_length
    first = nll_by_position[1:r]  # tokens 2..R
    second = nll_by_position[r + 1 : 2 * r]  # tokens R+2..2R
    return float(first.mean() - second.mean())


def icl_score(nll_by_position: torch.Tensor, late: int, early: int, window: int) -> float:
    """Loss around token `late` minus loss around token `early` (Olsson et al.); negative = uses context.

    Positions are clipped to the sequence; each is the mean over `window` tokens centred there.
    """
    n = nll_by_position.shape[0]

    def around(p: int) -> torch.Tensor:
        p = min(max(p, 0), n - 1)
        lo = max(0, p - window // 2)
        return nll_by_position[lo : min(n, lo + window)].mean()

    return float(around(late - 1) - around(early - 1))


def top_k_mean(scores: torch.Tensor, k: int) -> float:
    flat = scores.flatten()
    return float(flat.topk(min(k, flat.numel())).values.mean())


def measure(
    ctx,
    late_position: int = 500,
    early_position: int = 50,
    window: int = 9,
    top_k: int = 3,
) -> FamilyResult:
    """Per-head pattern scores on `random_repeat`, repeated-half NLL gain, ICL score on `long_text`."""
    probes = ctx.probes
    r = probes.repeat_length
    ids = probes.random_repeat
    cap = capture(
        ctx.model,
        ids,
        attn_fn=lambda _layer, attn, _ids: head_pattern_sums(attn, r),
        logits_fn=lambda logits, chunk: token_nll(logits, chunk).sum(0),
        batch_size=ctx.batch_size,
    )
    counts = torch.tensor([r, r, 2 * r], dtype=torch.float) * ids.shape[0]
    per_layer = torch.stack(cap.attn) / counts[None, :, None]  # [layer, 3, head]
    induction, duplicate, prev = per_layer[:, 0], per_layer[:, 1], per_layer[:, 2]
    nll = cap.logits / ids.shape[0]

    long_text = probes.long_text[:, : ctx.context_length]  # positions past the context are meaningless
    long = capture(
        ctx.model,
        long_text,
        logits_fn=lambda logits, chunk: token_nll(logits, chunk).sum(0),
        batch_size=max(1, ctx.batch_size // 4),
    )
    long_nll = long.logits / long_text.shape[0]
    scalars = {
        "icl/induction_max": float(induction.max()),
        f"icl/induction_top{top_k}_mean": top_k_mean(induction, top_k),
        "icl/prev_token_max": float(prev.max()),
        "icl/duplicate_max": float(duplicate.max()),
        "icl/repeat_nll_gain": repeat_nll_gain(nll, r),
        "icl/icl_score": icl_score(long_nll, late_position, early_position, window),
    }
    if not all(math.isfinite(v) for v in scalars.values()):
        raise FloatingPointError(f"non-finite ICL scalars: {scalars}")
    arrays = {"icl/induction": induction, "icl/prev_token": prev, "icl/duplicate": duplicate}
    return FamilyResult(scalars=scalars, arrays={k: v.numpy() for k, v in arrays.items()})

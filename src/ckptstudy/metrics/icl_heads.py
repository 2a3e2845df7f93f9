"""ICL heads (`icl/`): per-head induction, previous-token and duplicate-token scores; ICL loss scores;
per-head ablation effects on copied (ICL) and natural loops and how concentrated they are.

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

from ckptstudy.ablation import ABLATIONS, SCORES, Targets, attribution_effects, exact_effects
from ckptstudy.capture import capture
from ckptstudy.generation import greedy_generate
from ckptstudy.metrics import FamilyResult
from ckptstudy.metrics.specialization import (
    cosine,
    effective_heads,
    gini,
    jaccard,
    spearman,
    top_heads,
    top_share,
)


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


def icl_targets(icl_ids: torch.Tensor, passage_length: int) -> Targets:
    """Targets on `icl_repeat`: every query in cycles >= 2 predicts the copy of the next token."""
    mask = torch.zeros_like(icl_ids, dtype=torch.bool)
    mask[:, passage_length : icl_ids.shape[1] - 1] = True
    return Targets(icl_ids, mask)


def natural_loop_targets(
    prompts: torch.Tensor, generated: torch.Tensor, period: torch.Tensor, onset: torch.Tensor
) -> Targets | None:
    """Targets on natural loops: prompt + generation of the looping rows; every query whose next token
    lies in cycle >= 2 of the loop predicts that (repeated) token. None when nothing loops."""
    looping = period > 0
    if not looping.any():
        return None
    ids = torch.cat([prompts, generated], dim=1)[looping]
    first = prompts.shape[1] + onset[looping] + period[looping] - 1  # query predicting cycle 2's first token
    position = torch.arange(ids.shape[1])[None, :]
    mask = (position >= first[:, None]) & (position < ids.shape[1] - 1)
    return Targets(ids, mask)


def copy_rate(continuations: torch.Tensor, passages: torch.Tensor) -> tuple[float, float]:
    """(share of rows whose continuation repeats the passage exactly as far as it goes, share of
    continuation tokens that are the copy)."""
    expected = passages.repeat(1, continuations.shape[1] // passages.shape[1] + 1)[:, : continuations.shape[1]]
    match = continuations == expected
    return float(match.all(dim=1).float().mean()), float(match.float().mean())


def head_effects(model, targets: Targets, mode: str, ablation: str, score: str, max_rows: int) -> torch.Tensor:
    if mode == "exact":
        return exact_effects(model, targets, ablation, score, max_rows=max_rows)
    if mode == "attribution":
        return attribution_effects(model, targets, ablation, score)
    raise ValueError(f"metrics.icl_heads.mode={mode!r} is not valid; choose one of exact, attribution, off")


def specialization_scalars(
    effects: torch.Tensor, induction: torch.Tensor, top_k: int, min_total: float = 0.0
) -> dict[str, float]:
    """Concentration of the effect vector; shares, N_eff and Gini are NaN when the total positive
    effect is below `min_total` (then they describe noise, not a circuit)."""
    total = float(effects.clamp(min=0).sum())
    if total < min_total:
        effects = torch.full_like(effects, math.nan)
    return {
        "icl/ablation_top1_share": top_share(effects, 1),
        f"icl/ablation_top{top_k}_share": top_share(effects, top_k),
        "icl/ablation_neff": effective_heads(effects),
        "icl/ablation_gini": gini(effects),
        "icl/ablation_vs_induction_spearman": spearman(effects, induction),
        "icl/ablation_total": total,
    }


def validate_attribution(
    model, targets: Targets, estimate: torch.Tensor, k: int, ablation: str, score: str, seed: int, max_rows: int
) -> float:
    """Spearman between attribution and exact effects on the k top-ranked heads plus k random others."""
    n_heads = estimate.shape[1]
    top = estimate.flatten().topk(min(k, estimate.numel())).indices.tolist()
    rest = [i for i in range(estimate.numel()) if i not in top]
    gen = torch.Generator().manual_seed(seed)
    extra = [rest[i] for i in torch.randperm(len(rest), generator=gen)[:k].tolist()]
    chosen = [(i // n_heads, i % n_heads) for i in top + extra]
    exact = exact_effects(model, targets, ablation, score, heads=chosen, max_rows=max_rows)
    picked = torch.tensor([i for i in top + extra])
    return spearman(estimate.flatten()[picked], exact.flatten()[picked])


def measure(
    ctx,
    late_position: int = 500,
    early_position: int = 50,
    window: int = 9,
    top_k: int = 3,
    mode: str = "exact",
    ablation: str = "zero",
    score: str = "logprob",
    validate_k: int = 0,
    rate_cycles: int = 2,
    max_rows: int = 64,
    min_effect_total: float = 0.01,
) -> FamilyResult:
    """Head pattern scores and loss scores; with `mode` exact/attribution also the per-head ablation effects
    on copied (ICL) and natural loops and their specialization; `mode=off` skips the ablations."""
    if ablation not in ABLATIONS:
        raise ValueError(f"metrics.icl_heads.ablation={ablation!r} is not valid; choose one of {', '.join(ABLATIONS)}")
    if score not in SCORES:
        raise ValueError(f"metrics.icl_heads.score={score!r} is not valid; choose one of {', '.join(SCORES)}")
    result = pattern_and_loss_scores(ctx, late_position, early_position, window, top_k)
    rate, accuracy = icl_repeat_rate(ctx, rate_cycles)
    result.scalars["icl/icl_repeat_rate"] = rate
    result.scalars["icl/icl_copy_accuracy"] = accuracy
    if mode == "off":
        return result
    induction = torch.from_numpy(result.arrays["icl/induction"])
    targets = icl_targets(ctx.probes.icl_repeat[:, : ctx.context_length], ctx.probes.icl_length)
    effects = head_effects(ctx.model, targets, mode, ablation, score, max_rows)
    result.scalars.update(specialization_scalars(effects, induction, top_k, min_effect_total))
    result.arrays["icl/ablation_effect"] = effects.numpy()
    if mode == "attribution" and validate_k > 0:
        result.scalars["icl/attribution_spearman"] = validate_attribution(
            ctx.model, targets, effects, validate_k, ablation, score, ctx.seed, max_rows
        )

    loops = ctx.natural_loops()
    period, onset = loops.period, loops.onset
    natural = natural_loop_targets(ctx.probes.natural, loops.generation.ids, period, onset)
    nat_scalars = dict.fromkeys(
        ("icl/natural_ablation_neff", "icl/icl_natural_top5_jaccard", "icl/icl_natural_cosine"), math.nan
    )
    if natural is not None:
        natural_effects = head_effects(ctx.model, natural, mode, ablation, score, max_rows)
        nat_scalars = {
            "icl/natural_ablation_neff": effective_heads(natural_effects),
            "icl/icl_natural_top5_jaccard": jaccard(top_heads(effects, 5), top_heads(natural_effects, 5)),
            "icl/icl_natural_cosine": cosine(effects, natural_effects),
        }
        result.arrays["icl/natural_effect"] = natural_effects.numpy()
    result.scalars.update(nat_scalars)
    result.scalars["icl/natural_loop_prompts"] = float((period > 0).sum())
    return result


def icl_repeat_rate(ctx, cycles: int) -> tuple[float, float]:
    """Share of `icl_repeat` prompts whose greedy continuation of `cycles` passages (clipped to the
    context) copies every token, and the share of continuation tokens that are copies."""
    prompts = ctx.probes.icl_repeat
    length = ctx.probes.icl_length
    room = ctx.room_after(prompts, 1, "icl_repeat")
    gen = greedy_generate(
        ctx.model,
        prompts,
        min(cycles * length, room),
        pad_id=ctx.tokenizer.pad_token_id or 0,
        batch_size=ctx.batch_size,
        desc="icl continuation",
    )
    return copy_rate(gen.ids, prompts[:, :length])


def pattern_and_loss_scores(ctx, late_position: int, early_position: int, window: int, top_k: int) -> FamilyResult:
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

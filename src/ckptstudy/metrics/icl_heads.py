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

Ablation effects are compared like with like: on both loop kinds the targets are the queries inside the
copies of the cycle (cycle 2 onward of `icl_repeat`; from onset + period of a natural loop), and both
effect vectors are held to the same `min_effect_total` (below it a vector is noise: its concentration and
any comparison involving it are NaN, with the reason). The top-k overlap of the ICL and natural head sets
comes with its chance level for the model's head count (`icl/icl_natural_topk_jaccard_chance`).

Bootstrap samples (resampling prompts, `FamilyResult.samples`) for every statistic over prompts: the
pattern maxima and top-k mean and the repeated-half NLL gain (per-prompt per-head scores and NLL of
`random_repeat`), the ICL score (per-window NLL of `long_text`), all from the main passes run per row
(`StatsRequest(per_row=True)`); the ICL repetition rate and copy accuracy (per `icl_repeat` prompt); the
ablation effect vectors and their concentration (per-prompt effect sums and target counts,
`ablation.EffectRows`: `icl_repeat` rows, and one row per `natural` prompt, zero where it does not loop, so
they resample with the rep/ family's natural prompts); the effect-vs-induction correlation and the ICL-vs-natural
comparisons (`compare` samples of two of those). `NO_INTERVAL` says why the other scalars have none.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ckptstudy.measure.ablation import (
    ABLATIONS,
    SCORES,
    EffectRows,
    Targets,
    attribution_effect_rows,
    exact_effect_rows,
    exact_effects,
)
from ckptstudy.measure.attention_stats import StatsRequest
from ckptstudy.measure.capture import capture_stats
from ckptstudy.measure.generation import NaturalLoops, greedy_generate
from ckptstudy.metrics import FamilyResult
from ckptstudy.stats.bootstrap import Sample
from ckptstudy.stats.specialization import (
    cosine,
    effective_heads,
    gini,
    jaccard,
    jaccard_chance,
    spearman,
    top_heads,
    top_share,
)

# 2: natural targets from the first copy; one threshold for both sides; top_k overlap + chance
# 3: bootstrap samples for every statistic over prompts (ablation concentration, comparisons)
DEFINITION_VERSION = 3
MODES = ("exact", "attribution", "off")
NO_INTERVAL = {  # scalar key (regular expression, matched in full) -> why it has no bootstrap interval
    "icl/natural_loop_prompts": "a count of the natural prompts that loop (how many rows the natural ablation "
    "used), not an estimate; its rate over prompts has an interval as rep/natural_rate",
    "icl/icl_natural_topk_jaccard_chance": "a constant of the model's head count and top_k: no data in it",
    "icl/attribution_spearman": "a check of the attribution estimator against exact ablation on 2 * validate_k "
    "heads chosen from the estimate, not a statistic over prompts",
}


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


def natural_loop_targets(loops: NaturalLoops) -> Targets | None:
    """Targets on natural loops: prompt + generation of the looping rows; every query from the first COPY
    of the cycle on (`loops.first_copy_start()` = onset + period, like cycle 2 onward of `icl_repeat`)
    predicts its (repeated) next token. The first instance of the cycle is not a copy of anything and is
    left out, as the first passage of `icl_repeat` is. None when nothing loops or no query is left."""
    if not loops.looping.any():
        return None
    ids = loops.sequences()
    first = loops.first_copy_start()
    position = torch.arange(ids.shape[1])[None, :]
    mask = (position >= first[:, None]) & (position < ids.shape[1] - 1)
    return Targets(ids, mask) if mask.any() else None


def copy_rows(continuations: torch.Tensor, passages: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Per prompt: (1 when its continuation repeats the passage exactly as far as it goes, else 0; share of
    its continuation tokens that are the copy). `copy_rate` is their mean over prompts."""
    expected = passages.repeat(1, continuations.shape[1] // passages.shape[1] + 1)[:, : continuations.shape[1]]
    match = continuations == expected
    return match.all(dim=1).double().numpy(), match.double().mean(dim=1).numpy()


def copy_rate(continuations: torch.Tensor, passages: torch.Tensor) -> tuple[float, float]:
    """(share of rows whose continuation repeats the passage exactly as far as it goes, share of
    continuation tokens that are the copy)."""
    expected = passages.repeat(1, continuations.shape[1] // passages.shape[1] + 1)[:, : continuations.shape[1]]
    match = continuations == expected
    return float(match.all(dim=1).float().mean()), float(match.float().mean())


def head_effects(model, targets: Targets, mode: str, ablation: str, score: str, max_rows: int) -> EffectRows:
    """Per-prompt per-head effects (`ablation.EffectRows`, rows = the rows of `targets`)."""
    if mode == "exact":
        return exact_effect_rows(model, targets, ablation, score, max_rows=max_rows)
    if mode == "attribution":
        return attribution_effect_rows(model, targets, ablation, score, max_rows=max_rows)
    raise ValueError(f"metrics.icl_heads.mode={mode!r} is not valid; valid: {', '.join(MODES)}")


def effect_threshold(min_total: float) -> float:
    """The `threshold` of an effect sample: `min_total`, or the least positive float when it is 0 (the
    reported statistics need a positive total as well: total >= that float <=> total > 0)."""
    return float(min_total) if min_total > 0 else math.ulp(0.0)


def effect_samples(
    prefix: str, sums: np.ndarray, targets: np.ndarray, prompts: str, top_k: int, min_total: float
) -> dict[str, Sample]:
    """Bootstrap samples of `concentration(..., prefix)`: the positive total of the pooled per-prompt effect
    sums [n, layers, heads] over target counts [n] (prompt set `prompts`), and its top-1/top-k shares, N_eff
    and Gini (borrowing its rows), NaN below `min_total` as reported."""
    threshold = effect_threshold(min_total)
    total = f"{prefix}_total"
    out = {
        total: Sample("vector", sums, prompts=prompts, weights=targets, function="positive_total", threshold=threshold)
    }
    for name, function, k in (
        ("top1_share", "top_share", 1),
        (f"top{top_k}_share", "top_share", top_k),
        ("neff", "neff", None),
        ("gini", "gini", None),
    ):
        out[f"{prefix}_{name}"] = Sample("vector", of=(total,), function=function, k=k, threshold=threshold)
    return out


def _below_threshold(total: float, min_total: float) -> str | None:
    """Why a total positive effect is too small to describe a circuit, or None when it is not."""
    if total < min_total:
        return (
            f"total positive ablation effect {total:.3g} nats < min_effect_total {min_total:g}: "
            "the effect vector is noise, its concentration is not reported"
        )
    if total <= 0:
        return "no head has a positive ablation effect: no distribution over heads to measure"
    return None


def concentration(effects: torch.Tensor, top_k: int, min_total: float, prefix: str) -> FamilyResult:
    """`{prefix}_top1_share`, `_top{k}_share`, `_neff`, `_gini` and `_total` of an effect vector; all but
    the total are NaN (with the reason) when the total positive effect is below `min_total`."""
    out = FamilyResult()
    total = float(effects.clamp(min=0).sum())
    out.set(f"{prefix}_total", total, "the effect vector is not finite")
    why = _below_threshold(total, min_total)
    if why is not None:
        for name in ("top1_share", f"top{top_k}_share", "neff", "gini"):
            out.nan(f"{prefix}_{name}", why)
        return out
    out.set(f"{prefix}_top1_share", top_share(effects, 1), "the effect vector is not finite")
    out.set(f"{prefix}_top{top_k}_share", top_share(effects, top_k), "the effect vector is not finite")
    out.set(f"{prefix}_neff", effective_heads(effects), "the effect vector is not finite")
    out.set(f"{prefix}_gini", gini(effects), "the effect vector is not finite")
    return out


def specialization_scalars(
    effects: torch.Tensor, induction: torch.Tensor, top_k: int, min_total: float = 0.0
) -> FamilyResult:
    """Concentration of the ICL effect vector (`icl/ablation_*`) and its rank correlation with the
    induction score; all but the total are NaN (with the reason) below `min_total`."""
    out = concentration(effects, top_k, min_total, "icl/ablation")
    key = "icl/ablation_vs_induction_spearman"
    why = _below_threshold(out.scalars["icl/ablation_total"], min_total)
    if why is not None:
        out.nan(key, why)
    else:
        out.set(key, spearman(effects, induction), "ablation effects or induction scores are the same for every head")
    return out


def comparison_scalars(
    icl_effects: torch.Tensor,
    natural_effects: torch.Tensor | None,
    top_k: int,
    min_total: float,
    missing: str = "no prompt's continuation loops at this checkpoint",
) -> FamilyResult:
    """Concentration of the natural-loop effect vector (`icl/natural_ablation_*`, same threshold as the ICL
    side) and how it compares with the ICL one: overlap of the top-k head sets (`icl/icl_natural_top{k}_jaccard`,
    beside its chance level for the model's head count) and cosine. A comparison is NaN (with the reason)
    when either side's total positive effect is below `min_total`: noise has no head set to compare.
    `natural_effects` None = no natural loop to measure (`missing` says why)."""
    out = FamilyResult()
    heads = icl_effects.numel()
    out.set("icl/icl_natural_topk_jaccard_chance", jaccard_chance(heads, top_k), "")
    jaccard_key, cosine_key = f"icl/icl_natural_top{top_k}_jaccard", "icl/icl_natural_cosine"
    if natural_effects is None:
        for name in ("total", "top1_share", f"top{top_k}_share", "neff", "gini"):
            out.nan(f"icl/natural_ablation_{name}", missing)
        out.nan(jaccard_key, missing)
        out.nan(cosine_key, missing)
        return out
    out.update(concentration(natural_effects, top_k, min_total, "icl/natural_ablation"))
    icl_why = _below_threshold(float(icl_effects.clamp(min=0).sum()), min_total)
    natural_why = _below_threshold(out.scalars["icl/natural_ablation_total"], min_total)
    if icl_why is not None or natural_why is not None:
        sides = (("ICL side", icl_why), ("natural side", natural_why))
        why = "; ".join(f"{side}: {reason}" for side, reason in sides if reason is not None)
        out.nan(jaccard_key, why)
        out.nan(cosine_key, why)
        return out
    out.set(jaccard_key, jaccard(top_heads(icl_effects, top_k), top_heads(natural_effects, top_k)), "")
    out.set(cosine_key, cosine(icl_effects, natural_effects), "an effect vector is zero")
    return out


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


def check_parameters(params: dict) -> None:
    """Refuse a bad `metrics.icl_heads.*` value before any work, naming it and what is valid."""
    choices = {"mode": MODES, "ablation": ABLATIONS, "score": SCORES}
    for name, valid in choices.items():
        if params[name] not in valid:
            raise ValueError(f"metrics.icl_heads.{name}={params[name]!r} is not valid; valid: {', '.join(valid)}")
    minimum = {
        "late_position": 0,
        "early_position": 0,
        "window": 1,
        "top_k": 1,
        "validate_k": 0,
        "rate_cycles": 1,
        "max_rows": 1,
    }
    for name, low in minimum.items():
        value = params[name]
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"metrics.icl_heads.{name}={value!r} is not valid; valid: an integer >= {low}")
    value = params["min_effect_total"]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ValueError(f"metrics.icl_heads.min_effect_total={value!r} is not valid; valid: a number >= 0 (nats)")


@dataclass(frozen=True)
class EffectSettings:
    """How per-head effects are measured and summarised (the `mode`, `ablation`, `score`, `max_rows`,
    `top_k` and `min_effect_total` parameters)."""

    mode: str
    ablation: str
    score: str
    max_rows: int
    top_k: int
    min_effect_total: float

    def effects(self, model, targets: Targets) -> EffectRows:
        return head_effects(model, targets, self.mode, self.ablation, self.score, self.max_rows)


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
    """Head pattern scores, loss scores and the ICL repetition rate; with `mode` exact/attribution also the
    per-head ablation effects on copied (ICL) and natural loops and their specialization (`mode=off` skips
    the ablations). Every parameter is checked before any work."""
    check_parameters({k: v for k, v in locals().items() if k != "ctx"})
    result = pattern_and_loss_scores(ctx, late_position, early_position, window, top_k)
    rate, accuracy, *rows = icl_repeat_rate(ctx, rate_cycles)
    result.set("icl/icl_repeat_rate", rate, "no icl_repeat prompt")
    result.set("icl/icl_copy_accuracy", accuracy, "no icl_repeat prompt")
    if rows:
        copied, per_prompt = rows[0]
        result.add_sample("icl/icl_repeat_rate", Sample("mean", copied, prompts="icl_repeat"))
        result.add_sample("icl/icl_copy_accuracy", Sample("mean", per_prompt, prompts="icl_repeat"))
    if mode == "off":
        return result
    settings = EffectSettings(mode, ablation, score, max_rows, top_k, min_effect_total)
    # the per-head induction score as its sample has it (float64 mean over prompts), for the compare sample
    induction = torch.from_numpy(result.samples["icl/induction_max"].values).mean(0)
    icl, icl_effects = icl_loop_effects(ctx, settings, induction, validate_k)
    result.update(icl)
    result.update(natural_loop_effects(ctx, settings, icl_effects))
    return result


def icl_loop_effects(
    ctx, settings: EffectSettings, induction: torch.Tensor, validate_k: int
) -> tuple[FamilyResult, torch.Tensor]:
    """Per-head effects on the copies of `icl_repeat` (queries from cycle 2 on), their concentration and
    rank correlation with the induction score, with their bootstrap samples (rows = `icl_repeat` prompts);
    in attribution mode with `validate_k` > 0 also the rank correlation of the estimate with exact ablation
    on 2 * validate_k heads. Also returns the pooled effect vector (float64)."""
    targets = icl_targets(ctx.probes.icl_repeat[:, : ctx.context_length], ctx.probes.icl_length)
    rows = settings.effects(ctx.model, targets)
    effects = rows.pooled64
    result = specialization_scalars(effects, induction, settings.top_k, settings.min_effect_total)
    result.arrays["icl/ablation_effect"] = effects.float().numpy()
    samples = effect_samples(
        "icl/ablation", rows.sums.numpy(), rows.targets.numpy(), "icl_repeat", settings.top_k, settings.min_effect_total
    )
    # the ablation side's threshold applies to the comparison (bootstrap: a side's threshold)
    samples["icl/ablation_vs_induction_spearman"] = Sample(
        "compare", of=("icl/ablation_total", "icl/induction_max"), function="spearman"
    )
    for key, sample in samples.items():
        result.add_sample(key, sample)
    if settings.mode == "attribution" and validate_k > 0:
        estimate = rows.pooled
        rho = validate_attribution(
            ctx.model, targets, estimate, validate_k, settings.ablation, settings.score, ctx.seed, settings.max_rows
        )
        result.set("icl/attribution_spearman", rho, "estimated or exact effects are the same for every validated head")
    return result, effects


def natural_effect_rows(loops: NaturalLoops, rows: EffectRows | None, shape: tuple[int, int]) -> EffectRows:
    """Per-prompt effects indexed by natural prompt (`NaturalLoops.per_prompt`): the looping prompts' rows
    (`rows`, in the order of `loops.sequences()`) and zero sums and zero targets for the others (for all
    when `rows` is None: nothing to measure)."""
    if rows is None:
        looping = int(loops.looping.sum())
        rows = EffectRows(torch.zeros(looping, *shape, dtype=torch.float64), torch.zeros(looping, dtype=torch.float64))
    return EffectRows(loops.per_prompt(rows.sums), loops.per_prompt(rows.targets))


def natural_loop_effects(ctx, settings: EffectSettings, icl_effects: torch.Tensor) -> FamilyResult:
    """Per-head effects on the natural loops (`ctx.natural_loops()`, queries from the first copy on), their
    concentration (same threshold as the ICL side) and comparison with the ICL effects `icl_effects`, with
    their bootstrap samples (one row per natural prompt)."""
    loops = ctx.natural_loops()
    result = FamilyResult()
    looping = int(loops.looping.sum())
    result.set("icl/natural_loop_prompts", looping, "")
    targets = natural_loop_targets(loops)
    natural = None
    rows = natural_effect_rows(
        loops, None if targets is None else settings.effects(ctx.model, targets), tuple(icl_effects.shape)
    )
    if targets is not None:
        natural = rows.pooled64
        result.arrays["icl/natural_effect"] = natural.float().numpy()
    missing = (
        "no prompt's continuation loops at this checkpoint"
        if looping == 0
        else f"the {looping} natural loop(s) leave no query inside a copy of their cycle"
    )
    result.update(comparison_scalars(icl_effects, natural, settings.top_k, settings.min_effect_total, missing))
    prefix, top_k = "icl/natural_ablation", settings.top_k
    samples = effect_samples(
        prefix, rows.sums.numpy(), rows.targets.numpy(), "natural", top_k, settings.min_effect_total
    )
    sides = ("icl/ablation_total", f"{prefix}_total")
    samples[f"icl/icl_natural_top{top_k}_jaccard"] = Sample("compare", of=sides, function="jaccard", k=top_k)
    samples["icl/icl_natural_cosine"] = Sample("compare", of=sides, function="cosine")
    for key, sample in samples.items():
        result.add_sample(key, sample)
    return result


def icl_repeat_rate(ctx, cycles: int) -> tuple[float, float, tuple[np.ndarray, np.ndarray]]:
    """Share of `icl_repeat` prompts whose greedy continuation of `cycles` passages (clipped to the
    context) copies every token, the share of continuation tokens that are copies, and both per prompt
    (`copy_rows`, the bootstrap samples)."""
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
    rate, accuracy = copy_rate(gen.ids, prompts[:, :length])
    return rate, accuracy, copy_rows(gen.ids, prompts[:, :length])


def pattern_and_loss_scores(ctx, late_position: int, early_position: int, window: int, top_k: int) -> FamilyResult:
    """Per-head pattern scores on `random_repeat`, repeated-half NLL gain, ICL score on `long_text` (NaN with
    the probe's reason when `long_text` is empty: no document was long enough), with their bootstrap samples:
    both passes keep prompts apart (`per_row`), the scalars are statistics of the rows."""
    probes = ctx.probes
    r = probes.repeat_length
    ids = probes.random_repeat
    cap = capture_stats(  # weights from the fused kernel's logsumexp; none materialised (capture.py)
        ctx.model,
        ids,
        StatsRequest(diagonals=repeat_pattern_positions(r), per_row=True),  # induction, duplicate, prev_token
        logits_fn=lambda logits, chunk: token_nll(logits, chunk).sum(0),  # per row: [n, seq - 1]
        batch_size=ctx.batch_size,
    )
    counts = torch.tensor([r, r, 2 * r], dtype=torch.double)
    # per prompt: each pattern's mean over its queries [n, layer, 3, head]; the scores are their means
    rows = torch.stack([layer["diagonal"] for layer in cap.attn], dim=1).double() / counts[None, None, :, None]
    induction_rows, duplicate_rows, prev_rows = (rows[:, :, i] for i in range(3))
    induction, duplicate, prev = induction_rows.mean(0), duplicate_rows.mean(0), prev_rows.mean(0)
    nll_rows = cap.logits.double()  # [n, seq - 1]

    scalars = {
        "icl/induction_max": float(induction.max()),
        f"icl/induction_top{top_k}_mean": top_k_mean(induction, top_k),
        "icl/prev_token_max": float(prev.max()),
        "icl/duplicate_max": float(duplicate.max()),
        "icl/repeat_nll_gain": repeat_nll_gain(nll_rows.mean(0), r),
    }
    if not all(math.isfinite(v) for v in scalars.values()):
        raise FloatingPointError(f"non-finite ICL scalars: {scalars}")
    result = FamilyResult(scalars=scalars)
    gains = np.array([repeat_nll_gain(row, r) for row in nll_rows])
    samples = {
        "icl/induction_max": Sample("max_of_mean", induction_rows.numpy(), prompts="random_repeat"),
        f"icl/induction_top{top_k}_mean": Sample("top_mean", induction_rows.numpy(), prompts="random_repeat", k=top_k),
        "icl/prev_token_max": Sample("max_of_mean", prev_rows.numpy(), prompts="random_repeat"),
        "icl/duplicate_max": Sample("max_of_mean", duplicate_rows.numpy(), prompts="random_repeat"),
        "icl/repeat_nll_gain": Sample("mean", gains, prompts="random_repeat"),
    }
    long_text = probes.long_text[:, : ctx.context_length]  # positions past the context are meaningless
    if long_text.shape[0] == 0:
        result.nan("icl/icl_score", probes.empty_reason("long_text"))
        samples["icl/icl_score"] = Sample("mean", np.zeros(0), prompts="long_text")  # no prompt: NaN as reported
    else:
        long = capture_stats(
            ctx.model,
            long_text,
            StatsRequest(per_row=True),  # logits only, per row: [n, seq - 1]
            logits_fn=lambda logits, chunk: token_nll(logits, chunk).sum(0),
            batch_size=max(1, ctx.batch_size // 4),
        )
        long_rows = long.logits.double()
        score = icl_score(long_rows.mean(0), late_position, early_position, window)
        if not math.isfinite(score):
            raise FloatingPointError(f"non-finite icl/icl_score: {score}")
        result.set("icl/icl_score", score, "")
        scores = np.array([icl_score(row, late_position, early_position, window) for row in long_rows])
        samples["icl/icl_score"] = Sample("mean", scores, prompts="long_text")
    for key, sample in samples.items():
        result.add_sample(key, sample)
    arrays = {"icl/induction": induction, "icl/prev_token": prev, "icl/duplicate": duplicate}
    result.arrays.update({k: v.float().numpy() for k, v in arrays.items()})
    return result

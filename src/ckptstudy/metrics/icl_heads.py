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
comparisons (`compare` samples of two of those). Every such scalar IS its sample's statistic; the few other
scalars (a count, a constant, a check of the estimator) say why they have no interval where they are reported.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Annotated

import numpy as np
import torch

from ckptstudy.measure.ablation import (
    EffectRows,
    Targets,
    attribution_effect_rows,
    exact_effect_rows,
)
from ckptstudy.measure.attention_stats import StatsRequest
from ckptstudy.measure.capture import capture_stats
from ckptstudy.measure.cost import Pass, ProbeSizes, Shape, generation_pass, natural_generation
from ckptstudy.measure.generation import NaturalLoops, greedy_generate
from ckptstudy.measure.precision import Tolerance
from ckptstudy.measure.readout import token_logprobs
from ckptstudy.metrics import FamilyResult
from ckptstudy.params import Choice, Range
from ckptstudy.stats.bootstrap import Sample, columns, statistic
from ckptstudy.stats.specialization import jaccard_chance, spearman

# 2: natural targets from the first copy; one threshold for both sides; top_k overlap + chance
# 3: bootstrap samples for every statistic over prompts (ablation concentration, comparisons)
DEFINITION_VERSION = 3
# Scalars on a bfloat16/float16 load within this of float32 (measured: <= 0.36 of it on the micro suite and a random
# Pythia-14m, README "Precision"). Top-k sets (jaccard) and the share of greedy continuations that copy (an argmax
# chain: one near-tie flips a token) are thresholded: listed by the comparison, not checked.
TOLERANCE = Tolerance(rtol=0.05, atol=0.02, exclude=("jaccard", "icl_repeat_rate"))


# --------------------------------------------------------------------------------------- definitions
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


def next_token_nll(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Per row, the NLL of each next token summed over the rows of `ids` [b, s] (capture_stats hands one row
    at a time): [s - 1]."""
    return -token_logprobs(logits, ids).sum(0)


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
    its continuation tokens that are the copy)."""
    expected = passages.repeat(1, continuations.shape[1] // passages.shape[1] + 1)[:, : continuations.shape[1]]
    match = continuations == expected
    return match.all(dim=1).double().numpy(), match.double().mean(dim=1).numpy()


# ------------------------------------------------------------------------------ per-head effects
@dataclass(frozen=True)
class EffectSettings:
    """How per-head effects are measured and summarised (the `ablation`, `score`, `max_rows`, `top_k` and
    `min_effect_total` parameters, and the estimator that runs: `mode` resolved by `estimator`)."""

    mode: str  # exact | attribution
    ablation: str
    score: str
    max_rows: int | None
    top_k: int
    min_effect_total: float


def head_effects(ctx, targets: Targets, settings: EffectSettings, what: str) -> EffectRows:
    """Per-prompt per-head effects on `targets` (`what`: the loops, for the pass descriptions) by the settings'
    estimator, with the rows per call the job's memory budget allows."""
    n, seq, per_row = targets.ids.shape[0], targets.ids.shape[1], int(targets.mask.sum(1).max())
    if settings.mode == "exact":
        clean, variants = exact_ablation_passes(what, n, seq, per_row, ctx.shape, settings.max_rows)
        return exact_effect_rows(
            ctx.model,
            targets,
            settings.ablation,
            settings.score,
            max_rows=ctx.rows(variants),
            group_rows=ctx.rows(clean),
        )
    rows = ctx.rows(attribution_pass(what, n, seq, per_row, ctx.shape, settings.max_rows))
    return attribution_effect_rows(ctx.model, targets, settings.ablation, settings.score, max_rows=rows)


def estimator(mode: str, shape: Shape, exact_max_heads: int) -> str:
    """The estimator `mode` runs on a model of `shape`: `auto` = exact ablation up to `exact_max_heads` heads
    (layers x heads), attribution patching above; exact, attribution and off as given."""
    if mode != "auto":
        return mode
    return "exact" if shape.n_layers * shape.n_heads <= exact_max_heads else "attribution"


def effect_threshold(min_total: float) -> float:
    """The `threshold` of an effect sample: `min_total`, or the least positive float when it is 0 (the
    statistics need a positive total as well: total >= that float <=> total > 0)."""
    return float(min_total) if min_total > 0 else math.ulp(0.0)


def effect_samples(
    prefix: str, sums: np.ndarray, targets: np.ndarray, prompts: str, top_k: int, min_total: float
) -> dict[str, Sample]:
    """Samples of an effect vector's concentration: `{prefix}_total`, the positive total of the pooled
    per-prompt effect sums [n, layers, heads] over target counts [n] (prompt set `prompts`), and its
    `_top1_share`, `_top{k}_share`, `_neff` and `_gini` (borrowing its rows), NaN below `min_total`."""
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


def below_threshold(total: float, min_total: float) -> str | None:
    """Why a total positive effect is too small to describe a circuit, or None when it is not."""
    if total < min_total:
        return (
            f"total positive ablation effect {total:.3g} nats < min_effect_total {min_total:g}: "
            "the effect vector is noise, its concentration is not reported"
        )
    if total <= 0:
        return "no head has a positive ablation effect: no distribution over heads to measure"
    return None


def concentration(
    prefix: str, rows: EffectRows, prompts: str, top_k: int, min_total: float, missing: str | None = None
) -> FamilyResult:
    """`{prefix}_total`, `_top1_share`, `_top{k}_share`, `_neff`, `_gini` of per-prompt effect rows (statistics
    of `effect_samples`) and the pooled effect vector as the per-head array `{prefix}_effect`; the shares are
    NaN (with the reason) below `min_total`; `missing` = why nothing could be measured (every key NaN)."""
    out = FamilyResult()
    samples = effect_samples(prefix, rows.sums.numpy(), rows.targets.numpy(), prompts, top_k, min_total)
    total = f"{prefix}_total"
    not_finite = "the effect vector is not finite"
    why = missing or below_threshold(statistic(total, samples), min_total) or not_finite
    for key, sample in samples.items():
        out.stat(key, sample, missing or not_finite if key == total else why)
    return out


def validate_attribution(ctx, targets: Targets, estimate: torch.Tensor, k: int, settings: EffectSettings) -> float:
    """Spearman between attribution and exact effects on the k top-ranked heads plus k random others."""
    n_heads = estimate.shape[1]
    top = estimate.flatten().topk(min(k, estimate.numel())).indices.tolist()
    rest = [i for i in range(estimate.numel()) if i not in top]
    gen = torch.Generator().manual_seed(ctx.seed)
    extra = [rest[i] for i in torch.randperm(len(rest), generator=gen)[:k].tolist()]
    chosen = [(i // n_heads, i % n_heads) for i in top + extra]
    n, seq, per_row = targets.ids.shape[0], targets.ids.shape[1], int(targets.mask.sum(1).max())
    clean, variants = exact_ablation_passes(
        "attribution check", n, seq, per_row, ctx.shape, settings.max_rows, len(chosen)
    )
    rows = exact_effect_rows(
        ctx.model,
        targets,
        settings.ablation,
        settings.score,
        heads=chosen,
        max_rows=ctx.rows(variants),
        group_rows=ctx.rows(clean),
    )
    picked = torch.tensor([i for i in top + extra])
    return spearman(estimate.flatten()[picked], rows.pooled.flatten()[picked])


def natural_effect_rows(loops: NaturalLoops, rows: EffectRows | None, shape: tuple[int, ...]) -> EffectRows:
    """Per-prompt effects indexed by natural prompt (`NaturalLoops.per_prompt`): the looping prompts' rows
    (`rows`, in the order of `loops.sequences()`) and zero sums and zero targets for the others (for all
    when `rows` is None: nothing to measure)."""
    if rows is None:
        looping = int(loops.looping.sum())
        rows = EffectRows(torch.zeros(looping, *shape, dtype=torch.float64), torch.zeros(looping, dtype=torch.float64))
    return EffectRows(loops.per_prompt(rows.sums), loops.per_prompt(rows.targets))


# ------------------------------------------------------------------------------------ experiments
def pattern_scores(ctx, top_k: int) -> FamilyResult:
    """`pattern_result` of one fused pass over `random_repeat` that keeps prompts apart (no attention weights
    materialised: they come from the fused kernel's logsumexp, `capture.capture_stats`)."""
    r, ids = ctx.probes.repeat_length, ctx.probes.random_repeat
    cap = capture_stats(
        ctx.model,
        ids,
        StatsRequest(diagonals=repeat_pattern_positions(r), per_row=True),  # induction, duplicate, prev_token
        logits_fn=next_token_nll,  # per row: [n, seq - 1]
        batch_size=ctx.rows(pattern_pass(ids.shape[0], ids.shape[1], ctx.shape, ctx.batch_size)),
    )
    counts = torch.tensor([r, r, 2 * r], dtype=torch.double)
    rows = torch.stack([layer["diagonal"] for layer in cap.attn], dim=1).double() / counts[None, None, :, None]
    return pattern_result(rows, cap.logits.double(), r, top_k)


def pattern_result(rows: torch.Tensor, nll_rows: torch.Tensor, repeat_length: int, top_k: int) -> FamilyResult:
    """Per-head induction / duplicate / previous-token scores (their maxima, the top-k mean of induction, and
    the per-head arrays) from each prompt's mean pattern weight rows [n, layer, 3, head], and the
    repeated-half NLL gain from each prompt's next-token NLL [n, seq - 1]; a non-finite one is an error."""
    patterns = {name: rows[:, :, i].numpy() for i, name in enumerate(("induction", "duplicate", "prev_token"))}
    gains = np.array([repeat_nll_gain(row, repeat_length) for row in nll_rows])
    result = FamilyResult()
    for key, sample in {
        "icl/induction_max": Sample("max_of_mean", patterns["induction"], prompts="random_repeat"),
        f"icl/induction_top{top_k}_mean": Sample("top_mean", patterns["induction"], prompts="random_repeat", k=top_k),
        "icl/prev_token_max": Sample("max_of_mean", patterns["prev_token"], prompts="random_repeat"),
        "icl/duplicate_max": Sample("max_of_mean", patterns["duplicate"], prompts="random_repeat"),
        "icl/repeat_nll_gain": Sample("mean", gains, prompts="random_repeat"),
    }.items():
        result.stat(key, sample, None)
    if not all(math.isfinite(v) for v in result.scalars.values()):
        raise FloatingPointError(f"non-finite ICL scalars: {result.scalars}")
    for name in ("induction", "prev_token", "duplicate"):
        result.heads[f"icl/{name}"] = columns(Sample("max_of_mean", patterns[name])).astype(np.float32)
    return result


def loss_score(ctx, late_position: int, early_position: int, window: int) -> FamilyResult:
    """`loss_result` of one pass over `long_text` (clipped to the context) that keeps rows apart; NaN with the
    probe's reason when `long_text` is empty (no document was long enough)."""
    long_text = ctx.probes.long_text[:, : ctx.context_length]  # positions past the context are meaningless
    if long_text.shape[0] == 0:
        result = FamilyResult()
        result.nan("icl/icl_score", ctx.probes.empty_reason("long_text"))
        return result
    long = capture_stats(
        ctx.model,
        long_text,
        StatsRequest(per_row=True),  # logits only, per row: [n, seq - 1]
        logits_fn=next_token_nll,
        batch_size=ctx.rows(nll_pass(long_text.shape[0], long_text.shape[1], ctx.shape, ctx.batch_size)),
    )
    return loss_result(long.logits.double(), late_position, early_position, window)


def loss_result(nll_rows: torch.Tensor, late_position: int, early_position: int, window: int) -> FamilyResult:
    """icl/icl_score: the mean over windows of each window's `icl_score` (nll_rows [n, seq - 1])."""
    scores = np.array([icl_score(row, late_position, early_position, window) for row in nll_rows])
    result = FamilyResult()
    result.stat("icl/icl_score", Sample("mean", scores, prompts="long_text"), None)
    if not math.isfinite(result.scalars["icl/icl_score"]):
        raise FloatingPointError(f"non-finite icl/icl_score: {result.scalars['icl/icl_score']}")
    return result


def icl_repeat_rate(ctx, cycles: int) -> FamilyResult:
    """`copy_result` of the greedy continuations of `icl_repeat` by `cycles` passages (clipped to the context)."""
    prompts, length = ctx.probes.icl_repeat, ctx.probes.icl_length
    new_tokens = min(cycles * length, ctx.room_after(prompts, 1, "icl_repeat"))
    described = continuation_pass(len(prompts), prompts.shape[1], new_tokens, ctx.shape, ctx.batch_size)
    gen = greedy_generate(
        ctx.model,
        prompts,
        new_tokens,
        pad_id=ctx.tokenizer.pad_token_id or 0,
        batch_size=ctx.rows(described),
        desc="icl continuation",
    )
    return copy_result(gen.ids, prompts[:, :length])


def copy_result(continuations: torch.Tensor, passages: torch.Tensor) -> FamilyResult:
    """icl/icl_repeat_rate, the share of prompts whose continuation copies every token, and
    icl/icl_copy_accuracy, the share of continuation tokens that are copies (`copy_rows`)."""
    copied, accuracy = copy_rows(continuations, passages)
    result = FamilyResult()
    result.stat("icl/icl_repeat_rate", Sample("mean", copied, prompts="icl_repeat"), "no icl_repeat prompt")
    result.stat("icl/icl_copy_accuracy", Sample("mean", accuracy, prompts="icl_repeat"), "no icl_repeat prompt")
    return result


def icl_loop_effects(ctx, settings: EffectSettings, validate_k: int) -> FamilyResult:
    """`icl_effect_result` of the per-head effects on the copies of `icl_repeat` (queries from cycle 2 on); in
    attribution mode with `validate_k` > 0 also the rank correlation of the estimate with exact ablation on
    2 * validate_k heads."""
    targets = icl_targets(ctx.probes.icl_repeat[:, : ctx.context_length], ctx.probes.icl_length)
    rows = head_effects(ctx, targets, settings, "ICL-loop")
    result = icl_effect_result(rows, settings)
    if settings.mode == "attribution" and validate_k > 0:
        rho = validate_attribution(ctx, targets, rows.pooled, validate_k, settings)
        check = "a check of the attribution estimator against exact ablation on 2 * validate_k heads chosen from the "
        result.value(
            "icl/attribution_spearman",
            rho,
            check + "estimate, not a statistic over prompts",
            "estimated or exact effects are the same for every validated head",
        )
    return result


def icl_effect_result(rows: EffectRows, settings: EffectSettings) -> FamilyResult:
    """The concentration of the ICL effect rows (`icl_repeat` prompts), the pooled effect as a per-head array,
    and the effects' rank correlation with the induction score (the ablation side's threshold applies)."""
    result = concentration("icl/ablation", rows, "icl_repeat", settings.top_k, settings.min_effect_total)
    result.heads["icl/ablation_effect"] = columns(result.samples["icl/ablation_total"]).astype(np.float32)
    total = statistic("icl/ablation_total", result.samples)
    same = "ablation effects or induction scores are the same for every head"
    agreement = Sample("compare", of=("icl/ablation_total", "icl/induction_max"), function="spearman")
    result.stat(
        "icl/ablation_vs_induction_spearman", agreement, below_threshold(total, settings.min_effect_total) or same
    )
    return result


def natural_loop_effects(ctx, settings: EffectSettings, icl: FamilyResult) -> FamilyResult:
    """`natural_effect_result` of the per-head effects on the natural loops (`ctx.natural_loops()`, queries
    from the first copy of the cycle on)."""
    loops = ctx.natural_loops()
    targets = natural_loop_targets(loops)
    measured = None if targets is None else head_effects(ctx, targets, settings, "natural-loop")
    return natural_effect_result(loops, measured, icl, settings)


def natural_effect_result(
    loops: NaturalLoops, measured: EffectRows | None, icl: FamilyResult, settings: EffectSettings
) -> FamilyResult:
    """The concentration of the natural-loop effect rows (`measured`, one per looping prompt, None when no
    query was left to measure; spread over the natural prompts, zero for one that does not loop), same
    threshold as the ICL side, and how they compare with the ICL effects of `icl`: overlap of the top-k head
    sets beside its chance level for the model's head count, and cosine."""
    icl_total = icl.samples["icl/ablation_total"]
    result = FamilyResult()
    looping = int(loops.looping.sum())
    result.value("icl/natural_loop_prompts", looping, NATURAL_COUNT)
    heads = icl_total.values.shape[1:]
    chance = jaccard_chance(int(np.prod(heads)), settings.top_k)
    result.value("icl/icl_natural_topk_jaccard_chance", chance, "a constant of the model's head count and top_k")
    missing = None
    if measured is None:
        missing = "no prompt's continuation loops at this checkpoint"
        if looping:
            missing = f"the {looping} natural loop(s) leave no query inside a copy of their cycle"
    prefix, k = "icl/natural_ablation", settings.top_k
    result.update(
        concentration(
            prefix, natural_effect_rows(loops, measured, heads), "natural", k, settings.min_effect_total, missing
        )
    )
    if measured is not None:
        result.heads["icl/natural_effect"] = columns(result.samples[f"{prefix}_total"]).astype(np.float32)
    sides = ("icl/ablation_total", f"{prefix}_total")
    why = missing or comparison_reason(
        statistic(sides[0], {sides[0]: icl_total}), statistic(sides[1], result.samples), settings.min_effect_total
    )
    result.stat(f"icl/icl_natural_top{k}_jaccard", Sample("compare", of=sides, function="jaccard", k=k), why)
    cosine = Sample("compare", of=sides, function="cosine")
    result.stat("icl/icl_natural_cosine", cosine, why or "an effect vector is zero")
    return result


ESTIMATOR = (
    "which estimator gave the ablation effects (1 = exact ablation, 0 = attribution patching; mode, "
    "exact_max_heads): a setting, not a statistic"
)
NATURAL_COUNT = (
    "a count of the natural prompts that loop (how many rows the natural ablation used), not an estimate; "
    "its rate over prompts has an interval as rep/natural_rate"
)


def comparison_reason(icl_total: float, natural_total: float, min_total: float) -> str | None:
    """Why the ICL and natural head sets cannot be compared (a side below `min_total`), or None."""
    sides = (
        ("ICL side", below_threshold(icl_total, min_total)),
        ("natural side", below_threshold(natural_total, min_total)),
    )
    return "; ".join(f"{side}: {reason}" for side, reason in sides if reason is not None) or None


def measure(
    ctx,
    *,
    late_position: Annotated[int, Range(min=0)],
    early_position: Annotated[int, Range(min=0)],
    window: Annotated[int, Range(min=1)],
    top_k: Annotated[int, Range(min=1)],
    mode: Annotated[str, Choice("auto", "exact", "attribution", "off")],
    exact_max_heads: Annotated[int, Range(min=0)],
    ablation: Annotated[str, Choice("zero", "mean")],
    score: Annotated[str, Choice("logprob", "contrast")],
    validate_k: Annotated[int, Range(min=0)],
    rate_cycles: Annotated[int, Range(min=1)],
    max_rows: Annotated[int | None, Range(min=1)],
    min_effect_total: Annotated[float, Range(min=0)],
) -> FamilyResult:
    """Head pattern scores, loss scores and the ICL repetition rate; unless `mode=off` also the per-head ablation
    effects on copied (ICL) and natural loops and their specialization, by the estimator `mode` names (`auto`:
    exact ablation up to `exact_max_heads` heads, attribution patching above; `icl/ablation_exact` says which)."""
    result = pattern_scores(ctx, top_k)
    result.update(loss_score(ctx, late_position, early_position, window))
    result.update(icl_repeat_rate(ctx, rate_cycles))
    mode = estimator(mode, ctx.shape, exact_max_heads)
    if mode == "off":
        return result
    result.value("icl/ablation_exact", float(mode == "exact"), ESTIMATOR)
    settings = EffectSettings(mode, ablation, score, max_rows, top_k, min_effect_total)
    icl = icl_loop_effects(ctx, settings, validate_k)
    result.update(icl)
    result.update(natural_loop_effects(ctx, settings, icl))
    return result


# ----------------------------------------------------------------------------------------- passes
def pattern_pass(rows: int, seq: int, shape: Shape, cap: int | None) -> Pass:
    """The fused pass over `random_repeat` (pattern diagonals, per-row NLL)."""
    return Pass("head patterns + NLL on random_repeat", rows, seq, cap, shape.n_layers, seq, "fused", logits="row")


def nll_pass(rows: int, seq: int, shape: Shape, cap: int | None) -> Pass:
    """The per-row NLL pass over `long_text` (the ICL score)."""
    return Pass("NLL on long_text", rows, seq, cap, shape.n_layers, seq, "fused", logits="row")


def continuation_pass(rows: int, seq: int, new_tokens: int, shape: Shape, cap: int | None) -> Pass:
    """The greedy continuations of `icl_repeat` (the ICL repetition rate)."""
    return generation_pass("icl_repeat continuation", rows, seq, new_tokens, shape, cap)


def exact_ablation_passes(
    what: str, rows: int, seq: int, targets: int, shape: Shape, cap: int | None, heads: int | None = None
) -> list[Pass]:
    """Exact ablation: a clean pass per group of prompts that keeps every layer's input residual, then per layer
    its heads' variants through the remaining layers (`targets` positions per row unembedded). Each gets half
    the budget: the clean residuals of a group stay while its variants run."""
    L, H = shape.n_layers, shape.n_heads
    limit = "metrics.icl_heads.max_rows"
    clean = Pass(
        f"{what} ablation: clean pass",
        rows,
        seq,
        cap,
        L,
        targets,
        logits="selected",
        limit=limit,
        keep_layers=L,
        share=0.5,
    )
    count = H * L if heads is None else heads
    variants = Pass(
        f"{what} ablation: {count} ablated heads",
        count * rows,
        seq,
        cap,
        (L + 1) / 2,  # layers run after the ablated one (it included), on average
        targets,
        logits="selected",
        limit=limit,
        share=0.5,
    )
    return [clean, variants]


def attribution_pass(what: str, rows: int, seq: int, targets: int, shape: Shape, cap: int | None) -> Pass:
    """Attribution patching: forward + backward, `targets` positions per row unembedded."""
    return Pass(
        f"{what} attribution (fwd + bwd)",
        rows,
        seq,
        cap,
        shape.n_layers,
        targets,
        backward=True,
        logits="selected",
        limit="metrics.icl_heads.max_rows",
    )


def passes(
    sizes: ProbeSizes,
    shape: Shape,
    *,
    rate_cycles: int,
    mode: str,
    exact_max_heads: int,
    max_rows: int | None,
    validate_k: int,
    **_params,
) -> list[Pass]:
    """The pattern and loss passes, the ICL continuation and, unless `mode=off`, the ablations on ICL and
    natural loops (the natural ones read the shared natural continuations) by the estimator `mode` resolves to."""
    continuation_tokens = min(rate_cycles * sizes.icl_len, shape.context - sizes.icl_seq)
    out = [
        pattern_pass(sizes.rr_n, sizes.rr_len, shape, sizes.batch),
        nll_pass(sizes.lt_n, sizes.lt_len, shape, sizes.batch),
        continuation_pass(sizes.icl_n, sizes.icl_seq, continuation_tokens, shape, sizes.batch),
    ]
    mode = estimator(mode, shape, exact_max_heads)
    if mode == "off":
        return out
    icl_targets = max(0, sizes.icl_seq - sizes.icl_len - 1)
    nat_seq, nat_targets = sizes.nat_len + sizes.gen, sizes.gen // 2
    out.append(natural_generation(sizes, shape))
    if mode == "exact":
        out += exact_ablation_passes("ICL-loop", sizes.icl_n, sizes.icl_seq, icl_targets, shape, max_rows)
        out += exact_ablation_passes("natural-loop", sizes.looping, nat_seq, nat_targets, shape, max_rows)
        return out
    out.append(attribution_pass("ICL-loop", sizes.icl_n, sizes.icl_seq, icl_targets, shape, max_rows))
    out.append(attribution_pass("natural-loop", sizes.looping, nat_seq, nat_targets, shape, max_rows))
    if validate_k:
        out += exact_ablation_passes(
            "attribution check", sizes.icl_n, sizes.icl_seq, icl_targets, shape, max_rows, 2 * validate_k
        )
    return out

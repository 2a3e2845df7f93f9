"""Natural repetition (`rep/`): does greedy generation from ordinary text fall into a loop, where, how?

Each `natural` prompt is continued greedily for G tokens; the continuation's loop (ckptstudy.measure.cycles,
one rule per job: config `loops`) gives whether it loops, the loop's period, its onset (index in the
generation where the loop starts) and its number of full cycles from the onset on. Per checkpoint:
- rep/natural_rate: share of prompts whose continuation ends in a loop;
  rep/degenerate_rate: share of prompts whose loop's cycle holds a single distinct token (the model
  emits one token forever: a "loop" of period min_period that is collapse, not repeated text);
  rep/natural_rate_nondegenerate: share of prompts with a loop that is not degenerate
  (natural_rate = degenerate_rate + natural_rate_nondegenerate),
- rep/onset_mean, _median, _p10, _p90 and rep/period_median over looping prompts,
- rep/loop_fraction: share of all generated tokens that lie inside a loop,
- rep/cycle_entropy_k (k = 1..max_cycles): mean next-token entropy (nats) at the first token of cycle k
  (cycle 1 starts at the onset, cycle k at onset + (k - 1) * period) over ONE fixed set of loops, those
  with at least max_cycles full cycles (rep/cycle_entropy_rows of them), so every point of the curve
  averages the same loops; rep/cycle_entropy_slope: the mean over those loops of each loop's own
  least-squares slope of entropy against k (negative = the model grows surer as it loops). A curve over
  "loops with >= k cycles" would change its set of loops with k and fall whenever short, confident loops
  outlast long, uncertain ones, even when no single loop's entropy changes.
Every NaN carries its reason (FamilyResult.nan_reasons).

Bootstrap samples (`loop_samples`, resampling the natural prompts): the rates, rep/loop_fraction, the onset
mean / median / p10 / p90, rep/period_median, rep/cycle_entropy_k and rep/cycle_entropy_slope. Not
resampled: rep/cycle_entropy_rows and rep/generated_tokens (counts, not estimates).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ckptstudy.measure.cycles import LoopRule
from ckptstudy.measure.generation import Generation, NaturalLoops
from ckptstudy.metrics import FamilyResult
from ckptstudy.stats.bootstrap import Sample

DEFINITION_VERSION = 2  # 2: degenerate-loop rates; cycle entropies over one fixed set of loops, within-loop slope
NO_INTERVAL = {
    r"rep/cycle_entropy_rows": "a count of the loops the cycle entropies rest on",
    r"rep/generated_tokens": "the continuation length (a setting clipped to the context)",
}

ONSET_KEYS = ("rep/onset_mean", "rep/onset_median", "rep/onset_p10", "rep/onset_p90", "rep/period_median")


def loop_statistics(period: torch.Tensor, onset: torch.Tensor, length: int, degenerate: torch.Tensor) -> FamilyResult:
    """Loop rates (all, degenerate, non-degenerate), onset quantiles, period median and in-loop token share."""
    out = FamilyResult()
    looping = period > 0
    n = period.numel()
    if n == 0:
        for key in ("rep/natural_rate", "rep/degenerate_rate", "rep/natural_rate_nondegenerate", "rep/loop_fraction"):
            out.nan(key, "no natural prompt to continue")
        for key in ONSET_KEYS:
            out.nan(key, "no natural prompt to continue")
        return out
    out.set("rep/natural_rate", looping.double().mean(), "")
    out.set("rep/degenerate_rate", (looping & degenerate).double().mean(), "")
    out.set("rep/natural_rate_nondegenerate", (looping & ~degenerate).double().mean(), "")
    onsets = onset[looping].double()
    if onsets.numel():
        out.set("rep/onset_mean", onsets.mean(), "")
        out.set("rep/onset_median", onsets.median(), "")
        out.set("rep/onset_p10", torch.quantile(onsets, 0.1), "")
        out.set("rep/onset_p90", torch.quantile(onsets, 0.9), "")
        out.set("rep/period_median", period[looping].double().median(), "")
    else:
        for key in ONSET_KEYS:
            out.nan(key, f"no prompt's continuation loops at this checkpoint (0 of {n})")
    in_loop = torch.where(looping, length - onset, torch.zeros_like(onset)).sum()
    out.set("rep/loop_fraction", float(in_loop) / (n * length), "")
    return out


def cycle_entropy_table(
    entropy: torch.Tensor, period: torch.Tensor, onset: torch.Tensor, copies: torch.Tensor, max_cycles: int
) -> torch.Tensor:
    """Entropy at the first token of cycles 1..max_cycles of every loop with >= max_cycles full cycles:
    [rows, max_cycles], rows in prompt order (the one fixed set of loops every cycle is averaged over)."""
    rows = (period > 0) & (copies >= max_cycles)
    k = torch.arange(max_cycles)
    index = onset[rows, None] + k[None, :] * period[rows, None]
    return entropy[rows].gather(1, index).double()


def cycle_entropies(
    entropy: torch.Tensor, period: torch.Tensor, onset: torch.Tensor, copies: torch.Tensor, max_cycles: int
) -> torch.Tensor:
    """Mean entropy at the first token of cycle k = 1..max_cycles over the loops with >= max_cycles
    cycles: [max_cycles] (all NaN when there is none)."""
    table = cycle_entropy_table(entropy, period, onset, copies, max_cycles)
    if table.shape[0] == 0:
        return torch.full((max_cycles,), math.nan, dtype=torch.double)
    return table.mean(0)


def within_row_slopes(table: torch.Tensor) -> torch.Tensor:
    """Least-squares slope of each row of `table` [rows, K] against 1..K: [rows] (needs K >= 2)."""
    x = torch.arange(1, table.shape[1] + 1, dtype=torch.double)
    x = x - x.mean()
    y = table.double()
    return ((y - y.mean(1, keepdim=True)) * x).sum(1) / (x * x).sum()


def slope(values: torch.Tensor) -> float:
    """Least-squares slope of values against 1..n, over the finite ones (NaN if fewer than 2)."""
    y = values.double()
    x = torch.arange(1, len(y) + 1, dtype=torch.double)
    ok = torch.isfinite(y)
    if ok.sum() < 2:
        return math.nan
    x, y = x[ok], y[ok]
    x = x - x.mean()
    return float((x * (y - y.mean())).sum() / (x * x).sum())


def cycle_entropy_statistics(
    entropy: torch.Tensor, period: torch.Tensor, onset: torch.Tensor, copies: torch.Tensor, max_cycles: int
) -> FamilyResult:
    """rep/cycle_entropy_1..K, rep/cycle_entropy_rows and rep/cycle_entropy_slope (see the module docstring)."""
    out = FamilyResult()
    table = cycle_entropy_table(entropy, period, onset, copies, max_cycles)
    rows = table.shape[0]
    out.set("rep/cycle_entropy_rows", rows, "")
    looping = int((period > 0).sum())
    none = f"no loop has max_cycles={max_cycles} full cycles ({looping} of {period.numel()} prompts loop)"
    means = table.mean(0) if rows else torch.full((max_cycles,), math.nan, dtype=torch.double)
    for k in range(max_cycles):
        out.set(f"rep/cycle_entropy_{k + 1}", means[k], none)
    if max_cycles < 2:
        out.nan("rep/cycle_entropy_slope", f"max_cycles={max_cycles}: a slope over cycles needs at least 2")
    else:
        out.set("rep/cycle_entropy_slope", within_row_slopes(table).mean() if rows else math.nan, none)
    return out


def loop_samples(
    period: torch.Tensor,
    onset: torch.Tensor,
    length: int,
    degenerate: torch.Tensor,
    entropy: torch.Tensor,
    copies: torch.Tensor,
    max_cycles: int,
) -> dict[str, Sample]:
    """Per-prompt values of every scalar of `loop_statistics` and `cycle_entropy_statistics` that is a
    statistic over the natural prompts (NaN where a prompt does not count: no loop, too few cycles)."""
    looping = (period > 0).numpy()
    degenerate = degenerate.numpy().astype(bool)
    n = len(looping)
    if n == 0:
        return {}
    onsets = np.where(looping, onset.numpy().astype(np.float64), np.nan)
    periods = np.where(looping, period.numpy().astype(np.float64), np.nan)
    in_loop = np.where(looping, (length - onset.numpy()).astype(np.float64), 0.0) / length

    def sample(statistic: str, values, q: float | None = None) -> Sample:
        return Sample(statistic, np.asarray(values, dtype=np.float64), prompts="natural", q=q)

    out = {
        "rep/natural_rate": sample("mean", looping),
        "rep/degenerate_rate": sample("mean", looping & degenerate),
        "rep/natural_rate_nondegenerate": sample("mean", looping & ~degenerate),
        "rep/loop_fraction": sample("mean", in_loop),
        "rep/onset_mean": sample("nanmean", onsets),
        "rep/onset_median": sample("median_low", onsets),
        "rep/onset_p10": sample("quantile", onsets, 0.1),
        "rep/onset_p90": sample("quantile", onsets, 0.9),
        "rep/period_median": sample("median_low", periods),
    }
    rows = ((period > 0) & (copies >= max_cycles)).numpy()
    table = np.full((n, max_cycles), np.nan)
    table[rows] = cycle_entropy_table(entropy, period, onset, copies, max_cycles).numpy()
    for k in range(max_cycles):
        out[f"rep/cycle_entropy_{k + 1}"] = sample("nanmean", table[:, k])
    if max_cycles >= 2:
        slopes = np.full(n, np.nan)
        slopes[rows] = within_row_slopes(torch.from_numpy(table[rows])).numpy()
        out["rep/cycle_entropy_slope"] = sample("nanmean", slopes)
    return out


def loop_summary(natural: NaturalLoops, max_cycles: int) -> tuple[FamilyResult, dict[str, np.ndarray]]:
    """Scalars (with the reason of every NaN) and per-prompt loop data of natural continuations whose
    loops are detected already."""
    ids, entropy = natural.generation.ids, natural.generation.entropy
    period, copies, onset = natural.period, natural.copies, natural.onset
    degenerate = natural.degenerate
    result = loop_statistics(period, onset, ids.shape[1], degenerate)
    result.update(cycle_entropy_statistics(entropy, period, onset, copies, max_cycles))
    for key, sample in loop_samples(period, onset, ids.shape[1], degenerate, entropy, copies, max_cycles).items():
        result.add_sample(key, sample)
    loops = {
        "rep/period": period.numpy(),
        "rep/onset": onset.numpy(),
        "rep/copies": copies.numpy(),
        "rep/degenerate": degenerate.numpy(),
    }
    return result, loops


def analyze_loops(
    ids: torch.Tensor,
    entropy: torch.Tensor,
    min_period: int = 2,
    max_period: int = 500,
    min_copies: int = 2,
    max_cycles: int = 5,
    definition: str = "suffix",
) -> tuple[FamilyResult, dict[str, np.ndarray]]:
    """Detect the loops of generated ids [n, G] (entropies [n, G]) and summarise them (`loop_summary`)."""
    rule = LoopRule(definition, min_period, max_period, min_copies)
    period, copies, onset = rule.detect(ids)
    natural = NaturalLoops(ids[:, :0], Generation(ids, entropy), period, copies, onset, rule)
    return loop_summary(natural, max_cycles)


def analyze_generations(
    ids: torch.Tensor,
    entropy: torch.Tensor,
    min_period: int = 2,
    max_period: int = 500,
    min_copies: int = 2,
    max_cycles: int = 5,
    definition: str = "suffix",
) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """`analyze_loops` as (scalars, per-prompt loop data), for re-analysis of saved generations."""
    result, loops = analyze_loops(ids, entropy, min_period, max_period, min_copies, max_cycles, definition)
    return result.scalars, loops


def measure(ctx, max_cycles: int = 5, save_generations: bool = True) -> FamilyResult:
    """Analyse the loops of the job's shared natural generations (`ctx.natural_loops()`, config `loops`)."""
    if isinstance(max_cycles, bool) or not isinstance(max_cycles, int) or max_cycles < 1:
        raise ValueError(f"metrics.repetition.max_cycles={max_cycles!r} is not valid; valid: an integer >= 1")
    if not isinstance(save_generations, bool):
        raise ValueError(f"metrics.repetition.save_generations={save_generations!r} is not valid; valid: true, false")
    natural = ctx.natural_loops()
    gen = natural.generation
    result, loops = loop_summary(natural, max_cycles)
    result.set("rep/generated_tokens", gen.ids.shape[1], "")
    result.raw.update(loops)
    if save_generations:
        result.raw["rep/generated_ids"] = gen.ids.numpy().astype(np.int32)
        result.raw["rep/generated_entropy"] = gen.entropy.numpy().astype(np.float32)
    looping = loops["rep/period"] > 0
    result.histograms.update(
        {"rep/onset_hist": loops["rep/onset"][looping], "rep/period_hist": loops["rep/period"][looping]}
    )
    return result

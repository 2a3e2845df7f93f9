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

Every scalar but two is a statistic over the natural prompts (its per-prompt sample resamples with the other
families' natural prompts): the rates, rep/loop_fraction, the onset mean / median / p10 / p90,
rep/period_median, rep/cycle_entropy_k and rep/cycle_entropy_slope. rep/cycle_entropy_rows and
rep/generated_tokens are counts, not estimates.
"""

from __future__ import annotations

from typing import Annotated

import numpy as np
import torch

from ckptstudy.measure.cost import Pass, ProbeSizes, Shape, natural_generation
from ckptstudy.measure.cycles import LoopRule
from ckptstudy.measure.generation import Generation, NaturalLoops
from ckptstudy.measure.precision import Tolerance
from ckptstudy.metrics import FamilyResult
from ckptstudy.params import Range
from ckptstudy.stats.bootstrap import Sample

DEFINITION_VERSION = 2  # 2: degenerate-loop rates; cycle entropies over one fixed set of loops, within-loop slope
# Scalars on a bfloat16/float16 load within this of float32, given the same greedy continuations (a continuation is
# a chain of argmaxes; where half precision flips a near-tie the text differs: `ckptstudy-gpu-check` compares the
# continuations' agreement separately and feeds every run the reference's, README "Precision").
TOLERANCE = Tolerance(rtol=0.05, atol=0.02)
ONSET_KEYS = ("rep/onset_mean", "rep/onset_median", "rep/onset_p10", "rep/onset_p90", "rep/period_median")


def cycle_entropy_table(
    entropy: torch.Tensor, period: torch.Tensor, onset: torch.Tensor, copies: torch.Tensor, max_cycles: int
) -> torch.Tensor:
    """Entropy at the first token of cycles 1..max_cycles of every loop with >= max_cycles full cycles:
    [rows, max_cycles], rows in prompt order (the one fixed set of loops every cycle is averaged over)."""
    rows = (period > 0) & (copies >= max_cycles)
    k = torch.arange(max_cycles)
    index = onset[rows, None] + k[None, :] * period[rows, None]
    return entropy[rows].gather(1, index).double()


def within_row_slopes(table: torch.Tensor) -> torch.Tensor:
    """Least-squares slope of each row of `table` [rows, K] against 1..K: [rows] (needs K >= 2)."""
    x = torch.arange(1, table.shape[1] + 1, dtype=torch.double)
    x = x - x.mean()
    y = table.double()
    return ((y - y.mean(1, keepdim=True)) * x).sum(1) / (x * x).sum()


def natural(statistic: str, values, q: float | None = None) -> Sample:
    """A sample over the natural prompts (one value per prompt, float64)."""
    return Sample(statistic, np.asarray(values, dtype=np.float64), prompts="natural", q=q)


def loop_statistics(loops: NaturalLoops) -> FamilyResult:
    """The loop rates (all, degenerate, non-degenerate), rep/loop_fraction, the onset mean / median / p10 / p90
    and rep/period_median, each a statistic of per-prompt values (NaN onset and period for a prompt that does
    not loop)."""
    out = FamilyResult()
    rates = ("rep/natural_rate", "rep/degenerate_rate", "rep/natural_rate_nondegenerate")
    n = len(loops.period)
    if n == 0:
        for key in (*rates, *ONSET_KEYS, "rep/loop_fraction"):
            out.nan(key, "no natural prompt to continue")
        return out
    looping, degenerate = loops.looping.numpy(), loops.degenerate.numpy().astype(bool)
    length = loops.generation.ids.shape[1]
    onsets = np.where(looping, loops.onset.numpy().astype(np.float64), np.nan)
    periods = np.where(looping, loops.period.numpy().astype(np.float64), np.nan)
    in_loop = np.where(looping, (length - loops.onset.numpy()).astype(np.float64), 0.0) / length
    for key, values in zip(rates, (looping, looping & degenerate, looping & ~degenerate)):
        out.stat(key, natural("mean", values), None)
    none = f"no prompt's continuation loops at this checkpoint ({int(looping.sum())} of {n})"
    out.stat("rep/onset_mean", natural("nanmean", onsets), none)
    out.stat("rep/onset_median", natural("median_low", onsets), none)  # torch.median's lower middle
    out.stat("rep/onset_p10", natural("quantile", onsets, 0.1), none)
    out.stat("rep/onset_p90", natural("quantile", onsets, 0.9), none)
    out.stat("rep/period_median", natural("median_low", periods), none)
    out.stat("rep/loop_fraction", natural("mean", in_loop), None)
    return out


def cycle_entropy_statistics(loops: NaturalLoops, max_cycles: int) -> FamilyResult:
    """rep/cycle_entropy_1..K and rep/cycle_entropy_slope over the loops with >= max_cycles full cycles (NaN
    rows for the other prompts), and rep/cycle_entropy_rows, how many loops that is (see the module docstring)."""
    out = FamilyResult()
    period, onset, copies = loops.period, loops.onset, loops.copies
    table = cycle_entropy_table(loops.generation.entropy, period, onset, copies, max_cycles)
    out.value("rep/cycle_entropy_rows", table.shape[0], "a count of the loops the cycle entropies rest on")
    n = len(period)
    if n == 0:
        for k in range(max_cycles):
            out.nan(f"rep/cycle_entropy_{k + 1}", "no natural prompt to continue")
        out.nan("rep/cycle_entropy_slope", "no natural prompt to continue")
        return out
    rows = ((period > 0) & (copies >= max_cycles)).numpy()
    per_prompt = np.full((n, max_cycles), np.nan)
    per_prompt[rows] = table.numpy()
    looping = int((period > 0).sum())
    none = f"no loop has max_cycles={max_cycles} full cycles ({looping} of {n} prompts loop)"
    for k in range(max_cycles):
        out.stat(f"rep/cycle_entropy_{k + 1}", natural("nanmean", per_prompt[:, k]), none)
    if max_cycles < 2:
        out.nan("rep/cycle_entropy_slope", f"max_cycles={max_cycles}: a slope over cycles needs at least 2")
    else:
        slopes = np.full(n, np.nan)
        slopes[rows] = within_row_slopes(table).numpy()
        out.stat("rep/cycle_entropy_slope", natural("nanmean", slopes), none)
    return out


def loop_summary(loops: NaturalLoops, max_cycles: int) -> tuple[FamilyResult, dict[str, np.ndarray]]:
    """Statistics (with the reason of every NaN) and per-prompt loop data of natural continuations whose
    loops are detected already."""
    result = loop_statistics(loops)
    result.update(cycle_entropy_statistics(loops, max_cycles))
    data = {
        "rep/period": loops.period.numpy(),
        "rep/onset": loops.onset.numpy(),
        "rep/copies": loops.copies.numpy(),
        "rep/degenerate": loops.degenerate.numpy(),
    }
    return result, data


def analyze_generations(
    ids: torch.Tensor, entropy: torch.Tensor, rule: LoopRule, max_cycles: int
) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """The loops of generated ids [n, G] (entropies [n, G]) under `rule`, summarised (`loop_summary`) as
    (scalars, per-prompt loop data): re-analysis of saved generations."""
    period, copies, onset = rule.detect(ids)
    loops = NaturalLoops(ids[:, :0], Generation(ids, entropy), period, copies, onset, rule)
    result, data = loop_summary(loops, max_cycles)
    return result.scalars, data


def measure(ctx, *, max_cycles: Annotated[int, Range(min=1)], save_generations: bool) -> FamilyResult:
    """Analyse the loops of the job's shared natural generations (`ctx.natural_loops()`, config `loops`)."""
    loops = ctx.natural_loops()
    gen = loops.generation
    result, data = loop_summary(loops, max_cycles)
    result.value("rep/generated_tokens", gen.ids.shape[1], "the continuation length (a setting clipped to the context)")
    result.raw.update(data)
    if save_generations:
        result.raw["rep/generated_ids"] = gen.ids.numpy().astype(np.int32)
        result.raw["rep/generated_entropy"] = gen.entropy.numpy().astype(np.float32)
    looping = data["rep/period"] > 0
    result.histograms.update(
        {"rep/onset_hist": data["rep/onset"][looping], "rep/period_hist": data["rep/period"][looping]}
    )
    return result


def passes(sizes: ProbeSizes, shape: Shape, **_params) -> list[Pass]:
    """Only the shared natural continuations: the loops are read from them."""
    return [natural_generation(sizes, shape)]

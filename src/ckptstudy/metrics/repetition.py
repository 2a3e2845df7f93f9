"""Natural repetition (`rep/`): does greedy generation from ordinary text fall into a loop, where, how?

Each `natural` prompt is continued greedily for G tokens; the continuation's trailing cycle
(ckptstudy.cycles) gives whether it loops, the loop's period and its onset (index in the
generation where the first full copy starts). Per checkpoint:
- rep/natural_rate: share of prompts whose continuation ends in a loop,
- rep/onset_mean, _median, _p10, _p90 and rep/period_median over looping prompts,
- rep/loop_fraction: share of all generated tokens that lie inside a loop,
- rep/cycle_entropy_k: mean next-token entropy (nats) at the first token of cycle k (k = 1 is
  the first full copy) over looping prompts with at least k cycles, and rep/cycle_entropy_slope,
  the least-squares slope of those means against k (negative = the model grows surer as it loops).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ckptstudy.cycles import trailing_cycles
from ckptstudy.metrics import FamilyResult


def loop_statistics(period: torch.Tensor, onset: torch.Tensor, length: int) -> dict[str, float]:
    """Rate, onset quantiles, period median and in-loop token share from trailing-cycle results."""
    looping = period > 0
    n = period.numel()
    out = {"rep/natural_rate": float(looping.float().mean()) if n else math.nan}
    onsets = onset[looping].float()
    if onsets.numel():
        out.update(
            {
                "rep/onset_mean": float(onsets.mean()),
                "rep/onset_median": float(onsets.median()),
                "rep/onset_p10": float(torch.quantile(onsets, 0.1)),
                "rep/onset_p90": float(torch.quantile(onsets, 0.9)),
                "rep/period_median": float(period[looping].float().median()),
            }
        )
    else:
        out.update(
            {
                k: math.nan
                for k in (
                    "rep/onset_mean",
                    "rep/onset_median",
                    "rep/onset_p10",
                    "rep/onset_p90",
                    "rep/period_median",
                )
            }
        )
    in_loop = torch.where(looping, length - onset, torch.zeros_like(onset)).sum()
    out["rep/loop_fraction"] = float(in_loop) / (n * length) if n else math.nan
    return out


def cycle_entropies(
    entropy: torch.Tensor, period: torch.Tensor, onset: torch.Tensor, copies: torch.Tensor, max_cycles: int
) -> torch.Tensor:
    """Mean entropy at the first token of cycle k = 1..max_cycles over rows with >= k cycles: [max_cycles]."""
    means = torch.full((max_cycles,), math.nan)
    for k in range(1, max_cycles + 1):
        rows = (period > 0) & (copies >= k)
        if rows.any():
            index = onset[rows] + (k - 1) * period[rows]
            means[k - 1] = entropy[rows].gather(1, index[:, None]).mean()
    return means


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


def analyze_generations(
    ids: torch.Tensor,
    entropy: torch.Tensor,
    min_period: int = 2,
    max_period: int = 500,
    min_copies: int = 2,
    max_cycles: int = 5,
    definition: str = "suffix",
) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """Scalars and per-prompt loop data from generated ids [n, G] and their entropies [n, G]."""
    period, copies, onset = trailing_cycles(ids, min_period, max_period, min_copies, definition)
    scalars = loop_statistics(period, onset, ids.shape[1])
    cycles = cycle_entropies(entropy, period, onset, copies, max_cycles)
    scalars.update({f"rep/cycle_entropy_{k + 1}": float(v) for k, v in enumerate(cycles)})
    scalars["rep/cycle_entropy_slope"] = slope(cycles)
    loops = {"rep/period": period.numpy(), "rep/onset": onset.numpy(), "rep/copies": copies.numpy()}
    return scalars, loops


def measure(ctx, max_cycles: int = 5, save_generations: bool = True) -> FamilyResult:
    """Analyse the loops of the job's shared natural generations (`ctx.natural_loops()`, config `loops`)."""
    if max_cycles < 1:
        raise ValueError(f"metrics.repetition.max_cycles={max_cycles} must be >= 1")
    natural = ctx.natural_loops()
    gen, rule = natural.generation, natural.rule
    scalars, loops = analyze_generations(
        gen.ids, gen.entropy, rule.min_period, rule.max_period, rule.min_copies, max_cycles, rule.definition
    )
    scalars["rep/generated_tokens"] = float(gen.ids.shape[1])
    raw = dict(loops)
    if save_generations:
        raw["rep/generated_ids"] = gen.ids.numpy().astype(np.int32)
        raw["rep/generated_entropy"] = gen.entropy.numpy().astype(np.float32)
    looping = loops["rep/period"] > 0
    histograms = {
        "rep/onset_hist": loops["rep/onset"][looping],
        "rep/period_hist": loops["rep/period"][looping],
    }
    return FamilyResult(scalars=scalars, raw=raw, histograms=histograms)

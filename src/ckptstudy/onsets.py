"""Onset of a metric over training: the first step where it crosses half its change (pure maths)."""

from __future__ import annotations

import math

import numpy as np


def onset_step(steps, values, fraction: float = 0.5) -> float:
    """First step where `values` crosses baseline + fraction * (extreme - baseline), interpolated in log step.

    Baseline is the value at the first step; the extreme is the max or the min, whichever lies
    further from the baseline (so falling metrics get an onset too). NaN when there is no change.
    """
    pairs = sorted((float(s), float(v)) for s, v in zip(steps, values) if v is not None and np.isfinite(v))
    if len(pairs) < 2:
        return math.nan
    s, v = np.array([p[0] for p in pairs]), np.array([p[1] for p in pairs])
    base = v[0]
    sign = 1.0 if (v.max() - base) >= (base - v.min()) else -1.0
    rel = sign * (v - base)
    span = rel.max()
    if span <= 0:
        return math.nan
    threshold = fraction * span
    i = int(np.argmax(rel >= threshold))
    if i == 0:
        return float(s[0])
    x0, x1 = np.log1p(s[i - 1]), np.log1p(s[i])
    t = (threshold - rel[i - 1]) / (rel[i] - rel[i - 1])
    return float(np.expm1(x0 + t * (x1 - x0)))


def onsets(table, metrics: list[str], fraction: float = 0.5) -> dict[tuple[str, str], float]:
    """Onset step per (model, metric) over the ok rows of a trajectories table."""
    out = {}
    ok = table[table["status"] == "ok"]
    for model, part in ok.groupby("model"):
        for metric in metrics:
            if metric in part.columns:
                out[(model, metric)] = onset_step(part["step"].tolist(), part[metric].astype(float).tolist(), fraction)
    return out

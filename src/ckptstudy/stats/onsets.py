"""Onset of a metric over training: the first step where it crosses half its change and stays there.

The rule (`onset_step`), for values v at steps s (sorted, finite values only), `fraction` f and `persist` p:
- baseline b = the value at the first step; a level is *held* at checkpoint i when it is reached at
  checkpoints i .. i+p-1 (held(i) = min of the change over them, in the metric's direction);
- the change is the largest held level (so one outlying checkpoint neither sets the size of the change
  nor marks its onset); its direction is the one (rise or fall) with the larger held change;
- onset = the first checkpoint i whose held level reaches f * change, interpolated in log(1 + step) between
  checkpoints i-1 and i. NaN when nothing is held above the baseline.
p = 1 is the plain first crossing, which fires on a single noisy checkpoint; the default p = 2 needs the
crossing to hold for the next checkpoint too (a change at the very last checkpoint alone has no onset).

Onset intervals (`onset_intervals`): the onset recomputed on every bootstrap replicate of the trajectory
(replicate r of every step's statistic, `bootstrap.replicates`: the same prompt resample at every step),
and the percentile interval of those onsets.
"""

from __future__ import annotations

import math

import numpy as np

from ckptstudy.stats.bootstrap import interval


def _held(rel: np.ndarray, persist: int) -> np.ndarray:
    """held[i] = min(rel[i : i + persist]) for every i with a full window: [n - persist + 1]."""
    windows = np.lib.stride_tricks.sliding_window_view(rel, persist)
    return windows.min(axis=1)


def onset_step(steps, values, fraction: float = 0.5, persist: int = 1) -> float:
    """First step where `values` crosses baseline + fraction * change and stays across for `persist`
    checkpoints, interpolated in log step (see the module docstring). NaN when there is no held change."""
    if persist < 1:
        raise ValueError(f"persist={persist} is not valid; valid: an integer >= 1 (checkpoints a crossing must hold)")
    pairs = sorted((float(s), float(v)) for s, v in zip(steps, values) if v is not None and np.isfinite(v))
    if len(pairs) < max(2, persist):
        return math.nan
    s, v = np.array([p[0] for p in pairs]), np.array([p[1] for p in pairs])
    base = v[0]
    rise, fall = _held(v - base, persist).max(), _held(base - v, persist).max()
    sign = 1.0 if rise >= fall else -1.0
    rel = sign * (v - base)
    held = _held(rel, persist)
    span = held.max()
    if span <= 0:
        return math.nan
    threshold = fraction * span
    i = int(np.argmax(held >= threshold))
    if i == 0:
        return float(s[0])
    # rel[i] >= threshold > rel[i - 1] (held[i - 1] < threshold while rel[i .. i+p-2] >= threshold)
    x0, x1 = np.log1p(s[i - 1]), np.log1p(s[i])
    t = (threshold - rel[i - 1]) / (rel[i] - rel[i - 1])
    return float(np.expm1(x0 + t * (x1 - x0)))


def onsets(table, metrics: list[str], fraction: float = 0.5, persist: int = 1) -> dict[tuple[str, str], float]:
    """Onset step per (model, metric) over the ok rows of a trajectories table."""
    out = {}
    ok = table[table["status"] == "ok"]
    for model, part in ok.groupby("model"):
        for metric in metrics:
            if metric in part.columns:
                values = part[metric].astype(float).tolist()
                out[(model, metric)] = onset_step(part["step"].tolist(), values, fraction, persist)
    return out


def replicate_onsets(steps, replicates: np.ndarray, fraction: float, persist: int) -> np.ndarray:
    """The onset of every replicate trajectory: replicates [R, steps] -> [R] (NaN where it has none)."""
    return np.array([onset_step(steps, row, fraction, persist) for row in replicates])


def onset_intervals(
    steps_by_model: dict[str, list[int]],
    replicates: dict[tuple[str, int], dict[str, np.ndarray]],
    values: dict[tuple[str, int], dict[str, float]],
    metrics: list[str],
    fraction: float,
    persist: int,
    level: float,
) -> dict[tuple[str, str], dict]:
    """Per (model, metric): the percentile interval of the onset over bootstrap replicates of the whole
    trajectory, and the share of replicates that have an onset at all.

    `replicates[(model, step)][metric]` holds the [R] replicates of one checkpoint; a trajectory is
    replicated only when every step with a finite value has them (else no interval: a record without
    samples). `values[(model, step)][metric]` are the reported values. The interval needs an onset in at
    least half of the replicates (`bootstrap.interval`)."""
    out = {}
    for model, steps in steps_by_model.items():
        for metric in metrics:
            used, rows = [], []
            for step in steps:
                value = values.get((model, step), {}).get(metric, math.nan)
                reps = replicates.get((model, step), {}).get(metric)
                if reps is None:
                    if value is not None and np.isfinite(value):
                        break  # a measured step without replicates: no interval for this trajectory
                    continue
                used.append(step)
                rows.append(reps)
            else:
                if len(used) < 2:
                    continue
                found = replicate_onsets(used, np.stack(rows, axis=1), fraction, persist)
                low, high = interval(found, level)
                out[(model, metric)] = {"ci": [low, high], "with_onset": float(np.isfinite(found).mean())}
    return out

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
and the interval of those onsets by the method `intervals.METHODS["onset"]` gives (bias-corrected: the
change is the largest held level over noisy checkpoints, so replicate onsets lean late; coverage in README
"Interval coverage").
"""

from __future__ import annotations

import math

import numpy as np

from ckptstudy.stats.intervals import METHODS, bias_corrected, percentile


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


def onset_steps(steps, values: np.ndarray, fraction: float = 0.5, persist: int = 1) -> np.ndarray:
    """`onset_step` of every row of values [R, steps] at once (rows with a non-finite value one by one): [R]."""
    s = np.asarray(steps, dtype=np.float64)
    values = np.asarray(values, dtype=np.float64)
    out = np.full(len(values), np.nan)
    order = np.argsort(s, kind="stable")
    s, values = s[order], values[:, order]
    whole = np.isfinite(values).all(1)
    for r in np.flatnonzero(~whole):
        out[r] = onset_step(s, values[r], fraction, persist)
    if len(s) < max(2, persist) or not whole.any():
        return out
    v = values[whole]
    rel = v - v[:, :1]
    windows = np.lib.stride_tricks.sliding_window_view
    rise, fall = windows(rel, persist, axis=1).min(2).max(1), windows(-rel, persist, axis=1).min(2).max(1)
    rel = np.where((rise >= fall)[:, None], rel, -rel)
    held = windows(rel, persist, axis=1).min(2)
    span = held.max(1)
    threshold = fraction * span
    i = np.argmax(held >= threshold[:, None], axis=1)
    rows = np.arange(len(v))
    before = np.maximum(i - 1, 0)
    x0, x1 = np.log1p(s[before]), np.log1p(s[i])
    with np.errstate(invalid="ignore", divide="ignore"):
        t = (threshold - rel[rows, before]) / (rel[rows, i] - rel[rows, before])
        found = np.where(i == 0, s[0], np.expm1(x0 + t * (x1 - x0)))
    out[whole] = np.where(span > 0, found, np.nan)
    return out


def replicate_onsets(steps, replicates: np.ndarray, fraction: float, persist: int) -> np.ndarray:
    """The onset of every replicate trajectory: replicates [R, steps] -> [R] (NaN where it has none)."""
    return onset_steps(steps, replicates, fraction, persist)


def onset_intervals(
    steps_by_model: dict[str, list[int]],
    replicates: dict[tuple[str, int], dict[str, np.ndarray]],
    values: dict[tuple[str, int], dict[str, float]],
    metrics: list[str],
    fraction: float,
    persist: int,
    level: float,
    method: str | None = None,
) -> dict[tuple[str, str], dict]:
    """Per (model, metric): the interval of the onset over bootstrap replicates of the whole trajectory (method
    `METHODS["onset"]`, around the onset of the reported values), the share of replicates that have an onset at
    all, and the method (`method` overrides `METHODS["onset"]`: bias_corrected or percentile).

    `replicates[(model, step)][metric]` holds the [R] replicates of one checkpoint; a trajectory is
    replicated only when every step with a finite value has them (else no interval: a record without
    samples). `values[(model, step)][metric]` are the reported values. The interval needs an onset in at
    least half of the replicates and, bias-corrected, an onset of the reported values."""
    out = {}
    for model, steps in steps_by_model.items():
        for metric in metrics:
            used, rows, points = [], [], []
            for step in steps:
                value = values.get((model, step), {}).get(metric, math.nan)
                reps = replicates.get((model, step), {}).get(metric)
                if reps is None:
                    if value is not None and np.isfinite(value):
                        break  # a measured step without replicates: no interval for this trajectory
                    continue
                used.append(step)
                rows.append(reps)
                points.append(value)
            else:
                if len(used) < 2:
                    continue
                found = replicate_onsets(used, np.stack(rows, axis=1), fraction, persist)
                point = onset_step(used, points, fraction, persist)
                low, high = onset_interval(found, point, level, method)
                share = float(np.isfinite(found).mean())
                out[(model, metric)] = {"ci": [low, high], "with_onset": share, "method": method or METHODS["onset"]}
    return out


def onset_interval(
    replicated: np.ndarray, point: float, level: float, method: str | None = None
) -> tuple[float, float]:
    """The interval of an onset from its replicate onsets [R] (NaN where a replicate has none) and the onset of
    the reported values `point`, by `method` (default `METHODS["onset"]`: bias_corrected, or percentile)."""
    method = method or METHODS["onset"]
    if method == "bias_corrected":
        return bias_corrected(replicated, point, level)
    if method == "percentile":
        return percentile(replicated, level)
    raise ValueError(f"unknown onset interval method {method!r}; valid: bias_corrected, percentile")

"""Bootstrap confidence intervals of the statistics over prompts: one method per kind of statistic.

The method is a property of the statistic's kind (`bootstrap.kind`), chosen by the coverage measured in the
harness (tests/test_coverage.py, README "Interval coverage"): `METHODS` maps every kind to one of
- `wilson`: the Wilson score interval of a rate (a mean of 0/1 values; does not collapse at 0 or 1);
- `studentized`: the bootstrap-t interval, [v - q_hi * se, v - q_lo * se] with q the quantiles of
  t_r = (v_r - v) / se_r over replicates r and se the standard error from influence values
  (`bootstrap.is_smooth`): a percentile interval is too narrow at small n and too low on skewed data;
- `percentile`: the quantiles of the replicates;
- `order_statistic`: for a quantile of the prompts' values, the distribution-free interval between two order
  statistics (the percentile bootstrap of a 90th percentile of 16 values covers 0.76);
- `bias_corrected` (BC): the percentile interval at levels shifted by the share of replicates below the
  estimate (onsets: the change is a maximum over checkpoints, so replicate onsets lean late; concentration of
  an effect vector: clipping heads at 0 inflates the positive total, so replicates lean the same way);
- `basic`: [2 v - q_hi, 2 v - q_lo] (measured, not used by any kind: no better than BC for vectors);
- `band`: for maxima over heads (and differences and ratios of them): a simultaneous percentile band over the
  columns (`band_ends`: each head's replicate quantiles at a common level calibrated so that `level` of the
  replicates lie inside in every column at once) holds every head's value at once, so the maximum (top-k
  mean, or any statistic nondecreasing in every column) of the band's ends brackets the true maximum, ties or
  not (the percentile interval of a maximum over near-tied heads lies above it); parts of a difference or
  ratio share one band (interval arithmetic);
- `withheld`: no interval reaches the coverage target; `WITHHELD` says why (its record's `ci_reasons`).
Every interval shown must reach `TARGET` coverage in the harness; a kind that cannot is withheld.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from statistics import NormalDist

import numpy as np

from ckptstudy.stats.bootstrap import (
    MIN_FINITE_SHARE,
    SCALAR_FINITE_SHARE,
    Evaluated,
    Sample,
    contributing,
    defined,
    full_sample,
    is_headwise,
    kind,
    reduce_heads,
    resample,
    resolved,
)
from ckptstudy.stats.bootstrap import interval as percentile

log = logging.getLogger(__name__)

TARGET = {16: 0.90, 64: 0.93}  # least coverage of a 95% interval in the harness, at n = 16 and 64 prompts
METHODS = {
    "rate": "wilson",
    "mean": "studentized",
    "nanmean": "studentized",
    "quantile": "order_statistic",
    "median_low": "percentile",
    "max_of_mean": "band",
    "top_mean": "band",
    "ratio_of_sums/mean": "studentized",
    "ratio_of_sums/max": "band",
    "vector/positive_total": "bias_corrected",
    "vector/top_share": "bias_corrected",
    "vector/neff": "bias_corrected",
    "vector/gini": "bias_corrected",
    "difference": "studentized",
    "ratio": "studentized",
    "difference/max": "band",
    "ratio/max": "band",
    "compare/cosine": "withheld",
    "compare/jaccard": "withheld",
    "compare/spearman": "withheld",
    "onset": "bias_corrected",
}
INTERVAL_METHODS = (
    "wilson",
    "studentized",
    "percentile",
    "order_statistic",
    "bias_corrected",
    "basic",
    "band",
    "withheld",
)
WITHHELD = {
    "compare/cosine": (
        "withheld: a cosine of two noisy head vectors is pulled below its true value (to 0 coverage when the "
        "vectors are equal), so no bootstrap interval reaches its target (README 'Interval coverage')"
    ),
    "compare/jaccard": (
        "withheld: a top-k Jaccard of noisy head vectors sits on a lattice; its bootstrap interval covers only by "
        "being [1, 1] or very wide (README 'Interval coverage')"
    ),
    "compare/spearman": (
        "withheld: a rank correlation of noisy head vectors is pulled toward 0, so no bootstrap interval "
        "reaches its target (README 'Interval coverage')"
    ),
}
NOT_FINITE = {  # why a kind's interval can come out unbounded
    "ratio/max": " (the denominator's band reaches 0)",
    "quantile": " (too few prompts to bound this quantile by order statistics at this level)",
    **dict.fromkeys(
        ("mean", "nanmean", "difference", "ratio", "ratio_of_sums/mean"),
        " (over 2.5% of the resamples have no spread but another value: a rare event among few prompts)",
    ),
}
FLOAT_NOISE = 1e-6  # relative size of a spread that is rounding, not data (studentized intervals)
_NORMAL = NormalDist()


@dataclass
class Intervals:
    """A record's `ci` {key: [low, high]} (NaN where withheld), `ci_reasons` {key: why it is NaN} and
    `ci_method` {key: the method that gave a finite interval}."""

    ci: dict[str, list[float]] = field(default_factory=dict)
    reasons: dict[str, str] = field(default_factory=dict)
    methods: dict[str, str] = field(default_factory=dict)


# --- the methods, on replicates [R] ------------------------------------------------------------------------


def bias_corrected(
    values: np.ndarray, estimate: float, level: float, min_finite: float = MIN_FINITE_SHARE
) -> tuple[float, float]:
    """BC percentile interval: the quantiles at Phi(2 z0 + z_(1 -+ level)/2), z0 = Phi^-1(share of finite
    replicates below `estimate`, ties counted half); NaN when the estimate is NaN or too few are finite."""
    finite = defined(values, min_finite)
    if finite is None or not math.isfinite(estimate):
        return math.nan, math.nan
    below = (np.sum(finite < estimate) + 0.5 * np.sum(finite == estimate)) / len(finite)
    edge = 0.5 / len(finite)
    z0 = _NORMAL.inv_cdf(min(max(below, edge), 1 - edge))
    z = _NORMAL.inv_cdf((1 + level) / 2)
    low, high = np.quantile(finite, [_NORMAL.cdf(2 * z0 - z), _NORMAL.cdf(2 * z0 + z)])
    return float(low), float(high)


def order_statistic(values: np.ndarray, q: float, level: float) -> tuple[float, float]:
    """Distribution-free interval of the q-quantile of the finite `values` (m of them): [x_(l), x_(u)], the
    order statistics with P(B < l) <= (1 - level) / 2 and P(B >= u) <= (1 - level) / 2 for B ~ Binomial(m, q),
    so it covers with at least `level` whatever the distribution; an end beyond the data is +-inf (16 prompts
    cannot bound a 90th percentile from above at 95%)."""
    x = np.sort(values[np.isfinite(values)])
    m, tail = len(x), (1 - level) / 2
    if m == 0:
        return math.nan, math.nan
    cdf = np.cumsum([math.comb(m, i) * q**i * (1 - q) ** (m - i) for i in range(m + 1)])  # P(B <= i)
    low_rank = int(np.sum(cdf <= tail))  # l - 1 = how many i have P(B <= i) <= tail
    high_rank = m + 1 - int(np.sum(1 - np.r_[0.0, cdf[:-1]] <= tail))  # u = smallest with P(B >= u) <= tail
    low = float(x[low_rank - 1]) if low_rank >= 1 else -math.inf
    high = float(x[high_rank - 1]) if high_rank <= m else math.inf
    return low, high


def basic(
    values: np.ndarray, estimate: float, level: float, min_finite: float = MIN_FINITE_SHARE
) -> tuple[float, float]:
    """Basic (reverse percentile) interval [2 v - q_hi, 2 v - q_lo]: the replicates' bias and skew about the
    estimate are taken for the estimate's about the truth (a statistic biased upward, such as a clipped total,
    is moved down by as much as its replicates move up)."""
    finite = defined(values, min_finite)
    if finite is None or not math.isfinite(estimate):
        return math.nan, math.nan
    low, high = np.quantile(finite, [(1 - level) / 2, (1 + level) / 2])
    return float(2 * estimate - high), float(2 * estimate - low)


def _quantiles(values: np.ndarray, probs: list[float]) -> np.ndarray:
    """Linear-interpolation quantiles of values that may be +-inf (an inf quantile stays inf)."""
    big = np.finfo(np.float64).max / 4
    out = np.quantile(np.clip(values, -big, big), probs)
    return np.where(np.abs(out) >= big, np.copysign(np.inf, out), out)


def studentized(
    estimate: float, se: float, values: np.ndarray, se_values: np.ndarray, level: float, min_finite: float
) -> tuple[float, float]:
    """Bootstrap-t interval [v - q_hi se, v - q_lo se], q = quantiles of t_r = (v_r - v) / se_r (a replicate
    with se_r = 0 counts as t = 0 when v_r = v, else +-inf); NaN when too few replicates are finite or a bound
    is not finite."""
    ok = np.isfinite(values) & np.isfinite(se_values)
    if defined(np.where(ok, values, np.nan), min_finite) is None or not (math.isfinite(estimate) and se >= 0):
        return math.nan, math.nan
    diff, scale = values[ok] - estimate, se_values[ok]
    # rounding (float32 values): a spread below FLOAT_NOISE of the estimate's size is none, else a constant
    # sample's t ratios are noise over noise and the interval comes out arbitrarily wide
    noise = FLOAT_NOISE * max(abs(estimate), se)
    diff, scale = np.where(np.abs(diff) > noise, diff, 0.0), np.where(scale > noise, scale, 0.0)
    se = se if se > noise else 0.0
    with np.errstate(invalid="ignore", divide="ignore"):
        flat = np.where(diff == 0, 0.0, np.copysign(np.inf, diff))
        t = np.where(scale > 0, diff / np.where(scale > 0, scale, 1.0), flat)
    q_low, q_high = _quantiles(t, [(1 - level) / 2, (1 + level) / 2])
    with np.errstate(invalid="ignore"):
        low, high = estimate - q_high * se, estimate - q_low * se
    return (float(low), float(high)) if math.isfinite(low) and math.isfinite(high) else (math.nan, math.nan)


def wilson(successes: float, n: int, level: float) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion: unlike the percentile bootstrap it does not collapse to
    [0, 0] or [1, 1] when no prompt (or every prompt) has the property (0 of 64 -> [0, 0.057] at 95%)."""
    z = _NORMAL.inv_cdf((1 + level) / 2)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def band_ends(replicates: np.ndarray, level: float) -> tuple[np.ndarray, np.ndarray]:
    """The simultaneous percentile band over the columns of replicates [R, columns]: per column its quantiles at
    a and 1 - a, with a the (1 - level) quantile over replicates r of t_r = min over columns j of the tail share
    min(P(X_j <= v_rj), P(X_j >= v_rj)) (columns NaN in a replicate left out), so that about `level` of the
    replicates lie inside the band in every column at once. Percentile ends keep each column's skew. NaN ends
    where a column has no finite replicate."""
    rows, width = replicates.shape
    tail = np.ones(rows)
    for j in range(width):
        column = replicates[:, j]
        finite = np.isfinite(column)
        if not finite.any():
            continue
        ordered = np.sort(column[finite])
        below = np.searchsorted(ordered, column[finite], side="right") / len(ordered)
        above = (len(ordered) - np.searchsorted(ordered, column[finite], side="left")) / len(ordered)
        tail[finite] = np.minimum(tail[finite], np.minimum(below, above))
    ends = np.full((2, width), np.nan)
    some = np.isfinite(replicates).any(0)
    if rows and some.any():
        share = float(np.quantile(tail, 1 - level))
        ends[:, some] = np.nanquantile(replicates[:, some], [share, 1 - share], axis=0)
    return ends[0], ends[1]


def _band(key: str, plain: dict[str, Sample], full: Evaluated, reps: Evaluated, level: float) -> tuple[float, float]:
    """The `band` interval of a head-wise statistic, or of a difference or ratio with a head-wise part (a smooth
    part is one column of its own); NaN when the band is unbounded or a ratio's denominator band reaches 0."""
    sample = plain[key]
    parts = [key] if is_headwise(sample) else list(sample.of)

    def columns(part: str, of: Evaluated) -> np.ndarray:
        return of.columns[part] if part in of.columns else of.values[part][:, None]

    sizes = [columns(part, full).shape[1] for part in parts]
    low_ends, high_ends = band_ends(np.concatenate([columns(p, reps) for p in parts], 1), level)
    bounds, start = [], 0
    for part, size in zip(parts, sizes):
        ends = np.stack([low_ends[start : start + size], high_ends[start : start + size]])  # [2, columns]
        start += size
        low, high = reduce_heads(plain[part], ends) if part in full.columns else ends[:, 0]
        bounds.append((float(low), float(high)))
    if len(bounds) == 1:
        return bounds[0]
    (a_low, a_high), (b_low, b_high) = bounds
    if sample.statistic == "difference":
        return a_low - b_high, a_high - b_low
    if not (b_low > 0 or b_high < 0):
        return math.nan, math.nan
    corners = [a / b for a in (a_low, a_high) for b in (b_low, b_high)]
    return min(corners), max(corners)


# --- a record's intervals ---------------------------------------------------------------------------------------


def checked_intervals(
    samples: dict[str, Sample],
    reps: Evaluated,
    reported,
    level: float,
    min_prompts: int,
    methods: dict[str, str] | None = None,
) -> Intervals:
    """The interval of every key of `reported` (a record's scalars, or their names) that has replicates, by the
    method of its kind (`methods`, default `METHODS`), and why the others are NaN: the statistic of the full
    sample is NaN; fewer than `min_prompts` prompts contribute (every resample repeats the few there are); its
    kind's interval is withheld; the statistic is undefined in more than 1 - SCALAR_FINITE_SHARE of the
    resamples (an interval over the rest would be conditional); the method gives no finite interval. `reps` =
    `bootstrap.resample(samples, ...)`. The interval is always that of the stored sample."""
    methods = METHODS if methods is None else methods
    full = full_sample(samples)
    plain = resolved(samples)
    out = Intervals()
    for key, values in reps.values.items():
        if key not in reported:
            continue
        estimate = float(full.values.get(key, [math.nan])[0])
        what = kind(key, plain)
        method = methods[what]
        why = None
        if not math.isfinite(estimate):
            why = "the statistic is NaN"
        elif (count := contributing(key, plain)) < min_prompts:
            why = f"only {count} prompt(s) contribute (report.bootstrap.min_prompts={min_prompts})"
        elif method == "withheld":
            why = WITHHELD.get(what, f"withheld: no interval method reaches its coverage target for a {what}")
        elif method != "wilson" and defined(values, SCALAR_FINITE_SHARE) is None:
            share = float(np.isfinite(values).mean())
            why = f"defined in {share:.0%} of the resamples (< {SCALAR_FINITE_SHARE:.0%})"
        else:
            low, high = _interval(method, key, plain, full, reps, level)
            if not (math.isfinite(low) and math.isfinite(high)):
                why = f"the {method} interval is not finite" + NOT_FINITE.get(what, "")
        out.ci[key] = [math.nan, math.nan] if why else [low, high]
        if why:
            out.reasons[key] = why
        else:
            out.methods[key] = method
    return out


def _interval(
    method: str, key: str, plain: dict[str, Sample], full: Evaluated, reps: Evaluated, level: float
) -> tuple[float, float]:
    estimate, values = float(full.values[key][0]), reps.values[key]
    if method == "wilson":
        sample = plain[key]
        return wilson(float(sample.values.sum()), sample.n, level)
    if method == "studentized":
        if key not in full.se:
            raise ValueError(f"{key}: a {kind(key, plain)} statistic has no standard error for a studentized interval")
        return studentized(estimate, float(full.se[key][0]), values, reps.se[key], level, SCALAR_FINITE_SHARE)
    if method == "percentile":
        return percentile(values, level, SCALAR_FINITE_SHARE)
    if method == "bias_corrected":
        return bias_corrected(values, estimate, level, SCALAR_FINITE_SHARE)
    if method == "order_statistic":
        sample = plain[key]
        return order_statistic(sample.values, float(sample.q), level)
    if method == "basic":
        return basic(values, estimate, level, SCALAR_FINITE_SHARE)
    if method == "band":
        return _band(key, plain, full, reps, level)
    raise ValueError(f"unknown interval method {method!r}; valid: {', '.join(INTERVAL_METHODS)}")


def record_intervals(samples: dict[str, Sample], reported, settings) -> Intervals:
    """The `ci`, `ci_reasons` and `ci_method` of a record (`checked_intervals`) for the `reported` keys that
    have a sample, with `settings` = config `report.bootstrap` (n, level, seed, min_prompts). Logs the cost."""
    started = time.perf_counter()
    reps = resample(samples, int(settings.n), int(settings.seed))  # parts of composites included
    out = checked_intervals(samples, reps, reported, float(settings.level), int(settings.min_prompts))
    seconds = time.perf_counter() - started
    log.info("bootstrap: %d intervals x %d replicates in %.3f s", len(out.ci), settings.n, seconds)
    return out

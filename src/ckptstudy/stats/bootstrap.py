"""Bootstrap confidence intervals over prompts, for every scalar that is a statistic of per-prompt values.

A family that reports such a scalar keeps, beside it, a `Sample`: the per-prompt values (one row per prompt
of a named prompt set) and which statistic of them the scalar is. The statistic of the full sample is the
reported value (tests hold the families to it); resampling the prompts with replacement `n` times gives `n`
replicates of the statistic and the percentile interval at `level` (a rate of 0/1 values gets the Wilson
interval instead, which does not collapse at 0 or 1; its replicates still serve the onset intervals).

Statistics (`Sample.statistic`):
- `mean`: mean over prompts (rates and shares are means of 0/1 values);
- `nanmean`: mean over the prompts where the value is finite (e.g. loop onsets: only looping prompts);
- `quantile` (`q`): linear-interpolation quantile over finite values (numpy's and torch's default);
- `median_low`: the lower middle of the finite values (what `torch.median` returns);
- `max_of_mean` / `top_mean` (`k`): the largest / the mean of the k largest per-head means over prompts
  (values [n, layer, head]: per-prompt per-head scores);
- `ratio_of_sums`: per column, sum of `values` [n, ...] over prompts / sum of `weights` over prompts (one
  denominator per prompt [n], or one per prompt and column, shaped like `values`),
  then the mean (`reduce="mean"`) or the maximum (`reduce="max"`) over the columns where it is finite
  (attention enrichment: mass over expected mass; with one expected mass for every head, per-prompt
  head-mean masses [n] give the same head mean; a mean attention entropy: summed entropy over rows counted);
- `vector` (`function`, `k`, `threshold`): a function of the per-head vector v = sum of `values` [n, heads]
  over prompts / sum of `weights` [n] (the mean over prompts without weights): `positive_total` =
  sum(max(v, 0)); `top_share` (k), `neff`, `gini` = `ckptstudy.stats.specialization.concentration` of v, NaN
  where the positive total is below `threshold` (an ablation effect vector pooled over target positions);
- `ratio` / `difference`: the statistic of sample `of[0]` over / minus that of sample `of[1]`, two keys of
  the same checkpoint, often on independent prompt sets (each is resampled as its own prompt set);
- `compare` (`function`: `cosine`, `jaccard` of the top-`k` head sets, `spearman`): two per-head vectors,
  those of samples `of[0]` and `of[1]` (a `vector`, `ratio_of_sums`, `max_of_mean` or `top_mean` sample:
  its per-head statistic before the reduction), NaN where a side's `threshold` is not met.
A sample with `of=(key,)` (one key) and no values borrows the values, weights and prompt set of sample `key`
(several statistics of one array store it once).

Replicates are paired: replicate r draws the same prompt indices for every sample of a prompt set (same
name and size) at every checkpoint, since the probes are the same prompts at every step. So replicate r of
a whole trajectory is one coherent resample, and onsets can be recomputed on it (`onsets.onset_intervals`).

Samples are stored with a record's arrays (`encode` / `decode`: `<prefix><key>/values`, `.../weights`
and a JSON `.../spec`; the prefix is `samples/` in a record's npz, `bootstrap/` elsewhere), so intervals are
recomputed from records alone, without the model.
"""

from __future__ import annotations

import json
import math
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from ckptstudy.stats import specialization

STATISTICS = (
    "mean",
    "nanmean",
    "quantile",
    "median_low",
    "max_of_mean",
    "top_mean",
    "ratio_of_sums",
    "vector",
    "ratio",
    "difference",
    "compare",
)
COMPOSITES = ("ratio", "difference", "compare")  # statistics of two other samples' replicates
HEADWISE = ("max_of_mean", "top_mean", "ratio_of_sums")  # reductions over columns of a per-column statistic
VECTOR_FUNCTIONS = specialization.CONCENTRATIONS
COMPARE_FUNCTIONS = ("cosine", "jaccard", "spearman")
REDUCES = ("mean", "max")
PREFIX = "bootstrap/"


@dataclass
class Sample:
    """The per-prompt values a scalar is a statistic of (see the module docstring)."""

    statistic: str
    values: np.ndarray | None = None  # [n, ...]: one row per prompt of `prompts`
    prompts: str = ""  # the prompt set the rows index: resampled together, the same draws at every step
    weights: np.ndarray | None = None  # ratio_of_sums, vector: denominators per prompt [n] (or per prompt and column)
    q: float | None = None  # quantile
    k: int | None = None  # top_mean, vector top_share, compare jaccard
    of: tuple[str, ...] | None = None  # composites: (first key, second key); others: (key to borrow values of,)
    reduce: str = "mean"  # ratio_of_sums: over columns
    function: str | None = None  # vector, compare
    threshold: float | None = None  # vector: least positive total for a concentration statistic

    def __post_init__(self):
        if self.statistic not in STATISTICS:
            raise ValueError(f"unknown bootstrap statistic {self.statistic!r}; valid: {', '.join(STATISTICS)}")
        if self.reduce not in REDUCES:
            raise ValueError(f"unknown reduce {self.reduce!r}; valid: {', '.join(REDUCES)}")
        functions = {"vector": VECTOR_FUNCTIONS, "compare": COMPARE_FUNCTIONS}.get(self.statistic, (None,))
        if self.function not in functions:
            valid = ", ".join(str(f) for f in functions)
            raise ValueError(f"a {self.statistic} sample has function {self.function!r}; valid: {valid}")
        if self.function in ("top_share", "jaccard") and not (self.k is not None and self.k >= 1):
            raise ValueError(f"a {self.function} sample needs k >= 1, got {self.k!r}")
        if self.of is not None:
            self.of = tuple(str(key) for key in self.of)
        if self.statistic in COMPOSITES:
            if self.of is None or len(self.of) != 2:
                raise ValueError(f"a {self.statistic} sample names the two keys it combines: of=(num, den)")
            return
        if self.values is None and self.of is not None and len(self.of) == 1:
            return  # borrows the values of sample of[0]
        if self.values is None:
            raise ValueError(f"a {self.statistic} sample needs per-prompt values")
        self.values = np.asarray(self.values, dtype=np.float64)
        if self.statistic in ("mean", "nanmean", "quantile", "median_low") and self.values.ndim != 1:
            raise ValueError(f"a {self.statistic} sample has one value per prompt; got shape {self.values.shape}")
        if self.statistic == "quantile" and not (self.q is not None and 0 <= self.q <= 1):
            raise ValueError(f"a quantile sample needs q in [0, 1], got {self.q!r}")
        if self.statistic == "top_mean" and not (self.k is not None and self.k >= 1):
            raise ValueError(f"a top_mean sample needs k >= 1, got {self.k!r}")
        if self.statistic == "ratio_of_sums" and self.weights is None:
            raise ValueError("a ratio_of_sums sample needs the per-prompt denominators (weights)")
        if self.weights is not None:
            self.weights = np.asarray(self.weights, dtype=np.float64)
            if self.weights.shape not in (self.values.shape[:1], self.values.shape):
                raise ValueError(
                    f"weights {self.weights.shape} match neither the prompts nor the values {self.values.shape}"
                )

    @property
    def n(self) -> int:
        return 0 if self.values is None else int(self.values.shape[0])

    def spec(self) -> dict:
        """Everything but the arrays (stored as JSON beside them)."""
        fields = ("statistic", "prompts", "q", "k", "of", "reduce", "function", "threshold")
        return {name: getattr(self, name) for name in fields}


# --- statistics of weighted rows: counts [R, n] (how often each prompt is drawn in each replicate) ---------


def _flat(values: np.ndarray) -> np.ndarray:
    return values.reshape(values.shape[0], -1)


def _reduce_columns(per_column: np.ndarray, reduce: str) -> np.ndarray:
    """Mean or maximum over the finite entries of each row [R, columns] (NaN where none is finite)."""
    finite = np.isfinite(per_column)
    count = finite.sum(1)
    if reduce == "max":
        best = np.where(finite, per_column, -np.inf).max(1) if per_column.shape[1] else np.zeros(len(count))
        return np.where(count > 0, best, np.nan)
    total = np.where(finite, per_column, 0.0).sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def _weights(sample: Sample) -> np.ndarray:
    """The denominators [n] or [n, columns] (1 per prompt for a plain mean over prompts)."""
    if sample.weights is None:
        return np.ones(sample.n)
    return _flat(sample.weights) if sample.weights.ndim > 1 else sample.weights


def _per_column(sample: Sample, counts: np.ndarray) -> np.ndarray:
    """The per-column (per-head) statistic of each replicate before its reduction: [R, columns]."""
    values = _flat(sample.values)
    if sample.statistic in ("max_of_mean", "top_mean") or (sample.statistic == "vector" and sample.weights is None):
        return counts @ values / sample.n
    total = counts @ values  # [R, columns]
    weight = counts @ (_flat(sample.weights) if sample.weights.ndim > 1 else sample.weights[:, None])  # [R, 1 | cols]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(weight > 0, total / np.where(weight > 0, weight, 1.0), np.nan)


def reduce_heads(sample: Sample, per_column: np.ndarray) -> np.ndarray:
    """A head-wise statistic (`HEADWISE`: max_of_mean, top_mean, ratio_of_sums) from its per-column
    statistic [R, columns]: the maximum, the mean of the k largest, the mean or maximum over finite columns.
    Each is nondecreasing in every column, which the simultaneous band of `ckptstudy.stats.intervals` uses."""
    if sample.statistic == "ratio_of_sums":
        return _reduce_columns(per_column, sample.reduce)
    k = 1 if sample.statistic == "max_of_mean" else min(sample.k, per_column.shape[1])
    return -np.sort(-per_column, axis=1)[:, :k].mean(1)


def compare_function(a: np.ndarray, b: np.ndarray, function: str, k: int | None = None) -> np.ndarray:
    """`function` of each pair of rows of per-head vectors a, b [R, heads]: cosine, Jaccard overlap of the
    top-k head sets, Spearman rank correlation (`ckptstudy.stats.specialization`; cosine and Spearman vectorised,
    Jaccard one replicate at a time). NaN where a row is not finite or a vector is zero (cosine)."""
    if function not in COMPARE_FUNCTIONS:
        raise ValueError(f"unknown compare function {function!r}; valid: {', '.join(COMPARE_FUNCTIONS)}")
    finite = np.isfinite(a).all(1) & np.isfinite(b).all(1)
    if function == "cosine":
        denom = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(finite & (denom > 0), (a * b).sum(1) / denom, np.nan)
    out = np.full(len(a), np.nan)
    if function == "spearman":
        out[finite] = specialization.spearman_rows(a[finite], b[finite])
        return out
    for r in np.flatnonzero(finite):
        x, y = torch.from_numpy(a[r]), torch.from_numpy(b[r])
        out[r] = specialization.jaccard(specialization.top_heads(x, k), specialization.top_heads(y, k))
    return out


def _linear(sample: Sample, counts: np.ndarray) -> np.ndarray:
    """The statistics that are functions of count-weighted sums over prompts: [R]."""
    values = sample.values
    n = values.shape[0]
    if sample.statistic == "mean":
        return counts @ values / n
    if sample.statistic == "nanmean":
        finite = np.isfinite(values)
        total, count = counts @ np.where(finite, values, 0.0), counts @ finite.astype(np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(count > 0, total / np.maximum(count, 1e-300), np.nan)
    if sample.statistic in HEADWISE:
        return reduce_heads(sample, _per_column(sample, counts))
    if sample.statistic == "vector":
        return specialization.concentration(_per_column(sample, counts), sample.function, sample.k, sample.threshold)
    raise ValueError(sample.statistic)


def _order(sample: Sample, index: np.ndarray) -> np.ndarray:
    """The order statistics, on the drawn rows themselves (index [R, n]): [R]."""
    drawn = sample.values[index]  # [R, n]
    if sample.statistic == "quantile":
        out = np.full(drawn.shape[0], np.nan)
        some = np.isfinite(drawn).any(1)
        if some.any():
            out[some] = np.nanquantile(drawn[some], sample.q, axis=1)
        return out
    # median_low: the ((count - 1) // 2)-th smallest finite value (NaNs sort last)
    count = np.isfinite(drawn).sum(1)
    ordered = np.sort(drawn, axis=1)
    picked = ordered[np.arange(len(ordered)), np.maximum(count - 1, 0) // 2]
    return np.where(count > 0, picked, np.nan)


def _evaluate(sample: Sample, counts: np.ndarray, index: np.ndarray) -> np.ndarray:
    if sample.statistic in ("quantile", "median_low"):
        return _order(sample, index)
    return _linear(sample, counts)


# --- standard errors of the smooth statistics (for studentized intervals) ------------------------------------


def is_headwise(sample: Sample) -> bool:
    """A maximum (or top-k mean) over columns of a per-column statistic (`reduce_heads`)."""
    return sample.statistic in ("max_of_mean", "top_mean") or (
        sample.statistic == "ratio_of_sums" and sample.reduce == "max"
    )


def is_smooth(sample: Sample) -> bool:
    """A statistic with a standard error from its influence values (`_influence`): a mean, a mean over finite
    values, a ratio of sums averaged over columns."""
    return sample.statistic in ("mean", "nanmean") or (sample.statistic == "ratio_of_sums" and sample.reduce == "mean")


def _influence(sample: Sample, counts: np.ndarray, value: np.ndarray) -> np.ndarray:
    """Influence values [R, n] of a smooth statistic at each replicate (its distribution: prompts weighted by
    `counts`; `value` [R] its statistic there): the statistic moves by about mean_i((c_i - 1) * infl_i) when the
    prompts are reweighted by c, so its variance is sum_i c_i infl_i^2 / n^2."""
    n = sample.n
    if sample.statistic == "mean":
        return sample.values[None, :] - value[:, None]
    if sample.statistic == "nanmean":
        finite = np.isfinite(sample.values)
        count = counts @ finite.astype(np.float64)
        centred = np.where(finite, np.where(finite, sample.values, 0.0)[None, :] - value[:, None], 0.0)
        with np.errstate(invalid="ignore", divide="ignore"):
            return centred * (n / count)[:, None]
    values, weights = _flat(sample.values), _weights(sample)
    weights = weights if weights.ndim > 1 else weights[:, None]  # [n, 1 | columns]
    out = np.empty((len(counts), n))
    chunk = max(1, 4_000_000 // max(1, values.size))  # bound the [chunk, n, columns] temporaries
    for start in range(0, len(counts), chunk):
        c = counts[start : start + chunk]
        ratio = _per_column(sample, c)  # [r, columns]
        mean_weight = (c @ weights) / n  # [r, 1 | columns]
        with np.errstate(invalid="ignore", divide="ignore"):
            per = (values[None] - ratio[:, None, :] * weights[None]) / mean_weight[:, None, :]  # [r, n, columns]
        finite = np.isfinite(ratio)  # the columns the mean over columns takes
        per = np.where(finite[:, None, :] & np.isfinite(per), per, 0.0)
        out[start : start + chunk] = per.sum(2) / np.maximum(finite.sum(1), 1)[:, None]
    return out


def _standard_error(influence: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """sqrt(sum_i c_i infl_i^2) / n per replicate: [R]."""
    return np.sqrt((counts * influence * influence).sum(1)) / counts.shape[1]


# --- every sample at once -------------------------------------------------------------------------------------


def resolved(samples: dict[str, Sample]) -> dict[str, Sample]:
    """The samples with borrowed values filled in from the sample they name (`of=(key,)`); a sample whose
    source is missing is left out, as is a composite one of whose parts is missing."""
    out = {}
    for key, sample in samples.items():
        if sample.statistic not in COMPOSITES and sample.values is None:
            source = samples.get(sample.of[0])
            if source is None or source.values is None:
                continue
            fields = {**sample.spec(), "prompts": source.prompts, "of": None}
            sample = Sample(values=source.values, weights=source.weights, **fields)
        out[key] = sample
    return {
        key: sample
        for key, sample in out.items()
        if sample.statistic not in COMPOSITES or all(part in out for part in sample.of)
    }


Draw = Callable[[str, int], tuple[np.ndarray, np.ndarray]]  # (prompt set, size) -> (index [R, n], counts [R, n])


@dataclass
class Evaluated:
    """Every sample's statistic on R prompt draws (R = 1: the full sample), and what interval methods need
    beside it: `se` = the standard error [R] of the smooth statistics (`is_smooth`) and of differences and
    ratios of two of them; `columns` = the per-column statistic [R, columns] of the head-wise ones (`is_headwise`)."""

    values: dict[str, np.ndarray]
    se: dict[str, np.ndarray] = field(default_factory=dict)
    columns: dict[str, np.ndarray] = field(default_factory=dict)


def _evaluate_all(samples: dict[str, Sample], draw: Draw, size: int, extras: bool) -> Evaluated:
    """Every sample's statistic [size] on the prompt draws `draw` gives (composites from their parts), with the
    standard errors and per-column statistics when `extras`."""
    samples = resolved(samples)
    out = Evaluated({})
    paired = {part for s in samples.values() if s.statistic in ("ratio", "difference") for part in s.of}
    influence: dict[str, tuple[tuple[str, int], np.ndarray]] = {}
    cache: dict[tuple, np.ndarray] = {}

    def per_column(sample: Sample, name: str) -> np.ndarray:
        # the keys that borrow one array (an effect vector's total, shares, N_eff, Gini) share its per-column pass
        plain_mean = sample.statistic in ("max_of_mean", "top_mean") or (
            sample.statistic == "vector" and sample.weights is None
        )
        found = (id(sample.values), id(sample.weights), plain_mean, name, sample.n)
        if found not in cache:
            cache[found] = _per_column(sample, draw(name, sample.n)[1])
        return cache[found]

    for key, sample in samples.items():
        if sample.statistic in COMPOSITES:
            continue
        name = sample.prompts or key
        index, counts = draw(name, sample.n)
        if not sample.n:
            out.values[key] = np.full(size, np.nan)
            continue
        if sample.statistic in HEADWISE or sample.statistic == "vector":  # as `_linear`, on the shared pass
            columns = per_column(sample, name)
            out.values[key] = (
                reduce_heads(sample, columns)
                if sample.statistic in HEADWISE
                else specialization.concentration(columns, sample.function, sample.k, sample.threshold)
            )
            if extras and is_headwise(sample):
                out.columns[key] = columns
        else:
            out.values[key] = _evaluate(sample, counts, index)
        if extras and is_smooth(sample):
            infl = _influence(sample, counts, out.values[key])
            out.se[key] = _standard_error(infl, counts)
            if key in paired:
                influence[key] = ((name, sample.n), infl)
    for key, sample in samples.items():
        if sample.statistic in ("ratio", "difference"):
            _combine(key, sample, out, influence, draw, size)
        elif sample.statistic == "compare":
            out.values[key] = _compare(key, sample, samples, per_column)
    return out


def _combine(key: str, sample: Sample, out: Evaluated, influence: dict, draw: Draw, size: int) -> None:
    """A ratio or difference of two samples' statistics, with its standard error when both parts have one
    (from their influence values when both rest on the same prompt draws, else as independent parts)."""
    first, second = (out.values.get(k, np.full(size, np.nan)) for k in sample.of)
    with np.errstate(invalid="ignore", divide="ignore"):
        if sample.statistic == "ratio":
            ok = np.isfinite(first) & np.isfinite(second) & (second != 0)
            value = np.where(ok, first / np.where(ok, second, 1.0), np.nan)
        else:
            value = first - second
    out.values[key] = value
    if not all(k in out.se for k in sample.of):
        return
    a, b = sample.of
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        scale = 1.0 / second if sample.statistic == "ratio" else 1.0  # d(a/b) = (da - (a/b) db) / b
        slope = value if sample.statistic == "ratio" else 1.0
        if a in influence and b in influence and influence[a][0] == influence[b][0]:
            counts = draw(*influence[a][0])[1]
            infl = (influence[a][1] - np.reshape(slope, (-1, 1)) * influence[b][1]) * np.reshape(scale, (-1, 1))
            out.se[key] = _standard_error(infl, counts)
        else:
            out.se[key] = np.abs(scale) * np.sqrt(out.se[a] ** 2 + (slope * out.se[b]) ** 2)


def _compare(key: str, sample: Sample, samples: dict[str, Sample], per_column: Callable) -> np.ndarray:
    sides = [samples[k] for k in sample.of]
    vectors = []
    for side, side_key in zip(sides, sample.of):
        if side.statistic not in ("vector", "ratio_of_sums", "max_of_mean", "top_mean") or not side.n:
            raise ValueError(f"compare {key!r}: sample {side_key!r} ({side.statistic}) has no per-head vector")
        vectors.append(per_column(side, side.prompts or side_key))
    value = compare_function(*vectors, sample.function, sample.k)
    for side, vector in zip(sides, vectors):
        if side.threshold is not None:  # a side below its threshold has no head set to compare
            total = specialization.concentration(vector, "positive_total")
            value = np.where(total >= side.threshold, value, np.nan)
    return value


def _everyone(_prompts: str, n: int) -> tuple[np.ndarray, np.ndarray]:
    return np.arange(n)[None, :], np.ones((1, n))


def full_statistics(samples: dict[str, Sample]) -> dict[str, float]:
    """Every sample's statistic on its full sample (every prompt once): the reported values."""
    return {key: float(values[0]) for key, values in _evaluate_all(samples, _everyone, 1, False).values.items()}


def full_sample(samples: dict[str, Sample]) -> Evaluated:
    """Every sample's statistic on its full sample, with standard errors and per-column statistics ([1])."""
    return _evaluate_all(samples, _everyone, 1, True)


def statistic(key: str, samples: dict[str, Sample]) -> float:
    """The statistic of `samples[key]` on its full sample (every prompt once): the reported value. Only `key`
    and the samples it rests on (parts of a composite, the sample it borrows values from) are evaluated."""
    return full_statistics({k: samples[k] for k in _closure(key, samples)}).get(key, math.nan)


def _closure(key: str, samples: dict[str, Sample]) -> list[str]:
    """`key` and every sample it rests on, recursively (those present in `samples`)."""
    out, todo = [], [key]
    while todo:
        name = todo.pop()
        if name in samples and name not in out:
            out.append(name)
            todo += list(samples[name].of or ())
    return out


def columns(sample: Sample) -> np.ndarray:
    """The per-column (per-head) statistic of a sample with values, before its reduction over columns, on the
    full sample: the mean over prompts (`max_of_mean`, `top_mean`, an unweighted `vector`) or the sum over
    prompts over the sum of weights (`ratio_of_sums`, a weighted `vector`), NaN where the weights sum to 0;
    shaped like one prompt's values (e.g. [layer, head]). A family's per-head array is this, not a second
    computation of it."""
    if sample.statistic not in ("max_of_mean", "top_mean", "ratio_of_sums", "vector") or sample.values is None:
        raise ValueError(f"a {sample.statistic} sample without values has no per-column statistic")
    return _per_column(sample, np.ones((1, sample.n)))[0].reshape(sample.values.shape[1:])


def contributing(key: str, samples: dict[str, Sample]) -> int:
    """How many prompts the full-sample statistic of `key` rests on: rows with a finite value (mean-like
    statistics of values that may be NaN), rows with a nonzero denominator (ratios of sums, weighted
    vectors), every row otherwise; for a composite the fewer of its two parts'."""
    return _contributing(key, resolved(samples))


def _contributing(key: str, plain: dict[str, Sample]) -> int:
    """`contributing` on samples already `resolved` (checked_intervals asks for every key: resolve once)."""
    sample = plain.get(key)
    if sample is None:
        return 0
    if sample.statistic in COMPOSITES:
        return min(_contributing(part, plain) for part in sample.of)
    if sample.weights is not None:
        weights = sample.weights.reshape(sample.n, -1)
        return int((weights != 0).any(1).sum())
    if sample.statistic in ("nanmean", "quantile", "median_low"):
        return int(np.isfinite(sample.values).sum())
    return sample.n


def is_rate(sample: Sample) -> bool:
    """A mean of 0/1 values (a share of prompts): its interval is Wilson's."""
    return sample.statistic == "mean" and sample.n > 0 and bool(np.isin(sample.values, (0.0, 1.0)).all())


def kind(key: str, plain: dict[str, Sample]) -> str:
    """The kind of statistic `key` is (samples `resolved`), which decides its interval method
    (`ckptstudy.stats.intervals.METHODS`): `rate` (a mean of 0/1 values), `mean`, `nanmean`, `quantile`,
    `median_low`, `max_of_mean`, `top_mean`, `ratio_of_sums/<reduce>`, `vector/<function>`,
    `compare/<function>`, and `difference` / `ratio` of two smooth statistics or `difference/max` /
    `ratio/max` when a part is head-wise."""
    sample = plain[key]
    if sample.statistic == "mean":
        return "rate" if is_rate(sample) else "mean"
    if sample.statistic == "ratio_of_sums":
        return f"ratio_of_sums/{sample.reduce}"
    if sample.statistic in ("vector", "compare"):
        return f"{sample.statistic}/{sample.function}"
    if sample.statistic in ("ratio", "difference"):
        return sample.statistic + ("/max" if any(is_headwise(plain[part]) for part in sample.of) else "")
    return sample.statistic


# --- resampling --------------------------------------------------------------------------------------------


def draws(prompts: str, n: int, replicates: int, seed: int) -> np.ndarray:
    """Prompt indices [replicates, n] of the resamples of one prompt set: the same for the same (set name,
    size, seed), so replicate r is the same resample at every checkpoint; another set name draws others."""
    rng = np.random.default_rng([seed, zlib.crc32(prompts.encode()), n])
    return rng.integers(0, n, size=(replicates, n)) if n else np.zeros((replicates, 0), dtype=np.int64)


def counts_of(index: np.ndarray, n: int) -> np.ndarray:
    """How often each prompt is drawn in each replicate: [R, n]."""
    rows = index.shape[0]
    flat = (np.arange(rows)[:, None] * n + index).ravel()
    return np.bincount(flat, minlength=rows * n).reshape(rows, n).astype(np.float64)


def resample(samples: dict[str, Sample], n: int, seed: int) -> Evaluated:
    """`n` bootstrap replicates [n] of every sample's statistic (composites from their parts' replicates), with
    the standard errors and per-column statistics of each replicate (`Evaluated`)."""
    cache: dict[tuple[str, int], tuple[np.ndarray, np.ndarray]] = {}

    def resampled(prompts: str, size: int) -> tuple[np.ndarray, np.ndarray]:
        if (prompts, size) not in cache:
            index = draws(prompts, size, n, seed)
            cache[(prompts, size)] = (index, counts_of(index, size))
        return cache[(prompts, size)]

    return _evaluate_all(samples, resampled, n, True)


MIN_FINITE_SHARE = 0.5  # an onset interval needs at least this share of replicates that have an onset
SCALAR_FINITE_SHARE = 0.9  # a scalar's interval: the statistic defined in at least this share of replicates


def defined(values: np.ndarray, min_finite: float) -> np.ndarray | None:
    """The finite replicates, or None when fewer than `min_finite` of them are finite."""
    finite = values[np.isfinite(values)]
    return None if len(values) == 0 or len(finite) < min_finite * len(values) else finite


def interval(values: np.ndarray, level: float, min_finite: float = MIN_FINITE_SHARE) -> tuple[float, float]:
    """Percentile interval at `level` over the finite replicates; NaN when fewer than `min_finite` of them
    are finite (e.g. an onset where most resamples have none). `ckptstudy.stats.intervals.percentile`; the
    interval a record shows is its kind's (`intervals.METHODS`)."""
    finite = defined(values, min_finite)
    if finite is None:
        return math.nan, math.nan
    low, high = np.quantile(finite, [(1 - level) / 2, (1 + level) / 2])
    return float(low), float(high)


def replicates(samples: dict[str, Sample], n: int, seed: int) -> dict[str, np.ndarray]:
    """`n` bootstrap replicates [n] of every sample's statistic (composites from their parts' replicates)."""
    return resample(samples, n, seed).values


# --- storage with the record's arrays ------------------------------------------------------------------------


def encode(key: str, sample: Sample, prefix: str = PREFIX) -> dict[str, np.ndarray]:
    """The arrays that store `sample` (`<prefix><key>/spec`, `.../values`, `.../weights`; a record's npz uses the
    prefix `samples/`, `ckptstudy.record`)."""
    out = {f"{prefix}{key}/spec": np.asarray(json.dumps(sample.spec()))}
    if sample.values is not None:
        out[f"{prefix}{key}/values"] = _compact(sample.values)
    if sample.weights is not None:
        out[f"{prefix}{key}/weights"] = _compact(sample.weights)
    return out


def _compact(array: np.ndarray) -> np.ndarray:
    """float32 when that loses nothing (values that came from float32 tensors), else the array: half the
    bytes for per-head samples, read back bit for bit (decode widens to float64)."""
    with np.errstate(over="ignore"):
        narrow = array.astype(np.float32)
    return narrow if np.array_equal(narrow, array, equal_nan=True) else array


def decode(arrays: dict[str, np.ndarray], prefix: str = PREFIX) -> dict[str, Sample]:
    """The samples stored in `arrays` under `prefix` by `encode` (keyed by scalar)."""
    out = {}
    for name, spec in arrays.items():
        if not (name.startswith(prefix) and name.endswith("/spec")):
            continue
        key = name[len(prefix) : -len("/spec")]
        fields = json.loads(str(spec))
        fields["of"] = tuple(fields["of"]) if fields.get("of") else None
        base = f"{prefix}{key}"
        out[key] = Sample(values=arrays.get(f"{base}/values"), weights=arrays.get(f"{base}/weights"), **fields)
    return out

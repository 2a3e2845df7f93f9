"""Bootstrap confidence intervals over prompts, for every scalar that is a statistic of per-prompt values.

A family that reports such a scalar keeps, beside it, a `Sample`: the per-prompt values (one row per prompt
of a named prompt set) and which statistic of them the scalar is. The statistic of the full sample is the
reported value (tests hold the families to it); resampling the prompts with replacement `n` times gives `n`
replicates of the statistic and the percentile interval at `level`.

Statistics (`Sample.statistic`):
- `mean`: mean over prompts (rates and shares are means of 0/1 values);
- `nanmean`: mean over the prompts where the value is finite (e.g. loop onsets: only looping prompts);
- `quantile` (`q`): linear-interpolation quantile over finite values (numpy's and torch's default);
- `median_low`: the lower middle of the finite values (what `torch.median` returns);
- `max_of_mean` / `top_mean` (`k`): the largest / the mean of the k largest per-head means over prompts
  (values [n, layer, head]: per-prompt per-head scores);
- `ratio_of_sums`: per column, sum of `values` [n, ...] over prompts / sum of `weights` [n] over prompts,
  then the mean over the columns where it is finite (attention enrichment: mass over expected mass; with
  one expected mass for every head, per-prompt head-mean masses [n] give the same head mean);
- `ratio`: the statistic of sample `of[0]` over that of sample `of[1]`, two keys of the same checkpoint,
  often on independent prompt sets (each is resampled as its own prompt set).

Replicates are paired: replicate r draws the same prompt indices for every sample of a prompt set (same
name and size) at every checkpoint, since the probes are the same prompts at every step. So replicate r of
a whole trajectory is one coherent resample, and onsets can be recomputed on it (`onsets.onset_intervals`).

Samples are stored with a record's arrays (`encode` / `decode`: `bootstrap/<key>/values`, `.../weights`
and a JSON `.../spec`), so intervals are recomputed from records alone, without the model.
"""

from __future__ import annotations

import json
import logging
import math
import time
import zlib
from dataclasses import dataclass

import numpy as np

log = logging.getLogger(__name__)

STATISTICS = ("mean", "nanmean", "quantile", "median_low", "max_of_mean", "top_mean", "ratio_of_sums", "ratio")
PREFIX = "bootstrap/"


@dataclass
class Sample:
    """The per-prompt values a scalar is a statistic of (see the module docstring)."""

    statistic: str
    values: np.ndarray | None = None  # [n, ...]: one row per prompt of `prompts`
    prompts: str = ""  # the prompt set the rows index: resampled together, the same draws at every step
    weights: np.ndarray | None = None  # ratio_of_sums: the denominators per prompt [n]
    q: float | None = None  # quantile
    k: int | None = None  # top_mean
    of: tuple[str, str] | None = None  # ratio: (numerator key, denominator key)

    def __post_init__(self):
        if self.statistic not in STATISTICS:
            raise ValueError(f"unknown bootstrap statistic {self.statistic!r}; valid: {', '.join(STATISTICS)}")
        if self.statistic == "ratio":
            if self.of is None or len(self.of) != 2:
                raise ValueError("a ratio sample names its numerator and denominator keys: of=(num, den)")
            self.of = (str(self.of[0]), str(self.of[1]))
            return
        if self.values is None:
            raise ValueError(f"a {self.statistic} sample needs per-prompt values")
        self.values = np.asarray(self.values, dtype=np.float64)
        if self.statistic in ("mean", "nanmean", "quantile", "median_low") and self.values.ndim != 1:
            raise ValueError(f"a {self.statistic} sample has one value per prompt; got shape {self.values.shape}")
        if self.statistic == "quantile" and not (self.q is not None and 0 <= self.q <= 1):
            raise ValueError(f"a quantile sample needs q in [0, 1], got {self.q!r}")
        if self.statistic == "top_mean" and not (self.k is not None and self.k >= 1):
            raise ValueError(f"a top_mean sample needs k >= 1, got {self.k!r}")
        if self.statistic == "ratio_of_sums":
            if self.weights is None:
                raise ValueError("a ratio_of_sums sample needs the per-prompt denominators (weights)")
            self.weights = np.asarray(self.weights, dtype=np.float64)
            if self.weights.shape != self.values.shape[:1]:
                raise ValueError(f"weights {self.weights.shape} do not match values {self.values.shape}")

    @property
    def n(self) -> int:
        return 0 if self.values is None else int(self.values.shape[0])

    def spec(self) -> dict:
        """Everything but the arrays (stored as JSON beside them)."""
        return {"statistic": self.statistic, "prompts": self.prompts, "q": self.q, "k": self.k, "of": self.of}


# --- statistics of weighted rows: counts [R, n] (how often each prompt is drawn in each replicate) ---------


def _flat(values: np.ndarray) -> np.ndarray:
    return values.reshape(values.shape[0], -1)


def _head_mean(per_head: np.ndarray) -> np.ndarray:
    """Mean over the finite entries of each row [R, heads] (NaN where none is finite)."""
    finite = np.isfinite(per_head)
    count = finite.sum(1)
    total = np.where(finite, per_head, 0.0).sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


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
    if sample.statistic in ("max_of_mean", "top_mean"):
        means = counts @ _flat(values) / n  # [R, heads]
        k = 1 if sample.statistic == "max_of_mean" else min(sample.k, means.shape[1])
        return -np.sort(-means, axis=1)[:, :k].mean(1)
    if sample.statistic == "ratio_of_sums":
        mass, expected = counts @ _flat(values), counts @ sample.weights  # [R, heads], [R]
        with np.errstate(invalid="ignore", divide="ignore"):
            per_head = np.where(expected[:, None] > 0, mass / np.where(expected > 0, expected, 1.0)[:, None], np.nan)
        return _head_mean(per_head)
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


def statistic(key: str, samples: dict[str, Sample]) -> float:
    """The statistic of `samples[key]` on its full sample (every prompt once): the reported value."""
    sample = samples[key]
    if sample.statistic == "ratio":
        num, den = (statistic(k, samples) for k in sample.of)
        return num / den if math.isfinite(num) and math.isfinite(den) and den != 0 else math.nan
    n = sample.n
    return float(_evaluate(sample, np.ones((1, n)), np.arange(n)[None, :])[0])


# --- resampling --------------------------------------------------------------------------------------------


def draws(prompts: str, n: int, replicates: int, seed: int) -> np.ndarray:
    """Prompt indices [replicates, n] of the resamples of one prompt set: the same for the same (set name,
    size, seed), so replicate r is the same resample at every checkpoint."""
    rng = np.random.default_rng([seed, zlib.crc32(prompts.encode()), n])
    return rng.integers(0, n, size=(replicates, n)) if n else np.zeros((replicates, 0), dtype=np.int64)


def counts_of(index: np.ndarray, n: int) -> np.ndarray:
    """How often each prompt is drawn in each replicate: [R, n]."""
    counts = np.zeros((index.shape[0], n))
    np.add.at(counts, (np.arange(index.shape[0])[:, None], index), 1.0)
    return counts


def replicates(samples: dict[str, Sample], n: int, seed: int) -> dict[str, np.ndarray]:
    """`n` bootstrap replicates [n] of every sample's statistic (ratios from their parts' replicates)."""
    cache: dict[tuple[str, int], tuple[np.ndarray, np.ndarray]] = {}
    out: dict[str, np.ndarray] = {}
    for key, sample in samples.items():
        if sample.statistic == "ratio":
            continue
        where = (sample.prompts or key, sample.n)
        if where not in cache:
            index = draws(where[0], sample.n, n, seed)
            cache[where] = (index, counts_of(index, sample.n))
        index, counts = cache[where]
        out[key] = _evaluate(sample, counts, index) if sample.n else np.full(n, np.nan)
    for key, sample in samples.items():
        if sample.statistic == "ratio":
            num, den = (out.get(k, np.full(n, np.nan)) for k in sample.of)
            with np.errstate(invalid="ignore", divide="ignore"):
                out[key] = np.where(np.isfinite(num) & np.isfinite(den) & (den != 0), num / den, np.nan)
    return out


MIN_FINITE_SHARE = 0.5  # an interval needs at least this share of replicates where the statistic is defined


def interval(values: np.ndarray, level: float) -> tuple[float, float]:
    """Percentile interval at `level` over the finite replicates; NaN when fewer than half are finite
    (e.g. an onset median where most resamples hold no looping prompt)."""
    finite = values[np.isfinite(values)]
    if len(values) == 0 or len(finite) < MIN_FINITE_SHARE * len(values):
        return math.nan, math.nan
    low, high = np.quantile(finite, [(1 - level) / 2, (1 + level) / 2])
    return float(low), float(high)


def intervals(reps: dict[str, np.ndarray], level: float) -> dict[str, list[float]]:
    """{key: [low, high]} for every replicated key."""
    return {key: list(interval(values, level)) for key, values in reps.items()}


def record_intervals(measured, settings) -> dict[str, list[float]]:
    """The `ci` dict of a record: {key: [low, high]} for every scalar of `measured` (a FamilyResult) that
    has a sample, with `settings` = config `report.bootstrap` (n, level, seed). Logs what it cost."""
    started = time.perf_counter()
    samples = {k: s for k, s in measured.samples.items() if k in measured.scalars}
    out = intervals(replicates(samples, int(settings.n), int(settings.seed)), float(settings.level))
    log.info("bootstrap: %d intervals x %d replicates in %.3f s", len(out), settings.n, time.perf_counter() - started)
    return out


# --- storage with the record's arrays ------------------------------------------------------------------------


def encode(key: str, sample: Sample) -> dict[str, np.ndarray]:
    """The arrays that store `sample` with a record (`bootstrap/<key>/...`)."""
    out = {f"{PREFIX}{key}/spec": np.asarray(json.dumps(sample.spec()))}
    if sample.values is not None:
        out[f"{PREFIX}{key}/values"] = sample.values
    if sample.weights is not None:
        out[f"{PREFIX}{key}/weights"] = sample.weights
    return out


def decode(arrays: dict[str, np.ndarray]) -> dict[str, Sample]:
    """The samples stored in a record's arrays (keyed by scalar)."""
    out = {}
    for name, spec in arrays.items():
        if not (name.startswith(PREFIX) and name.endswith("/spec")):
            continue
        key = name[len(PREFIX) : -len("/spec")]
        fields = json.loads(str(spec))
        fields["of"] = tuple(fields["of"]) if fields.get("of") else None
        base = f"{PREFIX}{key}"
        out[key] = Sample(values=arrays.get(f"{base}/values"), weights=arrays.get(f"{base}/weights"), **fields)
    return out


def without_samples(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A record's arrays less its stored samples."""
    return {k: v for k, v in arrays.items() if not k.startswith(PREFIX)}

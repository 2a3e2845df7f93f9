"""Bootstrap intervals over prompts: each statistic on the full sample, paired resamples, coverage,
storage with a record, and the intervals a record carries."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from ckptstudy import results
from ckptstudy.metrics import FamilyResult
from ckptstudy.record import Identity, Record, RecordArrays
from ckptstudy.stats import bootstrap, intervals, specialization
from ckptstudy.stats.bootstrap import Sample, encode, replicates, resample, statistic
from ckptstudy.stats.intervals import percentile as interval

RNG = np.random.default_rng(0)
ONSETS = np.array([3.0, np.nan, 7.0, 1.0, np.nan, 10.0, 4.0, 2.0])
HEADS = RNG.random((8, 2, 3))  # per-prompt per-head scores [prompt, layer, head]


@pytest.mark.parametrize(
    ("sample", "expected"),
    [
        (Sample("mean", [1, 0, 1, 1]), 0.75),
        (Sample("nanmean", ONSETS), np.nanmean(ONSETS)),
        (Sample("quantile", ONSETS, q=0.1), float(torch.quantile(torch.tensor(ONSETS[~np.isnan(ONSETS)]), 0.1))),
        (Sample("quantile", ONSETS, q=0.9), float(torch.quantile(torch.tensor(ONSETS[~np.isnan(ONSETS)]), 0.9))),
        # torch.median returns the lower of the two middle values: 3, not 3.5
        (Sample("median_low", ONSETS), float(torch.tensor(ONSETS[~np.isnan(ONSETS)]).median())),
        (Sample("max_of_mean", HEADS), HEADS.mean(0).max()),
        (Sample("top_mean", HEADS, k=3), np.sort(HEADS.mean(0).ravel())[-3:].mean()),
        (Sample("ratio_of_sums", HEADS, weights=np.arange(1.0, 9.0)), (HEADS.sum(0) / 36.0).mean()),
    ],
    ids=lambda x: x.statistic if isinstance(x, Sample) else "",
)
def test_statistic_of_the_full_sample(sample, expected):
    assert statistic("k", {"k": sample}) == pytest.approx(expected, rel=1e-12)


def test_median_low_is_torch_median_on_even_counts():
    values = np.array([1.0, 2.0, 3.0, 4.0])
    assert statistic("k", {"k": Sample("median_low", values)}) == 2.0 == float(torch.tensor(values).median())


def test_ratio_of_two_samples_and_its_undefined_cases():
    samples = {
        "num": Sample("mean", [2.0, 4.0], prompts="a"),
        "den": Sample("mean", [1.0, 1.0, 1.0], prompts="b"),
        "r": Sample("ratio", of=("num", "den")),
    }
    assert statistic("r", samples) == 3.0
    samples["den"] = Sample("mean", [0.0, 0.0], prompts="b")
    assert math.isnan(statistic("r", samples))
    reps = replicates(samples, 20, 0)
    assert np.isnan(reps["r"]).all()


def test_ratio_of_sums_is_nan_where_nothing_is_expected():
    sample = Sample("ratio_of_sums", HEADS[:2], weights=np.zeros(2))
    assert math.isnan(statistic("k", {"k": sample}))


def test_bad_samples_are_refused():
    with pytest.raises(ValueError, match="unknown bootstrap statistic 'sd'"):
        Sample("sd", [1.0])
    with pytest.raises(ValueError, match="needs q"):
        Sample("quantile", [1.0])
    with pytest.raises(ValueError, match="one value per prompt"):
        Sample("mean", HEADS)
    with pytest.raises(ValueError, match="weights"):
        Sample("ratio_of_sums", HEADS)
    with pytest.raises(ValueError, match="of=\\(num, den\\)"):
        Sample("ratio")


def test_replicates_are_paired_across_checkpoints_and_seeded():
    # two checkpoints, same prompts: replicate r draws the same prompts at both
    step_a = {"x": Sample("mean", np.arange(10.0), prompts="natural")}
    step_b = {"x": Sample("mean", np.arange(10.0) * 2, prompts="natural")}
    a, b = replicates(step_a, 50, seed=3)["x"], replicates(step_b, 50, seed=3)["x"]
    np.testing.assert_allclose(b, 2 * a)
    assert not np.allclose(a, replicates(step_a, 50, seed=4)["x"])
    other = replicates({"x": Sample("mean", np.arange(10.0), prompts="icl_repeat")}, 50, seed=3)["x"]
    assert not np.allclose(a, other)  # another prompt set is resampled on its own


def test_order_statistics_resample_the_drawn_rows():
    sample = Sample("median_low", ONSETS, prompts="natural")
    reps = replicates({"m": sample}, 40, 0)["m"]
    index = bootstrap.draws("natural", len(ONSETS), 40, 0)
    for r in (0, 7, 39):
        drawn = ONSETS[index[r]]
        drawn = drawn[np.isfinite(drawn)]
        expected = float(torch.tensor(drawn).median()) if len(drawn) else math.nan
        assert reps[r] == expected or (math.isnan(reps[r]) and math.isnan(expected))


def test_a_95_percent_interval_covers_the_mean_about_95_percent_of_the_time():
    rng = np.random.default_rng(1)
    covered = 0
    for experiment in range(300):
        values = rng.normal(1.0, 1.0, 40)
        low, high = interval(replicates({"m": Sample("mean", values)}, 200, experiment)["m"], 0.95)
        covered += low <= 1.0 <= high
    assert 0.88 <= covered / 300 <= 0.99


def test_intervals_narrow_with_more_prompts():
    rng = np.random.default_rng(2)
    widths = []
    for n in (25, 400):
        low, high = interval(replicates({"m": Sample("mean", rng.normal(0, 1, n))}, 400, 0)["m"], 0.95)
        widths.append(high - low)
    assert widths[1] == pytest.approx(widths[0] / 4, rel=0.3)  # ~ 1 / sqrt(n)


def test_an_interval_needs_most_replicates_defined():
    values = np.r_[np.full(100, np.nan), np.arange(60.0)]  # 60 of 160 replicates defined
    assert all(math.isnan(x) for x in interval(values, 0.95))
    low, high = interval(np.r_[np.full(40, np.nan), np.arange(120.0)], 0.9)  # NaN replicates are left out
    assert (low, high) == pytest.approx(np.quantile(np.arange(120.0), [0.05, 0.95]))


def test_samples_are_saved_with_the_record_and_read_back(tmp_path):
    result = FamilyResult()
    result.stat("a/max", Sample("max_of_mean", HEADS, prompts="random_repeat"), None)
    result.part("a/num", Sample("ratio_of_sums", HEADS, prompts="natural", weights=np.ones(8)))
    result.stat("a/ratio", Sample("ratio", of=("a/num", "a/max")), None)
    assert result.scalars["a/max"] == pytest.approx(HEADS.mean(0).max(), rel=1e-12) and "a/num" not in result.scalars
    path = tmp_path / "step1.json"
    results.write_record(path, Record(Identity("m", 1)), RecordArrays.of(result))
    record = results.read_record(path)
    loaded = record.samples()
    assert set(loaded) == {"a/max", "a/num", "a/ratio"}
    assert loaded["a/ratio"].of == ("a/num", "a/max") and loaded["a/num"].prompts == "natural"
    np.testing.assert_array_equal(loaded["a/num"].weights, np.ones(8))
    for key in loaded:
        assert statistic(key, loaded) == statistic(key, result.samples)
    assert record.heads() == {} and record.raw() == {}
    assert set(encode("a/max", result.samples["a/max"])) == {"bootstrap/a/max/spec", "bootstrap/a/max/values"}
    with np.load(record.arrays_path) as stored:  # the npz keeps the samples in their own section
        assert {"samples/a/max/spec", "samples/a/max/values", "samples/a/num/weights"} <= set(stored.files)


def test_record_intervals_cover_the_reported_statistics():
    result = FamilyResult()
    result.stat("a/rate", Sample("mean", [0.0, 1.0] * 20, prompts="p"), None)
    result.value("a/other", 1.0, "a constant")
    result.part("a/gone", Sample("mean", [1.0, 2.0], prompts="p"))  # not reported: no interval
    found = result.intervals(SimpleNamespace(n=100, level=0.9, seed=0, min_prompts=5))
    ci, reasons = found.ci, found.reasons
    assert set(ci) == {"a/rate"} and reasons == {} and found.methods == {"a/rate": "wilson"}
    low, high = ci["a/rate"]
    assert low < 0.5 < high and high - low == pytest.approx(2 * 1.645 * 0.5 / math.sqrt(40), rel=0.35)


def checked(samples: dict, scalars: dict, min_prompts: int = 5):
    found = intervals.checked_intervals(samples, resample(samples, 200, 0), scalars, 0.95, min_prompts)
    return found.ci, found.reasons


def test_an_interval_is_that_of_the_stored_sample_and_none_when_its_statistic_is_nan():
    samples = {"a/rate": Sample("mean", [0.0, 1.0] * 20, prompts="p"), "a/none": Sample("nanmean", [math.nan] * 9)}
    # an old record whose stored value is not its sample's statistic: the interval is the sample's
    ci, reasons = checked(samples, {"a/rate": 0.9, "a/none": math.nan})
    assert ci["a/rate"][0] < 0.5 < ci["a/rate"][1] and reasons == {"a/none": "the statistic is NaN"}
    assert set(checked(samples, {"a/rate": 0.5})[0]) == {"a/rate"}  # only the reported keys


def test_no_interval_from_a_handful_of_prompts():
    # one looping prompt of 64: every resample that draws it repeats its value, a zero-width "interval"
    values, weights = np.zeros(64), np.zeros(64)
    values[3], weights[3] = 1.2, 2.0
    samples = {"a/enrich": Sample("ratio_of_sums", values, prompts="natural", weights=weights)}
    assert bootstrap.contributing("a/enrich", samples) == 1
    ci, reasons = checked(samples, {"a/enrich": 0.6})
    assert math.isnan(ci["a/enrich"][0]) and "only 1 prompt(s) contribute" in reasons["a/enrich"]
    # what the percentile bootstrap alone would say: [0.6, 0.6] over the 63% of resamples that draw it
    assert interval(replicates(samples, 200, 0)["a/enrich"], 0.95) == pytest.approx((0.6, 0.6))
    ci, reasons = checked(samples, {"a/enrich": 0.6}, min_prompts=1)  # the share rule catches it as well
    assert math.isnan(ci["a/enrich"][0]) and "of the resamples (< 90%)" in reasons["a/enrich"]


def test_no_interval_for_a_statistic_undefined_in_many_resamples():
    # a concentration just above its threshold: NaN in many resamples; an interval over the others would be
    # conditional on the statistic being defined (the reviewer's case: NaN value, finite interval)
    rng = np.random.default_rng(5)
    sums = rng.normal(0.0005, 0.004, (20, 2, 4))
    total = Sample("vector", sums, prompts="icl", weights=np.ones(20), function="positive_total", threshold=0.0)
    value = statistic("t", {"t": total})
    threshold = value * 0.999
    samples = {
        "a/total": Sample("vector", sums, prompts="icl", weights=np.ones(20), function="positive_total"),
        "a/neff": Sample("vector", of=("a/total",), function="neff", threshold=threshold),
    }
    neff = statistic("a/neff", samples)
    assert math.isfinite(neff)
    share = np.isfinite(replicates(samples, 200, 0)["a/neff"]).mean()
    assert 0.2 < share < 0.9
    ci, reasons = checked(samples, {"a/neff": neff, "a/total": value})
    assert math.isnan(ci["a/neff"][0]) and "of the resamples (< 90%)" in reasons["a/neff"]
    assert math.isfinite(ci["a/total"][0])  # the total itself is always defined


def test_contributing_prompts_of_each_kind_of_sample():
    samples = {
        "m": Sample("mean", [1.0, 0.0, 1.0], prompts="a"),
        "o": Sample("nanmean", ONSETS, prompts="natural"),
        "r": Sample("ratio_of_sums", HEADS, prompts="b", weights=np.r_[np.zeros(3), np.ones(5)]),
        "x": Sample("ratio", of=("m", "r")),
    }
    assert [bootstrap.contributing(k, samples) for k in ("m", "o", "r", "x", "missing")] == [3, 6, 5, 3, 0]


EFFECTS = RNG.normal(0.02, 0.05, (8, 2, 3))  # per-prompt per-head effect sums [prompt, layer, head]
TARGETS = RNG.integers(1, 6, 8).astype(float)  # target positions per prompt


def test_ratio_of_sums_reduces_columns_by_mean_or_max():
    weights = np.arange(1.0, 9.0)
    per_head = HEADS.sum(0) / weights.sum()
    assert statistic("k", {"k": Sample("ratio_of_sums", HEADS, weights=weights, reduce="max")}) == pytest.approx(
        per_head.max(), rel=1e-12
    )
    with pytest.raises(ValueError, match="unknown reduce 'median'; valid: mean, max"):
        Sample("ratio_of_sums", HEADS, weights=weights, reduce="median")


@pytest.mark.parametrize(
    ("vector", "function", "k", "expected"),
    [
        ([[0.0, 0.0], [2.0, -1.0]], "positive_total", None, 2.0),
        ([[0.0, 0.0], [2.0, -1.0]], "top_share", 1, 1.0),  # one head carries everything ...
        ([[0.0, 0.0], [2.0, -1.0]], "neff", None, 1.0),
        ([[0.0, 0.0], [2.0, -1.0]], "gini", None, 0.75),  # ... (n - 1) / n
        ([[1.0, 1.0], [1.0, 1.0]], "top_share", 3, 0.75),  # every head the same
        ([[1.0, 1.0], [1.0, 1.0]], "neff", None, 4.0),
        ([[1.0, 1.0], [1.0, 1.0]], "gini", None, 0.0),
        ([[-1.0, -1.0], [-1.0, -1.0]], "neff", None, math.nan),  # nothing helps: no distribution to measure
    ],
)
def test_vector_statistics_are_the_concentration_of_the_pooled_vector(vector, function, k, expected):
    # two prompts with 1 and 3 targets whose effect sums pool to `vector` (per target)
    pooled = np.asarray(vector)
    sample = Sample("vector", np.stack([pooled, 3 * pooled]), weights=np.array([1.0, 3.0]), function=function, k=k)
    assert statistic("k", {"k": sample}) == pytest.approx(expected, nan_ok=True)
    assert specialization.concentration_of(torch.tensor(vector), function, k) == pytest.approx(expected, nan_ok=True)


def test_a_vector_below_its_threshold_has_no_concentration_but_keeps_its_total():
    tiny = EFFECTS * 1e-3  # positive total ~1e-4 nats: noise, whatever its shape
    total = Sample("vector", tiny, weights=TARGETS, function="positive_total", threshold=0.01)
    share = Sample("vector", of=("total",), function="top_share", k=1, threshold=0.01)
    samples = {"total": total, "share": share}
    assert 0 < statistic("total", samples) < 0.01
    assert math.isnan(statistic("share", samples))
    assert np.isnan(replicates(samples, 30, 0)["share"]).all()
    with pytest.raises(ValueError, match="function 'mean'; valid: positive_total, top_share, neff, gini"):
        Sample("vector", tiny, function="mean")
    with pytest.raises(ValueError, match="top_share sample needs k"):
        Sample("vector", tiny, function="top_share")


def test_borrowed_values_are_stored_once_and_resample_with_their_source(tmp_path):
    samples = {
        "a/max": Sample("ratio_of_sums", HEADS, prompts="icl", weights=TARGETS, reduce="max"),
        "a/mean": Sample("ratio_of_sums", of=("a/max",)),
        "a/diff": Sample("difference", of=("a/max", "a/mean")),
    }
    per_head = HEADS.sum(0) / TARGETS.sum()
    assert statistic("a/mean", samples) == pytest.approx(per_head.mean(), rel=1e-12)
    assert statistic("a/diff", samples) == pytest.approx(per_head.max() - per_head.mean(), rel=1e-12)
    reps = replicates(samples, 25, 1)
    np.testing.assert_allclose(reps["a/diff"], reps["a/max"] - reps["a/mean"])
    assert (reps["a/diff"] >= 0).all()
    assert set(encode("a/mean", samples["a/mean"])) == {"bootstrap/a/mean/spec"}
    result = FamilyResult()
    for key, sample in samples.items():
        result.stat(key, sample, None)
    path = tmp_path / "step2.json"
    results.write_record(path, Record(Identity("m", 2)), RecordArrays.of(result))
    loaded = results.read_record(path).samples()
    for key in samples:
        assert statistic(key, loaded) == statistic(key, samples)
    del loaded["a/max"]  # a borrower whose source is gone has no statistic
    assert math.isnan(statistic("a/mean", loaded))


def test_compare_two_head_vectors_from_independent_prompt_sets():
    natural = EFFECTS[::-1] + RNG.normal(0, 0.01, EFFECTS.shape)
    samples = {
        "icl": Sample("vector", EFFECTS, prompts="icl", weights=TARGETS, function="positive_total", threshold=0.01),
        "nat": Sample("vector", natural, prompts="nat", weights=TARGETS, function="positive_total", threshold=0.01),
        "cos": Sample("compare", of=("icl", "nat"), function="cosine"),
        "jac": Sample("compare", of=("icl", "nat"), function="jaccard", k=2),
        "rho": Sample("compare", of=("icl", "nat"), function="spearman"),
    }
    a = torch.from_numpy(EFFECTS.sum(0) / TARGETS.sum())
    b = torch.from_numpy(natural.sum(0) / TARGETS.sum())
    assert statistic("cos", samples) == pytest.approx(specialization.cosine(a, b), rel=1e-10)
    expected_jaccard = specialization.jaccard(specialization.top_heads(a, 2), specialization.top_heads(b, 2))
    assert statistic("jac", samples) == pytest.approx(expected_jaccard)
    assert statistic("rho", samples) == pytest.approx(specialization.spearman(a, b), rel=1e-10)
    reps = replicates(samples, 40, 0)
    assert np.isfinite(reps["cos"]).all() and len(np.unique(reps["cos"])) > 10
    # a side below its threshold: no head set to compare, at every replicate
    samples["nat"] = Sample(
        "vector", natural * 1e-4, prompts="nat", weights=TARGETS, function="positive_total", threshold=0.01
    )
    assert math.isnan(statistic("cos", samples))
    assert np.isnan(replicates(samples, 40, 0)["jac"]).all()
    with pytest.raises(ValueError, match="compare sample has function None; valid: cosine, jaccard, spearman"):
        Sample("compare", of=("icl", "nat"))


def test_rates_get_wilson_intervals_that_do_not_collapse_at_zero():
    none = {"a/rate": Sample("mean", np.zeros(64), prompts="p")}
    assert interval(replicates(none, 200, 0)["a/rate"], 0.95) == (0.0, 0.0)  # the percentile bootstrap's claim
    ci, reasons = checked(none, {"a/rate": 0.0})
    assert reasons == {} and ci["a/rate"][0] == 0.0 and ci["a/rate"][1] == pytest.approx(0.0570, abs=5e-4)
    half = {"a/rate": Sample("mean", [0.0, 1.0] * 20, prompts="p")}
    wilson, _ = checked(half, {"a/rate": 0.5})
    percentile = interval(replicates(half, 2000, 0)["a/rate"], 0.95)
    assert wilson["a/rate"] == pytest.approx(list(percentile), abs=0.03)  # the two agree away from the edges
    assert not bootstrap.is_rate(Sample("mean", [0.0, 0.5, 1.0]))  # a mean of shares is not a binomial rate


def test_columns_are_the_per_head_statistic_before_the_reduction():
    weights = np.arange(1.0, 9.0)
    per_head = HEADS.sum(0) / weights.sum()
    np.testing.assert_allclose(
        bootstrap.columns(Sample("ratio_of_sums", HEADS, weights=weights, reduce="max")), per_head
    )
    np.testing.assert_allclose(bootstrap.columns(Sample("max_of_mean", HEADS)), HEADS.mean(0))
    vector = Sample("vector", EFFECTS, weights=TARGETS, function="neff")
    np.testing.assert_allclose(bootstrap.columns(vector), EFFECTS.sum(0) / TARGETS.sum())
    assert bootstrap.columns(Sample("max_of_mean", HEADS)).max() == pytest.approx(
        statistic("k", {"k": Sample("max_of_mean", HEADS)})
    )
    with pytest.raises(ValueError, match="a mean sample without values has no per-column statistic"):
        bootstrap.columns(Sample("mean", of=("x",)))


def test_statistic_evaluates_only_what_its_key_rests_on():
    samples = {
        "a": Sample("mean", [1.0, 3.0], prompts="p"),
        "b": Sample("mean", [2.0, 2.0], prompts="p"),
        "r": Sample("ratio", of=("a", "b")),
        "slow": Sample("compare", of=("missing", "a"), function="cosine"),  # would fail if evaluated
    }
    assert statistic("r", samples) == 1.0
    assert math.isnan(statistic("nothing", samples))


def test_spearman_of_many_rows_at_once_is_the_one_pair_spearman_with_ties_averaged():
    rng = np.random.default_rng(5)
    a = rng.integers(0, 3, (50, 8)).astype(np.float64)  # many ties
    b = rng.normal(size=(50, 8))
    b[0] = 1.0  # constant ranks: NaN
    one_at_a_time = [specialization.spearman(torch.from_numpy(x), torch.from_numpy(y)) for x, y in zip(a, b)]
    np.testing.assert_allclose(specialization.spearman_rows(a, b), one_at_a_time, equal_nan=True)
    assert math.isnan(specialization.spearman_rows(a, b)[0])
    np.testing.assert_allclose(specialization.average_ranks(np.array([[3.0, 1.0, 3.0, 2.0]])), [[3.5, 1, 3.5, 2]])


@pytest.mark.parametrize(("n", "q"), [(64, 0.5), (64, 0.9), (200, 0.1)])
def test_a_quantile_interval_lies_between_order_statistics_of_binomial_coverage(n, q):
    values = np.arange(1.0, n + 1)  # x_(i) = i
    low, high = intervals.order_statistic(values, q, 0.95)
    pmf = [math.comb(n, i) * q**i * (1 - q) ** (n - i) for i in range(n + 1)]
    below, above = sum(pmf[: int(low)]), sum(pmf[int(high) :])  # P(B < l), P(B >= u): the true quantile outside
    assert below <= 0.025 and above <= 0.025  # so P(x_(l) <= quantile <= x_(u)) >= 0.95
    assert below + pmf[int(low)] > 0.025 and above + pmf[int(high) - 1] > 0.025  # and no wider than that


def test_sixteen_prompts_cannot_bound_a_90th_percentile_and_the_record_says_so():
    assert intervals.order_statistic(np.arange(16.0), 0.9, 0.95)[1] == math.inf
    samples = {"p90": Sample("quantile", np.arange(16.0), prompts="p", q=0.9)}
    ci, reasons = checked(samples, {"p90": 14.5})
    assert all(math.isnan(x) for x in ci["p90"]) and "too few prompts to bound" in reasons["p90"]

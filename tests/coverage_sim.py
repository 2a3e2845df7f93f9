"""Coverage of the bootstrap intervals, measured by simulation through the project's own code (issue 23).

An experiment draws n prompts from a population whose statistic is known, builds the samples a family builds
(`Sample`s of the same kinds and shapes: `icl_heads.effect_samples` for ablation vectors), and asks the project
for the interval: `bootstrap.resample` + `intervals.checked_intervals` (one seed per experiment), or for onsets
`bootstrap.replicates` over the micro suite's 22 checkpoints (the same prompt draws at every one) +
`onsets.onset_intervals`. Coverage = the share of experiments whose interval holds the truth, among those
that show one. Populations:
- synthetic ones with a known truth (normal and lognormal values, rates, heads with ties, effect vectors with
  heads at 0, two equal head vectors, trajectories with a known onset);
- record populations (`record/...`): the samples of real micro records (tests/data/coverage_populations.npz,
  `write_populations`); an experiment draws n of a record's prompts with replacement (the same draw for every
  sample of a prompt set, as the families pair them), and the truth is the statistic of the record's sample.
Rows marked `stress` (tails heavier than any record's, ties and zero heads where the statistic bends) are
reported but not held to the target: they show where a method stops working.

`python tests/coverage_sim.py [--quick]` runs the full grid (before: every interval a percentile interval of 200
resamples, as before issue 23; after: `intervals.METHODS` with the configured resamples) and writes the table
to outputs/coverage.md (README "Interval coverage" quotes it); `make test-full` runs it in tests/test_coverage.py.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

from ckptstudy import results
from ckptstudy.metrics.icl_heads import effect_samples
from ckptstudy.stats import bootstrap, intervals, onsets
from ckptstudy.stats.bootstrap import Sample
from ckptstudy.stats.specialization import concentration_of

REPO = Path(__file__).resolve().parents[1]
POPULATIONS = Path(__file__).parent / "data" / "coverage_populations.npz"
REPORT = yaml.safe_load((REPO / "conf" / "config.yaml").read_text())["report"]  # onset rule, report.bootstrap
CONFIG = REPORT["bootstrap"]
MICRO_STEPS = [0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512] + list(range(600, 1700, 100))
OUT = REPO / "outputs" / "coverage.md"  # the full grid's table (README "Interval coverage")
KEY = "x"  # the key whose interval a scenario measures


@dataclass(frozen=True)
class Settings:
    """How intervals are made: resamples per interval and the kind -> method table (None = `METHODS`)."""

    resamples: int
    methods: dict | None = None
    level: float = 0.95
    min_prompts: int = 5
    label: str = ""


BEFORE = Settings(
    200,
    {kind: "wilson" if kind == "rate" else "percentile" for kind in intervals.METHODS},
    label="before: percentile, 200 resamples",
)
AFTER = Settings(int(CONFIG["n"]), None, label=f"after: intervals.METHODS, {int(CONFIG['n'])} resamples")


@dataclass(frozen=True)
class Scenario:
    """One population: `draw(rng, n)` builds the samples of one experiment (the measured key is `KEY`),
    `truth` is the population's statistic. `onset`: the samples are one per checkpoint (`KEY@<step>`)."""

    kind: str
    name: str
    draw: Callable[[np.random.Generator, int], dict[str, Sample]]
    truth: float
    stress: bool = False
    onset: bool = False


@dataclass
class Coverage:
    """What one (scenario, n, settings) cell measured."""

    experiments: int = 0
    shown: int = 0
    covered: int = 0
    width: float = 0.0  # summed over shown intervals
    methods: set = field(default_factory=set)
    reasons: set = field(default_factory=set)
    seconds: float = 0.0

    @property
    def rate(self) -> float:
        return self.covered / self.shown if self.shown else math.nan

    @property
    def mean_width(self) -> float:
        return self.width / self.shown if self.shown else math.nan

    def noise(self, target: float) -> float:
        """The binomial standard deviation of the coverage of `shown` experiments at `target`."""
        return math.sqrt(target * (1 - target) / max(self.shown, 1))


# --- synthetic populations -----------------------------------------------------------------------------------


def _one(statistic: str, **fields) -> Callable[[np.ndarray], dict[str, Sample]]:
    return lambda values: {KEY: Sample(statistic, values, prompts="p", **fields)}


def values_of(generate: Callable, build: Callable) -> Callable[[np.random.Generator, int], dict[str, Sample]]:
    return lambda rng, n: build(generate(rng, n))


def heads(means: np.ndarray, sd: float = 1.0, skew: bool = False) -> Callable:
    """Per-prompt per-head scores [n, 2, 4] with head means `means` (8) and noise of sd `sd`."""
    means = np.asarray(means, dtype=np.float64).reshape(2, 4)

    def generate(rng, n):
        if skew:  # centred lognormal noise of the same sd
            noise = (rng.lognormal(0.0, 1.0, (n, 2, 4)) - math.exp(0.5)) / math.sqrt((math.e - 1) * math.e)
        else:
            noise = rng.standard_normal((n, 2, 4))
        return means + sd * noise

    return generate


def effects(means: np.ndarray, sd: float) -> Callable:
    """The samples `icl_heads.effect_samples` builds from per-prompt effect sums over 1..7 target positions
    with per-target head effects `means` (8) and noise sd `sd` per target: {KEY_total, KEY_top1_share, ...}."""
    means = np.asarray(means, dtype=np.float64).reshape(2, 4)

    def draw(rng, n):
        targets = rng.integers(1, 8, n).astype(np.float64)
        sums = targets[:, None, None] * means + np.sqrt(targets)[:, None, None] * sd * rng.standard_normal((n, 2, 4))
        return effect_samples(KEY, sums, targets, "p", 3, 0.0)

    return draw


def vector_truth(means: np.ndarray, function: str, k: int | None = None) -> float:
    return concentration_of(np.asarray(means, dtype=np.float64), function, k)


def renamed(draw: Callable, key: str) -> Callable:
    """`draw` with sample `key` measured (renamed to KEY, the others kept)."""

    def out(rng, n):
        samples = draw(rng, n)
        samples = {**samples, KEY: samples.pop(key)}
        return {k: _rename_of(s, key) for k, s in samples.items()}

    return out


def _rename_of(sample: Sample, key: str) -> Sample:
    if sample.of and key in sample.of:
        sample.of = tuple(KEY if k == key else k for k in sample.of)
    return sample


def compare(first: np.ndarray, second: np.ndarray, sd: float, function: str) -> Callable:
    """Two effect vectors on independent prompt sets and their `function` (cosine, jaccard top-3)."""

    def draw(rng, n):
        sides = {}
        for name, means in (("a", first), ("b", second)):
            targets = rng.integers(1, 8, n).astype(np.float64)
            noise = rng.standard_normal((n, 2, 4))
            sums = targets[:, None, None] * np.reshape(means, (2, 4)) + np.sqrt(targets)[:, None, None] * sd * noise
            sides[name] = Sample("vector", sums, prompts=name, weights=targets, function="positive_total")
        k = 3 if function == "jaccard" else None
        return {**sides, KEY: Sample("compare", of=("a", "b"), function=function, k=k)}

    return draw


def onset_population(center: float, width: float, noise: float) -> tuple[Callable, float]:
    """Per-prompt trajectories over the micro steps: f(s) (1 + u_i) + e_is, f a logistic rise in log(1 + s)
    centred at `center`, u_i ~ N(0, 0.3) (prompts differ in size of the change), e ~ N(0, noise); the truth is
    the onset of f (mean over prompts) by the configured rule."""
    steps = np.asarray(MICRO_STEPS, dtype=np.float64)
    curve = 1 / (1 + np.exp(-(np.log1p(steps) - np.log1p(center)) / width))
    fraction, persist = float(REPORT["onset_fraction"]), int(REPORT["onset_persist"])

    def draw(rng, n):
        size = 1 + 0.3 * rng.standard_normal(n)
        values = curve[None, :] * size[:, None] + noise * rng.standard_normal((n, len(steps)))
        return {f"{KEY}@{s}": Sample("mean", values[:, i], prompts="p") for i, s in enumerate(MICRO_STEPS)}

    return draw, onsets.onset_step(steps, curve, fraction, persist)


# --- record populations ----------------------------------------------------------------------------------------

RECORD_KEYS = {  # step -> keys whose samples (and what they rest on) tests/data/coverage_populations.npz keeps
    4: [
        "icl/induction_max",
        "sink/score_max_excess",
        "sink/first_norm_ratio_max_excess",
        "perturb/induction_ratio_max_excess",
        "rep/onset_median",
    ],
    128: [
        "icl/icl_copy_accuracy",
        "lowinfo/enrich_newline_natural_nosink",
        "sink/repeat_cos_max_excess",
        "icl/natural_ablation_total",
    ],
    1000: [
        "icl/induction_max",
        "icl/induction_top3_mean",
        "icl/repeat_nll_gain",
        "perturb/induction_excess_max",
        "perturb/induction_ratio_max_excess",
        "lowinfo/entropy_diff_natural_nosink",
        "lowinfo/enrich_newline_natural_over_icl_nosink",
        "rep/onset_mean",
        "rep/onset_median",
        "icl/ablation_total",
        "icl/ablation_top3_share",
        "icl/ablation_neff",
        "icl/ablation_gini",
    ],
    1600: [
        "icl/icl_copy_accuracy",
        "icl/natural_ablation_total",
        "icl/natural_ablation_top1_share",
        "icl/natural_ablation_neff",
        "icl/natural_ablation_gini",
        "icl/icl_natural_cosine",
    ],
}


def write_populations(records: Path, out: Path = POPULATIONS) -> None:
    """Keep the samples of `RECORD_KEYS` (and every sample they rest on) of the micro records in `records`
    (a study's records/micro directory) as one npz: `step<N>/bootstrap/<key>/...`."""
    arrays = {}
    for step, keys in RECORD_KEYS.items():
        samples = results.read_record(records / f"step{step}.json").samples()
        keep = {k for key in keys for k in bootstrap._closure(key, samples)}
        for key in sorted(keep):
            arrays.update({f"step{step}/{name}": a for name, a in bootstrap.encode(key, samples[key]).items()})
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out, **arrays)


def record_samples(step: int) -> dict[str, Sample]:
    """The samples kept of the micro record at `step` (`write_populations`)."""
    with np.load(POPULATIONS) as stored:
        prefix = f"step{step}/"
        return bootstrap.decode({k[len(prefix) :]: stored[k] for k in stored.files if k.startswith(prefix)})


def from_record(step: int, key: str) -> tuple[Callable, float]:
    """Experiments that draw n prompts (with replacement) of each prompt set of a record's samples behind `key`
    (one draw per prompt set, shared by its samples); the truth is the statistic of the record's own sample."""
    population = bootstrap.resolved(record_samples(step))
    closure = bootstrap._closure(key, population)
    population = {k: population[k] for k in closure}
    truth = bootstrap.statistic(key, population)

    def draw(rng, n):
        picked = {}
        out = {}
        for name, sample in population.items():
            if sample.statistic in bootstrap.COMPOSITES:
                out[name] = Sample(**{**sample.spec(), "of": sample.of})
                continue
            prompts = sample.prompts or name
            if (prompts, sample.n) not in picked:
                picked[(prompts, sample.n)] = rng.integers(0, sample.n, n)
            index = picked[(prompts, sample.n)]
            weights = None if sample.weights is None else sample.weights[index]
            fields = {**sample.spec(), "of": None}
            out[name] = Sample(values=sample.values[index], weights=weights, **fields)
        out = {(KEY if k == key else k): _rename_of(s, key) for k, s in out.items()}
        return out

    return draw, truth


def quantile_of_record(step: int, key: str, q: float) -> tuple[Callable, float]:
    """Experiments that draw n of the values of a record's sample `key` with replacement and take their `q`
    quantile (`Sample("quantile")`, as repetition's onset_p10 / _p90); the truth is that of the record's values."""
    values = bootstrap.resolved(record_samples(step))[key].values
    truth = bootstrap.statistic(KEY, {KEY: Sample("quantile", values, prompts="p", q=q)})
    return (lambda rng, n: {KEY: Sample("quantile", values[rng.integers(0, len(values), n)], prompts="p", q=q)}), truth


# --- the scenarios ----------------------------------------------------------------------------------------------


def scenarios() -> list[Scenario]:
    """Every population of the harness, by kind."""
    out = []

    def add(kind, name, draw, truth, stress=False, onset=False):
        out.append(Scenario(kind, name, draw, float(truth), stress, onset))

    mean = _one("mean")
    add("mean", "normal (reference)", values_of(lambda r, n: r.normal(1.0, 1.0, n), mean), 1.0)
    add("mean", "lognormal sigma=0.5", values_of(lambda r, n: r.lognormal(0, 0.5, n), mean), math.exp(0.125))
    add("mean", "lognormal sigma=1", values_of(lambda r, n: r.lognormal(0, 1.0, n), mean), math.exp(0.5), True)
    add("mean", "lognormal sigma=1.5", values_of(lambda r, n: r.lognormal(0, 1.5, n), mean), math.exp(1.125), True)
    for step in (128, 1600):
        add("mean", f"record step {step} icl_copy_accuracy", *from_record(step, "icl/icl_copy_accuracy"))
    add("mean", "record step 1000 repeat_nll_gain", *from_record(1000, "icl/repeat_nll_gain"))
    for p in (0.02, 0.3):
        add("rate", f"rate p={p}", values_of(lambda r, n, p=p: (r.random(n) < p).astype(float), mean), p)
    add("nanmean", "record step 1000 rep/onset_mean", *from_record(1000, "rep/onset_mean"))
    for step in (4, 1000):
        add("median_low", f"record step {step} rep/onset_median", *from_record(step, "rep/onset_median"))
    for q in (0.1, 0.9):  # rep/onset_p10, _p90: the same natural onsets as the median
        add("quantile", f"record step 1000 rep/onset q={q}", *quantile_of_record(1000, "rep/onset_median", q))

    def enrichment(rng, n):
        expected = rng.gamma(2.0, 1.0, n)
        return {KEY: Sample("ratio_of_sums", expected * rng.lognormal(0, 0.75, n), prompts="p", weights=expected)}

    add("ratio_of_sums/mean", "mass / expected mass, lognormal 0.75", enrichment, math.exp(0.75**2 / 2))
    # stress: 2 of the record's 64 prompts carry a quarter of the expected mass; an experiment that draws neither
    # (13% of them at n=64, 60% at n=16) cannot know about them, whatever its interval method
    enrich = from_record(128, "lowinfo/enrich_newline_natural_nosink")
    add("ratio_of_sums/mean", "record step 128 enrich_newline_natural", *enrich, stress=True)
    for name, means in (
        ("2 heads tied", [1, 1, 0.5, 0.5, 0.2, 0.2, 0, 0]),
        ("4 heads tied", [1, 1, 1, 1, 0.2, 0.2, 0, 0]),
        ("8 heads tied", [1] * 8),
        ("a clear winner", [2, 1, 0.5, 0.5, 0.2, 0.2, 0, 0]),
        ("winner ahead by 0.3 sd", [1.3, 1, 0.5, 0.5, 0.2, 0.2, 0, 0]),
    ):
        add("max_of_mean", name, values_of(heads(means), _one("max_of_mean")), max(means))
    add(
        "max_of_mean",
        "4 heads tied, skewed noise",
        values_of(heads([1, 1, 1, 1, 0.2, 0.2, 0, 0], skew=True), _one("max_of_mean")),
        1.0,
    )
    for step in (4, 1000):
        add("max_of_mean", f"record step {step} induction_max", *from_record(step, "icl/induction_max"))
    add(
        "top_mean",
        "top-3 mean, 4 heads tied",
        values_of(heads([1, 1, 1, 1, 0.2, 0.2, 0, 0]), _one("top_mean", k=3)),
        1.0,
    )
    add("top_mean", "record step 1000 induction_top3_mean", *from_record(1000, "icl/induction_top3_mean"))
    add(
        "ratio_of_sums/max", "record step 1000 induction_excess_max", *from_record(1000, "perturb/induction_excess_max")
    )

    def paired_difference(rng, n):
        base = rng.lognormal(0, 0.5, n)
        return {
            "a": Sample("mean", base + rng.normal(0.2, 0.5, n), prompts="p"),
            "b": Sample("mean", base, prompts="p"),
            KEY: Sample("difference", of=("a", "b")),
        }

    add("difference", "paired means (0.2)", paired_difference, 0.2)
    # stress, for the same reason: 35 of the 64 prompts have no content token and 2 carry 44% of the content mass
    entropy = from_record(1000, "lowinfo/entropy_diff_natural_nosink")
    add("difference", "record step 1000 entropy_diff_natural", *entropy, stress=True)
    add(
        "ratio",
        "record step 1000 newline natural_over_icl",
        *from_record(1000, "lowinfo/enrich_newline_natural_over_icl_nosink"),
    )

    def max_excess(value_means, null_means):
        def draw(rng, n):
            return {
                "a": Sample("max_of_mean", heads(value_means)(rng, n), prompts="p"),
                "b": Sample("max_of_mean", heads(null_means)(rng, n), prompts="p"),
                KEY: Sample("difference", of=("a", "b")),
            }

        return draw

    add(
        "difference/max", "clear winner minus a tied null", max_excess([2, 1, 0.5, 0.5, 0.2, 0.2, 0, 0], [0.5] * 8), 1.5
    )
    add("difference/max", "tied minus tied (no effect)", max_excess([0.5] * 8, [0.5] * 8), 0.0)
    for step, key in ((4, "sink/score_max_excess"), (128, "sink/repeat_cos_max_excess")):
        add("difference/max", f"record step {step} {key.split('/')[1]}", *from_record(step, key))
    for step in (4, 1000):
        add(
            "ratio/max",
            f"record step {step} induction_ratio_max_excess",
            *from_record(step, "perturb/induction_ratio_max_excess"),
        )
    add("ratio/max", "record step 4 first_norm_ratio_max_excess", *from_record(4, "sink/first_norm_ratio_max_excess"))

    issue = [0.5, 0.2, 0.1, 0.1, 0, 0, -0.05, 0]  # the issue's population: top-1 share 0.556, heads at 0
    weak = [0.3] + [0.05] * 7
    for function, suffix, k in (
        ("positive_total", "total", None),
        ("top_share", "top1_share", 1),
        ("neff", "neff", None),
        ("gini", "gini", None),
    ):
        kind = f"vector/{function}"
        add(
            kind,
            "heads at 0 (the issue's)",
            renamed(effects(issue, 0.6), f"{KEY}_{suffix}"),
            vector_truth(issue, function, k),
            True,
        )
        add(kind, "7 weak heads", renamed(effects(weak, 0.6), f"{KEY}_{suffix}"), vector_truth(weak, function, k), True)
    for step, side in ((1000, "ablation"), (1600, "natural_ablation")):
        for suffix in ("total", "top3_share" if side == "ablation" else "top1_share", "neff", "gini"):
            key = f"icl/{side}_{suffix}"
            function = {"total": "positive_total", "neff": "neff", "gini": "gini"}.get(suffix, "top_share")
            add(f"vector/{function}", f"record step {step} {side}_{suffix}", *from_record(step, key))
    add(
        "vector/positive_total",
        "record step 128 natural_ablation_total",
        *from_record(128, "icl/natural_ablation_total"),
    )
    same = [0.5, 0.2, 0.1, 0.1, 0.05, 0.05, 0, 0]
    other = [0.1, 0.5, 0.1, 0.0, 0.3, 0.05, 0, 0.1]
    cosine = float(np.dot(same, other) / np.linalg.norm(same) / np.linalg.norm(other))
    add("compare/cosine", "equal head vectors (1)", compare(same, same, 0.6, "cosine"), 1.0)
    add("compare/cosine", f"different head vectors ({cosine:.2f})", compare(same, other, 0.6, "cosine"), cosine)
    add("compare/cosine", "record step 1600 icl_natural_cosine", *from_record(1600, "icl/icl_natural_cosine"))
    add("compare/jaccard", "equal head vectors (1)", compare(same, same, 0.6, "jaccard"), 1.0)
    for center, width in ((100, 0.5), (900, 0.1)):
        draw, truth = onset_population(center, width, 0.5)
        add("onset", f"rise near step {center}, noise 0.5", draw, truth, onset=True)
    return out


# --- measuring ------------------------------------------------------------------------------------------------


def measure(scenario: Scenario, n: int, experiments: int, settings: Settings, seed: int = 0) -> Coverage:
    """Coverage of `scenario` at n prompts over `experiments` seeded experiments, intervals by `settings`."""
    started = time.perf_counter()
    out = Coverage()
    methods = dict(intervals.METHODS if settings.methods is None else settings.methods)
    for experiment in range(experiments):
        rng = np.random.default_rng([seed, n, experiment])
        samples = scenario.draw(rng, n)
        if scenario.onset:
            low, high, method, why = _onset_interval(samples, settings, experiment, methods["onset"])
        else:
            reps = bootstrap.resample(samples, settings.resamples, experiment)
            found = intervals.checked_intervals(samples, reps, {KEY}, settings.level, settings.min_prompts, methods)
            (low, high), method, why = found.ci[KEY], found.methods.get(KEY), found.reasons.get(KEY)
        out.experiments += 1
        if method is None:
            out.reasons.add(why)
            continue
        out.shown += 1
        out.covered += bool(low <= scenario.truth <= high)
        out.width += high - low
        out.methods.add(method)
    out.seconds = time.perf_counter() - started
    return out


def _onset_interval(samples: dict, settings: Settings, seed: int, method: str):
    reps = bootstrap.replicates(samples, settings.resamples, seed)  # one prompt set: the same draws at every step
    full = bootstrap.full_statistics(samples)
    fraction, persist = float(REPORT["onset_fraction"]), int(REPORT["onset_persist"])
    found = onsets.onset_intervals(
        {"m": MICRO_STEPS},
        {("m", s): {KEY: reps[f"{KEY}@{s}"]} for s in MICRO_STEPS},
        {("m", s): {KEY: full[f"{KEY}@{s}"]} for s in MICRO_STEPS},
        [KEY],
        fraction,
        persist,
        settings.level,
        method,
    )[("m", KEY)]
    low, high = found["ci"]
    if not (math.isfinite(low) and math.isfinite(high)):
        return low, high, None, "no onset interval"
    return low, high, method, None


def after_settings(kind: str) -> Settings:
    """AFTER, with a withheld kind measured by the percentile interval it would otherwise get."""
    if intervals.METHODS[kind] != "withheld":
        return AFTER
    return Settings(AFTER.resamples, {**intervals.METHODS, kind: "percentile"}, label=AFTER.label)


# --- the cost ------------------------------------------------------------------------------------------------


def cost(records: Path, steps=(0, 512, 1600), rounds: int = 3) -> list[str]:
    """Seconds to resample and interval every statistic of real micro records (a study's records/micro), BEFORE
    and AFTER side by side in one process, alternating, best of `rounds`: one line per step."""
    lines = []
    for step in steps:
        samples = results.read_record(records / f"step{step}.json").samples()
        reported = set(bootstrap.full_statistics(samples))
        best = {}
        for _ in range(rounds):
            for settings in (BEFORE, AFTER):
                started = time.perf_counter()
                reps = bootstrap.resample(samples, settings.resamples, 0)
                found = intervals.checked_intervals(samples, reps, reported, settings.level, 5, settings.methods)
                seconds = time.perf_counter() - started
                best[settings.label] = min(best.get(settings.label, math.inf), seconds)
        shown = sum(math.isfinite(v[0]) for v in found.ci.values())
        before, after = best[BEFORE.label], best[AFTER.label]
        lines.append(
            f"step {step}: {len(found.ci)} intervals ({shown} shown after): before {before:.3f} s, after {after:.3f} s "
            f"({after / before:.1f}x)"
        )
    return lines


# --- the table ----------------------------------------------------------------------------------------------------


def cell(found: Coverage) -> str:
    if not found.shown:
        return "none shown"
    shown = "" if found.shown == found.experiments else f", {found.shown / found.experiments:.0%} shown"
    return f"{found.rate:.3f} ({found.mean_width:.3g}{shown})"


def grid(experiments: int, sizes=(16, 64), only: Callable[[Scenario], bool] = lambda s: True) -> list[dict]:
    """Every scenario at every n, before and after: rows for `table`."""
    rows = []
    for scenario in scenarios():
        if not only(scenario):
            continue
        for n in sizes:
            before = measure(scenario, n, experiments, BEFORE)
            after = measure(scenario, n, experiments, after_settings(scenario.kind))
            rows.append({"scenario": scenario, "n": n, "before": before, "after": after})
            print(f"{scenario.kind:22s} {scenario.name:45s} n={n:3d} {cell(before):28s} -> {cell(after)}", flush=True)
    return rows


def verdict(scenario: Scenario, n: int, after: Coverage) -> str:
    """pass / LOW (below the target by more than 2 binomial sd) / withheld / stress, for the README table."""
    method = intervals.METHODS[scenario.kind]
    if method == "withheld" or not after.shown:
        return "withheld"
    if scenario.stress:
        return "stress"
    target = intervals.TARGET[n]
    return "pass" if after.rate >= target - 2 * after.noise(target) else "LOW"


def _sentence(label: str) -> str:
    return label[:1].upper() + label[1:]


def table(rows: list[dict], experiments: int) -> str:
    """The README table: coverage (mean width) per kind and population, before and after."""
    lines = [
        f"Coverage of 95% intervals ({experiments} experiments per cell; mean width in parentheses; targets "
        f"{intervals.TARGET[16]} at n=16 and {intervals.TARGET[64]} at n=64, met when within 2 binomial sd). "
        f"{_sentence(BEFORE.label)}. {_sentence(AFTER.label)}; a withheld kind shows the percentile interval it "
        "would get; 'none shown': every interval unbounded or left out (the verdict says withheld).",
        "",
        "| kind | population | n | before | after | method | verdict |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        scenario, n = row["scenario"], row["n"]
        method = intervals.METHODS[scenario.kind]
        lines.append(
            f"| {scenario.kind} | {scenario.name}{' (stress)' if scenario.stress else ''} | {n} | "
            f"{cell(row['before'])} | {cell(row['after'])} | {method} | {verdict(scenario, n, row['after'])} |"
        )
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiments", type=int, default=400)
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--kind", default=None, help="only scenarios of this kind")
    parser.add_argument("--populations", type=Path, help="rewrite the record populations from this records/micro")
    parser.add_argument("--cost", type=Path, help="time the intervals of the micro records in this records/micro")
    args = parser.parse_args(argv)
    if args.populations:
        write_populations(args.populations)
        return
    if args.cost:
        print("\n".join(cost(args.cost)))
        return
    only = (lambda s: s.kind == args.kind) if args.kind else (lambda s: True)
    rows = grid(args.experiments, only=only)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(table(rows, args.experiments))
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()

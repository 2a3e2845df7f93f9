"""Training runs side by side: for a model swept over training seeds (`model.seed`), each onset metric's onset in
every run, its prompt interval, and how far the runs' onsets lie apart (the spread across seeds), next to the
prompt intervals: an onset that moves between seeds by more than its prompt interval is a property of one
training run, not of the model. Runs are the table's `model` values; `base_model` and `seed` say which are seeds of
one model."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ckptstudy.report.onset_results import Onsets


@dataclass
class SeedOnsets:
    """One metric's onset in each training run of one model: `seeds`, `runs` (the run names), `steps` (NaN = no held
    change) and `intervals` ([low, high] per run; NaN when the run has none)."""

    base_model: str
    metric: str
    seeds: list[int]
    runs: list[str]
    steps: list[float]
    intervals: list[list[float]]

    @property
    def with_onset(self) -> int:
        """How many runs have an onset."""
        return int(np.isfinite(self.steps).sum())

    @property
    def spread(self) -> float:
        """max - min of the runs' onsets (steps); NaN with fewer than two runs that have one."""
        found = [s for s in self.steps if math.isfinite(s)]
        return max(found) - min(found) if len(found) >= 2 else math.nan

    @property
    def interval_width(self) -> float:
        """The median width of the runs' prompt intervals (steps); NaN when no run has one."""
        widths = [high - low for low, high in self.intervals if math.isfinite(low) and math.isfinite(high)]
        return float(np.median(widths)) if widths else math.nan

    @property
    def intervals_overlap(self) -> bool | None:
        """Whether one step lies in every run's prompt interval (None unless every run has an onset and interval):
        False means the runs' onsets differ by more than the choice of prompts explains."""
        if not self.intervals or any(not (math.isfinite(lo) and math.isfinite(hi)) for lo, hi in self.intervals):
            return None
        return max(lo for lo, _ in self.intervals) <= min(hi for _, hi in self.intervals)


def seeded_models(table: pd.DataFrame) -> dict[str, list[tuple[int, str]]]:
    """{base model: [(seed, run), ...] sorted by seed} for every model with two or more training runs in the table."""
    if table.empty or "seed" not in table or "base_model" not in table:
        return {}
    runs = table[["base_model", "seed", "model"]].dropna(subset=["seed"]).drop_duplicates()
    out = {}
    for base, part in runs.groupby("base_model"):
        pairs = sorted((int(float(seed)), str(run)) for seed, run in zip(part["seed"], part["model"]))
        if len({seed for seed, _ in pairs}) >= 2:
            out[str(base)] = pairs
    return out


def seed_onsets(table: pd.DataFrame, found: Onsets) -> list[SeedOnsets]:
    """Per model with several training runs and per onset metric: the onsets and intervals of every run."""
    out = []
    for base, pairs in sorted(seeded_models(table).items()):
        for metric in found.metrics:
            steps, intervals = [], []
            for _seed, run in pairs:
                steps.append(float(found.steps.get((run, metric), math.nan)))
                ci = (found.intervals.get((run, metric)) or {}).get("ci", [math.nan, math.nan])
                intervals.append([float(x) if x is not None else math.nan for x in ci])
            out.append(SeedOnsets(base, metric, [s for s, _ in pairs], [r for _, r in pairs], steps, intervals))
    return out


def describe(entry: SeedOnsets) -> str:
    """One line: each seed's onset and interval, the spread and the median interval width, whether they overlap."""

    def one(seed: int, step: float, ci: list[float]) -> str:
        if not math.isfinite(step):
            return f"seed {seed} no change"
        low, high = ci
        shown = f" ({low:.0f}-{high:.0f})" if math.isfinite(low) and math.isfinite(high) else ""
        return f"seed {seed} ~{step:.0f}{shown}"

    runs = ", ".join(one(s, v, ci) for s, v, ci in zip(entry.seeds, entry.steps, entry.intervals))
    spread = "no spread (fewer than 2 onsets)" if math.isnan(entry.spread) else f"spread {entry.spread:.0f} steps"
    width = "" if math.isnan(entry.interval_width) else f" vs prompt intervals {entry.interval_width:.0f} wide"
    overlap = {True: "; the intervals overlap", False: "; the intervals do not overlap", None: ""}[
        entry.intervals_overlap
    ]
    return f"seeds {entry.base_model} {entry.metric}: {runs}; {spread}{width}{overlap}"


def as_json(entries: list[SeedOnsets]) -> dict:
    """{`<metric>@<base model>`: seeds, runs, onsets, intervals, spread, median interval width, overlap}; NaN: null."""

    def number(x):
        return None if x is None or not math.isfinite(x) else float(x)

    return {
        f"{e.metric}@{e.base_model}": {
            "seeds": e.seeds,
            "runs": e.runs,
            "steps": [number(s) for s in e.steps],
            "ci": [[number(x) for x in ci] for ci in e.intervals],
            "spread": number(e.spread),
            "median_ci_width": number(e.interval_width),
            "intervals_overlap": e.intervals_overlap,
        }
        for e in entries
    }

"""The onsets of a study's metrics (`stats.onsets`, the rule and its settings from config `report`), their
intervals from the replicated trajectories, and onsets.json."""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ckptstudy import results
from ckptstudy.record import Record
from ckptstudy.report.resample import Resampled
from ckptstudy.stats.onsets import onset_intervals, onsets


@dataclass
class Onsets:
    """The rule (`fraction`, `persist`), the metrics it was applied to, per (model, metric) the onset step
    (NaN = no held change) and its interval {"ci": [low, high], "with_onset": share of replicates}, and the
    seconds the replicated onsets took."""

    metrics: list[str]
    fraction: float
    persist: int
    steps: dict[tuple[str, str], float] = field(default_factory=dict)
    intervals: dict[tuple[str, str], dict] = field(default_factory=dict)
    seconds: float = 0.0

    def of_model(self, model: str) -> dict[str, float]:
        """{metric: onset, metric/ci_low, metric/ci_high} of one model, finite values only (W&B summary)."""
        out = {metric: v for (m, metric), v in self.steps.items() if m == model and not math.isnan(v)}
        for (m, metric), ci in self.intervals.items():
            if m == model and all(np.isfinite(ci["ci"])):
                out.update({f"{metric}/ci_low": ci["ci"][0], f"{metric}/ci_high": ci["ci"][1]})
        return out


def study_onsets(
    table: pd.DataFrame,
    records: list[Record],
    resampled: Resampled,
    metrics: list[str],
    fraction: float,
    persist: int,
    level: float,
) -> Onsets:
    """The onsets of `metrics` over the table's ok rows, and their `level` intervals over the replicates of
    `resampled` (the same prompt resample at every step)."""
    found = Onsets(metrics, fraction, persist, onsets(table, metrics, fraction, persist))
    ok = table[table["status"] == "ok"]
    steps_by_model = {m: sorted(int(s) for s in part["step"]) for m, part in ok.groupby("model")}
    values = {(r.model, r.step): r.scalars.metrics for r in records if r.ok}
    started = time.perf_counter()
    found.intervals = onset_intervals(steps_by_model, resampled.replicates, values, metrics, fraction, persist, level)
    found.seconds = time.perf_counter() - started
    return found


def write_onsets(path: Path, found: Onsets, bootstrap: dict, across_seeds: dict | None = None) -> None:
    """onsets.json: the rule, and per `<metric>@<model>` the onset step (null = no held change), its interval
    and the share of bootstrap replicates that have an onset (both null without stored samples); with
    `across_seeds` (`report.seeds.as_json`), the training runs of each seeded model side by side."""

    def number(x):
        return None if x is None or not np.isfinite(x) else float(x)

    entries = {}
    for (model, metric), value in sorted(found.steps.items()):
        ci = found.intervals.get((model, metric)) or {}
        entries[f"{metric}@{model}"] = {
            "step": number(value),
            "ci": [number(x) for x in ci["ci"]] if ci else None,
            "with_onset": ci.get("with_onset"),
        }
    rule = {"fraction": found.fraction, "persist": found.persist, "bootstrap": bootstrap}
    content = {"rule": rule, "onsets": entries, **({"across_seeds": across_seeds} if across_seeds else {})}
    results.atomic_write_bytes(Path(path), json.dumps(content, indent=1).encode())

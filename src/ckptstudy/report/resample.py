"""The bootstrap of a whole study, from the samples stored with its records (no model needed): per ok record
the replicates of every scalar with a sample (the same prompt resample at every checkpoint, so onsets can be
replicated along a trajectory) and its checked intervals with their methods (`intervals.checked_intervals`)."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from ckptstudy import results
from ckptstudy.record import Record
from ckptstudy.stats.bootstrap import resample
from ckptstudy.stats.intervals import checked_intervals

log = logging.getLogger(__name__)
SETTINGS = ("n", "level", "seed", "min_prompts")


@dataclass
class Resampled:
    """replicates {(model, step): {key: [n]}} (for onset intervals; keys whose sample does not give the reported
    value are left out), intervals {(model, step): {key: [low, high]}}, why an interval is NaN {(model, step):
    {key: why}}, the method of each finite one {(model, step): {key: method}}, and the seconds it took."""

    replicates: dict = field(default_factory=dict)
    intervals: dict = field(default_factory=dict)
    reasons: dict = field(default_factory=dict)
    methods: dict = field(default_factory=dict)
    seconds: float = 0.0


def bootstrap_settings(bootstrap_cfg) -> dict:
    """n, level, seed and min_prompts of the config `report.bootstrap` as plain numbers (each is required)."""
    missing = [key for key in SETTINGS if bootstrap_cfg.get(key) is None]
    if missing:
        raise ValueError(f"report.bootstrap has no {', '.join(missing)}; it needs {', '.join(SETTINGS)}")
    return {
        "n": int(bootstrap_cfg["n"]),
        "level": float(bootstrap_cfg["level"]),
        "seed": int(bootstrap_cfg["seed"]),
        "min_prompts": int(bootstrap_cfg["min_prompts"]),
    }


def resample_records(records: list[Record], settings: dict) -> Resampled:
    """Replicates and checked intervals of every ok record's scalars that have stored samples (`Record.samples`),
    with `settings` = `bootstrap_settings`. A record whose arrays file is not the one written with it is skipped,
    with a warning."""
    started = time.perf_counter()
    out = Resampled()
    for record in records:
        if not record.ok or record.arrays is None:
            continue
        where = (record.model, record.step)
        mismatch = results.arrays_mismatch(record)
        if mismatch:
            log.warning("%s step %s: no intervals: %s", *where, mismatch)
            continue
        samples = record.samples()
        metrics = record.scalars.metrics
        if not any(k in metrics for k in samples):
            continue
        reps = resample(samples, settings["n"], settings["seed"])  # hidden parts of composites too
        found = checked_intervals(samples, reps, metrics, settings["level"], settings["min_prompts"])
        out.replicates[where] = {k: v for k, v in reps.values.items() if k in metrics}
        out.intervals[where], out.reasons[where], out.methods[where] = found.ci, found.reasons, found.methods
    out.seconds = time.perf_counter() - started
    return out

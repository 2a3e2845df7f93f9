"""A constructed study written the way jobs write it (FamilyResult -> record + npz), without a model, and the
composed config that summarizes it: two models whose rate rises at different steps, a per-head score, a
count without a sample, a NaN with its reason, a failed checkpoint and two steps with identical weights."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from ckptstudy import results
from ckptstudy.config import compose_config
from ckptstudy.metrics import FamilyResult
from ckptstudy.record import Identity, Outcome, Provenance, Record, RecordArrays, Scalars
from ckptstudy.stats.bootstrap import Sample

STEPS = [0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512]
SETTINGS = {"n": 100, "level": 0.9, "seed": 0, "min_prompts": 5}
MODELS = {"small": 4096, "large": 2048}  # tokens per step


def checkpoint_result(step: int, middle: float, rng) -> FamilyResult:
    """What a family would report at one checkpoint: a rate over 40 prompts that rises around `middle`
    (per-prompt 0/1 sample) and a per-head score (per-prompt per-head sample, layer x head array)."""
    p = 1 / (1 + math.exp(-(math.log1p(step) - math.log1p(middle)) * 3))
    hits = (rng.random(40) < 0.05 + 0.9 * p).astype(float)
    heads = rng.random((40, 2, 2)) * 0.1
    heads[:, 1, 0] += p  # one head forms
    result = FamilyResult()
    result.stat("x/rate", Sample("mean", hits, prompts="p"), None)
    result.stat("x/score_max", Sample("max_of_mean", heads, prompts="q"), None)
    result.value("x/count", 40, "a count, not an estimate")
    result.heads["x/score"] = heads.mean(0)
    result.raw["x/generated"] = rng.integers(0, 9, (40, 7))  # 2-D raw data, not a head array
    if step == 0:
        result.nan("x/late", "nothing to measure at step 0")
    else:
        result.value("x/late", p, "a constant of the test")
    return result


def write_study(root: Path, study: str = "demo") -> Path:
    rng = np.random.default_rng(0)
    for model, tokens in MODELS.items():
        middle = 20 if model == "small" else 100
        for step in STEPS:
            path = results.record_path(root, study, model, step)
            config = {"model": {"name": model, "n_layers": 2, "n_heads": 2, "tokens_per_step": tokens}, "seed": 0}
            record = Record(Identity(model, step, study), provenance=Provenance(config=config, config_hash="abc"))
            if model == "large" and step == 64:
                record.outcome.status = "failed"
                record.outcome.error = {"type": "OSError", "message": "disk on fire", "traceback": "T"}
                results.write_record(path, record)
                continue
            measured = checkpoint_result(step, middle, rng)
            sha = "same" if (model == "large" and step in (128, 256)) else f"{model}{step}"
            record.outcome = Outcome(status="ok", seconds=1.5, finished_at=f"2026-01-01T00:00:{step % 60:02d}")
            record.scalars = Scalars(
                metrics=measured.scalars,
                nan_reasons=measured.nan_reasons,
                ci=measured.intervals(SimpleNamespace(**SETTINGS)).ci,
            )
            record.provenance.weights_sha256 = sha
            results.write_record(path, record, RecordArrays.of(measured))
    return root / study


def study_config(root: Path, study: str = "demo", *overrides: str):
    """The composed config that summarizes the constructed study: its metrics, `SETTINGS`, no W&B, no claims (the
    papers' claims read metrics this study does not have; tests add claims of their own)."""
    return compose_config(
        [
            f"paths.root={root}",
            f"study={study}",
            "logger=none",
            "claims=[]",
            "report.summary_metrics=[x/rate,x/score_max]",
            "report.onset_metrics=[x/rate,x/score_max,x/late]",
            "report.onset_fraction=0.5",
            "report.onset_persist=2",
            *(f"report.bootstrap.{key}={value}" for key, value in SETTINGS.items()),
            *overrides,
        ]
    )

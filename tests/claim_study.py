"""Hand-made trajectories for the claims' tests: records written the way jobs write them (FamilyResult -> record +
npz, per-prompt samples included), with metrics whose answers are known by construction.

Per checkpoint, 60 prompts (prompt set "p"; "q" for `t/twin`), each metric the mean of its per-prompt values:
- `t/rise`: N(s(step, 20), 0.1) with s a logistic in log(1 + step) from 0 to 1 around step 20;
- `t/late`: the same around step 100 (rises well after `t/rise`);
- `t/fall`: 1 - the same around step 20;
- `t/flat`, `t/twin`: N(0.5, 0.3) at every step (no change; `t/twin` on independent prompts);
- `t/rise_twin`: `t/rise`'s curve with noise N(0, 0.6) (the same onset, too noisy to order);
- `t/zero`: 0 for every prompt (no onset: no held change);
- `t/rate`: a 0/1 rate with probability s(step, 20);
- `t/few`: a mean over 3 prompts (its interval is withheld: fewer than min_prompts);
- `t/nan`: NaN with its reason at every step;
- `t/small_excess`: N(0.02, 0.01) (an "excess" never above a MIN_EFFECT of 0.1; a held change exists: noise).
The model "late" has every rise around step 400 instead of 20 (`t/late` stays at 100).
"""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from ckptstudy import results
from ckptstudy.metrics import FamilyResult
from ckptstudy.record import Identity, Outcome, Provenance, Record, RecordArrays, Scalars
from ckptstudy.stats.bootstrap import Sample

STEPS = [0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512]
N = 60
SETTINGS = {"n": 200, "level": 0.95, "seed": 0, "min_prompts": 5}


def logistic(step: int, middle: float) -> float:
    return 1 / (1 + math.exp(-(math.log1p(step) - math.log1p(middle)) * 4))


def checkpoint(step: int, middle: float, rng) -> FamilyResult:
    s, late = logistic(step, middle), logistic(step, 100)
    result = FamilyResult()

    def mean(key: str, values, prompts: str = "p") -> None:
        result.stat(key, Sample("mean", np.asarray(values, dtype=float), prompts=prompts), None)

    mean("t/rise", s + rng.normal(0, 0.1, N))
    mean("t/rise_twin", s + rng.normal(0, 0.6, N))
    mean("t/late", late + rng.normal(0, 0.1, N))
    mean("t/fall", 1 - s + rng.normal(0, 0.1, N))
    mean("t/flat", 0.5 + rng.normal(0, 0.3, N))
    mean("t/twin", 0.5 + rng.normal(0, 0.3, N), prompts="q")
    mean("t/zero", np.zeros(N))
    mean("t/rate", (rng.random(N) < s).astype(float))
    mean("t/few", s + rng.normal(0, 0.1, 3), prompts="few")
    mean("t/small_excess", 0.02 + rng.normal(0, 0.01, N))
    result.nan("t/nan", "nothing to measure in this test")
    return result


def write_claim_study(root: Path, study: str = "claims", models: dict[str, float] | None = None) -> Path:
    """Records of `models` ({name: the step its rises centre on}) at `STEPS` under `<root>/<study>`."""
    rng = np.random.default_rng(1)
    for model, middle in (models or {"m": 20}).items():
        for step in STEPS:
            measured = checkpoint(step, middle, rng)
            found = measured.intervals(SimpleNamespace(**SETTINGS))
            ci, reasons = found.ci, found.reasons
            config = {"model": {"name": model, "n_layers": 1, "n_heads": 1, "tokens_per_step": 100}}
            record = Record(
                Identity(model, step, study),
                Outcome(status="ok", seconds=1.0, finished_at="2026-01-01T00:00:00"),
                Scalars(
                    metrics=measured.scalars,
                    nan_reasons=measured.nan_reasons,
                    no_interval=measured.no_interval,
                    ci=ci,
                    ci_reasons=reasons,
                ),
                Provenance(config=config, config_hash="claims", weights_sha256=f"{model}{step}"),
            )
            path = results.record_path(root, study, model, step)
            results.write_record(path, record, RecordArrays.of(measured))
    return root / study

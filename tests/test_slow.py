"""Slow end-to-end runs (`make test-full`): the whole default sweep, and the submitit launcher path."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from conftest import run_cli
from test_sweep import suite_path_override

pytestmark = pytest.mark.slow


def test_default_sweep_over_every_micro_checkpoint_shows_the_phenomena(micro_suite, tmp_path):
    proc = run_cli(["--multirun", suite_path_override(micro_suite)], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = pd.read_csv(tmp_path / "default" / "trajectories.csv").set_index("step")
    steps = json.loads((micro_suite / "suite.json").read_text())["steps"]
    assert table.index.tolist() == steps and (table["status"] == "ok").all()
    first, last = steps[0], steps[-1]
    induction = table["icl/induction_max"]
    assert induction[last] > 0.3 and induction[last] > 3 * induction[first]
    assert table.loc[last, "icl/repeat_nll_gain"] > 1.0  # second copy far easier than the first
    assert table["rep/natural_rate"].max() > 0.5  # greedy generation loops on many prompts
    onsets = json.loads((tmp_path / "default" / "onsets.json").read_text())["onsets"]
    # the paper's ordering, as a number: natural repetition appears before the induction heads
    assert onsets["rep/natural_rate@micro"]["step"] < onsets["icl/induction_max@micro"]["step"]


def test_submitit_local_launcher_runs_the_same_jobs(micro_suite, tmp_path):
    proc = run_cli(
        [
            "--multirun",
            suite_path_override(micro_suite),
            "step=0,1600",
            "hydra/launcher=submitit_local",
            "metrics=[icl_heads]",
            "metrics.icl_heads.mode=off",
            "logger=none",
        ],
        tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = pd.read_csv(tmp_path / "default" / "trajectories.csv")
    assert table["step"].tolist() == [0, 1600] and (table["status"] == "ok").all()

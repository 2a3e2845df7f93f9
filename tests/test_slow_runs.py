"""Slow (`make test-full`): other training runs of the micro recipe. Seeds 1 and 2 and micro-llama are built in a
private user cache (three ~5-minute builds on idle cores; `make micro-runs` builds them in the real one), the
reference build (seed 0) is linked in, and icl_heads is swept over every checkpoint of each run. The onsets and
their spread across seeds are printed (the README's across-seed figures come from this run)."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest

from ckptstudy.config import compose_config
from ckptstudy.model.suite import cli as suite_cli
from ckptstudy.model.suite import ensure_suite
from conftest import run_cli

pytestmark = pytest.mark.slow

RECIPE: list[str] = []  # model.suite.* overrides of every build and sweep here (empty: the micro recipe itself)
ICL_ONLY = [
    "metrics=[icl_heads]",
    "metrics.icl_heads.mode=off",
    "logger=none",
    "report.onset_metrics=[icl/induction_max]",
]


@pytest.fixture
def private_cache(tmp_path, monkeypatch, micro_suite):
    """A user cache of our own ($XDG_CACHE_HOME) holding the reference build, linked (never rebuilt, never written)."""
    cache = tmp_path / "xdg"
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    monkeypatch.delenv("CKPTSTUDY_SUITE_DIR", raising=False)
    if not RECIPE:
        suite_cli(["--adopt", str(micro_suite)])
    return cache


def build(*overrides: str):
    """Build (or find) the suite of `overrides` in the current user cache; its directory."""
    return ensure_suite(compose_config([*overrides, *RECIPE], check=False).model)


def test_three_training_runs_of_micro_onsets_and_their_spread(private_cache, tmp_path):
    for seed in (0, 1, 2):
        build(f"model.seed={seed}")
    sweep = ["-m", "model.seed=0,1,2", "study=seeds", *ICL_ONLY, *RECIPE]
    proc = run_cli(sweep, tmp_path, env={"XDG_CACHE_HOME": str(private_cache)})  # each seed's suite in that cache
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = pd.read_csv(tmp_path / "seeds" / "trajectories.csv")
    assert sorted(table["model"].unique()) == ["micro", "micro@seed1", "micro@seed2"]
    assert (table["status"] == "ok").all()
    entry = json.loads((tmp_path / "seeds" / "onsets.json").read_text())["across_seeds"]["icl/induction_max@micro"]
    print("micro induction onsets by seed:", entry)
    assert entry["seeds"] == [0, 1, 2]
    if not RECIPE:  # every run of the recipe forms induction heads
        assert all(step is not None for step in entry["steps"]) and math.isfinite(entry["spread"])


def test_micro_llama_forms_induction_heads(private_cache, tmp_path):
    directory = build("model=micro-llama")
    sweep = ["-m", "model=micro-llama", f"paths.suite='{directory}'", "study=llama", *ICL_ONLY, *RECIPE]
    proc = run_cli(sweep, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = pd.read_csv(tmp_path / "llama" / "trajectories.csv").set_index("step")
    assert (table["status"] == "ok").all()
    onsets = json.loads((tmp_path / "llama" / "onsets.json").read_text())["onsets"]
    induction = table["icl/induction_max"]
    print("micro-llama induction_max by step:", induction.to_dict(), "onset:", onsets["icl/induction_max@micro-llama"])
    if not RECIPE:
        first, last = induction.index[0], induction.index[-1]
        assert induction[last] > 0.3 and induction[last] > 3 * induction[first]
        assert onsets["icl/induction_max@micro-llama"]["step"] is not None

"""A job at a real Pythia shape through the hub path: random-init checkpoints of the Pythia-14m shape (50304-row
embedding, 2048-token context) in a fake Hugging Face cache as EleutherAI/pythia-14m, offline, under a memory
budget small enough to lower the configured batch size. The full default multirun compared with the plan
(14m and 70m, default probes) is `make bench-shape` and the slow test below."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benches"))

from realshape import main, run_sweep, write_fake_pythia  # noqa: E402

pytestmark = pytest.mark.suite  # the micro suite's tokenizer stands in for Pythia's


@pytest.mark.long
def test_a_pythia_14m_shape_job_runs_offline_within_a_small_budget(tmp_path, micro_suite):
    tokenizer = max(micro_suite.glob("step*"), key=lambda p: int(p.name[4:]))
    cache = tmp_path / "hub"
    write_fake_pythia(cache, "pythia-14m", [1000], tokenizer)
    overrides = ["experiment=smoke", "memory_budget=0.25", "batch_size=64"]
    [record] = run_sweep("pythia-14m", [1000], cache, tmp_path / "out", overrides)
    assert record.outcome.status == "ok" and record.identity.revision == "EleutherAI/pythia-14m@step1000"
    assert record.provenance.memory_budget["bytes"] == int(0.25 * 2**30)
    lowered = [w for w in record.outcome.warnings if w.startswith("memory budget:")]
    assert lowered and all("instead of batch_size=64" in w for w in lowered), record.outcome.warnings
    families = {"natural generation (shared)", "icl_heads", "repetition", "low_info", "sink", "perturb"}
    assert set(record.provenance.cost) == families
    for family, cost in record.provenance.cost.items():
        assert cost["seconds"] >= 0 and cost["peak_bytes"] >= 0, family
    assert record.scalars.metrics["icl/ablation_exact"] == 1.0  # 24 heads: mode auto runs exact ablation


@pytest.mark.slow
def test_default_multirun_at_the_14m_shape_matches_the_plan_within_2x(tmp_path, micro_suite):
    out = tmp_path / "realshape.json"
    assert main(["--models", "pythia-14m", "--steps", "1000,2000", "--budget", "2", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["failures"] == [] and report["report"]["pythia-14m"]["families"]

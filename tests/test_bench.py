"""`make bench` end to end on the micro shape (`--quick`): every section runs in fresh worker processes,
writes bench.json and the table, and the compared methods agree on their numbers. No timing is asserted."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# a minute of subprocesses: `make test-full` runs it (and `make bench` is the real thing); make test stays < 15 min
pytestmark = pytest.mark.slow


def run_bench(out: Path, *args: str, env: dict | None = None) -> dict:
    proc = subprocess.run(
        [sys.executable, str(REPO / "benches" / "run.py"), "--quick", "--threads", "1", "--out", str(out), *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, **(env or {})},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "written to" in proc.stdout
    return json.loads(out.read_text())


def test_quick_bench_runs_every_section_without_transformer_lens(tmp_path):
    blocker = tmp_path / "blocked" / "transformer_lens"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text("raise ImportError('transformer_lens blocked by the test')\n")
    path = os.pathsep.join([str(blocker.parent), os.environ.get("PYTHONPATH", "")])
    report = run_bench(tmp_path / "bench.json", env={"PYTHONPATH": path})
    assert (tmp_path / "bench_table.md").read_text().startswith("| capture")
    assert report["versions"]["torch"] and report["quick"]

    capture = report["capture"]
    assert capture["skipped"] and all("transformer_lens" in why for why in capture["skipped"].values())
    methods = capture["rows"][0]["methods"]
    assert {"bare", "bare_body", "hf", "fused", "fused_nll", "eager_hooks"} <= set(methods) and "tl" not in methods
    for name in ("hf", "fused_nll", "eager_hooks"):  # the same statistics as the fused path
        assert methods[name]["max_abs_diff_vs_fused"] < 1e-3, name

    assert "transformer_lens" in report["job"]["tl"]["skipped"]
    ablation = report["ablation"]
    assert ablation["loop"] == "naive" and ablation["max_abs_diff_exact_vs_loop"] < 1e-4
    assert -1 <= ablation["attribution_spearman"] <= 1

    generation = report["generation"]["rows"]
    assert generation and all(row["same_tokens"] and row["max_entropy_diff"] < 1e-5 for row in generation), generation

    plan = report["plan"]
    assert plan and all("predicted_s" in row for row in plan), plan
    assert report["calibration"]["machine"]["gflops"] > 0
    assert any(key.startswith("capture_time_128/micro") for key in report["targets"])
    assert "attribution_spearman" in report["targets"]


@pytest.mark.skipif(
    subprocess.run([sys.executable, "-c", "import transformer_lens"], capture_output=True).returncode != 0,
    reason="transformer_lens is not installed (pip install -e '.[bench]')",
)
def test_quick_transformer_lens_baselines_give_the_same_numbers(tmp_path):
    report = run_bench(tmp_path / "bench.json", "--only", "job,ablation")
    agreement = report["job"]["agreement"]
    assert agreement["compared"] > 50 and agreement["outside_tolerance"] == [], agreement
    ablation = report["ablation"]
    assert ablation["loop"] == "tl_loop" and ablation["max_abs_diff_exact_vs_loop"] < 1e-4

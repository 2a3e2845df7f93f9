"""A real multirun over micro-suite checkpoints through the Hydra CLI, with offline W&B runs."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest

from ckptstudy import results
from conftest import run_cli
from wandb_files import history, run_config

STEPS = [0, 512, 1000, 1600]


def suite_path_override(directory: Path) -> str:
    return f"paths.suite='{directory}'"


@pytest.fixture(scope="module")
def sweep(micro_suite, tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep")
    args = ["-m", suite_path_override(micro_suite), "step=" + ",".join(map(str, STEPS))]
    first = run_cli(args, root)
    records_dir = root / "default" / "records" / "micro"
    mtimes = {p.name: p.stat().st_mtime_ns for p in records_dir.glob("step*.json")}
    second = run_cli(args, root)
    return {"root": root, "first": first, "second": second, "mtimes": mtimes, "records": records_dir}


def test_multirun_writes_a_record_per_checkpoint(sweep):
    assert sweep["first"].returncode == 0, sweep["first"].stdout[-3000:] + sweep["first"].stderr[-3000:]
    for step in STEPS:
        record = results.read_record(sweep["records"] / f"step{step}.json")
        assert record.outcome.status == "ok" and record.step == step and record.model == "micro"
        assert len(record.provenance.weights_sha256) == 64 and record.identity.revision.endswith(f"step{step}")
        assert all(k.count("/") == 1 for k in record.scalars.metrics)
        assert (sweep["records"] / record.arrays.file).exists()


def test_every_scalar_has_an_interval_or_a_declared_reason(sweep):
    table = pd.read_csv(sweep["root"] / "default" / "trajectories.csv").set_index("step")
    for step in STEPS:
        record = results.read_record(sweep["records"] / f"step{step}.json")
        without = record.scalars.no_interval
        assert not [k for k, why in without.items() if why.startswith("undeclared")], without
        assert set(record.scalars.ci) | set(without) == set(record.scalars.metrics) and not set(
            record.scalars.ci
        ) & set(without)
        finite = [k for k, (low, high) in record.scalars.ci.items() if low == low and high == high]
        assert len(finite) > 0.8 * len(record.scalars.ci), sorted(set(record.scalars.ci) - set(finite))
    # the intervals reach the table: every column with an interval somewhere has its two bound columns
    for key in record.scalars.ci:
        assert {f"{key}/ci_low", f"{key}/ci_high"} <= set(table.columns), key


def test_trajectories_table_has_one_sorted_row_per_step(sweep):
    table = pd.read_csv(sweep["root"] / "default" / "trajectories.csv")
    assert table["step"].tolist() == STEPS and set(table["model"]) == {"micro"}
    assert {"icl/induction_max", "icl/icl_score", "icl/repeat_nll_gain"} <= set(table.columns)
    induction = table.set_index("step")["icl/induction_max"]
    # the suite's induction phase change: the last checkpoint is far above step 0
    assert induction[1600] > 0.3 and induction[1600] > 3 * induction[0]
    assert (sweep["root"] / "default" / "trajectories.png").stat().st_size > 10_000
    assert "== trajectories (4 checkpoints) ==" in sweep["first"].stdout


def test_offline_wandb_runs_read_back(sweep):
    runs = sorted((sweep["root"] / "default" / "wandb").glob("offline-run-*"))
    configs = [run_config(r) for r in runs]
    checkpoint_runs = [c for c in configs if c["job_type"] == "checkpoint"]
    assert sorted(c["name"] for c in checkpoint_runs) == sorted(f"micro@step{s}" for s in STEPS)
    assert all(c["group"] == "default" for c in configs)
    # one trajectory run per multirun (the fixture ran the sweep twice); skipped jobs log no new checkpoint run
    trajectory_runs = [r for r, c in zip(runs, configs) if c["job_type"] == "trajectory"]
    assert len(trajectory_runs) == 2
    table = pd.read_csv(sweep["root"] / "default" / "trajectories.csv").set_index("step")
    for run in trajectory_runs:
        rows = [row for row in history(run) if "icl/induction_max" in row]
        assert [row["train/step"] for row in rows] == STEPS
        assert [row["icl/induction_max"] for row in rows] == pytest.approx(table["icl/induction_max"].tolist())


def test_rerunning_a_finished_sweep_computes_nothing(sweep):
    assert sweep["second"].returncode == 0
    assert sweep["second"].stdout.count("skipped (record exists)") == len(STEPS)
    after = {p.name: p.stat().st_mtime_ns for p in sweep["records"].glob("step*.json")}
    assert after == sweep["mtimes"]


def test_corrupt_checkpoint_fails_alone(micro_suite, tmp_path):
    suite = tmp_path / "suite"
    for step in (0, 512, 1600):
        shutil.copytree(micro_suite / f"step{step}", suite / f"step{step}")
    shutil.copy(micro_suite / "suite.json", suite / "suite.json")  # a copy of this recipe (jobs never build)
    (suite / "step512" / "model.safetensors").write_bytes(b"not a safetensors file")
    root = tmp_path / "out"
    # the subject is the failure path, not the metrics: a fast preset and one family
    args = [
        "-m",
        suite_path_override(suite),
        "step=0,512,1600",
        "logger=none",
        "experiment=smoke",
        "metrics=[repetition]",
    ]
    proc = run_cli(args, root)
    records = {s: results.read_record(root / "smoke/records/micro" / f"step{s}.json") for s in (0, 512, 1600)}
    assert records[0].outcome.status == "ok" and records[1600].outcome.status == "ok"
    assert records[512].outcome.status == "failed"
    assert (
        "step512" in records[512].outcome.error["message"] and records[512].outcome.error["type"] == "CheckpointError"
    )
    assert proc.returncode == 1
    assert "1 checkpoint(s) failed: [['micro', 512]]" in proc.stderr
    table = pd.read_csv(root / "smoke" / "trajectories.csv")
    assert table["status"].tolist() == ["ok", "failed", "ok"]


def test_natural_repetition_end_to_end_and_reanalysis_from_saved_ids(sweep):
    import math

    import torch

    from ckptstudy.measure.cycles import LoopRule
    from ckptstudy.metrics.repetition import analyze_generations

    for step in STEPS:
        path = sweep["records"] / f"step{step}.json"
        record = results.read_record(path)
        metrics = record.scalars.metrics
        generated = int(metrics["rep/generated_tokens"])
        assert 0 <= metrics["rep/natural_rate"] <= 1
        if metrics["rep/natural_rate"] > 0:
            assert 0 <= metrics["rep/onset_p10"] <= metrics["rep/onset_median"] <= metrics["rep/onset_p90"] < generated
        raw = record.raw()  # generated ids are raw data, never a per-head array
        assert "rep/generated_ids" not in record.heads()
        ids = torch.from_numpy(raw["rep/generated_ids"]).long()
        entropy = torch.from_numpy(raw["rep/generated_entropy"])
        assert ids.shape[1] == generated
        rule = record.provenance.config["loops"]
        rule = LoopRule(rule["definition"], rule["min_period"], rule["max_period"], rule["min_copies"])
        max_cycles = record.provenance.config["metrics"]["repetition"]["max_cycles"]
        again, _ = analyze_generations(ids, entropy, rule, max_cycles)
        for key, value in again.items():
            assert (math.isnan(value) and math.isnan(metrics[key])) or value == pytest.approx(metrics[key]), key


def test_icl_specialization_end_to_end(sweep):
    import math

    table = pd.read_csv(sweep["root"] / "default" / "trajectories.csv").set_index("step")
    keys = [
        "icl/ablation_top1_share",
        "icl/ablation_top3_share",
        "icl/ablation_neff",
        "icl/ablation_gini",
        "icl/ablation_vs_induction_spearman",
        "icl/ablation_total",
        "icl/icl_repeat_rate",
    ]
    # concentration of a near-zero effect vector is noise: reported as NaN below min_effect_total (0.01)
    noisy = table["icl/ablation_total"] < 0.01
    for key in keys:
        values = table[key]
        if key in ("icl/ablation_top1_share", "icl/ablation_top3_share", "icl/ablation_neff", "icl/ablation_gini"):
            assert values[noisy].isna().all() and values[~noisy].map(math.isfinite).all(), key
        elif key != "icl/ablation_vs_induction_spearman":
            assert values.map(math.isfinite).all(), key
    assert not noisy[1600]
    assert table.loc[1600, "icl/icl_repeat_rate"] > table.loc[0, "icl/icl_repeat_rate"]
    # top-3 overlap with the previous step: undefined at the first step and wherever either step's effect
    # is noise (below min_effect_total, like step 0 here), a proportion otherwise, beside its chance level
    overlap = table["icl/top3_jaccard_prev"]
    assert table["icl/top3_jaccard_prev_chance"].round(4).unique().tolist() == [0.2589]  # 3 of 8 heads
    assert noisy[STEPS[0]] and math.isnan(overlap[STEPS[0]]) and math.isnan(overlap[STEPS[1]])
    assert overlap[STEPS[2:]].between(0, 1).all()
    arrays = results.read_record(sweep["records"] / "step1600.json").heads()
    assert arrays["icl/ablation_effect"].shape == arrays["icl/induction"].shape == (2, 4)


def test_low_information_attention_end_to_end(sweep):
    import math

    from ckptstudy.metrics.low_info import KEY_CLASSES

    record = results.read_record(sweep["records"] / "step1600.json")
    metrics, arrays = record.scalars.metrics, record.heads()
    for context in ("natural", "icl", "text"):
        for name in ("enrich_newline", "enrich_punctuation", "enrich_function_word", "enrich_low_info"):
            for suffix in ("", "_nosink"):
                assert math.isfinite(metrics[f"lowinfo/{name}_{context}{suffix}"]), (name, context, suffix)
        for kind in ("lowinfo", "content"):
            assert 0 < metrics[f"lowinfo/entropy_{kind}_{context}"] < math.log(128)
            assert 0 < metrics[f"lowinfo/entropy_{kind}_{context}_norm"] <= 1
        assert arrays[f"lowinfo/enrich_{context}"].shape == (2, 4, len(KEY_CLASSES))
    assert math.isfinite(metrics["lowinfo/enrich_newline_natural_over_icl"])

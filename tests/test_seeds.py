"""Training seeds as a sweep axis: a study of one model trained three times (runs `small`, `small@seed1`,
`small@seed2`) goes through records, trajectories.csv, onsets.json, the report and the W&B trajectory runs with its
seed; the onsets of the runs sit side by side with their spread and prompt intervals. The spread is checked on a
constructed case with known onsets, and a study with one run per model shows no across-seed section at all."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from ckptstudy import results
from ckptstudy.record import Identity, Outcome, Provenance, Record, RecordArrays, Scalars
from ckptstudy.report.onset_results import Onsets
from ckptstudy.report.seeds import SeedOnsets, describe, seed_onsets, seeded_models
from ckptstudy.report.summary import summarize
from ckptstudy.report.tracking import run_tags
from report_study import SETTINGS, STEPS, checkpoint_result, study_config, write_study

MIDDLES = {0: 4, 1: 128, 2: 8}  # seed -> the step around which its rate rises: seed 1 learns much later


def write_seeded_study(root, study: str = "seeded") -> None:
    """Records of model `small` trained with seeds 0, 1, 2, written the way jobs write them (`fingerprint.identify`:
    model = the run, base_model, seed)."""
    rng = np.random.default_rng(0)
    for seed, middle in MIDDLES.items():
        run = "small" if seed == 0 else f"small@seed{seed}"
        for step in STEPS:
            config = {"model": {"name": "small", "n_layers": 2, "n_heads": 2, "tokens_per_step": 4096, "seed": seed}}
            measured = checkpoint_result(step, middle, rng)
            record = Record(
                Identity(run, step, study, base_model="small", seed=seed),
                Outcome(status="ok", seconds=1.0, finished_at="2026-01-01T00:00:00"),
                Scalars(
                    metrics=measured.scalars,
                    nan_reasons=measured.nan_reasons,
                    ci=measured.intervals(SimpleNamespace(**SETTINGS)).ci,
                ),
                Provenance(config=config, config_hash="abc", weights_sha256=f"{run}{step}"),
            )
            results.write_record(results.record_path(root, study, run, step), record, RecordArrays.of(measured))


@pytest.fixture(scope="module")
def seeded(tmp_path_factory):
    from wandb.proto import wandb_internal_pb2

    from wandb_files import raw_records

    root = tmp_path_factory.mktemp("seeded")
    write_seeded_study(root)
    logger = ["logger=wandb", "logger.mode=offline", "logger.project=ckptstudy-test", "logger.strict=true"]
    out = summarize(study_config(root, "seeded", *logger, "report.onset_metrics=[x/rate]"))
    runs = {}
    for run_dir in sorted((root / "seeded" / "wandb").glob("offline-run-*")):
        (path,) = run_dir.glob("run-*.wandb")
        for blob in raw_records(path):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(blob)
            if record.WhichOneof("record_type") == "run":
                config = {item.key: json.loads(item.value_json) for item in record.run.config.update}
                runs[record.run.display_name] = (list(record.run.tags), config)
    return {"root": root, "dir": root / "seeded", "out": out, "wandb": runs}


def test_records_and_trajectories_carry_the_run_its_model_and_seed(seeded):
    table = pd.read_csv(seeded["dir"] / "trajectories.csv")
    runs = table.groupby("model")[["base_model", "seed"]].first()
    assert runs.to_dict("index") == {
        "small": {"base_model": "small", "seed": 0},
        "small@seed1": {"base_model": "small", "seed": 1},
        "small@seed2": {"base_model": "small", "seed": 2},
    }
    assert len(table) == 3 * len(STEPS) and (table["status"] == "ok").all()
    assert seeded_models(table) == {"small": [(0, "small"), (1, "small@seed1"), (2, "small@seed2")]}


def test_onsets_per_seed_with_their_spread_next_to_the_prompt_intervals(seeded):
    onsets = json.loads((seeded["dir"] / "onsets.json").read_text())
    entry = onsets["across_seeds"]["x/rate@small"]
    assert entry["seeds"] == [0, 1, 2] and entry["runs"] == ["small", "small@seed1", "small@seed2"]
    steps = entry["steps"]
    assert all(s is not None for s in steps)
    assert steps[1] > max(steps[0], steps[2])  # seed 1 was built to learn late: its onset says so
    assert entry["spread"] == max(steps) - min(steps) > 0
    assert entry["intervals_overlap"] is False  # 4 vs 128: more than the choice of prompts explains
    # each run's onset is the one onsets.json gives that run on its own
    assert steps == [onsets["onsets"][f"x/rate@{run}"]["step"] for run in entry["runs"]]
    assert entry["ci"] == [onsets["onsets"][f"x/rate@{run}"]["ci"] for run in entry["runs"]]


def test_the_report_shows_the_seeds_side_by_side(seeded):
    html = (seeded["dir"] / "report.html").read_text()
    assert "Across training seeds" in html
    section = html[html.index("Across training seeds") :]
    assert all(f"seed {seed}" in section for seed in MIDDLES)
    across = seeded["out"]["across_seeds"]
    assert [e.metric for e in across] == ["x/rate"] and describe(across[0]).startswith("seeds small x/rate: seed 0")


def test_wandb_groups_every_seed_of_a_model_and_tags_each_run_with_its_seed(seeded):
    runs = seeded["wandb"]
    assert set(runs) == {"small/trajectory", "small@seed1/trajectory", "small@seed2/trajectory"}
    for seed, run in [(0, "small"), (1, "small@seed1"), (2, "small@seed2")]:
        tags, config = runs[f"{run}/trajectory"]
        assert tags[0] == "model:small" and f"seed:{seed}" in tags and f"run:{run}" in tags
        assert config["base_model"] == "small" and config["seed"] == seed and config["model"] == run
    assert run_tags("pythia-160m", None, "s") == ["model:pythia-160m", "study:s"]  # a model without seeds


def test_a_study_with_one_run_per_model_has_no_across_seed_section(tmp_path):
    write_study(tmp_path, "single")  # models small and large, records without seeds (as before seeds existed)
    out = summarize(study_config(tmp_path, "single"))
    assert out["across_seeds"] == []
    assert "across_seeds" not in json.loads((tmp_path / "single" / "onsets.json").read_text())
    assert "Across training seeds" not in (tmp_path / "single" / "report.html").read_text()


def test_spread_and_overlap_on_constructed_onsets():
    runs = ["m", "m@seed1", "m@seed2"]
    apart = SeedOnsets("m", "x", [0, 1, 2], runs, [100, 400, 250], [[80, 120], [350, 450], [200, 300]])
    assert apart.spread == 300 and apart.interval_width == 100 and apart.intervals_overlap is False
    close = SeedOnsets("m", "x", [0, 1], ["m", "m@seed1"], [100, 110], [[80, 130], [90, 140]])
    assert close.spread == 10 and close.intervals_overlap is True
    one = SeedOnsets("m", "x", [0, 1], ["m", "m@seed1"], [100, math.nan], [[80, 130], [math.nan, math.nan]])
    assert math.isnan(one.spread) and one.with_onset == 1 and one.intervals_overlap is None
    # from a table and per-run onsets: the runs are grouped by base model, in seed order
    table = pd.DataFrame({"model": ["m@seed2", "m", "n"], "base_model": ["m", "m", "n"], "seed": [2, 0, 0]})
    found = Onsets(["x"], 0.5, 2, steps={("m", "x"): 10.0, ("m@seed2", "x"): 30.0, ("n", "x"): 5.0})
    (entry,) = seed_onsets(table, found)
    assert (entry.base_model, entry.seeds, entry.steps, entry.spread) == ("m", [0, 2], [10.0, 30.0], 20.0)

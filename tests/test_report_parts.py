"""The pieces of the end-of-sweep summary, each on a constructed case with a known answer: reading a study
(study.py), resampling it (resample.py), the table's cross-step and interval columns (table.py), onsets.json
(onset_results.py), what is printed (console.py), and the settings the summary takes from the config."""

from __future__ import annotations

import json
import math
from collections import Counter

import numpy as np
import pandas as pd
import pytest

from ckptstudy.config import compose_config
from ckptstudy.record import Identity, Outcome, Record, RecordArrays, Scalars
from ckptstudy.report import console
from ckptstudy.report.onset_results import Onsets, write_onsets
from ckptstudy.report.resample import bootstrap_settings, resample_records
from ckptstudy.report.study import drawn_heads, load_study
from ckptstudy.report.summary import cross_step_settings
from ckptstudy.report.table import add_cross_step_columns, add_interval_columns, trajectory_table
from ckptstudy.stats.specialization import jaccard_chance
from report_study import SETTINGS, STEPS, write_study


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("parts")
    write_study(root)
    return root


# --- study.py ---------------------------------------------------------------------------------------------------


def test_a_study_reads_heads_samples_and_raw_data_each_from_its_own_section(demo):
    study = load_study(demo, "demo")
    assert study.name == "demo" and study.directory == demo / "demo" and study.converted == []
    assert len(study.records) == 2 * len(STEPS) and all(r.path.parent.name == r.model for r in study.records)
    ok = next(r for r in study.records if r.ok)
    assert set(ok.heads()) == {"x/score"} and set(ok.raw()) == {"x/generated"}  # the [40, 7] ids are raw data
    assert {"x/rate", "x/score_max"} <= set(ok.samples()) and ok.samples()["x/rate"].statistic == "mean"
    failed = next(r for r in study.records if not r.ok)
    assert failed.arrays is None and failed.heads() == {} and failed.samples() == {}


def test_drawn_heads_are_the_2d_per_head_arrays_never_raw_data_of_the_same_shape():
    record = Record(Identity("m", 1), Outcome("ok")).attach(
        RecordArrays(
            heads={"a/score": np.zeros((2, 4)), "a/by_class": np.zeros((2, 4, 9))},
            raw={"a/ids": np.zeros((2, 4))},  # raw data with the layer x head shape: the old shape guess drew it
        )
    )
    assert set(drawn_heads(record)) == {"a/score"}
    failed = Record(Identity("m", 2), Outcome("failed")).attach(RecordArrays(heads={"a/score": np.zeros((2, 4))}))
    assert drawn_heads(failed) == {}


# --- resample.py ------------------------------------------------------------------------------------------------


def test_bootstrap_settings_are_all_required_and_named_when_missing():
    assert bootstrap_settings(compose_config([]).report.bootstrap) == {
        "n": 2000,
        "level": 0.95,
        "seed": 0,
        "min_prompts": 5,
    }  # conf/config.yaml's values
    with pytest.raises(ValueError, match=r"report\.bootstrap has no seed, min_prompts"):
        bootstrap_settings({"n": 10, "level": 0.9})


def test_resampling_recomputes_the_records_intervals_and_skips_a_rewritten_arrays_file(tmp_path, caplog):
    write_study(tmp_path)
    study = load_study(tmp_path, "demo")
    out = resample_records(study.records, SETTINGS)
    record = next(r for r in study.records if r.model == "small" and r.step == 64)
    assert out.intervals[("small", 64)]["x/rate"] == pytest.approx(record.scalars.ci["x/rate"])
    assert out.replicates[("small", 64)]["x/rate"].shape == (SETTINGS["n"],) and out.seconds > 0
    assert ("large", 64) not in out.intervals  # the failed checkpoint
    # an arrays file rewritten after its record (a killed writer) gives no intervals, and says so
    np.savez(record.arrays_path, nothing=np.zeros(1))
    again = resample_records(load_study(tmp_path, "demo").records, SETTINGS)
    assert ("small", 64) not in again.intervals and ("small", 32) in again.intervals
    assert "small step 64: no intervals" in caplog.text


# --- table.py ---------------------------------------------------------------------------------------------------


def effects_study(effects: dict[int, list[float]]) -> tuple[pd.DataFrame, list[Record]]:
    """A table and records with one 2 x 4 `icl/ablation_effect` per step of model m."""
    records = [
        Record(Identity("m", s), Outcome("ok")).attach(
            RecordArrays(heads={"icl/ablation_effect": np.float32(e).reshape(2, 4)})
        )
        for s, e in effects.items()
    ]
    table = pd.DataFrame({"model": "m", "step": list(effects), "status": "ok"})
    return table, records


def test_cross_step_overlap_is_one_for_the_same_heads_zero_for_others_nan_below_the_bar():
    same = [0.9, 0.8, 0.7, 0, 0, 0, 0, 0]
    table, records = effects_study(
        {
            0: same,
            1: [0.5, 0.9, 0.7, 0, 0.1, 0, 0, 0],  # the same three heads, in another order
            2: [0, 0, 0, 0.9, 0.8, 0.7, 0, 0],  # three other heads
            3: [0, 0, 0, 0.001, 0.001, 0.001, 0, 0],  # a total below the bar: a ranking of noise
            4: same,  # after a step below the bar: nothing to compare with
        }
    )
    out = add_cross_step_columns(table, records, k=3, min_total=0.01)
    values = out["icl/top3_jaccard_prev"].tolist()
    assert math.isnan(values[0]) and values[1] == 1.0 and values[2] == 0.0
    assert math.isnan(values[3]) and math.isnan(values[4])
    assert out["icl/top3_jaccard_prev_chance"].tolist() == pytest.approx([jaccard_chance(8, 3)] * 5)


def test_interval_columns_follow_their_value_and_are_nan_where_a_step_has_none():
    table = pd.DataFrame({"model": "m", "step": [0, 1], "status": "ok", "a/x": [1.0, 2.0], "a/y": [3.0, 4.0]})
    out = add_interval_columns(table, {("m", 1): {"a/x": [1.5, 2.5]}})
    assert list(out.columns) == ["model", "step", "status", "a/x", "a/x/ci_low", "a/x/ci_high", "a/y"]
    assert math.isnan(out["a/x/ci_low"][0]) and out["a/x/ci_high"][1] == 2.5
    assert add_interval_columns(table, {}) is table


def test_the_table_has_no_cross_step_column_without_icl_heads(demo):
    study = load_study(demo, "demo")
    assert "icl/top3_jaccard_prev" not in trajectory_table(study, {}, None, 0.0).columns
    assert cross_step_settings(compose_config(["metrics=[repetition]"]).metrics) == {
        "top_k": None,
        "min_effect_total": 0.0,
    }
    assert cross_step_settings(compose_config([]).metrics) == {"top_k": 3, "min_effect_total": 0.01}


# --- onset_results.py -------------------------------------------------------------------------------------------


def found_onsets() -> Onsets:
    return Onsets(
        ["a/x", "a/y"],
        0.5,
        2,
        steps={("m", "a/x"): 120.0, ("m", "a/y"): math.nan, ("n", "a/x"): 30.0},
        intervals={("m", "a/x"): {"ci": [100.0, 140.0], "with_onset": 0.97}, ("n", "a/x"): {"ci": [math.nan] * 2}},
    )


def test_onsets_json_holds_the_rule_steps_and_intervals(tmp_path):
    write_onsets(tmp_path / "onsets.json", found_onsets(), SETTINGS)
    data = json.loads((tmp_path / "onsets.json").read_text())
    assert data["rule"] == {"fraction": 0.5, "persist": 2, "bootstrap": SETTINGS}
    assert data["onsets"]["a/x@m"] == {"step": 120.0, "ci": [100.0, 140.0], "with_onset": 0.97}
    assert data["onsets"]["a/y@m"] == {"step": None, "ci": None, "with_onset": None}  # no held change
    assert data["onsets"]["a/x@n"]["ci"] == [None, None]


def test_a_models_onsets_for_wandb_are_its_finite_values():
    assert found_onsets().of_model("m") == {"a/x": 120.0, "a/x/ci_low": 100.0, "a/x/ci_high": 140.0}
    assert found_onsets().of_model("n") == {"a/x": 30.0}


# --- console.py -------------------------------------------------------------------------------------------------


def test_nan_reasons_differing_only_in_numbers_count_as_one():
    records = [
        Record(Identity("m", 1), scalars=Scalars(nan_reasons={"s/k50": "max |z| 2.66 < 3", "s/x": "no loop"})),
        Record(Identity("m", 2), scalars=Scalars(nan_reasons={"s/k50": "max |z| 4.2 < 3"})),
    ]
    assert console.nan_reason_counts(records) == Counter({"s/k50: max |z| # < #": 2, "s/x: no loop": 1})


def test_notes_show_the_common_reasons_and_the_recomputed_records():
    reasons = Counter({f"a/{i}: why": 10 - i for i in range(10)})
    recomputed = [Record(Identity("m", s), Outcome(recomputed_because="definitions changed")) for s in range(3)]
    lines = console.note_lines(reasons, recomputed)
    assert lines[0] == "NaN values: 55 (each has its reason in the record's nan_reasons):"
    assert lines[1] == "    10 x a/0: why" and len(lines) == 1 + console.SHOWN_REASONS + 2
    assert lines[-2] == "  ... and 2 other reasons"
    assert lines[-1] == "recomputed 3 existing record(s): 3 x definitions changed"
    assert console.note_lines(Counter(), []) == []
    old = Record(Identity("m", 1), format=1)
    assert console.note_lines(Counter(), [], [old, old]) == [
        "read 2 record(s) of format 1 through a converter (record format is now 2; a sweep of the same config "
        "rewrites them)"
    ]


def test_printed_summary_names_onsets_flags_and_files(tmp_path, capsys):
    table = pd.DataFrame(
        {
            "model": "m",
            "step": [0, 1, 2],
            "status": ["ok", "ok", "failed"],
            "identical_weights_as": ["1", "0", ""],
            "nonfinite": ["", "weights", ""],
            "a/x": [0.1, 0.2, math.nan],
        }
    )
    files = console.file_lines(tmp_path, tmp_path / "t.csv", tmp_path / "missing.png", tmp_path / "r.html")
    console.print_summary(table, ["a/x"], found_onsets(), tmp_path, files, ["a note"])
    out = capsys.readouterr().out
    for line in (
        "== trajectories (3 checkpoints) ==",
        "onset m a/x: ~step 120 (interval 100-140)",
        "onset m a/y: no change",
        "onset n a/x: ~step 30\n",  # an interval with NaN bounds is not printed
        "WARNING m step 0: weights identical to step(s) 1",
        "WARNING m step 1: non-finite weights (see the record's warnings)",
        f"FAILED m step 2: see {tmp_path}/records/m/step2.json",
        f"results: {tmp_path / 't.csv'}",
        f"report:  {tmp_path / 'r.html'}",
        "a note",
    ):
        assert line in out, line
    assert "plot:" not in out and "W&B:" not in out  # neither exists


def test_the_report_lists_the_interval_method_of_each_metric():
    from ckptstudy.report.sections import interval_methods

    methods = {("m", 1): {"a": "wilson", "b": "band"}, ("m", 2): {"a": "wilson", "c": "studentized"}}
    assert interval_methods(methods) == [
        {"method": "band", "metrics": ["b"]},
        {"method": "studentized", "metrics": ["c"]},
        {"method": "wilson", "metrics": ["a"]},
    ]

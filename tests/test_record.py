"""The typed record (`ckptstudy.record`): its file round trip by section, refusal of what this version cannot read,
the format-1 converter (a record written by the flat-dict code before it, built here the way that code wrote it),
and what happens to a format-1 record: a job recomputes it, the summary reads it."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import logging
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ckptstudy import fingerprint, results
from ckptstudy.config import compose_config
from ckptstudy.job import run_job
from ckptstudy.record import (
    FORMAT,
    ArraysFile,
    Identity,
    Outcome,
    Provenance,
    Record,
    RecordArrays,
    RecordFormatError,
    Scalars,
    from_json,
)
from ckptstudy.report.summary import summarize
from ckptstudy.stats.bootstrap import Sample, encode, statistic
from report_study import study_config, write_study

CONFIG = {"model": {"name": "m", "n_layers": 2, "n_heads": 4}, "seed": 0}


def full_record() -> tuple[Record, RecordArrays]:
    """A record with every section filled, and arrays of every kind (a raw array with the layer x head shape too)."""
    record = Record(
        Identity("m@seed1", 8, "s", base_model="m", seed=1, revision="local:/x/step8"),
        Outcome("ok", seconds=1.5, finished_at="2026-01-01T00:00:00", warnings=["w"], recomputed_because="force=true"),
        Scalars(
            metrics={"a/x": 0.5, "a/nan": math.nan},
            nan_reasons={"a/nan": "nothing to measure"},
            no_interval={"a/nan": "NaN"},
            ci={"a/x": [0.4, 0.6]},
            ci_reasons={},
            ci_method={"a/x": "percentile"},
        ),
        Provenance(config=CONFIG, config_hash="abc", definitions={"probes": 3, "a": 2}, weights_sha256="f" * 64),
    )
    arrays = RecordArrays(
        heads={"a/score": np.arange(8.0).reshape(2, 4), "a/by_class": np.ones((2, 4, 3), np.float32)},
        raw={"a/ids": np.arange(8).reshape(2, 4), "a/periods": np.array([2, 3])},
        samples={"a/x": Sample("mean", np.array([0.0, 1.0, 0.5, 0.5]), prompts="p")},
    )
    return record, arrays


def test_a_record_round_trips_by_section_and_its_npz_is_namespaced(tmp_path):
    record, arrays = full_record()
    path = tmp_path / "step8.json"
    results.write_record(path, record, arrays)
    stored = json.loads(path.read_text())
    assert stored["format"] == FORMAT and {"identity", "outcome", "scalars", "provenance", "arrays"} <= set(stored)
    assert "skipped" not in stored["outcome"] and "_path" not in json.dumps(stored)
    back = results.read_record(path)
    assert back.path == path and back.format == FORMAT and back.arrays == ArraysFile("step8.npz", record.arrays.sha256)
    for section in ("identity", "outcome", "provenance"):
        assert getattr(back, section) == getattr(record, section), section
    assert math.isnan(back.scalars.metrics["a/nan"]) and back.scalars.ci == record.scalars.ci
    assert back.scalars.nan_reasons == record.scalars.nan_reasons
    with np.load(back.arrays_path) as npz:
        assert set(npz.files) == {"heads/a/score", "heads/a/by_class", "raw/a/ids", "raw/a/periods"} | {
            "samples/a/x/spec",
            "samples/a/x/values",
        }
    assert set(back.heads()) == {"a/score", "a/by_class"} and set(back.raw()) == {"a/ids", "a/periods"}
    np.testing.assert_array_equal(back.raw()["a/ids"], arrays.raw["a/ids"])  # layer x head shaped, still raw
    assert back.heads()["a/by_class"].dtype == np.float32
    assert statistic("a/x", back.samples()) == 0.5 and results.arrays_mismatch(back) is None


def test_a_record_this_version_cannot_read_is_refused_naming_why(tmp_path, caplog):
    record, _ = full_record()
    data = record.to_json()
    newer = {**data, "format": FORMAT + 1}
    with pytest.raises(RecordFormatError, match=rf"record format {FORMAT + 1} is not one this version reads"):
        from_json(newer)
    unknown = {**data, "scalars": {**data["scalars"], "p_values": {}}}
    with pytest.raises(RecordFormatError, match=r"section 'scalars' has unknown field\(s\) \['p_values'\]"):
        from_json(unknown)
    path = tmp_path / "step8.json"
    path.write_text(json.dumps(newer))
    with caplog.at_level(logging.WARNING):
        assert results.read_record(path) is None  # its job runs again, the summary leaves it out
    assert "unreadable" in caplog.text and "format 3" in caplog.text
    assert from_json(data).scalars.metrics.keys() == record.scalars.metrics.keys()  # the opposite: it reads


# --- format 1 -------------------------------------------------------------------------------------------------


def format1_dict(record: Record) -> dict:
    """The flat dict the code before typed records wrote for `record` (no `format`; empty warnings left out)."""
    flat = {}
    for section in (record.identity, record.outcome, record.scalars, record.provenance):
        flat.update(dataclasses.asdict(section))
    del flat["skipped"], flat["extra"]
    flat = {k: v for k, v in flat.items() if v is not None}
    if not flat.get("warnings"):
        flat.pop("warnings", None)
    return flat


def write_format1(path: Path, record: Record, arrays: RecordArrays | None) -> None:
    """Write `record` as that code did: heads and raw arrays under one name space, samples under `bootstrap/`,
    every `/` of a name stored as `__`, the npz's name and sha256 as `arrays` and `arrays_sha256`."""
    flat = format1_dict(record)
    if arrays is not None:
        merged = {**arrays.heads, **arrays.raw}
        for key, sample in arrays.samples.items():
            merged.update(encode(key, sample))  # the prefix `bootstrap/` of format 1
        buffer = io.BytesIO()
        np.savez_compressed(buffer, **{k.replace("/", "__"): np.asarray(v) for k, v in merged.items()})
        data = buffer.getvalue()
        path.with_suffix(".npz").write_bytes(data)
        flat.update(arrays=path.with_suffix(".npz").name, arrays_sha256=hashlib.sha256(data).hexdigest())
    path.write_text(json.dumps(flat, indent=1, sort_keys=True))


def test_a_format1_record_is_read_through_the_converter_with_every_field_in_its_section(tmp_path):
    record, arrays = full_record()
    path = tmp_path / "step8.json"
    write_format1(path, record, arrays)
    flat = json.loads(path.read_text())
    assert "format" not in flat and "identity" not in flat and flat["status"] == "ok"  # the old layout
    flat.update(_path="/elsewhere", some_old_field=7)  # an injected path, a field no section has
    path.write_text(json.dumps(flat))
    old = results.read_record(path)
    assert old.format == 1 and old.path == path and old.provenance.extra == {"some_old_field": 7}
    assert old.identity == record.identity and old.outcome == record.outcome
    assert old.provenance == dataclasses.replace(record.provenance, extra={"some_old_field": 7})
    assert old.scalars.nan_reasons == record.scalars.nan_reasons and old.scalars.ci == record.scalars.ci
    # heads by the stored config's (n_layers, n_heads) = (2, 4), 3-D ones too; the rest raw; samples decoded
    assert set(old.heads()) == {"a/score", "a/by_class", "a/ids"}  # format 1 cannot tell raw ids of that shape
    assert set(old.raw()) == {"a/periods"} and statistic("a/x", old.samples()) == 0.5
    assert results.arrays_mismatch(old) is None
    # the opposite: no shape in the config: any 2-D array is a head array, a 3-D one is raw
    write_format1(path, dataclasses.replace(record, provenance=Provenance(config={})), arrays)
    shapeless = results.read_record(path)
    assert set(shapeless.heads()) == {"a/score", "a/ids"} and set(shapeless.raw()) == {"a/by_class", "a/periods"}


def test_a_format1_record_rewritten_is_converted_with_its_arrays(tmp_path):
    record, arrays = full_record()
    path = tmp_path / "step8.json"
    write_format1(path, record, arrays)
    old = results.read_record(path)
    old.outcome.warnings.append("rewritten")
    results.write_record(path, old)  # no arrays given: a format-2 JSON must not name the format-1 npz
    back = results.read_record(path)
    assert (
        back.format == FORMAT and back.outcome.warnings == ["w", "rewritten"] and results.arrays_mismatch(back) is None
    )
    with np.load(back.arrays_path) as npz:
        assert "heads/a/score" in npz.files and "samples/a/x/spec" in npz.files and "a__score" not in npz.files
    assert statistic("a/x", back.samples()) == 0.5 and set(back.heads()) == set(old.heads())


def test_a_format1_record_is_never_reused_and_a_current_one_is():
    record, _ = full_record()
    current = dataclasses.replace(record, outcome=Outcome("ok"))
    old = from_json(format1_dict(record))
    assert old.format == 1 and fingerprint.stale_reason(old, current, force=False) == "record format 1 -> 2"
    same = from_json(record.to_json())
    assert same.format == FORMAT and fingerprint.stale_reason(same, current, force=False) is None


def rewrite_as_format1(study_dir: Path) -> int:
    """Rewrite every record of a study in format 1 (what a study made before typed records holds); how many."""
    paths = sorted(study_dir.glob("records/*/step*.json"))
    for path in paths:
        record = results.read_record(path)
        arrays = None
        if record.arrays is not None:
            arrays = RecordArrays(record.heads(), record.raw(), record.samples())
            record.arrays_path.unlink()
        write_format1(path, record, arrays)
    return len(paths)


def test_the_summary_of_a_format1_study_is_the_summary_of_the_same_study_in_format2(tmp_path, capsys):
    for root in ("new", "old"):
        write_study(tmp_path / root)
    assert rewrite_as_format1(tmp_path / "old" / "demo") == 22
    new = summarize(study_config(tmp_path / "new"))
    assert "through a converter" not in capsys.readouterr().out
    old = summarize(study_config(tmp_path / "old"))
    assert "read 22 record(s) of format 1 through a converter" in capsys.readouterr().out
    pd.testing.assert_frame_equal(pd.read_csv(new["table"]), pd.read_csv(old["table"]))  # intervals included
    assert new["onsets"] == old["onsets"] and new["onset_intervals"] == old["onset_intervals"]
    heads = {r.label: r.heads() for r in old["report_data"].records if r.ok}
    assert heads and all(set(h) == {"x/score"} for h in heads.values())  # the [40, 7] raw ids are not heads


def test_a_job_recomputes_a_format1_record_then_reuses_its_own(micro_suite, tmp_path):
    overrides = [
        f"paths.root={tmp_path}",
        f"paths.suite='{micro_suite}'",
        "experiment=smoke",
        "logger=none",
        "metrics=[repetition]",
        "step=2",
    ]
    first = run_job(compose_config(overrides))
    assert first.ok and first.format == FORMAT
    write_format1(first.path, first, RecordArrays(first.heads(), first.raw(), first.samples()))
    assert results.read_record(first.path).format == 1
    again = run_job(compose_config(overrides))
    assert again.ok and not again.outcome.skipped
    assert again.outcome.recomputed_because == f"record format 1 -> {FORMAT}"
    assert again.scalars.metrics.keys() == first.scalars.metrics.keys()
    rewritten = results.read_record(first.path)
    assert rewritten.format == FORMAT and "rep/generated_ids" in rewritten.raw()
    third = run_job(compose_config(overrides))  # the opposite: a current-format record is reused
    assert third.outcome.skipped and third.outcome.recomputed_because == again.outcome.recomputed_because

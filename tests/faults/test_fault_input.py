"""Faults 6 and 7: bad input and an output directory that cannot take the results are refused before
any weights load, with a message naming the value (or directory) and what is valid."""

from __future__ import annotations

import json
import shutil
from collections import namedtuple

import fault_helpers
import pytest
import yaml
from fault_helpers import copy_suite, local_model, overrides, read, run
from omegaconf import OmegaConf

from ckptstudy import results
from ckptstudy.config import compose_config

loads, out_root = fault_helpers.loads, fault_helpers.out_root  # fixtures


def refused(record: dict, loads: list, *parts: str) -> str:
    """The record failed before any weights loaded, its message naming every part."""
    message = record.outcome.error["message"]
    assert record.outcome.status == "failed", record
    assert loads == [] and record.provenance.weights_sha256 is None, "weights were loaded before the refusal"
    for part in parts:
        assert part in message, (part, message)
    return message


# -- 6. bad input --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("override", "parts"),
    [
        ("loops.min_period=0", ["min_period must be >= 1, got 0"]),
        ("loops.max_period=1", ["max_period must be >= min_period (2), got 1"]),
        ("loops.min_copies=1", ["min_copies must be >= 2, got 1"]),
        ("loops.new_tokens=3", ["loops.new_tokens=3", ">= 4"]),
        ("metrics.repetition.max_cycles=0", ["metrics.repetition.max_cycles=0", "an integer >= 1"]),
        ("probes.natural.n=0", ["probes.natural.n=0", ">= 1"]),
    ],
)
def test_out_of_range_parameters_are_refused_before_loading(micro_suite, out_root, loads, override, parts):
    # when the config is composed ...
    with pytest.raises(ValueError) as err:
        compose_config(overrides(out_root, micro_suite, "step=1", override))
    assert all(part in str(err.value) for part in parts), str(err.value)
    # ... and by the job, when the value reaches it after composition (as from a launcher): a failure record
    key, value = override.split("=")
    refused(run(overrides(out_root, micro_suite, "step=1"), edit=lambda cfg: set_value(cfg, key, value)), loads, *parts)


def set_value(cfg, key: str, value: str) -> None:
    OmegaConf.update(cfg, key, yaml.safe_load(value), merge=False)


def test_metric_parameter_of_any_family_is_checked_before_loading(micro_suite, out_root, loads):
    args = overrides(out_root, micro_suite, "step=1", metrics="[repetition,low_info]")
    refused(run(args, edit=lambda cfg: set_value(cfg, "metrics.low_info.quantile", "1.5")), loads, "quantile", "1.5")


@pytest.mark.parametrize("content", ["", "   \n\n  \t", "short text."])
def test_empty_or_too_short_probe_text_is_refused_before_loading(micro_suite, out_root, tmp_path, loads, content):
    (tmp_path / "probe.txt").write_text(content)
    args = overrides(out_root, micro_suite, "step=1", "probes.source=files", f"probes.files_glob='{tmp_path}/*.txt'")
    message = refused(run(args), loads)
    assert "whitespace-only" in message if not content.strip() else "no passage has" in message


def test_tokenizer_without_eos_or_bos_is_refused_before_loading(micro_suite, out_root, tmp_path, loads):
    suite = copy_suite(micro_suite, tmp_path / "suite", [1])
    config_path = suite / "step1" / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    del config["eos_token"], config["bos_token"]
    config_path.write_text(json.dumps(config))
    refused(run(overrides(out_root, suite, "step=1")), loads, "no EOS and BOS token", "eos_token=None")


def test_step_the_model_lacks_is_refused_naming_the_nearest_steps(micro_suite, out_root, loads):
    refused(run(overrides(out_root, micro_suite, "step=3")), loads, "step=3", "nearest valid steps: [1, 2, 4]")
    refused(run(overrides(out_root, micro_suite, "step=banana")), loads, "step='banana' is not a step number")
    # failure records of steps that never resolved do not break the table built from the records
    table = results.results_table(results.load_records(out_root, "smoke"))
    assert sorted(table["status"]) == ["failed", "failed"] and sorted(table["step"]) == [-1, 3]


def test_a_checkpoint_of_another_architecture_than_its_yaml_is_refused_before_loading(
    micro_suite, out_root, tmp_path, loads
):
    from transformers import GPT2Config, GPT2LMHeadModel

    checkpoint = tmp_path / "gpt2" / "step1"
    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=2048, n_positions=128)).save_pretrained(
        checkpoint
    )
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(micro_suite / "step1" / name, checkpoint / name)
    record = run([*overrides(out_root, micro_suite, "step=1"), *local_model(f"{checkpoint.parent}/step{{step}}", [1])])
    refused(record, loads, "model_type 'gpt2'", "model.arch=gpt_neox; set model.arch=gpt2", str(checkpoint))


# -- 7. an output directory that cannot take the results ----------------------------------------------------


def test_unwritable_results_directory_is_refused_before_computing(micro_suite, tmp_path, loads):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    record = run(overrides(blocker / "out", micro_suite, "step=1"))  # root, even as uid 0, cannot be created
    message = refused(record, loads, "is not writable", str(blocker / "out"))
    assert record.outcome.error["type"] == "OutputError" and record.outcome.unwritten is not None, message


def test_full_disk_is_refused_before_computing(micro_suite, out_root, loads, monkeypatch):
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(results.shutil, "disk_usage", lambda path: usage(10**9, 10**9, 0))
    record = run(overrides(out_root, micro_suite, "step=1"))
    refused(record, loads, "0.0 MB free", "50 MB")
    assert read(out_root, 1).outcome.status == "failed"  # the small failure record still fits
    monkeypatch.undo()
    assert run(overrides(out_root, micro_suite, "step=1")).outcome.status == "ok"  # space freed: measured

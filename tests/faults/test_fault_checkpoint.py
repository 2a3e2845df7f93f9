"""Faults 3, 8 and 9: bad checkpoint files (truncated weights, missing config.json, a revision that does
not exist), untrusted weights (a pickle that would run code, remote code), and stale records (other
checkpoint files, another config, force)."""

from __future__ import annotations

import json
import os
import shutil

import fault_helpers
import pytest
import torch
from fault_helpers import (
    copy_suite,
    local_model,
    make_hub_cache,
    overrides,
    read,
    run,
    set_refs,
    tree_digest,
)

import ckptstudy

loads, offline_hub, out_root = fault_helpers.loads, fault_helpers.offline_hub, fault_helpers.out_root  # fixtures

# -- 3. corrupt or missing files, a revision that does not exist ------------------------------------------


def test_truncated_weights_fail_alone_naming_the_file_and_a_fixed_file_is_recomputed(micro_suite, out_root, tmp_path):
    suite = copy_suite(micro_suite, tmp_path / "suite", [1, 2, 4])
    weights = suite / "step2" / "model.safetensors"
    good = weights.read_bytes()
    weights.write_bytes(good[: len(good) // 2])
    others = {s: tree_digest(suite / f"step{s}") for s in (1, 4)}
    records = {s: run(overrides(out_root, suite, f"step={s}")) for s in (1, 2, 4)}
    assert records[1].outcome.status == "ok" and records[4].outcome.status == "ok"
    failed = records[2]
    assert failed.outcome.status == "failed" and failed.outcome.error["type"] == "CheckpointError"
    assert str(weights) in failed.outcome.error["message"] and "truncated" in failed.outcome.error["message"]
    assert failed.provenance.weights_sha256 is None  # refused before loading
    assert {s: tree_digest(suite / f"step{s}") for s in (1, 4)} == others  # other steps untouched
    # the failure record is never reused: a re-run tries again (and fails again), a fixed file is measured
    again = run(overrides(out_root, suite, "step=2"))
    assert not again.outcome.skipped and again.outcome.status == "failed"
    weights.write_bytes(good)
    fixed = run(overrides(out_root, suite, "step=2"))
    assert fixed.outcome.status == "ok" and fixed.outcome.recomputed_because == "previous record failed"
    assert read(out_root, 2).outcome.status == "ok"


def test_missing_config_json_names_the_file(micro_suite, out_root, tmp_path, loads):
    suite = copy_suite(micro_suite, tmp_path / "suite", [2])
    (suite / "step2" / "config.json").unlink()
    record = run(overrides(out_root, suite, "step=2"))
    assert record.outcome.status == "failed" and loads == []
    assert f"no config.json in {suite / 'step2'}" in record.outcome.error["message"]


def test_suite_copy_with_one_checkpoint_measures_it_and_never_trains_the_rest(micro_suite, out_root, tmp_path, loads):
    # a job never trains the suite: a missing step fails fast naming its directory and `make suite`
    from ckptstudy.model import suite as suite_module

    def no_training(*args):
        raise AssertionError("a job trained the suite")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(suite_module, "_train", no_training)
        patch.setattr(suite_module, "train_tokenizer", no_training)
        suite = copy_suite(micro_suite, tmp_path / "suite", [2], manifest=False)
        before = tree_digest(suite)
        assert run(overrides(out_root, suite, "step=2")).outcome.status == "ok"
        missing = run(overrides(out_root, suite, "step=4"))
        assert missing.outcome.status == "failed" and missing.outcome.error["type"] == "CheckpointError"
        message = missing.outcome.error["message"]
        assert f"no checkpoint directory {suite / 'step4'}" in message and "`make suite`" in message, message
        assert tree_digest(suite) == before and sorted(p.name for p in suite.parent.iterdir()) == ["out", "suite"]
        # a finished build missing that step says so; a build of another recipe is refused even where a step exists
        shutil.copy2(micro_suite / "suite.json", suite / "suite.json")
        assert "the build there lacks this step" in run(overrides(out_root, suite, "step=4")).outcome.error["message"]
        other = {**json.loads((suite / "suite.json").read_text()), "spec_hash": "0" * 16}
        (suite / "suite.json").write_text(json.dumps(other))
        refused = run(overrides(out_root, suite, "step=2", "force=true"))
        assert (
            refused.outcome.status == "failed" and "holds a build of another recipe" in refused.outcome.error["message"]
        )
    assert len(loads) == 1  # only step 2's first, successful job loaded weights


def test_revision_missing_from_the_cache_fails_and_is_measured_once_cached(micro_suite, out_root, offline_hub):
    repo = "FakeOrg/micro"
    make_hub_cache(offline_hub, repo, {"a" * 40: micro_suite / "step1"}, {"step1000": "a" * 40})
    args = [*overrides(out_root, micro_suite, "step=2000"), "model=pythia-14m", f"model.repo={repo}"]
    record = run(args)
    assert record.outcome.status == "failed"
    assert (
        f"{repo} revision step2000" in record.outcome.error["message"]
        and "HF_HUB_OFFLINE" in record.outcome.error["message"]
    )
    set_refs(offline_hub, repo, {"step2000": "a" * 40})  # the revision is downloaded now
    again = run(args)
    assert again.outcome.status == "ok" and again.outcome.recomputed_because == "previous record failed"


# -- 8. untrusted weights ------------------------------------------------------------------------------------


class Payload:
    """Unpickling this calls open(path, "w"): it would create `path` (a stand-in for arbitrary code)."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_pickle_that_would_run_code_is_refused_and_never_unpickled(micro_suite, out_root, tmp_path, loads):
    # the payload is live: an unrestricted unpickler runs it
    probe_marker = tmp_path / "payload-ran"
    torch.save({"weight": Payload(probe_marker)}, tmp_path / "probe.bin")
    torch.load(tmp_path / "probe.bin", weights_only=False)
    assert probe_marker.exists()

    marker = tmp_path / "pwned"
    checkpoint = tmp_path / "untrusted" / "step1"
    shutil.copytree(micro_suite / "step1", checkpoint)
    (checkpoint / "model.safetensors").unlink()
    torch.save({"gpt_neox.embed_in.weight": Payload(marker)}, checkpoint / "pytorch_model.bin")
    record = run([*overrides(out_root, micro_suite, "step=1"), *local_model(f"{checkpoint.parent}/step{{step}}", [1])])
    assert not marker.exists()  # the payload never ran
    assert record.outcome.status == "failed" and loads == []
    message = record.outcome.error["message"]
    assert str(checkpoint / "pytorch_model.bin") in message and "refused as unsafe" in message


def test_loading_never_trusts_remote_code_and_unpickles_tensors_only(micro_suite, monkeypatch):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ckptstudy.model.checkpoints import CheckpointSource, load_checkpoint

    seen = []
    for cls in (AutoModelForCausalLM, AutoTokenizer):
        real = cls.from_pretrained

        def spy(*args, _real=real, **kwargs):
            seen.append(kwargs)
            return _real(*args, **kwargs)

        monkeypatch.setattr(cls, "from_pretrained", spy)
    load_checkpoint(CheckpointSource("micro", 1, "local", str(micro_suite / "step1")))
    assert len(seen) == 2 and all(kwargs.get("trust_remote_code") is False for kwargs in seen)
    assert seen[-1].get("weights_only") is True  # the model load


# -- 9. stale records ----------------------------------------------------------------------------------------


def test_record_is_recomputed_when_checkpoint_files_or_config_change(micro_suite, out_root, tmp_path):
    suite = copy_suite(micro_suite, tmp_path / "suite", [2])
    first = run(overrides(out_root, suite, "step=2"))
    assert first.outcome.status == "ok" and first.provenance.package_version == ckptstudy.__version__
    assert first.provenance.checkpoint_fingerprint.startswith("local:")
    assert run(overrides(out_root, suite, "step=2")).outcome.skipped
    # other weights in the same place (same revision, same config): the files changed, the record is stale
    shutil.copy(micro_suite / "step4" / "model.safetensors", suite / "step2" / "model.safetensors")
    changed = run(overrides(out_root, suite, "step=2"))
    assert not changed.outcome.skipped and changed.outcome.recomputed_because.startswith("checkpoint files changed")
    assert changed.provenance.weights_sha256 != first.provenance.weights_sha256
    # a file rewritten with the same bytes (new mtime) is conservatively measured again too
    os.utime(suite / "step2" / "config.json", ns=(1, 1))
    assert run(overrides(out_root, suite, "step=2")).outcome.recomputed_because.startswith("checkpoint files changed")
    assert run(overrides(out_root, suite, "step=2")).outcome.skipped
    other = run(overrides(out_root, suite, "step=2", "metrics.repetition.max_cycles=4"))
    assert other.outcome.recomputed_because == "measurement config changed"
    forced = run(overrides(out_root, suite, "step=2", "metrics.repetition.max_cycles=4", "force=true"))
    assert forced.outcome.recomputed_because == "force=true"


def test_hub_record_is_recomputed_when_the_revision_moves_to_another_commit(micro_suite, out_root, offline_hub):
    repo = "FakeOrg/micro"
    commits = {"1" * 40: micro_suite / "step1", "4" * 40: micro_suite / "step4"}
    make_hub_cache(offline_hub, repo, commits, {"step1000": "1" * 40})
    args = [*overrides(out_root, micro_suite, "step=1000"), "model=pythia-14m", f"model.repo={repo}"]
    first = run(args)
    assert first.outcome.status == "ok" and first.provenance.checkpoint_fingerprint == "hub:" + "1" * 40
    assert run(args).outcome.skipped
    set_refs(offline_hub, repo, {"step1000": "4" * 40})  # the branch now points at other weights
    moved = run(args)
    old, new = "hub:" + "1" * 40, "hub:" + "4" * 40
    assert moved.outcome.recomputed_because == f"checkpoint files changed since the record was made ({old} -> {new})"
    assert moved.provenance.weights_sha256 != first.provenance.weights_sha256


@pytest.mark.parametrize("change", ["truncate", "garbage"])
def test_damaged_safetensors_is_named_before_loading(micro_suite, tmp_path, change):
    from ckptstudy.model.checkpoints import CheckpointError, CheckpointSource, inspect_checkpoint

    directory = tmp_path / "step1"
    shutil.copytree(micro_suite / "step1", directory)
    weights = directory / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[:-1] if change == "truncate" else b"not a safetensors file")
    with pytest.raises(CheckpointError, match="corrupt or truncated") as err:
        inspect_checkpoint(CheckpointSource("micro", 1, "local", str(directory)))
    assert str(weights) in str(err.value)

"""Hub loading through a fake Hugging Face cache (offline): revisions, weight hashes, clear failures."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ckptstudy import results
from conftest import run_cli, tiny_neox

REPO_ID = "FakeOrg/tiny-neox"


def make_fake_hub_cache(cache: Path, tokenizer, refs: dict[str, int]) -> dict[int, str]:
    """models--FakeOrg--tiny-neox with one snapshot per seed and refs/<branch> files pointing at them."""
    repo_dir = cache / f"models--{REPO_ID.replace('/', '--')}"
    commits = {}
    for seed in sorted(set(refs.values())):
        commit = f"{seed:040x}"
        snapshot = repo_dir / "snapshots" / commit
        tiny_neox(vocab_size=len(tokenizer), seed=seed).save_pretrained(snapshot)
        tokenizer.save_pretrained(snapshot)
        commits[seed] = commit
    (repo_dir / "refs").mkdir(parents=True, exist_ok=True)
    for branch, seed in refs.items():
        (repo_dir / "refs" / branch).write_text(commits[seed])
    return commits


@pytest.fixture
def fake_hub(tmp_path, tiny_tokenizer):
    cache = tmp_path / "hub"
    # step2000 serves the same weights as step1000: the integrity check must flag it
    make_fake_hub_cache(cache, tiny_tokenizer, {"step1000": 1, "step2000": 1, "step4000": 2})
    return {"HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


@pytest.mark.long  # a real multirun / two measuring subprocesses: left out of `make test-fast`
def test_offline_hub_sweep_loads_each_revision_and_flags_identical_weights(tmp_path, fake_hub):
    root = tmp_path / "out"
    proc = run_cli(
        [
            "-m",
            "model=pythia-14m",
            f"model.repo={REPO_ID}",
            "step=1000,2000,4000,8000",
            "logger=none",
            "experiment=smoke",  # the subject is hub loading, not the metrics: small probes
            "study=default",
        ],
        root,
        env=fake_hub,
    )
    records = {
        s: results.read_record(root / "default/records/pythia-14m" / f"step{s}.json") for s in (1000, 2000, 4000, 8000)
    }
    assert [records[s].outcome.status for s in (1000, 2000, 4000)] == ["ok"] * 3, proc.stdout + proc.stderr
    assert records[1000].identity.revision == f"{REPO_ID}@step1000"
    assert records[1000].provenance.weights_sha256 == records[2000].provenance.weights_sha256
    assert records[1000].provenance.weights_sha256 != records[4000].provenance.weights_sha256
    assert records[2000].provenance.identical_weights_as == [1000]
    assert "weights identical to step(s) 1000" in proc.stdout
    # a revision that is not cached fails fast, naming repo, revision and the fix
    failed = records[8000]
    assert failed.outcome.status == "failed"
    message = failed.outcome.error["message"]
    assert REPO_ID in message and "step8000" in message and "HF_HUB_OFFLINE" in message
    assert proc.returncode == 1 and "failed" in proc.stderr


def test_loaded_weights_differ_between_revisions(tmp_path, fake_hub, tiny_tokenizer, monkeypatch):
    import huggingface_hub.constants as hub_constants

    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", fake_hub["HF_HUB_CACHE"])
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    from ckptstudy.model.checkpoints import CheckpointSource, load_checkpoint, weights_sha256

    a, _ = load_checkpoint(CheckpointSource("t", 1000, "hub", REPO_ID, "step1000"))
    b, tok = load_checkpoint(CheckpointSource("t", 4000, "hub", REPO_ID, "step4000"))
    assert not torch.equal(a.gpt_neox.embed_in.weight, b.gpt_neox.embed_in.weight)
    assert weights_sha256(a) != weights_sha256(b)
    assert a.config._attn_implementation == "sdpa" and len(tok) == len(tiny_tokenizer)  # the fused kernel


@pytest.fixture
def offline_empty_hub(tmp_path, monkeypatch):
    """An empty HF cache, offline: nothing can be loaded from the hub."""
    import huggingface_hub.constants as hub_constants

    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path / "empty"))
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return tmp_path


def run_in_process(overrides: list[str], root: Path) -> dict:
    from ckptstudy.config import compose_config
    from ckptstudy.job import run_job

    return run_job(compose_config([f"paths.root={root}", "logger=none", *overrides]))


def test_single_run_without_cache_fails_fast_with_the_fix(offline_empty_hub):
    record = run_in_process(["model=pythia-160m", "step=1000"], offline_empty_hub / "out")
    message = record.outcome.error["message"]
    assert record.outcome.status == "failed" and record.outcome.error["type"] == "CheckpointError"
    assert "EleutherAI/pythia-160m" in message and "step1000" in message and "HF_HUB_OFFLINE" in message


def test_local_checkpoint_missing_is_a_clear_failure(tmp_path):
    missing = tmp_path / "nowhere"
    record = run_in_process(
        ["model=pythia-14m", "model.source=local", f"model.path='{missing}/step{{step}}'", "step=1000"],
        tmp_path / "out",
    )
    assert record.outcome.status == "failed"
    assert "missing checkpoint" in record.outcome.error["message"] and str(missing) in record.outcome.error["message"]


def test_unreachable_hub_without_cache_fails_fast(tmp_path, monkeypatch):
    # not offline: the endpoint (a closed local port) is checked once instead of retrying for minutes
    import huggingface_hub.constants as hub_constants

    from ckptstudy.model import checkpoints

    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path / "empty"))
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hub_constants, "ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    checkpoints._hub_reachable.cache_clear()
    record = run_in_process(["model=pythia-70m", "step=2000"], tmp_path / "out")
    checkpoints._hub_reachable.cache_clear()
    message = record.outcome.error["message"]
    assert "EleutherAI/pythia-70m revision step2000" in message and "cannot be reached" in message


def test_single_run_failure_exits_nonzero_with_the_message_and_no_traceback(offline_empty_hub):
    # the one CLI check of this file's failures: exit code and stderr of `ckptstudy` itself
    env = {"HF_HUB_CACHE": str(offline_empty_hub / "empty"), "HF_HUB_OFFLINE": "1"}
    proc = run_cli(["model=pythia-160m", "step=1000", "logger=none"], offline_empty_hub / "cli", env=env)
    assert proc.returncode == 1
    assert "EleutherAI/pythia-160m" in proc.stderr and "step1000" in proc.stderr and "Traceback" not in proc.stderr

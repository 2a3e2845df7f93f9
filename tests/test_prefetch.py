"""`ckptstudy-prefetch`: offline cache report against a fake HF cache, and the download calls
(repo, revision, weights-only patterns, parallel revisions) with snapshot_download replaced."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from ckptstudy.model import hubcache
from ckptstudy.tools import prefetch
from test_hub_loading import REPO_ID, make_fake_hub_cache

REPO_FOLDER = f"models--{REPO_ID.replace('/', '--')}"
FAKE_MODEL = ["model=pythia-14m", f"model.repo={REPO_ID}"]


def no_network(*args, **kwargs):
    raise AssertionError("prefetch contacted the hub")


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """An empty HF cache that huggingface_hub reads (constants patched, as ckptstudy reads them)."""
    import huggingface_hub.constants as hub_constants

    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(cache))
    return cache


@pytest.fixture
def offline(monkeypatch):
    import huggingface_hub.constants as hub_constants

    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hubcache, "snapshot_download", no_network)
    monkeypatch.setattr(hubcache, "remote_files", no_network)


@pytest.fixture
def online(monkeypatch):
    import huggingface_hub.constants as hub_constants

    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")


def partial_revision(cache: Path, revision: str) -> None:
    """A revision whose download stopped after config.json (no weights, no tokenizer)."""
    commit = "f" * 40
    snapshot = cache / REPO_FOLDER / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    (cache / REPO_FOLDER / "refs" / revision).write_text(commit)


def test_offline_reports_cached_and_missing_revisions_and_exits_nonzero(hub_cache, offline, tiny_tokenizer, capsys):
    make_fake_hub_cache(hub_cache, tiny_tokenizer, {"step1000": 1, "step2000": 2})
    partial_revision(hub_cache, "step4000")
    with pytest.raises(SystemExit) as exit_info:
        prefetch.main([*FAKE_MODEL, "step=1000,2000,4000,8000"])
    out, err = capsys.readouterr()
    assert exit_info.value.code == 1
    assert "cached     2" in out and "step1000 step2000" in out
    assert "missing    2: step4000 step8000" in out
    assert "step4000: partly cached, missing weights, tokenizer" in out
    assert "missing 2 revision(s)" in err and "step4000 step8000" in err and "HF_HUB_OFFLINE" in err
    assert "step1000" not in err


def test_offline_all_cached_exits_zero(hub_cache, offline, tiny_tokenizer, capsys):
    make_fake_hub_cache(hub_cache, tiny_tokenizer, {"step1000": 1, "step2000": 2})
    prefetch.main([*FAKE_MODEL, "step=1000,2000"])  # returns: exit code 0
    assert "all 2 revision(s) are in the HF cache" in capsys.readouterr().out


def test_console_script_offline_names_the_missing_revisions(tmp_path, tiny_tokenizer):
    # the installed entry point, as a cluster user runs it: exit code and stderr, no network
    cache = tmp_path / "hub"
    make_fake_hub_cache(cache, tiny_tokenizer, {"step1000": 1})
    env = {**os.environ, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    script = Path(sys.executable).parent / "ckptstudy-prefetch"
    command = [str(script), *FAKE_MODEL, "step=1000,2000"]
    proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "cached     1 " in proc.stdout and "missing    1: step2000" in proc.stdout
    assert "step2000" in proc.stderr and "Traceback" not in proc.stderr


class FakeHub:
    """Stands in for the hub: a file listing per revision, and a snapshot_download that records its
    arguments, measures how many calls overlap, and writes the fetched files into the cache."""

    def __init__(self, cache: Path, workers: int, bin_only: set[str]):
        self.cache, self.bin_only = cache, bin_only
        self.calls: list[dict] = []
        self.barrier = threading.Barrier(workers, timeout=10)
        self.lock = threading.Lock()
        self.active = self.peak = 0

    def files(self, repo, revision):
        listing = {"config.json": 500, "tokenizer.json": 2000, "README.md": 100, "pytorch_model.bin": 10**6}
        if revision not in self.bin_only:
            listing["model.safetensors"] = 9 * 10**5
        return listing

    def snapshot_download(self, repo_id, *, revision, allow_patterns, max_workers):
        with self.lock:
            self.calls.append({"repo": repo_id, "revision": revision, "patterns": list(allow_patterns)})
            self.active += 1
            self.peak = max(self.peak, self.active)
        try:
            self.barrier.wait()  # breaks (and the revision fails) unless `workers` calls run at once
            time.sleep(0.05)
            commit = f"{abs(hash(revision)):040x}"[:40]
            snapshot = self.cache / REPO_FOLDER / "snapshots" / commit
            snapshot.mkdir(parents=True, exist_ok=True)
            weights = "pytorch_model.bin" if "*.bin" in allow_patterns else "model.safetensors"
            for name in ("config.json", "tokenizer.json", weights):
                (snapshot / name).write_bytes(b"x" * 10)
            (self.cache / REPO_FOLDER / "refs").mkdir(parents=True, exist_ok=True)
            (self.cache / REPO_FOLDER / "refs" / revision).write_text(commit)
            return str(snapshot)
        finally:
            with self.lock:
                self.active -= 1


def test_download_fetches_weights_only_for_every_missing_revision_in_parallel(hub_cache, online, monkeypatch, capsys):
    steps = [1000, 2000, 3000, 4000, 5000, 6000]
    hub = FakeHub(hub_cache, workers=3, bin_only={"step3000"})
    monkeypatch.setattr(hubcache, "remote_files", hub.files)
    monkeypatch.setattr(hubcache, "snapshot_download", hub.snapshot_download)
    prefetch.main([*FAKE_MODEL, "step=" + ",".join(map(str, steps)), "--workers=3"])  # returns: exit code 0
    out = capsys.readouterr().out
    assert sorted(c["revision"] for c in hub.calls) == sorted(f"step{s}" for s in steps)
    assert {c["repo"] for c in hub.calls} == {REPO_ID}
    assert hub.peak == 3  # three revisions at once, never more
    for call in hub.calls:
        patterns = call["patterns"]
        assert "config.json" in patterns and "tokenizer.json" in patterns and "README.md" not in patterns
        if call["revision"] == "step3000":  # no safetensors there: the pickled weights
            assert "*.bin" in patterns and "*.safetensors" not in patterns
        else:
            assert "*.safetensors" in patterns and "*.bin" not in patterns
    assert "downloaded 6 revision(s)" in out and "all 6 revision(s) are in the HF cache" in out
    # sizes come from the listing, weights-only: 900000 safetensors + 500 config + 2000 tokenizer bytes
    assert "step1000: 0.90 MB" in out and "step3000: 1.00 MB" in out


def test_resumed_prefetch_skips_what_is_cached(hub_cache, online, tiny_tokenizer, monkeypatch, capsys):
    make_fake_hub_cache(hub_cache, tiny_tokenizer, {"step1000": 1})
    hub = FakeHub(hub_cache, workers=1, bin_only=set())
    monkeypatch.setattr(hubcache, "remote_files", hub.files)
    monkeypatch.setattr(hubcache, "snapshot_download", hub.snapshot_download)
    result = prefetch.prefetch(
        prefetch.revisions_for(prefetch.compose_config(FAKE_MODEL), [1000, 2000]), workers=1, out=print
    )
    assert [c["revision"] for c in hub.calls] == ["step2000"]
    assert [i.revision for i in result["cached"]] == ["step1000"] and result["missing"] == []


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["model=pythia-160m", "schedule=log"], [0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1000, 2000, 4000]),
        (["model=pythia-160m", "schedule=final"], [143000]),
        (["model=pythia-160m", "schedule=dense"], list(range(1000, 144000, 1000))),
    ],
)
def test_prefetch_fetches_the_steps_the_sweep_visits(overrides, expected):
    cfg = prefetch.compose_config(overrides, return_hydra_config=True)
    steps = prefetch.swept_steps(cfg)  # the one sweep parser (ckptstudy.sweeps), as plan and the tests use it
    assert steps[: len(expected)] == expected
    assert len(steps) == {"log": 19, "final": 1, "dense": 143}[overrides[1].split("=")[1]]
    assert prefetch.swept_steps(cfg, "range(1000,4000,1000)") == [1000, 2000, 3000]


def test_bad_step_and_local_model_are_refused(capsys):
    with pytest.raises(SystemExit) as exit_info:
        prefetch.main(["model=pythia-160m", "step=1500"])
    assert exit_info.value.code == 2 and "nearest valid steps" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        prefetch.main(["model=micro", "step=0"])
    assert exit_info.value.code == 2 and "not a hub model" in capsys.readouterr().err


def test_slurm_gpu_launcher_preset_composes_with_our_values():
    # the cluster preset the README documents: submitit's SLURM launcher with OUR values, each overridable
    cfg = prefetch.compose_config(["hydra/launcher=slurm_gpu"], return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("submitit_launcher.SlurmLauncher")
    ours = {"partition": "gpu", "gpus_per_node": 1, "timeout_min": 120, "mem_gb": 64, "cpus_per_task": 8}
    assert {key: launcher[key] for key in ours} == ours and launcher.array_parallelism == 32
    changed = prefetch.compose_config(
        ["hydra/launcher=slurm_gpu", "hydra.launcher.partition=a100"], return_hydra_config=True
    )
    assert changed.hydra.launcher.partition == "a100" and changed.hydra.launcher.mem_gb == 64

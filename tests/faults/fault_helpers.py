"""Shared helpers of the fault-injection tests: small jobs on the micro suite (smoke preset, a few probe
source files, a probe cache shared by every test of the session), copies of checkpoints to damage, a fake
offline HF cache, and a spy that says whether any weights were loaded.

Imported by the tests of this directory (not a conftest: the root conftest is imported as `conftest`
by other test files, a second one would shadow it).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ckptstudy import results
from ckptstudy.metrics import FamilyResult

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
PROBE_GLOB = "json/*.py"  # a few standard-library files: probes build in about a second
_SHARED: dict[str, Path] = {}


def shared_probe_cache(tmp_path_factory) -> Path:
    """One probe cache for the whole session (same tokenizer + probe config = same probes)."""
    if "cache" not in _SHARED:
        _SHARED["cache"] = tmp_path_factory.mktemp("shared-cache")
    return _SHARED["cache"]


@pytest.fixture
def out_root(tmp_path, tmp_path_factory) -> Path:
    """A fresh results root whose probe cache is the session's shared one."""
    root = tmp_path / "out"
    root.mkdir()
    (root / "cache").symlink_to(shared_probe_cache(tmp_path_factory), target_is_directory=True)
    return root


def overrides(root: Path, suite: Path, *extra: str, logger: str = "none", metrics: str = "[repetition]") -> list[str]:
    """A fast micro-suite job: smoke preset, one metric family (unless `metrics` names others), small
    probe source, results under `root`."""
    return [
        f"paths.root={root}",
        "experiment=smoke",
        f"metrics={metrics}",
        f"logger={logger}",
        f"probes.files_glob='{PROBE_GLOB}'",
        f"model.path='{suite}/step{{step}}'",
        *extra,
    ]


def local_model(directory_template: str, steps: list[int]) -> list[str]:
    """Overrides for a local model that is not the suite: `directory_template` holds `{step}`."""
    return [
        "model=pythia-14m",
        "model.source=local",
        f"model.path='{directory_template}'",
        "model.checkpoints=list",
        f"model.steps=[{','.join(map(str, steps))}]",
    ]


def run(args: list[str], edit=None) -> dict:
    """Compose the config (optionally edit it) and run one job in this process."""
    from omegaconf import open_dict

    from ckptstudy.config import compose_config
    from ckptstudy.job import run_job

    cfg = compose_config(args)
    if edit is not None:
        with open_dict(cfg):
            edit(cfg)
    return run_job(cfg)


def copy_suite(micro_suite: Path, dest: Path, steps: list[int], manifest: bool = True) -> Path:
    """A copy of some micro-suite checkpoints (and, unless `manifest` is false, its manifest) to damage."""
    dest.mkdir(parents=True, exist_ok=True)
    for step in steps:
        shutil.copytree(micro_suite / f"step{step}", dest / f"step{step}")
    if manifest:
        shutil.copy2(micro_suite / "suite.json", dest / "suite.json")
    return dest


def record_file(root: Path, step: int, model: str = "micro", study: str = "smoke") -> Path:
    return root / study / "records" / model / f"step{step}.json"


def read(root: Path, step: int, model: str = "micro", study: str = "smoke") -> dict | None:
    path = record_file(root, step, model, study)
    return results.read_record(path)


def tree_digest(directory: Path) -> dict[str, bytes]:
    """Every file's bytes under `directory` (to prove other checkpoints were not touched)."""
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def temp_files(directory: Path) -> list[Path]:
    return sorted(Path(directory).rglob(".*.tmp"))


@pytest.fixture
def loads(monkeypatch) -> list:
    """Records every weights load (`checkpoints.load_model`): refusals must leave it empty."""
    from ckptstudy.model import checkpoints

    calls = []
    real = checkpoints.load_model

    def spy(source, *args, **kwargs):
        calls.append(source)
        return real(source, *args, **kwargs)

    monkeypatch.setattr(checkpoints, "load_model", spy)
    return calls


def make_hub_cache(cache: Path, repo: str, snapshots: dict[str, Path], refs: dict[str, str]) -> None:
    """A Hugging Face cache holding `repo`: one snapshot per commit (a copy of a checkpoint directory)
    and refs/<branch> files naming the commits."""
    repo_dir = cache / f"models--{repo.replace('/', '--')}"
    for commit, source in snapshots.items():
        if not (repo_dir / "snapshots" / commit).exists():
            shutil.copytree(source, repo_dir / "snapshots" / commit)
    set_refs(cache, repo, refs)


def set_refs(cache: Path, repo: str, refs: dict[str, str]) -> None:
    refs_dir = cache / f"models--{repo.replace('/', '--')}" / "refs"
    refs_dir.mkdir(parents=True, exist_ok=True)
    for branch, commit in refs.items():
        (refs_dir / branch).write_text(commit)


@pytest.fixture
def offline_hub(tmp_path, monkeypatch) -> Path:
    """An empty offline HF cache for this test (fill it with `make_hub_cache`)."""
    import huggingface_hub.constants as hub_constants

    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    return cache


def crash_on_nonfinite_weights(ctx) -> FamilyResult:
    """A metric family that crashes on non-finite weights (a family the NaN tests add)."""
    for name, param in ctx.model.named_parameters():
        if not torch.isfinite(param).all():
            raise FloatingPointError(f"cannot measure: non-finite weights in {name}")
    result = FamilyResult()
    result.value("crashy/ok", 1.0, "a constant of the test family")
    return result


def run_child(script: str, args: dict, env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run `script` (python source) in a child process with `args` as JSON in argv[1]; fault injection
    from `inject.py` is importable there."""
    path = os.pathsep.join(p for p in [str(HERE), os.environ.get("PYTHONPATH", "")] if p)
    full_env = {**os.environ, "WANDB_SILENT": "true", "PYTHONPATH": path}
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-c", script, json.dumps(args)],
        cwd=REPO,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )

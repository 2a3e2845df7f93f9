"""Shared fixtures: the real micro suite (built once per machine, in paths.suite), tiny models, CLI runner.

Every test that uses the micro suite (the `micro_suite` fixture, directly or through another fixture) is
marked `suite` here, so `make test-fast` (`-m "not suite and not slow"`) runs without a suite and nobody has
to remember the marker."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))


SUITE_FIXTURE = "micro_suite"


def pytest_configure(config) -> None:
    config.addinivalue_line("markers", "suite: needs the built micro suite (set here on every test using micro_suite)")
    config.addinivalue_line("markers", "long: over ~10 s without the suite (a real multirun...): not in make test-fast")


def pytest_collection_modifyitems(config, items) -> None:
    """Mark `suite` every test whose fixture closure holds the micro suite."""
    for item in items:
        if SUITE_FIXTURE in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.suite)


@pytest.fixture(scope="session")
def micro_suite() -> Path:
    """The embedded micro suite's directory (`paths.suite`: $CKPTSTUDY_SUITE_DIR, else the user's cache).

    `make test` builds it before pytest starts; a bare pytest run links a finished build left under outputs/suite
    by an earlier version, or builds it (minutes, once per machine). Tests only read it: those that damage
    checkpoints copy them first."""
    from ckptstudy.config import compose_config
    from ckptstudy.model.suite import ensure_suite

    return ensure_suite(compose_config().model, legacy_root=REPO / "outputs")


@pytest.fixture(scope="session")
def final_micro_context(micro_suite):
    """A JobContext on the micro suite's last checkpoint with the default probes (for end-to-end family tests)."""
    from ckptstudy.config import compose_config
    from ckptstudy.metrics import JobContext
    from ckptstudy.model.checkpoints import CheckpointSource, load_checkpoint
    from ckptstudy.probes import cached_probes

    step = max(int(p.name[4:]) for p in micro_suite.glob("step*"))
    model, tokenizer = load_checkpoint(CheckpointSource("micro", step, "local", str(micro_suite / f"step{step}")))
    cfg = compose_config()
    probes = cached_probes(cfg.probes, tokenizer, REPO / "outputs" / "cache" / "probes")
    return JobContext.from_config(cfg, model, tokenizer, probes)


def run_cli(args: list[str], root: Path, env: dict | None = None, module: str = "ckptstudy"):
    """Run `python -m <module> <args>` in a subprocess with results under `root`; returns the process."""
    full_env = {**os.environ, "WANDB_SILENT": "true", **(env or {})}
    flags = [a for a in args if a.startswith("-")]
    overrides = [a for a in args if not a.startswith("-")]
    return subprocess.run(
        [sys.executable, "-m", module, *flags, f"paths.root={root}", *overrides],
        cwd=REPO,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=900,
    )


@pytest.fixture(scope="session")
def tiny_tokenizer():
    """A byte-level BPE tokenizer in Pythia's conventions, trained on a few standard-library files."""
    from ckptstudy.model.suite import train_tokenizer

    texts = [Path(p).read_text(errors="replace") for p in sorted(Path(os.__file__).parent.glob("[a-c]*.py"))]
    return train_tokenizer(texts, 512)


def tiny_neox(vocab_size: int = 512, layers: int = 2, d_model: int = 32, heads: int = 4, seed: int = 0):
    """A small random-init GPT-NeoX with Pythia's choices (`ckptstudy.model.neox`), in eval mode."""
    from ckptstudy.model.neox import make_neox

    return make_neox(vocab_size, d_model, layers, heads, max_position_embeddings=512, seed=seed).eval()


@pytest.fixture(autouse=True, scope="session")
def _registered_schema():
    """The structured-config schema, as the `ckptstudy` entry point registers it."""
    from ckptstudy.config import register_configs

    register_configs()

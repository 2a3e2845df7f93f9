"""ckptstudy as a user installs it: a non-editable install runs from any directory (configs and the report's
templates ship inside the package), and `ckptstudy --help` is ckptstudy's own help."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

from conftest import REPO


def test_non_editable_install_composes_from_another_directory(tmp_path):
    # build from a copy: pip builds in the source tree, and the work tree must stay clean
    source = tmp_path / "source"
    shutil.copytree(REPO / "src", source / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    site = tmp_path / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--target",
            str(site),
            str(source),
        ],
        check=True,
        capture_output=True,
        cwd=tmp_path,
    )
    env = {**os.environ, "PYTHONPATH": str(site)}
    where = subprocess.run(
        [sys.executable, "-c", "import ckptstudy; print(ckptstudy.__file__)"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert where.stdout.strip().startswith(str(site))  # the installed copy, not the work tree
    templates = REPO / "src" / "ckptstudy" / "report" / "templates"
    shipped = {p.name for p in (site / "ckptstudy" / "report" / "templates").iterdir()}
    assert shipped == {p.name for p in templates.iterdir()}  # report.html's template, CSS and script ship too
    proc = subprocess.run(
        [sys.executable, "-m", "ckptstudy", "--cfg", "job", "model=pythia-160m", "logger=none"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "name: pythia-160m" in proc.stdout and "icl_heads:" in proc.stdout and "definition: suffix" in proc.stdout


def test_help_is_ckptstudys_own():
    proc = subprocess.run(
        [sys.executable, "-m", "ckptstudy", "--help"], cwd=REPO, capture_output=True, text=True, check=True
    )
    out = proc.stdout
    assert "ckptstudy: measure repetition mechanisms" in out and "Powered by Hydra" not in out
    for group in ("model:", "schedule:", "probes:", "metrics:", "experiment:"):
        assert group in out, group
    assert "pythia-160m" in out and "repetitions_not_alike" in out and "ckptstudy -m" in out

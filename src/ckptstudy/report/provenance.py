"""How a report was made, as plain data for its last section: the Hydra sweeps that wrote the records (from
Hydra's own records of their overrides), the command that built the report, the configs behind the records,
and the package versions of the records and of this environment."""

from __future__ import annotations

import datetime
import importlib.metadata
import platform
import re
import shlex
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

from omegaconf import OmegaConf

from ckptstudy.record import Record

PACKAGES = ("torch", "transformers", "tokenizers", "hydra-core", "omegaconf", "numpy", "pandas", "matplotlib", "wandb")
SHOWN_RECORDS = 16  # records named per config hash


def shell_quote(word: str) -> str:
    """`word` as a shell would need it typed: bare when safe, in double quotes when that suffices (Hydra's
    own quotes inside an override stay readable), else shlex's single quotes."""
    if re.fullmatch(r"[\w@%+=:,./-]+", word):
        return word
    if not re.search(r'["$`\\!]', word):
        return f'"{word}"'
    return shlex.quote(word)


def command_line() -> str:
    """The command this process runs, as typed (the report's `built_by`)."""
    return " ".join([Path(sys.argv[0]).name, *(shell_quote(a) for a in sys.argv[1:])])


def sweep_commands(directory: Path) -> list[tuple[str, str]]:
    """(when, command) of every Hydra run and multirun that wrote into the study (from Hydra's own
    records of the overrides: multirun.yaml, .hydra/overrides.yaml)."""
    out = []
    for path in sorted((directory / "hydra" / "multirun").glob("*/multirun.yaml")):
        try:
            task = list(OmegaConf.load(path).hydra.overrides.task)
        except Exception:
            continue
        out.append((path.parent.name, "ckptstudy -m " + " ".join(shell_quote(str(o)) for o in task)))
    for path in sorted((directory / "hydra" / "run").glob("*/.hydra/overrides.yaml")):
        try:
            task = list(OmegaConf.load(path))
        except Exception:
            continue
        out.append((path.parent.parent.name, "ckptstudy " + " ".join(shell_quote(str(o)) for o in task)))
    return out


def versions() -> dict[str, str]:
    """Python, platform, ckptstudy and its main packages in this environment, and the git commit of the
    source when it is a checkout."""
    out = {"python": platform.python_version(), "platform": platform.platform()}
    for name in ("ckptstudy", *PACKAGES):
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "not installed"
    try:
        commit = subprocess.run(
            ["git", "-C", str(Path(__file__).parent), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10
        )
        if commit.returncode == 0:
            out["ckptstudy git commit"] = commit.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return out


def config_rows(records: list[Record]) -> list[dict]:
    """One row per config hash: how many records carry it and which (the first `SHOWN_RECORDS`)."""
    hashes: dict[str, list] = defaultdict(list)
    for record in records:
        hashes[str(record.provenance.config_hash)].append(record.label)
    return [
        {
            "hash": h,
            "count": len(w),
            "which": ", ".join(w[:SHOWN_RECORDS]) + (" …" if len(w) > SHOWN_RECORDS else ""),
        }
        for h, w in sorted(hashes.items())
    ]


def provenance(records: list[Record], directory: Path, built_by: str) -> dict:
    """The data of the section "How this was made"."""
    newest = max(records, key=lambda r: str(r.outcome.finished_at or ""), default=None)
    config = (newest.provenance.config if newest else None) or {}
    return {
        "commands": sweep_commands(directory),
        "built_by": built_by,
        "built_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "configs": config_rows(records),
        "newest": newest.label if newest else "None@None",
        "config_yaml": OmegaConf.to_yaml(OmegaConf.create(config)) if config else "(no config stored)",
        "record_versions": ", ".join(sorted({str(r.provenance.package_version) for r in records})),
        "record_formats": ", ".join(str(f) for f in sorted({r.format for r in records})),
        "definitions": "; ".join(sorted({str(r.provenance.definitions) for r in records if r.provenance.definitions})),
        "versions": versions(),
    }

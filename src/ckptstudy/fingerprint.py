"""What identifies a measurement, and whether a finished record may be reused for it.

A record is reused (the job skipped) only when it finished ok with the same measurement config
(hash of `HASHED_KEYS`), the same checkpoint revision, the same checkpoint files (`checkpoint_fingerprint`,
computed without loading the weights) and the same definition versions (each metric family's
`DEFINITION_VERSION` and the probe construction's `PROBES_VERSION`), in the current record format (`record.FORMAT`).
A record made under an older definition or format or from other files is recomputed, never served silently.
"""

from __future__ import annotations

import hashlib
import importlib
import json
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from ckptstudy import __version__
from ckptstudy.model.checkpoints import CheckpointSource, checkpoint_dir, run_name
from ckptstudy.probes import PROBES_VERSION
from ckptstudy.record import FORMAT, Identity, Provenance, Record

HASHED_KEYS = ("model", "probes", "loops", "metrics", "seed", "dtype")


def config_hash(cfg: DictConfig) -> str:
    """Hash of everything that changes the measurement (not logging, paths or study name)."""
    container = OmegaConf.to_container(cfg, resolve=True)
    part = {k: container.get(k) for k in HASHED_KEYS}
    return hashlib.sha256(json.dumps(part, sort_keys=True, default=str).encode()).hexdigest()[:16]


def family_version(target: str) -> int:
    """`DEFINITION_VERSION` of the module that holds a family's `measure` (1 when it declares none)."""
    module = importlib.import_module(target.rsplit(".", 1)[0])
    return int(getattr(module, "DEFINITION_VERSION", 1))


def definition_versions(metrics_cfg) -> dict[str, int]:
    """{"probes": PROBES_VERSION, <family>: DEFINITION_VERSION} for the enabled families."""
    versions = {"probes": PROBES_VERSION}
    for name, family_cfg in metrics_cfg.items():
        versions[name] = family_version(family_cfg["_target_"])
    return versions


def identify(cfg: DictConfig) -> Record:
    """A new record of the measurement `cfg` describes: its identity (`model` is the training run, `run_name`: the
    model's name, `@seed<k>` for a seed other than 0; `base_model` the model's name, `seed` its training seed) and
    what decides its reuse (config hash, definition versions, package version)."""
    identity = Identity(
        model=run_name(cfg.model), step=cfg.step, study=cfg.study, base_model=cfg.model.name, seed=cfg.model.get("seed")
    )
    provenance = Provenance(
        config_hash=config_hash(cfg), definitions=definition_versions(cfg.metrics), package_version=__version__
    )
    return Record(identity, provenance=provenance)


def checkpoint_fingerprint(source: CheckpointSource) -> str | None:
    """A cheap fingerprint of the checkpoint's files, without reading the weights.

    Local directory: `local:` + sha256 over (relative name, size, mtime_ns) of every file under it (a file
    rewritten, replaced, added or removed changes it). Hub: `hub:<commit>`, the commit the revision resolves
    to in the HF cache (a moved branch changes it). None when there is nothing to look at yet (a missing
    directory, a revision not cached): the reuse decision then rests on the revision alone.
    """
    if source.kind == "hub":
        directory = checkpoint_dir(source)
        return f"hub:{directory.name}" if directory is not None else None
    directory = Path(source.location)
    if not directory.is_dir():
        return None
    digest = hashlib.sha256()
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        stat = path.stat()
        digest.update(f"{path.relative_to(directory).as_posix()}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return "local:" + digest.hexdigest()[:32]


def stale_reason(previous: Record | None, current: Record, force: bool) -> str | None:
    """Why `previous` cannot stand for the measurement `current` describes; None when it can. A record of an
    older format (`record.FORMAT`) is never reused: it was read through a converter."""
    if force:
        return "force=true"
    if previous is None:
        return "no record yet"
    if previous.format != FORMAT:
        return f"record format {previous.format} -> {FORMAT}"
    if not previous.ok:
        return f"previous record {previous.outcome.status}"
    if previous.identity.revision != current.identity.revision:
        return f"revision changed: {previous.identity.revision} -> {current.identity.revision}"
    old, new = previous.provenance.checkpoint_fingerprint, current.provenance.checkpoint_fingerprint
    if old and new and old != new:
        return f"checkpoint files changed since the record was made ({old} -> {new})"
    changed = definition_changes(previous.provenance.definitions or {}, current.provenance.definitions)
    if changed:
        return "metric definitions changed: " + ", ".join(changed)
    if previous.provenance.config_hash != current.provenance.config_hash:
        return "measurement config changed"
    return None


def definition_changes(old: dict, new: dict) -> list[str]:
    """`name old -> new` for each definition whose version differs (a record without one is version 1)."""
    return [f"{name} {old.get(name, 1)} -> {version}" for name, version in new.items() if old.get(name, 1) != version]

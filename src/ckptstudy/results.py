"""Result records on disk (the source of truth) and the trajectories table built from them.

Layout under `<root>/<study>/`:
  records/<model>/step<N>.json   one record per job (status ok or failed; `ckptstudy.record.Record`); <model> is
                                 the training run (`checkpoints.run_name`: the model's name, @seed<k> for a seed
                                 other than 0)
  records/<model>/step<N>.npz    its arrays by section: heads/<key>, raw/<key>, samples/<key>/...
  trajectories.csv               one row per (run, step), one column per scalar metric
  .lock                          file lock serialising writers of the study (parallel launchers)

Every file is written through `atomic_write_bytes` (a unique hidden temporary file, fsync, rename): a
process killed at any point leaves either the old file or the new one, never half of one. Temporary
files a killed writer left behind are never read (their names do not match `step*.json`) and are
removed by `remove_stale_temps` once their writer is gone.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import socket
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from omegaconf import OmegaConf

from ckptstudy.model.checkpoints import available_steps
from ckptstudy.record import FORMAT, ArraysFile, Record, RecordArrays, arrays_sha256, from_json, npz_bytes

TABLE_NAME = "trajectories.csv"
RECORD_COLUMNS = [
    "model",  # the training run: base_model, with @seed<k> for a training seed other than 0
    "base_model",
    "seed",
    "step",
    "status",
    "revision",
    "weights_sha256",
    "identical_weights_as",
    "integrity",
    "nonfinite",
]


def study_dir(root: str | Path, study: str) -> Path:
    return Path(root) / study


def record_path(root: str | Path, study: str, model: str, step: int) -> Path:
    return study_dir(root, study) / "records" / model / f"step{step}.json"


log = logging.getLogger(__name__)

TEMP_SUFFIX = ".tmp"
FOREIGN_TEMP_AGE = 24 * 3600  # a temporary file of another host is removed after this many seconds
MIN_FREE_BYTES = 50 * 2**20  # a job refuses to start with less free space than this under its records


class OutputError(OSError):
    """The results directory cannot take the job's output (not writable, or the disk is full)."""


def _host() -> str:
    return socket.gethostname().replace(".", "_") or "localhost"


def _temp_prefix(path: Path) -> str:
    return f".{path.name}.{_host()}.{os.getpid()}."


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write via a unique temporary file (fsync'ed) and rename, so readers never see half a file.

    The temporary file is hidden and named `.<name>.<host>.<pid>.<random>.tmp`: concurrent writers of
    the same path never share one, and `remove_stale_temps` can tell a dead writer's leftover from a
    live one's. A write that fails (disk full) removes its temporary file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=_temp_prefix(path), suffix=TEMP_SUFFIX, dir=path.parent)
    tmp = Path(name)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temps(directory: Path) -> list[Path]:
    """Remove the temporary files (`.<name>.<host>.<pid>.*.tmp`) that killed writers left in `directory`:
    those of this host whose process is gone, and those of other hosts older than a day. Returns them."""
    removed = []
    host = _host()
    for tmp in Path(directory).glob(f".*{TEMP_SUFFIX}"):
        parts = tmp.name.split(".")  # "", <name parts>, host, pid, random, "tmp"
        try:
            tmp_host, pid = parts[-4], int(parts[-3])
        except (ValueError, IndexError):
            continue
        try:
            age = time.time() - tmp.stat().st_mtime
        except OSError:
            continue
        gone = not _pid_alive(pid) if tmp_host == host else age > FOREIGN_TEMP_AGE
        if gone and pid != os.getpid():
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


def check_writable(directory: Path, min_free: int = MIN_FREE_BYTES) -> None:
    """Refuse (OutputError) an output directory that cannot be created or written, or has less than
    `min_free` bytes free: a clear error before computing, not after an hour of work."""
    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=_temp_prefix(directory / "write-check"), suffix=TEMP_SUFFIX, dir=directory)
        os.close(fd)
        Path(name).unlink()
    except OSError as err:
        raise OutputError(f"results directory {directory} is not writable ({type(err).__name__}: {err})") from err
    free = shutil.disk_usage(directory).free
    if free < min_free:
        raise OutputError(
            f"results directory {directory} has {free / 2**20:.1f} MB free, below the {min_free / 2**20:.0f} MB "
            "a job needs: free some space or set paths.root to another disk"
        )


def study_lock(root: str | Path, study: str, timeout: float = 600):
    """The study's file lock (`<root>/<study>/.lock`): serialises its writers across processes.

    Re-entrant in one thread (one lock object per path), so nested use does not deadlock.
    """
    from filelock import FileLock

    directory = study_dir(root, study)
    directory.mkdir(parents=True, exist_ok=True)
    return FileLock(str(directory / ".lock"), timeout=timeout, is_singleton=True)


def file_sha256(path: Path) -> str | None:
    """sha256 of a file's bytes, or None when it cannot be read."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    except OSError:
        return None
    return digest.hexdigest()


def arrays_mismatch(record: Record) -> str | None:
    """Why the arrays file a record names is not the one written with it (None when it is, or when the
    record names none): missing, or its sha256 differs (a writer was killed between arrays and record)."""
    path = record.arrays_path
    if path is None:
        return None
    if not path.exists():
        return f"its arrays file {path.name} is missing"
    expected = record.arrays.sha256
    if expected and file_sha256(path) != expected:
        return f"its arrays file {path.name} was rewritten after it (an interrupted job)"
    return None


def write_record(path: Path, record: Record, arrays: RecordArrays | None = None) -> Record:
    """Write the arrays (if any) then the record, each atomically; returns the record as written (it names its
    arrays file and its path). Without `arrays`, the record keeps the arrays file it names (a rewrite), except a
    record read in an older format: its arrays are rewritten in the current layout with it."""
    path = Path(path)
    if arrays is None and record.format != FORMAT and record.arrays is not None:
        arrays = RecordArrays(record.heads(), record.raw(), record.samples())
    members = arrays.members() if arrays is not None else {}
    if members:
        arrays_path = path.with_suffix(".npz")
        data = npz_bytes(members)
        atomic_write_bytes(arrays_path, data)
        record.arrays = ArraysFile(arrays_path.name, arrays_sha256(data))
    atomic_write_bytes(path, record.to_bytes())
    record.path, record.format = path, FORMAT
    return record


def read_record(path: Path) -> Record | None:
    """The record at `path` (a format-1 one converted, `record.from_json`), or None when missing or unreadable
    (an unreadable one, or one of a format this version does not read, is logged: its job is then measured
    again, and the summary leaves it out)."""
    try:
        return from_json(json.loads(Path(path).read_text()), path)
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError) as err:
        log.warning("record %s is unreadable (%s: %s): ignored, its job runs again", path, type(err).__name__, err)
        return None


def load_records(root: str | Path, study: str) -> list[Record]:
    """Every readable record of a study, sorted by model then step."""
    records = []
    for path in sorted((study_dir(root, study) / "records").glob("*/step*.json")):
        record = read_record(path)
        if record is not None:
            records.append(record)
    return sorted(records, key=lambda r: (str(r.model or ""), r.step))


def weights_key(record: Record) -> tuple[int, str] | None:
    """What identifies a record's weights: (hash definition version, weights_sha256); None without a hash.
    Hashes of different versions never compare equal (records before per-tensor hashes are version 1)."""
    sha = record.provenance.weights_sha256
    return (int(record.provenance.weights_hash_version or 1), sha) if sha else None


def identical_weight_groups(records: list[Record]) -> dict[tuple[str, int], list[int]]:
    """For each (model, step), the other steps of the same model whose weights hash is identical."""
    by_hash: dict[tuple[str, tuple], list[int]] = defaultdict(list)
    for r in records:
        key = weights_key(r)
        if key:
            by_hash[(r.model, key)].append(r.step)
    out = {}
    for (model, _), steps in by_hash.items():
        if len(steps) > 1:
            for s in steps:
                out[(model, s)] = sorted(x for x in steps if x != s)
    return out


def tensor_equalities(
    records: list[Record], final_steps: dict[str, int | None] | None = None
) -> dict[tuple[str, int], list[dict]]:
    """For each (model, step) with per-tensor hashes: the other steps of the model that share a parameter
    tensor with it (same name, same hash) while their weights differ as a whole (a whole identical checkpoint
    is `identical_weights_as`). Entries: {"step", "final" (the model's last checkpoint), "tensors" (names),
    "of" (tensors compared)}.

    Tensors whose elements are all equal in either record (`constant_tensors`: a LayerNorm weight still at 1,
    a bias still at 0) are not compared: an update below the stored precision legitimately leaves them
    unchanged between early steps.
    """
    final_steps = final_steps or {}
    by_model: dict[str, list[Record]] = defaultdict(list)
    for r in records:
        if r.provenance.tensor_hashes:
            by_model[r.model].append(r)
    out: dict[tuple[str, int], list[dict]] = {}
    for model, group in by_model.items():
        holders: dict[tuple[str, str], list[int]] = defaultdict(list)  # (name, hash) -> indices in group
        hashes = [r.provenance.tensor_hashes for r in group]
        compared = [set(h) - set(r.provenance.constant_tensors or []) for h, r in zip(hashes, group)]
        for i in range(len(group)):
            for name in compared[i]:
                holders[(name, hashes[i][name])].append(i)
        for i, r in enumerate(group):
            shared: dict[int, list[str]] = defaultdict(list)
            for name in compared[i]:
                for j in holders[(name, hashes[i][name])]:
                    if j != i:
                        shared[j].append(name)
            entries = []
            for j, names in shared.items():
                other = group[j]
                if weights_key(other) == weights_key(r):
                    continue
                step = other.step
                entries.append(
                    {
                        "step": step,
                        "final": step == final_steps.get(model),
                        "tensors": sorted(names),
                        "of": len(compared[i] & compared[j]),
                    }
                )
            if entries:
                out[(model, r.step)] = sorted(entries, key=lambda e: e["step"])
    return out


def describe_equality(entry: dict, limit: int = 6) -> str:
    """One integrity entry as text: `3 of 76 tensors equal to step 143000 (final): a, b, c`."""
    names = entry["tensors"]
    shown = ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")
    final = " (final)" if entry.get("final") else ""
    return f"{len(names)} of {entry['of']} tensors equal to step {entry['step']}{final}: {shown}"


def _final_step(record: Record) -> int | None:
    """The last checkpoint step of the record's model, from the config stored in it (None when unknown)."""
    try:
        return available_steps(OmegaConf.create((record.provenance.config or {})["model"]))[-1]
    except Exception:
        return None


def results_table(records: list[Record]):
    """A DataFrame: one row per (model, step), record columns then one column per scalar metric."""
    import pandas as pd

    duplicates = identical_weight_groups(records)
    finals: dict[str, int | None] = {}
    for r in records:
        if r.provenance.tensor_hashes and finals.get(r.model) is None:
            finals[r.model] = _final_step(r)
    equal = tensor_equalities(records, finals)
    rows = []
    for r in records:
        row = table_row(r, duplicates.get((r.model, r.step), []), equal.get((r.model, r.step), []))
        row.update(r.scalars.metrics)
        rows.append(row)
    table = pd.DataFrame(rows, columns=None if rows else RECORD_COLUMNS)
    if rows:
        metric_cols = sorted(c for c in table.columns if c not in RECORD_COLUMNS)
        table = table[RECORD_COLUMNS + metric_cols].sort_values(["model", "step"], kind="stable")
    return table.reset_index(drop=True)


def table_row(r: Record, identical: list[int], equal: list[dict]) -> dict:
    """The `RECORD_COLUMNS` of a record's row (`identical`: steps with the same weights; `equal`: its integrity
    entries)."""
    nonfinite = r.provenance.nonfinite or {}
    return {
        "model": r.model,
        "base_model": r.identity.base_model or r.model,
        "seed": r.identity.seed,
        "step": r.step,
        "status": r.outcome.status,
        "revision": r.identity.revision,
        "weights_sha256": r.provenance.weights_sha256,
        "identical_weights_as": " ".join(map(str, identical)),
        # tensors equal to the same tensor at another step: `<step>[(final)]: name name ...; ...`
        "integrity": "; ".join(
            f"{e['step']}{' (final)' if e['final'] else ''}: {' '.join(e['tensors'])}" for e in equal
        ),
        # "weights" / "activations": the checkpoint computed non-finite values (see the record's warnings)
        "nonfinite": " ".join(k for k in ("weights", "activations") if nonfinite.get(k)),
    }


def write_table(root: str | Path, study: str, table=None):
    """Write `<root>/<study>/trajectories.csv` (rebuilt from the records unless given); returns (path, table)."""
    path = study_dir(root, study) / TABLE_NAME
    with study_lock(root, study):  # a table rebuilt here reads the records under the lock too
        if table is None:
            table = results_table(load_records(root, study))
        atomic_write_bytes(path, table.to_csv(index=False).encode())
    return path, table

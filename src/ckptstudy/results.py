"""Result records on disk (the source of truth) and the trajectories table built from them.

Layout under `<root>/<study>/`:
  records/<model>/step<N>.json   one record per job (status ok or failed)
  records/<model>/step<N>.npz    its per-head arrays (layer x head [x ...])
  trajectories.csv               one row per (model, step), one column per scalar metric
"""

from __future__ import annotations

import io
import json
import os
from collections import defaultdict
from pathlib import Path

import numpy as np

TABLE_NAME = "trajectories.csv"
RECORD_COLUMNS = ["model", "step", "status", "revision", "weights_sha256", "identical_weights_as"]


def study_dir(root: str | Path, study: str) -> Path:
    return Path(root) / study


def record_path(root: str | Path, study: str, model: str, step: int) -> Path:
    return study_dir(root, study) / "records" / model / f"step{step}.json"


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write via a unique temporary file and rename, so readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    tmp.replace(path)


def write_record(path: Path, record: dict, arrays: dict[str, np.ndarray] | None = None) -> dict:
    """Write the arrays (if any) then the record, each atomically; returns the record as written
    (it names its arrays file)."""
    if arrays:
        buffer = io.BytesIO()
        np.savez_compressed(buffer, **{k.replace("/", "__"): np.asarray(v) for k, v in arrays.items()})
        arrays_path = path.with_suffix(".npz")
        atomic_write_bytes(arrays_path, buffer.getvalue())
        record = {**record, "arrays": arrays_path.name}
    atomic_write_bytes(path, json.dumps(record, indent=1, sort_keys=True, default=str).encode())
    return record


def read_record(path: Path) -> dict | None:
    """The record at `path`, or None when missing or unreadable."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def read_arrays(record_file: Path) -> dict[str, np.ndarray]:
    """The per-head arrays stored beside a record, keyed like the metrics (`family/name`)."""
    record = read_record(record_file) or {}
    name = record.get("arrays")
    if not name:
        return {}
    with np.load(Path(record_file).parent / name) as data:
        return {k.replace("__", "/"): data[k] for k in data.files}


def load_records(root: str | Path, study: str) -> list[dict]:
    """Every readable record of a study, sorted by model then step."""
    records = []
    for path in sorted((study_dir(root, study) / "records").glob("*/step*.json")):
        record = read_record(path)
        if record is not None:
            record["_path"] = str(path)
            records.append(record)
    return sorted(records, key=lambda r: (r.get("model", ""), int(r.get("step", -1))))


def identical_weight_groups(records: list[dict]) -> dict[tuple[str, int], list[int]]:
    """For each (model, step), the other steps of the same model whose weights hash is identical."""
    by_hash: dict[tuple[str, str], list[int]] = defaultdict(list)
    for r in records:
        if r.get("weights_sha256"):
            by_hash[(r["model"], r["weights_sha256"])].append(int(r["step"]))
    out = {}
    for (model, _), steps in by_hash.items():
        if len(steps) > 1:
            for s in steps:
                out[(model, s)] = sorted(x for x in steps if x != s)
    return out


def results_table(records: list[dict]):
    """A DataFrame: one row per (model, step), record columns then one column per scalar metric."""
    import pandas as pd

    duplicates = identical_weight_groups(records)
    rows = []
    for r in records:
        row = {
            "model": r.get("model"),
            "step": int(r.get("step", -1)),
            "status": r.get("status"),
            "revision": r.get("revision"),
            "weights_sha256": r.get("weights_sha256"),
            "identical_weights_as": " ".join(map(str, duplicates.get((r.get("model"), int(r.get("step", -1))), []))),
        }
        row.update(r.get("metrics") or {})
        rows.append(row)
    table = pd.DataFrame(rows, columns=None if rows else RECORD_COLUMNS)
    if rows:
        metric_cols = sorted(c for c in table.columns if c not in RECORD_COLUMNS)
        table = table[RECORD_COLUMNS + metric_cols].sort_values(["model", "step"], kind="stable")
    return table.reset_index(drop=True)


def write_table(root: str | Path, study: str, table=None):
    """Write `<root>/<study>/trajectories.csv` (rebuilt from the records unless given); returns (path, table)."""
    if table is None:
        table = results_table(load_records(root, study))
    path = study_dir(root, study) / TABLE_NAME
    atomic_write_bytes(path, table.to_csv(index=False).encode())
    return path, table

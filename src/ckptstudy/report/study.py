"""A study as the summary reads it: its records and, per record, only the arrays the summary uses (bootstrap
samples and layer x head arrays; not the generated ids and other raw data, which can be large)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ckptstudy import results
from ckptstudy.stats.bootstrap import without_samples


@dataclass
class Study:
    """`records` sorted by model then step (each with its `_path`); `arrays`: record path -> its arrays."""

    name: str
    directory: Path
    records: list[dict]
    arrays: dict[str, dict[str, np.ndarray]]


def is_head_array(record: dict, array: np.ndarray) -> bool:
    """True for a layer x head array: 2-D with the shape (n_layers, n_heads) of the model config stored in
    the record (any 2-D array when the config does not say; generated ids and the like are not)."""
    model = (record.get("config") or {}).get("model") or {}
    shape = (model.get("n_layers"), model.get("n_heads"))
    return array.ndim == 2 and (None in shape or tuple(array.shape) == shape)


def needed_arrays(record: dict) -> dict[str, np.ndarray]:
    """The arrays of an ok record that the summary uses: its bootstrap samples and its layer x head arrays."""
    if not record.get("arrays") or record.get("status") != "ok":
        return {}
    stored = results.read_arrays(Path(record["_path"]))
    kept = without_samples(stored)
    heads = {k: v for k, v in kept.items() if is_head_array(record, v)}
    return {**heads, **{k: v for k, v in stored.items() if k not in kept}}


def load_study(root: str | Path, name: str) -> Study:
    """Every readable record of `<root>/<name>/records` and the arrays the summary needs from each."""
    records = results.load_records(root, name)
    arrays = {r["_path"]: needed_arrays(r) for r in records}
    return Study(name, results.study_dir(root, name), records, arrays)

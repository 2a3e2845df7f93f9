"""A study as the summary reads it: its records (`ckptstudy.record.Record`, each reading its arrays from its npz
when first asked: the summary asks for the samples and the per-head arrays, never the raw data, which can be
large)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ckptstudy import results
from ckptstudy.record import FORMAT, Record


@dataclass
class Study:
    """`records` sorted by model then step (format-1 records read through `record.from_format1`)."""

    name: str
    directory: Path
    records: list[Record]

    @property
    def converted(self) -> list[Record]:
        """Records of an older format, read through a converter (a sweep recomputes them)."""
        return [r for r in self.records if r.format != FORMAT]


def drawn_heads(record: Record) -> dict[str, np.ndarray]:
    """The layer x head arrays of an ok record that are drawn and tabled: its 2-D per-head arrays (those with more
    axes, e.g. per key class, stay in the npz)."""
    if not record.ok:
        return {}
    return {k: v for k, v in record.heads().items() if v.ndim == 2}


def load_study(root: str | Path, name: str) -> Study:
    """Every readable record of `<root>/<name>/records`."""
    return Study(name, results.study_dir(root, name), results.load_records(root, name))

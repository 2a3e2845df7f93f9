"""A result record: what one job measured at one checkpoint, in typed sections, and its arrays file.

The JSON (`records/<run>/step<N>.json`) holds `format` (`FORMAT`) and one object per section:
- `identity`: which measurement it is (training run, base model, training seed, step, study, revision);
- `outcome`: how the job ended (status, error, seconds, finished_at, warnings, recomputed_because, unwritten);
- `scalars`: the scalar metrics with their NaN reasons, intervals (`ci`, `ci_reasons`, `ci_method`) and the
  reasons values have no interval (`no_interval`);
- `provenance`: what it was made from and what was found on the way (config and its hash, definition versions,
  package version, checkpoint fingerprint, weight and tensor hashes, integrity flags, memory budget, cost, ...);
- `arrays`: the name and sha256 of its npz.
The npz (`step<N>.npz`) is namespaced by section: `heads/<key>` (per-head arrays [layer, head, ...]), `raw/<key>`
(other arrays: generated ids, loop periods ...) and `samples/<key>/{spec,values,weights}` (the per-prompt samples
the intervals are recomputed from, `bootstrap.encode`). `Record.heads()`, `.raw()` and `.samples()` read one
section each, when first asked, so nobody guesses by shape which array is which.

Format 1 is the flat dict written before this module (no `format` key; npz names with `/` as `__`, per-head and
raw arrays mixed, samples under `bootstrap__`). `from_json` reads it through `from_format1`: every field goes to
its section, and an npz array is a head array when its first two dimensions are the model's (n_layers, n_heads)
of the stored config (any 2-D array when the config does not say: the rule the summary used on format 1), else
raw. A job never reuses a record of an older format (`fingerprint.stale_reason`): it measures again.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ckptstudy.stats.bootstrap import Sample, decode, encode

log = logging.getLogger(__name__)

FORMAT = 2  # 1: the flat dict before typed records (no "format" key)
ARRAY_SECTIONS = ("heads", "raw", "samples")
FORMAT1_SAMPLES = "bootstrap/"  # where format 1 kept the samples (after `__` -> `/`)


class RecordFormatError(ValueError):
    """A record file this version cannot read (a newer format, or a section field it does not know)."""


@dataclass
class Identity:
    """Which measurement a record is: `model` is the training run (`checkpoints.run_name`: the model's name,
    `@seed<k>` for a training seed other than 0), `base_model` the model's name, `seed` its training seed."""

    model: str
    step: int | str | None  # an int once resolved; the configured value in a failure whose step never resolved
    study: str | None = None
    base_model: str | None = None
    seed: int | None = None
    revision: str | None = None  # the checkpoint source (`CheckpointSource.describe`)


@dataclass
class Outcome:
    """How the job ended. `skipped` (a current record reused) and `unwritten` (the write failed) describe the
    job's return value; `skipped` is never stored."""

    status: str | None = None  # ok / failed
    error: dict | None = None  # {type, message, traceback} when failed
    seconds: float | None = None
    finished_at: str | None = None  # ISO time, UTC
    warnings: list[str] = field(default_factory=list)
    recomputed_because: str | None = None  # why an existing record was not reused
    unwritten: str | None = None  # the path and error of a record that could not be written
    skipped: bool = False


@dataclass
class Scalars:
    """{key: value} of every scalar metric, why each NaN one is NaN, and the intervals (`intervals.Intervals`)."""

    metrics: dict[str, float] = field(default_factory=dict)
    nan_reasons: dict[str, str] = field(default_factory=dict)
    no_interval: dict[str, str] = field(default_factory=dict)  # key -> why it has no interval
    ci: dict[str, list[float]] = field(default_factory=dict)  # key -> [low, high]
    ci_reasons: dict[str, str] = field(default_factory=dict)  # key -> why its interval is NaN
    ci_method: dict[str, str] = field(default_factory=dict)  # key -> the method of its finite interval


@dataclass
class Provenance:
    """What the measurement was made from and what the job found on the way (the job module says how)."""

    config: dict | None = None  # the resolved config of the job
    config_hash: str | None = None  # `fingerprint.config_hash`: what decides reuse
    definitions: dict[str, int] | None = None  # {family or "probes": definition version}
    package_version: str | None = None
    checkpoint_fingerprint: str | None = None  # `fingerprint.checkpoint_fingerprint`
    weights_sha256: str | None = None
    weights_hash_version: int | None = None  # None: a record before per-tensor hashes (version 1)
    tensor_hashes: dict[str, str] | None = None
    constant_tensors: list[str] | None = None
    identical_weights_as: list[int] | None = None  # other steps of the run with these very weights
    integrity: list[dict] | None = None  # tensors equal to another step's (`results.tensor_equalities`)
    nonfinite: dict | None = None  # {"weights": {...}, "activations": {...}} when any was not finite
    probes: dict | None = None  # {skipped_short_texts, key}
    family_dtypes: dict[str, str] | None = None  # the dtype each family computed in
    memory_budget: dict | None = None  # {bytes, how}
    cost: dict | None = None  # per family: wall time and peak memory (`measure.meter`)
    wandb_run_dir: str | None = None
    extra: dict = field(default_factory=dict)  # fields of a format-1 record this format has no place for


@dataclass
class ArraysFile:
    """The npz written with a record: its name (beside the JSON) and the sha256 of its bytes."""

    file: str
    sha256: str | None = None


@dataclass
class RecordArrays:
    """The arrays a job writes with its record, by section."""

    heads: dict[str, np.ndarray] = field(default_factory=dict)
    raw: dict[str, np.ndarray] = field(default_factory=dict)
    samples: dict[str, Sample] = field(default_factory=dict)

    @classmethod
    def of(cls, measured) -> RecordArrays:
        """The arrays of a `FamilyResult` (its `heads`, `raw` and `samples`)."""
        return cls(dict(measured.heads), dict(measured.raw), dict(measured.samples))

    def members(self) -> dict[str, np.ndarray]:
        """The npz members: `heads/<key>`, `raw/<key>`, `samples/<key>/...`."""
        out = {f"heads/{k}": np.asarray(v) for k, v in self.heads.items()}
        out.update({f"raw/{k}": np.asarray(v) for k, v in self.raw.items()})
        for key, sample in self.samples.items():
            out.update(encode(key, sample, prefix="samples/"))
        return out


def npz_bytes(members: dict[str, np.ndarray]) -> bytes:
    """The compressed npz of `members` (`RecordArrays.members`)."""
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **members)
    return buffer.getvalue()


@dataclass
class Record:
    """One record (see the module docstring). `path` is the JSON file it was read from or written to, `format` the
    format it was read in (older ones are converted on reading; a new record is `FORMAT`)."""

    identity: Identity
    outcome: Outcome = field(default_factory=Outcome)
    scalars: Scalars = field(default_factory=Scalars)
    provenance: Provenance = field(default_factory=Provenance)
    arrays: ArraysFile | None = None
    path: Path | None = None
    format: int = FORMAT
    _loaded: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def model(self) -> str:
        """The training run."""
        return self.identity.model

    @property
    def step(self) -> int:
        """The step as an int; -1 for a failure record whose step never resolved (e.g. step=banana)."""
        try:
            return int(self.identity.step)
        except (TypeError, ValueError):
            return -1

    @property
    def ok(self) -> bool:
        return self.outcome.status == "ok"

    @property
    def label(self) -> str:
        """`<run>@<step>` as the report lists records."""
        return f"{self.identity.model}@{self.identity.step}"

    @property
    def arrays_path(self) -> Path | None:
        """The npz beside the JSON (None when the record names none or has no path)."""
        if self.arrays is None or self.path is None:
            return None
        return Path(self.path).parent / self.arrays.file

    def heads(self) -> dict[str, np.ndarray]:
        """The per-head arrays [layer, head, ...] by metric key (read from the npz when first asked)."""
        return self._section("heads")

    def raw(self) -> dict[str, np.ndarray]:
        """The other arrays (generated ids, loop periods, ...) by key."""
        return self._section("raw")

    def samples(self) -> dict[str, Sample]:
        """The per-prompt samples of the scalars (`bootstrap.Sample`) by scalar key."""
        return self._section("samples")

    def attach(self, arrays: RecordArrays) -> Record:
        """Hold `arrays` as this record's (a record built in memory, e.g. by a test, reads them instead of a file)."""
        self._loaded.update(heads=dict(arrays.heads), raw=dict(arrays.raw), samples=dict(arrays.samples))
        return self

    def _section(self, name: str) -> dict:
        if name not in self._loaded:
            self._loaded.update(read_sections(self, [name]))
        return self._loaded[name]

    def to_json(self) -> dict:
        """The JSON object of the record file (the in-memory `skipped`, `path` and `format` read are not stored)."""
        outcome = dataclasses.asdict(self.outcome)
        del outcome["skipped"]
        return {
            "format": FORMAT,
            "identity": dataclasses.asdict(self.identity),
            "outcome": outcome,
            "scalars": dataclasses.asdict(self.scalars),
            "provenance": dataclasses.asdict(self.provenance),
            "arrays": dataclasses.asdict(self.arrays) if self.arrays else None,
        }

    def to_bytes(self) -> bytes:
        return json.dumps(self.to_json(), indent=1, sort_keys=True, default=str).encode()


def _section_of(cls, data: Any, where: str):
    """A section dataclass from its JSON object, refusing a field it does not have (a record of a newer format)."""
    if not isinstance(data, dict):
        raise RecordFormatError(f"record section {where!r} is {type(data).__name__}, not an object")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise RecordFormatError(f"record section {where!r} has unknown field(s) {unknown}; known: {sorted(known)}")
    return cls(**data)


def from_json(data: dict, path: Path | None = None) -> Record:
    """The record of a parsed record file, in any format this version reads (format 1 through `from_format1`)."""
    if not isinstance(data, dict):
        raise RecordFormatError(f"a record file holds an object, not {type(data).__name__}")
    version = data.get("format", 1)
    if version == 1:
        return from_format1(data, path)
    if version != FORMAT:
        raise RecordFormatError(f"record format {version!r} is not one this version reads (1, {FORMAT})")
    arrays = data.get("arrays")
    return Record(
        identity=_section_of(Identity, data.get("identity"), "identity"),
        outcome=_section_of(Outcome, data.get("outcome") or {}, "outcome"),
        scalars=_section_of(Scalars, data.get("scalars") or {}, "scalars"),
        provenance=_section_of(Provenance, data.get("provenance") or {}, "provenance"),
        arrays=_section_of(ArraysFile, arrays, "arrays") if arrays else None,
        path=Path(path) if path is not None else None,
        format=FORMAT,
    )


def _take(flat: dict, cls) -> Any:
    """The section `cls` from the keys of a format-1 record that name its fields (removed from `flat`)."""
    names = [f.name for f in dataclasses.fields(cls) if f.name in flat]
    return cls(**{name: flat.pop(name) for name in names})


def from_format1(data: dict, path: Path | None = None) -> Record:
    """A format-1 record (the flat dict) as a `Record`; fields no section has go to `provenance.extra`, and its
    npz is read by the format-1 rule (module docstring). `format` stays 1, so a job recomputes it."""
    flat = dict(data)
    flat.pop("_path", None)  # injected by the format-1 reader, never meant to be stored
    flat.pop("skipped", None)
    if flat.get("warnings") is None:
        flat.pop("warnings", None)
    identity = Identity(**{f.name: flat.pop(f.name, None) for f in dataclasses.fields(Identity)})
    outcome, scalars = _take(flat, Outcome), _take(flat, Scalars)
    name, sha = flat.pop("arrays", None), flat.pop("arrays_sha256", None)
    provenance = _take(flat, Provenance)
    provenance.extra = flat
    arrays = ArraysFile(name, sha) if name else None
    return Record(identity, outcome, scalars, provenance, arrays, Path(path) if path is not None else None, format=1)


def arrays_sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def read_sections(record: Record, names: list[str]) -> dict[str, dict]:
    """The named sections of a record's npz ({} each when it has none)."""
    out: dict[str, dict] = {name: {} for name in names}
    path = record.arrays_path
    if path is None:
        return out
    if not path.exists():
        log.warning("record %s: its arrays file %s is missing: no arrays read", record.path, path.name)
        return out
    with np.load(path) as data:
        if record.format == 1:  # the sections are told apart by shape: every array is read
            sections = format1_sections(record, {name: data[name] for name in data.files})
        else:  # only the members of the asked sections are decompressed
            prefixes = tuple(f"{name}/" for name in names)
            sections = split_sections({n: data[n] for n in data.files if n.startswith(prefixes)})
    return {name: sections[name] for name in names}


def split_sections(members: dict[str, np.ndarray]) -> dict[str, dict]:
    """The sections of a current-format npz: heads, raw and decoded samples by key."""
    heads = {k[len("heads/") :]: v for k, v in members.items() if k.startswith("heads/")}
    raw = {k[len("raw/") :]: v for k, v in members.items() if k.startswith("raw/")}
    return {"heads": heads, "raw": raw, "samples": decode(members, prefix="samples/")}


def format1_sections(record: Record, members: dict[str, np.ndarray]) -> dict[str, dict]:
    """The sections of a format-1 npz: names `__` -> `/`, samples under `bootstrap/`, and the other arrays split
    into heads and raw by the model's (n_layers, n_heads) in the stored config (module docstring)."""
    arrays = {k.replace("__", "/"): v for k, v in members.items()}
    model = (record.provenance.config or {}).get("model") or {}
    shape = (model.get("n_layers"), model.get("n_heads"))
    heads, raw = {}, {}
    for key, array in arrays.items():
        if key.startswith(FORMAT1_SAMPLES):
            continue
        is_head = array.ndim == 2 if None in shape else array.ndim >= 2 and tuple(array.shape[:2]) == shape
        (heads if is_head else raw)[key] = array
    return {"heads": heads, "raw": raw, "samples": decode(arrays, prefix=FORMAT1_SAMPLES)}

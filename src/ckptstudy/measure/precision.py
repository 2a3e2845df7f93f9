"""Precision: the dtype each metric family computes in, and the model cast that gives it.

A family whose numbers half precision breaks declares `COMPUTE_DTYPE = "float32"` next to its `measure` (perturb:
a perturbation of 1e-4 ||h|| is below bfloat16's resolution of ~4e-3 ||h|| and vanishes when added). The job then
runs that family with the model's floating parameters and buffers cast to float32 (`computing_in`) and casts each
back to its own dtype after: bfloat16 -> float32 -> bfloat16 (and float16 -> float32 -> float16) round-trips
exactly, so the families after it see the same weights bit for bit. The cost: the weights are held in float32
while the family runs (`upcast_bytes`), and its activations are float32.

Every family states `TOLERANCE` next to its `measure` (`Tolerance`): how far its scalars in bfloat16 or float16
may lie from the same scalars in float32 (`compare`); `ckptstudy-gpu-check` and tests/test_precision.py use them.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "float64": torch.float64}


def dtype_name(dtype: torch.dtype) -> str:
    """ "float32" for torch.float32, and so on."""
    return str(dtype).removeprefix("torch.")


def model_dtype(model: torch.nn.Module) -> torch.dtype:
    """The dtype of the model's first floating parameter (the dtype it was loaded in)."""
    for p in model.parameters():
        if p.is_floating_point():
            return p.dtype
    raise ValueError("the model has no floating-point parameters")


def required_dtype(module, loaded: torch.dtype) -> torch.dtype:
    """The dtype a family computes in on a model loaded in `loaded`: its module's COMPUTE_DTYPE when that is wider
    than `loaded` (a float64 test model stays float64), else `loaded`. A family without COMPUTE_DTYPE computes in
    the loaded dtype."""
    if compute_bytes(module, loaded.itemsize) == loaded.itemsize:
        return loaded
    return DTYPES[module.COMPUTE_DTYPE]


def compute_bytes(module, loaded_bytes: int) -> int:
    """Bytes per value a family computes in on a model loaded at `loaded_bytes` per value (`required_dtype` by
    sizes: its module's COMPUTE_DTYPE when that is wider). The plan and the budget use it before any model loads."""
    wanted = getattr(module, "COMPUTE_DTYPE", None)
    if wanted is None:
        return loaded_bytes
    if wanted not in DTYPES:
        raise ValueError(f"{module.__name__}.COMPUTE_DTYPE={wanted!r} is not valid; choose one of {', '.join(DTYPES)}")
    return max(loaded_bytes, DTYPES[wanted].itemsize)


def upcast_bytes(n_params: int, loaded_bytes: int, compute_bytes: int) -> int:
    """Extra bytes the weights take while a family computes in a wider dtype than they were loaded in."""
    return max(0, n_params * (compute_bytes - loaded_bytes))


@contextmanager
def computing_in(model: torch.nn.Module, dtype: torch.dtype) -> Iterator[None]:
    """Inside: every floating parameter and buffer of `model` in `dtype`; after (also on error): each back in its
    own dtype (a float32 buffer of a bfloat16 model, e.g. rotary frequencies, stays float32). Nothing is cast
    when the model already computes in `dtype`."""
    tensors = [*model.named_parameters(), *model.named_buffers()]
    own = {name: t.dtype for name, t in tensors if t.is_floating_point()}
    if all(d == dtype for d in own.values()):
        yield
        return
    model.to(dtype)
    try:
        yield
    finally:
        for name, t in [*model.named_parameters(), *model.named_buffers()]:
            if name in own and t.dtype != own[name]:
                t.data = t.data.to(own[name])


@dataclass(frozen=True)
class Tolerance:
    """How far a family's scalars in half precision may lie from float32: |x - ref| <= atol + rtol |ref|.

    `exclude`: key fragments of thresholded statistics (argmax layers, counts over a threshold, onsets) that can
    flip legitimately between dtypes; they are listed by `compare` but not checked. A scalar NaN in both is equal;
    NaN in one only is a failure."""

    rtol: float
    atol: float
    exclude: tuple[str, ...] = field(default_factory=tuple)

    def excluded(self, key: str) -> bool:
        return any(fragment in key for fragment in self.exclude)


@dataclass
class Comparison:
    """One family's scalars against the reference: the largest absolute and relative difference over the checked
    keys, the keys outside the tolerance, and the keys not checked (thresholded)."""

    max_abs: float
    max_rel: float
    failed: dict[str, tuple[float, float]]
    skipped: list[str]
    checked: int

    @property
    def ok(self) -> bool:
        return not self.failed


def compare(values: dict[str, float], reference: dict[str, float], tolerance: Tolerance) -> Comparison:
    """`values` against `reference` (same keys; a key missing from either fails) within `tolerance`."""
    max_abs = max_rel = 0.0
    failed, skipped, checked = {}, [], 0
    for key in sorted(set(values) | set(reference)):
        if tolerance.excluded(key):
            skipped.append(key)
            continue
        x, ref = values.get(key, math.nan), reference.get(key, math.nan)
        if key not in values or key not in reference:
            failed[key] = (x, ref)
            continue
        checked += 1
        if math.isnan(x) and math.isnan(ref):
            continue
        diff = abs(x - ref)
        if math.isnan(diff) or (math.isinf(diff) and x != ref):
            failed[key] = (x, ref)
            continue
        if x == ref:  # equal infinities included
            continue
        max_abs = max(max_abs, diff)
        max_rel = max(max_rel, diff / abs(ref) if ref else math.inf)
        if diff > tolerance.atol + tolerance.rtol * abs(ref):
            failed[key] = (x, ref)
    return Comparison(max_abs, max_rel, failed, skipped, checked)

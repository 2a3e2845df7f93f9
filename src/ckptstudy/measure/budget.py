"""The memory budget: how many rows every batched pass runs per call, from one function.

`memory_budget` (top-level config) is `auto` or a number of GB (2^30 bytes). `auto` resolves when a job starts,
before the weights load: on CUDA, CUDA_SHARE of the device's free memory (`torch.cuda.mem_get_info`), on CPU,
CPU_SHARE of the available RAM (/proc/meminfo MemAvailable), minus the weights in either case.

`fit_rows(pass, shape, budget, dtype_bytes)` inverts the peak-memory model of `ckptstudy.measure.cost`: the
largest rows per call whose predicted peak fits the budget (times the pass's `share`), in whole groups, at least
one group; when even that does not fit, a `BudgetError` naming the pass, the predicted bytes and the budget.
`call_rows` caps it by the configured size (`batch_size`, `metrics.icl_heads.max_rows`, `metrics.perturb.max_rows`:
upper bounds, null = the budget alone). Families ask through `JobContext.rows(pass)`; `ckptstudy-plan` calls the
same functions with the same pass descriptions, so the plan's peaks are the job's.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

from ckptstudy.measure.cost import Pass, Shape, pass_peak_bytes

GB = 2**30
AUTO = "auto"
CPU_SHARE = 0.5  # of MemAvailable: the RSS of a CPU job runs above the activation model (allocator caching)
CUDA_SHARE = 0.6  # of free memory: the peak model runs up to 1.6x under measured peaks (benches/peaks.py, CPU)


class BudgetError(MemoryError):
    """A pass cannot run within the memory budget, even one row (or one group of rows) per call."""


@dataclass(frozen=True)
class MemoryBudget:
    """The bytes every pass's rows per call must fit in (activations; weights not included), and how they were
    resolved."""

    bytes: int
    how: str

    def describe(self) -> str:
        return f"{gigabytes(self.bytes)} ({self.how})"


def gigabytes(n: float) -> str:
    return f"{n / GB:.1f} GB" if abs(n) >= GB / 10 else f"{n / 2**20:.0f} MB"


def parse_budget(value) -> float | None:
    """The configured `memory_budget` as GB, or None for `auto`; a clear error for anything else."""
    if isinstance(value, str) and value.strip().lower() == AUTO:
        return None
    try:
        gb = float(value)
    except (TypeError, ValueError):
        gb = math.nan
    if isinstance(value, bool) or not math.isfinite(gb) or gb <= 0:
        raise ValueError(f"memory_budget={value!r} is not valid; valid: auto, or a number of GB > 0 (e.g. 6)")
    return gb


def available_ram() -> int:
    """Bytes of RAM available to a new process without swapping (MemAvailable; the free pages elsewhere)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def free_device_memory(device: str) -> int:
    """Free bytes on a CUDA device (`torch.cuda.mem_get_info`)."""
    import torch

    return int(torch.cuda.mem_get_info(torch.device(device))[0])


def resolve_budget(value, device: str, weights_bytes: float, free_bytes: int | None = None) -> MemoryBudget:
    """The job's budget from the configured `memory_budget` on `device`: a number of GB as given; `auto` = a safe
    share of the free memory (`free_bytes`, else measured now) minus `weights_bytes` (0 once they are loaded,
    when the free memory already excludes them)."""
    gb = parse_budget(value)
    if gb is not None:
        return MemoryBudget(int(gb * GB), f"memory_budget={value}")
    cuda = str(device).startswith("cuda")
    share = CUDA_SHARE if cuda else CPU_SHARE
    free = free_bytes if free_bytes is not None else (free_device_memory(device) if cuda else available_ram())
    where = f"free memory of {device}" if cuda else "available RAM"
    budget = free * share - weights_bytes
    how = f"memory_budget=auto: {share:.0%} of {gigabytes(free)} {where} minus {gigabytes(weights_bytes)} of weights"
    if budget <= 0:
        raise BudgetError(f"{how} leaves nothing for activations; free some memory or set memory_budget=<GB>")
    return MemoryBudget(int(budget), how)


def fit_rows(p: Pass, shape: Shape, budget_bytes: float, dtype_bytes: int) -> int:
    """The largest rows per call (a multiple of `p.group`, at most the pass's rows rounded up to a group) whose
    predicted peak fits `budget_bytes * p.share`; `BudgetError` when one group does not."""
    limit = budget_bytes * p.share
    unit = max(1, p.group)
    most = max(1, math.ceil(max(p.rows, 1) / unit))

    def peak(groups: int) -> float:
        return pass_peak_bytes(p.with_batch(groups * unit), shape, dtype_bytes)

    if peak(1) > limit:
        rows = f"{unit} rows" if unit > 1 else "1 row"
        share = f" ({p.share:.0%} of it for this pass)" if p.share < 1 else ""
        raise BudgetError(
            f"{p.what}: {rows} of {p.seq} tokens per call need {gigabytes(peak(1))} of activations; the memory "
            f"budget is {gigabytes(budget_bytes)}{share}. Raise memory_budget (GB), use a smaller dtype or "
            "shorten the probes"
        )
    low, high = 1, most  # peak(low) fits; find the largest that does
    while low < high:
        mid = (low + high + 1) // 2
        if peak(mid) <= limit:
            low = mid
        else:
            high = mid - 1
    return low * unit


def call_rows(p: Pass, shape: Shape, budget_bytes: float, dtype_bytes: int) -> int:
    """Rows per call of pass `p`: `fit_rows`, capped by its configured `batch` (rounded down to whole groups, at
    least one group)."""
    rows = fit_rows(p, shape, budget_bytes, dtype_bytes)
    if p.batch is not None:
        unit = max(1, p.group)
        rows = min(rows, max(unit, p.batch // unit * unit))
    return rows


def lowered(p: Pass, rows: int, shape: Shape, budget_bytes: float, dtype_bytes: int) -> str | None:
    """Why the budget runs fewer rows per call than the configured cap, or None when it does not."""
    wanted = None if p.batch is None else min(p.batch, max(p.rows, 1))
    if wanted is None or rows >= wanted:
        return None
    need = pass_peak_bytes(p.with_batch(wanted), shape, dtype_bytes)
    return (
        f"{p.what}: {rows} rows per call instead of {p.limit}={p.batch}: {wanted} rows would need "
        f"{gigabytes(need)} of activations, over the memory budget of {gigabytes(budget_bytes * p.share)}"
    )

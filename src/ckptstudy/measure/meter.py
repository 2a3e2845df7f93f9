"""Wall time and peak memory of the parts of a job (each metric family, each shared computation).

Peak memory is what the part added at its highest above where it started: on CUDA the caching allocator's
`max_memory_allocated` above `memory_allocated` at the start; on CPU the process's resident high-water mark
(VmHWM, reset through /proc/self/clear_refs) above its resident size at the start. CPU figures include the
allocator's caching, so they scatter (up to ~1.3x) around the activations `ckptstudy.measure.cost` models; NaN
where the platform offers neither. A part measured inside another (a shared computation a family triggers) is
left out of the outer part's time and peak.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from ckptstudy.measure import heap

STATUS = Path("/proc/self/status")
CLEAR_REFS = Path("/proc/self/clear_refs")


# glibc's malloc_trim, or None: memory an earlier part freed but malloc kept resident would otherwise be reused
# unseen by the next part's resident-memory peak
_TRIM = heap.libc_function("malloc_trim")


def _status_bytes(field: str) -> int:
    for line in STATUS.read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise OSError(f"{field} not in {STATUS}")


@dataclass
class _Frame:
    label: str
    start: float
    started: float
    peak: float  # highest absolute reading over the frame's own segments
    nested_seconds: float = 0.0


class Meter:
    """Measures labelled parts: `with meter.part(label):` adds {"seconds", "peak_bytes"} to `meter.costs`."""

    def __init__(self, device) -> None:
        self.cuda = torch.device(device).type == "cuda"
        self.device = torch.device(device)
        self.costs: dict[str, dict[str, float]] = {}
        self._stack: list[_Frame] = []
        self.available = self.cuda or self._cpu_works()

    @staticmethod
    def _cpu_works() -> bool:
        try:
            CLEAR_REFS.write_text("5")
            _status_bytes("VmHWM")
            return True
        except OSError:
            return False

    def _reset(self) -> None:
        if self.cuda:
            torch.cuda.reset_peak_memory_stats(self.device)
        elif self.available:
            if _TRIM is not None:
                _TRIM(0)
            CLEAR_REFS.write_text("5")

    def _current(self) -> float:
        if self.cuda:
            return float(torch.cuda.memory_allocated(self.device))
        return float(_status_bytes("VmRSS")) if self.available else math.nan

    def _high_water(self) -> float:
        if self.cuda:
            return float(torch.cuda.max_memory_allocated(self.device))
        return float(_status_bytes("VmHWM")) if self.available else math.nan

    @contextmanager
    def part(self, label: str) -> Iterator[None]:
        """Measure the block as `label` (a nested part is left out of the enclosing one)."""
        if self._stack:
            outer = self._stack[-1]
            outer.peak = max(outer.peak, self._high_water())
        self._reset()
        start = self._current()
        frame = _Frame(label, start, time.perf_counter(), start)
        self._stack.append(frame)
        try:
            yield
        finally:
            frame.peak = max(frame.peak, self._high_water())
            seconds = time.perf_counter() - frame.started
            self._stack.pop()
            self.costs[label] = {
                "seconds": round(seconds - frame.nested_seconds, 3),
                "peak_bytes": max(0.0, frame.peak - frame.start),
            }
            if self._stack:
                self._stack[-1].nested_seconds += seconds
                self._reset()

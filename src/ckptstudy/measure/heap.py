"""CPU heap policy around greedy decoding: large blocks go back to the system when freed.

glibc's malloc serves blocks below its mmap threshold from the heap and keeps freed heap memory for reuse; the
threshold rises (up to 32 MB) each time a large mapped block is freed. Greedy decoding allocates and frees
megabyte tensors at every step, so the heap grows far beyond what is alive at any moment. Measured at the
Pythia-14m shape, 64 rows x 1032 tokens (`benches/realshape.py`, NOTES.md): +6.2 GB resident as before, +0.49 GB
(the plan's prediction) with a static KV cache and a 1 MB threshold. A 1 MB threshold for the whole job made the
other families 1.7-2.6x slower (page faults), so it holds during decoding only; afterwards the threshold is fixed
at 32 MB, where glibc's own rising threshold ends.

Side effects, process-wide: setting the threshold switches off glibc's dynamic threshold for the rest of the
process (from then on it stays at 32 MB), and it applies to every thread while decoding runs. A user who set
`MALLOC_MMAP_THRESHOLD_` keeps their setting: nothing is changed then. Where glibc refuses 32 MB (32-bit
systems, huge-page tunables) the threshold stays at 1 MB and a warning says so. Not glibc (macOS, Windows, musl's
stub): nothing changes. The generation module calls this on CPU only (CUDA memory is not malloc's).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager

log = logging.getLogger(__name__)

USER_SETTING = "MALLOC_MMAP_THRESHOLD_"  # glibc's environment variable for the same threshold
M_MMAP_THRESHOLD = -3  # mallopt parameter (malloc.h)
DECODING_THRESHOLD = 1 << 20  # bytes: during decoding, blocks this large are mapped and unmapped when freed
DEFAULT_CEILING = 32 << 20  # glibc's largest dynamic threshold on 64-bit systems


def libc_function(name: str):
    """The C library's function `name` (ctypes), or None where it has none (not glibc)."""
    try:
        return getattr(ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6"), name)
    except (OSError, AttributeError):
        return None


_MALLOPT = libc_function("mallopt")


def set_mmap_threshold(threshold: int) -> bool:
    """Fix glibc's mmap threshold at `threshold` bytes; False where the C library has no `mallopt`."""
    return bool(_MALLOPT(M_MMAP_THRESHOLD, int(threshold))) if _MALLOPT is not None else False


@contextmanager
def returning_large_blocks() -> Iterator[None]:
    """Inside the block, freed blocks of at least 1 MB leave the process at once; after it, 32 MB. Nothing is
    changed when the user set MALLOC_MMAP_THRESHOLD_ or the C library has no mallopt."""
    if USER_SETTING in os.environ or not set_mmap_threshold(DECODING_THRESHOLD):
        yield
        return
    try:
        yield
    finally:
        if not set_mmap_threshold(DEFAULT_CEILING):
            log.warning(
                "glibc refused an mmap threshold of %d bytes after decoding: it stays at %d (allocations may be "
                "slower for the rest of the job)",
                DEFAULT_CEILING,
                DECODING_THRESHOLD,
            )

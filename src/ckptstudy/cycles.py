"""Trailing-cycle detection: does a token sequence end in a loop, with which period, since when?

Definition (Mahaut & Franzon's public code): for a period p, count how many consecutive
exact copies of the last p tokens run backwards from the end. The loop is the smallest
p in [min_period, min(max_period, n // 2)] with at least `min_copies` copies; its onset
is the index where the first full copy starts.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


DEFINITIONS = ("suffix", "paper")


@dataclass(frozen=True)
class LoopRule:
    """One definition of a loop, shared by every family that detects loops (config key `loops`)."""

    definition: str = "suffix"  # suffix (longest periodic suffix) | paper (Mahaut & Franzon's public code)
    min_period: int = 2
    max_period: int = 500
    min_copies: int = 2

    def detect(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(period, copies, onset) of every row of `ids` [batch, n] under this rule."""
        return trailing_cycles(ids, self.min_period, self.max_period, self.min_copies, definition=self.definition)


@dataclass(frozen=True)
class Cycle:
    period: int
    copies: int
    onset: int  # index of the first token of the first full copy


def trailing_cycles(
    ids: torch.Tensor, min_period: int = 2, max_period: int = 500, min_copies: int = 2, definition: str = "suffix"
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Batched trailing cycles of `ids` [batch, n].

    Returns (period, copies, onset), each [batch] long; period = 0, copies = 0 and
    onset = -1 where a row does not end in a loop.
    """
    if min_period < 1 or min_copies < 2:
        raise ValueError(f"need min_period >= 1 and min_copies >= 2, got {min_period}, {min_copies}")
    ids = torch.as_tensor(ids)
    batch, n = ids.shape
    period = torch.zeros(batch, dtype=torch.long)
    copies = torch.zeros(batch, dtype=torch.long)
    # reversed, so the trailing run for period p is the matching prefix of y[p:] and y
    hi = min(max_period, n // 2)
    if hi < min_period:
        return period, copies, torch.full_like(period, -1)
    y = ids.flip(1).to(torch.int32)  # reversed: the trailing run for period p = matching prefix of y[p:] and y
    # a loop of period p needs at least p matching positions, so its first k tokens must match: a cheap filter
    k = min(min_period, 4)
    lo_p = min_period
    candidate = torch.ones(batch, hi - lo_p + 1, dtype=torch.bool)
    for j in range(k):
        candidate &= y[:, lo_p + j : hi + 1 + j] == y[:, j : j + 1]
    open_rows = torch.ones(batch, dtype=torch.bool)
    for p in range(lo_p, hi + 1):
        sel = open_rows & candidate[:, p - lo_p]
        if not sel.any():
            continue
        rows = y[sel]
        mismatch = rows[:, p:] != rows[:, : n - p]
        run = torch.where(mismatch.any(-1), mismatch.int().argmax(-1), n - p)
        n_copies = (run + p) // p
        found = torch.zeros(batch, dtype=torch.bool)
        found[sel] = n_copies >= min_copies
        period[found] = p
        copies[found] = n_copies[n_copies >= min_copies]
        open_rows &= ~found
        if not open_rows.any():
            break
    onset = torch.where(period > 0, n - copies * period, torch.full_like(period, -1))
    return period, copies, onset


def trailing_cycle(
    seq: list[int] | torch.Tensor, min_period: int = 2, max_period: int = 500, min_copies: int = 2
) -> Cycle | None:
    """The trailing cycle of one sequence, or None when it does not end in a loop."""
    ids = torch.as_tensor(list(seq) if not isinstance(seq, torch.Tensor) else seq, dtype=torch.long)
    if ids.numel() < 2:
        return None
    p, c, o = trailing_cycles(ids[None], min_period, max_period, min_copies)
    return Cycle(int(p[0]), int(c[0]), int(o[0])) if int(p[0]) > 0 else None

"""Trailing-cycle detection: does a token sequence end in a loop, with which period, since when?

A row of n tokens s[0..n-1] is examined for every period p with min_period <= p <= min(max_period, n // 2)
(a loop longer than half the row is never a loop). Two definitions are available (`definition=`):

- ``suffix`` (default). The p-periodic suffix is the longest suffix t of s with t[i] == t[i + p] for every
  valid i. Period p is eligible when |t| >= min_copies * p. Among the eligible periods the loop is the one
  whose periodic suffix is longest; ties go to the smallest period (so ``[1, 2] * 4`` is period 2, not 4).
  onset = n - |t| (where the periodicity starts; that may be in the middle of a copy, e.g.
  ``[1, 2, 3, 12, 13, 11, 12, 13, 11, 12, 13]`` loops with period 3 from index 3) and copies = |t| // p, the
  number of full copies from the onset on (so onset + copies * p <= n).
- ``paper`` (Mahaut & Franzon's public code, kept bit for bit). For each p count the consecutive exact copies
  of the last p tokens running backwards from the end; the loop is the SMALLEST p with >= min_copies copies,
  and onset = n - copies * p, the start of the first full copy counted back from the end.

Why suffix is the default: the paper rule is biased in two ways. (1) It misdates the onset: it only counts
whole copies aligned to the END of the row, so a loop that starts at index 100 with period 40 is reported
anywhere from 100 to 139 depending on where generation happened to stop. (2) A short repeat at the very end
hides a longer loop: ``[100, 101, 102] + [5, 6, 7, 8, 1, 2, 1, 2] * 3`` is reported as period 2 with 2 copies
(from index 23) though the row loops with period 8 from index 3 (3 copies). The suffix rule dates the onset
where the periodicity really starts, independent of the generation length, and prefers the explanation that
covers the most tokens.

Both rules return period = 0, copies = 0, onset = -1 for rows that do not loop. They agree on WHETHER a row
loops (p has >= min_copies trailing copies exactly when its periodic suffix is >= min_copies * p long); they
differ only in the period, copies and onset they report.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

DEFINITIONS = ("suffix", "paper")


@dataclass(frozen=True)
class LoopRule:
    """One definition of a loop, shared by every family that detects loops (config key `loops`)."""

    definition: str  # suffix (longest periodic suffix) | paper (Mahaut & Franzon's public code)
    min_period: int
    max_period: int
    min_copies: int

    def detect(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(period, copies, onset) of every row of `ids` [batch, n] under this rule."""
        return trailing_cycles(ids, self.min_period, self.max_period, self.min_copies, definition=self.definition)


@dataclass(frozen=True)
class Cycle:
    period: int
    copies: int  # full copies from the onset to the end
    onset: int  # suffix: where the periodicity starts (maybe mid-copy); paper: first token of the first full copy


def check_loop_parameters(definition: str, min_period: int, max_period: int, min_copies: int) -> None:
    """Raise ValueError naming the bad value and the valid range or choices."""
    if definition not in DEFINITIONS:
        raise ValueError(f"unknown loop definition {definition!r}: choose one of {', '.join(DEFINITIONS)}")
    if min_period < 1:
        raise ValueError(f"min_period must be >= 1, got {min_period}")
    if min_copies < 2:
        raise ValueError(f"min_copies must be >= 2, got {min_copies}")
    if max_period < min_period:
        raise ValueError(f"max_period must be >= min_period ({min_period}), got {max_period}")


def trailing_cycles(
    ids: torch.Tensor, min_period: int = 2, max_period: int = 500, min_copies: int = 2, definition: str = "suffix"
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Batched trailing cycles of `ids` [batch, n] under `definition` (see the module docstring).

    Returns (period, copies, onset), each [batch] long; period = 0, copies = 0 and
    onset = -1 where a row does not end in a loop.
    """
    check_loop_parameters(definition, min_period, max_period, min_copies)
    ids = torch.as_tensor(ids)
    if ids.dim() != 2:
        raise ValueError(f"ids must be [batch, n], got shape {tuple(ids.shape)}")
    if definition == "paper":
        return _paper_cycles(ids, min_period, max_period, min_copies)
    return _suffix_cycles(ids, min_period, max_period, min_copies)


def _paper_cycles(
    ids: torch.Tensor, min_period: int, max_period: int, min_copies: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The paper's rule: smallest period with >= min_copies copies of the last p tokens, counted from the end."""
    batch, n = ids.shape
    period = torch.zeros(batch, dtype=torch.long)
    copies = torch.zeros(batch, dtype=torch.long)
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


_FILTER_TOKENS = 8  # leading tokens compared by the candidate filter of the suffix rule
_FIRST_WINDOW = 32  # positions compared in the first round of a run-length search (then doubled)


def _suffix_cycles(
    ids: torch.Tensor, min_period: int, max_period: int, min_copies: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The suffix rule: among eligible periods, the longest periodic suffix; ties to the smallest period.

    Works on the reversed rows y, where the p-periodic suffix has length L_p = run_p + p, run_p being the
    length of the matching prefix of y[p:] and y. Only candidate periods are searched: eligibility needs
    run_p >= (min_copies - 1) * p >= p, so y[j] == y[j + p] for j < p (checked for the first few j) and at
    the last required position j = (min_copies - 1) * p - 1. Each round takes every row's smallest remaining
    candidate (so ties keep going to the smallest period) and measures its run, comparing growing windows
    so a search stops soon after the first mismatch. When a row's best eligible length becomes L, a larger
    period p can only beat it if y[L - p] == y[L]: the rest are dropped, which removes e.g. the ~250
    multiples of a period-2 loop (they all break where the loop breaks) without a scan each.
    """
    batch, n = ids.shape
    period = torch.zeros(batch, dtype=torch.long)
    copies = torch.zeros(batch, dtype=torch.long)
    onset = torch.full((batch,), -1, dtype=torch.long)
    hi = min(max_period, n // 2)
    if hi < min_period or batch == 0:
        return period, copies, onset
    y = ids.flip(1).contiguous()
    if y.dtype == torch.long and int(y.min()) >= -(2**31) and int(y.max()) < 2**31:
        y = y.int()  # same comparisons, half the memory traffic
    lo = min_period
    ps = torch.arange(lo, hi + 1)
    candidate = (min_copies * ps <= n).expand(batch, -1).clone()
    for j in range(min(_FILTER_TOKENS, hi)):
        first = max(lo, j + 1)  # only periods p > j need y[j] == y[j + p]
        candidate[:, first - lo :] &= y[:, first + j : hi + 1 + j] == y[:, j : j + 1]
    need = torch.minimum((min_copies - 1) * ps - 1, n - 1 - ps)  # clamped columns are already excluded
    candidate &= y[:, need] == y[:, need + ps]
    best_len = torch.zeros(batch, dtype=torch.long)  # longest eligible periodic suffix so far
    rows = candidate.any(1).nonzero().flatten()
    while rows.numel():
        col = candidate[rows].int().argmax(1)  # smallest remaining candidate of each row
        candidate[rows, col] = False
        p = lo + col
        length = _runs(y, rows, p) + p
        win = (length >= min_copies * p) & (length > best_len[rows])
        rows, length, p = rows[win], length[win], p[win]
        best_len[rows] = length
        period[rows] = p
        copies[rows] = length // p
        onset[rows] = n - length
        # prune: p' can beat L only if y[L - p'] == y[L] (p' <= L), and nothing beats L = n
        at = length[:, None] - ps
        at_ok = at >= 0
        sub = y[rows]
        same = sub.gather(1, at.clamp(min=0)) == sub.gather(1, length.clamp(max=n - 1)[:, None])
        candidate[rows] &= (~at_ok | same) & (length < n)[:, None]
        rows = candidate.any(1).nonzero().flatten()
    return period, copies, onset


def _runs(y: torch.Tensor, rows: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """For each k: the first i with y[rows[k], i] != y[rows[k], i + p[k]], or n - p[k] if there is none."""
    n = y.shape[1]
    flat = y.reshape(-1)
    last = n - 1 - p  # last comparable position, >= 0
    run = torch.zeros_like(p)
    todo = torch.arange(rows.numel())
    width = _FIRST_WINDOW
    while todo.numel():
        at = run[todo, None] + torch.arange(width)
        beyond = at > last[todo, None]
        at = torch.minimum(at, last[todo, None]) + rows[todo, None] * n
        stop = (flat[at] != flat[at + p[todo, None]]) | beyond
        hit = stop.any(1)
        run[todo] += torch.where(hit, stop.int().argmax(1), width)
        todo = todo[~hit]
        width *= 2
    return run


def trailing_cycle(
    seq: list[int] | torch.Tensor,
    min_period: int = 2,
    max_period: int = 500,
    min_copies: int = 2,
    definition: str = "suffix",
) -> Cycle | None:
    """The trailing cycle of one sequence, or None when it does not end in a loop."""
    check_loop_parameters(definition, min_period, max_period, min_copies)
    ids = torch.as_tensor(list(seq) if not isinstance(seq, torch.Tensor) else seq, dtype=torch.long)
    if ids.numel() < 2:
        return None
    p, c, o = trailing_cycles(ids[None], min_period, max_period, min_copies, definition=definition)
    return Cycle(int(p[0]), int(c[0]), int(o[0])) if int(p[0]) > 0 else None

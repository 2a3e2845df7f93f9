"""Trailing-cycle detection on hand-made sequences and against a straightforward reference."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ckptstudy.cycles import Cycle, trailing_cycle, trailing_cycles


def reference(seq: list[int], min_period=2, max_period=500, min_copies=2):
    """Count copies of the last p tokens backwards, smallest p with enough copies wins."""
    n = len(seq)
    for p in range(min_period, min(max_period, n // 2) + 1):
        copies = 1
        while n - (copies + 1) * p >= 0 and seq[n - (copies + 1) * p : n - copies * p] == seq[n - p :]:
            copies += 1
        # a partial copy before the first full one does not count; onset = start of the first full copy
        if copies >= min_copies:
            return Cycle(p, copies, n - copies * p)
    return None


def test_no_loop():
    assert trailing_cycle([1, 2, 3, 4, 5, 6, 7, 8]) is None


def test_period_one_needs_min_period_one():
    assert trailing_cycle([9, 4, 4, 4, 4], min_period=1) == Cycle(1, 4, 1)
    # with the paper's min_period=2, a run of one token is a period-2 loop
    assert trailing_cycle([9, 4, 4, 4, 4]) == Cycle(2, 2, 1)


def test_period_two_and_seven():
    assert trailing_cycle([5, 1, 2, 1, 2, 1, 2]) == Cycle(2, 3, 1)
    loop = [10, 11, 12, 13, 14, 15, 16]
    assert trailing_cycle([3, 3, 8] + loop * 3) == Cycle(7, 3, 3)


def test_loop_starting_mid_sequence_with_a_partial_copy_before_it():
    # 12 13 is the tail of a copy of (11 12 13): only full copies count, onset after the partial one
    seq = [1, 2, 3, 12, 13, 11, 12, 13, 11, 12, 13]
    assert trailing_cycle(seq) == Cycle(3, 2, 5)


def test_loop_longer_than_half_is_not_a_loop():
    body = list(range(20, 31))
    assert trailing_cycle([1] + body + body[:9]) is None


def test_ties_take_the_smallest_period():
    # period 2 and period 4 both fit; the smallest wins
    assert trailing_cycle([7, 1, 2, 1, 2, 1, 2, 1, 2]).period == 2


def test_min_copies_and_max_period():
    assert trailing_cycle([0, 1, 2, 3, 1, 2, 3], min_copies=3) is None
    assert trailing_cycle([0, 1, 2, 3, 1, 2, 3], max_period=2) is None


def test_batched_rows_are_independent():
    rows = torch.tensor([[1, 2, 3, 4, 5, 6], [0, 7, 8, 7, 8, 7], [4, 4, 4, 4, 4, 4]])
    period, copies, onset = trailing_cycles(rows)
    assert period.tolist() == [0, 2, 2] and copies.tolist() == [0, 2, 3] and onset.tolist() == [-1, 2, 0]


@settings(max_examples=300, deadline=None)
@given(
    prefix=st.lists(st.integers(0, 5), max_size=12),
    unit=st.lists(st.integers(0, 5), min_size=1, max_size=6),
    reps=st.integers(0, 4),
    suffix=st.lists(st.integers(0, 5), max_size=3),
    min_period=st.integers(1, 3),
    min_copies=st.integers(2, 3),
)
def test_matches_reference(prefix, unit, reps, suffix, min_period, min_copies):
    seq = prefix + unit * reps + suffix
    if len(seq) < 2:
        return
    assert trailing_cycle(seq, min_period, 500, min_copies) == reference(seq, min_period, 500, min_copies)

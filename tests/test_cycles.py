"""Trailing-cycle detection: hand-made sequences and straightforward references for both loop definitions."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ckptstudy.measure.cycles import DEFINITIONS, Cycle, LoopRule, trailing_cycle, trailing_cycles
from configured import loop_rule


def paper_reference(seq: list[int], min_period=2, max_period=500, min_copies=2):
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


def suffix_reference(seq: list[int], min_period=2, max_period=500, min_copies=2):
    """Longest p-periodic suffix over eligible p (length >= min_copies * p); ties to the smallest p."""
    n = len(seq)
    best = None
    for p in range(min_period, min(max_period, n // 2) + 1):
        length = p  # the last p tokens are trivially p-periodic; grow leftwards while s[i] == s[i + p]
        while length < n and seq[n - length - 1] == seq[n - length - 1 + p]:
            length += 1
        if length >= min_copies * p and (best is None or length > n - best.onset):
            best = Cycle(p, length // p, n - length)
    return best


REFERENCES = {"suffix": suffix_reference, "paper": paper_reference}


def is_periodic_from(seq: list[int], start: int, p: int) -> bool:
    return all(seq[i] == seq[i + p] for i in range(start, len(seq) - p))


# ---- both definitions


@pytest.mark.parametrize("definition", DEFINITIONS)
def test_no_loop(definition):
    assert trailing_cycle([1, 2, 3, 4, 5, 6, 7, 8], definition=definition) is None
    assert trailing_cycle([3], definition=definition) is None and trailing_cycle([], definition=definition) is None


@pytest.mark.parametrize("definition", DEFINITIONS)
def test_period_one_needs_min_period_one(definition):
    assert trailing_cycle([9, 4, 4, 4, 4], min_period=1, definition=definition) == Cycle(1, 4, 1)
    # with the paper's min_period=2, a run of one token is a period-2 loop
    assert trailing_cycle([9, 4, 4, 4, 4], definition=definition) == Cycle(2, 2, 1)


@pytest.mark.parametrize("definition", DEFINITIONS)
def test_period_two_and_seven(definition):
    assert trailing_cycle([5, 1, 2, 1, 2, 1, 2], definition=definition) == Cycle(2, 3, 1)
    loop = [10, 11, 12, 13, 14, 15, 16]
    assert trailing_cycle([3, 3, 8] + loop * 3, definition=definition) == Cycle(7, 3, 3)


@pytest.mark.parametrize("definition", DEFINITIONS)
def test_loop_longer_than_half_is_not_a_loop(definition):
    body = list(range(20, 31))
    assert trailing_cycle([1] + body + body[:9], definition=definition) is None


@pytest.mark.parametrize("definition", DEFINITIONS)
def test_whole_row_of_copies_ties_to_the_smallest_period(definition):
    assert trailing_cycle([1, 2] * 4, definition=definition) == Cycle(2, 4, 0)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"definition": "longest"}, r"unknown loop definition 'longest'.*suffix, paper"),
        ({"min_period": 0}, r"min_period must be >= 1, got 0"),
        ({"min_copies": 1}, r"min_copies must be >= 2, got 1"),
        ({"min_period": 3, "max_period": 2}, r"max_period must be >= min_period \(3\), got 2"),
    ],
)
def test_bad_parameters_are_refused_by_name(kwargs, message):
    with pytest.raises(ValueError, match=message):
        trailing_cycles(torch.tensor([[1, 2, 1, 2]]), **kwargs)
    with pytest.raises(ValueError, match=message):
        trailing_cycle([1, 2, 1, 2], **kwargs)
    with pytest.raises(ValueError, match=message):
        trailing_cycle([1], **kwargs)  # refused even when the row is too short to loop
    with pytest.raises(ValueError, match=message):
        rule = {"definition": "suffix", "min_period": 2, "max_period": 500, "min_copies": 2, **kwargs}
        LoopRule(**rule).detect(torch.tensor([[1, 2, 1, 2]]))


def test_loop_rule_detects_with_its_definition():
    seq = [100, 101, 102] + [5, 6, 7, 8, 1, 2, 1, 2] * 3
    ids = torch.tensor([seq])
    for definition in DEFINITIONS:
        period, copies, onset = loop_rule(definition=definition).detect(ids)
        assert Cycle(int(period[0]), int(copies[0]), int(onset[0])) == REFERENCES[definition](seq)


# ---- the paper's rule (Mahaut & Franzon's public code), kept as it was


def test_paper_ties_take_the_smallest_period():
    # period 2 and period 4 both fit; the smallest wins
    assert trailing_cycle([7, 1, 2, 1, 2, 1, 2, 1, 2], definition="paper") == Cycle(2, 4, 1)
    # the smallest period with enough copies wins even when a longer period explains more of the row
    assert trailing_cycle([0, 5, 6, 1, 2, 1, 2, 5, 6, 1, 2, 1, 2], definition="paper") == Cycle(2, 2, 9)


def test_paper_loop_starting_mid_sequence_with_a_partial_copy_before_it():
    # 12 13 is the tail of a copy of (11 12 13): only full copies count, onset after the partial one
    seq = [1, 2, 3, 12, 13, 11, 12, 13, 11, 12, 13]
    assert trailing_cycle(seq, definition="paper") == Cycle(3, 2, 5)


def test_paper_onset_depends_on_where_generation_stopped():
    prefix, block = list(range(1000, 1100)), list(range(40))
    for extra in (0, 1, 17, 39):
        seq = prefix + block * 3 + block[:extra]
        assert trailing_cycle(seq, definition="paper") == Cycle(40, 3, 100 + extra)


def test_paper_short_repeat_at_the_end_hides_the_longer_loop():
    seq = [100, 101, 102] + [5, 6, 7, 8, 1, 2, 1, 2] * 3
    assert trailing_cycle(seq, definition="paper") == Cycle(2, 2, 23)


def test_paper_batched_rows_are_independent():
    rows = torch.tensor([[1, 2, 3, 4, 5, 6], [0, 7, 8, 7, 8, 7], [4, 4, 4, 4, 4, 4]])
    period, copies, onset = trailing_cycles(rows, definition="paper")
    assert period.tolist() == [0, 2, 2] and copies.tolist() == [0, 2, 3] and onset.tolist() == [-1, 2, 0]


def test_paper_min_copies_and_max_period():
    assert trailing_cycle([0, 1, 2, 3, 1, 2, 3], min_copies=3, definition="paper") is None
    assert trailing_cycle([0, 1, 2, 3, 1, 2, 3], max_period=2, definition="paper") is None


# ---- the suffix rule (default)


def test_suffix_is_the_default():
    seq = [100, 101, 102] + [5, 6, 7, 8, 1, 2, 1, 2] * 3
    assert trailing_cycle(seq) == trailing_cycle(seq, definition="suffix") == Cycle(8, 3, 3)
    assert loop_rule().definition == "suffix"  # the configured rule (conf/config.yaml `loops`)


def test_suffix_onset_does_not_depend_on_where_generation_stopped():
    # a loop from index 100 with period 40: the paper rule reports 100..139 depending on the cut
    prefix, block = list(range(1000, 1100)), list(range(40))
    for copies in (2, 3, 5):
        for extra in (0, 1, 17, 39):
            seq = prefix + block * copies + block[:extra]
            assert trailing_cycle(seq) == Cycle(40, copies, 100)


def test_suffix_short_repeat_at_the_end_does_not_hide_the_longer_loop():
    seq = [100, 101, 102] + [5, 6, 7, 8, 1, 2, 1, 2] * 3
    assert trailing_cycle(seq) == Cycle(8, 3, 3)


def test_suffix_ties_take_the_smallest_period_but_a_longer_suffix_wins():
    # period 2 and period 4 explain the same suffix: the smallest wins
    assert trailing_cycle([7, 1, 2, 1, 2, 1, 2, 1, 2]) == Cycle(2, 4, 1)
    # period 2 is eligible (1 2 1 2 at the end) but period 6 explains 12 tokens, period 2 only 4
    assert trailing_cycle([0, 5, 6, 1, 2, 1, 2, 5, 6, 1, 2, 1, 2]) == Cycle(6, 2, 1)


def test_suffix_loop_starting_mid_sequence_with_a_partial_copy_before_it():
    # 12 13 is the tail of a copy of (11 12 13): the periodicity starts there, 8 tokens = 2 full copies
    seq = [1, 2, 3, 12, 13, 11, 12, 13, 11, 12, 13]
    assert trailing_cycle(seq) == Cycle(3, 2, 3)
    # the same row with a partial copy at the end too: one more token inside the loop, still 2 full copies
    assert trailing_cycle([*seq, 11]) == Cycle(3, 3, 3)


def test_suffix_partial_copies_do_not_count_towards_min_copies():
    # 1 2 3 1 2 3 1 is 3-periodic over 7 tokens: 2 full copies, short of 3
    assert trailing_cycle([1, 2, 3, 1, 2, 3, 1]) == Cycle(3, 2, 0)
    assert trailing_cycle([1, 2, 3, 1, 2, 3, 1], min_copies=3) is None
    assert trailing_cycle([1, 2, 3, 1, 2, 3, 1, 2], min_copies=3) is None
    assert trailing_cycle([1, 2, 3, 1, 2, 3, 1, 2, 3], min_copies=3) == Cycle(3, 3, 0)


def test_suffix_min_copies_and_max_period():
    assert trailing_cycle([0, 1, 2, 3, 1, 2, 3], min_copies=3) is None
    assert trailing_cycle([0, 1, 2, 3, 1, 2, 3], max_period=2) is None
    seq = [100, 101, 102] + [5, 6, 7, 8, 1, 2, 1, 2] * 3
    # without period 8 the short repeat at the end is all that is left
    assert trailing_cycle(seq, max_period=7) == Cycle(2, 2, 23)
    # with min_copies=3 the short repeat is not eligible, period 8 still is
    assert trailing_cycle(seq, min_copies=3) == Cycle(8, 3, 3)
    assert trailing_cycle(seq, min_copies=4) is None
    # a partial copy before the loop is inside it, but only full copies count towards min_copies
    assert trailing_cycle([0, 3] + [1, 2, 3] * 3 + [1], min_copies=3) == Cycle(3, 3, 1)
    assert trailing_cycle([0, 3] + [1, 2, 3] * 3 + [1], min_copies=4) is None
    # min_period above the loop's period: its multiples explain the same suffix
    assert trailing_cycle([9] + [1, 2] * 6, min_period=3) == Cycle(4, 3, 1)


def test_suffix_batched_rows_are_independent():
    rows = torch.tensor([[1, 2, 3, 4, 5, 6], [0, 7, 8, 7, 8, 7], [4, 4, 4, 4, 4, 4]])
    period, copies, onset = trailing_cycles(rows)
    assert period.tolist() == [0, 2, 2] and copies.tolist() == [0, 2, 3] and onset.tolist() == [-1, 1, 0]
    seqs = [
        [100, 101, 102] + [5, 6, 7, 8, 1, 2, 1, 2] * 3,
        [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13] + [1, 2] * 6 + [1],
        list(range(27)),
        [1, 2, 3, 12, 13] + [11, 12, 13] * 7 + [11],
        [5] * 27,
    ]
    period, copies, onset = trailing_cycles(torch.tensor(seqs))
    got = [Cycle(int(p), int(c), int(o)) if p > 0 else None for p, c, o in zip(period, copies, onset)]
    assert got == [trailing_cycle(s) for s in seqs]
    assert got == [Cycle(8, 3, 3), Cycle(2, 6, 14), None, Cycle(3, 8, 3), Cycle(2, 13, 0)]


# ---- against the references, and the property the suffix rule was made for

alphabet = st.integers(0, 3)
parameters = {
    "min_period": st.integers(1, 4),
    "max_period": st.sampled_from([4, 6, 9, 500]),
    "min_copies": st.integers(2, 4),
    "definition": st.sampled_from(DEFINITIONS),
}


@settings(max_examples=400, deadline=None)
@given(
    prefix=st.lists(alphabet, max_size=12),
    unit=st.lists(alphabet, min_size=1, max_size=7),
    reps=st.integers(0, 5),
    tail=st.lists(alphabet, max_size=4),
    **parameters,
)
def test_matches_reference(prefix, unit, reps, tail, min_period, max_period, min_copies, definition):
    if max_period < min_period:
        return
    seq = prefix + unit * reps + tail
    expected = REFERENCES[definition](seq, min_period, max_period, min_copies)
    assert trailing_cycle(seq, min_period, max_period, min_copies, definition=definition) == expected


@settings(max_examples=200, deadline=None)
@given(
    prefix=st.lists(alphabet, max_size=12),
    unit=st.lists(alphabet, min_size=1, max_size=7),
    reps=st.integers(0, 5),
    tail=st.lists(alphabet, max_size=4),
    min_period=parameters["min_period"],
    min_copies=parameters["min_copies"],
)
def test_both_rules_agree_on_whether_a_row_loops(prefix, unit, reps, tail, min_period, min_copies):
    seq = prefix + unit * reps + tail
    suffix = trailing_cycle(seq, min_period, 500, min_copies, definition="suffix")
    paper = trailing_cycle(seq, min_period, 500, min_copies, definition="paper")
    assert (suffix is None) == (paper is None)


@settings(max_examples=200, deadline=None)
@given(
    rows=st.integers(1, 40).flatmap(
        lambda n: st.lists(
            st.tuples(st.lists(st.integers(0, 2), min_size=n, max_size=n), st.integers(1, 9), st.integers(0, n)),
            min_size=1,
            max_size=8,
        )
    ),
    **parameters,
)
def test_batched_rows_match_reference(rows, min_period, max_period, min_copies, definition):
    """Rows of one batch: random tokens with a loop of random period written over a random tail."""
    if max_period < min_period:
        return
    seqs = []
    for tokens, p, start in rows:
        seqs.append(tokens[:start] + [tokens[start + (i - start) % p] for i in range(start, len(tokens))])
    period, copies, onset = trailing_cycles(torch.tensor(seqs), min_period, max_period, min_copies, definition)
    got = [Cycle(int(p), int(c), int(o)) if p > 0 else None for p, c, o in zip(period, copies, onset)]
    assert got == [REFERENCES[definition](s, min_period, max_period, min_copies) for s in seqs]


@settings(max_examples=300, deadline=None)
@given(
    prefix=st.lists(st.integers(0, 3), max_size=15),
    block=st.lists(st.integers(0, 3), min_size=1, max_size=8),
    copies=st.integers(2, 5),
    extra=st.integers(0, 8),
    min_period=st.integers(1, 3),
    min_copies=st.integers(2, 4),
)
def test_suffix_loop_covers_everything_from_its_true_start(prefix, block, copies, extra, min_period, min_copies):
    """prefix + block * c, cut anywhere at or after the c-th copy: the loop found starts no later than the block."""
    if len(block) < min_period or copies < min_copies:
        return
    seq = (prefix + block * (copies + 2))[: len(prefix) + copies * len(block) + extra]
    found = trailing_cycle(seq, min_period=min_period, min_copies=min_copies)
    assert found is not None
    assert found.onset <= len(prefix)
    assert is_periodic_from(seq, found.onset, found.period)
    assert found.copies >= min_copies and found.onset + found.copies * found.period <= len(seq)
    assert found.copies == (len(seq) - found.onset) // found.period

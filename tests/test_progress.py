"""Progress bars: redrawn in place on a terminal, a few whole lines in a log file."""

from __future__ import annotations

import io
import itertools
import re

import pytest
import tqdm.std

from ckptstudy.progress import LOG_INTERVAL, progress_bar


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture
def clock(monkeypatch):
    """tqdm's clock, advanced by hand."""
    now = [1000.0]
    monkeypatch.setattr(tqdm.std, "time", lambda: now[0])
    return now


def test_log_file_bar_updated_10000_times_quickly_writes_two_lines():
    log = io.StringIO()
    bar = progress_bar(total=10_000, desc="greedy generation", unit="tok", file=log, leave=False)
    for i in range(10_000):
        bar.update(1)
        bar.set_postfix(loss=i)  # a postfix change must not force a line
    bar.close()
    text = log.getvalue()
    assert "\r" not in text and "\x1b" not in text
    lines = text.splitlines()
    assert len(lines) == 2, lines  # the start, and the end (kept even with leave=False: a log cannot be cleared)
    assert lines[0].startswith("greedy generation:   0%") and "10000/10000" in lines[1] and text.endswith("\n")


def test_log_file_bar_writes_a_line_at_most_every_30_seconds(clock):
    log = io.StringIO()
    bar = progress_bar(range(3000), desc="building", file=log)
    for _ in bar:
        clock[0] += 0.1  # 300 s in all, updated every 0.1 s
    lines = log.getvalue().splitlines()
    assert "\r" not in log.getvalue()
    elapsed = [int(m) * 60 + int(s) for m, s in (re.search(r"\[(\d+):(\d+)", line).groups() for line in lines)]
    gaps = [b - a for a, b in itertools.pairwise(elapsed[:-1])]  # the last line is the close
    assert gaps and min(gaps) >= LOG_INTERVAL  # at most one line per 30 s ...
    assert len(lines) >= 300 / LOG_INTERVAL  # ... and one every 30 s while it runs (start + 9 + end)
    assert lines[-1].startswith("building: 100%") and "3000/3000" in lines[-1]


def test_terminal_bar_redraws_in_place():
    screen = Terminal()
    bar = progress_bar(total=1000, desc="gen", file=screen, mininterval=0)
    for _ in range(1000):
        bar.update(1)
    bar.close()
    assert screen.getvalue().count("\r") > 100  # the usual tqdm bar, untouched

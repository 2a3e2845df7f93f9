"""The CPU heap policy around greedy decoding (`ckptstudy.measure.heap`)."""

from __future__ import annotations

import platform

import pytest

from ckptstudy.measure import heap


def test_returning_large_blocks_sets_the_decoding_threshold_then_the_ceiling(monkeypatch):
    calls = []
    monkeypatch.setattr(heap, "_MALLOPT", lambda param, value: calls.append((param, value)) or 1)
    with heap.returning_large_blocks():
        assert calls == [(heap.M_MMAP_THRESHOLD, heap.DECODING_THRESHOLD)]
    assert calls[-1] == (heap.M_MMAP_THRESHOLD, heap.DEFAULT_CEILING)


def test_the_ceiling_is_restored_when_decoding_fails(monkeypatch):
    calls = []
    monkeypatch.setattr(heap, "_MALLOPT", lambda param, value: calls.append(value) or 1)
    with pytest.raises(RuntimeError), heap.returning_large_blocks():
        raise RuntimeError("decoding failed")
    assert calls == [heap.DECODING_THRESHOLD, heap.DEFAULT_CEILING]


def test_without_mallopt_nothing_is_set(monkeypatch):
    monkeypatch.setattr(heap, "_MALLOPT", None)
    assert heap.set_mmap_threshold(1 << 20) is False
    with heap.returning_large_blocks():
        pass


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt(M_MMAP_THRESHOLD) is glibc's")
def test_glibc_accepts_the_thresholds():
    assert heap.set_mmap_threshold(heap.DECODING_THRESHOLD)
    assert heap.set_mmap_threshold(heap.DEFAULT_CEILING)

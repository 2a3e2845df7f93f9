"""The CPU heap policy around greedy decoding (`ckptstudy.measure.heap`)."""

from __future__ import annotations

import platform

import pytest

from ckptstudy.measure import heap


@pytest.fixture(autouse=True)
def no_user_setting(monkeypatch):
    monkeypatch.delenv(heap.USER_SETTING, raising=False)


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


def test_a_users_own_threshold_is_left_alone(monkeypatch):
    calls = []
    monkeypatch.setattr(heap, "_MALLOPT", lambda param, value: calls.append(value) or 1)
    monkeypatch.setenv(heap.USER_SETTING, "131072")
    with heap.returning_large_blocks():
        pass
    assert calls == []


def test_a_refused_ceiling_is_warned_about(monkeypatch, caplog):
    monkeypatch.setattr(heap, "_MALLOPT", lambda param, value: int(value == heap.DECODING_THRESHOLD))
    with heap.returning_large_blocks():
        pass
    assert "glibc refused an mmap threshold of 33554432 bytes" in caplog.text

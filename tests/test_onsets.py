"""Onset steps: the held-crossing rule on constructed curves (one outlier, clean sigmoids, falls) and onset
intervals from bootstrap replicates of a trajectory."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from ckptstudy.stats.onsets import onset_interval, onset_intervals, onset_step, onset_steps, onsets

STEPS = [0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 600, 700, 800, 900, 1000, 1100, 1200, 1300, 1400, 1500, 1600]


def sigmoid(steps, middle: float = 950.0, width: float = 40.0, low: float = 0.0, high: float = 1.0) -> np.ndarray:
    return low + (high - low) / (1 + np.exp(-(np.asarray(steps, dtype=float) - middle) / width))


def test_a_clean_sigmoid_has_the_same_onset_under_both_rules():
    values = sigmoid(STEPS)
    old, new = onset_step(STEPS, values, 0.5, persist=1), onset_step(STEPS, values, 0.5, persist=2)
    assert new == pytest.approx(old, abs=0.01)  # the held change is v[-2] instead of v[-1]: the same to 1e-4
    assert 900 < new < 1000  # the half-way point 950 lies between the checkpoints 900 and 1000


def test_one_outlier_fires_the_first_crossing_but_not_the_held_one():
    values = sigmoid(STEPS)
    values[STEPS.index(64)] = 0.9  # one noisy checkpoint, long before the change
    assert 32 < onset_step(STEPS, values, 0.5, persist=1) <= 64  # the old rule: onset at the outlier
    assert 900 < onset_step(STEPS, values, 0.5, persist=2) < 1000  # the held rule: the real change


def test_a_flat_curve_with_one_outlier_has_no_held_onset():
    values = np.full(len(STEPS), 0.1)
    values[STEPS.index(256)] = 0.8
    assert 128 < onset_step(STEPS, values, 0.5, persist=1) <= 256
    assert math.isnan(onset_step(STEPS, values, 0.5, persist=2))
    values[STEPS.index(256)] = -0.8  # a downward outlier: the same
    assert math.isnan(onset_step(STEPS, values, 0.5, persist=2))


def test_an_outlier_does_not_set_the_size_of_the_change():
    values = sigmoid(STEPS, middle=1000, high=0.4)
    values[STEPS.index(8)] = 1.0  # with the outlier as "extreme", half of it (0.5) is never reached again
    assert onset_step(STEPS, values, 0.5, persist=1) <= 8
    assert 950 < onset_step(STEPS, values, 0.5, persist=2) < 1100


def test_a_falling_metric_has_an_onset_too():
    values = sigmoid(STEPS, middle=300, width=30, low=1.0, high=0.2)
    assert 256 < onset_step(STEPS, values, 0.5, persist=2) < 512


def test_a_change_only_at_the_last_checkpoint_is_not_held():
    values = np.zeros(len(STEPS))
    values[-1] = 1.0
    assert 1500 < onset_step(STEPS, values, 0.5, persist=1) <= 1600
    assert math.isnan(onset_step(STEPS, values, 0.5, persist=2))


def test_persist_below_one_is_refused():
    with pytest.raises(ValueError, match="persist=0 is not valid"):
        onset_step(STEPS, sigmoid(STEPS), persist=0)


def test_onsets_of_a_table_per_model():
    table = pd.DataFrame(
        {
            "model": ["a"] * len(STEPS) + ["b"] * len(STEPS),
            "step": STEPS * 2,
            "status": "ok",
            "m": np.r_[sigmoid(STEPS, middle=100, width=5), sigmoid(STEPS, middle=1200, width=20)],
        }
    )
    found = onsets(table, ["m", "absent"], 0.5, persist=2)
    assert set(found) == {("a", "m"), ("b", "m")}
    assert 64 < found[("a", "m")] < 128 and 1100 < found[("b", "m")] < 1300


def replicated(values: np.ndarray, noise: float, n: int = 200, seed: int = 0) -> np.ndarray:
    """Replicates [n, steps] of a trajectory: the values plus independent noise per step."""
    return values[None, :] + noise * np.random.default_rng(seed).standard_normal((n, len(values)))


def test_onset_interval_from_replicated_trajectories_contains_the_onset():
    values = sigmoid(STEPS, middle=950, width=60)
    reps = replicated(values, 0.03)
    replicates = {("m", s): {"x": reps[:, i]} for i, s in enumerate(STEPS)}
    points = {("m", s): {"x": values[i]} for i, s in enumerate(STEPS)}
    found = onset_intervals({"m": STEPS}, replicates, points, ["x"], 0.5, 2, 0.95)
    low, high = found[("m", "x")]["ci"]
    onset = onset_step(STEPS, values, 0.5, 2)
    assert low <= onset <= high and low > 800 and high < 1100
    assert found[("m", "x")]["with_onset"] == 1.0
    # noisier replicates: a wider interval
    noisy = replicated(values, 0.15)
    wide = onset_intervals(
        {"m": STEPS}, {("m", s): {"x": noisy[:, i]} for i, s in enumerate(STEPS)}, points, ["x"], 0.5, 2, 0.95
    )
    assert wide[("m", "x")]["ci"][1] - wide[("m", "x")]["ci"][0] > high - low


def test_no_onset_interval_without_replicates_at_a_measured_step():
    values = sigmoid(STEPS)
    reps = replicated(values, 0.01)
    replicates = {("m", s): {"x": reps[:, i]} for i, s in enumerate(STEPS) if s != 700}
    points = {("m", s): {"x": values[i]} for i, s in enumerate(STEPS)}
    assert onset_intervals({"m": STEPS}, replicates, points, ["x"], 0.5, 2, 0.95) == {}
    points[("m", 700)] = {"x": math.nan}  # a step where the value is NaN needs no replicates
    assert ("m", "x") in onset_intervals({"m": STEPS}, replicates, points, ["x"], 0.5, 2, 0.95)


def test_a_flat_trajectory_has_no_onset_interval():
    flat = np.full(len(STEPS), 0.5)
    reps = np.zeros((100, len(STEPS))) + 0.5  # no replicate has a change: no onset anywhere
    found = onset_intervals(
        {"m": STEPS},
        {("m", s): {"x": reps[:, i]} for i, s in enumerate(STEPS)},
        {("m", s): {"x": flat[i]} for i, s in enumerate(STEPS)},
        ["x"],
        0.5,
        2,
        0.95,
    )
    assert all(math.isnan(x) for x in found[("m", "x")]["ci"]) and found[("m", "x")]["with_onset"] == 0.0


def test_the_onsets_of_many_replicates_at_once_are_those_of_one_at_a_time():
    values = sigmoid(STEPS, middle=950, width=60)
    reps = replicated(values, 0.1, n=60)
    reps[3, 5] = np.nan  # a row with a NaN goes the one-at-a-time way
    reps[4] = 1.0  # a flat row: no onset
    for persist in (1, 2):
        expected = [onset_step(STEPS, row, 0.5, persist) for row in reps]
        np.testing.assert_allclose(onset_steps(STEPS, reps, 0.5, persist), expected, equal_nan=True)


def test_an_onset_interval_is_bias_corrected_and_says_so():
    # replicate onsets that lean late of the reported onset: the BC interval moves down, the percentile one does not
    late = np.r_[np.full(80, 1000.0), np.linspace(1000, 1200, 120)]
    percentile = onset_interval(late, 1000.0, 0.9, "percentile")
    corrected = onset_interval(late, 1000.0, 0.9)
    assert corrected[1] < percentile[1] and corrected[0] <= percentile[0]
    values = sigmoid(STEPS, middle=950, width=60)
    reps = replicated(values, 0.03)
    found = onset_intervals(
        {"m": STEPS},
        {("m", s): {"x": reps[:, i]} for i, s in enumerate(STEPS)},
        {("m", s): {"x": values[i]} for i, s in enumerate(STEPS)},
        ["x"],
        0.5,
        2,
        0.95,
    )
    assert found[("m", "x")]["method"] == "bias_corrected"
    with pytest.raises(ValueError, match="valid: bias_corrected, percentile"):
        onset_interval(late, 1000.0, 0.9, "basic")

"""Verdicts of claims (stats/claims.py, stats/claim_spec.py, report/claim_results.py) on hand-made trajectories
whose answers are known (tests/claim_study.py): each test kind built to give supported, the opposite claim built
to give contradicted, and cases that must stay undetermined with their reason (an interval across the threshold,
no onset in range, a NaN, a withheld interval, too few checkpoints, a metric never present, one not measured)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from ckptstudy.report.claim_results import study_claims
from ckptstudy.report.plots import claim_figure
from ckptstudy.report.resample import resample_records
from ckptstudy.report.study import load_study
from ckptstudy.report.table import trajectory_table
from ckptstudy.stats.claim_spec import ClaimConfigError, Defaults, parse_claims
from ckptstudy.stats.claims import (
    CONTRADICTED,
    SUPPORTED,
    UNDETERMINED,
    Outcome,
    Rule,
    Trajectory,
    combine,
    order_shares,
    side,
    trend_windows,
)
from claim_study import SETTINGS, STEPS, write_claim_study

DEFAULTS = Defaults(last=3, combine="every", window=1 / 3, share=0.95, min_checkpoints=4)
RULE = Rule(fraction=0.5, persist=2, level=0.95)
MIN_EFFECTS = {"t/small_excess": 0.1, "t/rise": 0.1}


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    root = tmp_path_factory.mktemp("claims")
    write_claim_study(root, "claims", {"m": 20, "late": 400})
    loaded = load_study(root, "claims")
    resampled = resample_records(loaded.records, SETTINGS)
    table = trajectory_table(loaded, resampled.intervals, None, 0.0)
    return {"records": loaded.records, "resampled": resampled, "table": table}


def verdicts(study, claims: dict, model: str = "m", min_effects=None) -> dict[str, tuple[str, str]]:
    """{claim key: (verdict, reason)} of `claims` ({key: claim spec}) on one model of the study."""
    parsed = parse_claims(
        {"t": {"paper": "test", "claims": claims}}, DEFAULTS, MIN_EFFECTS if min_effects is None else min_effects
    )
    found = study_claims(parsed, DEFAULTS, study["table"], study["records"], study["resampled"], RULE)
    return {v.claim.id.split("/")[1]: (v.verdict, v.reason) for v in found.verdicts if v.group == model}


def claim(statement="a claim", **test) -> dict:
    return {"statement": statement, **test}


def test_onset_order_supported_contradicted_and_undetermined(study):
    found = verdicts(
        study,
        {
            "first": claim(test="onset_order", first="t/rise", then="t/late"),
            "reversed": claim(test="onset_order", first="t/late", then="t/rise"),
            "tied": claim(test="onset_order", first="t/rise", then="t/rise_twin"),
            "never": claim(test="onset_order", first="t/rise", then="t/zero"),
        },
    )
    assert found["first"][0] == SUPPORTED and "t/rise before t/late in 100%" in found["first"][1]
    assert found["reversed"][0] == CONTRADICTED
    verdict, reason = found["tied"]  # the same curve on other noise: onsets between the same two checkpoints
    assert verdict == UNDETERMINED and reason.startswith("the sweep does not resolve the order")
    assert found["never"] == (
        UNDETERMINED,
        "no onset of t/zero within the swept steps (steps 0-512 (11 checkpoints)): no held change",
    )


def test_onset_order_on_a_metric_never_present_is_not_decided_on_its_noise_onset(study):
    # t/small_excess has a held change (noise) and so an onset; below its MIN_EFFECT everywhere, it marks noise
    found = verdicts(study, {"noise": claim(test="onset_order", first="t/small_excess", then="t/late")})
    verdict, reason = found["noise"]
    assert verdict == UNDETERMINED and "t/small_excess is never present" in reason and "MIN_EFFECT 0.1" in reason
    # without a MIN_EFFECT for it, its (noise) onset is read: the guard above is what withheld the verdict
    found = verdicts(study, {"noise": claim(test="onset_order", first="t/small_excess", then="t/late")}, min_effects={})
    assert "never present" not in found["noise"][1] and "t/small_excess onset ~" in found["noise"][1]
    # a metric that is present passes the guard
    found = verdicts(study, {"present": claim(test="onset_order", first="t/rise", then="t/late")})
    assert found["present"][0] == SUPPORTED


def test_trend_supported_contradicted_and_undetermined(study):
    found = verdicts(
        study,
        {
            "up": claim(test="trend", metric="t/rise", direction="up"),
            "down": claim(test="trend", metric="t/rise", direction="down"),
            "falls": claim(test="trend", metric="t/fall", direction="down"),
            "flat": claim(test="trend", metric="t/flat", direction="up"),
            "big": claim(test="trend", metric="t/rise", direction="up", min_change=5),
            "explicit": claim(test="trend", metric="t/late", direction="up", early=[0, 64], late=[128, 256]),
        },
    )
    assert found["up"][0] == SUPPORTED and "over early steps 0-4 (4 checkpoints)" in found["up"][1]
    assert found["down"][0] == CONTRADICTED and found["falls"][0] == SUPPORTED
    assert found["flat"][0] == UNDETERMINED and found["flat"][1].startswith("the interval of the change spans 0")
    assert found["big"][0] == CONTRADICTED  # a rise of ~1 is clearly less than the 5 claimed
    assert found["explicit"][0] == SUPPORTED and "late steps 128-256" in found["explicit"][1]


def test_trend_windows_are_thirds_in_log_step_or_explicit():
    test = parse_claims({"t": {"claims": {"c": claim(test="trend", metric="t/x", direction="up")}}}, DEFAULTS, {})[
        0
    ].tests[0]
    early, late = trend_windows(STEPS, test)
    assert early == [0, 1, 2, 4] and late == [64, 128, 256, 512]  # log1p(512) = 6.24: <= 2.08 and >= 4.16
    explicit = parse_claims(
        {"t": {"claims": {"c": claim(test="trend", metric="t/x", direction="up", early=[0, 4], late=[500, 600])}}},
        DEFAULTS,
        {},
    )[0].tests[0]
    assert trend_windows(STEPS, explicit) == ([0, 1, 2, 4], [512])


def test_level_supported_contradicted_and_undetermined_every_and_mean(study):
    found = verdicts(
        study,
        {
            "above": claim(test="level", metric="t/rise", above=0.5),
            "below": claim(test="level", metric="t/rise", below=0.5),
            "spans": claim(test="level", metric="t/flat", above=0.5),
            "mean_above": claim(test="level", metric="t/rise", above=0.5, combine="mean"),
            "mean_spans": claim(test="level", metric="t/flat", above=0.5, combine="mean"),
            "band": claim(test="level", metric="t/rise", above=0.5, below=2),
            "early_steps": claim(test="level", metric="t/rise", below=0.5, steps=[0, 2]),
            "rate": claim(test="level", metric="t/rate", above=0.5),
        },
    )
    assert found["above"][0] == SUPPORTED and "at every one of steps 128-512 (3 checkpoints)" in found["above"][1]
    assert found["below"][0] == CONTRADICTED
    assert found["spans"][0] == UNDETERMINED and "spans the threshold" in found["spans"][1]
    assert found["mean_above"][0] == SUPPORTED and "mean over steps 128-512" in found["mean_above"][1]
    assert found["mean_spans"][0] == UNDETERMINED
    assert found["band"][0] == SUPPORTED and "above 0.5 and below 2" in found["band"][1]
    assert found["early_steps"][0] == SUPPORTED  # before the rise, it is below 0.5
    assert found["rate"][0] == SUPPORTED


def test_comparison_supported_contradicted_and_undetermined(study):
    found = verdicts(
        study,
        {
            "above": claim(test="comparison", metric="t/rise", than="t/fall", direction="above"),
            "below": claim(test="comparison", metric="t/rise", than="t/fall", direction="below"),
            "twins": claim(test="comparison", metric="t/flat", than="t/twin", direction="above"),
            "mean_twins": claim(test="comparison", metric="t/flat", than="t/twin", direction="above", combine="mean"),
            "margin": claim(test="comparison", metric="t/rise", than="t/fall", direction="above", margin=3),
        },
    )
    assert found["above"][0] == SUPPORTED and "t/rise - t/fall" in found["above"][1]
    assert found["below"][0] == CONTRADICTED
    assert found["twins"][0] == UNDETERMINED and found["mean_twins"][0] == UNDETERMINED
    assert found["margin"][0] == CONTRADICTED  # ~1 apart, claimed more than 3


def test_what_leaves_a_claim_undetermined_says_why(study):
    found = verdicts(
        study,
        {
            "nan": claim(test="level", metric="t/nan", above=0),
            "withheld": claim(test="level", metric="t/few", above=0),
            "missing": claim(test="level", metric="t/absent", above=0),
            "too_few": claim(test="trend", metric="t/rise", direction="up", min_checkpoints=20),
            "last": claim(test="level", metric="t/rise", above=0, last=40),
            "no_step": claim(test="level", metric="t/rise", above=0, steps=[600, 900]),
            "no_min_effect": claim(test="level", metric="t/flat", above="min_effect"),
        },
    )
    assert found["nan"] == (UNDETERMINED, "t/nan is NaN at step 128: nothing to measure in this test")
    assert found["withheld"][0] == UNDETERMINED
    assert "the interval of t/few at step 128 is withheld: only 3 prompt(s) contribute" in found["withheld"][1]
    assert found["missing"][1].startswith("t/absent is not in the study's records")
    assert found["too_few"][1] == "too few checkpoints for a trend: 11 ok (min_checkpoints 20)"
    assert found["last"][1] == "too few checkpoints: 11 ok, the test reads the last 40"
    assert found["no_step"][1].startswith("no ok checkpoint in steps 600-900")
    assert found["no_min_effect"][1].startswith("no MIN_EFFECT for t/flat in the configured metric families")
    assert all(v == UNDETERMINED for v, _ in found.values())


def test_several_tests_combine_with_all_and_any(study):
    up = {"test": "trend", "metric": "t/rise", "direction": "up"}
    down = {"test": "trend", "metric": "t/rise", "direction": "down"}
    unknown = {"test": "level", "metric": "t/flat", "above": 0.5}
    found = verdicts(
        study,
        {
            "all_up": claim(all=[up, {"test": "level", "metric": "t/rise", "above": 0.5}]),
            "all_mixed": claim(all=[up, down]),
            "all_unknown": claim(all=[up, unknown]),
            "any_mixed": claim(any=[down, up]),
            "any_down": claim(any=[down, {"test": "level", "metric": "t/rise", "below": 0.5}]),
        },
    )
    assert found["all_up"][0] == SUPPORTED and found["all_mixed"][0] == CONTRADICTED
    assert found["all_unknown"][0] == UNDETERMINED and found["any_mixed"][0] == SUPPORTED
    assert found["any_down"][0] == CONTRADICTED
    # the rule itself, on outcomes
    out = {v: Outcome(v, v, []) for v in (SUPPORTED, CONTRADICTED, UNDETERMINED)}
    assert combine([out[SUPPORTED], out[UNDETERMINED]], "all") == (UNDETERMINED, UNDETERMINED)
    assert combine([out[CONTRADICTED], out[UNDETERMINED]], "any") == (UNDETERMINED, UNDETERMINED)
    assert combine([out[SUPPORTED], out[CONTRADICTED]], "any")[0] == SUPPORTED


def test_every_model_gets_a_verdict_and_a_line_on_whether_they_agree(study):
    claims = {
        "order": claim(test="onset_order", first="t/rise", then="t/late"),  # late model: its rise comes after 200
        "flat": claim(test="level", metric="t/zero", below=1),
    }
    parsed = parse_claims({"t": {"paper": "test", "claims": claims}}, DEFAULTS, {})
    found = study_claims(parsed, DEFAULTS, study["table"], study["records"], study["resampled"], RULE)
    assert found.groups == ["late", "m"]
    order = {v.group: v.verdict for v in found.of_claim("t/order")}
    assert order == {"m": SUPPORTED, "late": CONTRADICTED}
    assert found.agreement("t/order") == "disagree: contradicted (late); supported (m)"
    assert found.agreement("t/flat") == "all 2 agree: supported"  # 0 at every prompt: [0, 0.06] < 1 (Wilson)
    assert found.of_group("m") == {"t/order": SUPPORTED, "t/flat": SUPPORTED}


def test_side_of_an_interval_against_bounds():
    assert side(0.6, 0.9, 0.5, None) == "pass" and side(0.1, 0.4, 0.5, None) == "fail"
    assert side(0.4, 0.6, 0.5, None) == "span" and side(0.5, 0.6, 0.5, None) == "span"  # touching is not above
    assert side(0.6, 0.9, 0.5, 1.0) == "pass" and side(0.6, 1.2, 0.5, 1.0) == "span" and side(1.1, 2, 0.5, 1) == "fail"


def test_a_method_check_is_decided_on_values_its_family_declares_without_interval():
    traj = Trajectory(
        steps=[0, 1, 2, 4],
        values={"p/check": {0: 1.0, 1: 1.0, 2: 1.0, 4: 1.0}},
        no_interval={"p/check": "a method check: a fit over 2 prompts"},
    )
    spec = {"t": {"claims": {"c": {"statement": "linear", "test": "level", "metric": "p/check", "above": 0.5}}}}
    from ckptstudy.stats.claims import evaluate

    (plain,) = evaluate(parse_claims(spec, DEFAULTS, {}), {"m": traj}, RULE)
    assert plain.verdict == UNDETERMINED and "has no interval at step 1 (a method check" in plain.reason
    spec["t"]["claims"]["c"]["method_check"] = True
    (checked,) = evaluate(parse_claims(spec, DEFAULTS, {}), {"m": traj}, RULE)
    assert checked.verdict == SUPPORTED and "1 (a method check: no interval) at step 4" in checked.reason
    traj.values["p/check"][4] = 0.0
    (failed,) = evaluate(parse_claims(spec, DEFAULTS, {}), {"m": traj}, RULE)
    assert failed.verdict == CONTRADICTED


def test_paired_replicates_decide_a_difference_that_independent_intervals_cannot():
    # two metrics on the same prompts, b = a + 0.05 per prompt: each interval is wide and they overlap, yet the
    # paired difference is 0.05 in every replicate
    rng = np.random.default_rng(0)
    steps = [0, 1, 2]
    base = rng.normal(0, 1, (200, 3))
    traj = Trajectory(
        steps=steps,
        values={"x/a": dict.fromkeys(steps, 0.0), "x/b": dict.fromkeys(steps, 0.05)},
        intervals={"x/a": dict.fromkeys(steps, (-0.3, 0.3)), "x/b": dict.fromkeys(steps, (-0.25, 0.35))},
        replicates={"x/a": {s: base[:, i] for i, s in enumerate(steps)}},
    )
    traj.replicates["x/b"] = {s: base[:, i] + 0.05 for i, s in enumerate(steps)}
    spec = {"statement": "b above a", "test": "comparison", "metric": "x/b", "than": "x/a", "direction": "above"}
    from ckptstudy.stats.claims import evaluate

    (found,) = evaluate(parse_claims({"t": {"claims": {"c": spec}}}, DEFAULTS, {}), {"m": traj}, RULE)
    assert found.verdict == SUPPORTED and "0.05 [0.05, 0.05]" in found.reason


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (
            {"statement": "s", "test": "slope", "metric": "a/b"},
            "claims.t.claims.c.test: 'slope' is not valid; valid: onset_order",
        ),
        ({"statement": "s", "test": "level", "metric": "a/b", "abov": 1}, "unknown field(s) ['abov']"),
        ({"statement": "s", "test": "level", "metric": "a/b"}, "a level test needs `above` and/or `below`"),
        (
            {"statement": "s", "test": "trend", "metric": "a/b", "direction": "sideways"},
            "direction: 'sideways' is not valid; valid: up, down",
        ),
        ({"test": "level", "metric": "a/b", "above": 1}, "claims.t.claims.c.statement: missing"),
        ({"statement": "s", "test": "level", "metric": "ab", "above": 1}, "'ab' is not a metric key"),
        (
            {"statement": "s", "test": "level", "metric": "a/b", "above": 1, "last": 0},
            "last: 0 is not valid; valid: >= 1",
        ),
        ({"statement": "s", "test": "level", "metric": "a/b", "above": 1, "last": 2, "steps": [0, 1]}, "not both"),
        (
            {"statement": "s", "test": "level", "metric": "a/b", "above": "lots"},
            "above: 'lots' is not valid; valid: a number",
        ),
        (
            {"statement": "s", "test": "onset_order", "first": "a/b", "then": "a/c", "share": 0.3},
            "share: 0.3 is not valid; valid: in [0.5, 1]",
        ),
        ({"statement": "s", "all": []}, "all: [] is not valid; valid: a non-empty list of tests"),
        ({"statement": "s", "test": "level", "metric": "a/b", "above": 1, "all": [{}]}, "exactly one"),
        (
            {"statement": "s", "test": "trend", "metric": "a/b", "direction": "up", "early": [5, 9], "late": [8, 10]},
            "must end before",
        ),
    ],
)
def test_a_claim_that_is_not_valid_is_refused_naming_its_key(spec, message):
    with pytest.raises(ClaimConfigError) as refused:
        parse_claims({"t": {"paper": "p", "claims": {"c": spec}}}, DEFAULTS, {})
    assert message in str(refused.value), str(refused.value)


def test_min_effect_thresholds_come_from_the_family_modules():
    from ckptstudy.config import compose_config, configured_claims
    from ckptstudy.metrics.perturb import MIN_EFFECT as PERTURB
    from ckptstudy.metrics.sink import MIN_EFFECT as SINK

    claims = {c.id: c for c in configured_claims(compose_config())}
    assert claims["yona/repetition_converges"].tests[0].above == SINK["sink/repeat_cos_max_excess"]
    induction = claims["luick/induction_emerges"].tests[1]
    assert induction.above == PERTURB["perturb/induction_excess_max"] and induction.from_min_effect
    # without the sink family configured its thresholds are unknown: the verdict will say so, nothing is refused
    only_icl = {c.id: c for c in configured_claims(compose_config(["metrics=[icl_heads]"]))}
    assert only_icl["yona/repetition_converges"].tests[0].unresolved.startswith("no MIN_EFFECT for sink/")


def test_nan_in_a_trend_window_is_left_out_and_said(study):
    traj = Trajectory(steps=[0, 1, 2, 4, 8, 16], values={"x/a": {0: math.nan, 1: 0.0, 2: 0.0, 4: 1, 8: 1, 16: 1}})
    traj.nan_reasons["x/a"] = {0: "too early"}
    for step in traj.steps[1:]:
        traj.intervals.setdefault("x/a", {})[step] = (traj.values["x/a"][step] - 0.1, traj.values["x/a"][step] + 0.1)
        traj.replicates.setdefault("x/a", {})[step] = np.full(50, traj.values["x/a"][step])
    spec = {"statement": "up", "test": "trend", "metric": "x/a", "direction": "up", "early": [0, 2], "late": [8, 16]}
    from ckptstudy.stats.claims import evaluate

    (found,) = evaluate(parse_claims({"t": {"claims": {"c": spec}}}, DEFAULTS, {}), {"m": traj}, RULE)
    assert (
        found.verdict == SUPPORTED and "1 NaN checkpoint(s) left out (x/a is NaN at step 0: too early)" in found.reason
    )
    traj.values["x/a"].update({1: math.nan, 2: math.nan})
    (empty,) = evaluate(parse_claims({"t": {"claims": {"c": spec}}}, DEFAULTS, {}), {"m": traj}, RULE)
    assert empty.verdict == UNDETERMINED and empty.reason.startswith("no finite value of x/a in the early window")


def test_onsets_are_ordered_by_the_checkpoint_they_are_reached_by():
    steps = [0, 10, 20, 40]
    a = np.array([12.0, 12.0, 5.0, np.nan, 15.0])
    b = np.array([25.0, 18.0, np.nan, 30.0, 12.0])
    # 12 vs 25: before; 12 vs 18: same pair (10-20); 5 vs none: before; none vs 30: after; 15 vs 12: same pair
    before, same, after = order_shares(steps, a, b)
    assert (before, same, after) == (0.4, 0.4, 0.2)


def test_claim_figure_marks_thresholds_windows_onsets_and_says_why_a_panel_is_empty():
    steps = [0, 1, 10, 100, 1000]
    part = pd.DataFrame(
        {
            "step": steps,
            "x/a": [0.0, 0.1, 0.5, 0.9, 1.0],
            "x/a/ci_low": [0.0, 0.0, 0.4, 0.8, 0.9],
            "x/a/ci_high": [0.1, 0.2, 0.6, 1.0, 1.0],
            "x/nan": [math.nan] * 5,
        }
    )
    panels = [
        ("level: supported", ["x/a"], {"above": 0.5, "steps": [100, 1000]}, [100, 1000]),
        ("trend: supported", ["x/a"], {"early": [0, 1], "late": [100, 1000]}, [0, 1, 100, 1000]),
        ("onset_order: supported", ["x/a"], {"onsets": {"x/a": [5.0, 2.0, 8.0]}}, steps),
        ("level: undetermined", ["x/nan"], {"above": 0.5}, steps),
        ("level: undetermined", ["x/absent"], {"above": 0.5}, []),
    ]
    fig = claim_figure(part, panels)
    level, trend, onset, nan, absent = fig.axes
    dotted = [line for line in level.lines if line.get_linestyle() == ":"]
    assert len(dotted) == 1 and list(dotted[0].get_ydata()) == [0.5, 0.5]  # the threshold
    assert list(level.lines[1].get_xdata()) == [100, 1000]  # the checkpoints the test read, as larger dots
    assert len(trend.patches) == 2  # early and late windows, shaded
    dashed = [line for line in onset.lines if line.get_linestyle() == "--"]
    assert len(dashed) == 1 and list(dashed[0].get_xdata()) == [5.0, 5.0] and len(onset.patches) == 1
    assert [t.get_text() for t in nan.texts] == ["NaN at every checkpoint"]
    assert [t.get_text() for t in absent.texts] == ["not in the records"]
    assert not level.texts and level.get_title() == "level: supported"

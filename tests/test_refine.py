"""`ckptstudy-refine`: the bracketing/bisection rule on constructed tables, and a real refinement on the
micro suite that finds the full sweep's onset bracket while measuring fewer than half the checkpoints."""

from __future__ import annotations

import math
import re

import pytest

from ckptstudy.config import compose_config
from ckptstudy.job import run_job
from ckptstudy.model.checkpoints import PYTHIA_STEPS, available_steps
from ckptstudy.stats import onsets
from ckptstudy.tools import refine
from ckptstudy.tools.refine import LOCATED, NO_CHANGE, REFINE, START, middle_steps, plan_refinement

METRIC = "icl/induction_max"


def bisect_truth(truth, available, start, per_round=1, **options):
    """Run the plan/measure loop against a known metric; returns (last plan, measured steps, rounds)."""
    measured = {s: truth(s) for s in start}
    rounds = 0
    while True:
        plan = plan_refinement(measured, available, per_round, **options)
        if not plan.next_steps:
            return plan, sorted(measured), rounds
        rounds += 1
        measured.update({s: truth(s) for s in plan.next_steps})


def full_bracket(truth, available, **options):
    return plan_refinement({s: truth(s) for s in available}, available, **options).bracket


@pytest.mark.parametrize(
    ("name", "truth", "expected"),
    [
        ("rising", lambda s: 0.01 if s < 13 else 0.9, (12, 13)),
        ("falling", lambda s: 5.0 if s < 7 else 1.0, (6, 7)),
        ("rising then partly back", lambda s: 0.0 if s < 15 else (1.0 if s < 18 else 0.7), (14, 15)),
    ],
)
def test_bisection_ends_on_the_full_sweeps_adjacent_bracket(name, truth, expected):
    available = list(range(21))
    plan, measured, rounds = bisect_truth(truth, available, start=[0, 20])
    assert plan.status == LOCATED and plan.adjacent and plan.bracket == expected == full_bracket(truth, available)
    assert rounds <= math.ceil(math.log2(len(available) - 1))  # 19 candidates between 0 and 20: at most 5
    assert len(measured) == 2 + rounds


def test_pythia_schedule_needs_about_eight_checkpoints():
    # 154 checkpoints, 152 between step 0 and 143000: index bisection takes ceil(log2(153)) = 8 jobs
    def truth(step):
        return 0.1 if step < 37000 else 0.8

    plan, measured, rounds = bisect_truth(truth, PYTHIA_STEPS, start=[0, 143000])
    assert plan.bracket == (36000, 37000) and plan.adjacent
    assert rounds <= 8 and len(measured) <= 10


def test_the_middle_is_by_checkpoint_index_not_by_log_step():
    # Pythia between 1000 and 143000: 141 candidates; the index middle is step 72000 (a log-step middle
    # would be ~12000, the 11th candidate, and need more jobs in the worst case)
    plan = plan_refinement({0: 0.0, 1000: 0.0, 143000: 1.0}, PYTHIA_STEPS)
    assert plan.status == REFINE and plan.bracket == (1000, 143000) and plan.next_steps == [72000]
    micro = [600, 700, 800, 900, 1000, 1100, 1200, 1300, 1400, 1500]
    assert middle_steps(micro) == [1000] and middle_steps(micro, 2) == [800, 1200] and middle_steps([5]) == [5]
    assert middle_steps(micro, 20) == micro


def test_several_checkpoints_per_round_take_fewer_rounds():
    def truth(step):
        return 0.0 if step < 61 else 1.0

    available = list(range(101))
    one, _, rounds_one = bisect_truth(truth, available, [0, 100])
    three, measured, rounds_three = bisect_truth(truth, available, [0, 100], per_round=3)
    assert one.bracket == three.bracket == (60, 61)
    assert rounds_three < rounds_one and len(measured) <= 2 + 3 * rounds_three


def test_no_change_has_nothing_to_refine():
    plan = plan_refinement({0: 0.3, 512: 0.3, 1600: 0.3}, list(range(0, 1700, 100)), metric=METRIC)
    assert plan.status == NO_CHANGE and plan.next_steps == [] and plan.bracket is None
    assert "nothing to refine" in plan.message and METRIC in plan.message


def test_already_adjacent_launches_nothing():
    plan = plan_refinement({0: 0.0, 1: 0.0, 2: 1.0, 4: 1.0}, [0, 1, 2, 4])
    assert plan.status == LOCATED and plan.adjacent and plan.bracket == (1, 2) and plan.next_steps == []
    assert "adjacent" in plan.message


def test_fewer_than_two_values_start_from_the_ends():
    plan = plan_refinement({}, [0, 1, 2, 4, 8])
    assert plan.status == START and plan.next_steps == [0, 8]
    plan = plan_refinement({0: 0.1, 8: math.nan}, [0, 1, 2, 4, 8])  # measured, but NaN: nothing to start from
    assert plan.status == refine.UNLOCATED and plan.next_steps == []


def test_failed_checkpoints_are_skipped_and_named():
    values = {0: 0.0, 10: 1.0}
    plan = plan_refinement(values, range(11), unusable=[4])
    assert plan.next_steps == [5]  # the middle of what can still be measured: 1, 2, 3, 5, ..., 9
    plan = plan_refinement({0: 0.0, 1: 0.0, 3: 1.0}, [0, 1, 2, 3], unusable=[2])
    assert plan.status == LOCATED and plan.bracket == (1, 3) and not plan.adjacent and "[2]" in plan.message


def test_onset_rule_settings_reach_onset_step(monkeypatch):
    report = {"onset_fraction": 0.3, "onset_persist": 2, "summary_metrics": []}

    def without_persist(steps, values, fraction=0.5):
        return 1.0

    def with_persist(steps, values, fraction=0.5, persist=1):
        return 1.0

    monkeypatch.setattr(onsets, "onset_step", without_persist)
    assert refine.onset_options(report) == {"fraction": 0.3}
    monkeypatch.setattr(onsets, "onset_step", with_persist)
    assert refine.onset_options(report) == {"fraction": 0.3, "persist": 2}
    calls = []

    def spy(steps, values, fraction=0.5, persist=1):
        calls.append({"fraction": fraction, "persist": persist})
        return 1.5

    monkeypatch.setattr(onsets, "onset_step", spy)
    plan = plan_refinement({0: 0.0, 4: 1.0}, [0, 1, 2, 4], **refine.onset_options(report))
    assert {"fraction": 0.3, "persist": 2} in calls and plan.bracket == (0, 4) and plan.next_steps == [1]


MICRO_STEPS = [0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, *range(600, 1700, 100)]


def micro_like(step):
    """icl/induction_max as the micro suite's smoke probes measure it: ~0.05 to step 900, 0.76 at 1000."""
    return 0.03 + 0.04 * (step >= 512) if step < 1000 else {1000: 0.76, 1100: 0.94}.get(step, 0.9)


@pytest.mark.parametrize("persist", [1, 2, 3])
def test_persistence_rule_is_judged_on_consecutive_checkpoints(persist):
    # p = 2 from 4 checkpoints: the jump shows only at step 1600, which the rule cannot confirm alone (it
    # would put the onset between 128 and 512); refine settles the plain crossing first, then measures the
    # p - 1 checkpoints after the bracket
    plan, measured, _ = bisect_truth(micro_like, MICRO_STEPS, [0, 128, 512, 1600], persist=persist)
    full = plan_refinement({s: micro_like(s) for s in MICRO_STEPS}, MICRO_STEPS, persist=persist)
    assert plan.bracket == full.bracket == (900, 1000) and plan.adjacent
    assert {1100, 1200, 1300}.intersection(measured) == set([1100, 1200][: persist - 1])
    assert len(measured) == 8 + persist - 1


def test_a_one_checkpoint_spike_is_ignored_with_persistence():
    def spiky(step):
        return 1.0 if step == 10 else (0.0 if step < 13 else 0.9)

    available = list(range(21))
    plan, measured, _ = bisect_truth(spiky, available, [0, 20], persist=2)
    assert 10 in measured and plan.bracket == (12, 13) == full_bracket(spiky, available, persist=2)
    assert full_bracket(spiky, available) == (9, 10)  # the plain first crossing fires on the spike


# --- the micro suite: 4 checkpoints to the full sweep's bracket -------------------------------------------

START_STEPS = [0, 128, 512, 1600]


def fast_overrides(root, suite) -> list[str]:
    return [
        f"paths.root={root}",
        f"model.path='{suite}/step{{step}}'",
        "metrics=[icl_heads]",
        "metrics.icl_heads.mode=off",
        "logger=none",
        "experiment=smoke",  # smoke probes still show the jump: induction_max ~0.06 to step 900, 0.76 at 1000
    ]


def measure(overrides: list[str], steps) -> None:
    for step in steps:
        assert run_job(compose_config([*overrides, f"step={step}"])).outcome.status == "ok"


@pytest.fixture(scope="module")
def micro(micro_suite, tmp_path_factory):
    """The full 22-checkpoint sweep (in-process, fast settings), and its onset bracket."""
    root = tmp_path_factory.mktemp("refine")
    overrides = fast_overrides(root, micro_suite)
    cfg = compose_config([*overrides, "study=full"])
    steps = available_steps(cfg.model)
    measure([*overrides, "study=full"], steps)
    values = refine.read_measured(cfg, METRIC).values
    full = plan_refinement(values, steps, **refine.onset_options(cfg.report))
    assert full.status == LOCATED and full.adjacent
    return {"root": root, "overrides": overrides, "steps": steps, "full": full}


def test_refine_from_four_checkpoints_finds_the_full_sweeps_bracket(micro, capsys, monkeypatch):
    overrides = [*micro["overrides"], "study=refine"]
    measure(overrides, START_STEPS)
    launches = []
    launch = refine.run_command
    monkeypatch.setattr(refine, "run_command", lambda command: launches.append(command) or launch(command))
    with pytest.raises(SystemExit) as exit_info:
        refine.main([*overrides, f"metric={METRIC}", "--no-summary"])
    out = capsys.readouterr().out
    assert exit_info.value.code == 0, out
    low, high = micro["full"].bracket
    assert f"micro: onset between step {low} and step {high} (adjacent checkpoints)" in out
    records = sorted(int(p.stem[4:]) for p in (micro["root"] / "refine/records/micro").glob("step*.json"))
    n_full = len(micro["steps"])
    assert n_full == 22 and len(records) < n_full / 2
    assert {low, high} <= set(records) and set(START_STEPS) <= set(records)
    assert f"measured {len(records)} of {n_full} checkpoints ({len(records) - 4} launched" in out
    # one step per round, through `ckptstudy --multirun` with the same overrides (the configured launcher)
    assert len(launches) == len(records) - 4
    for command in launches:
        assert command[1:4] == ["-m", "ckptstudy", "--multirun"] and "model=micro" in command
        (step,) = [arg for arg in command if arg.startswith("step=")]
        assert re.fullmatch(r"step=\d+", step) and "experiment=smoke" in command and "study=refine" in command
    # a second refinement reuses every record: nothing launched, the same bracket
    monkeypatch.setattr(refine, "run_command", lambda command: pytest.fail(f"launched {command}"))
    (outcome,) = refine.refine(overrides, METRIC, [None])
    assert outcome.plan.bracket == (low, high) and outcome.launched == [] and outcome.measured == len(records)


def test_unknown_metric_is_refused_naming_the_recorded_ones(micro, capsys):
    with pytest.raises(SystemExit) as exit_info:
        refine.main([*micro["overrides"], "study=full", "metric=icl/nope", "--dry-run"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "icl/nope" in err and METRIC in err

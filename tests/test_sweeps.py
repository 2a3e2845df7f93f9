"""Sweep parsing, in one place for plan, prefetch, refine and the tests: an override taken from a command
line, the values of a sweep expression, and the steps a multirun visits, checked against what Hydra's basic
sweeper itself would launch."""

from __future__ import annotations

import pytest
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser

from ckptstudy.config import compose_config
from ckptstudy.model import checkpoints
from ckptstudy.sweeps import sweep_values, swept_steps, take_override


def test_take_override_returns_the_last_value_and_the_rest_in_order():
    value, rest = take_override(["a=1", "step=5", "+b=2", "++step=7", "c"], "step")
    assert value == "7" and rest == ["a=1", "+b=2", "c"]
    assert take_override(["a=1"], "step") == (None, ["a=1"])
    assert take_override(["steps=1"], "step") == (None, ["steps=1"])  # a key is matched whole


@pytest.mark.parametrize(
    ("expression", "values"),
    [
        ("1,2", ["1", "2"]),
        ("range(1000,4000,1000)", ["1000", "2000", "3000"]),
        ("choice(a,b)", ["a", "b"]),
        ("final", ["final"]),
        ("null", ["null"]),
    ],
)
def test_sweep_values(expression, values):
    assert sweep_values(expression) == values


def hydra_steps(cfg, command_line: list[str]) -> list[int]:
    """The steps Hydra's basic sweeper launches: the schedule's params, then the command line (which wins)."""
    params = [f"{k}={v}" for k, v in cfg.hydra.sweeper.params.items()]
    parsed = OverridesParser.create().parse_overrides([*params, *command_line])
    (batches,) = BasicSweeper.split_arguments(parsed, None)
    available = checkpoints.available_steps(cfg.model)
    found = [dict(o.split("=", 1) for o in job)["step"] for job in batches]
    return sorted({checkpoints.resolve_step(v, available, cfg.model.name) for v in found})


@pytest.mark.parametrize(
    ("overrides", "step", "expected"),
    [
        (["model=pythia-160m", "schedule=log"], None, 19),
        (["model=pythia-160m", "schedule=dense"], None, 143),
        (["model=pythia-160m", "schedule=final"], None, [143000]),
        (["model=pythia-160m", "schedule=log"], "1000,2000", [1000, 2000]),  # the command line wins
        (["model=pythia-160m"], "range(1000,4000,1000)", [1000, 2000, 3000]),
        (["model=pythia-160m"], "final", [143000]),
        (["model=micro"], None, 22),  # schedule=all: the suite recipe's checkpoints
    ],
)
def test_swept_steps_are_the_steps_hydra_launches(overrides, step, expected):
    cfg = compose_config(overrides, return_hydra_config=True)
    steps = swept_steps(cfg, step)
    assert steps == sorted(set(steps))
    assert len(steps) == expected if isinstance(expected, int) else steps == expected
    assert steps == hydra_steps(cfg, [f"step={step}"] if step else [])


def test_swept_steps_without_a_schedule_are_the_configs_step_and_repeats_collapse():
    cfg = compose_config(["model=pythia-160m", "step=2000"], return_hydra_config=True)
    cfg.hydra.sweeper.params = None
    assert swept_steps(cfg) == [2000]
    cfg.step = None  # null: the final checkpoint
    assert swept_steps(cfg) == [143000]
    assert swept_steps(cfg, "2000,1000,2000") == [1000, 2000]


def test_a_step_the_model_lacks_is_refused_naming_the_nearest():
    cfg = compose_config(["model=pythia-160m"], return_hydra_config=True)
    with pytest.raises(ValueError, match=r"step=1500 is not a checkpoint .* nearest valid steps"):
        swept_steps(cfg, "1000,1500")

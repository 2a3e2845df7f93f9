"""The metric-family contract: one yaml, one module, one test file, and the yaml's parameters are the
module's `measure` parameters (so a family is added without editing anything else)."""

from __future__ import annotations

import importlib
import inspect
from pathlib import Path

import pytest
import yaml

from ckptstudy.config import CONF_DIR

TESTS = Path(__file__).parent
FAMILIES = sorted(p.stem for p in (CONF_DIR / "metrics").glob("*.yaml"))


def family_yaml(name: str) -> dict:
    return yaml.safe_load((CONF_DIR / "metrics" / f"{name}.yaml").read_text())


def test_there_are_families():
    assert {"icl_heads", "repetition", "low_info"} <= set(FAMILIES)


@pytest.mark.parametrize("name", FAMILIES)
def test_family_has_module_measure_version_and_test_file(name):
    cfg = family_yaml(name)
    assert cfg["_target_"] == f"ckptstudy.metrics.{name}.measure"
    module = importlib.import_module(f"ckptstudy.metrics.{name}")
    assert callable(module.measure)
    assert isinstance(module.DEFINITION_VERSION, int) and module.DEFINITION_VERSION >= 1
    assert (TESTS / f"test_{name}.py").exists()


@pytest.mark.parametrize("name", FAMILIES)
def test_yaml_parameters_are_the_measure_parameters(name):
    params = {k for k in family_yaml(name) if k not in ("_target_", "defaults")}
    module = importlib.import_module(f"ckptstudy.metrics.{name}")
    signature = [p for p in inspect.signature(module.measure).parameters if p != "ctx"]
    assert params == set(signature)


@pytest.mark.parametrize("name", FAMILIES)
def test_yaml_uses_the_schema_derived_from_measure(name):
    assert f"{name}_schema" in family_yaml(name).get("defaults", [])


def test_every_scalar_without_a_sample_gets_its_reason_or_is_flagged():
    import math

    import numpy as np

    from ckptstudy.metrics import FamilyResult
    from ckptstudy.stats.bootstrap import Sample

    result = FamilyResult(scalars={"f/rate": 0.5, "f/count": 3.0, "f/layer_2": 1.0, "f/gone": math.nan, "f/mean": 2.0})
    result.add_sample("f/rate", Sample("mean", np.array([0.0, 1.0])))
    without = result.without_interval({r"f/count": "a count", r"f/layer_\d+": "a layer index"})
    assert without["f/count"] == "a count" and without["f/layer_2"] == "a layer index"
    assert without["f/gone"].startswith("NaN at this checkpoint")
    assert without["f/mean"].startswith("undeclared")  # a finite statistic with neither: a defect, flagged
    assert "f/rate" not in without


@pytest.mark.parametrize("name", FAMILIES)
def test_no_interval_declarations_are_full_match_patterns_with_reasons(name):
    import re

    module = importlib.import_module(f"ckptstudy.metrics.{name}")
    for pattern, why in getattr(module, "NO_INTERVAL", {}).items():
        re.compile(pattern)
        assert pattern.startswith(f"{family_prefix(name)}/") and len(why) > 10, (pattern, why)


def family_prefix(name: str) -> str:
    return {"icl_heads": "icl", "repetition": "rep", "low_info": "lowinfo"}.get(name, name)

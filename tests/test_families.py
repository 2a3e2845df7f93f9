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

"""The metric-family contract: one module, one yaml, one test file, nothing registered elsewhere.

Every conf/metrics/<family>.yaml names a module with `measure(ctx, *, ...)` whose parameters are annotated
(with their ranges) and have no defaults, exactly the yaml's keys; `DEFINITION_VERSION`; and `passes()`
describing its forward passes. A bad value of any parameter of any family is refused when the config is
composed, naming it. The README's "How to add a metric family" template is added as a user would add it and
run through a real job.
"""

from __future__ import annotations

import importlib
import inspect
import json
import math
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from omegaconf import OmegaConf

import ckptstudy.metrics
from ckptstudy.config import CONF_DIR, compose_config, validate
from ckptstudy.metrics import UNEXPLAINED, FamilyResult
from ckptstudy.params import Choice, Each, MetricConfigError, Range, check_family, parameters
from ckptstudy.record import RecordArrays
from ckptstudy.stats.bootstrap import Sample

TESTS = Path(__file__).parent
README = TESTS.parent / "README.md"
FAMILIES = sorted(p.stem for p in (CONF_DIR / "metrics").glob("*.yaml"))


def family_yaml(name: str) -> dict:
    return yaml.safe_load((CONF_DIR / "metrics" / f"{name}.yaml").read_text())


def module_of(name: str):
    return importlib.import_module(family_yaml(name)["_target_"].rsplit(".", 1)[0])


def test_there_are_families():
    assert {"icl_heads", "repetition", "low_info", "sink", "perturb"} <= set(FAMILIES)


@pytest.mark.parametrize("name", FAMILIES)
def test_family_has_measure_version_passes_and_test_file(name):
    module = module_of(name)
    assert callable(module.measure) and callable(module.passes)
    assert isinstance(module.DEFINITION_VERSION, int) and module.DEFINITION_VERSION >= 1
    assert (TESTS / f"test_{name}.py").exists()
    assert not hasattr(module, "NO_INTERVAL")  # reasons are given inline, not by key patterns


@pytest.mark.parametrize("name", FAMILIES)
def test_parameters_are_annotated_keyword_only_without_defaults_and_are_the_yaml_keys(name):
    module = module_of(name)
    signature = inspect.signature(module.measure)
    params = {k: p for k, p in signature.parameters.items() if k != "ctx"}
    assert next(iter(signature.parameters)) == "ctx"
    for key, param in params.items():
        assert param.kind is inspect.Parameter.KEYWORD_ONLY, key
        assert param.default is inspect.Parameter.empty, f"{name}.{key} has a default: values live in the yaml"
        assert param.annotation is not inspect.Parameter.empty, key
    assert set(parameters(module.measure)) == set(params)  # every annotation is one ckptstudy.params reads
    assert {k for k in family_yaml(name) if k != "_target_"} == set(params)
    assert "defaults" not in family_yaml(name)  # no per-family schema: config.validate checks the parameters


@pytest.mark.parametrize("name", FAMILIES)
def test_every_yaml_value_is_valid_and_each_passes_describes_work(name):
    cfg = compose_config([])
    fn, params = check_family(name, OmegaConf.to_container(cfg.metrics[name], resolve=True))
    from ckptstudy.config import model_shape
    from ckptstudy.measure.cost import Pass, probe_sizes

    shape = model_shape(cfg.model)
    described = inspect.getmodule(fn).passes(probe_sizes(cfg, shape.context, 0.5), shape, **params)
    assert described and all(isinstance(p, Pass) for p in described)


# --- a bad value of every parameter of every family is refused, naming it --------------------------------


def bad_values(parameter) -> list:
    """Values `parameter` must refuse: out of each bound, not a choice, of the wrong type."""
    out = [[1] if parameter.kind is not list else "many"]  # the wrong type
    for constraint in parameter.constraints:
        item = constraint.item if isinstance(constraint, Each) else constraint
        wrap = (lambda v: [v]) if isinstance(constraint, Each) else (lambda v: v)
        if isinstance(constraint, Each) and constraint.min_items:
            out.append([])
        if isinstance(item, Choice):
            out.append(wrap("not-a-choice"))
        if isinstance(item, Range) and item.min is not None:
            out.append(wrap(item.min if item.min_open else item.min - 1))
        if isinstance(item, Range) and item.max is not None:
            out.append(wrap(item.max if item.max_open else item.max + 1))
    if parameter.kind is int:
        out.append(2.5)
    return out


def constrained(name: str) -> list[tuple[str, object]]:
    """(parameter, bad value) for every parameter of the family and every way to break it."""
    declared = parameters(module_of(name).measure)
    return [(key, bad) for key, parameter in declared.items() for bad in bad_values(parameter)]


@pytest.mark.parametrize("name", FAMILIES)
def test_a_bad_parameter_is_refused_at_composition_naming_it(name):
    key, bad = next((k, v) for k, v in constrained(name) if not isinstance(v, list) or v)
    override = f"metrics.{name}.{key}={json.dumps(bad) if not isinstance(bad, str) else bad}"
    with pytest.raises(MetricConfigError) as err:
        compose_config([override])
    assert str(err.value).startswith(f"metrics.{name}.{key}=") and "is not valid; valid: " in str(err.value)


@pytest.mark.parametrize("name", FAMILIES)
def test_every_way_to_break_every_parameter_is_refused_naming_it(name):
    cfg = compose_config([])
    for key, bad in constrained(name):
        broken = cfg.copy()
        broken.metrics[name][key] = bad
        with pytest.raises(MetricConfigError, match=rf"^metrics\.{name}\.{key}=") as err:
            validate(broken)
        assert "valid:" in str(err.value), (key, bad, str(err.value))


def test_unknown_and_missing_parameters_and_cross_parameter_rules_are_refused():
    with pytest.raises(MetricConfigError, match=r"unknown parameter\(s\) \['late_postion'\]; valid parameters: "):
        compose_config(["+metrics.icl_heads.late_postion=400"])
    cfg = compose_config([])
    OmegaConf.set_struct(cfg, False)
    del cfg.metrics.icl_heads["top_k"]
    with pytest.raises(MetricConfigError, match=r"metrics.icl_heads: missing parameter\(s\) \['top_k'\]"):
        validate(cfg)
    with pytest.raises(MetricConfigError, match=r"metrics\.perturb\.eps_max=1e-05 is not valid; must be > eps_min"):
        compose_config(["metrics.perturb.eps_max=1e-5"])
    # a rule against the model's shape from its yaml: pythia-160m has 12 layers
    with pytest.raises(MetricConfigError, match=r"metrics\.perturb\.layer=12 is not valid; .* in 0\.\.11"):
        compose_config(["model=pythia-160m", "metrics.perturb.layer=12"])
    assert compose_config(["model=pythia-160m", "metrics.perturb.layer=11"]).metrics.perturb.layer == 11


def test_a_bad_value_is_refused_before_anything_is_resolved(tmp_path):
    from ckptstudy.job import run_job

    cfg = compose_config([f"paths.root={tmp_path}", "logger=none"])
    cfg.metrics.low_info.quantile = 1.5  # as a job would get it from a launcher, after composition
    record = run_job(cfg)
    assert record.outcome.status == "failed" and record.outcome.error["type"] == "MetricConfigError"
    assert record.outcome.error["message"] == "metrics.low_info.quantile=1.5 is not valid; valid: a number in (0, 1)"
    assert (
        record.identity.revision is None and record.provenance.weights_sha256 is None
    )  # no step resolved, nothing loaded


# --- FamilyResult: samples first --------------------------------------------------------------------------


def test_a_statistic_is_its_samples_statistic_and_a_value_carries_its_reason():
    result = FamilyResult()
    result.stat("f/rate", Sample("mean", np.array([0.0, 1.0, 1.0, 1.0])), None)
    result.value("f/count", 3, "a count of things")
    result.stat("f/none", Sample("nanmean", np.array([np.nan, np.nan])), "no prompt has one")
    result.nan("f/gone", "nothing to measure")
    result.stat("f/silent", Sample("nanmean", np.array([np.nan])), None)  # NaN without a reason: a defect
    assert result.scalars == pytest.approx(
        {"f/rate": 0.75, "f/count": 3.0, "f/none": math.nan, "f/gone": math.nan, "f/silent": math.nan}, nan_ok=True
    )
    assert list(result.scalars) == ["f/rate", "f/count", "f/none", "f/gone", "f/silent"]  # the order given
    assert result.nan_reasons == {
        "f/none": "no prompt has one",
        "f/gone": "nothing to measure",
        "f/silent": UNEXPLAINED,
    }
    assert result.unexplained_nans() == ["f/silent"]
    assert result.no_interval["f/count"] == "a count of things" and "f/rate" not in result.no_interval
    assert result.no_interval["f/gone"].startswith("NaN at this checkpoint")
    # a key reported again changes kind: the last report wins, and the cached scalars follow
    result.value("f/rate", 0.5, "a constant")
    assert result.scalars["f/rate"] == 0.5 and "f/rate" not in result.samples


def test_parts_are_saved_but_not_reported():
    result = FamilyResult()
    result.part("f/a", Sample("mean", np.array([1.0, 3.0]), prompts="p"))
    result.stat("f/b", Sample("mean", np.array([0.5, 0.5]), prompts="p"), None)
    result.stat("f/diff", Sample("difference", of=("f/a", "f/b")), None)
    assert result.scalars == {"f/b": 0.5, "f/diff": 1.5}
    assert {"samples/f/a/values", "samples/f/diff/spec"} <= set(RecordArrays.of(result).members())
    merged = FamilyResult()
    merged.update(result)
    assert merged.scalars == result.scalars and set(merged.samples) == {"f/a", "f/b", "f/diff"}


# --- a family added the way the README says ---------------------------------------------------------------


def readme_template() -> tuple[str, str, str]:
    """(module path, module source, yaml source) of the README's "How to add a metric family" template."""
    text = README.read_text()
    section = text[text.index("## How to add a metric family") :]
    section = section[: section.index("\n## ", 3)]
    python = re.search(r"```python\n# (\S+)\n(.*?)```", section, re.S)
    conf = re.search(r"```yaml\n# (\S+)\n(.*?)```", section, re.S)
    return python.group(1), python.group(2), conf.group(2)


def add_user_family(root: Path, source: str, conf: str, monkeypatch) -> str:
    """Add a family as a user would: its module beside the other families (a directory appended to
    `ckptstudy.metrics`'s package path, so nothing is written into the source tree) and its yaml in
    `<root>/conf/metrics/` (a directory on Hydra's search path). Returns the family's name."""
    name = yaml.safe_load(conf)["_target_"].split(".")[-2]
    (root / "modules").mkdir()
    (root / "modules" / f"{name}.py").write_text(source)
    monkeypatch.setattr(ckptstudy.metrics, "__path__", [*ckptstudy.metrics.__path__, str(root / "modules")])
    monkeypatch.setitem(sys.modules, f"ckptstudy.metrics.{name}", None)  # restored (removed) after the test
    del sys.modules[f"ckptstudy.metrics.{name}"]
    (root / "conf" / "metrics").mkdir(parents=True)
    (root / "conf" / "metrics" / f"{name}.yaml").write_text(conf)
    return name


def test_the_readme_template_is_a_family_a_job_runs(tmp_path, micro_suite, monkeypatch):
    _, source, conf = readme_template()
    name = add_user_family(tmp_path, source, conf, monkeypatch)
    module = importlib.import_module(f"ckptstudy.metrics.{name}")

    from ckptstudy.job import run_job
    from ckptstudy.tools.machine import Machine
    from ckptstudy.tools.plan import make_plan

    overrides = [f"hydra.searchpath=[file://{tmp_path / 'conf'}]", f"metrics=[{name}]"]
    where = [f"paths.root={tmp_path / 'out'}", f"model.path='{micro_suite}/step{{step}}'", "logger=none"]
    key = next(k for k in yaml.safe_load(conf) if k != "_target_")
    with pytest.raises(MetricConfigError, match=rf"^metrics\.{name}\.{key}=0 is not valid"):
        compose_config([*overrides, f"metrics.{name}.{key}=0"])
    record = run_job(compose_config([*overrides, *where]))
    assert record.outcome.status == "ok", record.outcome.error
    assert record.provenance.definitions[name] == module.DEFINITION_VERSION
    assert record.provenance.family_dtypes == {name: "float32"}  # what it computed in (a float32 job)
    stats = [k for k in record.scalars.metrics if k not in record.scalars.no_interval]
    assert stats and all(record.scalars.ci[k][0] <= record.scalars.metrics[k] <= record.scalars.ci[k][1] for k in stats)
    assert record.scalars.no_interval and all(len(why) > 10 for why in record.scalars.no_interval.values())
    plan = make_plan(overrides, machine=Machine("fixed", 100.0, 10.0, 0.2, "test"))
    assert plan["cpu"]["families"][name]["flops"] > 0 and plan["warnings"] == []


def test_the_plan_warns_about_a_family_that_describes_no_passes(tmp_path, monkeypatch):
    _, source, conf = readme_template()
    name = add_user_family(tmp_path, source.split("\ndef passes(")[0], conf, monkeypatch)

    from ckptstudy.tools.machine import Machine
    from ckptstudy.tools.plan import make_plan, render

    overrides = [f"hydra.searchpath=[file://{tmp_path / 'conf'}]", f"metrics=[repetition,{name}]"]
    plan = make_plan(overrides, machine=Machine("fixed", 100.0, 10.0, 0.2, "test"))
    assert plan["cpu"]["families"][name]["flops"] == 0 and plan["cpu"]["families"]["repetition"]["flops"] == 0
    assert plan["cpu"]["families"]["natural generation (shared)"]["flops"] > 0
    warning = f"metrics.{name} describes no passes (no `passes` next to its measure): planned at 0 FLOP"
    assert plan["warnings"] == [warning] and f"warning: {warning}" in render(plan)

"""Config composition for every model and schedule, and refusal of bad values at composition time."""

from __future__ import annotations

import pytest
from hydra.errors import ConfigCompositionException, HydraException
from omegaconf.errors import ConfigKeyError, ValidationError

from ckptstudy.config import CONF_DIR, compose_config
from ckptstudy.job import run_job
from ckptstudy.model import checkpoints
from ckptstudy.sweeps import sweep_values

MODELS = sorted(p.stem for p in (CONF_DIR / "model").glob("*.yaml"))
COMPOSE_ERRORS = (ConfigCompositionException, ConfigKeyError, ValidationError, HydraException, ValueError)


def swept_steps(cfg) -> list[str]:
    """The values a multirun sweeps for `step` (the schedule's), each as written, repeats kept."""
    return sweep_values(str(cfg.hydra.sweeper.params.step))


def message(err: pytest.ExceptionInfo) -> str:
    return str(err.value) + str(err.value.__cause__)


def test_every_pythia_size_and_deduped_variant_has_a_config():
    sizes = ["14m", "31m", "70m", "160m", "410m", "1b", "1.4b", "2.8b", "6.9b", "12b"]
    expected = {f"pythia-{s}{d}" for s in sizes for d in ("", "-deduped")} | {"micro"}
    assert expected <= set(MODELS)


@pytest.mark.parametrize("model", MODELS)
def test_every_model_composes_and_resolves_its_final_step(model):
    cfg = compose_config([f"model={model}"])
    steps = checkpoints.available_steps(cfg.model)
    assert checkpoints.resolve_step(None, steps, model) == steps[-1]
    source = checkpoints.source_for(cfg.model, steps[-1])
    if model.startswith("pythia"):
        assert source.revision == f"step{steps[-1]}" and source.location == f"EleutherAI/{model}"
    if cfg.model.source == "hub":
        assert cfg.model.n_layers and cfg.model.d_model % cfg.model.n_heads == 0
        assert str(steps[-1]) in source.revision


@pytest.mark.parametrize(
    ("schedule", "model", "expected"),
    [
        ("all", "micro", 22),  # every checkpoint of the suite recipe
        ("all", "pythia-160m", 154),  # every hub branch: step0 .. step143000
        ("log", "pythia-160m", 19),
        ("dense", "pythia-160m", 143),
        ("final", "pythia-160m", 1),
    ],
)
def test_every_schedule_sweeps_valid_steps(schedule, model, expected):
    cfg = compose_config([f"schedule={schedule}", f"model={model}"], return_hydra_config=True)
    steps = checkpoints.available_steps(cfg.model)
    swept = [checkpoints.resolve_step(v, steps, model) for v in swept_steps(cfg)]
    assert len(swept) == expected and len(set(swept)) == expected
    if schedule == "all":
        assert swept == steps
    if schedule == "dense":
        assert swept == list(range(1000, 144000, 1000))


def test_unknown_key_is_refused_with_its_name():
    with pytest.raises(COMPOSE_ERRORS) as err:
        compose_config(["model.nme=foo"])
    assert "nme" in message(err)


def test_wrong_type_is_refused():
    with pytest.raises(COMPOSE_ERRORS) as err:
        compose_config(["batch_size=many"])
    assert "batch_size" in message(err)


def test_unknown_model_is_refused_listing_the_choices():
    with pytest.raises(ConfigCompositionException) as err:
        compose_config(["model=pythia-999m"])
    assert "pythia-999m" in message(err) and "pythia-160m" in message(err) and "micro" in message(err)


@pytest.mark.parametrize(
    ("override", "choices"),
    [
        ("logger.mode=sometimes", "offline, online, disabled"),
        ("dtype=float8", "float32, bfloat16, float16, auto"),
        ("loops.definition=prefix", "suffix, paper"),
        ("model.source=ftp", "hub, local"),
        ("probes.source=web", "stdlib, minipile, files"),
    ],
)
def test_bad_choice_is_refused_at_composition_naming_value_and_choices(override, choices):
    with pytest.raises(COMPOSE_ERRORS) as err:
        compose_config([override])
    key, value = override.split("=")
    assert value in message(err) and choices in message(err) and key in message(err)


def test_step_not_in_the_schedule_names_the_nearest_steps():
    with pytest.raises(ValueError) as err:
        checkpoints.resolve_step(1500, checkpoints.PYTHIA_STEPS, "pythia-160m")
    assert "step=1500" in str(err.value) and "[512, 1000, 2000]" in str(err.value)
    with pytest.raises(ValueError, match="nearest valid steps: \\[0, 1, 2\\]"):
        checkpoints.resolve_step(-5, checkpoints.PYTHIA_STEPS, "pythia-160m")
    with pytest.raises(ValueError, match="not a step number"):
        checkpoints.resolve_step("early", checkpoints.PYTHIA_STEPS, "pythia-160m")


def test_job_refuses_a_bad_step_before_loading(tmp_path):
    cfg = compose_config([f"paths.root={tmp_path}", "model=pythia-160m", "step=1234", "logger=none"])
    record = run_job(cfg)
    assert record.outcome.status == "failed"
    assert "step=1234" in record.outcome.error["message"] and "1000" in record.outcome.error["message"]
    assert record.provenance.weights_sha256 is None  # nothing was loaded


def test_paper_preset_reproduces_the_paper_setup():
    cfg = compose_config(["experiment=repetitions_not_alike"], return_hydra_config=True)
    assert cfg.model.repo == "EleutherAI/pythia-1.4b" and cfg.probes.dataset == "JeanKaddour/minipile"
    assert cfg.probes.natural.n == 1000 and cfg.probes.natural.length == 32
    assert cfg.loops.new_tokens == 1000 and cfg.loops.max_period == 500 and cfg.loops.definition == "paper"
    # the preset's own values win over conf/config.yaml's (they did not before the defaults order fix)
    assert cfg.study == "repetitions_not_alike" and cfg.dtype == "auto"
    assert cfg.batch_size is None and cfg.metrics.icl_heads.max_rows is None  # rows per call from memory_budget
    steps = [int(s) for s in swept_steps(cfg)]
    assert len(steps) == 10 and steps[0] == 1 and steps[-1] == 143000
    assert all(s in checkpoints.PYTHIA_STEPS for s in steps)


def test_smoke_preset_is_small():
    cfg = compose_config(["experiment=smoke"])
    default = compose_config([])
    assert cfg.probes.natural.n < default.probes.natural.n and cfg.loops.new_tokens < default.loops.new_tokens
    assert cfg.probes.icl_repeat.n < default.probes.icl_repeat.n and cfg.probes.long_text.n < default.probes.long_text.n


def test_micro_model_shape_comes_from_its_recipe():
    cfg = compose_config(["model.suite.n_layers=3"])
    assert cfg.model.n_layers == 3  # one source: the yaml's shape interpolates the suite recipe


@pytest.mark.parametrize(
    ("override", "named"),
    [
        ("metrics.icl_heads.late_postion=400", "late_postion"),  # a typo in a family parameter (Hydra)
        ("+metrics.icl_heads.late_postion=400", "late_postion"),  # forced in: the family's own check
        ("metrics.icl_heads.top_k=three", "metrics.icl_heads.top_k='three' is not valid; valid: an integer >= 1"),
        ("metrics.repetition.max_cycles=2.5", "metrics.repetition.max_cycles=2.5 is not valid"),
        ("loops.min_period=0", "loops: min_period must be >= 1, got 0"),
        ("loops.new_tokens=2", "loops.new_tokens=2 is not valid: it must be >= 4"),
        ("probes.natural.n=0", "probes.natural.n=0 is not valid: it must be >= 1"),
        # the micro model's context (from its yaml) is 128 tokens
        ("probes.natural.length=126", "probes.natural prompts (126 tokens) leave 2 of the model's 128-token context"),
        ("probes.icl_repeat.length=32", "probes.icl_repeat prompts (128 tokens) leave 0 of the model's 128-token"),
    ],
)
def test_bad_values_are_refused_at_composition_naming_them(override, named):
    with pytest.raises(COMPOSE_ERRORS) as err:
        compose_config([override])
    assert named in message(err)


@pytest.mark.parametrize("swept", ["-1", "3,-1"])
def test_a_multirun_refuses_a_bad_value_before_any_job_launches(tmp_path, swept):
    from conftest import run_cli

    proc = run_cli(["-m", "step=0,1", "logger=none", f"metrics.low_info.text_skip={swept}"], tmp_path)
    assert proc.returncode == 2
    assert "metrics.low_info.text_skip=-1 is not valid; valid: an integer >= 0" in proc.stderr
    assert not (tmp_path / "default").exists()  # no job ran, no record was written

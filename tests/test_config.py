"""Config composition for every model and schedule, and refusal of bad values with clear messages."""

from __future__ import annotations

import pytest
from hydra.errors import ConfigCompositionException, HydraException
from omegaconf.errors import ConfigKeyError, ValidationError

from ckptstudy import checkpoints
from ckptstudy.app import run_job
from ckptstudy.config import CONF_DIR, check_choices, compose_config
from ckptstudy.suite import SuiteSpec, spec_from_config

MODELS = sorted(p.stem for p in (CONF_DIR / "model").glob("*.yaml"))
SCHEDULES = sorted(p.stem for p in (CONF_DIR / "schedule").glob("*.yaml"))


def test_every_pythia_size_and_deduped_variant_has_a_config():
    sizes = ["14m", "31m", "70m", "160m", "410m", "1b", "1.4b", "2.8b", "6.9b", "12b"]
    expected = {f"pythia-{s}{d}" for s in sizes for d in ("", "-deduped")} | {"micro"}
    assert expected <= set(MODELS)


@pytest.mark.parametrize("model", MODELS)
def test_every_model_composes_and_resolves_its_final_step(model):
    cfg = compose_config([f"model={model}"])
    check_choices(cfg)
    steps = checkpoints.available_steps(cfg.model)
    assert checkpoints.resolve_step(None, steps, model) == steps[-1]
    source = checkpoints.source_for(cfg.model, steps[-1])
    if cfg.model.source == "hub":
        assert source.revision == f"step{steps[-1]}" and source.location == f"EleutherAI/{model}"


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_every_schedule_composes_and_lists_valid_steps(schedule):
    from hydra import compose, initialize_config_dir

    from ckptstudy.config import register_configs

    register_configs()
    model = "micro" if schedule == "micro" else "pythia-160m"
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(
            config_name="config",
            overrides=[f"schedule={schedule}", f"model={model}"],
            return_hydra_config=True,
        )
    steps = checkpoints.available_steps(cfg.model)
    swept = str(cfg.hydra.sweeper.params.step).split(",")
    assert swept
    for value in swept:
        assert checkpoints.resolve_step(value, steps, model) in steps


def test_pythia_schedule_matches_the_hub_branches():
    steps = checkpoints.PYTHIA_STEPS
    assert len(steps) == 154 and steps[:12] == [0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1000]
    assert steps[-1] == 143000


def test_micro_schedule_is_exactly_the_suite_checkpoints():
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="config", return_hydra_config=True)
    swept = [int(s) for s in str(cfg.hydra.sweeper.params.step).split(",")]
    assert swept == spec_from_config(cfg.model).checkpoint_steps()


def test_unknown_key_is_refused_with_its_name():
    with pytest.raises((ConfigCompositionException, ConfigKeyError, HydraException)) as err:
        compose_config(["model.nme=foo"])
    assert "nme" in str(err.value) + str(err.value.__cause__)


def test_wrong_type_is_refused():
    with pytest.raises((ConfigCompositionException, ValidationError, HydraException)) as err:
        compose_config(["batch_size=many"])
    assert "batch_size" in str(err.value) + str(err.value.__cause__)


def test_unknown_model_is_refused_listing_the_choices():
    with pytest.raises(ConfigCompositionException) as err:
        compose_config(["model=pythia-999m"])
    message = str(err.value)
    assert "pythia-999m" in message and "pythia-160m" in message and "micro" in message


def test_bad_option_value_names_key_value_and_choices():
    cfg = compose_config(["logger.mode=sometimes"])
    with pytest.raises(ValueError, match=r"logger.mode='sometimes'.*offline, online, disabled"):
        check_choices(cfg)


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
    assert record["status"] == "failed"
    assert "step=1234" in record["error"]["message"] and "1000" in record["error"]["message"]
    assert "weights_sha256" not in record  # nothing was loaded


def test_bad_metric_parameter_is_refused_with_the_valid_ones(tmp_path):
    from ckptstudy.metrics import MetricConfigError, family_function

    cfg = compose_config(["+metrics.icl_heads.late_postion=400"])
    with pytest.raises(MetricConfigError) as err:
        family_function("icl_heads", dict(cfg.metrics.icl_heads))
    assert "late_postion" in str(err.value) and "late_position" in str(err.value)


def test_suite_spec_keys_are_checked():
    cfg = compose_config(["+model.suite.layers=3"])
    with pytest.raises(ValueError, match=r"layers.*valid keys"):
        spec_from_config(cfg.model)


def test_micro_yaml_recipe_is_the_builder_default():
    # the yaml documents the recipe; keeping it equal to the code default avoids two truths
    assert spec_from_config(compose_config().model) == SuiteSpec()


def test_paper_preset_reproduces_the_paper_setup():
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="config", overrides=["experiment=repetitions_not_alike"], return_hydra_config=True)
    assert cfg.model.repo == "EleutherAI/pythia-1.4b" and cfg.probes.dataset == "JeanKaddour/minipile"
    assert cfg.probes.natural.n == 1000 and cfg.probes.natural.length == 32
    assert cfg.loops.new_tokens == 1000 and cfg.loops.max_period == 500 and cfg.loops.definition == "paper"
    steps = [int(s) for s in str(cfg.hydra.sweeper.params.step).split(",")]
    assert len(steps) == 10 and steps[0] == 1 and steps[-1] == 143000
    assert all(s in checkpoints.PYTHIA_STEPS for s in steps)


@pytest.mark.parametrize("launcher", ["joblib", "submitit_local", "submitit_slurm"])
def test_cluster_launchers_compose(launcher):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(
            config_name="config",
            overrides=[f"hydra/launcher={launcher}", "model=pythia-160m"],
            return_hydra_config=True,
        )
    assert launcher.split("_")[0] in cfg.hydra.launcher._target_.lower()

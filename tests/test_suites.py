"""Checkpoint suites as configuration: every model yaml names its repo (per training seed), its branch names and
its steps, refuses a seed or a step it does not have, and `ckptstudy-plan` and `ckptstudy-prefetch` work for it
(offline: branch names against a fake HF cache, no weights)."""

from __future__ import annotations

import math

import pytest

from ckptstudy.config import compose_config
from ckptstudy.fingerprint import identify
from ckptstudy.model.checkpoints import available_steps, branch_tokens, run_name, source_for
from ckptstudy.results import record_path
from ckptstudy.tools import prefetch
from ckptstudy.tools.machine import Machine
from ckptstudy.tools.plan import make_plan
from test_hub_loading import REPO_ID, make_fake_hub_cache
from test_prefetch import hub_cache, offline  # noqa: F401 (fixtures)

FIXED = Machine("fixed", gflops=100.0, bandwidth_gbs=10.0, layer_overhead_ms=0.2, source="test")

# model yaml -> (training seed, architecture, number of steps, (step, repo, branch) of its first and last checkpoint)
SUITES = {
    "pythia-160m": (None, "gpt_neox", 154, [(0, "EleutherAI/pythia-160m", "step0"), (143000, None, "step143000")]),
    "olmo-1b": (None, "llama", 22, [(1000, "allenai/OLMo-1B-hf", "step1000-tokens4B"), (738020, None, None)]),
    "olmo-2-1b": (
        None,
        "llama",
        195,
        [(0, "allenai/OLMo-2-0425-1B", "stage1-step0-tokens0B"), (1907359, None, "stage1-step1907359-tokens4001B")],
    ),
    "crfm-gpt2-small": (
        None,
        "gpt2",
        609,
        [(0, "stanford-crfm/alias-gpt2-small-x21", "checkpoint-0"), (400000, None, "checkpoint-400000")],
    ),
}


def model_cfg(*overrides: str):
    return compose_config(list(overrides)).model


@pytest.mark.parametrize("name", list(SUITES))
def test_each_suite_names_its_repo_branches_and_steps(name):
    _seed, family, count, ends = SUITES[name]
    cfg = model_cfg(f"model={name}")
    steps = available_steps(cfg)
    assert len(steps) == count and steps == sorted(set(steps))
    assert str(getattr(cfg.arch, "value", cfg.arch)) == family
    for step, repo, branch in ends:
        source = source_for(cfg, step)
        assert source.kind == "hub"
        assert repo is None or source.location == repo
        assert branch is None or source.revision == branch
    assert (steps[0], steps[-1]) == (ends[0][0], ends[1][0])


def test_olmo_2_token_counts_follow_the_rule_the_yaml_states():
    # the yaml stores each branch's token count; its comment says they are ceil(step x 2,097,152 / 1e9): check every one
    # (a mistyped entry names a branch that does not exist)
    cfg = model_cfg("model=olmo-2-1b")
    tokens = branch_tokens(cfg)
    assert len(tokens) == 195
    assert all(b == math.ceil(step * cfg.tokens_per_step / 1e9) for step, b in tokens.items())
    # OLMo-1B's partial list: token counts grow with the step and lie within 2 B of step x 4,194,304 (the restart)
    olmo = branch_tokens(model_cfg("model=olmo-1b"))
    assert list(olmo.values()) == sorted(olmo.values())
    assert all(abs(b - step * 4194304 / 1e9) < 2.5 for step, b in olmo.items())


@pytest.mark.parametrize(
    ("overrides", "run", "repo", "branch"),
    [
        (["model=pythia-160m"], "pythia-160m", "EleutherAI/pythia-160m", "step1000"),
        (["model=pythia-160m", "model.seed=3"], "pythia-160m@seed3", "EleutherAI/pythia-160m-seed3", "step1000"),
        (["model=pythia-410m", "model.seed=9"], "pythia-410m@seed9", "EleutherAI/pythia-410m-seed9", "step1000"),
        (["model=crfm-gpt2-small"], "crfm-gpt2-small@seed21", "stanford-crfm/alias-gpt2-small-x21", "checkpoint-1000"),
        (
            ["model=crfm-gpt2-small", "model.seed=49"],
            "crfm-gpt2-small@seed49",
            "stanford-crfm/battlestar-gpt2-small-x49",
            "checkpoint-1000",
        ),
    ],
)
def test_a_training_seed_is_its_own_run_repo_and_record_key(overrides, run, repo, branch, tmp_path):
    cfg = compose_config([*overrides, "step=1000"])
    source = source_for(cfg.model, 1000)
    assert (run_name(cfg.model), source.location, source.revision) == (run, repo, branch)
    found = identify(cfg).identity
    assert found.model == run and found.base_model == cfg.model.name and found.seed == cfg.model.seed
    assert record_path(tmp_path, "s", run, 1000).parent.name == run  # each run's records apart from the others'


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["model=pythia-160m", "model.seed=10"], r"model.seed=10 is not a training run of model 'pythia-160m'; valid"),
        (["model=crfm-gpt2-small", "model.seed=1"], r"model.seed=1 is not a training run.*21, 49, 81, 343, 777"),
        (["model=olmo-1b", "model.seed=1"], r"model.seed=1 is not valid: model 'olmo-1b' has one training run"),
        (["model=olmo-1b", "step=1500"], r"step=1500 is not a checkpoint of model 'olmo-1b'; nearest valid steps"),
    ],
)
def test_a_seed_step_or_architecture_the_suite_lacks_is_refused(overrides, message):
    with pytest.raises(ValueError, match=message):
        cfg = compose_config(overrides, return_hydra_config=True)
        prefetch.swept_steps(cfg, "1500")


def test_an_architecture_without_an_adapter_is_refused_by_the_config_schema():
    # Hydra refuses it while merging the override; its cause (printed with it) names the value and the choices
    with pytest.raises(Exception, match=r"model.arch=bloom") as err:
        compose_config(["model=olmo-2-1b", "model.arch=bloom"])
    assert "Invalid value 'bloom', expected one of [gpt_neox, llama, gpt2]" in str(err.value.__cause__)


@pytest.mark.parametrize(
    ("name", "matrices", "tied", "params"),
    [
        ("pythia-160m", 2, False, 162_322_944),
        ("crfm-gpt2-small", 2, True, 124_439_808),  # GPT-2 small: 124,439,808 parameters with tied embeddings
        ("olmo-1b", 3, True, None),
        ("olmo-2-1b", 3, False, None),
    ],
)
def test_the_plan_uses_each_suites_shape_and_mlp(name, matrices, tied, params):
    result = make_plan([f"model={name}", "schedule=final"], machine=FIXED)
    shape = result["shape"]
    assert shape["mlp_matrices"] == matrices and shape["tied_embeddings"] == tied
    assert result["checkpoints"] == 1 and result["download_bytes_total"] > 0
    if params is not None:
        assert result["params"] == params
    # a SwiGLU MLP has three d_model x d_ff matrices: the MLP's share of the parameters says so
    d, layers = shape["d_model"], shape["n_layers"]
    ff = shape["d_ff"] or 4 * d
    assert result["params"] > layers * matrices * d * ff


def test_the_plan_counts_every_training_seed_as_its_own_sweep():
    one = make_plan(["model=pythia-160m", "schedule=final"], machine=FIXED)
    three = make_plan(["model=pythia-160m", "schedule=final", "model.seed=0,1,2"], machine=FIXED)
    assert three["seeds"] == [0, 1, 2] and three["checkpoints"] == 3 * one["checkpoints"]
    assert three["download_bytes_total"] == 3 * one["download_bytes_total"]
    with pytest.raises(ValueError, match=r"model.seed=12"):
        make_plan(["model=pythia-160m", "schedule=final", "model.seed=0,12"], machine=FIXED)


@pytest.mark.parametrize(
    ("overrides", "cached", "missing"),
    [
        (["model=olmo-2-1b", "step=0,300"], "stage1-step0-tokens0B", "stage1-step300-tokens1B"),
        (["model=olmo-1b", "step=1000,2000"], "step1000-tokens4B", "step2000-tokens8B"),
        (["model=crfm-gpt2-small", "step=0,10"], "checkpoint-0", "checkpoint-10"),
    ],
)
def test_prefetch_reports_each_suites_branch_names_offline(
    overrides,
    cached,
    missing,
    hub_cache,  # noqa: F811 (the fixture imported above)
    offline,  # noqa: F811
    tiny_tokenizer,
    capsys,
):
    # the suite's own branch names in a fake HF cache (tiny NeoX weights: prefetch reads the cache, not the model)
    make_fake_hub_cache(hub_cache, tiny_tokenizer, {cached: 1})
    fake_repo = ["model.repo=" + REPO_ID]
    if overrides[0] == "model=crfm-gpt2-small":
        fake_repo = [f"model.repo_by_seed={{21:{REPO_ID}}}"]
    with pytest.raises(SystemExit) as exit_info:
        prefetch.main([*overrides, *fake_repo])
    out, err = capsys.readouterr()
    assert exit_info.value.code == 1
    assert "cached     1" in out and cached in out
    assert f"missing    1: {missing}" in out and missing in err


@pytest.mark.parametrize(("model_type", "tied", "positions"), [("gpt_neox", False, False), ("gpt2", True, True)])
def test_the_shapes_parameter_count_is_the_built_models(model_type, tied, positions):
    from ckptstudy.measure.cost import Shape
    from ckptstudy.model.build import make_model

    model = make_model(model_type, 300, 32, 2, 4, 64, seed=0)
    built = sum(p.numel() for p in model.parameters())  # tied weights are counted once
    shape = Shape(2, 32, 4, 300, 64, tied_embeddings=tied, learned_positions=positions)
    assert shape.params == built
    assert Shape(2, 32, 4, 300, 64, tied_embeddings=tied).params == built - (64 * 32 if positions else 0)


def test_branches_become_the_yamls_step_list():
    branches = ["main", "step2000-tokens8B", "step1000-tokens4B", "step738020-tokens3094B", "stepX-tokens1B"]
    entry, other = prefetch.yaml_steps(branches, "step{step}-tokens{tokens}B")
    assert entry == "branch_tokens: [[1000, 4], [2000, 8], [738020, 3094]]"
    assert other == ["main", "stepX-tokens1B"]
    # OLMo 2's stage-2 branches are not stage-1 checkpoints: left out, listed apart
    entry, other = prefetch.yaml_steps(
        ["stage1-step0-tokens0B", "stage2-ingredient1-step1000-tokens3B"], "stage1-step{step}-tokens{tokens}B"
    )
    assert entry == "branch_tokens: [[0, 0]]" and other == ["stage2-ingredient1-step1000-tokens3B"]
    assert prefetch.yaml_steps(["checkpoint-10", "checkpoint-0", "main"], "checkpoint-{step}") == (
        "steps: [0, 10]",
        ["main"],
    )


def test_prefetch_branches_prints_the_yaml_entry_of_the_seeds_repo(monkeypatch, capsys):
    asked = []

    def branches(repo):
        asked.append(repo)
        return ["main", "checkpoint-0", "checkpoint-10"]

    monkeypatch.setattr(prefetch, "hub_branches", branches)
    prefetch.main(["model=crfm-gpt2-small", "model.seed=81", "--branches"])
    out = capsys.readouterr().out
    assert asked == ["stanford-crfm/caprica-gpt2-small-x81"]
    assert "steps: [0, 10]" in out and "1 other branches: main" in out
    with pytest.raises(SystemExit) as exit_info:
        prefetch.main(["model=micro", "--branches"])
    assert exit_info.value.code == 2 and "not a hub model" in capsys.readouterr().err

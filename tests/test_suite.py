"""The micro suite: its recipe (spec, steps, hash), the one GPT-NeoX builder, the batch sampler, a tiny build
end to end (deterministic, reused when finished), where a suite lives (the user's cache keyed by the recipe,
$CKPTSTUDY_SUITE_DIR, paths.suite; never under paths.root), building safely (atomic, one builder at a time,
another recipe's build never replaced), adopting a build made elsewhere, and jobs that never train it."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from transformers import GPTNeoXConfig

from ckptstudy import results
from ckptstudy.callbacks import TrajectoryCallback
from ckptstudy.config import compose_config
from ckptstudy.job import run_job
from ckptstudy.model import suite as suite_module
from ckptstudy.model.neox import make_neox, neox_config
from ckptstudy.model.suite import (
    BatchSampler,
    SuiteExistsError,
    adopt_suite,
    build_suite,
    cli,
    ensure_suite,
)
from ckptstudy.model.suite_spec import SuiteSpec, build_problem, is_built, read_manifest, spec_from_config

REPO = Path(__file__).resolve().parents[1]

# The hash of the default micro recipe names its build directory (<cache>/ckptstudy/suites/micro-<hash>). If
# this changes, every machine builds the suite again on the next `make suite`: change it only when the recipe
# change is meant.
MICRO_SPEC_HASH = "7d7d22e89141df19"


def test_micro_recipe_is_unchanged():
    spec = spec_from_config(compose_config().model)
    assert spec.spec_hash() == MICRO_SPEC_HASH


def test_micro_checkpoint_steps():
    steps = spec_from_config(compose_config().model).checkpoint_steps()
    assert steps == [0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, *range(600, 1601, 100)]
    assert len(steps) == 22


def test_spec_module_loads_no_model_code():
    code = (
        "import sys, ckptstudy.model.suite_spec\n"
        "print(sorted(m for m in ('torch', 'transformers', 'datasets', 'tokenizers') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_unknown_suite_key_is_refused_with_the_valid_keys():
    message = r"^model.suite of 'micro'.*layers.*valid keys: name, seed, arch, n_layers"
    with pytest.raises(ValueError, match=message):  # by the config check, before the suite path is resolved
        compose_config(["+model.suite.layers=3"])
    cfg = compose_config(["+model.suite.layers=3"], check=False)
    with pytest.raises(ValueError, match=message):
        spec_from_config(cfg.model)


def test_neox_has_pythias_choices():
    config = neox_config(vocab_size=100, d_model=32, n_layers=2, n_heads=4)
    assert config.use_parallel_residual and not config.tie_word_embeddings
    assert config.rope_parameters["partial_rotary_factor"] == 0.25
    assert config.intermediate_size == 128 and config.max_position_embeddings == 2048
    assert config.bos_token_id == config.eos_token_id == 0
    assert config._attn_implementation == "sdpa"  # eager only as the tests' reference (ckptstudy.reference)
    model = make_neox(100, 32, 2, 4, seed=1)
    assert model.get_input_embeddings().weight.data_ptr() != model.get_output_embeddings().weight.data_ptr()


def test_neox_seed_gives_the_same_weights():
    a, b, c = make_neox(50, 16, 1, 2, seed=3), make_neox(50, 16, 1, 2, seed=3), make_neox(50, 16, 1, 2, seed=4)
    pairs = list(zip(a.state_dict().values(), b.state_dict().values()))
    assert all(torch.equal(x, y) for x, y in pairs)
    assert not torch.equal(a.gpt_neox.embed_in.weight, c.gpt_neox.embed_in.weight)


def test_micro_suite_checkpoints_are_the_neox_builder_models(micro_suite):
    spec = spec_from_config(compose_config().model)
    saved = GPTNeoXConfig.from_pretrained(micro_suite / "step0").to_dict()
    built = neox_config(
        saved["vocab_size"], spec.d_model, spec.n_layers, spec.n_heads, spec.max_position_embeddings, spec.rotary_pct
    ).to_dict()
    differ = {k for k in set(saved) | set(built) if saved.get(k) != built.get(k)}
    assert differ <= {"architectures", "dtype"}, {k: (saved.get(k), built.get(k)) for k in differ}


def small_spec(**overrides) -> SuiteSpec:
    values = dict(
        name="tiny",
        seed=0,
        arch="gpt_neox",
        d_ff=None,
        rotary_pct=0.25,
        lr=2e-3,
        weight_decay=0.01,
        n_layers=1,
        d_model=16,
        n_heads=2,
        vocab_size=300,
        max_position_embeddings=32,
        text_glob="json/*.py",
        max_chars=30_000,
        seq_len=32,
        batch_size=4,
        span_min=4,
        span_max=8,
        phases=[[3, 0.0], [6, 1.0], [8, 0.5, 1.0]],
        warmup_steps=2,
        log_until=4,
        every=4,
    )
    return SuiteSpec(**{**values, **overrides})


def test_batch_sampler_is_seeded_and_follows_the_curriculum():
    spec = small_spec()
    stream = torch.arange(1000, 6000)  # text windows are runs of consecutive values, random ids are < 300

    def is_window(row):
        return bool(row[0] >= 1000) and torch.equal(row, torch.arange(int(row[0]), int(row[0]) + len(row)))

    def period(row):
        return next(p for p in range(spec.span_min, spec.span_max + 1) if torch.equal(row[p:], row[:-p]))

    batches = [[BatchSampler(spec, stream, 300, 2).batch(s) for s in range(8)] for _ in range(2)]
    assert all(torch.equal(x, y) for x, y in zip(*batches))
    assert all(is_window(row) for row in batches[0][0])  # phase 1: text only
    for row in batches[0][4]:  # phase 2: repeated random spans
        assert bool((row >= 2).all() and (row < 300).all()) and is_window(row[: period(row)]) is False
    for row in torch.cat(batches[0][6:8]):  # phase 3: text windows, or repeated natural-text spans
        assert is_window(row) or is_window(row[: period(row)])


@pytest.fixture(scope="module")
def tiny_suite(tmp_path_factory) -> Path:
    """A finished build of `small_spec()` (seconds); tests copy it before changing anything."""
    return build_suite(small_spec(), tmp_path_factory.mktemp("tiny") / "tiny")


def test_tiny_build_is_deterministic_and_reused(tiny_suite, tmp_path, monkeypatch):
    spec = small_spec()
    assert spec.checkpoint_steps() == [0, 1, 2, 4, 8]
    a, b = tiny_suite, build_suite(spec, tmp_path / "b")
    manifest = read_manifest(a)
    assert manifest["steps"] == [0, 1, 2, 4, 8] and manifest["spec_hash"] == spec.spec_hash()
    for step in manifest["steps"]:
        weights = [(d / f"step{step}" / "model.safetensors").read_bytes() for d in (a, b)]
        assert weights[0] == weights[1], step
    assert (a / "step0" / "model.safetensors").read_bytes() != (a / "step8" / "model.safetensors").read_bytes()
    tokenizer = json.loads((a / "step8" / "tokenizer.json").read_text())
    assert tokenizer["added_tokens"][0]["content"] == "<|endoftext|>" and tokenizer["added_tokens"][0]["id"] == 0

    # a finished build of the same spec is reused; another spec is not
    monkeypatch.setattr("ckptstudy.model.suite.train_tokenizer", lambda *a: pytest.fail("rebuilt a finished suite"))
    assert build_suite(spec, a) == a and is_built(spec, a)
    assert not is_built(small_spec(seed=1), a)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".b.lock", "b"]  # no staging directory left


def test_ensure_suite_ignores_hub_models():
    assert ensure_suite(compose_config(["model=pythia-70m"]).model) is None


# --- where a suite lives --------------------------------------------------------------------------------


@pytest.fixture
def cache_home(tmp_path, monkeypatch) -> Path:
    """An empty user cache ($XDG_CACHE_HOME) and no $CKPTSTUDY_SUITE_DIR."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv("CKPTSTUDY_SUITE_DIR", raising=False)
    return tmp_path / "xdg"


def test_suite_lives_in_the_user_cache_keyed_by_the_recipe_not_under_paths_root(cache_home, tmp_path):
    cfg = compose_config()
    expected = cache_home / "ckptstudy" / "suites" / f"micro-{MICRO_SPEC_HASH}"
    assert cfg.paths.suite == str(expected) and cfg.model.path == f"{expected}/step{{step}}"
    moved = compose_config([f"paths.root={tmp_path / 'elsewhere'}"])
    assert moved.paths.suite == str(expected) and moved.paths.root == str(tmp_path / "elsewhere")
    other = compose_config(["model.suite.seed=1"])  # any value of the recipe: another build, another directory
    assert other.paths.suite == str(expected.parent / f"micro-{spec_from_config(other.model).spec_hash()}")
    assert other.paths.suite != cfg.paths.suite
    assert compose_config(["model=pythia-70m"]).paths.suite is None  # not a suite model


def test_relative_xdg_cache_home_is_ignored(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/cache")
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("CKPTSTUDY_SUITE_DIR", raising=False)
    expected = tmp_path / ".cache" / "ckptstudy" / "suites" / f"micro-{MICRO_SPEC_HASH}"
    assert compose_config().paths.suite == str(expected)


def test_env_var_and_config_key_move_the_suite(cache_home, tmp_path, monkeypatch):
    monkeypatch.setenv("CKPTSTUDY_SUITE_DIR", str(tmp_path / "shared" / "micro"))
    cfg = compose_config()
    assert cfg.paths.suite == str(tmp_path / "shared" / "micro")
    assert cfg.model.path == f"{tmp_path / 'shared' / 'micro'}/step{{step}}"
    assert compose_config([f"paths.suite={tmp_path / 'mine'}"]).model.path == f"{tmp_path / 'mine'}/step{{step}}"


# --- building safely --------------------------------------------------------------------------------------

BUILD_CHILD = r"""
import json, sys, time
from pathlib import Path
args = json.loads(sys.argv[1])
from ckptstudy.model import suite
from ckptstudy.model.suite_spec import SuiteSpec
real_save = suite.save_checkpoint

def save(model, tokenizer, directory):
    real_save(model, tokenizer, directory)
    if directory.name == args["block_after"]:
        Path(args["marker"]).write_text(str(directory))
        time.sleep(600)

suite.save_checkpoint = save
suite.build_suite(SuiteSpec(**args["spec"]), args["out"])
"""


def wait_for(condition, what: str, timeout: float = 180) -> None:
    deadline = time.time() + timeout
    while not condition():
        if time.time() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.1)


def test_killed_build_leaves_nothing_that_looks_built_and_the_next_build_cleans_up(tmp_path):
    out, marker = tmp_path / "suites" / "tiny", tmp_path / "saved-step2"
    args = {"spec": asdict(small_spec()), "out": str(out), "marker": str(marker), "block_after": "step2"}
    child = subprocess.Popen([sys.executable, "-c", BUILD_CHILD, json.dumps(args)], cwd=REPO, stderr=subprocess.DEVNULL)
    try:
        wait_for(marker.exists, "the build to save step 2")
        staging = Path(marker.read_text()).parent
        assert staging.parent == out.parent and staging.name.startswith(".tiny.building-")
        assert (staging / "step2" / "config.json").is_file()
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=60)
    assert child.returncode == -signal.SIGKILL
    assert not out.exists() and not is_built(small_spec(), out)
    assert build_problem(small_spec(), out) == f"{out} does not exist"
    build_suite(small_spec(), out)
    assert is_built(small_spec(), out)
    assert sorted(p.name for p in out.parent.iterdir()) == [".tiny.lock", "tiny"]  # the killed staging is gone


def test_two_builders_take_turns_and_train_once(tmp_path, monkeypatch, caplog):
    # threads with their own lock objects contend like processes do (flock is per open file)
    out, spec = tmp_path / "suites" / "tiny", small_spec()
    real_train, trained, go = suite_module._train, [], threading.Event()

    def held_train(spec, directory):
        trained.append(threading.current_thread().name)
        assert go.wait(120)
        real_train(spec, directory)

    monkeypatch.setattr(suite_module, "_train", held_train)
    results = {}

    def builder(name):
        results[name] = build_suite(spec, out)

    with caplog.at_level(logging.INFO, logger="ckptstudy.model.suite"):
        first = threading.Thread(target=builder, args=("first",), name="first")
        first.start()
        wait_for(lambda: trained == ["first"], "the first builder to start training")
        second = threading.Thread(target=builder, args=("second",), name="second")
        second.start()
        wait_for(lambda: "waiting for it" in caplog.text, "the second builder to wait for the lock")
        go.set()
        first.join(120), second.join(120)
    assert trained == ["first"] and results == {"first": out, "second": out}  # trained once
    assert "by another builder meanwhile" in caplog.text and is_built(spec, out)


def tree(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def test_another_recipes_build_or_stray_files_are_never_replaced_without_force(tiny_suite, tmp_path):
    spec, other = small_spec(), small_spec(seed=1)
    target = shutil.copytree(tiny_suite, tmp_path / "target")
    before = tree(target)
    with pytest.raises(SuiteExistsError, match=rf"holds a build of another recipe .*{spec.spec_hash()}.*--force"):
        build_suite(other, target)
    stray = tmp_path / "stray"
    stray.mkdir()
    (stray / "notes.txt").write_text("mine")
    with pytest.raises(SuiteExistsError, match=r"has no suite.json"):
        build_suite(spec, stray)
    assert tree(target) == before and (stray / "notes.txt").read_text() == "mine"
    build_suite(other, target, force=True)
    assert is_built(other, target) and not is_built(spec, target)


def test_an_unfinished_build_of_the_recipe_is_rebuilt(tiny_suite, tmp_path):
    spec = small_spec()
    target = shutil.copytree(tiny_suite, tmp_path / "target")
    shutil.rmtree(target / "step4")
    assert build_problem(spec, target) == f"{target} lacks the checkpoints of steps [4]"
    build_suite(spec, target)
    assert is_built(spec, target) and tree(target / "step4") == tree(tiny_suite / "step4")


def test_adopting_links_a_finished_build_and_never_writes_into_it(tiny_suite, tmp_path):
    spec = small_spec()
    source = shutil.copytree(tiny_suite, tmp_path / "elsewhere" / "tiny")
    before = tree(source)
    cached = tmp_path / "cache" / f"tiny-{spec.spec_hash()}"
    assert adopt_suite(spec, source, cached) == cached
    assert cached.is_symlink() and cached.resolve() == source and is_built(spec, cached)
    build_suite(spec, cached, force=True)  # a rebuild replaces the link, not what it points to
    assert not cached.is_symlink() and is_built(spec, cached) and tree(source) == before
    with pytest.raises(ValueError, match=r"cannot adopt .*lacks the checkpoints of steps \[8\]"):
        shutil.rmtree(source / "step8")
        adopt_suite(spec, source, tmp_path / "cache" / "other")
    assert not (tmp_path / "cache" / "other").exists()


def suite_model(spec: SuiteSpec, directory: Path):
    """A suite model config reading `directory` (as model=micro with paths.suite=directory)."""
    return OmegaConf.create(
        {"name": spec.name, "checkpoints": "suite", "path": f"{directory}/step{{step}}", "suite": asdict(spec)}
    )


def test_ensure_suite_adopts_a_build_left_under_outputs_by_earlier_versions(tiny_suite, tmp_path, monkeypatch):
    spec = small_spec()
    legacy_root = tmp_path / "outputs"
    shutil.copytree(tiny_suite, legacy_root / "suite" / "tiny")
    cached = tmp_path / "cache" / f"tiny-{spec.spec_hash()}"
    monkeypatch.setattr(suite_module, "_train", lambda *a: pytest.fail("trained instead of adopting"))
    assert ensure_suite(suite_model(spec, cached), legacy_root=legacy_root) == cached
    assert cached.resolve() == (legacy_root / "suite" / "tiny").resolve()


def tiny_overrides(directory: Path | None) -> list[str]:
    """Overrides that make model=micro the tiny recipe, read from `directory` (None: the default directory)."""
    values = asdict(small_spec())
    values["phases"] = json.dumps(values["phases"], separators=(",", ":"))
    values["text_glob"] = f"'{values['text_glob']}'"
    where = [f"paths.suite={directory}"] if directory is not None else []
    return [*where, *(f"model.suite.{k}={'null' if v is None else v}" for k, v in values.items())]


def test_console_script_where_build_and_already_built(tmp_path, capsys):
    directory = tmp_path / "suite"
    with pytest.raises(SystemExit) as exit_info:
        cli([*tiny_overrides(directory), "--where"])
    assert exit_info.value.code == 1
    assert f"{directory}  (not built: {directory} does not exist)" in capsys.readouterr().out
    cli(tiny_overrides(directory))
    assert f"micro suite 'tiny' ready at {directory} in" in capsys.readouterr().out
    cli(tiny_overrides(directory))
    assert f"micro suite 'tiny' already built at {directory} (5 checkpoints)" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:
        cli([*tiny_overrides(directory), "--where"])
    assert exit_info.value.code == 0 and capsys.readouterr().out.strip() == str(directory)


def test_console_script_adopts_into_the_cache_and_never_writes_beside_a_built_suite(
    tiny_suite, tmp_path, cache_home, capsys
):
    shared = shutil.copytree(tiny_suite, tmp_path / "shared" / "tiny")
    cli([*tiny_overrides(None), "--adopt", str(shared)])
    cached = cache_home / "ckptstudy" / "suites" / f"tiny-{small_spec().spec_hash()}"
    assert f"{cached} -> {shared} (adopted, not copied)" in capsys.readouterr().out
    assert cached.is_symlink() and cached.resolve() == shared
    # a suite already built where the config points (e.g. $CKPTSTUDY_SUITE_DIR = another clone's build): not a
    # byte is written beside it, whatever is asked
    listing = sorted(p.name for p in shared.parent.iterdir())
    before = tree(shared)
    cli(tiny_overrides(shared))
    cli([*tiny_overrides(shared), "--adopt", str(shared)])
    assert ensure_suite(suite_model(small_spec(), shared), legacy_root=tmp_path) == shared
    assert sorted(p.name for p in shared.parent.iterdir()) == listing == ["tiny"] and tree(shared) == before


def test_console_script_builds_nothing_for_a_hub_model(capsys, monkeypatch):
    no_training(monkeypatch)
    cli(["model=pythia-70m"])
    out = capsys.readouterr().out
    assert "model=pythia-70m is not a suite model (model.checkpoints=pythia): nothing to build" in out
    with pytest.raises(SystemExit, match="error: model=pythia-70m is not a suite model"):
        cli(["model=pythia-70m", "--where"])


def test_console_script_refuses_to_adopt_a_partial_copy(tiny_suite, tmp_path):
    partial = shutil.copytree(tiny_suite, tmp_path / "partial")
    shutil.rmtree(partial / "step1")
    with pytest.raises(SystemExit, match=r"error: cannot adopt .*lacks the checkpoints of steps \[1\]"):
        cli([*tiny_overrides(tmp_path / "suite"), "--adopt", str(partial)])


# --- a job never trains the suite -------------------------------------------------------------------------


def no_training(monkeypatch) -> None:
    monkeypatch.setattr(suite_module, "_train", lambda *a: pytest.fail("a job trained the suite"))
    monkeypatch.setattr(suite_module, "train_tokenizer", lambda *a: pytest.fail("a job trained the suite"))


def test_job_without_a_built_suite_fails_fast_naming_the_path_and_make_suite(tmp_path, monkeypatch):
    no_training(monkeypatch)
    missing = tmp_path / "no-suite"
    overrides = [f"paths.root={tmp_path / 'out'}", f"paths.suite={missing}", "experiment=smoke", "logger=none"]
    record = run_job(compose_config([*overrides, "step=2"]))
    assert record.outcome.status == "failed" and record.outcome.error["type"] == "CheckpointError"
    message = record.outcome.error["message"]
    assert f"no checkpoint directory {missing / 'step2'}" in message and "`make suite`" in message, message
    assert "not built there" in message and record.provenance.weights_sha256 is None
    assert results.read_record(tmp_path / "out/smoke/records/micro/step2.json").outcome.status == "failed"
    assert not missing.exists()


def test_multirun_start_warns_once_and_builds_nothing(tmp_path, monkeypatch, caplog):
    no_training(monkeypatch)
    missing = tmp_path / "no-suite"
    with caplog.at_level(logging.WARNING, logger="ckptstudy.callbacks"):
        TrajectoryCallback().on_multirun_start(compose_config([f"paths.suite={missing}"], return_hydra_config=True))
    assert len(caplog.records) == 1 and f"{missing} does not exist" in caplog.text and "`make suite`" in caplog.text
    assert not missing.exists()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="ckptstudy.callbacks"):
        TrajectoryCallback().on_multirun_start(compose_config(["model=pythia-70m"], return_hydra_config=True))
    assert caplog.records == []


def test_suite_tests_are_marked_so_test_fast_runs_without_a_suite(request):
    import conftest

    class Item:
        def __init__(self, fixtures):
            self.fixturenames, self.markers = fixtures, []

        def add_marker(self, marker):
            self.markers.append(marker.name)

    items = [Item(["tmp_path", "micro_suite"]), Item(["tmp_path"])]
    conftest.pytest_collection_modifyitems(request.config, items)
    assert [i.markers for i in items] == [["suite"], []]
    # and in this session: every collected test whose fixtures reach the suite carries the marker
    using = [i for i in request.session.items if "micro_suite" in i.fixturenames]
    assert all(i.get_closest_marker("suite") for i in using)

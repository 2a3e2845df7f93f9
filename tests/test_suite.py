"""The micro suite: its recipe (spec, steps, hash), the one GPT-NeoX builder, the batch sampler, and a tiny
build end to end (deterministic, reused when finished)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from transformers import GPTNeoXConfig

from ckptstudy.config import compose_config
from ckptstudy.model.neox import make_neox, neox_config
from ckptstudy.model.suite import BatchSampler, build_suite, ensure_suite, is_built, read_manifest
from ckptstudy.model.suite_spec import SuiteSpec, spec_from_config

# The hash of the default micro recipe names the build under outputs/suite/micro. If this changes, every
# existing build is retrained on next use: change it only when the recipe change is meant.
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
    cfg = compose_config(["+model.suite.layers=3"])
    with pytest.raises(ValueError, match=r"model.suite of 'micro'.*layers.*valid keys: name, seed, n_layers"):
        spec_from_config(cfg.model)


def test_neox_has_pythias_choices():
    config = neox_config(vocab_size=100, d_model=32, n_layers=2, n_heads=4)
    assert config.use_parallel_residual and not config.tie_word_embeddings
    assert config.rope_parameters["partial_rotary_factor"] == 0.25
    assert config.intermediate_size == 128 and config.max_position_embeddings == 2048
    assert config.bos_token_id == config.eos_token_id == 0
    assert config._attn_implementation == "eager"
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


def test_tiny_build_is_deterministic_and_reused(tmp_path, monkeypatch):
    spec = small_spec()
    assert spec.checkpoint_steps() == [0, 1, 2, 4, 8]
    a, b = build_suite(spec, tmp_path / "a"), build_suite(spec, tmp_path / "b")
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


def test_ensure_suite_ignores_hub_models():
    assert ensure_suite(compose_config(["model=pythia-70m"]).model) is None

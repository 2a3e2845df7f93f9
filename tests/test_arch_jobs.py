"""A job runs every metric family on a tiny random model of each architecture, served from a fake Hugging Face cache
under its suite's own branch name (OLMo 2: stage1-step<N>-tokens<M>B, OLMo: step<N>-tokens<M>B, the CRFM GPT-2 runs:
checkpoint-<N>, a PolyPythia seed: step<N> of pythia-<size>-seed<k>): the suite yaml names the checkpoint, the
adapter reads the model, and the record is complete (every NaN with its reason)."""

from __future__ import annotations

import math

import pytest

from ckptstudy.config import compose_config
from ckptstudy.job import run_job
from ckptstudy.model.build import make_model
from test_prefetch import hub_cache, offline  # noqa: F401 (fixtures)

# model type -> (model yaml, step, the branch name the yaml gives that step, overrides naming the fake repo)
CASES = {
    "olmo2": ("olmo-2-1b", 300, "stage1-step300-tokens1B", ["model.repo={repo}"]),
    "olmo": ("olmo-1b", 1000, "step1000-tokens4B", ["model.repo={repo}"]),
    "gpt2": ("crfm-gpt2-small", 1000, "checkpoint-1000", ["model.seed=49", "model.repo_by_seed={{49:{repo}}}"]),
    "gpt_neox": ("pythia-160m", 1000, "step1000", ["model.seed=1", "model.seed_repo={repo}"]),
}
FAMILIES = ["icl", "lowinfo", "perturb", "rep", "sink"]


def serve(cache, repo: str, branch: str, model, tokenizer) -> None:
    """`model` and `tokenizer` in the HF cache layout, as revision `branch` of `repo`."""
    folder = cache / f"models--{repo.replace('/', '--')}"
    commit = "a" * 40
    model.save_pretrained(folder / "snapshots" / commit)
    tokenizer.save_pretrained(folder / "snapshots" / commit)
    (folder / "refs").mkdir(parents=True, exist_ok=True)
    (folder / "refs" / branch).write_text(commit)


@pytest.mark.long  # four jobs (10-80 s each on 2 busy cores)
@pytest.mark.parametrize("model_type", list(CASES))
def test_a_job_runs_every_family_on_each_architecture(model_type, hub_cache, offline, tiny_tokenizer, tmp_path):  # noqa: F811
    name, step, branch, naming = CASES[model_type]
    repo = f"FakeOrg/tiny-{model_type}"
    options = {"rotary_pct": 1.0} if model_type.startswith("olmo") else {}
    model = make_model(model_type, len(tiny_tokenizer), 32, 2, 4, 512, seed=0, **options)
    serve(hub_cache, repo, branch, model, tiny_tokenizer)
    shape = ["model.n_layers=2", "model.d_model=32", "model.n_heads=4", f"model.vocab_size={len(tiny_tokenizer)}"]
    cfg = compose_config(
        [
            f"model={name}",
            f"step={step}",
            "experiment=smoke",
            "logger=none",
            f"paths.root={tmp_path}",
            *shape,
            "model.context=512",
            "model.d_ff=null",
            *(o.format(repo=repo) for o in naming),
        ]
    )
    record = run_job(cfg)
    assert record.outcome.status == "ok", record.outcome.error
    assert record.identity.revision == f"{repo}@{branch}"
    seed = cfg.model.seed
    assert record.model == (name if seed in (None, 0) else f"{name}@seed{seed}") and record.identity.seed == seed
    metrics = record.scalars.metrics
    assert sorted({key.split("/")[0] for key in metrics}) == FAMILIES
    nan = [key for key, value in metrics.items() if isinstance(value, float) and math.isnan(value)]
    assert set(nan) <= set(record.scalars.nan_reasons)  # every NaN carries its reason
    assert len(nan) < len(metrics) / 3
    assert math.isfinite(metrics["icl/induction_max"]) and math.isfinite(metrics["rep/loop_fraction"])
    if model_type == "olmo2":  # post-norm: no per-neuron write, and the record says why
        assert "post-norm" in record.scalars.nan_reasons["sink/neuron_share_max"]
    else:
        assert math.isfinite(metrics["sink/neuron_share_max"])

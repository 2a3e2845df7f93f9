"""Precision (`ckptstudy.measure.precision`): a family computes in the dtype it declares, the model's own dtypes come
back bit for bit, and the tolerance check says what it claims. The perturb case: in half precision a perturbation
of 1e-4 ||h|| vanishes (a model linear at small eps reads as non-linear); run as the job runs it, in float32, it
gives the float32 answer."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from omegaconf import OmegaConf

from ckptstudy.config import compose_config
from ckptstudy.job import measure_families
from ckptstudy.measure.precision import Tolerance, compare, computing_in, model_dtype, required_dtype, upcast_bytes
from ckptstudy.metrics import perturb
from ckptstudy.tools.gpu_check import family_tolerances
from configured import family_params
from conftest import tiny_neox
from test_perturb import toy_context, zero_qk_model

CHECKS = ("perturb/check_slope_small_eps", "perturb/check_scale_invariance", "perturb/check_linear_range_max_eps")


def perturb_config() -> OmegaConf:
    return OmegaConf.create({"perturb": {"_target_": "ckptstudy.metrics.perturb.measure", **family_params("perturb")}})


def weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: t.detach().clone() for name, t in [*model.named_parameters(), *model.named_buffers()]}


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_perturb_on_a_half_precision_model_gives_the_float32_answer(dtype):
    """A model linear at small eps (uniform attention): slope 1, scale invariance ~0, linear over the whole grid."""
    params = family_params("perturb", position=8, draws=2, n_prompts=1, induction_prompts=2, induction_positions=2)
    direct = perturb.measure(toy_context(zero_qk_model().to(dtype)), **params).scalars
    # the opposite case, so the test can fail: the family run in half precision reads the linear model as non-linear
    assert abs(direct["perturb/check_slope_l1"] - 1) > 0.3 and direct["perturb/check_scale_invariance"] > 0.1
    assert math.isnan(direct["perturb/check_linear_range_max_eps"])

    model = zero_qk_model().to(dtype)
    before, used = weights(model), {}
    config = OmegaConf.create({"perturb": {"_target_": "ckptstudy.metrics.perturb.measure", **params}})
    result, errors = measure_families(toy_context(model), config, used)
    assert errors == {} and used == {"perturb": "float32"}
    reference = perturb.measure(toy_context(zero_qk_model()), **params).scalars  # float32 throughout
    got = result.scalars
    assert got["perturb/check_slope_small_eps"] == pytest.approx(1.0, abs=0.02)
    assert got["perturb/check_scale_invariance"] < 0.01
    assert (
        got["perturb/check_linear_range_max_eps"] == pytest.approx(0.1) and got["perturb/check_linear_range_censored"]
    )
    assert compare(got, reference, perturb.TOLERANCE).ok
    after = weights(model)
    assert all(after[k].dtype == v.dtype and torch.equal(after[k], v) for k, v in before.items())  # bit for bit


def test_computing_in_casts_everything_and_restores_each_tensors_own_dtype():
    model = tiny_neox().to(torch.bfloat16)
    rotary = model.gpt_neox.rotary_emb
    rotary.inv_freq = rotary.inv_freq.float()  # as from_pretrained(dtype=bfloat16) leaves it: a float32 buffer
    before = weights(model)
    with computing_in(model, torch.float32):
        assert {t.dtype for t in [*model.parameters(), *model.buffers()] if t.is_floating_point()} == {torch.float32}
        assert model_dtype(model) == torch.float32
    after = weights(model)
    assert after["gpt_neox.rotary_emb.inv_freq"].dtype == torch.float32
    assert all(after[k].dtype == v.dtype and torch.equal(after[k], v) for k, v in before.items())
    with pytest.raises(RuntimeError, match="boom"), computing_in(model, torch.float32):
        raise RuntimeError("boom")
    assert model_dtype(model) == torch.bfloat16  # restored on error too


def test_required_dtype_widens_only():
    declared = SimpleNamespace(__name__="fam", COMPUTE_DTYPE="float32")
    assert required_dtype(declared, torch.bfloat16) == torch.float32
    assert required_dtype(declared, torch.float16) == torch.float32
    assert required_dtype(declared, torch.float64) == torch.float64  # never narrower than loaded
    assert required_dtype(SimpleNamespace(__name__="plain"), torch.bfloat16) == torch.bfloat16
    with pytest.raises(ValueError, match=r"fam.COMPUTE_DTYPE='float8'.*float32"):
        required_dtype(SimpleNamespace(__name__="fam", COMPUTE_DTYPE="float8"), torch.float32)
    assert upcast_bytes(1000, 2, 4) == 2000 and upcast_bytes(1000, 4, 4) == 0


def test_compare_within_and_outside_the_tolerance():
    tol = Tolerance(rtol=0.1, atol=0.01, exclude=("layer",))
    ref = {"a": 1.0, "b": 0.0, "c": math.nan, "x/layer": 3.0}
    ok = compare({"a": 1.09, "b": 0.009, "c": math.nan, "x/layer": 0.0}, ref, tol)
    assert ok.ok and ok.skipped == ["x/layer"] and ok.checked == 3
    assert ok.max_abs == pytest.approx(0.09) and ok.max_rel == math.inf  # relative to 0 (b)
    bad = compare({"a": 1.2, "b": 0.0, "c": 1.0, "x/layer": 3.0}, ref, tol)
    assert set(bad.failed) == {"a", "c"} and not bad.ok  # off by 0.2 > 0.01 + 0.1; a number where NaN was
    assert set(compare({"a": 1.0}, ref, tol).failed) == {"b", "c"}  # missing keys fail


def test_every_family_states_a_tolerance_and_perturb_computes_in_float32():
    tolerances = family_tolerances(compose_config())
    assert set(tolerances) == {"icl_heads", "repetition", "low_info", "sink", "perturb"}
    assert all(t.rtol > 0 and t.atol >= 0 for t in tolerances.values())
    assert perturb.COMPUTE_DTYPE == "float32"


def test_portable_lse_takes_the_non_cpu_route_on_cpu(monkeypatch):
    from ckptstudy.measure import attention_stats

    calls = []
    blockwise = attention_stats.blockwise_logsumexp
    monkeypatch.setattr(attention_stats, "blockwise_logsumexp", lambda *a, **k: calls.append(1) or blockwise(*a, **k))
    gen = torch.Generator().manual_seed(0)
    q, k = torch.randn(2, 3, 40, 8, generator=gen), torch.randn(2, 3, 40, 8, generator=gen)
    out, lse = attention_stats.attention_with_lse(q, k, k, 0.3)
    assert calls == []  # CPU: the fused kernel's own logsumexp
    with attention_stats.portable_lse():
        out_p, lse_p = attention_stats.attention_with_lse(q, k, k, 0.3)
    assert calls == [1]  # the route CUDA takes: SDPA + blockwise_logsumexp
    torch.testing.assert_close(lse_p, lse, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out_p, out, atol=1e-5, rtol=1e-5)


def test_a_bfloat16_job_records_the_dtype_each_family_computed_in(micro_suite, tmp_path):
    from ckptstudy.job import run_job

    overrides = ["experiment=smoke", "metrics=[low_info,perturb]", "dtype=bfloat16", "logger=none"]
    where = [f"paths.root={tmp_path}", f"model.path='{micro_suite}/step{{step}}'"]
    record = run_job(compose_config([*overrides, *where]))
    assert record.outcome.status == "ok", record.outcome.error
    assert record.provenance.family_dtypes == {"low_info": "bfloat16", "perturb": "float32"}
    assert record.scalars.metrics["perturb/check_slope_small_eps"] == pytest.approx(1.0, abs=0.05)  # linear at 1e-4

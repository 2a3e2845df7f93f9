"""Attention sinks and the repeated-token phenomenon (`sink/`) on hand-built tensors and small models."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from ckptstudy.measure.residual import clamp_mlp, tap_mlp
from ckptstudy.metrics.sink import (
    convergence,
    convergence_summary,
    diverged,
    divergence_ks,
    first_last_states,
    first_norm_ratio,
    first_position_mass,
    first_position_z,
    frequent_tokens,
    k_at_half,
    measure,
    neuron_moments,
    outlier_neurons,
    patch_plan,
    single_repeat_ids,
)
from ckptstudy.params import check_family
from ckptstudy.stats.bootstrap import statistic
from configured import family_params, job_context
from conftest import tiny_neox


# ------------------------------------------------------------------------------------- sink score
def test_sink_mass_counts_queries_after_the_first():
    s = 6
    on_first = torch.zeros(2, 1, s, s)
    on_first[..., 0] = 1
    assert first_position_mass(on_first).tolist() == [2 * (s - 1)]
    uniform = torch.tril(torch.ones(s, s)) / torch.arange(1, s + 1)[:, None]
    expected = sum(1 / (q + 1) for q in range(1, s))
    assert first_position_mass(uniform[None, None]).tolist() == pytest.approx([expected])


def test_first_norm_ratio_is_against_the_median_of_the_rest():
    hidden = torch.zeros(1, 5, 3)
    hidden[0, :, 0] = torch.tensor([12.0, 1.0, 2.0, 3.0, 100.0])  # median of the rest = (2 + 3) / 2
    assert first_norm_ratio(hidden).tolist() == pytest.approx([12 / 2.5])


# ---------------------------------------------------------------------------------- convergence
def test_convergence_of_hand_built_states():
    first = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    last = torch.tensor([[3.0, 0.0], [0.0, 2.0]])  # same direction x3; orthogonal x2
    cos, ratio = convergence(first, last)
    assert cos.tolist() == pytest.approx([1.0, 0.0])
    assert ratio.tolist() == pytest.approx([3.0, 2.0])


def test_convergence_summary_layer_and_share():
    cos = torch.tensor([[0.2, 0.95, 0.5], [0.4, 0.85, 0.99], [0.0, 0.96, 0.1]])  # [tokens, layers]
    summary = convergence_summary(cos, 0.9)
    assert summary["cos_max"] == pytest.approx((0.95 + 0.85 + 0.96) / 3)
    assert summary["layer"] == 1  # layer 1 mean 0.92 >= 0.9
    assert summary["share"] == pytest.approx(1.0)  # every token reaches 0.9 at some layer
    assert convergence_summary(cos, 0.97)["layer"] == -1
    assert convergence_summary(cos, 0.97)["share"] == pytest.approx(1 / 3)


def test_single_repeat_probe_and_frequent_tokens():
    corpus = torch.tensor([5] * 9 + [7] * 8 + [1] * 20 + [3] * 2 + [9])
    tokens = frequent_tokens(corpus, vocab=12, special=[1], top=3, m=10, seed=0)
    assert sorted(tokens.tolist()) == [3, 5, 7]  # 1 is special; top 3 of the rest; 9 is 4th
    assert frequent_tokens(corpus, 12, [1], 3, 2, seed=0).tolist() == frequent_tokens(corpus, 12, [1], 3, 2, 0).tolist()
    ids = single_repeat_ids(torch.tensor([5, 7]), 3, bos_id=0)
    assert ids.tolist() == [[0, 5, 5, 5], [0, 7, 7, 7]]
    assert single_repeat_ids(torch.tensor([5]), 2).tolist() == [[5, 5]]


def test_without_bos_a_rotary_model_cannot_tell_repeated_positions_apart():
    """Why single_repeat starts with BOS: GPT-NeoX has no absolute positions, so a one-token sequence
    gives the same hidden state at every position (cos 1 by construction, at any training step)."""
    model = tiny_neox()
    tokens = torch.tensor([17, 42])
    first, last = first_last_states(model, single_repeat_ids(tokens, 20), batch_size=2)
    assert convergence(first, last)[0].min() > 1 - 1e-5
    first, last = first_last_states(model, single_repeat_ids(tokens, 20, bos_id=0), batch_size=2)
    assert convergence(first, last)[0].max() < 0.99


# ------------------------------------------------------------------------------------ divergence
def test_divergence_and_its_half_point():
    cont = torch.tensor([[4, 4, 4], [4, 5, 4], [6, 6, 6]])
    assert diverged(cont, torch.tensor([4, 4, 6])).tolist() == [False, True, False]
    assert divergence_ks([8, 16, 200, 500], room=95) == [8, 16, 95]
    k50, reason = k_at_half([8, 16, 32, 64], torch.tensor([0.0, 0.25, 0.75, 1.0]))
    assert k50 == pytest.approx(math.sqrt(16 * 32)) and reason == ""  # halfway, in log K
    k50, reason = k_at_half([8, 16], torch.tensor([0.5, 1.0]))
    assert math.isnan(k50) and "smallest K=8" in reason
    k50, reason = k_at_half([8, 16], torch.tensor([0.0, 0.4]))
    assert math.isnan(k50) and "every K up to 16" in reason


# ---------------------------------------------------------------------------------- sink neurons
def test_outlier_neurons_on_constructed_activations():
    torch.manual_seed(0)
    act = torch.randn(4, 50, 10)
    act[:, 0, 3] = 50.0  # fires only at the first position
    act[:, 0, 5] = -40.0  # silenced only at the first position
    moments = neuron_moments(act[:2]) + neuron_moments(act[2:])  # sums add over chunks
    z, mean_other = first_position_z(moments)
    other = act[:, 1:].reshape(-1, 10).double()
    want = (act[:, 0].double().mean(0) - other.mean(0)) / other.std(0, correction=0)
    assert torch.allclose(z, want) and torch.allclose(mean_other, other.mean(0))
    top, count = outlier_neurons(z[None], threshold=6.0, max_neurons=16)
    assert count == 2 and top[:, :2].tolist() == [[0, 3], [0, 5]]
    assert top[:, 2].tolist() == pytest.approx([float(z[3]), float(z[5])])
    top, count = outlier_neurons(z[None], threshold=6.0, max_neurons=1)
    assert count == 2 and top[:, 1].tolist() == [3]
    assert outlier_neurons(z[None], threshold=1e6, max_neurons=4)[1] == 0


def test_the_patch_changes_only_the_clamped_neurons_at_non_first_positions():
    model = tiny_neox()
    ids = torch.randint(1, 500, (2, 9))
    top = torch.tensor([[0.0, 3.0, 9.0], [0.0, 7.0, -8.0]])
    mean_other = torch.zeros(2, 128, dtype=torch.float64)
    mean_other[0, 3], mean_other[0, 7] = 0.5, -0.25
    plan = patch_plan(top, mean_other)

    def activations(patch: dict) -> list[torch.Tensor]:
        seen: list = [None, None]
        keep = lambda layer, a: seen.__setitem__(layer, a.clone())  # noqa: E731
        with clamp_mlp(model, patch), tap_mlp(model, keep), torch.no_grad():
            model(input_ids=ids)
        return seen

    clean, patched = activations({}), activations(plan)
    changed = (clean[0] != patched[0]).nonzero()[:, 1:].unique(dim=0)  # (position, neuron) pairs
    assert set(map(tuple, changed.tolist())) <= {(p, n) for p in range(1, 9) for n in (3, 7)}
    assert (patched[0][:, 1:, 3] == 0.5).all() and (patched[0][:, 1:, 7] == -0.25).all()
    assert torch.equal(clean[0][:, 0], patched[0][:, 0])  # the first position is left free
    assert torch.equal(clean[1][:, 0], patched[1][:, 0])  # and stays untouched downstream (causal)
    assert not torch.equal(clean[1][:, 1:], patched[1][:, 1:])  # later layers see the patch


# ------------------------------------------------------------------------------------------ measure
TOY = family_params("sink", repeat_k=30, n_tokens=4, divergence_k=[4, 8], divergence_tokens=3, new_tokens=4)


def toy_context():
    gen = torch.Generator().manual_seed(0)
    probes = SimpleNamespace(
        long_text=torch.randint(1, 500, (4, 40), generator=gen), natural=torch.randint(1, 500, (8, 16), generator=gen)
    )
    tokenizer = SimpleNamespace(bos_token_id=0, eos_token_id=0, pad_token_id=0, all_special_ids=[0])
    return job_context(tiny_neox(), tokenizer, probes, batch_size=8, seed=0)


def test_measure_explains_every_nan_and_the_patch_runs_when_neurons_pass():
    ctx = toy_context()
    none = measure(ctx, **{**TOY, "neuron_z": 1e9})
    assert not none.unexplained_nans()
    assert none.scalars["sink/n_sink_neurons"] == 0
    assert "no MLP neuron" in none.nan_reasons["sink/patch_cos_drop"]
    assert none.heads["sink/score"].shape == (2, 4)
    some = measure(ctx, **{**TOY, "neuron_z": 0.5})
    assert not some.unexplained_nans()
    assert some.scalars["sink/n_sink_neurons"] > 0
    assert math.isfinite(some.scalars["sink/patch_cos_drop"]) and math.isfinite(some.scalars["sink/patch_loss_delta"])
    assert some.raw["sink/sink_neurons"].shape[1] == 3


def test_reported_values_are_the_statistics_of_their_full_samples():
    ctx = toy_context()
    ctx.batch_size = 3  # rows gathered over several chunks
    result = measure(ctx, **{**TOY, "neuron_z": 0.5, "converge_cos": 0.5})
    assert 0 < result.scalars["sink/converge_share"] < 1
    keys = {
        "sink/score_max",
        "sink/score_mean",
        "sink/first_norm_ratio_max",
        "sink/repeat_cos_max",
        "sink/repeat_cos_self_max",
        "sink/converge_share",
        "sink/patch_loss_delta",
        "sink/repeat_divergence_rate",
        "sink/repeat_norm_ratio",
        "sink/patch_cos_drop",
    }
    without = result.no_interval
    assert keys == set(result.scalars) - set(without) <= set(result.samples)
    assert all(len(why) > 10 for why in without.values()), without
    assert result.samples["sink/patch_cos_drop"].of == ("sink/repeat_cos_max", "sink/patch_repeat_cos_max")
    for key in keys:
        # the reported loss delta subtracts two float32 sums of NLL (~6 nats/token): float32 rounding of those
        tolerance = 1e-5 if key == "sink/patch_loss_delta" else 1e-9
        assert statistic(key, result.samples) == pytest.approx(result.scalars[key], rel=1e-6, abs=tolerance), key
    assert result.samples["sink/score_max"].values.shape == (4, 2, 4)  # [windows, layer, head]
    assert result.samples["sink/repeat_cos_max"].n == 4 and result.samples["sink/repeat_divergence_rate"].n == 3


@pytest.mark.parametrize(
    ("param", "value"), [("repeat_k", 1), ("converge_cos", 2.0), ("new_tokens", 0), ("neuron_z", 0.0), ("n_tokens", 0)]
)
def test_invalid_parameters_are_refused_by_name(param, value):
    with pytest.raises(ValueError, match=f"metrics.sink.{param}={value}"):
        check_family("sink", {"_target_": "ckptstudy.metrics.sink.measure", **family_params("sink", **{param: value})})


# ------------------------------------------------------------------------------------- end to end
def test_measure_on_the_final_micro_checkpoint(final_micro_context):
    model = final_micro_context.model
    result = measure(final_micro_context, **family_params("sink"))
    assert not result.unexplained_nans()
    for key in ("sink/score_max", "sink/first_norm_ratio_max", "sink/repeat_cos_max", "sink/repeat_divergence_rate"):
        assert math.isfinite(result.scalars[key])
    assert 0 < result.scalars["sink/score_max"] <= 1
    assert result.raw["sink/repeat_cos"].shape == (model.config.num_hidden_layers,)

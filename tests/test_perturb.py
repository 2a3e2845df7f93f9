"""Perturbation response (`perturb/`) on maps and models whose answers are known by construction: the method
checks on exact power laws, the induction signature on a hand-set circuit (present) and on a positional head
and uniform attention (absent)."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from ckptstudy.measure.capture import capture
from ckptstudy.measure.cost import Shape
from ckptstudy.measure.residual import layer_inputs, run_layers, tap_residual
from ckptstudy.metrics.perturb import (
    MIN_EFFECT,
    PROFILE_OFFSETS,
    control_probe,
    eps_grid,
    group_responses,
    induction_rows,
    later_mean,
    linear_range_max_eps,
    local_slopes,
    loglog_slope,
    measure,
    perturbed_group,
    perturbed_positions,
    relative_response,
    scale_invariance,
    target_rows,
    unit_directions,
)
from ckptstudy.params import check_family
from ckptstudy.stats.bootstrap import statistic
from configured import family_params, job_context
from conftest import tiny_neox
from planted import presence

V, D, HEADS, R = 64, 256, 2, 20


# ------------------------------------------------------------------------------------ pure functions
def test_perturbation_moves_one_position_by_eps_times_its_norm():
    hidden = torch.randn(2, 7, 5, dtype=torch.float64)
    eps, dirs = eps_grid(1e-3, 1e-1, 3), unit_directions(2, 5, seed=1)
    group = perturbed_group(hidden, torch.tensor([4]), eps, dirs)  # [2, 1 + 3*2, 7, 5]
    assert group.shape == (2, 7, 7, 5)
    assert torch.equal(group[:, 0], hidden)
    delta = group[:, 1:] - hidden[:, None]
    assert delta[:, :, [0, 1, 2, 3, 5, 6]].abs().max() == 0  # only position 4 moves
    want = eps.repeat_interleave(2)[None, :] * hidden[:, 4].norm(dim=-1)[:, None]
    assert torch.allclose(delta[:, :, 4].norm(dim=-1), want)
    assert torch.allclose(dirs.norm(dim=-1), torch.ones(2, dtype=torch.float64))


def _linear_response(eps: torch.Tensor, power: float = 1.0) -> torch.Tensor:
    """Responses of two 'layers' that are linear maps (causal mixing over positions, then a matrix),
    optionally raised to `power` (a deliberately non-linear response): [layers, E]."""
    torch.manual_seed(0)
    n, s, d, j = 3, 9, 6, 2
    hidden = torch.randn(n, s, d, dtype=torch.float64)
    dirs = unit_directions(4, d, seed=0)
    group = perturbed_group(hidden, torch.tensor([j]), eps, dirs)
    curves = []
    for _ in range(2):
        mix = torch.tril(torch.rand(s, s, dtype=torch.float64))
        weight = torch.randn(d, d, dtype=torch.float64)
        out = torch.einsum("ik,nvkd,de->nvie", mix, group, weight)
        resp = later_mean(relative_response(out), j) ** power  # [n, E*D]
        curves.append(resp.view(n, len(eps), len(dirs)).mean(dim=(0, 2)))
    return torch.stack(curves)


def test_linear_map_response_is_exactly_linear_in_float64():
    eps = eps_grid(1e-4, 1e-1, 7)
    curve = _linear_response(eps)
    local = local_slopes(eps, curve)
    assert loglog_slope(eps, curve).tolist() == pytest.approx([1.0, 1.0], abs=1e-12)
    assert local.flatten().tolist() == pytest.approx([1.0] * 12, abs=1e-12)
    assert scale_invariance(local) == pytest.approx(0.0, abs=1e-12)
    # linear over the whole grid: the range's end is not measured, only bounded below (censored)
    assert linear_range_max_eps(eps, local, 0.1) == (pytest.approx(0.1), True)


def test_quadratic_response_is_scale_invariant_but_not_linear():
    """Why scale_invariance is a method check, not a finding: any pure power of eps gives 0."""
    eps = eps_grid(1e-4, 1e-1, 7)
    local = local_slopes(eps, _linear_response(eps, power=2.0))
    assert loglog_slope(eps, _linear_response(eps, power=2.0)).tolist() == pytest.approx([2.0, 2.0], abs=1e-9)
    assert scale_invariance(local) == pytest.approx(0.0, abs=1e-9)
    linear, censored = linear_range_max_eps(eps, local, 0.1)
    assert math.isnan(linear) and not censored


def test_saturating_response_has_a_bounded_linear_range_and_a_spread():
    eps = eps_grid(1e-4, 1e-1, 7)  # 1e-4, 3.2e-4, 1e-3, 3.2e-3, 1e-2, 3.2e-2, 1e-1
    curve = torch.minimum(eps, torch.tensor(1e-2, dtype=torch.float64))[None, :]  # flat after 1e-2
    local = local_slopes(eps, curve)
    assert linear_range_max_eps(eps, local, 0.1) == (pytest.approx(1e-2), False)
    assert local.tolist()[0] == pytest.approx([1, 1, 1, 1, 0, 0])
    assert scale_invariance(local) == pytest.approx(math.sqrt(2) / 3)  # std of [1,1,1,1,0,0]


# --------------------------------------------------------------------------------- model helpers
def test_running_from_a_middle_layer_reproduces_the_model():
    model = tiny_neox()
    ids = torch.randint(1, 500, (3, 12))
    full: dict[int, torch.Tensor] = {}
    with tap_residual(model, lambda point, h: full.__setitem__(point, h.detach().clone())), torch.no_grad():
        model(input_ids=ids)
    for start in (0, 1):
        hidden, kwargs = layer_inputs(model, ids, start, batch_size=2)
        assert torch.allclose(hidden, full[start])
        outs: dict[int, torch.Tensor] = {}
        run_layers(model, hidden, start, kwargs, lambda point, h, outs=outs: outs.__setitem__(point, h))
        for point, h in outs.items():
            assert torch.allclose(h, full[point], atol=1e-5)


def test_response_is_causal_and_exactly_zero_without_a_perturbation():
    model = tiny_neox()
    ids = torch.randint(1, 500, (2, 16))
    hidden, kwargs = layer_inputs(model, ids, 0)
    eps = torch.tensor([0.0, 1e-2], dtype=torch.float64)
    resp = group_responses(model, hidden, kwargs, 0, torch.tensor([6]), eps, unit_directions(3, 32, 0), 64)
    assert resp.shape == (2, 6, 2, 16)  # [n, eps*draws, layers, s]
    assert resp[:, :3].abs().max() == 0  # eps = 0 rows
    assert resp[:, 3:, :, :6].abs().max() == 0  # positions before the perturbed one
    assert (resp[:, 3:, :, 6:] > 0).all()


# ---------------------------------------------------------------------------- constructed models
def induction_circuit(prev_token: bool = True, offset: int = 1, induction: bool = True) -> torch.nn.Module:
    """A 2-layer GPT-NeoX with a hand-set induction circuit (head 0 of each layer; all else zero).

    Residual subspaces: A = dims 0..V-1 token one-hot (embedding x16), B = V..2V-1 previous token,
    C = 2V..3V-1 induction output. Layer 0 head 0 is a previous-token head: constant rotary query and
    key biases whose score peaks at offset 1 in every frequency; value = A, written to B. Layer 1
    head 0 is an induction head: query reads A (current token), key reads B (previous token) in the
    non-rotary dims; value = A, written to C. `prev_token=False` removes layer 0's output (no B):
    the induction head then has nothing to match and attends uniformly. `offset` moves layer 0's
    positional head to attend `offset` tokens back; `induction=False` removes layer 1's output.
    """
    model = tiny_neox(vocab_size=V, layers=2, d_model=D, heads=HEADS)
    hd, rot, c = D // HEADS, 32, 4.0
    tokens = torch.arange(V)
    with torch.no_grad():
        model.gpt_neox.embed_in.weight.zero_()
        model.gpt_neox.embed_in.weight[tokens, tokens] = 16.0
        for layer in model.gpt_neox.layers:
            for p in (layer.attention.query_key_value, layer.attention.dense, layer.mlp.dense_4h_to_h):
                p.weight.zero_()
                p.bias.zero_()
        first, second = (layer.attention for layer in model.gpt_neox.layers)
        w = first.query_key_value.weight.view(HEADS, 3, hd, D)
        b = first.query_key_value.bias.view(HEADS, 3, hd)
        theta = 10000.0 ** (-torch.arange(0, rot, 2).double() / rot)  # GPT-NeoX rotary frequencies
        b[0, 0, : rot // 2] = c  # query (c, 0) in each rotary pair; key = query rotated by +theta:
        b[0, 1, : rot // 2] = (c * torch.cos(offset * theta)).float()  # q(p).k(p') = c^2 cos(theta (p - p' - offset))
        b[0, 1, rot // 2 : rot] = (c * torch.sin(offset * theta)).float()
        w[0, 2, tokens, tokens] = 1.0
        if prev_token:
            first.dense.weight[V + tokens, tokens] = 1.0
        w = second.query_key_value.weight.view(HEADS, 3, hd, D)
        w[0, 0, rot + tokens, tokens] = 1.0
        w[0, 1, rot + tokens, V + tokens] = 1.0
        w[0, 2, tokens, tokens] = 1.0
        if induction:
            second.dense.weight[2 * V + tokens, tokens] = 1.0
    return model


def zero_qk_model() -> torch.nn.Module:
    """Random GPT-NeoX whose query/key weights are zero: every query attends uniformly (no induction)."""
    model = tiny_neox(vocab_size=V, layers=2, d_model=D, heads=HEADS)
    with torch.no_grad():
        for layer in model.gpt_neox.layers:
            hd = D // HEADS
            layer.attention.query_key_value.weight.view(HEADS, 3, hd, D)[:, :2] = 0
            layer.attention.query_key_value.bias.view(HEADS, 3, hd)[:, :2] = 0
    return model


def repeat_probe(n: int = 4, seed: int = 0) -> torch.Tensor:
    """BOS (0) + R distinct random tokens + the same R tokens: [n, 1 + 2R]."""
    g = torch.Generator().manual_seed(seed)
    half = torch.stack([torch.randperm(V - 1, generator=g)[:R] + 1 for _ in range(n)])
    return torch.cat([torch.zeros(n, 1, dtype=torch.long), half, half], dim=1)


def toy_context(model):
    probes = SimpleNamespace(
        long_text=torch.randint(1, V, (4, 48), generator=torch.Generator().manual_seed(1)),
        random_repeat=repeat_probe(n=8),  # >= report.bootstrap.min_prompts: the excesses get intervals
        repeat_length=R,
    )
    return job_context(model, None, probes, batch_size=4, seed=0)


def test_the_hand_set_circuit_is_a_previous_token_then_induction_circuit():
    ids = repeat_probe()
    second = torch.arange(R + 1, 2 * R + 1)

    def scores(_layer, attn, _chunk):
        prev = attn[:, 0, torch.arange(1, 2 * R + 1), torch.arange(0, 2 * R)].mean()
        return torch.stack([prev, attn[:, 0, second, second - R + 1].mean()])

    cap = capture(induction_circuit(), ids, attn_fn=scores, batch_size=4)
    assert cap.attn[0][0] > 0.5  # previous-token head in layer 0 (chance ~ 1/20)
    assert cap.attn[1][1] > 0.95  # induction head in layer 1


def test_induction_is_present_at_the_induction_layer_and_peaks_before_the_second_occurrence():
    result = measure(toy_context(induction_circuit()), **family_params("perturb", position=8))
    assert not result.unexplained_nans()
    assert presence(result, MIN_EFFECT) == {key: True for key in MIN_EFFECT}
    assert result.scalars["perturb/induction_layer"] == 1
    ratio = result.raw["perturb/induction_ratio"]  # per layer: target over the other second-copy positions
    assert ratio[1] > 20 and ratio[0] < 1  # layer 0 only moves it to j + 1
    assert result.scalars["perturb/induction_excess_l1"] > 10  # vs the same position without the repeat
    assert result.scalars["perturb/induction_excess_l0"] == pytest.approx(1.0, abs=0.1)
    profile = result.raw["perturb/induction_profile"][1]  # layer 1, offsets -2..2 around j + R - 1
    assert profile.argmax() == PROFILE_OFFSETS.index(0)
    assert profile[PROFILE_OFFSETS.index(1)] < profile[PROFILE_OFFSETS.index(0)] / 10  # j + R: far weaker
    assert result.scalars["perturb/check_slope_small_eps"] == pytest.approx(1.0, abs=0.02)


def test_without_the_previous_token_head_there_is_no_induction_signature():
    result = measure(toy_context(induction_circuit(prev_token=False)), **family_params("perturb", position=8))
    assert not any(presence(result, MIN_EFFECT).values())
    assert result.raw["perturb/induction_ratio"][1] == pytest.approx(1.0, abs=0.1)
    assert result.scalars["perturb/induction_excess_l1"] == pytest.approx(1.0, abs=0.1)
    # layer 0 writes nothing: its response and every statistic over it are NaN, each with its reason
    assert math.isnan(result.raw["perturb/induction_ratio"][0])
    assert math.isnan(result.scalars["perturb/induction_excess_l0"])
    assert math.isnan(result.scalars["perturb/check_slope_l0"])
    assert not result.unexplained_nans()


def test_a_positional_head_at_distance_r_minus_1_fakes_the_ratio_but_not_its_excess():
    """Layer 0 attends R - 1 tokens back (position only): j + R - 1 reads j without any copying. The ratio over
    the other second-copy positions is fooled, its null on the control probe is fooled the same way, and
    neither excess is present."""
    result = measure(
        toy_context(induction_circuit(offset=R - 1, induction=False)), **family_params("perturb", position=8)
    )
    assert not result.unexplained_nans()
    assert result.scalars["perturb/induction_ratio_max"] > 5 and result.scalars["perturb/induction_ratio_max_null"] > 5
    assert result.scalars["perturb/induction_ratio_max_excess"] == pytest.approx(1.0, abs=0.05)
    assert result.scalars["perturb/induction_excess_l0"] == pytest.approx(1.0, abs=0.05)
    assert not any(presence(result, MIN_EFFECT).values())


def test_reported_induction_values_are_the_statistics_of_their_full_samples():
    result = measure(
        toy_context(induction_circuit()), **family_params("perturb", position=8, induction_draws=2, max_rows=40)
    )
    keys = [f"perturb/induction_excess_{m}" for m in ("l0", "l1", "max")]
    keys += [f"perturb/induction_ratio_max{s}" for s in ("", "_null", "_excess")]
    without = result.no_interval
    assert set(result.samples) == set(keys) == set(result.scalars) - set(without)
    assert all(len(why) > 10 for why in without.values()), without
    assert all(why.startswith("a method check") for key, why in without.items() if "/check_" in key)
    for key in keys:
        sample = result.samples[key]
        if sample.statistic != "ratio":
            assert sample.statistic == "ratio_of_sums" and sample.n == 8 and sample.prompts == "random_repeat"
        assert statistic(key, result.samples) == pytest.approx(result.scalars[key], rel=1e-9), key
    assert result.scalars["perturb/induction_excess_max"] > 2  # the layers differ: a swapped row would show
    assert result.samples["perturb/induction_excess_max"].values.shape == (8, 2)  # [prompt, layer]


def test_uniform_attention_gives_no_induction_and_a_linear_response_at_small_eps():
    result = measure(toy_context(zero_qk_model()), **family_params("perturb", position=8))
    assert not result.unexplained_nans()
    assert not any(presence(result, MIN_EFFECT).values())
    for layer in (0, 1):
        assert result.raw["perturb/induction_ratio"][layer] == pytest.approx(1.0, abs=0.15)
        assert result.scalars[f"perturb/induction_excess_l{layer}"] == pytest.approx(1.0, abs=0.15)
    assert result.scalars["perturb/check_slope_small_eps"] == pytest.approx(1.0, abs=0.02)
    assert result.scalars["perturb/check_linear_range_censored"] == 1  # linear to the largest eps: a lower bound
    assert "censored" in result.no_interval["perturb/check_linear_range_max_eps"]


def induction_ratio(response: torch.Tensor, positions: torch.Tensor) -> list[float]:
    """The per-layer induction ratio: the ratio of the sums over prompts of `induction_rows`' two parts."""
    target, other = induction_rows(response, positions, R)
    return (target.sum(0) / other.sum(0)).tolist()


def test_induction_ratio_on_hand_built_responses():
    positions = perturbed_positions(R, 2 * R + 1, 4)
    assert positions.min() >= 2 and positions.max() <= R
    resp = torch.ones(2, len(positions), 3, 1, 2 * R + 1, dtype=torch.float64)
    resp[:, torch.arange(len(positions)), :, :, positions + R - 1] = 5.0  # only the targets respond more
    assert induction_ratio(resp, positions) == pytest.approx([5.0])
    assert induction_ratio(torch.ones_like(resp), positions) == pytest.approx([1.0])
    assert target_rows(resp, positions, R).flatten().tolist() == pytest.approx([5.0, 5.0])
    # a response that only decays with distance from j is not flat over the second copy: the ratio moves away
    # from 1 although nothing is copied; the same decay on the control probe gives the same ratio (its null)
    distance = (torch.arange(2 * R + 1)[None, :] - positions[:, None]).clamp(min=0).double()
    decay = torch.exp(-distance / 5.0)[None, :, None, None, :].expand_as(resp)
    assert abs(induction_ratio(decay, positions)[0] - 1) > 0.5


def test_control_probe_keeps_the_prefix_and_repeats_nothing():
    ids = repeat_probe(n=3)
    ctl = control_probe(ids, R, seed=0)
    assert torch.equal(ctl[:, : R + 1], ids[:, : R + 1])
    assert (ctl[:, R + 1 :] != ids[:, R + 1 :]).float().mean() > 0.9
    assert ctl[:, 1:].min() >= ids[:, 1 : R + 1].min() and ctl[:, 1:].max() <= ids[:, 1 : R + 1].max()
    assert torch.equal(ctl, control_probe(ids, R, seed=0))


@pytest.mark.parametrize(
    ("param", "value"), [("eps_min", 0.0), ("n_eps", 2), ("layer", 5), ("draws", 0), ("tolerance", -1.0)]
)
def test_invalid_parameters_are_refused_by_name(param, value):
    shape = Shape(n_layers=2, d_model=32, n_heads=4, vocab=V, context=512)  # the toy models' shape
    with pytest.raises(ValueError, match=f"metrics.perturb.{param}={value}"):
        target = {"_target_": "ckptstudy.metrics.perturb.measure"}
        check_family("perturb", {**target, **family_params("perturb", **{param: value})}, shape)


# ------------------------------------------------------------------------------------ end to end
def test_measure_on_the_final_micro_checkpoint(final_micro_context):
    result = measure(final_micro_context, **family_params("perturb"))
    assert not result.unexplained_nans()
    assert result.scalars["perturb/check_slope_small_eps"] == pytest.approx(1.0, abs=0.05)
    keys = (
        "perturb/check_slope_l0",
        "perturb/check_slope_l1",
        "perturb/induction_ratio_max",
        "perturb/induction_excess_l1",
    )
    for key in (*keys, "perturb/check_scale_invariance"):
        assert math.isfinite(result.scalars[key])
    assert presence(result, MIN_EFFECT)["perturb/induction_excess_max"]  # induction heads from step ~1000

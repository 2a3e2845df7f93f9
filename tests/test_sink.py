"""Attention sinks and the repeated-token phenomenon (`sink/`): definitions on hand-built tensors, and every
headline on a model with a planted sink (present) and on controls that lack it (absent), tests/planted.py."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from ckptstudy.measure.capture import capture
from ckptstudy.measure.cost import Shape
from ckptstudy.measure.residual import clamp_mlp, mlp_write_projection, tap_mlp
from ckptstudy.metrics.sink import (
    MIN_EFFECT,
    NeuronStats,
    clamp_plan,
    convergence,
    divergence_k50,
    first_norm_ratio,
    frequent_tokens,
    measure,
    neuron_rows,
    random_neurons,
    repeat_pass,
    repeat_rows,
    robust_z,
    sink_neurons,
    text_pass,
    write_share,
)
from ckptstudy.params import check_family
from ckptstudy.reference import first_keys_mass
from ckptstudy.stats.bootstrap import statistic
from configured import family_params, job_context
from conftest import tiny_neox
from planted import CONTROLS, DETECTOR, planted_sink, presence, random_init, random_text


# ------------------------------------------------------------------------------------- sink score
def test_attention_on_keys_0_and_1_is_the_fused_statistic_of_the_eager_weights():
    model, ids = tiny_neox(), torch.randint(1, 500, (3, 17))
    fused = text_pass(model, ids, batch_size=2, with_loss=False).mass  # [n, L, 2, H]
    eager = capture(model, ids, attn_fn=lambda _layer, attn, _chunk: first_keys_mass(attn), batch_size=3).attn
    assert torch.allclose(fused, torch.stack(eager, dim=1), atol=1e-6)


def test_uniform_attention_gives_keys_0_and_1_the_same_mass():
    """The score's null is key 1: uniform causal attention gives it exactly what it gives key 0."""
    s = 8
    uniform = torch.tril(torch.ones(s, s)) / torch.arange(1, s + 1)[:, None]
    mass = first_keys_mass(uniform[None, None])[0, :, 0]
    assert mass.tolist() == pytest.approx([sum(1 / (q + 1) for q in range(1, s)) / (s - 1)] * 2)
    assert first_keys_mass(torch.eye(s)[None, None].tril())[0, :, 0].tolist() == [0.0, 1 / (s - 1)]


def test_first_norm_ratio_is_against_the_median_of_the_rest():
    hidden = torch.zeros(1, 5, 3)
    hidden[0, :, 0] = torch.tensor([12.0, 1.0, 2.0, 3.0, 100.0])  # median of the rest = (2 + 3) / 2
    assert first_norm_ratio(hidden).tolist() == pytest.approx([12 / 2.5])


# ---------------------------------------------------------------------------------- sink neurons
def test_neuron_rows_and_robust_z_on_constructed_activations():
    act = torch.randn(2, 40, 6, generator=torch.Generator().manual_seed(0))
    act[:, 0, 3] = 50.0  # fires only at the first position
    act[:, :, 5] = 0.0  # constant: a zero robust scale
    act[:, 0, 5] = 1.0
    rows = neuron_rows(act)  # [b, 4, d_ff]: a_0, a_1, median, MAD over positions 2..
    rest = act[:, 2:].double()
    assert torch.equal(rows[:, 0], act[:, 0].double()) and torch.equal(rows[:, 1], act[:, 1].double())
    assert torch.equal(rows[:, 2], rest.median(dim=1).values)  # a selection: exact in the model's dtype
    assert torch.allclose(rows[:, 3], (rest - rows[:, 2:3]).abs().median(dim=1).values, rtol=1e-6)
    z = robust_z(rows[:, 0], rows[:, 2], rows[:, 3])
    scale = 1.4826 * rows[:, 3]
    assert torch.allclose(z[:, :5], (rows[:, 0, :5] - rows[:, 2, :5]) / scale[:, :5])
    assert z[:, 3].min() > 20
    floor = 0.01 * scale.median(dim=-1).values + 1e-8  # not 1e-12: a finite, stated floor
    assert torch.allclose(z[:, 5], 1.0 / floor)


def test_write_shares_of_every_component_add_up_to_the_state():
    """A neuron's write share is its projection on the state over the state's squared norm: the shares of the
    parts a state is the sum of add up to 1, and a neuron that writes nothing has share 0."""
    gen = torch.Generator().manual_seed(0)
    w_out = torch.randn(4, 3, generator=gen, dtype=torch.float64)  # d=4, d_ff=3
    activity = torch.tensor([2.0, -1.0, 0.5], dtype=torch.float64)
    rest = torch.randn(4, generator=gen, dtype=torch.float64)
    state = w_out @ activity + rest
    shares = write_share(activity[None, None], (state @ w_out)[None, None], state[None, None])[0, 0]
    assert float(shares.sum() + rest @ state / state.dot(state)) == pytest.approx(1.0)
    w_out[:, 1] = 0
    assert float(write_share(activity[None, None], (state @ w_out)[None, None], state[None, None])[0, 0, 1]) == 0


def test_sink_neurons_need_both_an_outlier_activation_and_a_write():
    z = torch.zeros(2, 1, 2, 5, dtype=torch.float64)  # [n, L, position, d_ff]
    share = torch.zeros_like(z)
    z[:, 0, 0, 1], share[:, 0, 0, 1] = 50.0, 0.9  # fires and writes: a sink neuron
    z[:, 0, 0, 2], share[:, 0, 0, 2] = 50.0, 0.0  # fires, writes nothing
    z[:, 0, 0, 3], share[:, 0, 0, 3] = 1.0, 0.9  # writes, not an outlier
    z[:, 0, 1, 4], share[:, 0, 1, 4] = 50.0, 0.5  # the same at position 1 (the null)
    stats = NeuronStats(z, share, torch.zeros(1, 5, dtype=torch.float64))
    assert sink_neurons(stats, 0, 6.0, 0.05)[:, :2].tolist() == [[0, 1]]
    assert sink_neurons(stats, 1, 6.0, 0.05)[:, :2].tolist() == [[0, 4]]


def test_write_projection_is_each_neurons_output_weight_along_the_state():
    model = tiny_neox()
    states = torch.randn(2, 2, 32, dtype=torch.float64)
    proj = mlp_write_projection(model, states)
    w = model.gpt_neox.layers[1].mlp.dense_4h_to_h.weight.double()
    assert torch.allclose(proj[:, 1], states[:, 1] @ w, atol=1e-5)


def test_the_patch_changes_only_the_clamped_neurons_at_non_first_positions():
    model = tiny_neox()
    ids = torch.randint(1, 500, (2, 9))
    typical = torch.zeros(2, 128, dtype=torch.float64)
    typical[0, 3], typical[0, 7] = 0.5, -0.25
    plan = clamp_plan(torch.tensor([[0.0, 3.0, 9.0, 0.5], [0.0, 7.0, -8.0, 0.2]]), typical)

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


def test_the_random_null_set_has_the_same_layers_and_sizes_and_no_sink_neuron():
    neurons = torch.tensor([[0.0, 3.0, 9.0, 0.5], [0.0, 7.0, 8.0, 0.2], [2.0, 1.0, 7.0, 0.4]])
    chosen = random_neurons(neurons, d_ff=10, seed=0)
    assert sorted(chosen[:, 0].tolist()) == [0, 0, 2]
    assert not {tuple(r) for r in chosen.tolist()} & {tuple(r) for r in neurons[:, :2].tolist()}
    assert torch.equal(chosen, random_neurons(neurons, d_ff=10, seed=0))


# ------------------------------------------------------------------------------- repeated tokens
def test_frequent_tokens_and_the_repeat_and_control_rows():
    corpus = torch.tensor([5] * 9 + [7] * 8 + [1] * 20 + [3] * 2 + [9])
    assert frequent_tokens(corpus, vocab=12, special=[1], top=3).tolist() == [5, 7, 3]  # 1 is special; 9 is 4th
    pool = torch.arange(10, 20)
    tokens, repeat, control = repeat_rows(pool, 4, 6, bos=0, seed=0)
    assert len(set(tokens.tolist())) == 4 and set(tokens.tolist()) <= set(pool.tolist())
    assert repeat.tolist() == [[0] + [t] * 6 for t in tokens.tolist()]
    assert torch.equal(control[:, 0], repeat[:, 0]) and torch.equal(control[:, -1], tokens)  # same first and last
    for row, t in zip(control[:, 1:-1], tokens):
        assert t not in row.tolist() and set(row.tolist()) <= set(pool.tolist())  # nothing repeated


def test_convergence_of_hand_built_states():
    first = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    assert convergence(first, torch.tensor([[3.0, 0.0], [0.0, 2.0]])).tolist() == pytest.approx([1.0, 0.0])


def test_without_bos_a_rotary_model_cannot_tell_repeated_positions_apart():
    """Why the repeat rows start with BOS: GPT-NeoX has no absolute positions, so a one-token sequence gives
    the same hidden state at every position (cos 1 by construction, at any training step)."""
    model = tiny_neox()
    cos, _ = repeat_pass(model, torch.tensor([[17] * 20, [42] * 20]), batch_size=2)
    assert cos.min() > 1 - 1e-5
    cos, _ = repeat_pass(model, torch.tensor([[0] + [17] * 20, [0] + [42] * 20]), batch_size=2)
    assert cos[:, :, -1].max() < 0.99


def test_divergence_is_the_first_generated_token_at_each_repetition_length():
    """repeat_pass's flag at position k is the argmax after BOS + k copies: the same as generating one token."""
    model = planted_sink()
    ids = torch.tensor([[0] + [5] * 12])
    _, flags = repeat_pass(model, ids, batch_size=1, divergence=True)
    for k in (3, 10):
        with torch.no_grad():
            first = int(model(input_ids=ids[:, : k + 1]).logits[0, -1].argmax())
        assert flags[0, k] == float(first != 5)
    assert flags[0, 3] == 0 and flags[0, 10] == 1  # the planted model repeats, then diverges


def test_k50_is_where_divergence_comes_back_after_the_model_started_repeating():
    share = torch.tensor([1.0, 1.0, 0.25, 0.0, 0.0, 0.75, 1.0])  # K = 1..7: repeats from K=3, diverges again at 6
    k50, reason = divergence_k50(share)
    assert k50 == pytest.approx(math.exp(math.log(5) + (0.5 / 0.75) * (math.log(6) - math.log(5)))) and not reason
    k50, reason = divergence_k50(torch.ones(5))
    assert math.isnan(k50) and "no repetition to break" in reason
    k50, reason = divergence_k50(torch.tensor([1.0, 0.0, 0.2]))
    assert math.isnan(k50) and "from 2 to 3" in reason


# ------------------------------------------------------------------------------ planted and controls
def planted_context(model, rows: int = 8):
    probes = SimpleNamespace(long_text=random_text(rows, 48, seed=1), natural=random_text(8, 16, seed=2))
    tokenizer = SimpleNamespace(bos_token_id=0, eos_token_id=0, pad_token_id=0, all_special_ids=[0])
    return job_context(model, tokenizer, probes, batch_size=8, seed=0)


TOY = family_params("sink", repeat_k=60, n_tokens=16)
MODELS = {"planted": planted_sink, "bos_keyed": lambda: planted_sink(keyed="bos"), "random_init": random_init}
MODELS.update({control: (lambda c=control: planted_sink(c)) for control in CONTROLS})


@pytest.fixture(scope="module")
def measured():
    """measure() on the planted model, the BOS-keyed one, every control and random init (once per module)."""
    return {name: measure(planted_context(build()), **TOY) for name, build in MODELS.items()}


def test_the_planted_sink_is_present_in_every_headline(measured):
    result = measured["planted"]
    assert not result.unexplained_nans()
    found = presence(result, MIN_EFFECT)
    assert set(found) == set(MIN_EFFECT) and all(found.values()), found
    assert result.scalars["sink/n_sink_neurons"] == 1 and result.raw["sink/sink_neurons"][0, 1] == DETECTOR
    assert result.scalars["sink/score_max"] > 0.99 and result.scalars["sink/first_norm_ratio_max"] > 20
    assert 6 < result.scalars["sink/repeat_divergence_k50"] < 8  # the planted model diverges after ~7 repeats
    assert result.scalars["sink/n_sink_neurons_null"] == 0


@pytest.mark.parametrize("name", ["random_init", *CONTROLS])
def test_controls_without_the_mechanism_show_no_headline(measured, name):
    """No detector (a massive dimension everywhere: one shared direction), a detector that writes nothing,
    weight noise without a sink, random init: every excess stays below its smallest effect of interest."""
    result = measured[name]
    assert not result.unexplained_nans()
    found = presence(result, MIN_EFFECT)
    assert found and not any(found.values()), found
    assert result.scalars["sink/n_sink_neurons"] == 0


def test_the_null_is_what_the_value_would_be_without_the_mechanism(measured):
    """The no-detector control has one shared direction: its raw convergence is ~1, like the planted model's,
    but so is its null; random init diverges at every K (raw rate 1), but so does its short repetition."""
    shared = measured["no_detector"].scalars
    assert shared["sink/repeat_cos_max"] > 0.99 and shared["sink/repeat_cos_max_null"] > 0.99
    noise = measured["random_init"].scalars
    assert noise["sink/repeat_divergence_rate"] == 1 and noise["sink/repeat_divergence_rate_null"] == 1
    silent = measured["silent"].scalars  # the detector fires at position 0, but writes nothing
    assert silent["sink/first_norm_ratio_max"] > 2 and silent["sink/first_norm_ratio_max_excess"] == pytest.approx(1)


def test_a_sink_keyed_to_bos_is_found_only_on_text_that_starts_with_bos(measured):
    found = presence(measured["bos_keyed"], MIN_EFFECT)
    assert found["sink/bos_score_max_excess"] and found["sink/bos_first_norm_ratio_max_excess"]
    assert not found["sink/score_max_excess"] and not found["sink/first_norm_ratio_max_excess"]
    assert measured["bos_keyed"].scalars["sink/n_sink_neurons"] == 1


def test_the_patch_stops_the_convergence_and_the_divergence_and_a_random_set_does_not(measured):
    scalars = measured["planted"].scalars
    assert scalars["sink/patch_cos_drop"] > 0.5 and scalars["sink/patch_cos_drop_null"] == pytest.approx(0)
    assert scalars["sink/patch_divergence_drop"] == 1 and scalars["sink/patch_divergence_drop_null"] == 0
    assert scalars["sink/patch_loss_delta"] == pytest.approx(0, abs=1e-6)  # the detector is quiet on text


def test_measure_explains_every_nan(measured):
    result = measured["silent"]
    assert "no MLP neuron has |z| >= neuron_z" in result.nan_reasons["sink/patch_cos_drop_excess"]
    assert "no repetition to break" in measured["random_init"].nan_reasons["sink/repeat_divergence_k50"]


def test_reported_values_are_the_statistics_of_their_full_samples(measured):
    result = measured["planted"]
    without = result.no_interval
    assert set(without) == {"sink/n_sink_neurons", "sink/n_sink_neurons_null", "sink/repeat_divergence_k50"}
    assert all(len(why) > 10 for why in without.values()), without
    for key in set(result.scalars) - set(without):
        assert statistic(key, result.samples) == pytest.approx(result.scalars[key], rel=1e-9, abs=1e-12), key
    excess = result.samples["sink/score_max_excess"]
    assert excess.statistic == "difference" and excess.of == ("sink/score_max", "sink/score_max_null")
    assert result.samples["sink/score_max"].values.shape == (8, 3, 2)  # [windows, layer, head]
    assert (
        result.samples["sink/repeat_cos_max"].n == 16 and result.samples["sink/repeat_cos_max"].prompts == "sink_repeat"
    )
    assert result.heads["sink/score"].shape == (3, 2)


@pytest.mark.parametrize(
    ("param", "value"),
    [("repeat_k", 1), ("converge_cos", 2.0), ("neuron_share", 0.0), ("neuron_z", 0.0), ("n_tokens", 0)],
)
def test_invalid_parameters_are_refused_by_name(param, value):
    with pytest.raises(ValueError, match=f"metrics.sink.{param}={value}"):
        check_family("sink", {"_target_": "ckptstudy.metrics.sink.measure", **family_params("sink", **{param: value})})


def test_the_short_repetition_must_be_shorter_than_the_scored_one_and_fit_the_context():
    shape = Shape(n_layers=2, d_model=128, n_heads=4, vocab=2048, context=128)
    target = {"_target_": "ckptstudy.metrics.sink.measure"}
    with pytest.raises(ValueError, match=r"metrics\.sink\.short_k=127 is not valid; must be < 127"):
        check_family("sink", {**target, **family_params("sink", repeat_k=256, short_k=127)}, shape)
    with pytest.raises(ValueError, match=r"metrics\.sink\.short_k=8 is not valid; must be < repeat_k=8"):
        check_family(
            "sink", {"_target_": "ckptstudy.metrics.sink.measure", **family_params("sink", repeat_k=8, short_k=8)}
        )


# ------------------------------------------------------------------------------------- end to end
def test_measure_on_the_final_micro_checkpoint(final_micro_context):
    model = final_micro_context.model
    result = measure(final_micro_context, **family_params("sink"))
    assert not result.unexplained_nans()
    for key in ("sink/score_max_excess", "sink/first_norm_ratio_max_excess", "sink/repeat_cos_max_excess"):
        assert math.isfinite(result.scalars[key])
    assert 0 < result.scalars["sink/score_max"] <= 1
    assert result.raw["sink/repeat_cos"].shape[0] == model.config.num_hidden_layers
    assert not any(presence(result, MIN_EFFECT).values())  # no sink in a 2-layer model (README)

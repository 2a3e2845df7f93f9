"""Architecture adapters (`ckptstudy.model.arch`) on tiny random models of every supported model type: the parts
they name are the ones the model computes with (checked against attributes named here, independently of the
adapters), the fused attention statistics go through transformers' attention interface in every layer, ablation
through the adapter equals weight surgery done by hand, layer replay reproduces the clean pass, and an
architecture without an adapter is refused naming the supported ones."""

from __future__ import annotations

import pytest
import torch

from ckptstudy.measure.ablation import Targets, attribution_effect_rows, exact_effect_rows
from ckptstudy.measure.capture import attention_implementation, capture_stats
from ckptstudy.measure.readout import token_logprobs, unembed
from ckptstudy.measure.residual import layer_inputs, mlp_write_projection, run_layers, tap_mlp, tap_residual
from ckptstudy.model import arch
from ckptstudy.model.build import make_model
from ckptstudy.model.checkpoints import CheckpointError, CheckpointSource, check_architecture
from ckptstudy.reference import eager_capture_stats
from test_capture import KEYS, random_request

VOCAB, D, LAYERS, HEADS, CONTEXT = 300, 32, 2, 4, 64
HD = D // HEADS
ATOL = 1e-5  # effects are ~1e-3; float32 score rounding leaves ~1e-6
# model type -> (build options, the attention output projection and MLP output projection of layer l, named here
# by hand so the adapters are checked against something they did not produce)
KINDS = {
    "gpt_neox": ({"rotary_pct": 0.25}, lambda m, i: m.gpt_neox.layers[i].attention.dense),
    "llama": ({"rotary_pct": 1.0}, lambda m, i: m.model.layers[i].self_attn.o_proj),
    "llama-gqa": ({"rotary_pct": 1.0, "kv_heads": 2}, lambda m, i: m.model.layers[i].self_attn.o_proj),
    "olmo": ({"rotary_pct": 1.0}, lambda m, i: m.model.layers[i].self_attn.o_proj),
    "olmo2": ({"rotary_pct": 1.0}, lambda m, i: m.model.layers[i].self_attn.o_proj),
    "gpt2": ({}, lambda m, i: m.transformer.h[i].attn.c_proj),
}
MLP_OUT = {
    "gpt_neox": lambda m, i: m.gpt_neox.layers[i].mlp.dense_4h_to_h,
    "llama": lambda m, i: m.model.layers[i].mlp.down_proj,
    "olmo": lambda m, i: m.model.layers[i].mlp.down_proj,
    "olmo2": lambda m, i: m.model.layers[i].mlp.down_proj,
    "gpt2": lambda m, i: m.transformer.h[i].mlp.c_proj,
}


def tiny(kind: str, seed: int = 0, dtype=torch.float64):
    options, _ = KINDS[kind]
    model_type = kind.split("-")[0]
    model = make_model(model_type, VOCAB, D, LAYERS, HEADS, CONTEXT, seed=seed, **options).eval().to(dtype)
    with torch.no_grad():  # norms and biases off their init (1, 0) so that a wrong module shows
        for name, param in model.named_parameters():
            if param.dim() == 1:
                noise = torch.randn(param.shape, generator=torch.Generator().manual_seed(len(name)), dtype=dtype)
                param.add_(0.1 * noise)
    return model


def ids(n: int = 3, s: int = 20, seed: int = 1) -> torch.Tensor:
    return torch.randint(2, VOCAB, (n, s), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("kind", list(KINDS))
def test_adapter_names_the_parts_the_model_computes_with(kind):
    model = tiny(kind)
    parts = arch.model_parts(model)
    assert parts.n_layers == LAYERS and parts.n_heads == HEADS and parts.head_dim == HD
    assert all(parts.out_projs[i] is KINDS[kind][1](model, i) for i in range(LAYERS))
    assert all(parts.mlp_out_projs[i] is MLP_OUT[kind.split("-")[0]](model, i) for i in range(LAYERS))
    assert parts.parallel_residual == (kind == "gpt_neox")
    assert parts.mlp_writes_linearly == (kind != "olmo2")
    # the body returns the final-norm output, and unembed(last residual point) is the model's logits
    x = ids()
    points = {}
    with torch.no_grad(), tap_residual(model, lambda point, h: points.__setitem__(point, h)):
        logits = model(input_ids=x).logits
    assert sorted(points) == list(range(LAYERS + 1))
    torch.testing.assert_close(unembed(model, points[LAYERS]), logits)
    with torch.no_grad():
        torch.testing.assert_close(parts.final_norm(points[LAYERS]), parts.body(input_ids=x).last_hidden_state)


@pytest.mark.parametrize("kind", list(KINDS))
def test_fused_statistics_go_through_the_attention_interface_in_every_layer(kind):
    model = tiny(kind)
    n, s = 4, 29
    x, request = ids(n, s), random_request(n, s, repeat=14)
    fused = capture_stats(model, x, request, batch_size=3)
    eager = eager_capture_stats(model, x, request, batch_size=2)
    rows = n * s
    for layer in range(LAYERS):
        for key in KEYS:
            torch.testing.assert_close(
                fused.attn[layer][key] / rows, eager.attn[layer][key] / rows, atol=1e-4 / s, rtol=1e-4, msg=key
            )


def test_a_layer_that_bypasses_the_attention_interface_is_refused():
    model = tiny("llama")
    attention = model.model.layers[1].self_attn
    forward = attention.forward

    def own_attention(*args, **kwargs):  # computes attention itself: the registered function never sees layer 1
        with attention_implementation(model, "eager"):
            return forward(*args, **kwargs)

    attention.forward = own_attention
    with pytest.raises(arch.UnsupportedModelError, match=r"layers \[1\].*did not call transformers' attention"):
        capture_stats(model, ids(2, 12), random_request(2, 12))


def surgery_effects(model, kind: str, targets: Targets) -> torch.Tensor:
    """Each head's zero-ablation effect by weight surgery: the head's input columns (rows for GPT-2's Conv1D) of the
    attention output projection zeroed by hand, one eager forward per head."""

    def score_sum() -> float:
        with torch.no_grad(), attention_implementation(model, "eager"):
            logp = token_logprobs(model(input_ids=targets.ids).logits, targets.ids)
        return float(logp[targets.mask[:, :-1]].sum())

    clean, n = score_sum(), int(targets.mask.sum())
    effects = torch.zeros(LAYERS, HEADS, dtype=torch.float64)
    for layer in range(LAYERS):
        weight = KINDS[kind][1](model, layer).weight
        for head in range(HEADS):
            cols = slice(head * HD, (head + 1) * HD)
            view = weight.data[cols] if kind == "gpt2" else weight.data[:, cols]
            kept = view.clone()
            view.zero_()
            effects[layer, head] = (clean - score_sum()) / n
            view.copy_(kept)
    return effects


@pytest.mark.parametrize("kind", list(KINDS))
def test_ablation_through_the_adapter_equals_weight_surgery_by_hand(kind):
    model = tiny(kind, seed=3)
    with torch.no_grad():  # louder heads, so that every effect stands well above the float32 rounding (ATOL)
        for layer in range(LAYERS):
            KINDS[kind][1](model, layer).weight.mul_(4)
    x = ids(3, 18, seed=4)
    mask = torch.zeros_like(x, dtype=torch.bool)
    mask[:, 8:17] = True
    targets = Targets(x, mask)
    reference = surgery_effects(model, kind, targets)
    # both paths eager (GPT-NeoX's eager attention softmaxes in float32, SDPA does not); the scores are float32
    # log-softmaxes (`readout.log_probs`) even of a float64 model, hence ATOL: a wrong module is off by O(effect)
    with attention_implementation(model, "eager"):
        exact = exact_effect_rows(model, targets, "zero", "logprob", max_rows=5).pooled64
    torch.testing.assert_close(exact, reference, atol=ATOL, rtol=0)
    assert reference.abs().max() > 100 * ATOL  # the heads matter: the equality above is not 0 == 0
    attribution = attribution_effect_rows(model, targets, "zero", "logprob", max_rows=2).pooled64
    assert torch.corrcoef(torch.stack([attribution.flatten(), reference.flatten()]))[0, 1] > 0.5
    # a head set by hand to write nothing has no effect, through the adapter as by surgery; the others keep theirs
    weight = KINDS[kind][1](model, 1).weight
    with torch.no_grad():
        (weight.data[HD : 2 * HD] if kind == "gpt2" else weight.data[:, HD : 2 * HD]).zero_()
    with attention_implementation(model, "eager"):
        silenced = exact_effect_rows(model, targets, "zero", "logprob").pooled64
    assert silenced[1, 1].abs() < ATOL
    torch.testing.assert_close(silenced, surgery_effects(model, kind, targets), atol=ATOL, rtol=0)
    assert silenced[0].abs().max() > 100 * ATOL


@pytest.mark.parametrize("kind", list(KINDS))
def test_layer_replay_reproduces_the_clean_pass(kind):
    model = tiny(kind, seed=5)
    x = ids(3, 16)
    kept = {}
    with torch.no_grad(), tap_residual(model, lambda point, h: kept.__setitem__(point, h.clone())):
        model(input_ids=x)
    hidden, call = layer_inputs(model, x, 1, batch_size=2)
    torch.testing.assert_close(hidden, kept[1])
    out = run_layers(model, hidden, 1, call)
    torch.testing.assert_close(out, kept[LAYERS])


@pytest.mark.parametrize("kind", [k for k in KINDS if k != "llama-gqa"])
def test_mlp_activation_times_its_output_weight_is_what_the_mlp_writes(kind):
    model = tiny(kind, seed=6)
    model_type = kind.split("-")[0]
    acts, outs = {}, {}
    handles = [
        MLP_OUT[model_type](model, layer).register_forward_hook(
            lambda _m, _a, out, layer=layer: outs.__setitem__(layer, out.detach())
        )
        for layer in range(LAYERS)
    ]
    with torch.no_grad(), tap_mlp(model, lambda layer, a: acts.__setitem__(layer, a.detach())):
        model(input_ids=ids(2, 12))
    for handle in handles:
        handle.remove()
    parts = arch.model_parts(model)
    for layer in range(LAYERS):
        bias = parts.mlp_out_projs[layer].bias
        written = acts[layer] @ parts.mlp_out_matrix(layer).T + (0 if bias is None else bias)
        torch.testing.assert_close(written, outs[layer])
    states = torch.randn(2, LAYERS, D, dtype=torch.float64)
    if model_type == "olmo2":  # post-norm: a neuron's write is not activation x W_out column, so no projection
        with pytest.raises(arch.UnsupportedModelError, match="post-norm"):
            mlp_write_projection(model, states)
    else:
        expected = torch.stack([states[:, i] @ parts.mlp_out_matrix(i) for i in range(LAYERS)], dim=1)
        torch.testing.assert_close(mlp_write_projection(model, states), expected)


def test_an_architecture_without_an_adapter_is_refused_naming_the_supported_ones():
    from transformers import BloomConfig, BloomForCausalLM

    bloom = BloomForCausalLM(BloomConfig(vocab_size=64, hidden_size=16, n_layer=1, n_head=2))
    with pytest.raises(arch.UnsupportedModelError) as err:
        arch.model_parts(bloom)
    message = str(err.value)
    assert "'bloom'" in message and "no adapter" in message
    for family in ("gpt_neox", "llama (llama, olmo, olmo2)", "gpt2"):
        assert family in message
    source = CheckpointSource("some-model", 5, "local", "/nowhere/step5")
    with pytest.raises(CheckpointError, match=r"model_type 'bloom'.*supported families.*gpt_neox.*gpt2"):
        check_architecture({"model_type": "bloom"}, source)
    # a supported architecture that is not the one the model yaml promises is refused too, saying what to set
    with pytest.raises(CheckpointError, match=r"model_type 'olmo2' \(architecture llama\).*model.arch=gpt_neox"):
        check_architecture({"model_type": "olmo2"}, source, "gpt_neox")
    assert check_architecture({"model_type": "olmo"}, source, "llama") is arch.LLAMA
    with pytest.raises(ValueError, match=r"model.arch='bloom'.*gpt_neox, llama, gpt2"):
        arch.for_family("bloom")

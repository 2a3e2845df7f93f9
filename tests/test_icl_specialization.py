"""Per-head ablation effects and their specialization on models built so the answer is known."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from ckptstudy.ablation import Targets, attribution_effects, exact_effects, naive_effects
from ckptstudy.checkpoints import CheckpointSource, load_checkpoint
from ckptstudy.metrics.icl_heads import (
    copy_rate,
    icl_targets,
    natural_loop_targets,
    validate_attribution,
)
from ckptstudy.metrics.specialization import (
    cosine,
    effective_heads,
    gini,
    jaccard,
    spearman,
    top_heads,
    top_share,
)
from conftest import tiny_neox

LENGTH, COPIES = 12, 4


def icl_batch(vocab: int, n: int = 8, seed: int = 0) -> Targets:
    gen = torch.Generator().manual_seed(seed)
    passages = torch.stack([torch.randperm(vocab - 2, generator=gen)[:LENGTH] + 2 for _ in range(n)])
    return icl_targets(passages.repeat(1, COPIES), LENGTH)


@pytest.fixture(scope="module")
def final_micro(micro_suite):
    steps = sorted(int(p.name[4:]) for p in micro_suite.glob("step*"))
    model, _ = load_checkpoint(CheckpointSource("micro", steps[-1], "local", str(micro_suite / f"step{steps[-1]}")))
    return model


def head_weights(model, layer: int, head: int):
    """Views of one head's q/k/v rows (+ biases) and its output projection columns."""
    attn = model.gpt_neox.layers[layer].attention
    heads = model.config.num_attention_heads
    hd = model.config.hidden_size // heads
    qkv_w = attn.query_key_value.weight.view(heads, 3, hd, -1)[head]
    qkv_b = attn.query_key_value.bias.view(heads, 3, hd)[head]
    out = attn.dense.weight[:, head * hd : (head + 1) * hd]
    return qkv_w, qkv_b, out


def one_copying_head(model, targets: Targets):
    """Keep only the head whose ablation hurts copying most; zero every other head's output."""
    effects = exact_effects(model, targets)
    layer, head = divmod(int(effects.flatten().argmax()), effects.shape[1])
    surgery = copy.deepcopy(model)
    with torch.no_grad():
        for li in range(surgery.config.num_hidden_layers):
            for h in range(surgery.config.num_attention_heads):
                if (li, h) != (layer, head):
                    head_weights(surgery, li, h)[2].zero_()
    return surgery, layer, head


def test_specialization_statistics_on_known_vectors():
    one = torch.tensor([[0.0, 0.0], [2.0, -1.0]])
    assert top_share(one, 1) == 1 and effective_heads(one) == pytest.approx(1) and gini(one) == pytest.approx(0.75)
    equal = torch.ones(2, 4)
    assert top_share(equal, 1) == pytest.approx(1 / 8) and effective_heads(equal) == pytest.approx(8)
    assert gini(equal) == pytest.approx(0)
    assert math.isnan(effective_heads(-equal))  # nothing helps: no distribution to measure
    assert spearman(torch.tensor([1.0, 2, 3, 4]), torch.tensor([10.0, 20, 30, 45])) == pytest.approx(1)
    assert spearman(torch.tensor([1.0, 2, 3]), torch.tensor([3.0, 2, 1])) == pytest.approx(-1)
    assert top_heads(torch.tensor([0.1, 0.9, 0.5]), 2) == {1, 2}
    assert jaccard({1, 2}, {2, 3}) == pytest.approx(1 / 3)
    assert cosine(torch.tensor([1.0, 0]), torch.tensor([0.0, 3])) == 0


def test_batched_exact_ablation_equals_the_naive_loop_on_the_micro_model(final_micro):
    targets = icl_batch(final_micro.config.vocab_size, n=6)
    for ablation in ("zero", "mean"):
        for score in ("logprob", "contrast"):
            fast = exact_effects(final_micro, targets, ablation, score, max_rows=5)
            slow = naive_effects(final_micro, targets, ablation, score)
            torch.testing.assert_close(fast, slow, atol=1e-5, rtol=0)
    assert fast.abs().max() > 1e-3  # the comparison is not between two zero vectors


def test_one_copying_head_dominates(final_micro):
    targets = icl_batch(final_micro.config.vocab_size)
    model, layer, head = one_copying_head(final_micro, targets)
    effects = exact_effects(model, targets)
    assert effects[layer, head] > 0.2  # ablating it costs the copy token real log-probability
    assert top_share(effects, 1) > 0.95 and effective_heads(effects) < 1.2


def test_identical_heads_share_the_effect(final_micro):
    targets = icl_batch(final_micro.config.vocab_size)
    model, layer, head = one_copying_head(final_micro, targets)
    heads = model.config.num_attention_heads
    with torch.no_grad():
        w, b, out = (t.clone() for t in head_weights(model, layer, head))
        for h in range(heads):  # every head of that layer becomes the copying head, each with 1/H of its output
            hw, hb, hout = head_weights(model, layer, h)
            hw.copy_(w)
            hb.copy_(b)
            hout.copy_(out / heads)
    effects = exact_effects(model, targets)
    assert effective_heads(effects) == pytest.approx(heads, rel=0.05)
    assert top_share(effects, 1) == pytest.approx(1 / heads, rel=0.05)


def test_attribution_matches_exact_on_a_near_linear_toy_model():
    model = tiny_neox(seed=5)
    with torch.no_grad():
        for layer in model.gpt_neox.layers:
            layer.attention.dense.weight.mul_(0.05)  # small head outputs: the linear estimate is accurate
    targets = icl_batch(model.config.vocab_size)
    estimate = attribution_effects(model, targets)
    exact = exact_effects(model, targets)
    torch.testing.assert_close(estimate, exact, atol=2e-4, rtol=0.05)
    rho = validate_attribution(model, targets, estimate, 3, "zero", "logprob", seed=0, max_rows=64)
    assert rho == pytest.approx(
        spearman(
            estimate.flatten()[list(_validated(estimate, 3, 0))], exact.flatten()[list(_validated(estimate, 3, 0))]
        )
    )


def _validated(estimate: torch.Tensor, k: int, seed: int) -> list[int]:
    top = estimate.flatten().topk(k).indices.tolist()
    rest = [i for i in range(estimate.numel()) if i not in top]
    gen = torch.Generator().manual_seed(seed)
    return top + [rest[i] for i in torch.randperm(len(rest), generator=gen)[:k].tolist()]


def test_concentration_of_a_negligible_effect_is_not_reported():
    from ckptstudy.metrics.icl_heads import specialization_scalars

    tiny = torch.tensor([[0.001, 0.0], [0.0, 0.0]])
    scalars = specialization_scalars(tiny, torch.rand(2, 2), 3, min_total=0.01)
    assert math.isnan(scalars["icl/ablation_neff"]) and scalars["icl/ablation_total"] == pytest.approx(0.001)
    assert specialization_scalars(tiny, torch.rand(2, 2), 3)["icl/ablation_top1_share"] == 1


def test_targets_and_copy_rate():
    targets = icl_targets(torch.arange(12).view(1, 12), 3)
    assert targets.mask[0].nonzero().squeeze(-1).tolist() == list(range(3, 11))
    assert targets.expected.tolist() == list(range(4, 12))
    passages = torch.tensor([[1, 2, 3], [4, 5, 6]])
    assert copy_rate(torch.tensor([[1, 2, 3, 1], [4, 5, 0, 4]]), passages) == (0.5, 7 / 8)
    prompts = torch.tensor([[9, 9], [8, 8]])
    generated = torch.tensor([[1, 2, 3, 4, 3, 4, 3, 4], [5, 6, 7, 1, 2, 3, 4, 5]])
    nat = natural_loop_targets(prompts, generated, torch.tensor([2, 0]), torch.tensor([2, -1]))
    # one looping row; cycle 2 starts at generation index 4 = sequence index 6, predicted from query 5
    assert nat.ids.shape == (1, 10) and nat.mask[0].nonzero().squeeze(-1).tolist() == [5, 6, 7, 8]
    assert natural_loop_targets(prompts, generated, torch.tensor([0, 0]), torch.tensor([-1, -1])) is None

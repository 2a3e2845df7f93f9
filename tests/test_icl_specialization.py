"""Per-head ablation effects and their specialization on models built so the answer is known."""

from __future__ import annotations

import copy
import itertools
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from ckptstudy.measure.ablation import (
    EffectRows,
    Targets,
    attribution_effect_rows,
    attribution_effects,
    exact_effect_rows,
    exact_effects,
)
from ckptstudy.measure.budget import GB, MemoryBudget
from ckptstudy.measure.cost import Shape
from ckptstudy.measure.generation import Generation, NaturalLoops
from ckptstudy.metrics import FamilyResult, icl_heads
from ckptstudy.metrics.icl_heads import (
    EffectSettings,
    concentration,
    icl_targets,
    natural_loop_targets,
    validate_attribution,
)
from ckptstudy.model.checkpoints import CheckpointSource, load_checkpoint
from ckptstudy.reference import naive_effects
from ckptstudy.stats.bootstrap import Sample, replicates
from ckptstudy.stats.intervals import percentile
from ckptstudy.stats.specialization import concentration_of, cosine, jaccard, jaccard_chance, spearman, top_heads
from configured import family_params, job_context, loop_rule
from conftest import tiny_neox

LENGTH, COPIES = 12, 4


def top_share(effects, k: int) -> float:
    return concentration_of(effects, "top_share", k)


def effective_heads(effects) -> float:
    return concentration_of(effects, "neff")


def gini(effects) -> float:
    return concentration_of(effects, "gini")


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
    ctx = job_context(model, None, None, seed=0, budget=MemoryBudget(2 * GB, "test"))
    settings = EffectSettings("attribution", "zero", "logprob", None, 3, 0.0)
    rho = validate_attribution(ctx, targets, estimate, 3, settings)
    assert rho == pytest.approx(
        spearman(
            estimate.flatten()[list(_validated(estimate, 3, 0))], exact.flatten()[list(_validated(estimate, 3, 0))]
        )
    )


def uneven_batch(vocab: int) -> Targets:
    """`icl_batch` with fewer targets in some prompts (one has none), so pooling weights the prompts unevenly."""
    targets = icl_batch(vocab, n=4)
    mask = targets.mask.clone()
    mask[0, : 2 * LENGTH] = False  # prompt 0: only its last two cycles
    mask[2] = False  # prompt 2: no target at all
    return Targets(targets.ids, mask)


def test_per_prompt_effect_rows_pool_to_the_pooled_effects():
    model = tiny_neox(seed=2)
    targets = uneven_batch(model.config.vocab_size)
    exact = exact_effect_rows(model, targets, max_rows=5)
    attribution = attribution_effect_rows(model, targets)
    for rows, pooled in (
        (exact, exact_effects(model, targets, max_rows=5)),
        (attribution, attribution_effects(model, targets)),
    ):
        assert rows.sums.shape == (4, 2, 4) and rows.targets.tolist() == targets.mask.sum(1).tolist()
        torch.testing.assert_close((rows.sums.sum(0) / rows.targets.sum()).float(), pooled, atol=0, rtol=0)
        assert rows.sums[2].abs().max() == 0  # no target: nothing to sum
    torch.testing.assert_close(exact.pooled, naive_effects(model, targets), atol=1e-5, rtol=0)
    assert exact.pooled.abs().max() > 1e-3  # not two zero vectors


@pytest.mark.parametrize("ablation", ["zero", "mean"])
def test_attribution_in_chunks_of_rows_equals_one_batch(ablation):
    # a chunk of max_rows rows per forward + backward bounds the activation memory (a paper-scale natural-loop
    # pass is 500 rows x 1032 tokens); rows do not interact and `mean` uses the mean over every row
    model = tiny_neox(seed=2)
    targets = uneven_batch(model.config.vocab_size)
    whole = attribution_effect_rows(model, targets, ablation)
    for max_rows in (1, 3):
        chunked = attribution_effect_rows(model, targets, ablation, max_rows=max_rows)
        torch.testing.assert_close(chunked.sums, whole.sums, atol=1e-6, rtol=1e-5)
    assert whole.sums.abs().max() > 1e-3


@pytest.mark.parametrize("method", ["exact", "attribution"])
def test_one_prompt_on_its_own_gives_its_own_row(method):
    model = tiny_neox(seed=2)
    targets = uneven_batch(model.config.vocab_size)
    rows_of = exact_effect_rows if method == "exact" else attribution_effect_rows
    rows = rows_of(model, targets)  # zero ablation: a prompt's row does not depend on the other prompts
    for i in (0, 1):
        alone = rows_of(model, Targets(targets.ids[i : i + 1], targets.mask[i : i + 1]))
        assert alone.targets.tolist() == [rows.targets[i]]
        torch.testing.assert_close(alone.sums[0], rows.sums[i], atol=1e-5, rtol=1e-4)


def _validated(estimate: torch.Tensor, k: int, seed: int) -> list[int]:
    top = estimate.flatten().topk(k).indices.tolist()
    rest = [i for i in range(estimate.numel()) if i not in top]
    gen = torch.Generator().manual_seed(seed)
    return top + [rest[i] for i in torch.randperm(len(rest), generator=gen)[:k].tolist()]


def test_concentration_of_a_negligible_effect_is_not_reported():
    tiny = torch.tensor([[0.001, 0.0], [0.0, 0.0]])
    rows = EffectRows(tiny.double()[None] * 4, torch.tensor([4.0]))  # one prompt, four targets
    result = concentration("icl/ablation", rows, "icl_repeat", 3, min_total=0.01)
    assert math.isnan(result.scalars["icl/ablation_neff"])
    assert result.scalars["icl/ablation_total"] == pytest.approx(0.001)
    assert "min_effect_total 0.01" in result.nan_reasons["icl/ablation_top1_share"]
    assert result.unexplained_nans() == []
    assert concentration("icl/ablation", rows, "icl_repeat", 3, min_total=0.0).scalars["icl/ablation_top1_share"] == 1


def test_targets():
    targets = icl_targets(torch.arange(12).view(1, 12), 3)
    assert targets.mask[0].nonzero().squeeze(-1).tolist() == list(range(3, 11))
    assert targets.expected.tolist() == list(range(4, 12))
    prompts = torch.tensor([[9, 9], [8, 8]])
    nat = natural_loop_targets(loops_of(prompts, [[1, 2, 3, 4, 3, 4, 3, 4], [5, 6, 7, 1, 2, 3, 4, 5]]))
    # one looping row, cycle (3, 4) from generation index 2; its first copy starts at generation index 4 =
    # sequence index 6: queries 6, 7, 8 (like icl_repeat's queries from its second passage on)
    assert nat.ids.shape == (1, 10) and nat.mask[0].nonzero().squeeze(-1).tolist() == [6, 7, 8]
    assert natural_loop_targets(loops_of(prompts, [[1, 2, 3, 4], [5, 6, 7, 8]])) is None


def test_jaccard_chance_matches_brute_force_enumeration():
    for n in range(1, 9):
        for k in range(1, n + 1):
            subsets = [set(c) for c in itertools.combinations(range(n), k)]
            brute = sum(jaccard(a, b) for a in subsets for b in subsets) / len(subsets) ** 2
            assert jaccard_chance(n, k) == pytest.approx(brute), (n, k)
    assert jaccard_chance(8, 5) == pytest.approx(0.4707, abs=1e-4)  # any two 5-sets of 8 share >= 2: J >= 0.25
    assert jaccard_chance(4, 9) == 1  # k clipped to the head count


# --- measure() on a fake checkpoint: the forward passes are replaced by effect vectors chosen by hand ---

ICL_EFFECTS = torch.tensor([[0.5, 0.3, 0.0, 0.0], [0.2, 0.0, 0.0, 0.0]])  # total 1.0: a circuit
NOISE = torch.full((2, 4), 0.001)  # total 0.008 < min_effect_total 0.01
INDUCTION = torch.tensor([[0.9, 0.5, 0.1, 0.0], [0.3, 0.2, 0.0, 0.0]])


def loops_of(prompts: torch.Tensor, generated: list[list[int]]) -> NaturalLoops:
    ids = torch.tensor(generated)
    rule = loop_rule()
    period, copies, onset = rule.detect(ids)
    return NaturalLoops(prompts, Generation(ids, torch.zeros(ids.shape)), period, copies, onset, rule)


def rows_of(effects: torch.Tensor, targets: Targets) -> EffectRows:
    """Per-prompt rows whose pooled effect is `effects`: each prompt carries it on each of its targets."""
    counts = targets.mask.sum(1).double()
    return EffectRows(effects.double()[None] * counts[:, None, None], counts)


def assert_every_scalar_is_a_statistic_or_says_why_not(result: FamilyResult) -> None:
    """Every scalar but the declared values is a statistic of a sample, and every NaN has its reason."""
    declared = {"icl/natural_loop_prompts", "icl/icl_natural_topk_jaccard_chance", "icl/ablation_exact"}
    assert set(result.scalars) - set(result.samples) == declared == set(result.no_interval)
    assert result.unexplained_nans() == []


LOOPING = loops_of(torch.tensor([[40, 41], [42, 43]]), [[1, 2, 3, 4, 3, 4, 3, 4], [5, 6, 7, 8, 9, 10, 11, 12]])
NOT_LOOPING = loops_of(torch.tensor([[40, 41]]), [[5, 6, 7, 8, 9, 10, 11, 12]])


class FakeCheckpoint:
    model = None
    seed = 0
    context_length = 512
    shape = Shape(n_layers=2, d_model=32, n_heads=4, vocab=500, context=512)  # 8 heads: mode auto runs exact

    def __init__(self, loops: NaturalLoops):
        self.loops = loops
        self.probes = SimpleNamespace(icl_repeat=torch.arange(2, 14).repeat(2, 3), icl_length=12, natural=loops.prompts)

    def natural_loops(self) -> NaturalLoops:
        return self.loops


@pytest.fixture
def fake_passes(monkeypatch):
    """Replace the forward passes of icl_heads.measure: head_effects returns the given vectors in call order
    (ICL loops first, then natural loops) and records the targets it was asked for."""
    calls = []

    def install(*vectors, induction=INDUCTION):
        queue = list(vectors)

        def head_effects(ctx, targets, settings, what):
            calls.append(targets)
            return rows_of(queue.pop(0), targets)

        monkeypatch.setattr(icl_heads, "head_effects", head_effects)

        def patterns(ctx, top_k):
            out = FamilyResult()
            out.stat("icl/induction_max", Sample("max_of_mean", induction[None].numpy(), prompts="random_repeat"), None)
            return out

        def copies(ctx, cycles):
            out = FamilyResult()
            out.stat("icl/icl_repeat_rate", Sample("mean", np.array([1.0, 0.0]), prompts="icl_repeat"), None)
            return out

        monkeypatch.setattr(icl_heads, "pattern_scores", patterns)
        monkeypatch.setattr(icl_heads, "loss_score", lambda ctx, *args: FamilyResult())
        monkeypatch.setattr(icl_heads, "icl_repeat_rate", copies)
        return calls

    return install


def test_natural_loop_noise_is_held_to_the_same_threshold(fake_passes):
    fake_passes(ICL_EFFECTS, NOISE)
    result = icl_heads.measure(FakeCheckpoint(LOOPING), **family_params("icl_heads", top_k=5, min_effect_total=0.01))
    s = result.scalars
    assert s["icl/ablation_neff"] == pytest.approx(math.exp(-sum(p * math.log(p) for p in (0.5, 0.3, 0.2))))
    # uniform noise has N_eff = 8 "by construction": not reported, and nothing is compared with it
    for key in ("icl/natural_ablation_neff", "icl/icl_natural_top5_jaccard", "icl/icl_natural_cosine"):
        assert math.isnan(s[key]), key
        assert "min_effect_total 0.01" in result.nan_reasons[key], key
    assert s["icl/natural_ablation_total"] == pytest.approx(0.008)
    assert "natural side" in result.nan_reasons["icl/icl_natural_cosine"]
    assert result.unexplained_nans() == []
    assert_every_scalar_is_a_statistic_or_says_why_not(result)


def test_comparison_uses_the_configured_top_k_beside_its_chance_level(fake_passes):
    natural = torch.tensor([[0.0, 0.4, 0.0, 0.1], [0.3, 0.0, 0.0, 0.2]])
    fake_passes(ICL_EFFECTS, natural)
    result = icl_heads.measure(FakeCheckpoint(LOOPING), **family_params("icl_heads", top_k=2))
    s = result.scalars
    # ICL top 2 = heads {0, 1}; natural top 2 = heads {1, 4}: one shared of three
    assert s["icl/icl_natural_top2_jaccard"] == pytest.approx(1 / 3)
    # two random 2-sets of 8 heads: P(overlap 1) = 2 * 6 / 28, P(overlap 2) = 1 / 28 -> 12/28 * 1/3 + 1/28
    assert s["icl/icl_natural_topk_jaccard_chance"] == pytest.approx(5 / 28)
    assert s["icl/icl_natural_cosine"] == pytest.approx(0.18 / math.sqrt(0.38 * 0.30))
    shares = (0.4, 0.1, 0.3, 0.2)
    assert s["icl/natural_ablation_neff"] == pytest.approx(math.exp(-sum(p * math.log(p) for p in shares)))
    assert s["icl/natural_ablation_total"] == pytest.approx(1.0) and s["icl/natural_loop_prompts"] == 1
    assert "icl/icl_natural_top5_jaccard" not in s and result.unexplained_nans() == []
    assert_every_scalar_is_a_statistic_or_says_why_not(result)
    # natural rows are indexed by natural prompt: the second does not loop (zero effect, zero targets)
    natural = result.samples["icl/natural_ablation_total"]
    assert natural.prompts == "natural" and natural.values.shape == (2, 2, 4) and natural.weights.tolist() == [3, 0]
    assert not natural.values[1].any() and result.samples["icl/ablation_total"].prompts == "icl_repeat"


def test_natural_targets_start_at_the_first_copy_like_the_icl_ones(fake_passes):
    calls = fake_passes(ICL_EFFECTS, ICL_EFFECTS)
    icl_heads.measure(FakeCheckpoint(LOOPING), **family_params("icl_heads"))
    icl, natural = calls
    assert icl.mask[0].nonzero().flatten().tolist() == list(range(12, 35))  # icl_repeat: from passage 2 on
    # prompt (40, 41) + generation 1 2 3 4 3 4 3 4: the loop (3, 4) starts at sequence index 4 and its first
    # copy at 6; the first instance (4, 5) is not a copy and is not a target
    assert natural.ids.tolist() == [[40, 41, 1, 2, 3, 4, 3, 4, 3, 4]]
    assert natural.mask[0].nonzero().flatten().tolist() == [6, 7, 8]


def test_no_natural_loop_and_no_icl_effect_give_nan_with_reasons(fake_passes):
    fake_passes(NOISE)
    result = icl_heads.measure(
        FakeCheckpoint(NOT_LOOPING), **family_params("icl_heads", top_k=3, min_effect_total=0.01)
    )
    s = result.scalars
    for key in ("icl/ablation_top1_share", "icl/ablation_top3_share", "icl/ablation_neff", "icl/ablation_gini"):
        assert math.isnan(s[key]) and "min_effect_total" in result.nan_reasons[key], key
    assert math.isnan(s["icl/ablation_vs_induction_spearman"])
    for key in ("icl/natural_ablation_neff", "icl/natural_ablation_total", "icl/icl_natural_top3_jaccard"):
        assert math.isnan(s[key]) and "no prompt's continuation loops" in result.nan_reasons[key], key
    assert s["icl/natural_loop_prompts"] == 0 and s["icl/icl_natural_topk_jaccard_chance"] > 0
    assert result.unexplained_nans() == []
    assert_every_scalar_is_a_statistic_or_says_why_not(result)


def test_without_a_threshold_no_positive_effect_is_still_nan_in_the_samples(fake_passes):
    fake_passes(-ICL_EFFECTS, ICL_EFFECTS)  # no head helps copying: no distribution over heads, nothing to compare
    result = icl_heads.measure(FakeCheckpoint(LOOPING), **family_params("icl_heads", min_effect_total=0.0))
    for key in ("icl/ablation_neff", "icl/ablation_vs_induction_spearman", "icl/icl_natural_cosine"):
        assert math.isnan(result.scalars[key]) and "no head has a positive" in result.nan_reasons[key], key
    assert result.scalars["icl/ablation_total"] == 0 and math.isfinite(result.scalars["icl/natural_ablation_neff"])
    assert_every_scalar_is_a_statistic_or_says_why_not(result)


def test_constant_induction_scores_give_a_reasoned_nan_correlation(fake_passes):
    fake_passes(ICL_EFFECTS, ICL_EFFECTS, induction=torch.full((2, 4), 0.25))
    result = icl_heads.measure(FakeCheckpoint(LOOPING), **family_params("icl_heads"))
    assert math.isnan(result.scalars["icl/ablation_vs_induction_spearman"])
    assert "same for every head" in result.nan_reasons["icl/ablation_vs_induction_spearman"]
    assert result.unexplained_nans() == []
    fake_passes(ICL_EFFECTS, ICL_EFFECTS)  # the opposite: induction ranks the heads as the effects do
    rho = icl_heads.measure(FakeCheckpoint(LOOPING), **family_params("icl_heads")).scalars
    assert rho["icl/ablation_vs_induction_spearman"] > 0.8


# --- bootstrap intervals of the concentration react to how the effect is spread over prompts ---


def concentration_intervals(sums: np.ndarray, targets: np.ndarray) -> tuple[FamilyResult, dict]:
    reported = concentration(
        "icl/ablation", EffectRows(torch.from_numpy(sums), torch.from_numpy(targets)), "p", 3, 0.01
    )
    reps = replicates(reported.samples, 1000, seed=0)
    return reported, {key: list(percentile(values, 0.9)) for key, values in reps.items()}


def test_intervals_are_zero_width_for_identical_prompts_and_wide_when_one_prompt_carries_the_effect():
    n, targets = 20, np.full(20, 10.0)
    spread = np.full((2, 4), 0.01)  # every prompt: a little effect on every head
    heterogeneous = np.broadcast_to(spread * 10, (n, 2, 4)).copy()
    heterogeneous[0, 0, 0] += 40.0  # one prompt carries a large effect of head (0, 0)
    pooled = heterogeneous.sum(0) / targets.sum()
    identical = np.broadcast_to(pooled * 10, (n, 2, 4)).copy()  # the same pooled vector on every prompt
    same, same_ci = concentration_intervals(identical, targets)
    mixed, mixed_ci = concentration_intervals(heterogeneous, targets)
    for key in ("icl/ablation_total", "icl/ablation_top1_share", "icl/ablation_top3_share", "icl/ablation_neff"):
        assert same.scalars[key] == pytest.approx(mixed.scalars[key]), key  # same reported values ...
        low, high = same_ci[key]
        assert high - low == pytest.approx(0, abs=1e-9), key  # ... no spread over identical prompts ...
        assert mixed_ci[key][1] - mixed_ci[key][0] > 0.05, key  # ... and a wide one when one prompt has it all
    # resamples without the one prompt keep only the small spread effect (total 0.08, top-1 share 1/8)
    assert mixed_ci["icl/ablation_total"][0] == pytest.approx(0.08)
    assert mixed_ci["icl/ablation_top1_share"][0] == pytest.approx(1 / 8)
    # pooled: head (0, 0) 0.01 + 40 / 200 = 0.21, the other seven 0.01 each: total 0.28, top-1 share 0.75
    assert mixed.scalars["icl/ablation_total"] == pytest.approx(0.28)
    assert mixed.scalars["icl/ablation_top1_share"] == pytest.approx(0.75)


def test_mode_auto_runs_exact_ablation_up_to_exact_max_heads_and_attribution_above():
    small, large = Shape(2, 32, 4, 500, 512), Shape(12, 768, 12, 50304, 2048)  # 8 heads; 144 (Pythia-160m)
    assert icl_heads.estimator("auto", small, 32) == "exact" and icl_heads.estimator("auto", large, 32) == "attribution"
    assert icl_heads.estimator("auto", small, 7) == "attribution" and icl_heads.estimator("auto", large, 144) == "exact"
    assert icl_heads.estimator("exact", large, 0) == "exact" and icl_heads.estimator("off", small, 32) == "off"

"""ICL head scores on attention patterns and models whose answers are known by construction."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from ckptstudy.measure.attention_stats import StatsRequest
from ckptstudy.measure.budget import GB, MemoryBudget
from ckptstudy.measure.capture import capture, capture_stats, model_parts
from ckptstudy.metrics import icl_heads
from ckptstudy.metrics.icl_heads import (
    copy_rows,
    icl_score,
    loss_score,
    next_token_nll,
    pattern_scores,
    repeat_nll_gain,
    repeat_pattern_positions,
)
from ckptstudy.params import check_family
from ckptstudy.reference import head_pattern_sums
from ckptstudy.stats.bootstrap import statistic
from configured import family_params, job_context
from conftest import tiny_neox

R = 5
SEQ = 1 + 2 * R


def pattern(kind: str, batch: int = 2) -> torch.Tensor:
    """Attention [batch, 1, SEQ, SEQ] with every row on one chosen key (row 0 on itself)."""
    attn = torch.zeros(batch, 1, SEQ, SEQ)
    attn[:, :, 0, 0] = 1
    for q in range(1, SEQ):
        if kind == "prev":
            k = q - 1
        elif kind == "induction":
            k = q - R + 1 if q > R else 0
        elif kind == "bos":
            k = 0
        attn[:, :, q, k] = 1
    return attn


@pytest.mark.parametrize(
    ("kind", "expected"),
    # query 1's previous token is BOS, so BOS and induction heads score 1/(2R) as previous-token heads
    [("prev", (0.0, 0.0, 1.0)), ("induction", (1.0, 0.0, 1 / (2 * R))), ("bos", (0.0, 0.0, 1 / (2 * R)))],
)
def test_head_pattern_scores_on_hand_built_attention(kind, expected):
    sums = head_pattern_sums(pattern(kind), R)  # [3, head]: induction, duplicate, previous-token
    counts = torch.tensor([R, R, 2 * R]) * 2
    assert (sums[:, 0] / counts).tolist() == pytest.approx(expected)


def test_positions_follow_the_definition():
    pos = repeat_pattern_positions(3)  # BOS a b c a b c
    q, k = pos["induction"]
    assert q.tolist() == [4, 5, 6] and k.tolist() == [2, 3, 4]
    assert pos["duplicate"][1].tolist() == [1, 2, 3]
    assert pos["prev_token"][1].tolist() == [0, 1, 2, 3, 4, 5]


def zero_qk_model():
    """Every query-key product is 0, so each query attends uniformly to all keys up to itself."""
    model = tiny_neox()
    with torch.no_grad():
        for layer in model.gpt_neox.layers:
            qkv = layer.attention.query_key_value
            heads, hd = (
                model.config.num_attention_heads,
                model.config.hidden_size // model.config.num_attention_heads,
            )
            w = qkv.weight.view(heads, 3, hd, -1)
            b = qkv.bias.view(heads, 3, hd)
            w[:, :2] = 0  # query and key rows of every head
            b[:, :2] = 0
    return model


def test_uniform_attention_model_gives_exact_closed_form_scores():
    model = zero_qk_model()
    r = 10
    ids = torch.cat([torch.zeros(3, 1, dtype=torch.long), torch.randint(2, 500, (3, r)).repeat(1, 2)], dim=1)
    cap = capture(model, ids, attn_fn=lambda _l, attn, _ids: head_pattern_sums(attn, r), batch_size=2)
    scores = torch.stack(cap.attn) / (torch.tensor([r, r, 2 * r])[None, :, None] * 3)
    # query q sees q + 1 keys uniformly: each single-key pattern gets 1 / (q + 1)
    second = torch.arange(r + 1, 2 * r + 1)
    every = torch.arange(1, 2 * r + 1)
    expected_induction = (1.0 / (second + 1)).mean()
    expected_prev = (1.0 / (every + 1)).mean()
    parts = model_parts(model)
    assert scores.shape == (parts.n_layers, 3, parts.n_heads)
    torch.testing.assert_close(scores[:, 0], torch.full((2, 4), float(expected_induction)))
    torch.testing.assert_close(scores[:, 1], torch.full((2, 4), float(expected_induction)))
    torch.testing.assert_close(scores[:, 2], torch.full((2, 4), float(expected_prev)))


def test_hooks_match_output_attentions():
    model = tiny_neox(seed=3)
    r = 8
    ids = torch.cat([torch.zeros(4, 1, dtype=torch.long), torch.randint(2, 500, (4, r)).repeat(1, 2)], dim=1)
    cap = capture(model, ids, attn_fn=lambda _l, attn, _ids: head_pattern_sums(attn, r), batch_size=3)
    with torch.no_grad():
        full = model(input_ids=ids, output_attentions=True).attentions
    for layer, attn in enumerate(full):
        torch.testing.assert_close(cap.attn[layer], head_pattern_sums(attn, r))


def test_token_nll_and_loss_scores():
    logits = torch.log(torch.tensor([[[0.5, 0.5], [0.9, 0.1], [0.2, 0.8]]]))
    ids = torch.tensor([[0, 1, 1]])
    nll = next_token_nll(logits, ids)  # one row: the NLL of tokens 1 and 2
    torch.testing.assert_close(nll, -torch.log(torch.tensor([0.5, 0.1])))
    by_pos = torch.tensor([5.0, 4.0, 4.0, 3.0, 9.0, 1.0, 1.0, 1.0, 1.0, 1.0])  # R = 4: tokens 2..4 vs 6..8
    assert repeat_nll_gain(by_pos, 4) == pytest.approx((4 + 4 + 3) / 3 - 1.0)
    assert icl_score(torch.arange(10.0), late=8, early=2, window=1) == pytest.approx(6.0)
    assert icl_score(torch.arange(10.0), late=500, early=2, window=1) == pytest.approx(8.0)  # clipped


@pytest.mark.parametrize(
    ("param", "value", "valid"),
    [
        ("mode", "exakt", "one of auto, exact, attribution, off"),
        ("ablation", "none", "one of zero, mean"),
        ("score", "prob", "one of logprob, contrast"),
        ("top_k", 0, "an integer >= 1"),
        ("window", 0, "an integer >= 1"),
        ("rate_cycles", 0, "an integer >= 1"),
        ("max_rows", 0, r"an integer >= 1 \(or null\)"),
        ("validate_k", -1, "an integer >= 0"),
        ("late_position", -1, "an integer >= 0"),
        ("early_position", -5, "an integer >= 0"),
        ("min_effect_total", -0.1, "a number >= 0"),
    ],
)
def test_every_parameter_is_checked_against_its_declared_range(param, value, valid):
    # config.validate runs this on the composed config (tests/test_families.py: at composition, every family)
    values = {"_target_": "ckptstudy.metrics.icl_heads.measure", **family_params("icl_heads", **{param: value})}
    with pytest.raises(ValueError, match=rf"^metrics\.icl_heads\.{param}={value!r} is not valid; valid: {valid}$"):
        check_family("icl_heads", values)


def test_empty_long_text_gives_an_icl_score_nan_with_the_probes_reason():
    r = 6
    ids = torch.cat([torch.zeros(3, 1, dtype=torch.long), torch.randint(2, 500, (3, r)).repeat(1, 2)], dim=1)
    probes = SimpleNamespace(
        repeat_length=r,
        random_repeat=ids,
        long_text=torch.zeros(0, 64, dtype=torch.long),
        empty_reason=lambda probe: "no single document has 64 tokens: long_text is empty",
    )
    ctx = job_context(tiny_neox(), None, probes, batch_size=2, budget=MemoryBudget(2 * GB, "test"))
    result = pattern_scores(ctx, 3)
    result.update(loss_score(ctx, 500, 50, 9))
    assert math.isnan(result.scalars["icl/icl_score"])
    assert result.nan_reasons["icl/icl_score"] == "no single document has 64 tokens: long_text is empty"
    assert math.isfinite(result.scalars["icl/induction_max"]) and result.unexplained_nans() == []


def test_statistics_of_the_per_prompt_rows_equal_the_summed_passes():
    r = 6
    gen = torch.Generator().manual_seed(0)
    ids = torch.cat([torch.zeros(5, 1, dtype=torch.long), torch.randint(2, 500, (5, r), generator=gen).repeat(1, 2)], 1)
    probes = SimpleNamespace(
        repeat_length=r, random_repeat=ids, long_text=torch.randint(2, 500, (3, 40), generator=gen)
    )
    ctx = job_context(tiny_neox(), None, probes, batch_size=2, budget=MemoryBudget(2 * GB, "test"))
    result = pattern_scores(ctx, 3)
    result.update(loss_score(ctx, 30, 5, 3))
    keys = {"icl/induction_max", "icl/induction_top3_mean", "icl/prev_token_max", "icl/duplicate_max"}
    assert set(result.samples) == set(result.scalars) == keys | {"icl/repeat_nll_gain", "icl/icl_score"}
    assert result.samples["icl/induction_max"].values.shape == (5, 2, 4)  # per prompt, layer, head
    # the statistics of the per-prompt rows equal the pooled computation of a pass that sums over rows (float32)
    summed = capture_stats(
        ctx.model, ids, StatsRequest(diagonals=repeat_pattern_positions(r)), logits_fn=next_token_nll
    )
    counts = torch.tensor([r, r, 2 * r]) * ids.shape[0]
    scores = torch.stack([layer["diagonal"] for layer in summed.attn]) / counts[None, :, None]
    assert result.scalars["icl/induction_max"] == pytest.approx(float(scores[:, 0].max()), rel=1e-5)
    assert result.scalars["icl/prev_token_max"] == pytest.approx(float(scores[:, 2].max()), rel=1e-5)
    assert result.scalars["icl/induction_top3_mean"] == pytest.approx(
        float(scores[:, 0].flatten().topk(3).values.mean()), rel=1e-5
    )
    torch.testing.assert_close(
        torch.from_numpy(result.heads["icl/induction"]), scores[:, 0].float(), rtol=1e-5, atol=1e-7
    )
    gain = repeat_nll_gain(summed.logits / ids.shape[0], r)
    assert result.scalars["icl/repeat_nll_gain"] == pytest.approx(gain, rel=1e-5, abs=1e-5)
    long = capture_stats(ctx.model, probes.long_text, StatsRequest(), logits_fn=next_token_nll)
    old_score = icl_score(long.logits / probes.long_text.shape[0], 30, 5, 3)
    assert result.scalars["icl/icl_score"] == pytest.approx(old_score, rel=1e-5, abs=1e-5)


def test_copy_rows_on_known_continuations():
    continuations = torch.tensor([[1, 2, 3, 1], [4, 5, 0, 4], [1, 2, 3, 9]])
    passages = torch.tensor([[1, 2, 3], [4, 5, 6], [1, 2, 3]])
    copied, accuracy = copy_rows(continuations, passages)
    assert copied.tolist() == [1, 0, 0] and accuracy.tolist() == pytest.approx([1, 0.75, 0.75])
    # a model that never copies: no row and no token is a copy
    copied, accuracy = copy_rows(passages + 100, passages)
    assert copied.tolist() == [0, 0, 0] and accuracy.tolist() == [0, 0, 0]


@pytest.mark.parametrize(("mode", "params"), [("exact", {}), ("attribution", {"validate_k": 2})])
def test_every_statistic_over_prompts_has_a_sample_that_gives_it_on_the_micro_checkpoint(
    final_micro_context, mode, params
):
    ctx = final_micro_context
    result = icl_heads.measure(ctx, **family_params("icl_heads", mode=mode, **params))
    declared = {"icl/natural_loop_prompts", "icl/icl_natural_topk_jaccard_chance", "icl/ablation_exact"}
    declared |= {"icl/attribution_spearman"} if params else set()
    assert result.scalars["icl/ablation_exact"] == float(mode == "exact")  # the record says which estimator ran
    assert set(result.no_interval) == declared and all(len(why) > 10 for why in result.no_interval.values())
    assert set(result.samples) == set(result.scalars) - declared
    assert result.unexplained_nans() == []
    # the top-k head sets of the bootstrap's vectors are the reported ones (ties broken alike)
    jaccard = "icl/icl_natural_top3_jaccard"
    assert math.isfinite(result.scalars[jaccard]) and statistic(jaccard, result.samples) == result.scalars[jaccard]
    natural, icl = result.samples["icl/natural_ablation_total"], result.samples["icl/ablation_total"]
    assert natural.prompts == "natural" and natural.n == ctx.probes.natural.shape[0]
    assert icl.prompts == "icl_repeat" and icl.n == ctx.probes.icl_repeat.shape[0]
    assert (natural.weights > 0).sum() <= result.scalars["icl/natural_loop_prompts"]  # non-looping rows are zero

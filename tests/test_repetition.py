"""Natural repetition: generation with padding, loop statistics on sequences with known cycles."""

from __future__ import annotations

import math

import pytest
import torch

from ckptstudy.generation import greedy_generate, left_pad
from ckptstudy.metrics.repetition import analyze_generations, cycle_entropies, slope
from conftest import tiny_neox


def test_left_pad_masks_the_padding():
    ids, mask = left_pad([[5, 6, 7], [8]], pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]] and mask.tolist() == [[1, 1, 1], [0, 0, 1]]


def test_padded_batch_generates_what_each_prompt_generates_alone():
    model = tiny_neox(seed=1)
    prompts = [[5, 6, 7, 8, 9, 10], [11, 12], [13, 14, 15, 16]]
    batched = greedy_generate(model, prompts, 10, pad_id=1, batch_size=3, desc=None)
    for row, prompt in enumerate(prompts):
        alone = greedy_generate(model, [prompt], 10, desc=None)
        assert torch.equal(batched.ids[row], alone.ids[0])
        torch.testing.assert_close(batched.entropy[row], alone.entropy[0], atol=1e-4, rtol=1e-4)
    reference = model.generate(torch.tensor([prompts[0]]), max_new_tokens=10, do_sample=False)
    assert batched.ids[0].tolist() == reference[0, len(prompts[0]) :].tolist()


def test_empty_prompt_is_refused():
    with pytest.raises(ValueError, match="empty prompt"):
        greedy_generate(tiny_neox(), [[1, 2], []], 3, desc=None)


def test_analysis_of_known_loops():
    G = 20
    no_loop = list(range(100, 100 + G))
    loop_at_8 = list(range(200, 208)) + [1, 2, 3, 4] * 3  # period 4 from index 8, 3 copies
    loop_at_2 = [9, 9] + [5, 6, 7] * 6  # period 3 from index 2, 6 copies
    ids = torch.tensor([no_loop, loop_at_8, loop_at_2])
    entropy = torch.arange(G, dtype=torch.float).repeat(3, 1)  # entropy at index t is t
    scalars, loops = analyze_generations(ids, entropy, max_cycles=4)
    assert scalars["rep/natural_rate"] == pytest.approx(2 / 3)
    assert loops["rep/onset"].tolist() == [-1, 8, 2] and loops["rep/period"].tolist() == [0, 4, 3]
    assert scalars["rep/onset_mean"] == 5 and scalars["rep/period_median"] == 3  # lower median of (3, 4)
    assert scalars["rep/loop_fraction"] == pytest.approx((12 + 18) / (3 * G))
    # cycle k starts at onset + (k-1) * period: (8, 2), (12, 5), (16, 8), then only row 3 (11)
    assert scalars["rep/cycle_entropy_1"] == 5 and scalars["rep/cycle_entropy_2"] == 8.5
    assert scalars["rep/cycle_entropy_3"] == 12 and scalars["rep/cycle_entropy_4"] == 11


def test_cycle_entropy_falls_when_the_model_grows_surer():
    entropy = torch.tensor([[3.0, 3.0, 2.0, 2.0, 1.0, 1.0, 0.5, 0.5]])
    means = cycle_entropies(entropy, torch.tensor([2]), torch.tensor([0]), torch.tensor([4]), 4)
    assert means.tolist() == [3.0, 2.0, 1.0, 0.5]
    assert slope(means) < 0
    assert slope(torch.tensor([1.0, 3.0, 5.0])) == pytest.approx(2.0)
    assert math.isnan(slope(torch.tensor([1.0, math.nan])))


def test_no_loop_at_all_gives_nan_onsets_not_errors():
    scalars, _ = analyze_generations(torch.arange(40).view(2, 20), torch.zeros(2, 20))
    assert scalars["rep/natural_rate"] == 0 and math.isnan(scalars["rep/onset_median"])
    assert scalars["rep/loop_fraction"] == 0


def test_prompts_that_fill_the_context_are_refused_by_name():
    from ckptstudy.metrics import JobContext

    ctx = JobContext(model=tiny_neox(), tokenizer=None, probes=None)  # context of 512 tokens
    assert ctx.room_after(torch.zeros(2, 500), 4, "natural") == 12
    with pytest.raises(ValueError, match=r"probes\.natural prompts \(510 tokens\) leave 2 .*need 4"):
        ctx.room_after(torch.zeros(2, 510), 4, "natural")

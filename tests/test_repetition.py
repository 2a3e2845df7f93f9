"""Natural repetition: loop statistics on sequences with known cycles (generation itself: test_generation.py)."""

from __future__ import annotations

import math

import pytest
import torch

from ckptstudy.measure.generation import Generation, NaturalLoops
from ckptstudy.metrics.repetition import analyze_generations, cycle_entropy_table, loop_summary, measure
from ckptstudy.metrics.repetition import within_row_slopes as slopes
from ckptstudy.record import RecordArrays
from configured import job_context, loop_rule
from conftest import tiny_neox


def natural_loops_of(ids: list[list[int]], entropy: torch.Tensor, definition: str = "suffix") -> NaturalLoops:
    """NaturalLoops of hand-written continuations (no prompt), as ctx.natural_loops() would return them."""
    ids = torch.tensor(ids)
    rule = loop_rule(definition=definition)
    period, copies, onset = rule.detect(ids)
    return NaturalLoops(ids[:, :0], Generation(ids, entropy), period, copies, onset, rule)


@pytest.mark.parametrize("definition", ["suffix", "paper"])
def test_analysis_of_known_loops(definition):
    G = 20
    no_loop = list(range(100, 100 + G))
    loop_at_8 = list(range(200, 208)) + [1, 2, 3, 4] * 3  # period 4 from index 8, 3 cycles
    loop_at_2 = [9, 9] + [5, 6, 7] * 6  # period 3 from index 2, 6 cycles
    ids = torch.tensor([no_loop, loop_at_8, loop_at_2])
    entropy = torch.arange(G, dtype=torch.float).repeat(3, 1)  # entropy at index t is t
    scalars, loops = analyze_generations(ids, entropy, loop_rule(definition=definition), max_cycles=4)
    assert scalars["rep/natural_rate"] == pytest.approx(2 / 3)
    assert loops["rep/onset"].tolist() == [-1, 8, 2] and loops["rep/period"].tolist() == [0, 4, 3]
    assert scalars["rep/onset_mean"] == 5 and scalars["rep/period_median"] == 3  # lower median of (3, 4)
    assert scalars["rep/loop_fraction"] == pytest.approx((12 + 18) / (3 * G))
    # one fixed set of loops for every cycle: those with >= 4 cycles, i.e. only row 3 (row 2 has 3 cycles);
    # its cycle k starts at 2 + 3 (k - 1): entropies 2, 5, 8, 11, slope 3
    assert [scalars[f"rep/cycle_entropy_{k}"] for k in (1, 2, 3, 4)] == [2, 5, 8, 11]
    assert scalars["rep/cycle_entropy_rows"] == 1
    assert scalars["rep/cycle_entropy_slope"] == pytest.approx(3)


def test_cycle_entropy_curve_does_not_change_its_set_of_loops_with_the_cycle():
    # a period-2 loop at 0.1 nats with 10 cycles and a period-10 loop at 2.0 nats with 2 cycles: no loop's
    # entropy changes from cycle to cycle. Averaging "rows with >= k cycles" gave 1.05, 1.05, 0.1, 0.1, 0.1
    # (slope -0.285); over the one set of loops with >= 5 cycles the curve is flat.
    short = [1, 2] * 10
    long = list(range(30, 40)) * 2
    entropy = torch.tensor([[0.1] * 20, [2.0] * 20])
    for definition in ("suffix", "paper"):
        scalars, loops = analyze_generations(torch.tensor([short, long]), entropy, loop_rule(definition=definition), 5)
        assert loops["rep/period"].tolist() == [2, 10] and loops["rep/copies"].tolist() == [10, 2]
        assert [scalars[f"rep/cycle_entropy_{k}"] for k in range(1, 6)] == pytest.approx([0.1] * 5)
        assert scalars["rep/cycle_entropy_rows"] == 1
        assert scalars["rep/cycle_entropy_slope"] == pytest.approx(0)


def test_cycle_entropy_slope_is_the_mean_within_loop_slope():
    # two loops of period 2 from index 0 with 4 cycles; entropy at cycle starts 0, 2, 4, 6:
    # row 1: 3, 2, 1, 0 (slope -1), row 2: 1, 1, 1, 1 (slope 0) -> mean slope -0.5, curve 2, 1.5, 1, 0.5
    ids = torch.tensor([[1, 2] * 4, [3, 4] * 4])
    entropy = torch.tensor([[3.0, 9, 2, 9, 1, 9, 0, 9], [1.0, 9, 1, 9, 1, 9, 1, 9]])
    scalars, _ = analyze_generations(ids, entropy, loop_rule(), max_cycles=4)
    assert [scalars[f"rep/cycle_entropy_{k}"] for k in (1, 2, 3, 4)] == [2, 1.5, 1, 0.5]
    assert scalars["rep/cycle_entropy_slope"] == pytest.approx(-0.5) and scalars["rep/cycle_entropy_rows"] == 2
    table = cycle_entropy_table(entropy, torch.tensor([2, 2]), torch.tensor([0, 0]), torch.tensor([4, 4]), 4)
    assert slopes(table).tolist() == pytest.approx([-1, 0])


@pytest.mark.parametrize(
    ("entropy", "sign"), [([3.0, 3.0, 2.0, 2.0, 1.0, 1.0, 0.5, 0.5], -1), ([0.5, 9, 1, 9, 2, 9, 3, 9], 1)]
)
def test_cycle_entropy_falls_when_the_model_grows_surer_and_rises_when_it_does_not(entropy, sign):
    # one period-2 loop with 4 cycles; the entropy at the cycle starts (indices 0, 2, 4, 6) falls, or rises
    scalars, _ = analyze_generations(torch.tensor([[1, 2] * 4]), torch.tensor([entropy]), loop_rule(), 4)
    curve = [scalars[f"rep/cycle_entropy_{k}"] for k in (1, 2, 3, 4)]
    assert curve == entropy[::2] and sign * scalars["rep/cycle_entropy_slope"] > 0
    assert slopes(torch.tensor([[1.0, 3.0, 5.0]])).tolist() == pytest.approx([2.0])


@pytest.mark.parametrize("definition", ["suffix", "paper"])
def test_single_token_collapse_is_counted_apart(definition):
    rows = [
        list(range(100, 120)),  # no loop
        [1, 2] + [7] * 18,  # one token forever: "loops" with period 2 from index 2, cycle (7, 7)
        [100, 101] + [5, 5, 6] * 6,  # period 3, a repeated token inside the cycle but two distinct tokens
        list(range(200, 208)) + [1, 2, 3, 4] * 3,  # period 4
    ]
    scalars, loops = analyze_generations(torch.tensor(rows), torch.zeros(4, 20), loop_rule(definition=definition), 5)
    assert loops["rep/period"].tolist() == [0, 2, 3, 4] and loops["rep/onset"].tolist() == [-1, 2, 2, 8]
    assert loops["rep/degenerate"].tolist() == [False, True, False, False]
    assert scalars["rep/natural_rate"] == 0.75
    assert scalars["rep/degenerate_rate"] == 0.25 and scalars["rep/natural_rate_nondegenerate"] == 0.5


class FakeContext:
    def __init__(self, natural: NaturalLoops):
        self.natural = natural

    def natural_loops(self) -> NaturalLoops:
        return self.natural


def test_no_loop_gives_nan_with_reasons_not_errors():
    ctx = FakeContext(natural_loops_of(torch.arange(40).view(2, 20).tolist(), torch.zeros(2, 20)))
    result = measure(ctx, max_cycles=3, save_generations=False)
    assert result.scalars["rep/natural_rate"] == 0 and result.scalars["rep/loop_fraction"] == 0
    assert result.scalars["rep/degenerate_rate"] == 0 and result.scalars["rep/cycle_entropy_rows"] == 0
    for key in ("rep/onset_median", "rep/period_median", "rep/cycle_entropy_1", "rep/cycle_entropy_slope"):
        assert math.isnan(result.scalars[key]) and "loop" in result.nan_reasons[key], key
    assert result.unexplained_nans() == []


def test_too_few_cycles_and_one_cycle_give_nan_with_reasons():
    natural = natural_loops_of([[1, 2, 3] * 4], torch.full((1, 12), 0.5))  # period 3 from 0, 4 cycles
    result, _ = loop_summary(natural, 1)
    assert result.scalars["rep/cycle_entropy_1"] == 0.5 and result.scalars["rep/cycle_entropy_rows"] == 1
    assert math.isnan(result.scalars["rep/cycle_entropy_slope"])
    assert "max_cycles=1" in result.nan_reasons["rep/cycle_entropy_slope"]
    natural = natural_loops_of([[5, 6, 7, 8] + [1, 2, 3] * 4], torch.zeros(1, 16))  # period 3 from 4, 4 cycles
    result, _ = loop_summary(natural, 5)
    assert result.scalars["rep/cycle_entropy_rows"] == 0 and math.isnan(result.scalars["rep/cycle_entropy_3"])
    assert "max_cycles=5" in result.nan_reasons["rep/cycle_entropy_3"] and result.unexplained_nans() == []


def test_bad_parameters_are_refused_at_composition_naming_them():
    from ckptstudy.config import compose_config
    from ckptstudy.params import MetricConfigError

    for override, valid in (("max_cycles=0", "an integer >= 1"), ("save_generations=maybe", "true or false")):
        with pytest.raises(
            MetricConfigError, match=rf"^metrics\.repetition\.{override.split('=')[0]}=.* valid: {valid}"
        ):
            compose_config([f"metrics.repetition.{override}"])


def test_prompts_that_fill_the_context_are_refused_by_name():
    ctx = job_context(tiny_neox(), None, None)  # context of 512 tokens
    assert ctx.room_after(torch.zeros(2, 500), 4, "natural") == 12
    with pytest.raises(ValueError, match=r"probes\.natural prompts \(510 tokens\) leave 2 .*need 4"):
        ctx.room_after(torch.zeros(2, 510), 4, "natural")


def test_every_statistic_is_a_statistic_over_the_natural_prompts():
    from ckptstudy.stats.bootstrap import replicates

    rows = [
        list(range(100, 120)),  # no loop
        [1, 2] + [7] * 18,  # degenerate loop from 2
        [100, 101] + [5, 5, 6] * 6,  # period 3 from 2, 6 cycles
        list(range(200, 208)) + [1, 2, 3, 4] * 3,  # period 4 from 8, 3 cycles
        [9] * 5 + list(range(300, 303)) * 5,  # period 3 from 5, 5 cycles
    ]
    entropy = torch.rand(5, 20, generator=torch.Generator().manual_seed(0))
    result, _ = loop_summary(natural_loops_of(rows, entropy), 3)
    assert len(result.samples) == 13  # 9 loop statistics, 3 cycle entropies, the slope
    assert set(result.scalars) - set(result.samples) == {"rep/cycle_entropy_rows"} == set(result.no_interval)
    assert {s.prompts for s in result.samples.values()} == {"natural"}
    assert result.samples["rep/onset_median"].statistic == "median_low"  # torch.median's lower middle
    # the values are those of the rows (onsets 2, 2, 8, 5 of the 4 looping rows; periods 2, 3, 4, 3)
    assert result.scalars["rep/onset_mean"] == pytest.approx(17 / 4) and result.scalars["rep/onset_median"] == 2
    assert result.scalars["rep/period_median"] == 3 and result.scalars["rep/natural_rate"] == pytest.approx(0.8)
    reps = replicates(result.samples, 50, 0)
    assert reps["rep/natural_rate"].std() > 0 and set(reps) == set(result.samples)  # prompts are resampled
    assert "samples/rep/natural_rate/values" in RecordArrays.of(result).members()  # saved with the record

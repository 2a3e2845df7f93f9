"""The memory budget: one function (`budget.fit_rows`, the inverse of the peak model in `measure.cost`) gives every
pass its rows per call; configured sizes are caps it lowers with a warning; a pass that cannot fit one row is
refused before the weights load, naming the pass, the bytes and the budget."""

from __future__ import annotations

import pytest
import torch

from ckptstudy.config import ConfigValueError, compose_config, model_shape
from ckptstudy.job import job_budget
from ckptstudy.measure.budget import (
    GB,
    BudgetError,
    MemoryBudget,
    call_rows,
    fit_rows,
    lowered,
    parse_budget,
    resolve_budget,
)
from ckptstudy.measure.cost import Pass, Shape, pass_peak_bytes
from ckptstudy.measure.precision import computing_in, upcast_bytes
from configured import job_context
from conftest import tiny_neox

PYTHIA_160M = Shape(n_layers=12, d_model=768, n_heads=12, vocab=50304, context=2048)


def passes() -> list[Pass]:
    return [
        Pass("plain forward", 500, 2048, None, 12),
        Pass("every position unembedded", 500, 2048, None, 12, logits="all"),
        Pass("fwd + bwd", 300, 1032, None, 12, 500, backward=True, logits="selected"),
        Pass("greedy decoding", 64, 32, None, 12, 1, decode=1000, logits="last"),
        Pass("groups of 13", 13 * 40, 512, None, 12, group=13, extra=5 * 768),
        Pass("half the budget", 400, 1032, None, 12, 500, logits="selected", keep_layers=12, share=0.5),
    ]


@pytest.mark.parametrize("budget_gb", [2, 6, 40])
@pytest.mark.parametrize("p", passes(), ids=lambda p: p.what)
def test_rows_per_call_are_the_largest_that_fit(p, budget_gb):
    budget = budget_gb * GB
    rows = fit_rows(p, PYTHIA_160M, budget, 4)
    assert rows % p.group == 0 and rows >= p.group
    assert pass_peak_bytes(p.with_batch(rows), PYTHIA_160M, 4) <= budget * p.share
    if rows < p.rows:  # one more group would not fit
        assert pass_peak_bytes(p.with_batch(rows + p.group), PYTHIA_160M, 4) > budget * p.share
    assert fit_rows(p, PYTHIA_160M, budget, 2) >= rows  # half the bytes per value: at least as many rows


def test_more_budget_never_gives_fewer_rows():
    p = passes()[1]
    rows = [fit_rows(p, PYTHIA_160M, gb * GB, 4) for gb in (2, 4, 8, 16, 32, 64)]
    assert rows == sorted(rows) and rows[0] < rows[-1]


def test_a_pass_that_cannot_fit_one_row_is_refused_naming_it():
    p = Pass("every position unembedded", 8, 2048, None, 12, logits="all")
    one_row = pass_peak_bytes(p.with_batch(1), PYTHIA_160M, 4)
    match = r"^every position unembedded: 1 row of 2048 tokens per call need .* GB"
    with pytest.raises(BudgetError, match=match) as err:
        fit_rows(p, PYTHIA_160M, one_row / 2, 4)
    assert "the memory budget is" in str(err.value) and "Raise memory_budget" in str(err.value)
    assert fit_rows(p, PYTHIA_160M, one_row, 4) == 1  # exactly one row's peak fits one row


def test_configured_size_caps_the_rows_and_a_lowered_cap_says_why():
    p = Pass("plain forward", 100, 2048, 16, 12, limit="batch_size")
    assert call_rows(p, PYTHIA_160M, 64 * GB, 4) == 16 and lowered(p, 16, PYTHIA_160M, 64 * GB, 4) is None
    small = call_rows(p, PYTHIA_160M, 1 * GB, 4)
    assert small < 16
    why = lowered(p, small, PYTHIA_160M, 1 * GB, 4)
    assert why.startswith(f"plain forward: {small} rows per call instead of batch_size=16")
    grouped = Pass("groups", 130, 256, 30, 12, limit="metrics.perturb.max_rows", group=13)
    assert call_rows(grouped, PYTHIA_160M, 64 * GB, 4) == 26  # whole groups under the cap
    assert call_rows(grouped.with_batch(5), PYTHIA_160M, 64 * GB, 4) == 13  # at least one group


def test_job_context_lowers_a_cap_once_with_a_warning(caplog):
    ctx = job_context(tiny_neox(), None, None, budget=MemoryBudget(int(0.01 * GB), "test"))
    p = Pass("plain forward", 64, 2048, 64, ctx.shape.n_layers)
    rows = ctx.rows(p)
    assert 1 <= rows < 64 and rows == ctx.rows(p)
    assert len(ctx.warnings) == 1 and "instead of batch_size=64" in ctx.warnings[0]
    assert sum("memory budget" in r.message for r in caplog.records) == 1
    assert ctx.rows(p.with_batch(None)) == rows and len(ctx.warnings) == 1  # no cap: nothing was lowered


def test_memory_budget_values():
    assert parse_budget("auto") is None and parse_budget("AUTO") is None and parse_budget(6) == 6.0
    for bad in ("lots", 0, -1, True, float("nan")):
        with pytest.raises(ValueError, match=r"memory_budget=.* is not valid; valid: auto, or a number of GB > 0"):
            parse_budget(bad)
    with pytest.raises(ConfigValueError, match="memory_budget='lots' is not valid"):
        compose_config(["memory_budget=lots"])
    with pytest.raises(ConfigValueError, match="batch_size=0 is not valid; valid: an integer >= 1"):
        compose_config(["batch_size=0"])
    assert resolve_budget(6, "cuda", 10 * GB).bytes == 6 * GB  # a number is taken as given, weights apart
    auto = resolve_budget("auto", "cuda:0", 2 * GB, free_bytes=40 * GB)
    assert auto.bytes == int(0.6 * 40 * GB - 2 * GB) and "60% of 40.0 GB" in auto.how
    assert resolve_budget("auto", "cpu", 1 * GB, free_bytes=10 * GB).bytes == 4 * GB  # half the RAM, minus weights
    with pytest.raises(BudgetError, match="leaves nothing for activations"):
        resolve_budget("auto", "cuda", 50 * GB, free_bytes=40 * GB)


def test_a_job_that_cannot_fit_fails_before_its_weights_load():
    cfg = compose_config(["model=pythia-160m", "memory_budget=0.01"])
    with pytest.raises(BudgetError, match="memory budget is 10 MB"):
        job_budget(cfg, model_shape(cfg.model), "cpu", 4)
    cfg = compose_config(["model=pythia-160m", "memory_budget=6"])
    assert job_budget(cfg, model_shape(cfg.model), "cpu", 4).bytes == 6 * GB


def test_meter_measures_a_part_apart_from_the_part_inside_it():
    import torch

    from ckptstudy.measure.meter import Meter

    meter = Meter("cpu")
    if not meter.available:
        pytest.skip("no /proc/self/clear_refs here: CPU peaks are NaN by design")
    with meter.part("outer"):
        a = torch.ones(64 * 2**20 // 4)  # 64 MB resident
        with meter.part("inner"):
            b = torch.ones(256 * 2**20 // 4)  # 256 MB resident, then freed
            del b
        del a
    with meter.part("small"):
        c = torch.ones(2**20 // 4)
        del c
    assert 240 * 2**20 <= meter.costs["inner"]["peak_bytes"] <= 300 * 2**20
    assert 60 * 2**20 <= meter.costs["outer"]["peak_bytes"] < 200 * 2**20  # the inner 256 MB left out
    assert meter.costs["small"]["peak_bytes"] < 32 * 2**20  # the freed 320 MB is not seen again


def test_a_family_computing_wider_pays_for_its_copy_of_the_weights():
    cfg = compose_config(["model=pythia-1.4b", "memory_budget=4", "metrics=[perturb]"])
    shape = model_shape(cfg.model)
    assert job_budget(cfg, shape, "cpu", 4).bytes == 4 * GB  # float32 weights: perturb needs no copy
    with pytest.raises(
        BudgetError, match=r"metrics.perturb computes in 32-bit floats: its copy of the weights, 2.6 GB"
    ):
        job_budget(cfg, shape, "cpu", 2)  # bfloat16 weights: 2 more bytes per parameter while perturb runs


def test_job_context_rows_leave_room_for_a_wider_copy_of_the_weights():
    model = tiny_neox().to(torch.bfloat16)
    shape = job_context(model, None, None).shape
    p = Pass("plain forward", 64, 8, None, shape.n_layers)  # rows far smaller than the copy of the weights
    upcast = upcast_bytes(shape.params, 2, 4)
    budget = MemoryBudget(int(upcast + pass_peak_bytes(p.with_batch(3), shape, 4)), "test")
    ctx = job_context(model, None, None, budget=budget, loaded_bytes=2)
    assert ctx.rows(p) == call_rows(p, shape, budget.bytes, 2)
    with computing_in(model, torch.float32):
        assert ctx.rows(p) == 3  # what is left beside the float32 copy
        assert call_rows(p, shape, budget.bytes, 4) > 3  # without the copy it would run more
    assert ctx.rows(p) == call_rows(p, shape, budget.bytes, 2)

"""Fault 4: NaN/inf in the weights or in the activations. Non-finite results are flagged in the record's
`warnings`, never passed off as ordinary numbers; the job does not crash, and a family that crashes on
them is a failed family with its error while the others still run."""

from __future__ import annotations

import math

import fault_helpers
import numpy as np
import torch
from fault_helpers import copy_suite, overrides, record_file, run
from safetensors.torch import load_file, save_file

from ckptstudy import results

out_root = fault_helpers.out_root  # fixtures

TENSOR = "gpt_neox.layers.0.mlp.dense_h_to_4h.weight"
FAMILIES = "[repetition,low_info]"


def damaged_suite(micro_suite, directory, change) -> tuple:
    suite = copy_suite(micro_suite, directory, [1600])
    path = suite / "step1600" / "model.safetensors"
    tensors = load_file(path)
    change(tensors[TENSOR])
    save_file(tensors, path, metadata={"format": "pt"})
    return suite


def add_crashing_family(cfg) -> None:
    cfg.metrics["crashy"] = {"_target_": "fault_helpers.crash_on_nonfinite_weights"}


def nonfinite_metrics(record: dict) -> list[str]:
    return [k for k, v in record.scalars.metrics.items() if not math.isfinite(v)]


def test_nonfinite_weights_are_flagged_and_a_crashing_family_fails_alone(micro_suite, out_root, tmp_path):
    def poison(weight):
        flat = weight.view(-1)
        flat[0], flat[1], flat[2] = math.nan, math.inf, -math.inf

    suite = damaged_suite(micro_suite, tmp_path / "suite", poison)
    record = run(overrides(out_root, suite, "step=1600", metrics=FAMILIES), edit=add_crashing_family)
    # the job finished and wrote its record; the family that crashes on NaN failed with its error
    assert results.read_record(record_file(out_root, 1600)).outcome.status == "failed"
    assert record.outcome.error["type"] == "MetricError"
    assert (
        "metrics.crashy: FloatingPointError: cannot measure: non-finite weights in" in record.outcome.error["message"]
    )
    assert "rep/natural_rate" in record.scalars.metrics and "lowinfo/enrich_low_info_natural" in record.scalars.metrics
    warnings = record.outcome.warnings
    assert f"weights: 3 non-finite values in {TENSOR}" in warnings
    assert record.provenance.nonfinite["weights"] == {TENSOR: 3}
    # every non-finite metric is flagged by name; none is hidden as a number
    bad = nonfinite_metrics(record)
    assert bad and all(any(w.startswith(f"metric {k} is non-finite") for w in warnings) for k in bad)
    # the table says so too, beside the numbers
    table = results.results_table(results.load_records(out_root, "smoke"))
    assert table["nonfinite"].tolist() == ["weights activations"]


def test_nonfinite_activations_from_finite_weights_are_flagged(micro_suite, out_root, tmp_path):
    def overflow(weight):  # finite weights whose products overflow float32
        generator = torch.Generator().manual_seed(0)
        weight.copy_(torch.sign(torch.randn(weight.shape, generator=generator)) * 3e38)

    suite = damaged_suite(micro_suite, tmp_path / "suite", overflow)
    record = run(overrides(out_root, suite, "step=1600", metrics=FAMILIES))
    warnings = record.outcome.warnings
    assert not any(w.startswith("weights:") for w in warnings)  # the weights are finite
    assert any(w.startswith("activations: non-finite values in the output of gpt_neox.layers.0") for w in warnings)
    assert "gpt_neox.layers.0" in record.provenance.nonfinite["activations"]
    bad = nonfinite_metrics(record)
    assert all(any(w.startswith(f"metric {k} is non-finite") for w in warnings) for k in bad)


def test_finite_checkpoint_has_no_nonfinite_warnings(micro_suite, out_root):
    record = run(overrides(out_root, micro_suite, "step=1600", metrics=FAMILIES))
    assert record.outcome.status == "ok" and record.provenance.nonfinite is None
    assert not any(w.startswith(("weights:", "activations:")) for w in record.outcome.warnings)
    # NaN with a reason (e.g. nothing to measure at this step) is a documented value, not a warning
    for key in nonfinite_metrics(record):
        assert key in record.scalars.nan_reasons and not record.scalars.nan_reasons[key].startswith("unexplained")


def test_nonfinite_warnings_cover_arrays_of_a_suspect_checkpoint():
    from ckptstudy.job import nonfinite_warnings
    from ckptstudy.metrics import FamilyResult

    result = FamilyResult()
    result.value("x/fine", 1.0, "a constant")
    result.nan("x/explained", "no loop")
    result.value("x/unexplained", math.inf, "a constant")  # no nan_reason: unexplained
    result.heads["x/heads"] = np.array([[1.0, math.nan], [math.inf, 2.0]])
    assert nonfinite_warnings(result, suspect=False) == ["metric x/unexplained is non-finite (inf)"]
    assert nonfinite_warnings(result, suspect=True) == [
        "metric x/explained is non-finite (nan)",
        "metric x/unexplained is non-finite (inf)",
        "array x/heads: 2 of 4 values are non-finite",
    ]

"""`ckptstudy-plan`: checkpoints, download bytes, per-family passes and their cost, from the composed config
only (no weights). Estimates are checked for structure and arithmetic, never against timings."""

from __future__ import annotations

import json
from dataclasses import asdict, replace

import pytest

from ckptstudy.measure.cost import Pass, Shape, pass_flops
from ckptstudy.tools import machine, plan
from ckptstudy.tools.machine import Machine
from ckptstudy.tools.plan import make_plan

FIXED = Machine("fixed", gflops=100.0, bandwidth_gbs=10.0, layer_overhead_ms=0.2, source="test")


@pytest.mark.parametrize(
    ("model", "params"),
    [("pythia-70m", 70_426_624), ("pythia-160m", 162_322_944), ("pythia-1.4b", 1_414_647_808)],
)
def test_parameter_count_matches_pythia(model, params):
    result = make_plan([f"model={model}", "schedule=final"], machine=FIXED)
    assert result["params"] == params
    assert result["download_bytes_per_checkpoint"] == 2 * params  # float16 hub files


def test_all_checkpoints_of_pythia_160m():
    result = make_plan(["model=pythia-160m", "schedule=all"], machine=FIXED)
    assert result["checkpoints"] == 154 and result["steps"][0] == 0 and result["steps"][-1] == 143000
    assert result["download_bytes_total"] == 154 * result["download_bytes_per_checkpoint"]
    assert result["cpu"]["sweep_seconds"] == pytest.approx(154 * result["cpu"]["job_seconds"])
    assert set(result["families"]) <= set(result["cpu"]["families"])


def test_a_step_sweep_on_the_command_line_is_the_plan():
    # `ckptstudy -m step=...` runs those steps whatever the schedule: so does the plan (it planned all 154 and
    # refused a comma list before the sweep parser was shared)
    result = make_plan(["model=pythia-160m", "step=1000,2000"], machine=FIXED)
    assert result["checkpoints"] == 2 and result["steps"] == [1000, 2000]
    assert make_plan(["model=pythia-160m", "step=final"], machine=FIXED)["steps"] == [143000]


def test_paper_setup_plans_attribution_on_bf16_gpu():
    result = make_plan(["experiment=repetitions_not_alike"], machine=FIXED, gpu="H100-SXM")
    assert result["model"] == "pythia-1.4b" and result["checkpoints"] == 10
    assert result["weights_bytes_gpu"] == 2 * result["params"]  # dtype auto = bfloat16 on a GPU
    icl = [p["what"] for p in result["cpu"]["families"]["icl_heads"]["passes"]]
    assert any("attribution" in what for what in icl) and any("attribution check" in what for what in icl)
    # rows per call from the memory budget (auto: 60% of the H100's 80 GB minus the weights), none configured
    budget = result["gpu"]["budget"]["bytes"]
    assert 0.6 * 80 * 2**30 - result["weights_bytes_gpu"] == pytest.approx(budget, abs=1)
    gpu_icl = result["gpu"]["families"]["icl_heads"]["passes"]
    natural_attribution = next(p for p in gpu_icl if "natural" in p["what"])
    assert 1 < natural_attribution["batch"] < natural_attribution["rows"]  # chunks that fit, not everything at once
    assert all(p["peak_bytes"] <= budget for f in result["gpu"]["families"].values() for p in f["passes"])
    assert result["gpu"]["peak_bytes"] <= budget < 2 * result["gpu"]["peak_bytes"]  # the largest pass fills it
    natural = result["cpu"]["families"]["natural generation (shared)"]["passes"][0]
    assert natural["rows"] == 1000 and natural["tokens"] == 32 and natural["decode"] == 1000
    assert "bf16" in result["gpu"]["machine"]["source"]


def test_micro_suite_is_local_and_uses_the_suite_shape():
    result = make_plan(["model=micro"], machine=FIXED)
    assert result["download_bytes_total"] == 0 and result["checkpoints"] == 22
    assert result["shape"]["vocab"] == 2048 and result["shape"]["context"] == 128


def test_probe_sizes_and_family_parameters_drive_the_cost():
    base = make_plan(["model=pythia-70m", "schedule=final"], machine=FIXED)
    off = make_plan(["model=pythia-70m", "schedule=final", "metrics.icl_heads.mode=off"], machine=FIXED)
    assert off["cpu"]["families"]["icl_heads"]["flops"] < base["cpu"]["families"]["icl_heads"]["flops"] / 10
    more = make_plan(["model=pythia-70m", "schedule=final", "probes.long_text.n=16"], machine=FIXED)
    assert more["cpu"]["families"]["low_info"]["flops"] > base["cpu"]["families"]["low_info"]["flops"]
    fewer = make_plan(["model=pythia-70m", "schedule=final", "metrics=[repetition]"], machine=FIXED)
    assert set(fewer["cpu"]["families"]) == {"natural generation (shared)", "repetition"}


def test_forward_flops_by_hand():
    shape = Shape(n_layers=2, d_model=8, n_heads=2, vocab=10, context=32)
    one = Pass("x", rows=3, seq=4, batch=3, layers=2, unembed=4, attention="sdpa")
    expected = 3 * (4 * 2 * 24 * 64 + 2 * 2 * 16 * 8 + 4 * 2 * 8 * 10)
    assert pass_flops(one, shape) == expected
    eager = Pass("x", rows=3, seq=4, batch=3, layers=2, unembed=4, attention="eager")
    assert pass_flops(eager, shape) == expected + 3 * 2 * 2 * 16 * 8  # eager computes the masked half too
    assert pass_flops(Pass("x", 3, 4, 3, 2, unembed=4, attention="sdpa", backward=True), shape) == 3 * expected


def test_gpu_classes_and_unknown_ones():
    m = machine.gpu_machine("A100-80GB", "bfloat16")
    assert m.gflops == pytest.approx(312e3 * machine.GPU_EFFICIENCY["compute"])
    with pytest.raises(ValueError, match="unknown GPU class 'Z80'"):
        machine.gpu_machine("Z80", "bfloat16")


def test_cli_prints_the_plan_and_json(capsys, monkeypatch):
    monkeypatch.setattr(plan, "load_machine", lambda *a, **k: FIXED)
    plan.cli(["model=pythia-160m", "schedule=log"])
    text = capsys.readouterr().out
    assert "checkpoints: 19" in text and "download: 309.6 MB per checkpoint" in text and "job total" in text
    plan.cli(["--json", "--gpu", "T4", "model=pythia-160m", "schedule=final"])
    data = json.loads(capsys.readouterr().out)
    assert data["checkpoints"] == 1 and data["gpu"]["machine"]["name"] == "T4"


def _store_calibration(root, fields: dict) -> None:
    import torch

    stored = {"cpu": machine.cpu_name(), "threads": torch.get_num_threads(), "machine": fields}
    path = root / machine.CALIBRATION
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(stored))


CALIBRATED = replace(FIXED, gemm_widths=((128, 50.0), (1024, 100.0)), vocab_gelems=1.0)


def test_stored_calibration_is_used_for_this_cpu(tmp_path):
    _store_calibration(tmp_path, asdict(CALIBRATED))
    assert machine.load_machine(tmp_path) == CALIBRATED


def test_a_calibration_without_the_width_and_vocabulary_rates_is_measured_again(tmp_path, monkeypatch):
    _store_calibration(tmp_path, asdict(FIXED))  # as stored before vocab_gelems existed
    monkeypatch.setattr(machine, "measure_machine", lambda: CALIBRATED)
    assert machine.load_machine(tmp_path) == CALIBRATED


def test_the_matmul_rate_follows_the_inner_width():
    assert CALIBRATED.rate(128) == CALIBRATED.rate(64) == 50e9  # below the narrowest width: its rate
    assert CALIBRATED.rate(1024) == CALIBRATED.rate(4096) == 100e9
    assert CALIBRATED.rate(362) == pytest.approx(75e9, rel=1e-3)  # log-linear: 362 ~ sqrt(128 x 1024)
    assert FIXED.rate(128) == FIXED.rate(4096) == 100e9  # no widths measured (a GPU class): one rate
    assert FIXED.vocab_rate() == 10e9 / machine.VOCAB_BYTES  # no vocabulary rate: bandwidth-bound


def test_vocabulary_passes_cost_their_own_time():
    shape = Shape(n_layers=2, d_model=128, n_heads=4, vocab=50304, context=512)
    scored = Pass("x", rows=8, seq=64, batch=8, layers=2, unembed=32, logits="selected")
    unscored = replace(scored, logits="none")
    assert pass_flops(scored, shape) == pass_flops(unscored, shape)  # same unembedding either way
    extra = machine.pass_seconds(scored, shape, CALIBRATED, 4) - machine.pass_seconds(unscored, shape, CALIBRATED, 4)
    assert extra == pytest.approx(8 * 32 * 50304 / 1e9)


def test_decoding_counts_the_growing_cache_and_a_static_cache_costs_its_whole_length():
    shape = Shape(n_layers=2, d_model=8, n_heads=2, vocab=10, context=64)
    p = Pass("gen", rows=3, seq=4, batch=3, layers=2, unembed=1, decode=5, logits="last")
    prefill = pass_flops(replace(p, decode=0), shape)
    dense = 2 * shape.layer_matmul_params
    steps = [3 * (2 * (dense + 4 * 8 * (4 + k)) + 2 * 8 * 10) for k in range(1, 6)]  # keys = prompt + k at step k
    assert pass_flops(p, shape) == prefill + sum(steps)
    slow = replace(FIXED, bandwidth_gbs=1e-6)  # streaming-bound: the cache bytes decide every step
    growing = machine.decoding_seconds(p, shape, slow, 4)
    static = machine.decoding_seconds(p, shape, replace(slow, static_cache=True), 4)
    weights = shape.params * 4
    per_key = 2 * 2 * 3 * 8 * 4 / 1e3  # cache bytes per key position / bandwidth (1e3 B/s)
    overheads = 5 * (2 * 0.2) / 1e3 + 5 * 3 * 10 * machine.VOCAB_PASSES["last"] / slow.vocab_rate()
    assert growing == pytest.approx(5 * weights / 1e3 + per_key * sum(4 + k for k in range(1, 6)) + overheads)
    assert static == pytest.approx(5 * weights / 1e3 + per_key * 5 * (4 + 5) + overheads)
    assert machine.gpu_machine("A100-80GB", "bfloat16").static_cache is False


def test_peak_disk_with_and_without_eviction():
    base = make_plan(["model=pythia-160m", "schedule=all"], machine=FIXED)
    per = base["download_bytes_per_checkpoint"]
    assert base["disk"]["peak_bytes_without_evict"] == 154 * per  # every revision stays in the HF cache
    assert base["disk"]["peak_bytes_with_evict"] == per  # one revision at a time, the basic launcher
    ahead = make_plan(
        ["model=pythia-160m", "schedule=all", "checkpoints.prefetch_ahead=2", "hydra/launcher=joblib"]
        + ["hydra.launcher.n_jobs=4"],
        machine=FIXED,
    )
    assert ahead["disk"]["revisions_at_once_with_evict"] == 12  # (1 + 2) x 4 parallel jobs
    assert ahead["disk"]["peak_bytes_with_evict"] == 12 * per
    few = make_plan(["model=pythia-160m", "schedule=final", "checkpoints.prefetch_ahead=3"], machine=FIXED)
    assert few["disk"]["revisions_at_once_with_evict"] == 1  # never more than the sweep's checkpoints
    text = plan.render(ahead)
    assert "peak 46.6 GB keeping every revision, 3.6 GB with checkpoints.evict=true" in text
    assert "(1 + prefetch_ahead 2) x 4 parallel jobs" in text
    assert make_plan(["model=micro"], machine=FIXED)["disk"]["peak_bytes_without_evict"] == 0


def test_plan_says_when_the_revisions_do_not_fit(monkeypatch):
    monkeypatch.setattr(plan, "free_bytes", lambda path: 10 * 2**30)  # 10 GB free for 46.6 GB of revisions
    keep = plan.render(make_plan(["model=pythia-160m", "schedule=all"], machine=FIXED))
    assert "10.0 GB free there" in keep and "do not fit in the free space: add checkpoints.evict=true" in keep
    evict = plan.render(make_plan(["model=pythia-160m", "schedule=all", "checkpoints.evict=true"], machine=FIXED))
    assert "do not fit" not in evict
    monkeypatch.setattr(plan, "free_bytes", lambda path: 100 * 2**30)
    assert "do not fit" not in plan.render(make_plan(["model=pythia-160m", "schedule=all"], machine=FIXED))


def test_a_family_computing_in_float32_is_planned_in_float32_beside_its_copy_of_the_weights():
    half = make_plan(["model=pythia-1.4b", "schedule=final", "dtype=bfloat16"], machine=FIXED)
    full = make_plan(["model=pythia-1.4b", "schedule=final", "dtype=float32"], machine=FIXED)
    perturb, icl = half["gpu"]["families"]["perturb"], half["gpu"]["families"]["icl_heads"]
    assert perturb["bytes_per_value"] == 4 and perturb["upcast_bytes"] == 2 * half["params"]
    assert icl["bytes_per_value"] == 2 and icl["upcast_bytes"] == 0
    assert full["gpu"]["families"]["perturb"]["upcast_bytes"] == 0
    assert f"+{plan._bytes(2 * half['params'])} while perturb computes in 32-bit floats" in plan.render(half)


def test_without_the_sink_patch_its_passes_are_not_planned():
    runs = make_plan(["model=pythia-160m", "schedule=final"], machine=FIXED)
    skipped = make_plan(["model=pythia-160m", "schedule=final"], machine=FIXED, sink_patch=False)
    whats = [p["what"] for p in skipped["cpu"]["families"]["sink"]["passes"]]
    assert not any("with the patch" in w for w in whats)
    repeat = {p["what"]: p["rows"] for p in runs["cpu"]["families"]["sink"]["passes"]}
    alone = {p["what"]: p["rows"] for p in skipped["cpu"]["families"]["sink"]["passes"]}
    key = "BOS + token x K: clean, patched, random set"
    assert repeat[key] == 3 * alone[key]  # clean rows only
    assert skipped["cpu"]["families"]["icl_heads"] == runs["cpu"]["families"]["icl_heads"]
    assert "the sink neuron patch does not run" in plan.render(skipped)
    assert "the sink neuron patch runs" in plan.render(runs)


def test_a_float32_family_on_a_gpu_is_timed_at_the_float32_rate():
    half = make_plan(["model=pythia-1.4b", "schedule=final", "dtype=bfloat16"], machine=FIXED)
    perturb = half["gpu"]["families"]["perturb"]
    fp32 = machine.gpu_machine("A100-80GB", "float32")
    assert perturb["seconds"] >= perturb["flops"] / fp32.rate(2048)  # bf16 tensor cores would be 16x faster
    icl = half["gpu"]["families"]["icl_heads"]
    assert icl["seconds"] < icl["flops"] / fp32.rate(2048)  # the half-precision families keep the tensor rate

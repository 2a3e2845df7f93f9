"""`ckptstudy-gpu-check` on CPU with --tiny (so the GPU check does not rot): the whole run in the tests, the CUDA
logsumexp route exercised on CPU (--lse portable), and a failed check turns into a non-zero exit."""

from __future__ import annotations

import json

import pytest

from ckptstudy.tools import gpu_check


def test_tiny_check_on_cpu_passes_and_writes_its_json(micro_suite, tmp_path, capsys):
    out = tmp_path / "gpu_check.json"
    args = ["--device", "cpu", "--tiny", "--models", "tiny", "--dtypes", "float32,bfloat16", "--lse", "portable"]
    with pytest.raises(SystemExit) as stop:
        gpu_check.main([*args, "--out", str(out)])
    printed = capsys.readouterr().out
    assert stop.value.code == 0, printed
    assert "every check passed" in printed and f"written: {out}" in printed
    result = json.loads(out.read_text())
    assert result["ok"] and result["failed"] == [] and result["lse"] == "portable"
    runs = result["models"]["tiny"]["runs"]
    assert set(runs) == {"float32", "bfloat16"}
    families = {"icl_heads", "repetition", "low_info", "sink", "perturb"}
    for dtype, rows in runs.items():
        assert families <= set(rows) and all(rows[f]["ok"] for f in families), dtype
        assert all(rows[f]["checked"] > 0 and rows[f]["seconds"] > 0 for f in families)
        assert rows["perturb"]["dtype"] == "float32" and rows["sink"]["dtype"] == dtype  # what each computed in
        fused = rows["fused vs eager"]["backends"]
        assert fused["math"]["ok"] and fused["math"]["max_abs"] < fused["math"]["atol"]
    assert runs["float32"]["perturb"]["max_abs"] == 0  # on CPU in float32 the run is the reference itself
    generation = runs["bfloat16"][gpu_check.GENERATION]  # its own greedy continuations, against the reference's
    assert 0 <= generation["agreement"] <= 1 and "ok" not in generation
    assert runs["bfloat16"]["icl_heads"]["max_abs"] > 0  # a real half-precision run, not the reference again


def failed_result(ok: bool) -> dict:
    row = {
        "dtype": "bfloat16",
        "seconds": 1.0,
        "peak_bytes": 0,
        "error": None,
        "predicted": None,
        "ok": ok,
        "max_abs": 0.5,
        "max_rel": 0.5,
        "failed": {} if ok else {"sink/score_max": (1.5, 1.0)},
    }
    fused = {"dtype": "bfloat16", "ok": True, "backends": {"math": {"max_abs": 1e-6, "atol": 1e-4, "ok": True}}}
    return {
        "environment": {"device": "cpu", "name": "x"},
        "gpu_class_note": "this machine",
        "lse": "native",
        "models": {"tiny": {"runs": {"bfloat16": {"sink": row, "fused vs eager": fused}}}},
    }


def test_a_failed_check_is_named_and_exits_non_zero(monkeypatch, tmp_path, capsys):
    assert gpu_check.failures(failed_result(ok=True)) == []
    assert gpu_check.failures(failed_result(ok=False)) == ["tiny bfloat16 sink"]
    result = failed_result(ok=False) | {"failed": ["tiny bfloat16 sink"], "ok": False}
    monkeypatch.setattr(gpu_check, "run_check", lambda *args: result)
    with pytest.raises(SystemExit) as stop:
        gpu_check.main(["--device", "cpu", "--out", str(tmp_path / "g.json")])
    assert stop.value.code == 1
    printed = capsys.readouterr().out
    assert "FAILED: tiny bfloat16 sink" in printed and "sink/score_max = (1.5, 1.0)" in printed


def test_bad_arguments_are_refused_by_name():
    with pytest.raises(SystemExit, match=r"--dtypes 'float8': float8 not valid; choose from float32"):
        gpu_check.main(["--device", "cpu", "--dtypes", "float8"])
    with pytest.raises(SystemExit, match="no CUDA device"):
        if not gpu_check.torch.cuda.is_available():
            gpu_check.main(["--device", "cuda"])
        else:
            raise SystemExit("no CUDA device (skipped: this machine has one)")


@pytest.mark.parametrize(
    "name, memory, want",
    [
        ("Tesla T4", 15.8, "T4"),
        ("NVIDIA A100-SXM4-40GB", 42.5, "A100-40GB"),
        ("NVIDIA A100 80GB PCIe", 85.0, "A100-80GB"),
        ("NVIDIA H100 80GB HBM3", 85.0, "H100-SXM"),
        ("NVIDIA GeForce RTX 4090", 25.3, "RTX-4090"),
    ],
)
def test_detected_gpus_map_to_the_plans_classes(name, memory, want):
    assert gpu_check.match_gpu(name, memory) == (want, f"{name} ({memory:.0f} GB) -> {want}")


def test_an_unknown_gpu_is_named_with_its_stand_in():
    cls, note = gpu_check.match_gpu("NVIDIA L40S", 48.0)
    assert cls == "A100-40GB" and note == "unknown GPU NVIDIA L40S (48 GB): predictions for A100-40GB"


def test_generation_agreement_counts_tokens_before_the_first_difference():
    from types import SimpleNamespace

    import torch

    def loops(ids, entropy):
        return SimpleNamespace(generation=SimpleNamespace(ids=torch.tensor(ids), entropy=torch.tensor(entropy)))

    ref = loops([[1, 2, 3, 4], [5, 6, 7, 8]], [[0.5] * 4, [0.25] * 4])
    assert gpu_check.generation_agreement(ref, ref) == {"agreement": 1.0, "entropy_max_abs": 0.0}
    # row 1 differs at its third token (and agrees again after: still counted as differing)
    other = loops([[1, 2, 3, 4], [5, 6, 0, 8]], [[0.5, 0.5, 0.5, 0.75], [0.25, 0.5, 0.25, 0.25]])
    assert gpu_check.generation_agreement(other, ref) == {"agreement": 0.75, "entropy_max_abs": 0.25}

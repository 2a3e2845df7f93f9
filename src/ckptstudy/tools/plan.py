"""`ckptstudy-plan`: what a sweep will cost, before any weights are downloaded.

    ckptstudy-plan model=pythia-160m schedule=all [hydra overrides] [--gpu A100-80GB] [--json]

From the composed config (the same overrides `ckptstudy -m` takes; `model.seed=0,1,2` plans every training run)
it lists the checkpoints the sweep visits, the bytes to download (parameter count from the model yaml's shape:
n_layers, d_model, n_heads, d_ff, vocabulary, tying, and the MLP's matrices from its architecture; hub checkpoint
files hold `model.file_bytes_per_param` bytes per parameter: 2 for Pythia's float16), the peak disk of those
revisions in the HF cache with and without `checkpoints.evict` (with it: at most 1 + `checkpoints.prefetch_ahead`
revisions per parallel job of the launcher), and per job and per enabled metric family: the forward passes the
family describes next to its `measure` (`passes(sizes, shape, **params)` at the configured probe sizes and the
family's parameters; a pass several families share, the natural continuations, is counted once), their
FLOPs, their peak activation memory, and the wall time on this machine and on a named GPU class. A family
that describes no passes is planned at 0 and named in a warning.

The cost model (every number is an estimate; assumptions are printed with the plan):
- FLOPs and peak memory of a pass: `ckptstudy.measure.cost`; its seconds on a machine: `ckptstudy.tools.machine`
  (FLOPs at the matmul rate of the model's width, vocabulary-wide log-softmax passes at their own rate, greedy
  decoding per step max(FLOPs / rate, weights and KV-cache bytes / bandwidth; CPU: the whole static cache),
  per-layer and per-call overheads; eager attention also moves the [heads, s, s] weights through memory about 6
  times; a float32 family on a GPU at its float32 rate);
- this machine: float32 matmul rates at inner widths 64-1024, the vocabulary-pass rate, memory bandwidth and call
  overheads measured at plan time (a few seconds), or the calibration `make bench` stored in
  outputs/bench/calibration.json on this CPU; forward efficiency (achieved / matmul rate) 0.7, assumed;
- a GPU class: its published peak (bf16 tensor cores for dtype auto/bfloat16/float16, float32 otherwise)
  and bandwidth, at the efficiencies in GPU_EFFICIENCY (assumptions: no GPU was available to measure);
- rows per call: every pass runs as many rows per call as the memory budget allows (`measure.budget.call_rows`,
  the job's own function), capped by the configured sizes; the budget is `memory_budget` as configured, or
  for `auto` what a job would resolve: on this machine half of its available RAM now, on the GPU class 60% of
  its memory (assumed empty), each minus the weights;
- natural loops: a share `--loop-share` (default 0.5) of the natural prompts loops, their targets start
  half-way through the generation; the sink neuron patch runs (some neuron passes neuron_z; `--no-sink-patch`:
  none does);
- attention: checkpoints are loaded with `LOADED_ATTENTION` (SDPA), icl/, lowinfo/ and sink/ statistics use the
  fused path (capture_stats).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from dataclasses import asdict
from pathlib import Path

from huggingface_hub import constants

from ckptstudy.config import compose_config, model_shape
from ckptstudy.measure.budget import CUDA_SHARE, GB, BudgetError, MemoryBudget, call_rows, resolve_budget
from ckptstudy.measure.cost import LOADED_ATTENTION, Pass, Shape, pass_flops, pass_peak_bytes, probe_sizes
from ckptstudy.measure.precision import upcast_bytes
from ckptstudy.metrics import describe_passes, family_compute_bytes
from ckptstudy.model.hubcache import launcher_parallelism
from ckptstudy.sweeps import sweep_values, swept_steps, take_override
from ckptstudy.tools.machine import (
    GPUS,
    Machine,
    gpu_machine,
    load_machine,
    pass_seconds,
)

# ---------------------------------------------------------------- the plan


def planned_shape(model_cfg) -> Shape:
    """The model's shape from its yaml (`config.model_shape`), refused when the yaml does not state it."""
    shape = model_shape(model_cfg)
    if shape is None:
        missing = [k for k in ("n_layers", "d_model", "n_heads") if model_cfg.get(k) is None]
        raise ValueError(f"model {model_cfg.name!r} has no {', '.join(missing)} in its yaml: cannot plan its cost")
    return shape


def dtype_bytes(dtype: str, device: str = "cpu") -> int:
    if dtype == "auto":
        return 2 if device.startswith("cuda") else 4
    return {"float32": 4, "bfloat16": 2, "float16": 2}[dtype]


def job_passes(cfg, shape: Shape, loop_share: float, sink_patch: bool = True) -> tuple[dict, list[str]]:
    """Every pass of one job by family, as each family describes them (`metrics.describe_passes` at the configured
    probe sizes); a pass several families share is counted once, under "<shared> (shared)", first. Also the
    enabled families that describe no passes (planned at 0)."""
    return describe_passes(cfg.metrics, probe_sizes(cfg, shape.context, loop_share, sink_patch), shape)


def machine_budget(value, machine: str, weights_bytes: float) -> MemoryBudget:
    """The budget a job would resolve: `memory_budget` as configured, or for auto on this machine (`cpu`) half its
    available RAM now, on a GPU class CUDA_SHARE of its memory (assumed empty), minus the weights."""
    if machine == "cpu":
        return resolve_budget(value, "cpu", weights_bytes)
    free = GPUS[machine][3] * GB  # the GPU's memory (40 GB = 40 GiB)
    budget = resolve_budget(value, "cuda", weights_bytes, free_bytes=free)
    if "auto" in budget.how:
        budget = MemoryBudget(budget.bytes, budget.how.replace("free memory of cuda", f"{machine} (assumed empty)"))
    return budget


def resolved(passes: dict[str, list[Pass]], shape: Shape, budget: MemoryBudget, widths: dict[str, int], loaded: int):
    """Each pass with the rows per call the budget gives it (`budget.call_rows`, at its family's width `widths`
    and beside that family's wider copy of the weights loaded at `loaded` bytes), and the passes that do not fit
    one row (or group) per call."""
    out, refused = {}, []
    for family, items in passes.items():
        out[family] = []
        room = budget.bytes - upcast_bytes(shape.params, loaded, widths[family])
        for p in items:
            try:
                out[family].append(p.with_batch(call_rows(p, shape, room, widths[family])))
            except BudgetError as err:
                refused.append(f"{family}: {err}")
                out[family].append(p.with_batch(1))
    return out, refused


def estimate(passes: dict[str, list[Pass]], shape: Shape, machines: dict, widths: dict[str, int], loaded: int) -> dict:
    """FLOPs, seconds and peak transient bytes per family on its machine (passes with their rows per call, values
    of `widths[family]` bytes), and the bytes a family's wider copy of the weights (loaded at `loaded` bytes)
    adds while it runs."""
    out = {}
    for family, items in passes.items():
        nbytes, machine = widths[family], machines[family]
        costs = [
            {
                "what": p.what,
                "rows": p.rows,
                "batch": p.batch,
                "tokens": p.seq,
                "decode": p.decode,
                "flops": pass_flops(p, shape),
                "seconds": pass_seconds(p, shape, machine, nbytes),
                "peak_bytes": pass_peak_bytes(p, shape, nbytes),
            }
            for p in items
        ]
        out[family] = {
            "flops": sum(c["flops"] for c in costs),
            "seconds": sum(c["seconds"] for c in costs),
            "peak_bytes": max((c["peak_bytes"] for c in costs), default=0.0),
            "bytes_per_value": nbytes,
            "upcast_bytes": upcast_bytes(shape.params, loaded, nbytes),
            "passes": costs,
        }
    return out


def make_plan(
    overrides: list[str],
    gpu: str = "A100-80GB",
    loop_share: float = 0.5,
    machine: Machine | None = None,
    sink_patch: bool = True,
) -> dict:
    """The plan of the sweep `ckptstudy -m <overrides>` would run, as a dict (what `ckptstudy-plan` prints)."""
    cfg, steps, seeds = planned_sweep(overrides)
    dtype = str(getattr(cfg.dtype, "value", cfg.dtype))
    shape = planned_shape(cfg.model)
    jobs = len(steps) * len(seeds)
    params = shape.params
    passes, undescribed = job_passes(cfg, shape, loop_share, sink_patch)
    cpu_bytes, gpu_bytes = dtype_bytes(dtype, "cpu"), dtype_bytes(dtype, "cuda")
    gpu_m = gpu_machine(gpu, "float32" if dtype == "float32" else "bfloat16")
    cpu, cpu_refused = machine_side(cfg, passes, shape, machine or load_machine(), "cpu", cpu_bytes, jobs)
    on_gpu, gpu_refused = machine_side(cfg, passes, shape, gpu_m, gpu, gpu_bytes, jobs)
    download = 0 if cfg.model.source == "local" else params * int(cfg.model.file_bytes_per_param)
    warnings = [
        f"metrics.{family} describes no passes (no `passes` next to its measure): planned at 0 FLOP"
        for family in undescribed
    ]
    warnings += [f"does not fit on this machine: {why}" for why in cpu_refused]
    warnings += [f"does not fit on {gpu}: {why}" for why in gpu_refused]
    return {
        "model": cfg.model.name,
        "arch": str(getattr(cfg.model.arch, "value", cfg.model.arch)),
        "seeds": [int(seed) for seed in seeds if seed is not None] or None,
        "shape": asdict(shape),
        "params": params,
        "dtype": dtype,
        "checkpoints": jobs,
        "steps": steps,
        "download_bytes_per_checkpoint": download,
        "download_bytes_total": download * jobs,
        "disk": disk_plan(cfg, jobs, download),
        "weights_bytes_cpu": params * cpu_bytes,
        "weights_bytes_gpu": params * gpu_bytes,
        "families": list(cfg.metrics),
        "job_flops": sum(f["flops"] for f in cpu["families"].values()),
        "cpu": cpu,
        "gpu": on_gpu,
        "warnings": warnings,
        "assumptions": {
            "loop_share": loop_share,
            "sink_patch": sink_patch,
            "loaded_attention": LOADED_ATTENTION,
            "hub_bytes_per_param": int(cfg.model.file_bytes_per_param),
            "load_and_download_time": "not included (network and disk dependent)",
            "gpu_budget": f"auto = {CUDA_SHARE:.0%} of the GPU's memory (assumed empty) minus the weights",
        },
    }


def planned_sweep(overrides: list[str]) -> tuple:
    """(composed config, swept steps, training seeds ([None] without a `model.seed` sweep)) of `ckptstudy -m
    <overrides>`: a step sweep as `ckptstudy -m` reads it; each training seed is a sweep of its own (composed
    once each, so a seed the suite does not have is refused)."""
    step_value, overrides = take_override(list(overrides), "step")
    seed_value, overrides = take_override(overrides, "model.seed")
    seeds = sweep_values(seed_value) if seed_value else [None]
    cfg = compose_config([*overrides, *([f"model.seed={seeds[0]}"] if seeds[0] else [])], return_hydra_config=True)
    for seed in seeds[1:]:
        compose_config([*overrides, f"model.seed={seed}"])
    return cfg, swept_steps(cfg, step_value), seeds


def machine_side(cfg, passes: list, shape: Shape, machine: Machine, device: str, dtype_size: int, jobs: int):
    """One machine's column of the plan (its budget, per-family estimates, job and sweep time, peak) and the
    passes that do not fit its budget."""
    budget = machine_budget(cfg.memory_budget, device, shape.params * dtype_size)
    computes = family_compute_bytes(cfg.metrics, dtype_size)
    widths = {family: computes.get(family, dtype_size) for family in passes}  # a shared pass: the loaded dtype
    fitted, refused = resolved(passes, shape, budget, widths, dtype_size)
    # a family computing in float32 on a GPU runs at the card's float32 rate, not its half-precision tensor rate
    machines = {
        f: gpu_machine(device, "float32") if device != "cpu" and widths[f] == 4 and dtype_size < 4 else machine
        for f in passes
    }
    families = estimate(fitted, shape, machines, widths, dtype_size)
    job = sum(f["seconds"] for f in families.values())
    side = {
        "machine": asdict(machine),
        "budget": asdict(budget),
        "families": families,
        "job_seconds": job,
        "sweep_seconds": job * jobs,
        "peak_bytes": max((f["peak_bytes"] for f in families.values()), default=0.0),
    }
    return side, refused


def disk_plan(cfg, n_steps: int, per_checkpoint: int) -> dict:
    """Peak bytes of a sweep's revisions in the HF cache: all of them without eviction; with
    `checkpoints.evict`, at most (1 + prefetch_ahead) revisions per parallel job of the launcher."""
    parallel = launcher_parallelism(cfg.hydra.get("launcher") if "hydra" in cfg else None)
    ahead = int(cfg.checkpoints.prefetch_ahead)
    at_once = min(n_steps, (1 + ahead) * parallel)
    return {
        "peak_bytes_without_evict": per_checkpoint * n_steps,
        "peak_bytes_with_evict": per_checkpoint * at_once,
        "revisions_at_once_with_evict": at_once,
        "parallel_jobs": parallel,
        "prefetch_ahead": ahead,
        "evict": bool(cfg.checkpoints.evict),
        "free_bytes": free_bytes(Path(constants.HF_HUB_CACHE)),
    }


def free_bytes(path: Path) -> int | None:
    """Free bytes on the disk holding `path` (its nearest existing parent), None when unknown."""
    for candidate in [path, *path.parents]:
        if candidate.exists():
            try:
                return shutil.disk_usage(candidate).free
            except OSError:
                return None
    return None


def _bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1024 or unit == "TB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} TB"


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'s' if n != 1 else ''}"


def _seconds(s: float) -> str:
    if s < 120:
        return f"{s:.1f} s"
    if s < 7200:
        return f"{s / 60:.1f} min"
    if s < 2 * 86400:
        return f"{s / 3600:.1f} h"
    return f"{s / 86400:.1f} days"


def _flops(f: float) -> str:
    return f"{f / 1e12:.2f} TFLOP" if f >= 1e11 else f"{f / 1e9:.2f} GFLOP"


def _row(label: str, *cells: str) -> str:
    return f"{label:<34}" + "".join(f"{cell:>16}" for cell in cells)


def render(plan: dict) -> str:
    """The plan as text."""
    return "\n".join(
        [*_header_lines(plan), *_disk_lines(plan), *_memory_lines(plan), "", *_table_lines(plan), *_footer_lines(plan)]
    )


def _header_lines(plan: dict) -> list[str]:
    shape = plan["shape"]
    seeds = plan.get("seeds")
    runs = f" x {len(seeds)} training seeds ({', '.join(map(str, seeds))})" if seeds and len(seeds) > 1 else ""
    mlp = "SwiGLU" if shape.get("mlp_matrices") == 3 else "GELU"
    d_ff = shape.get("d_ff") or 4 * shape["d_model"]
    per = plan["download_bytes_per_checkpoint"]
    return [
        f"ckptstudy plan: {plan['model']} ({plan.get('arch', 'gpt_neox')}: {shape['n_layers']} layers, d_model "
        f"{shape['d_model']}, {shape['n_heads']} heads, {mlp} MLP {d_ff}, vocab {shape['vocab']}"
        f"{', tied embeddings' if shape.get('tied_embeddings') else ''}; {plan['params'] / 1e6:.1f} M parameters), "
        f"dtype {plan['dtype']}",
        f"checkpoints: {plan['checkpoints']} (steps {_steps(plan['steps'])}{runs})",
        f"download: {_bytes(per)} per checkpoint ({plan['assumptions']['hub_bytes_per_param']} bytes per parameter: "
        f"model.file_bytes_per_param), {_bytes(plan['download_bytes_total'])} in total"
        if per
        else "download: none (local checkpoints)",
    ]


def _disk_lines(plan: dict) -> list[str]:
    disk = plan["disk"]
    if not plan["download_bytes_per_checkpoint"]:
        return []
    jobs = _count(disk["parallel_jobs"], "parallel job")
    free = f"; {_bytes(disk['free_bytes'])} free there" if disk["free_bytes"] is not None else ""
    lines = [
        f"disk (HF cache): peak {_bytes(disk['peak_bytes_without_evict'])} keeping every revision, "
        f"{_bytes(disk['peak_bytes_with_evict'])} with checkpoints.evict=true (at most "
        f"{_count(disk['revisions_at_once_with_evict'], 'revision')} at once: (1 + prefetch_ahead "
        f"{disk['prefetch_ahead']}) "
        f"x {jobs}){free}"
    ]
    too_big = disk["free_bytes"] is not None and disk["peak_bytes_without_evict"] > disk["free_bytes"]
    if not disk["evict"] and too_big:
        lines.append("  the revisions do not fit in the free space: add checkpoints.evict=true")
    return lines


def _memory_lines(plan: dict) -> list[str]:
    here, there = plan["cpu"]["budget"], plan["gpu"]["budget"]
    return [
        f"weights in memory: {_bytes(plan['weights_bytes_cpu'])} on this machine{_upcast(plan['cpu'])}, "
        f"{_bytes(plan['weights_bytes_gpu'])} on a GPU{_upcast(plan['gpu'])}",
        f"memory budget (activations): {_bytes(here['bytes'])} on this machine ({here['how']}), "
        f"{_bytes(there['bytes'])} on {plan['gpu']['machine']['name']} ({there['how']})",
        f"families: {', '.join(plan['families'])}",
    ]


def _upcast(side: dict) -> str:
    """ " (+X while perturb computes in float32)" for the families that hold a wider copy of the weights."""
    wider = [(f, c) for f, c in side["families"].items() if c.get("upcast_bytes")]
    return "".join(
        f" (+{_bytes(c['upcast_bytes'])} while {f} computes in {8 * c['bytes_per_value']}-bit floats, "
        "out of the budget)"
        for f, c in wider
    )


def _table_lines(plan: dict) -> list[str]:
    cpu, gpu = plan["cpu"], plan["gpu"]
    gpu_name = gpu["machine"]["name"]
    lines = [_row("per job", "FLOPs", "peak here", "this machine", f"peak {gpu_name}", gpu_name)]
    for family, c in cpu["families"].items():
        g = gpu["families"][family]
        cells = (_bytes(c["peak_bytes"]), _seconds(c["seconds"]), _bytes(g["peak_bytes"]), _seconds(g["seconds"]))
        lines.append(_row(family, _flops(c["flops"]), *cells))
    job = (
        _bytes(cpu["peak_bytes"]),
        _seconds(cpu["job_seconds"]),
        _bytes(gpu["peak_bytes"]),
        _seconds(gpu["job_seconds"]),
    )
    lines.append(_row("job total", _flops(plan["job_flops"]), *job))
    sweep = ("", _seconds(cpu["sweep_seconds"]), "", _seconds(gpu["sweep_seconds"]))
    lines.append(
        _row(f"sweep total ({plan['checkpoints']} jobs)", _flops(plan["job_flops"] * plan["checkpoints"]), *sweep)
    )
    return lines


def _footer_lines(plan: dict) -> list[str]:
    cpu, gpu = plan["cpu"], plan["gpu"]
    gpu_name, machine, a = gpu["machine"]["name"], cpu["machine"], plan["assumptions"]
    lines = [
        "",
        f"this machine: {machine['gflops']:.0f} GFLOP/s forward, {machine['bandwidth_gbs']:.0f} GB/s, "
        f"{machine['layer_overhead_ms']:.2f} ms per layer + {machine.get('call_overhead_ms', 0):.2f} ms per forward "
        f"call ({machine['source']})",
        f"{gpu_name}: {gpu['machine']['source']}",
        f"assumed: {a['loop_share']:.0%} of natural prompts loop; the sink neuron patch "
        f"{'runs' if a.get('sink_patch', True) else 'does not run'}; checkpoints loaded with {a['loaded_attention']} "
        "attention; every pass runs as many rows per call as the memory budget allows (peaks: activations, "
        "weights not included); download and load time not included",
    ]
    lines += [f"warning: {warning}" for warning in plan.get("warnings", [])]
    for label, side in (("here", cpu), (gpu_name, gpu)):
        passes = [(f, p) for f, c in side["families"].items() for p in c["passes"]]
        if passes:
            f, p = max(passes, key=lambda fp: fp[1]["peak_bytes"])
            lines.append(
                f"largest activation peak {label}: {_bytes(p['peak_bytes'])} in {f}: {p['what']} "
                f"({p['rows']} rows x {p['tokens']} tokens, {p['batch']} rows per call)"
            )
    return lines


def _steps(steps: list[int]) -> str:
    if len(steps) <= 8:
        return ", ".join(map(str, steps))
    return f"{', '.join(map(str, steps[:4]))}, ..., {', '.join(map(str, steps[-2:]))}"


def cli(argv: list[str] | None = None) -> None:
    """Entry point of `ckptstudy-plan`: flags first, then Hydra overrides (as for `ckptstudy -m`)."""
    parser = argparse.ArgumentParser(
        prog="ckptstudy-plan",
        description="Cost of a sweep before launching it: checkpoints, download bytes, per-job FLOPs, peak memory "
        "and wall time per metric family on this machine and on a GPU class. No weights are downloaded.",
    )
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. model=pythia-160m schedule=all")
    parser.add_argument("--gpu", default="A100-80GB", choices=sorted(GPUS), help="GPU class to estimate for")
    parser.add_argument("--loop-share", type=float, default=0.5, help="share of natural prompts assumed to loop")
    parser.add_argument(
        "--no-sink-patch", action="store_true", help="assume no sink neuron passes (sink's patch passes do not run)"
    )
    parser.add_argument("--json", action="store_true", help="print the plan as JSON")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    plan = make_plan(args.overrides, gpu=args.gpu, loop_share=args.loop_share, sink_patch=not args.no_sink_patch)
    print(json.dumps(plan, indent=1) if args.json else render(plan))


if __name__ == "__main__":
    cli(sys.argv[1:])

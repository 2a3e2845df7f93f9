"""`make bench`: ckptstudy against what a researcher would use instead, each method in a fresh process.

Sections (random-init models with real Pythia shapes stand in for real weights; ratios are the claim):
- capture: everything icl/ and lowinfo/ read from attention (induction / duplicate / previous-token diagonals,
  class mass and row entropy with and without the sink) at 256 and 1024 tokens, batch 4: ckptstudy's fused
  statistics vs TransformerLens `run_with_cache`, HF `output_attentions=True`, and the bare forward (default
  SDPA attention, no statistics: the floor); wall time (median of 3) and measured peak RSS of each process
- job: one checkpoint job of the icl_heads, repetition and low_info families vs the TransformerLens script in
  tl_job.py (same numbers checked to a stated tolerance)
- ablation: exact all-head effects vs the per-head run_with_hooks loop; attribution patching's rank
  correlation with exact on the same model
- generation: the previous hand-written greedy loop vs `greedy_generate` (`model.generate` + an entropy logits
  processor) on the same batch: a random-init Pythia-70m shape and the micro suite's final checkpoint on the
  default natural probes; 3 fresh processes x 4 back-to-back pairs of calls, the order alternating (on a shared
  machine the two calls of a pair see the same load); tokens/s, ratio per pair, same ids
- plan: `ckptstudy-plan`'s estimate of each measured job vs its measured time; the machine calibration
  (forward GFLOP/s from the measured bare forward, bandwidth, per-layer overhead) is stored for the plan

    python benches/run.py [--quick] [--only capture,job,...] [--threads N] [--out outputs/bench/bench.json]

`--quick` runs the micro shape only (seconds, the smoke test); TransformerLens rows are skipped with the
reason when transformer_lens is not importable.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from common import REPO, transformer_lens_missing, versions  # noqa: E402

MARKER = "BENCH_RESULT "
TARGETS = {
    "capture_time_vs_floor_1024": 1.3,
    "capture_memory_vs_floor_1024": 1.2,
    "job_speedup_vs_tl": 3.0,
    "job_memory_vs_tl": 0.25,
    "ablation_speedup_vs_tl_loop": 5.0,
    "attribution_spearman": 0.9,
}
# the bench job: the three families of the paper reproduction at reduced probe sizes
JOB_OVERRIDES = [
    "metrics=[icl_heads,repetition,low_info]",
    "probes.random_repeat.n=8",
    "probes.natural.n=8",
    "probes.icl_repeat.n=4",
    "probes.long_text.n=4",
    "loops.new_tokens=96",
    "batch_size=8",
]
# the plan check's 160m job: the same families, fewer prompts (its measured time stays near a minute)
PLAN_160M = [*JOB_OVERRIDES, "probes.natural.n=4", "probes.icl_repeat.n=2", "loops.new_tokens=64"]
JOB_TOLERANCE = {"abs": 1e-4, "rel": 1e-3}


def settings(quick: bool) -> dict:
    if quick:
        return {
            "capture_models": ["micro"],
            "capture_lengths": [128],
            "capture_batch": 2,
            "ablation": {"model": "micro", "prompts": 2, "length": 8},
            "generation": {"models": [{"model": "micro", "prompts": 4, "new_tokens": 8}], "rounds": 1, "pairs": 1},
            "job_model": "micro",
            "job_overrides": [
                "experiment=smoke",
                "metrics=[icl_heads,repetition,low_info]",
                "metrics.icl_heads.mode=exact",
            ],
            "plan_jobs": [],  # the job section's ckptstudy job is checked against the plan
        }
    return {
        "capture_models": ["pythia-70m", "pythia-160m"],
        "capture_lengths": [256, 1024],
        "capture_batch": 4,
        "ablation": {"model": "pythia-160m", "prompts": 4, "length": 16},
        "generation": {
            "models": [{"model": "pythia-70m", "prompts": 16, "new_tokens": 64}, {"model": "micro-final"}],
            "rounds": 3,  # fresh processes per model, alternating which method goes first
            "pairs": 4,  # back-to-back pairs of timed calls per process, after one untimed call of each
        },
        "job_model": "pythia-70m",
        "job_overrides": JOB_OVERRIDES,
        "plan_jobs": [
            ("micro", ["model=micro"]),  # the default micro-suite job: every family, default probes
            ("pythia-160m", PLAN_160M),
        ],
    }


def spawn(task: str, params: dict, threads: int, timeout: float = 1800) -> dict:
    """Run one task in a fresh worker process; its result dict, or {"error": ...}."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "TQDM_DISABLE": "1"}
    # idle OpenMP threads sleep instead of spinning: on a machine shared with other processes a spinning
    # barrier waits for a descheduled peer (a 2-layer decode step measured 409 ms instead of 12 ms at load 4);
    # the same setting for every method
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), str(REPO / "src"), env.get("PYTHONPATH", "")])
    cmd = [sys.executable, str(HERE / "worker.py"), task, json.dumps({**params, "threads": threads})]
    started = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout, cwd=REPO)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout} s"}
    lines = [line for line in proc.stdout.splitlines() if line.startswith(MARKER)]
    if proc.returncode != 0 or not lines:
        return {"error": (proc.stderr.strip().splitlines() or ["no output"])[-1], "returncode": proc.returncode}
    result = json.loads(lines[-1][len(MARKER) :])
    result["process_seconds"] = round(time.perf_counter() - started, 1)
    return result


def _max_diff(a, b) -> float:
    import torch

    return float((torch.tensor(a, dtype=torch.float64) - torch.tensor(b, dtype=torch.float64)).abs().max())


def capture_section(cfg: dict, threads: int, skip_tl: str | None, log) -> dict:
    methods = ["bare", "bare_body", "fused", "fused_nll", "hf", "tl", "eager_hooks"]
    targeted = {"bare", "bare_body", "fused", "fused_nll"}  # median of 3 at every length; others 2 at 1024
    rows, skipped = [], {}
    for model in cfg["capture_models"]:
        for length in cfg["capture_lengths"]:
            by_method = {}
            for method in methods:
                if method == "tl" and skip_tl:
                    skipped[f"{model}/{length}/tl"] = skip_tl
                    continue
                params = {"model": model, "length": length, "batch": cfg["capture_batch"], "method": method}
                long = length > 256
                params.update(repeat=3 if method in targeted or not long else 2, warmup=0 if long else 1)
                result = spawn("capture", params, threads)
                log(f"capture {model} {length} {method}: {_short(result)}")
                by_method[method] = result
            rows.append(_capture_row(model, length, by_method))
    growth = _growth(rows)
    return {"rows": rows, "growth_256_to_1024": growth, "skipped": skipped}


def _capture_row(model: str, length: int, results: dict) -> dict:
    floor, body = results.get("bare", {}), results.get("bare_body", {})
    row = {"model": model, "length": length, "methods": {}}
    reference = results.get("fused", {}).get("stats")
    for method, r in results.items():
        if "error" in r:
            row["methods"][method] = {"error": r["error"]}
            continue
        entry = {"seconds": round(r["seconds"], 3), "times": r["times"], "peak_rss_mb": r["peak_rss_mb"]}
        if "seconds" in floor:
            entry["time_vs_floor"] = round(r["seconds"] / floor["seconds"], 2)
            entry["memory_vs_floor"] = round(r["peak_rss_mb"] / floor["peak_rss_mb"], 2)
        if "seconds" in body:
            entry["time_vs_body"] = round(r["seconds"] / body["seconds"], 2)
            entry["memory_vs_body"] = round(r["peak_rss_mb"] / body["peak_rss_mb"], 2)
        if reference is not None and "stats" in r:
            entry["max_abs_diff_vs_fused"] = max(_max_diff(r["stats"][k], reference[k]) for k in reference)
        row["methods"][method] = entry
    return row


def _growth(rows: list[dict]) -> dict:
    out = {}
    for model in {r["model"] for r in rows}:
        by_len = {r["length"]: r["methods"] for r in rows if r["model"] == model}
        if len(by_len) < 2:
            continue
        short, long = min(by_len), max(by_len)
        for method in by_len[long]:
            a, b = by_len[short].get(method, {}), by_len[long].get(method, {})
            if "seconds" in a and "seconds" in b:
                out[f"{model}/{method}"] = {
                    "time_x": round(b["seconds"] / a["seconds"], 2),
                    "peak_rss_x": round(b["peak_rss_mb"] / a["peak_rss_mb"], 2),
                }
    return out


def with_model(model: str, overrides: list[str]) -> list[str]:
    """The overrides with `model=<model>` (the bench shape names are config model names)."""
    return [o for o in overrides if not o.startswith("model=")] + [f"model={model}"]


def job_section(cfg: dict, threads: int, skip_tl: str | None, log) -> dict:
    model = cfg["job_model"]
    overrides = with_model(model, cfg["job_overrides"])
    ours = spawn("job", {"model": model, "engine": "ckptstudy", "overrides": overrides}, threads)
    log(f"job {model} ckptstudy: {_short(ours)}")
    out = {"model": model, "overrides": overrides, "ckptstudy": _job_entry(ours), "_raw": ours}
    if skip_tl:
        out["tl"] = {"skipped": skip_tl}
        return out
    tl = spawn("job", {"model": model, "engine": "tl", "overrides": overrides}, threads)
    log(f"job {model} tl: {_short(tl)}")
    out["tl"] = _job_entry(tl)
    if "error" not in ours and "error" not in tl:
        out["speedup_vs_tl"] = round(tl["seconds"] / ours["seconds"], 2)
        out["memory_vs_tl"] = round(ours["peak_rss_mb"] / tl["peak_rss_mb"], 3)
        # above the process's RSS once the model and probes are loaded (imports and weights left out)
        above = [r["peak_rss_mb"] - r["rss_before_mb"] for r in (ours, tl)]
        out["memory_above_loaded_vs_tl"] = round(above[0] / max(above[1], 1e-9), 3)
        out["agreement"] = _agreement(ours["scalars"], tl["scalars"])
    return out


def _job_entry(r: dict) -> dict:
    if "error" in r:
        return {"error": r["error"]}
    keys = ("seconds", "parts", "peak_rss_mb", "rss_before_mb", "families")
    return {k: (round(r[k], 2) if k == "seconds" else r[k]) for k in keys}


def _agreement(a: dict, b: dict) -> dict:
    """Every scalar of both jobs compared: |x - y| <= abs + rel * |x| (NaN only with NaN)."""
    worst, bad, compared = (0.0, None), [], 0
    for key in sorted(set(a) | set(b)):
        x, y = a.get(key), b.get(key)
        if key not in a or key not in b:
            bad.append(f"{key}: only in {'ckptstudy' if key in a else 'tl'}")
            continue
        compared += 1
        if x is None or y is None:
            if (x is None) != (y is None):
                bad.append(f"{key}: {x} vs {y}")
            continue
        diff = abs(x - y)
        if diff > JOB_TOLERANCE["abs"] + JOB_TOLERANCE["rel"] * abs(x):
            bad.append(f"{key}: {x:.6g} vs {y:.6g}")
        if diff > worst[0]:
            worst = (diff, key)
    return {
        "compared": compared,
        "tolerance": JOB_TOLERANCE,
        "max_abs_diff": worst[0],
        "max_abs_diff_key": worst[1],
        "outside_tolerance": bad,
    }


def ablation_section(cfg: dict, threads: int, skip_tl: str | None, log) -> dict:
    params = dict(cfg["ablation"])
    methods = ["exact", "attribution", "naive" if skip_tl else "tl_loop"]
    results = {}
    for method in methods:
        results[method] = spawn("ablation", {**params, "method": method}, threads)
        log(f"ablation {method}: {_short(results[method])}")
    out = {**params, "methods": {}}
    for method, r in results.items():
        out["methods"][method] = {"error": r["error"]} if "error" in r else {"seconds": round(r["seconds"], 2)}
    exact = results["exact"]
    if "error" in exact:
        return out
    out["probe"] = exact["probe"]
    loop = "naive" if skip_tl else "tl_loop"
    if skip_tl:
        out["skipped"] = {"tl_loop": skip_tl}
    if "error" not in results[loop]:
        out["exact_speedup_vs_loop"] = round(results[loop]["seconds"] / exact["seconds"], 2)
        out["loop"] = loop
        out["max_abs_diff_exact_vs_loop"] = _max_diff(exact["effects"], results[loop]["effects"])
    attr = results["attribution"]
    if "error" not in attr:
        out["attribution_time_vs_exact"] = round(attr["seconds"] / exact["seconds"], 3)
        out["attribution_spearman"] = _spearman(attr["effects"], exact["effects"])
        out["attribution_spearman_top"] = _spearman_top(attr["effects"], exact["effects"], 20)
    return out


def _spearman(a, b) -> float:
    import torch

    from ckptstudy.stats.specialization import spearman

    return round(float(spearman(torch.tensor(a).flatten(), torch.tensor(b).flatten())), 3)


def _spearman_top(estimate, exact, k: int) -> float:
    """Rank correlation on the k heads with the largest exact |effect| (where the circuit is)."""
    import torch

    from ckptstudy.stats.specialization import spearman

    e, x = torch.tensor(estimate).flatten(), torch.tensor(exact).flatten()
    top = x.abs().topk(min(k, x.numel())).indices
    return round(float(spearman(e[top], x[top])), 3)


def generation_section(cfg: dict, threads: int, log) -> dict:
    """The previous hand-written greedy loop vs `greedy_generate` (model.generate + the entropy logits processor)
    on the same batch: per model, `rounds` fresh processes, each timing `pairs` back-to-back pairs of calls
    (the order alternating within a process and between processes)."""
    spec = cfg["generation"]
    rows = []
    for params in spec["models"]:
        runs = []
        for r in range(spec["rounds"]):
            first = "loop" if r % 2 == 0 else "generate"
            result = spawn("generation", {**params, "pairs": spec["pairs"], "first": first}, threads)
            log(f"generation {params['model']} round {r + 1} ({first} first): {_short(result)}")
            runs.append(result)
        rows.append(_generation_row(params["model"], runs))
    return {"rounds": spec["rounds"], "pairs": spec["pairs"], "rows": rows}


def _generation_row(model: str, runs: list[dict]) -> dict:
    """tokens/s of both methods (median call), generate's speed relative to the loop (> 1: generate is faster)
    as the median of the pairs' ratios, per round and over all pairs (with their range and how many pairs
    generate won: the noise), the same from process CPU time, and whether both gave the same ids."""
    errors = [r["error"] for r in runs if "error" in r]
    if errors:
        return {"model": model, "error": errors[0]}
    first = runs[0]
    tokens = first["prompts"] * first["new_tokens"]

    def ratios(kind: str, run: dict) -> list[float]:
        return [a / b for a, b in zip(run[kind]["loop"], run[kind]["generate"])]

    pairs = [x for run in runs for x in ratios("wall", run)]
    walls = {m: [t for run in runs for t in run["wall"][m]] for m in ("loop", "generate")}
    same = all(run["ids"]["loop"] == run["ids"]["generate"] == first["ids"]["loop"] for run in runs)
    rows = [x == y for x, y in zip(first["ids"]["loop"], first["ids"]["generate"])]
    return {
        "model": model,
        "probe": f"{first['prompts']} prompts x {first['new_tokens']} tokens, batches of {first['batch_size']}",
        "loop_tok_per_s": round(tokens / statistics.median(walls["loop"]), 1),
        "generate_tok_per_s": round(tokens / statistics.median(walls["generate"]), 1),
        "generate_vs_loop": round(statistics.median(pairs), 3),
        "generate_vs_loop_by_round": [round(statistics.median(ratios("wall", run)), 3) for run in runs],
        "generate_vs_loop_range": [round(min(pairs), 3), round(max(pairs), 3)],
        "generate_faster_pairs": f"{sum(x > 1 for x in pairs)}/{len(pairs)}",
        "generate_vs_loop_cpu": round(statistics.median(x for run in runs for x in ratios("cpu", run)), 3),
        "wall": {m: [run["wall"][m] for run in runs] for m in ("loop", "generate")},
        "same_tokens": same,
        "rows_identical": f"{sum(rows)}/{len(rows)}",
        "max_entropy_diff": max(_max_diff(run["entropy"]["loop"], run["entropy"]["generate"]) for run in runs),
    }


def calibration(threads: int, capture: dict | None, log) -> dict:
    """Machine numbers for ckptstudy-plan: bandwidth and per-layer overhead measured in a worker, forward
    GFLOP/s from the measured bare forwards (FLOPs of the pass / its median time)."""
    result = spawn("machine", {}, threads)
    log(f"machine: {_short(result)}")
    if "error" in result:
        return {"error": result["error"]}
    machine = result["machine"]
    rates = []
    for row in (capture or {}).get("rows", []):
        bare = row["methods"].get("bare", {})
        if "seconds" in bare:
            rates.append(_forward_flops(row["model"], row["length"], capture["batch"]) / bare["seconds"] / 1e9)
    if rates:
        machine["gflops"] = round(min(max(rates), result["matmul_gflops"]), 1)  # the least disturbed run
        listed = ", ".join(f"{r:.0f}" for r in rates)
        machine["source"] = (
            f"make bench: forward rate = the fastest measured bare forward ({listed} GFLOP/s), "
            "8-row x 64 MB matmul bandwidth, decode-step call overheads of tiny models"
        )
    return {"cpu": result["cpu"], "threads": threads, "machine": machine, "matmul_gflops": result["matmul_gflops"]}


def _forward_flops(model: str, length: int, batch: int) -> float:
    from common import SHAPES

    from ckptstudy.measure.cost import Pass, Shape, pass_flops

    layers, d, heads, vocab = SHAPES[model]
    shape = Shape(layers, d, heads, vocab, 2048)
    return pass_flops(Pass("bare", batch, length, batch, layers, unembed=length, attention="sdpa"), shape)


def plan_section(cfg: dict, threads: int, machine: dict, measured_job: dict | None, log) -> list[dict]:
    """ckptstudy-plan's estimate vs the measured time of ckptstudy jobs (loop share as measured)."""
    from ckptstudy.tools.machine import Machine
    from ckptstudy.tools.plan import make_plan

    jobs = [(model, with_model(model, overrides)) for model, overrides in cfg["plan_jobs"]]
    if measured_job and "_raw" in measured_job:
        jobs.insert(1, (measured_job["model"], measured_job["overrides"]))
    rows = []
    for model, overrides in jobs:
        if measured_job and overrides == measured_job.get("overrides"):
            result = measured_job["_raw"]
        else:
            result = spawn("job", {"model": model, "engine": "ckptstudy", "overrides": overrides}, threads)
            log(f"plan job {model}: {_short(result)}")
        if "error" in result:
            rows.append({"model": model, "error": result["error"]})
            continue
        share = _loop_share(result)
        plan = make_plan(overrides, loop_share=share, machine=Machine(**machine))
        predicted = plan["cpu"]["job_seconds"]
        rows.append(
            {
                "model": model,
                "overrides": overrides,
                "measured_s": round(result["seconds"], 1),
                "predicted_s": round(predicted, 1),
                "ratio": round(predicted / result["seconds"], 2),
                "loop_share": share,
                "measured_parts": result["parts"],
                "predicted_parts": {k: round(v["seconds"], 2) for k, v in plan["cpu"]["families"].items()},
            }
        )
    return rows


def _loop_share(job: dict) -> float:
    """The share of natural prompts that looped in the measured job (what the plan has to assume)."""
    rate = job["scalars"].get("rep/natural_rate")
    return float(rate) if rate is not None else 0.5


def _short(result: dict) -> str:
    if "error" in result:
        return f"ERROR {result['error']}"
    seconds = result.get("seconds")
    return f"{seconds:.2f} s, peak {result.get('peak_rss_mb', float('nan')):.0f} MB" if seconds else "ok"


def table(report: dict) -> str:
    """The results as a printable table (also the README table text)."""
    lines = []
    cap = report.get("capture")
    if cap:
        lines.append(
            "| capture (icl/ + lowinfo/ statistics), batch 4 | tokens | time | vs bare | vs body "
            "| peak RSS | vs bare | vs body |"
        )
        lines.append("|---|---|---|---|---|---|---|---|")
        names = {
            "bare": "bare forward, SDPA, no statistics (floor)",
            "bare_body": "bare forward without the unembedding (floor, no logits)",
            "fused": "ckptstudy fused statistics",
            "fused_nll": "ckptstudy fused statistics + per-token NLL",
            "eager_hooks": "ckptstudy eager weights reduced in hooks (previous path)",
            "hf": "HF output_attentions=True",
            "tl": "TransformerLens run_with_cache",
        }
        for row in cap["rows"]:
            for method, m in row["methods"].items():
                label = f"{row['model']}: {names.get(method, method)}"
                if "error" in m:
                    lines.append(f"| {label} | {row['length']} | error: {m['error']} | | | | | |")
                    continue
                lines.append(
                    f"| {label} | {row['length']} | {m['seconds']:.2f} s | {m.get('time_vs_floor', math.nan):.2f}x "
                    f"| {m.get('time_vs_body', math.nan):.2f}x | {m['peak_rss_mb'] / 1024:.2f} GB "
                    f"| {m.get('memory_vs_floor', math.nan):.2f}x | {m.get('memory_vs_body', math.nan):.2f}x |"
                )
        for key, why in cap.get("skipped", {}).items():
            lines.append(f"| {key}: skipped | | {why} | | | | | |")
        lines.append("")
    job = report.get("job")
    if job:
        lines.append("| whole job (icl_heads + repetition + low_info) | time | peak RSS |")
        lines.append("|---|---|---|")
        for engine, label in (("ckptstudy", "ckptstudy"), ("tl", "TransformerLens script (benches/tl_job.py)")):
            entry = job.get(engine, {})
            if "seconds" in entry:
                lines.append(
                    f"| {job['model']}: {label} | {entry['seconds']:.1f} s | {entry['peak_rss_mb'] / 1024:.2f} GB |"
                )
            else:
                lines.append(f"| {job['model']}: {label} | {entry.get('skipped') or entry.get('error')} | |")
        if "speedup_vs_tl" in job:
            agree = job["agreement"]
            lines.append(
                f"| ckptstudy vs TransformerLens | {job['speedup_vs_tl']:.2f}x faster "
                f"| {job['memory_vs_tl']:.2f} of its peak "
                f"({job['memory_above_loaded_vs_tl']:.2f} of its peak above the loaded model) |"
            )
            tol = f"abs {JOB_TOLERANCE['abs']:g} + rel {JOB_TOLERANCE['rel']:g}"
            lines.append(
                f"| scalars compared | {agree['compared']} (max abs diff {agree['max_abs_diff']:.2g}) | "
                f"{len(agree['outside_tolerance'])} outside {tol} |"
            )
        lines.append("")
    abl = report.get("ablation")
    if abl and "methods" in abl:
        lines.append(f"| ablation, {abl['model']}, {abl.get('probe', '')} | time | ratio |")
        lines.append("|---|---|---|")
        for method, m in abl["methods"].items():
            lines.append(f"| {method} | {m.get('seconds', m.get('error'))} s | |")
        if "exact_speedup_vs_loop" in abl:
            lines.append(
                f"| exact vs {abl['loop']} | | {abl['exact_speedup_vs_loop']:.2f}x faster "
                f"(max diff {abl['max_abs_diff_exact_vs_loop']:.1g}) |"
            )
        if "attribution_spearman" in abl:
            lines.append(
                f"| attribution vs exact | {abl['attribution_time_vs_exact']:.3f} of its time | Spearman "
                f"{abl['attribution_spearman']:.3f} (top 20 by exact: {abl['attribution_spearman_top']:.3f}) |"
            )
        lines.append("")
    gen = report.get("generation")
    if gen and gen.get("rows"):
        lines.append(
            f"| greedy generation ({gen['rounds']} processes x {gen['pairs']} back-to-back pairs) | probe "
            "| previous loop tok/s | greedy_generate (model.generate) tok/s | generate / loop (median pair) "
            "| by process | pair range | generate faster | CPU time | same ids | max entropy diff |"
        )
        lines.append("|---|---|---|---|---|---|---|---|---|---|---|")
        for row in gen["rows"]:
            if "error" in row:
                lines.append(f"| {row['model']} | error: {row['error']} |" + " |" * 9)
                continue
            rounds = ", ".join(f"{r:.2f}" for r in row["generate_vs_loop_by_round"])
            low, high = row["generate_vs_loop_range"]
            lines.append(
                f"| {row['model']} | {row['probe']} | {row['loop_tok_per_s']} | {row['generate_tok_per_s']} "
                f"| {row['generate_vs_loop']:.2f}x | {rounds} | {low:.2f}-{high:.2f} | {row['generate_faster_pairs']} "
                f"| {row['generate_vs_loop_cpu']:.2f}x | {row['same_tokens']} ({row['rows_identical']} rows) "
                f"| {row['max_entropy_diff']:.1g} |"
            )
        lines.append("")
    plan = report.get("plan")
    if plan:
        lines.append("| ckptstudy-plan check | measured | predicted | predicted / measured |")
        lines.append("|---|---|---|---|")
        for row in plan:
            if "error" in row:
                lines.append(f"| {row['model']} | error: {row['error']} | | |")
            else:
                lines.append(
                    f"| {row['model']} job | {row['measured_s']} s | {row['predicted_s']} s | {row['ratio']:.2f} |"
                )
        lines.append("")
    return "\n".join(lines)


def targets(report: dict) -> dict:
    """Each target with the measured value and whether it is met."""
    out = {}
    cap = report.get("capture", {})
    for row in cap.get("rows", []):
        if row["length"] != max(r["length"] for r in cap["rows"]):
            continue
        # the statistics vs the bare forward (the floor as defined: logits included, which the statistics do not
        # need) and, like for like, vs the bare forward without the unembedding
        for method, suffix, floor in (("fused", "floor", "with logits"), ("fused", "body", "without unembedding")):
            m = row["methods"].get(method, {})
            if f"time_vs_{suffix}" not in m:
                continue
            where = f"{row['length']}/{row['model']} ({method} vs bare forward, {floor})"
            limit_t, limit_m = TARGETS["capture_time_vs_floor_1024"], TARGETS["capture_memory_vs_floor_1024"]
            out[f"capture_time_{where}"] = (m[f"time_vs_{suffix}"], limit_t, m[f"time_vs_{suffix}"] <= limit_t)
            out[f"capture_memory_{where}"] = (m[f"memory_vs_{suffix}"], limit_m, m[f"memory_vs_{suffix}"] <= limit_m)
    job = report.get("job", {})
    if "speedup_vs_tl" in job:
        out["job_speedup_vs_tl"] = (job["speedup_vs_tl"], 3.0, job["speedup_vs_tl"] >= 3.0)
        out["job_memory_vs_tl"] = (job["memory_vs_tl"], 0.25, job["memory_vs_tl"] <= 0.25)
    abl = report.get("ablation", {})
    if abl.get("loop") == "tl_loop":
        out["ablation_speedup_vs_tl_loop"] = (abl["exact_speedup_vs_loop"], 5.0, abl["exact_speedup_vs_loop"] >= 5.0)
    if "attribution_spearman" in abl:
        out["attribution_spearman"] = (abl["attribution_spearman"], 0.9, abl["attribution_spearman"] >= 0.9)
    return {k: {"value": v, "target": t, "met": bool(m)} for k, (v, t, m) in out.items()}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="micro shape only (a smoke run, seconds)")
    parser.add_argument("--only", default="capture,job,ablation,generation,plan", help="comma-separated sections")
    parser.add_argument("--threads", type=int, default=min(os.cpu_count() or 1, 2))
    parser.add_argument("--out", default=str(REPO / "outputs" / "bench" / "bench.json"))
    parser.add_argument("--render", metavar="JSON", help="only recompute the targets and the table of a saved report")
    args = parser.parse_args(argv)
    if args.render:
        report = json.loads(Path(args.render).read_text())
        report["targets"] = targets(report)
        Path(args.render).write_text(json.dumps(report, indent=1))
        print(table(report))
        for key, t in report["targets"].items():
            print(f"target {key}: {t['value']} (target {t['target']}) {'met' if t['met'] else 'MISSED'}")
        return report
    cfg = settings(args.quick)
    sections = set(args.only.split(","))
    skip_tl = transformer_lens_missing()
    started = time.perf_counter()

    loads: list[float] = []

    def log(message: str) -> None:
        loads.append(os.getloadavg()[0])
        print(f"[{time.perf_counter() - started:7.1f} s, load {loads[-1]:.2f}] {message}", flush=True)

    load_before = os.getloadavg()
    report: dict = {"quick": args.quick, "versions": versions(), "load_average_before": load_before}
    report["versions"]["torch_threads"] = args.threads
    report["versions"]["omp_wait_policy"] = os.environ.get("OMP_WAIT_POLICY", "PASSIVE")
    if "capture" in sections:
        report["capture"] = {**capture_section(cfg, args.threads, skip_tl, log), "batch": cfg["capture_batch"]}
    if "job" in sections:
        report["job"] = job_section(cfg, args.threads, skip_tl, log)
    if "ablation" in sections:
        report["ablation"] = ablation_section(cfg, args.threads, skip_tl, log)
    if "generation" in sections:
        report["generation"] = generation_section(cfg, args.threads, log)
    if "plan" in sections:
        calib = calibration(args.threads, report.get("capture"), log)
        report["calibration"] = calib
        if "machine" in calib:
            if not args.quick:
                path = REPO / "outputs" / "bench" / "calibration.json"
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(json.dumps(calib, indent=1))
            report["plan"] = plan_section(cfg, args.threads, calib["machine"], report.get("job"), log)
    report["targets"] = targets(report)
    report["load_average_after"] = os.getloadavg()
    report["load_1min_during"] = {"min": min(loads, default=None), "max": max(loads, default=None), "samples": loads}
    report["total_seconds"] = round(time.perf_counter() - started, 1)
    if "job" in report:
        report["job"].pop("_raw", None)
    text = table(report)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))
    (out.parent / "bench_table.md").write_text(text + "\n")
    print(text)
    for key, t in report["targets"].items():
        print(f"target {key}: {t['value']} (target {t['target']}) {'met' if t['met'] else 'MISSED'}")
    print(f"load average before {load_before}, after {report['load_average_after']}; {report['total_seconds']} s")
    print(f"written to {out} and {out.parent / 'bench_table.md'}")
    return report


if __name__ == "__main__":
    main()

"""A run at a real Pythia shape through the hub path, measured against `ckptstudy-plan` (`make bench-shape`).

Random-init GPT-NeoX models of a published Pythia shape (conf/model/<name>.yaml: layers, d_model, heads; Pythia's
50304-row embedding and 2048-token context) go into a fake Hugging Face cache as EleutherAI/<name> with
refs/step<N> -> snapshots/<commit>/ (config.json, model.safetensors and the micro suite's tokenizer files: no
Pythia tokenizer is available offline). The default multirun then runs over those steps with HF_HUB_OFFLINE=1 and
the given memory budget; every record must be ok. Per family, the measured wall time and peak memory (the
record's `cost`, `ckptstudy.measure.meter`) are compared with the plan's prediction for this machine at the same
budget, planned with the outcomes the jobs found (the share of looping prompts, whether the sink patch ran); a
ratio off by more than `--tolerance` (2x) fails loudly.

    python benches/realshape.py [--models pythia-14m,pythia-70m] [--steps 1000,2000] [--budget 4] [ARGS...]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
PYTHIA_VOCAB = 50304
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def micro_tokenizer_dir() -> Path:
    """A directory holding the micro suite's tokenizer files (its last checkpoint)."""
    from ckptstudy.config import compose_config
    from ckptstudy.model.suite import ensure_suite

    suite = ensure_suite(compose_config().model)
    return max(suite.glob("step*"), key=lambda p: int(p.name[4:]))


def write_fake_pythia(cache: Path, name: str, steps: list[int], tokenizer_dir: Path | None = None) -> Path:
    """`cache`/models--EleutherAI--<name> with one random-init snapshot per step (seed = step) of the shape in
    conf/model/<name>.yaml and refs/step<N> naming it. Returns the repo folder."""
    from ckptstudy.config import CONF_DIR
    from ckptstudy.model.neox import make_neox

    spec = yaml.safe_load((CONF_DIR / "model" / f"{name}.yaml").read_text())
    folder = Path(cache) / f"models--{spec['repo'].replace('/', '--')}"
    tokenizer_dir = tokenizer_dir or micro_tokenizer_dir()
    for step in steps:
        commit = f"{step:040x}"
        snapshot = folder / "snapshots" / commit
        if not (snapshot / "model.safetensors").exists():
            model = make_neox(PYTHIA_VOCAB, spec["d_model"], spec["n_layers"], spec["n_heads"], seed=step)
            model.save_pretrained(snapshot)
            for file in TOKENIZER_FILES:
                if (tokenizer_dir / file).exists():
                    shutil.copy(tokenizer_dir / file, snapshot / file)
        (folder / "refs").mkdir(parents=True, exist_ok=True)
        (folder / "refs" / f"step{step}").write_text(commit)
    return folder


def run_sweep(name: str, steps: list[int], cache: Path, root: Path, overrides: list[str]) -> list:
    """The default multirun over `steps` of the fake EleutherAI/<name>, offline; the records (`Record`)."""
    from ckptstudy import results

    env = {**os.environ, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"}
    args = ["-m", f"model={name}", "step=" + ",".join(map(str, steps)), "logger=none", f"paths.root={root}"]
    proc = subprocess.run(
        [sys.executable, "-m", "ckptstudy", *args, *overrides], cwd=REPO, env=env, capture_output=True, text=True
    )
    records = [results.read_record(p) for p in sorted(root.glob(f"*/records/{name}/step*.json"))]
    if proc.returncode or len(records) != len(steps):
        raise RuntimeError(f"the sweep over {name} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return records


def found_outcomes(records: list) -> dict:
    """What the plan must assume to price the work these jobs did: the share of natural prompts that looped
    (rep/natural_rate, the worst record) and whether the sink patch ran (some sink neuron found). A random-init
    model loops and has sink neurons at its own rates; planning with the default assumptions would compare the
    cost model against different work."""
    shares = [r.scalars.metrics.get("rep/natural_rate", math.nan) for r in records]
    neurons = [r.scalars.metrics.get("sink/n_sink_neurons", 1) for r in records]
    finite = [s for s in shares if math.isfinite(s)]
    return {"loop_share": max(finite) if finite else 0.5, "sink_patch": any(n > 0 for n in neurons)}


def compare(records: list, plan: dict, tolerance: float) -> tuple[list[dict], list[str]]:
    """Per family: measured seconds and peak (the worst over the records) beside the plan's, the ratios, and
    the ratios off by more than `tolerance`."""
    rows, off = [], []
    families = plan["cpu"]["families"]
    for family, predicted in families.items():
        label = "natural generation (shared)" if family.startswith("natural generation") else family
        measured = [r.provenance.cost[label] for r in records if label in (r.provenance.cost or {})]
        if not measured or predicted["flops"] == 0:
            continue
        seconds = max(m["seconds"] for m in measured)
        peak = max(m["peak_bytes"] for m in measured)
        row = {
            "family": family,
            "seconds": seconds,
            "plan_seconds": predicted["seconds"],
            "time_ratio": seconds / predicted["seconds"],
            "peak_bytes": peak,
            "plan_peak_bytes": predicted["peak_bytes"],
            "peak_ratio": peak / predicted["peak_bytes"] if predicted["peak_bytes"] else math.nan,
        }
        rows.append(row)
        for what in ("time_ratio", "peak_ratio"):
            ratio = row[what]
            if math.isfinite(ratio) and not 1 / tolerance <= ratio <= tolerance:
                off.append(f"{family}: measured / planned {what.split('_')[0]} = {ratio:.2f}")
    return rows, off


def table(name: str, rows: list[dict]) -> str:
    out = [f"{name}: family | measured s | plan s | ratio | measured peak MB | plan peak MB | ratio"]
    for r in rows:
        out.append(
            f"  {r['family']:<28} {r['seconds']:9.1f} {r['plan_seconds']:9.1f} {r['time_ratio']:6.2f} "
            f"{r['peak_bytes'] / 2**20:10.0f} {r['plan_peak_bytes'] / 2**20:10.0f} {r['peak_ratio']:6.2f}"
        )
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="pythia-14m,pythia-70m")
    parser.add_argument("--steps", default="1000,2000")
    parser.add_argument("--budget", default="4", help="memory_budget (GB) of the jobs and the plan")
    parser.add_argument("--tolerance", type=float, default=2.0)
    parser.add_argument("--out", default="outputs/bench/realshape.json")
    parser.add_argument("overrides", nargs="*", help="more hydra overrides for the jobs and the plan")
    args = parser.parse_args(argv)
    from ckptstudy.tools.plan import make_plan

    steps = [int(s) for s in args.steps.split(",")]
    overrides = [f"memory_budget={args.budget}", *args.overrides]
    report, failures = {}, []
    with tempfile.TemporaryDirectory(prefix="ckptstudy-realshape-") as tmp:
        cache = Path(tmp) / "hub"
        for name in args.models.split(","):
            write_fake_pythia(cache, name, steps)
            records = run_sweep(name, steps, cache, Path(tmp) / name, overrides)
            bad = [r.step for r in records if not r.ok]
            if bad:
                failures.append(f"{name}: records not ok at steps {bad}")
            outcomes = found_outcomes(records)
            plan = make_plan([f"model={name}", f"step={steps[0]}", *overrides], **outcomes)
            rows, off = compare(records, plan, args.tolerance)
            failures += [f"{name}: {why}" for why in off]
            report[name] = {
                "steps": steps,
                "families": rows,
                "budget": records[0].provenance.memory_budget,
                "planned_with": outcomes,
            }
            print(table(name, rows), flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"report": report, "failures": failures}, indent=1))
    for why in failures:
        print(f"FAILED: {why}", file=sys.stderr)
    print(f"written to {args.out}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

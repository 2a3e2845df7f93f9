"""`ckptstudy-gpu-check` (`make gpu-check`): one run on a device says whether its path gives the CPU's numbers
and what it costs. No network; under 8 minutes on one GPU by construction (the `smoke` probe sizes).

    ckptstudy-gpu-check [--device cuda|cpu] [--dtypes float32,bfloat16] [--models micro,pythia-160m]
                        [--lse native|portable] [--tiny] [--markdown] [--out outputs/gpu_check.json]

Models: `micro` = the micro suite's final checkpoint (from the suite cache, `make suite`), and random-init
models of Pythia shapes built here (`pythia-14m`, `pythia-160m`; `tiny` = 2 layers of width 64, for the tests).
Every model runs every metric family on CPU in float32 (the reference), then on `--device` in each of `--dtypes`;
each run is a fresh copy of the reference weights, cast like a load in that dtype (parameters only: buffers such
as the rotary frequencies stay float32; on the micro suite bit for bit what `load_model(dtype=...)` gives). Every
run's families read the reference's greedy continuations (`run_families`); their own agreement is reported.
Checks, each a row of the table and of outputs/gpu_check.json:
- family: every family's scalars on the device within the family's `TOLERANCE` of the CPU float32 reference
  (`ckptstudy.measure.precision.compare`; thresholded keys are listed, not checked), in the dtype the family
  computes in (`COMPUTE_DTYPE`; recorded); its wall time (`torch.cuda.synchronize` before reading the clock)
  and peak memory above the weights (`torch.cuda.max_memory_allocated` after `reset_peak_memory_stats`; on CPU
  the growth of the process's peak RSS, a lower bound) beside `ckptstudy-plan`'s prediction for the detected
  GPU class (the nearest known class by memory for an unknown GPU, named so);
- fused: the fused attention statistics (`capture_stats`) against the eager reference (`eager_capture_stats`)
  on `random_repeat`, under each SDPA backend the device offers (flash, efficient, math; one that is not
  available for the shapes is listed, not failed). `--lse portable` makes the fused path take the logsumexp
  route every non-CPU device takes (`attention_stats.portable_lse`), so a CPU run tests the CUDA arithmetic.
Random directions and control tokens are drawn from CPU generators and moved (ckptstudy's families do this
everywhere), so the device never changes which perturbation or control is measured.
Exit status 1 when any check fails (the table says which), 0 otherwise.
"""

from __future__ import annotations

import argparse
import copy
import inspect
import json
import platform
import resource
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import OmegaConf

from ckptstudy.config import compose_config
from ckptstudy.job import measure_families
from ckptstudy.measure import attention_stats
from ckptstudy.measure.capture import capture_stats, model_parts
from ckptstudy.measure.precision import DTYPES, Tolerance, compare
from ckptstudy.metrics import JobContext
from ckptstudy.metrics.icl_heads import repeat_pattern_positions
from ckptstudy.model.checkpoints import CheckpointSource, load_checkpoint
from ckptstudy.model.neox import make_neox
from ckptstudy.model.suite import is_built, suite_dir
from ckptstudy.model.suite_spec import spec_from_config
from ckptstudy.params import check_family
from ckptstudy.probes import cached_probes
from ckptstudy.reference import eager_capture_stats
from ckptstudy.tools.gpu_table import failures, markdown_table, render
from ckptstudy.tools.machine import GPUS, load_machine
from ckptstudy.tools.plan import make_plan

RANDOM_SHAPES = {  # name -> (layers, d_model, heads, vocab, context); the Pythia yaml the plan reads (or None)
    "tiny": ((2, 64, 4, 2048, 256), None),
    "pythia-14m": ((6, 128, 4, 50304, 2048), "pythia-14m"),
    "pythia-160m": ((12, 768, 12, 50304, 2048), "pythia-160m"),
}
MODELS = ("micro", *RANDOM_SHAPES)
PROBES = ["experiment=smoke", "logger=none"]  # the smoke preset's probe sizes: minutes on CPU, seconds on a GPU
TINY_PROBES = [  # --tiny: fewer and shorter rows still (the test in `make test`)
    "probes.random_repeat.n=2",
    "probes.random_repeat.length=12",
    "probes.natural.n=3",
    "probes.icl_repeat.n=3",
    "probes.long_text.n=1",
    "probes.long_text.length=48",
    "loops.new_tokens=16",
    "metrics.perturb.position=8",
    "metrics.perturb.induction_positions=4",
    "metrics.perturb.n_eps=4",
    "metrics.perturb.draws=2",
    "metrics.sink.repeat_k=16",
    "metrics.sink.n_tokens=4",
    "metrics.sink.text_rows=1",
]
# the fused statistics against the eager reference: largest |fused - eager| per row and query, by compute dtype
FUSED_ATOL = {torch.float32: 1e-4, torch.bfloat16: 2e-2, torch.float16: 5e-3}
BACKENDS = ("flash", "efficient", "math")
GENERATION = "natural generation (shared)"


@dataclass
class CheckModel:
    name: str
    model: torch.nn.Module  # CPU, float32, eval
    tokenizer: object
    plan_model: str | None  # the conf/model yaml the plan predicts from (None: no prediction)


# ------------------------------------------------------------------------------------------------ the models


def micro_final() -> tuple[torch.nn.Module, object]:
    """The micro suite's final checkpoint (CPU, float32) and its tokenizer, from the suite cache; refused, with the
    command that builds it, when the suite is not built."""
    model_cfg = compose_config(["model=micro"], check=False).model
    directory = suite_dir(model_cfg)
    if not is_built(spec_from_config(model_cfg), directory):
        raise SystemExit(f"the micro suite is not built at {directory}: run `make suite` first")
    step = max(int(p.name[4:]) for p in directory.glob("step*"))
    return load_checkpoint(CheckpointSource("micro", step, "local", str(directory / f"step{step}")))


def check_models(names: list[str]) -> list[CheckModel]:
    """The named models on CPU in float32; random ones share the micro suite's tokenizer (ids < 2048)."""
    micro, tokenizer = micro_final()
    out = []
    for name in names:
        if name == "micro":
            out.append(CheckModel(name, micro, tokenizer, "micro"))
            continue
        (layers, d, heads, vocab, context), plan_model = RANDOM_SHAPES[name]
        model = make_neox(vocab, d, layers, heads, max_position_embeddings=context, seed=0).eval()
        out.append(CheckModel(name, model, tokenizer, plan_model))
    return out


def cast_as_loaded(model: torch.nn.Module, device: str, dtype: torch.dtype) -> torch.nn.Module:
    """A copy of `model` on `device` with its floating parameters in `dtype`, as `from_pretrained(dtype=...)` loads
    them; buffers keep their dtype (the rotary frequencies stay float32, as in a load)."""
    out = copy.deepcopy(model).to(device)
    for p in out.parameters():
        if p.is_floating_point():
            p.data = p.data.to(dtype)
    return out.eval()


# ------------------------------------------------------------------------------------------------ measuring


class Meter:
    """Wall time and peak memory of one block on a device (CUDA: allocator peak above the start; CPU: growth of
    the process's peak RSS, a lower bound)."""

    def __init__(self, device: str):
        self.cuda = device.startswith("cuda")

    def __enter__(self) -> Meter:
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        else:
            self.base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        if self.cuda:
            torch.cuda.synchronize()
        self.seconds = time.perf_counter() - self.start
        if self.cuda:
            self.peak_bytes = torch.cuda.max_memory_allocated() - self.base
        else:
            self.peak_bytes = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - self.base


def run_families(model: torch.nn.Module, tokenizer, probes, cfg, device: str, reference=None) -> dict[str, dict]:
    """Every enabled family of `cfg` on `model` as a job runs it (`job.measure_families`: each in its compute
    dtype), one at a time, after the natural greedy generation: {family: scalars, dtype, seconds, peak_bytes,
    error}. With `reference` (the reference run's `NaturalLoops`), the families read the reference's continuations
    instead of this model's own: greedy decoding is a chain of argmaxes, one near-tie flips a token and the rest of
    the continuation differs (common on a random-init model's flat logits), so comparing statistics of different
    texts would test the argmax, not the arithmetic. The generation's own agreement is reported instead
    (`agreement`: share of continuation tokens before each row's first difference; `entropy_max_abs` over them)."""
    ctx = JobContext.from_config(cfg, model, tokenizer, probes)
    with Meter(device) as meter:
        own = ctx.natural_loops()
    row = {"scalars": {}, "dtype": str(next(model.parameters()).dtype)[6:], "error": None, "loops": own}
    row.update(seconds=meter.seconds, peak_bytes=meter.peak_bytes)
    if reference is not None:
        row.update(generation_agreement(own, reference))
        ctx.shared["natural_loops"] = reference
    out = {GENERATION: row}
    for name, family_cfg in cfg.metrics.items():
        dtypes: dict[str, str] = {}
        with Meter(device) as meter:
            result, errors = measure_families(ctx, {name: family_cfg}, dtypes)
        out[name] = {
            "scalars": dict(result.scalars),
            "dtype": dtypes[name],
            "seconds": meter.seconds,
            "peak_bytes": meter.peak_bytes,
            "error": errors.get(name),
        }
    return out


def generation_agreement(own, reference) -> dict[str, float]:
    """How far two runs' greedy continuations agree: the share of tokens before each row's first difference
    (1 = identical), and the largest next-token entropy difference over those tokens."""
    a, b = own.generation.ids.cpu(), reference.generation.ids.cpu()
    same = (a == b).long().cumprod(dim=1).bool()  # True up to each row's first difference
    entropy = (own.generation.entropy.cpu().double() - reference.generation.entropy.cpu().double()).abs()
    worst = float(entropy[same].max()) if same.any() else float("nan")
    return {"agreement": float(same.double().mean()), "entropy_max_abs": worst}


def family_tolerances(cfg) -> dict[str, Tolerance]:
    """{family: TOLERANCE} from each enabled family's module; a family without one is refused by name."""
    out = {}
    for name, family_cfg in cfg.metrics.items():
        fn, _ = check_family(name, OmegaConf.to_container(family_cfg, resolve=True))
        tolerance = getattr(inspect.getmodule(fn), "TOLERANCE", None)
        if tolerance is None:
            raise ValueError(f"metrics.{name}: its module {fn.__module__} states no TOLERANCE (precision.Tolerance)")
        out[name] = tolerance
    return out


def fused_request(probes, n_rows: int, seed: int = 0) -> tuple[torch.Tensor, attention_stats.StatsRequest]:
    """`random_repeat` rows and a request asking for every statistic: the icl/ diagonals, random key classes
    (one overlapping, like lowinfo/'s LOW_INFO), weighted queries, two query kinds."""
    ids = probes.random_repeat[:n_rows]
    n, s = ids.shape
    gen = torch.Generator().manual_seed(seed)
    classes = torch.nn.functional.one_hot(torch.randint(0, 5, (n, s), generator=gen), 5).double()
    extra = (torch.rand(n, s, 1, generator=gen) < 0.3).double()
    request = attention_stats.StatsRequest(
        diagonals=repeat_pattern_positions(int(probes.repeat_length)),
        key_values=torch.cat([classes, extra], -1),
        query_weight=torch.rand(n, s, generator=gen),
        query_kind=torch.randint(0, 3, (n, s), generator=gen),
    )
    return ids, request


def sdpa_backend(name: str):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    kinds = {"flash": SDPBackend.FLASH_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION, "math": SDPBackend.MATH}
    return sdpa_kernel([kinds[name]])


def fused_vs_eager(model: torch.nn.Module, probes, lse: str, n_rows: int = 4) -> dict[str, dict]:
    """Per SDPA backend: the largest |fused - eager| over layers and statistics, per row and query, against
    FUSED_ATOL of the model's dtype (`ok`), or why the backend is unavailable (`unavailable`)."""
    ids, request = fused_request(probes, n_rows)
    eager = eager_capture_stats(model, ids, request, batch_size=n_rows)
    dtype = next(model.parameters()).dtype
    per = ids.shape[0] * ids.shape[1]
    out = {}
    for backend in BACKENDS:
        try:
            with sdpa_backend(backend), attention_stats.portable_lse(lse == "portable"):
                fused = capture_stats(model, ids, request, batch_size=n_rows)
        except RuntimeError as err:
            out[backend] = {"unavailable": str(err).splitlines()[0][:200]}
            continue
        worst = 0.0
        for layer in range(model_parts(model).n_layers):
            for key, value in eager.attn[layer].items():
                diff = (fused.attn[layer][key].double() - value.double()).abs().max() / per
                worst = max(worst, float(diff))
        out[backend] = {"max_abs": worst, "atol": FUSED_ATOL[dtype], "ok": worst <= FUSED_ATOL[dtype]}
    return out


# ------------------------------------------------------------------------------------------------ predictions


GPU_NAMES = {
    "T4": "T4",
    "L4": "L4",
    "A10G": "A10G",
    "RTX-4090": "4090",
    "A100-40GB": "A100",
    "A100-80GB": "A100",
    "H100-SXM": "H100",
}  # plan GPU class -> what torch.cuda.get_device_name contains


def gpu_class(device: str) -> tuple[str | None, str]:
    """The plan's GPU class for the device, and how it was chosen (CPU: None, "this machine")."""
    if not device.startswith("cuda"):
        return None, "this machine (the plan's CPU estimate)"
    name = torch.cuda.get_device_name(device)
    memory_gb = torch.cuda.get_device_properties(device).total_memory / 1e9
    return match_gpu(name, memory_gb)


def match_gpu(name: str, memory_gb: float) -> tuple[str, str]:
    """The plan's class whose name `name` contains (the nearest in memory among several, e.g. A100 40/80 GB);
    else the class nearest in memory, named as a stand-in."""
    upper = name.upper().replace("-", " ")
    known = [
        c
        for c, token in GPU_NAMES.items()
        if token in upper.split()
        or any(w.startswith(token) and w[len(token) :] in ("", "S", "SXM4", "SXM5") for w in upper.split())
    ]
    if known:
        cls = min(known, key=lambda c: abs(GPUS[c][3] - memory_gb))
        return cls, f"{name} ({memory_gb:.0f} GB) -> {cls}"
    nearest = min(GPUS, key=lambda c: abs(GPUS[c][3] - memory_gb))
    return nearest, f"unknown GPU {name} ({memory_gb:.0f} GB): predictions for {nearest}"


def predictions(check: CheckModel, overrides: list[str], dtype: str, gpu: str | None, machine) -> dict | None:
    """The plan's {family: seconds, peak_bytes} for this model, probe sizes and dtype (None without a plan model)."""
    if check.plan_model is None:
        return None
    plan = make_plan(
        [f"model={check.plan_model}", *overrides, f"dtype={dtype}"], gpu=gpu or "A100-80GB", machine=machine
    )
    side = plan["gpu"] if gpu else plan["cpu"]
    return {family: {"seconds": f["seconds"], "peak_bytes": f["peak_bytes"]} for family, f in side["families"].items()}


# ------------------------------------------------------------------------------------------------ the check


def environment(device: str) -> dict:
    out = {"device": device, "torch": torch.__version__, "python": platform.python_version()}
    if device.startswith("cuda"):
        props = torch.cuda.get_device_properties(device)
        out.update(
            name=torch.cuda.get_device_name(device),
            memory_bytes=props.total_memory,
            capability=f"{props.major}.{props.minor}",
            cuda=torch.version.cuda,
            cudnn=torch.backends.cudnn.version(),
            sdpa_enabled={
                "flash": torch.backends.cuda.flash_sdp_enabled(),
                "efficient": torch.backends.cuda.mem_efficient_sdp_enabled(),
                "math": torch.backends.cuda.math_sdp_enabled(),
            },
            tf32_matmul=torch.backends.cuda.matmul.allow_tf32,
        )
    else:
        out.update(name=platform.processor() or platform.machine(), threads=torch.get_num_threads())
    return out


def check_model(
    check: CheckModel, device: str, dtypes: list[str], overrides: list[str], lse: str, gpu: str | None, machine
) -> dict:
    """The reference (CPU float32), then every dtype on the device: families against the reference, fused
    against eager, cost against the plan."""
    cfg = compose_config(overrides)
    probes = cached_probes(cfg.probes, check.tokenizer, Path(cfg.paths.root) / "cache" / "probes")
    tolerances = family_tolerances(cfg)
    reference = run_families(check.model, check.tokenizer, probes, cfg, "cpu")
    loops = reference[GENERATION].pop("loops")
    runs = {}
    for dtype in dtypes:
        if device == "cpu" and dtype == "float32":
            measured = reference  # the same computation: the reference itself
        else:
            model = cast_as_loaded(check.model, device, DTYPES[dtype])
            with attention_stats.portable_lse(lse == "portable"):
                measured = run_families(model, check.tokenizer, probes, cfg, device, loops)
            measured[GENERATION].pop("loops", None)
        predicted = predictions(check, overrides, dtype, gpu, machine) or {}
        rows = {}
        for family, got in measured.items():
            row = {k: got[k] for k in ("dtype", "seconds", "peak_bytes", "error", "scalars")}
            row.update({k: got[k] for k in ("agreement", "entropy_max_abs") if k in got})
            row["predicted"] = predicted.get(family)
            if family in tolerances:
                if got["error"] or reference[family]["error"]:
                    row.update(ok=False, failed={"error": got["error"] or reference[family]["error"]})
                else:
                    c = compare(got["scalars"], reference[family]["scalars"], tolerances[family])
                    row.update(
                        max_abs=c.max_abs,
                        max_rel=c.max_rel,
                        ok=c.ok,
                        failed=c.failed,
                        skipped=c.skipped,
                        checked=c.checked,
                        tolerance=vars(tolerances[family]),
                    )
            rows[family] = row
        model = cast_as_loaded(check.model, device, DTYPES[dtype])
        rows["fused vs eager"] = {"dtype": dtype, "backends": fused_vs_eager(model, probes, lse)}
        rows["fused vs eager"]["ok"] = all(b.get("ok", True) for b in rows["fused vs eager"]["backends"].values())
        runs[dtype] = rows
    return {"reference": {f: r["scalars"] for f, r in reference.items() if f in tolerances}, "runs": runs}


def run_check(device: str, dtypes: list[str], models: list[str], lse: str, tiny: bool) -> dict:
    """The whole check as a dict (what outputs/gpu_check.json holds)."""
    overrides = PROBES + (TINY_PROBES if tiny else [])
    gpu, note = gpu_class(device)
    machine = load_machine()
    result = {
        "environment": environment(device),
        "gpu_class": gpu,
        "gpu_class_note": note,
        "lse": lse,
        "dtypes": dtypes,
        "overrides": overrides,
        "models": {},
    }
    for check in check_models(models):
        result["models"][check.name] = check_model(check, device, dtypes, overrides, lse, gpu, machine)
    result["failed"] = failures(result)
    result["ok"] = not result["failed"]
    return result


def _names(text: str, valid, what: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    bad = [n for n in names if n not in valid]
    if bad or not names:
        raise SystemExit(f"--{what} {text!r}: {', '.join(bad) or 'empty'} not valid; choose from {', '.join(valid)}")
    return names


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="ckptstudy-gpu-check", description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu (default cuda)")
    parser.add_argument("--dtypes", default="float32,bfloat16", help="comma-separated: float32, bfloat16, float16")
    parser.add_argument(
        "--models",
        default=None,
        help=f"comma-separated from {', '.join(MODELS)} (default micro,pythia-160m; with --tiny micro,tiny)",
    )
    parser.add_argument(
        "--lse",
        default="native",
        choices=["native", "portable"],
        help="portable: the fused statistics take the non-CPU logsumexp route on every device",
    )
    parser.add_argument("--tiny", action="store_true", help="tiny probes and models (seconds on CPU; for the tests)")
    parser.add_argument("--out", default="outputs/gpu_check.json", help="where the JSON result goes")
    parser.add_argument("--markdown", action="store_true", help="also print the precision table as markdown")
    args = parser.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit(
            f"--device {args.device}: torch sees no CUDA device (torch {torch.__version__}, "
            f"built with CUDA {torch.version.cuda}); use --device cpu to run the check on CPU"
        )
    if args.device.startswith("cuda"):
        torch.cuda.set_device(torch.device(args.device))  # synchronize and the peak statistics read this device
    dtypes = _names(args.dtypes, ("float32", "bfloat16", "float16"), "dtypes")
    models = _names(args.models or ("micro,tiny" if args.tiny else "micro,pythia-160m"), MODELS, "models")
    result = run_check(args.device, dtypes, models, args.lse, args.tiny)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1, default=str))
    print(render(result))
    if args.markdown:
        print(markdown_table(result))
    print(f"written: {out}")
    sys.exit(0 if result["ok"] else 1)


if __name__ == "__main__":
    main()

"""The hardware side of `ckptstudy-plan`: what a machine sustains, and the seconds a described pass takes on it.

A machine is a few measured (this CPU) or assumed (a GPU class) rates:
- the forward rate of the model's matrix products, by their inner width: on a CPU a product with an inner width
  of 128 (Pythia-14m's d_model, and its unembedding) runs at 0.66 of a 1024-wide one, so the rate is measured at
  several widths and read at the model's d_model;
- the rate of a vocabulary-wide float32 pass (log-softmax + gather over [positions, vocab]): at a 50k vocabulary
  this, not the unembedding's FLOPs, is what a CPU spends much of an ablation or a decoding step on;
- memory bandwidth (greedy decoding streams the weights and the KV cache at every step);
- per-layer and per-call overheads (Python, kernel launches).

The seconds of a pass: FLOPs / rate(d_model) + unembedded positions x vocab x `VOCAB_PASSES[logits]` / vocab rate
+ calls x overheads; eager attention moves its [heads, s, s] weights through memory about 6 times; greedy
decoding adds per step max(FLOPs / rate, (weights + KV cache) / bandwidth), a vocabulary pass of each row's
scores and the overheads. On CPU the KV cache is static (`generation.greedy_config`): every step attends over
its full length, prompt + new tokens; on a GPU it grows by one token per step.
"""

from __future__ import annotations

import json
import math
import platform
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from ckptstudy.measure.cost import Pass, Shape, pass_flops
from ckptstudy.measure.generation import greedy_generate, static_cache_on
from ckptstudy.model.neox import make_neox

CALIBRATION = Path("outputs") / "bench" / "calibration.json"

# published peaks (dense, no sparsity): (bf16/fp16 tensor TFLOP/s, fp32 TFLOP/s, memory GB/s, memory GB)
GPUS = {
    "T4": (65.0, 8.1, 320.0, 16),
    "L4": (121.0, 30.3, 300.0, 24),
    "A10G": (70.0, 31.2, 600.0, 24),
    "RTX-4090": (165.0, 82.6, 1008.0, 24),
    "A100-40GB": (312.0, 19.5, 1555.0, 40),
    "A100-80GB": (312.0, 19.5, 2039.0, 80),
    "H100-SXM": (989.0, 67.0, 3350.0, 80),
}
GPU_EFFICIENCY = {"compute": 0.35, "bandwidth": 0.6, "layer_overhead_ms": 0.1, "call_overhead_ms": 2.0}  # assumed
FORWARD_EFFICIENCY = 0.7  # achieved forward rate / float32 matmul rate on CPU when no bench calibration exists
GEMM_WIDTHS = (64, 128, 256, 512, 1024)  # inner widths the CPU's matmul rate is measured at
# vocabulary-wide passes per unembedded position, in units of one log-softmax + gather: a greedy step copies the
# scores to float32, takes log-softmax, p log p and its sum (the entropy) and the argmax (profiled: 4.2 units)
VOCAB_PASSES = {"last": 4.0, "all": 1.0, "row": 1.0, "selected": 1.0, "none": 0.0}
VOCAB_BYTES = 8  # a float32 pass reads and writes each element once (a GPU's vocabulary rate: bandwidth / 8)


@dataclass
class Machine:
    """What the time estimate assumes about the hardware."""

    name: str
    gflops: float  # sustained forward rate (GFLOP/s) of wide (1024+) GEMM-bound passes
    bandwidth_gbs: float  # memory bandwidth (GB/s)
    layer_overhead_ms: float  # per layer and forward call (Python, kernel launches)
    source: str  # how the numbers were obtained
    call_overhead_ms: float = 0.0  # per forward call beyond its layers (masks, cache, rotary, outputs)
    gemm_widths: tuple = ()  # ((inner width, GFLOP/s), ...) measured below the wide rate; empty: `gflops` at all
    vocab_gelems: float | None = None  # G elements/s of a vocabulary-wide pass; None: bandwidth / VOCAB_BYTES
    static_cache: bool = False  # greedy decoding attends over the whole static cache (CPU: generation.static_cache_on)

    def rate(self, width: int) -> float:
        """Forward FLOP/s of matrix products with inner width `width` (log-linear between measured widths, the
        nearest measured rate outside them)."""
        if not self.gemm_widths:
            return self.gflops * 1e9
        widths, rates = zip(*sorted((int(w), float(g)) for w, g in self.gemm_widths), strict=True)
        return float(np.interp(math.log(width), np.log(widths), rates)) * 1e9

    def vocab_rate(self) -> float:
        """Elements per second of a vocabulary-wide float32 pass."""
        if self.vocab_gelems:
            return self.vocab_gelems * 1e9
        return self.bandwidth_gbs * 1e9 / VOCAB_BYTES


def pass_seconds(p: Pass, shape: Shape, machine: Machine, dtype_bytes: int) -> float:
    """Wall seconds of every call of the pass on `machine` (the module docstring's model)."""
    if p.rows == 0:
        return 0.0
    d, s = shape.d_model, p.seq
    rate, vocab_rate = machine.rate(d), machine.vocab_rate()
    bandwidth = machine.bandwidth_gbs * 1e9
    prefill = replace(p, decode=0)
    per_call = (p.layers * machine.layer_overhead_ms + machine.call_overhead_ms) / 1e3
    backward = 3 if p.backward else 1
    seconds = pass_flops(prefill, shape) / rate + p.calls * per_call
    seconds += p.rows * p.unembedded * shape.vocab * VOCAB_PASSES[p.logits] * backward / vocab_rate
    if p.attention == "eager":  # [b, h, s, s] weights written and read ~6 times per layer
        seconds += p.rows * p.layers * shape.n_heads * s * s * dtype_bytes * 6 / bandwidth * backward
    return seconds + decoding_seconds(p, shape, machine, dtype_bytes) if p.decode else seconds


def decoding_seconds(p: Pass, shape: Shape, machine: Machine, dtype_bytes: int) -> float:
    """The decoding steps of a greedy pass: per call and step, compute or streaming (whichever is slower), a
    vocabulary pass over each row's scores, and the overheads."""
    d = shape.d_model
    rate, bandwidth = machine.rate(d), machine.bandwidth_gbs * 1e9
    weights = shape.params * dtype_bytes
    overhead = (shape.n_layers * machine.layer_overhead_ms + machine.call_overhead_ms) / 1e3

    def step_seconds(rows: int, keys: int) -> float:
        flops = rows * (shape.n_layers * (2 * shape.layer_matmul_params + 4 * d * keys) + 2 * d * shape.vocab)
        cache = 2 * shape.n_layers * rows * keys * d * dtype_bytes
        return max(flops / rate, (weights + cache) / bandwidth) + overhead

    seconds = 0.0
    for start in range(0, p.rows, max(1, p.batch)):
        b = min(p.batch, p.rows - start)
        if machine.static_cache:  # every step attends over the whole cache
            seconds += p.decode * step_seconds(b, p.seq + p.decode)
        else:
            seconds += sum(step_seconds(b, p.seq + step) for step in range(1, p.decode + 1))
        seconds += p.decode * b * shape.vocab * VOCAB_PASSES["last"] / machine.vocab_rate()
    return seconds


# ---------------------------------------------------------------- this CPU


def measure_machine(threads: int | None = None) -> Machine:
    """This machine's float32 matmul rates by inner width, vocabulary-pass rate, weight-streaming bandwidth and
    call overheads (a few seconds)."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    widths = tuple((k, round(_matmul_gflops(k) * FORWARD_EFFICIENCY, 1)) for k in GEMM_WIDTHS)
    wide = widths[-1][1]
    # decoding streams every weight once per step: a few rows times a 64 MB matrix, as in a decode step
    weight, rows = torch.randn(4096, 4096), torch.randn(8, 4096)
    rows @ weight
    stream = min(_timed(lambda: rows @ weight) for _ in range(5))
    bandwidth = weight.numel() * 4 / stream / 1e9
    per_layer, per_call = _call_overheads_ms()
    return Machine(
        name=f"this machine ({cpu_name()}, {torch.get_num_threads()} threads)",
        gflops=wide,
        bandwidth_gbs=round(bandwidth, 1),
        layer_overhead_ms=round(per_layer, 3),
        call_overhead_ms=round(per_call, 3),
        gemm_widths=widths,
        vocab_gelems=round(_vocab_gelems(), 3),
        static_cache=static_cache_on("cpu"),
        source=f"measured at plan time: matmul {wide / FORWARD_EFFICIENCY:.0f} GFLOP/s at width 1024 "
        f"({widths[1][1] / wide:.2f} of it at 128) x {FORWARD_EFFICIENCY} forward efficiency (assumed), "
        "log-softmax + gather over 512 x 50304, 8-row x 64 MB matmul bandwidth, decode-step call overheads of tiny "
        "models",
    )


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _matmul_gflops(width: int) -> float:
    """GFLOP/s of [2048, width] @ [width, 4096] in float32 (best of 3)."""
    import torch

    a, b = torch.randn(2048, width), torch.randn(width, 4096)
    a @ b
    return 2 * 2048 * width * 4096 / min(_timed(lambda: a @ b) for _ in range(3)) / 1e9


def _vocab_gelems() -> float:
    """G elements/s of log-softmax + gather over [512, 50304] float32 (Pythia's vocabulary; larger than caches)."""
    import torch

    logits, tokens = torch.randn(512, 50304), torch.zeros(512, 1, dtype=torch.long)

    def one():
        return torch.log_softmax(logits, dim=-1).gather(-1, tokens)

    one()
    return logits.numel() / min(_timed(one) for _ in range(3)) / 1e9


def _call_overheads_ms() -> tuple[float, float]:
    """(per layer, per call) overhead of a cached one-token decode step with an attention mask, as greedy
    decoding runs it: tiny GPT-NeoX models of 1 and 5 layers, 8 rows (the arithmetic is negligible)."""
    import torch

    steps = {}
    for layers in (1, 5):
        model = make_neox(64, 32, layers, 2, max_position_embeddings=128, seed=0).eval()
        prompts = torch.randint(2, 64, (8, 8))
        greedy_generate(model, prompts, 4, batch_size=8, desc=None)
        best = min(
            _timed(lambda m=model, p=prompts: greedy_generate(m, p, 16, batch_size=8, desc=None)) for _ in range(3)
        )
        steps[layers] = best / 16 * 1e3
    per_layer = max((steps[5] - steps[1]) / 4, 0.0)
    return per_layer, max(steps[1] - per_layer, 0.0)


def cpu_name() -> str:
    """The CPU model name (from /proc/cpuinfo, else the platform)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def load_machine(root: Path | None = None, measure: bool = True) -> Machine:
    """The calibration `make bench` stored for this CPU and thread count, else a measurement now. A calibration
    stored before the width and vocabulary rates and the cache kind existed is measured again."""
    import torch

    path = (root or Path.cwd()) / CALIBRATION
    if path.exists():
        stored = json.loads(path.read_text())
        fields = stored.get("machine", {})
        current = fields.get("vocab_gelems") is not None and "static_cache" in fields
        if current and stored.get("cpu") == cpu_name() and stored.get("threads") == torch.get_num_threads():
            return Machine(**{**fields, "gemm_widths": tuple(tuple(w) for w in fields.get("gemm_widths", ()))})
    if not measure:
        return Machine("unmeasured", 50.0, 10.0, 0.2, "defaults", static_cache=static_cache_on("cpu"))
    return measure_machine()


def gpu_machine(name: str, dtype: str) -> Machine:
    """A GPU class at its published peak (bf16 tensor cores unless `dtype` is float32) x GPU_EFFICIENCY."""
    if name not in GPUS:
        raise ValueError(f"unknown GPU class {name!r}; choose one of {', '.join(GPUS)}")
    tensor, fp32, bandwidth, _ = GPUS[name]
    peak = fp32 if dtype == "float32" else tensor
    return Machine(
        name=name,
        gflops=peak * 1e3 * GPU_EFFICIENCY["compute"],
        bandwidth_gbs=bandwidth * GPU_EFFICIENCY["bandwidth"],
        layer_overhead_ms=GPU_EFFICIENCY["layer_overhead_ms"],
        call_overhead_ms=GPU_EFFICIENCY["call_overhead_ms"],
        static_cache=static_cache_on("cuda"),
        source=f"published peak {peak:g} TFLOP/s ({'fp32' if dtype == 'float32' else 'bf16 tensor'}) x "
        f"{GPU_EFFICIENCY['compute']}, {bandwidth:g} GB/s x {GPU_EFFICIENCY['bandwidth']}, vocabulary passes at "
        f"bandwidth / {VOCAB_BYTES} bytes (assumed, not measured)",
    )

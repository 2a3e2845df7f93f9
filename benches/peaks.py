"""Peak memory of one call of a pass, measured against `measure.cost.pass_peak_bytes` (the check of the memory
budget's peak model). Each case runs in a fresh process (the resident high-water mark is per process):

    python benches/peaks.py                                    # the standard cases, one JSON line each
    python benches/peaks.py <shape> <kind> <rows> <seq> [n]    # one case

shape: micro | 14m | 70m | 160m (random init); kind: pattern, lowinfo, generate (n new tokens), clean,
attribution, sinktext, sinkrepeat, perturb, body. Measured = resident memory above the start of the call (CPU).
"""

from __future__ import annotations

import gc
import json
import subprocess
import sys

import torch

SHAPES = {
    "micro": (2, 128, 4, 2048, 128),
    "14m": (6, 128, 4, 50304, 2048),
    "70m": (6, 512, 8, 50304, 2048),
    "160m": (12, 768, 12, 50304, 2048),
}
CASES = [
    ("micro", "pattern", 16, 128),
    ("14m", "pattern", 4, 1024),
    ("14m", "lowinfo", 8, 1024),
    ("14m", "generate", 16, 32, 256),
    ("14m", "attribution", 4, 512),
    ("14m", "sinktext", 4, 1024),
    ("70m", "body", 8, 1024),
    ("70m", "clean", 4, 512),
]


def run_case(name: str, kind: str, b: int, s: int, n: int = 64) -> dict:
    from ckptstudy.measure.ablation import Targets, attribution_effect_rows, clean_run
    from ckptstudy.measure.attention_stats import StatsRequest
    from ckptstudy.measure.capture import capture_stats
    from ckptstudy.measure.cost import Pass, Shape, generation_pass, pass_peak_bytes
    from ckptstudy.measure.generation import greedy_generate
    from ckptstudy.measure.meter import Meter
    from ckptstudy.metrics.icl_heads import (
        attribution_pass,
        exact_ablation_passes,
        next_token_nll,
        pattern_pass,
        repeat_pattern_positions,
    )
    from ckptstudy.metrics.low_info import context_pass, context_statistics
    from ckptstudy.metrics.sink import repeat_pass, repeat_passes, text_pass, text_passes
    from ckptstudy.model.neox import make_neox

    layers, d, heads, vocab, context = SHAPES[name]
    model = make_neox(vocab, d, layers, heads, max_position_embeddings=context, seed=0).eval()
    shape = Shape.of(model.config)
    ids = torch.randint(1, vocab, (b, s), generator=torch.Generator().manual_seed(0))
    mask = torch.zeros(b, s, dtype=torch.bool)
    mask[:, s // 2 : s - 1] = True
    targets, per_row = Targets(ids, mask), s - 1 - s // 2
    classes = torch.randint(0, 8, (vocab,))
    cases = {
        "pattern": (
            lambda: capture_stats(
                model, ids, StatsRequest(repeat_pattern_positions((s - 1) // 2), per_row=True), next_token_nll, b
            ),
            pattern_pass(b, s, shape, None),
        ),
        "lowinfo": (
            lambda: context_statistics(model, ids, torch.ones(b, s, dtype=torch.double), classes, classes == 0, b),
            context_pass("text", b, s, shape, None),
        ),
        "generate": (
            lambda: greedy_generate(model, ids, n, batch_size=b, desc=None),
            generation_pass("g", b, s, n, shape, None),
        ),
        "clean": (
            lambda: clean_run(model, targets, "logprob"),
            exact_ablation_passes("x", b, s, per_row, shape, None)[0],
        ),
        "attribution": (
            lambda: attribution_effect_rows(model, targets, max_rows=b),
            attribution_pass("x", b, s, per_row, shape, None),
        ),
        "sinktext": (lambda: text_pass(model, ids, b, True), text_passes(b, s, shape, None)[0]),
        "sinkrepeat": (lambda: repeat_pass(model, ids, b, divergence=True), repeat_passes(b, s, shape, None)[0]),
        "body": (lambda: model.base_model(input_ids=ids), Pass("body", b, s, b, layers)),
    }
    fn, described = cases[kind]
    meter = Meter("cpu")
    with torch.no_grad():
        model(input_ids=ids[:1, :8])  # warm-up: kernels and allocator pools outside the measured call
        gc.collect()
        with meter.part(kind):
            fn()
    measured, predicted = meter.costs[kind]["peak_bytes"], pass_peak_bytes(described.with_batch(b), shape, 4)
    return {
        "shape": name,
        "kind": kind,
        "rows": b,
        "seq": s,
        "measured_mb": round(measured / 2**20, 1),
        "predicted_mb": round(predicted / 2**20, 1),
        "ratio": round(measured / predicted, 2) if predicted else None,
    }


def main(argv: list[str]) -> None:
    if argv:
        name, kind, b, s, *rest = argv
        print(json.dumps(run_case(name, kind, int(b), int(s), *map(int, rest))), flush=True)
        return
    for case in CASES:
        proc = subprocess.run([sys.executable, __file__, *map(str, case)], capture_output=True, text=True)
        print(proc.stdout.strip() or f"{case}: failed: {proc.stderr[-500:]}", flush=True)


if __name__ == "__main__":
    torch.set_num_threads(2)
    main(sys.argv[1:])

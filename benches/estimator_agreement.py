"""How well attribution patching ranks heads like exact ablation (the rule behind icl_heads `mode: auto`).

On the micro suite's final and a middle checkpoint (ICL loops from the default icl_repeat probe, natural loops
from the default natural greedy continuations) and on a random-init model of the Pythia-14m shape (ICL loops of
random passages): Spearman over every head of the pooled effects, and the overlap of the top-k heads (k = 3 and
a quarter of the heads). Prints one JSON object.

    python benches/estimator_agreement.py [--steps 600,1600] [--prompts 16]
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from ckptstudy.config import compose_config
from ckptstudy.measure.ablation import Targets, attribution_effect_rows, exact_effect_rows
from ckptstudy.metrics import JobContext
from ckptstudy.metrics.icl_heads import icl_targets, natural_loop_targets
from ckptstudy.model.checkpoints import CheckpointSource, load_checkpoint
from ckptstudy.model.neox import make_neox
from ckptstudy.model.suite import ensure_suite
from ckptstudy.probes import cached_probes
from ckptstudy.stats.specialization import spearman


def agreement(model, targets: Targets) -> dict:
    """Spearman over heads and top-k overlaps of attribution vs exact pooled effects, with the two times."""
    start = time.perf_counter()
    exact = exact_effect_rows(model, targets, max_rows=64).pooled.flatten()
    middle = time.perf_counter()
    estimate = attribution_effect_rows(model, targets, max_rows=16).pooled.flatten()
    end = time.perf_counter()
    out = {"heads": exact.numel(), "spearman": round(float(spearman(estimate, exact)), 4)}
    for k in sorted({3, max(1, exact.numel() // 4)}):
        top_exact, top_estimate = set(exact.topk(k).indices.tolist()), set(estimate.topk(k).indices.tolist())
        out[f"top{k}_overlap"] = round(len(top_exact & top_estimate) / k, 3)
    out["exact_seconds"], out["attribution_seconds"] = round(middle - start, 2), round(end - middle, 2)
    return out


def micro(steps: list[int], prompts: int) -> dict:
    cfg = compose_config()
    suite = ensure_suite(cfg.model)
    out = {}
    for step in steps:
        model, tokenizer = load_checkpoint(CheckpointSource("micro", step, "local", str(suite / f"step{step}")))
        probes = cached_probes(cfg.probes, tokenizer, "outputs/cache/probes")
        ctx = JobContext.from_config(cfg, model, tokenizer, probes)
        icl = icl_targets(probes.icl_repeat[:prompts], probes.icl_length)
        natural = natural_loop_targets(ctx.natural_loops())
        out[f"micro step{step} ICL loops"] = agreement(model, icl)
        if natural is not None:
            out[f"micro step{step} natural loops"] = agreement(model, natural)
    return out


def pythia14m_shape(prompts: int, length: int = 64, copies: int = 4) -> dict:
    model = make_neox(50304, 128, 6, 4, seed=0).eval()
    gen = torch.Generator().manual_seed(0)
    passages = torch.randint(1, 50000, (prompts, length), generator=gen)
    ids = torch.cat([torch.zeros(prompts, 1, dtype=torch.long), passages.repeat(1, copies)], dim=1)
    return {"random-init Pythia-14m shape, ICL loops": agreement(model, icl_targets(ids, length))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", default="600,1600")
    parser.add_argument("--prompts", type=int, default=16)
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    out = micro([int(s) for s in args.steps.split(",")], args.prompts)
    out.update(pythia14m_shape(args.prompts))
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()

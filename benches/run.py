"""`make bench`: speed and memory ratios measured side by side in one run, on random-init models with
real Pythia shapes. Ratios, not absolute times, are the claim: this machine's timings are noisy.

Compared:
- per-head ablation: exact batched (reuses the clean residual) vs a naive per-head loop; attribution
  patching vs one exact pass
- head-score capture: reducing attention inside hooks vs HF `output_attentions=True` (time, peak memory)
- greedy generation: batched with the KV cache vs `model.generate` one prompt at a time
- trailing-cycle detection on 1000 x 1000 tokens
"""

from __future__ import annotations

import argparse
import json
import time
import tracemalloc
from pathlib import Path

import torch

from ckptstudy.ablation import attribution_effects, exact_effects, naive_effects
from ckptstudy.capture import capture
from ckptstudy.cycles import trailing_cycles
from ckptstudy.generation import greedy_generate
from ckptstudy.metrics.icl_heads import head_pattern_sums, icl_targets
from ckptstudy.neox import make_neox

SHAPES = {"pythia-14m": (6, 128, 4), "pythia-70m": (6, 512, 8), "pythia-160m": (12, 768, 12)}


def pythia_shaped(name: str):
    """A random-init model of a Pythia size, built like every model here (`ckptstudy.neox`), in eval mode."""
    layers, d, heads = SHAPES[name]
    return make_neox(vocab_size=50304, d_model=d, n_layers=layers, n_heads=heads, seed=0).eval()


def timed(fn, repeat: int = 1) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out


def bench_ablation(name: str, prompts: int, length: int) -> dict:
    model = pythia_shaped(name)
    passages = torch.randint(2, 50000, (prompts, length), generator=torch.Generator().manual_seed(0))
    targets = icl_targets(passages.repeat(1, 4), length)
    t_exact, exact = timed(lambda: exact_effects(model, targets))
    t_naive, naive = timed(lambda: naive_effects(model, targets))
    t_attr, _ = timed(lambda: attribution_effects(model, targets))
    t_clean, _ = timed(lambda: model(input_ids=targets.ids), repeat=2)
    return {
        "model": name,
        "probe": f"{prompts} prompts x {4 * length} tokens",
        "naive_s": round(t_naive, 2),
        "exact_s": round(t_exact, 2),
        "attribution_s": round(t_attr, 2),
        "one_forward_s": round(t_clean, 3),
        "exact_speedup_vs_naive": round(t_naive / t_exact, 2),
        "attribution_time_vs_exact": round(t_attr / t_exact, 3),
        "max_abs_diff_exact_vs_naive": float((exact - naive).abs().max()),
    }


def peak_memory(fn) -> tuple[float, int]:
    tracemalloc.start()
    start = time.perf_counter()
    fn()
    seconds = time.perf_counter() - start
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return seconds, peak


def bench_capture(name: str, prompts: int, length: int) -> dict:
    model = pythia_shaped(name)
    ids = torch.cat(
        [torch.zeros(prompts, 1, dtype=torch.long), torch.randint(2, 50000, (prompts, length)).repeat(1, 2)], 1
    )

    def hooked():
        capture(model, ids, attn_fn=lambda _l, attn, _ids: head_pattern_sums(attn, length), batch_size=prompts)

    def output_attentions():
        with torch.no_grad():
            attns = model(input_ids=ids, output_attentions=True).attentions
            return torch.stack([head_pattern_sums(a, length) for a in attns])

    hooked(), output_attentions()  # warm-up
    t_hook, _ = timed(hooked, repeat=3)
    t_full, _ = timed(output_attentions, repeat=3)
    # torch CPU tensors are not seen by tracemalloc; use the attention bytes that stay alive instead
    layers, _, heads = SHAPES[name]
    seq = ids.shape[1]
    kept_full = layers * prompts * heads * seq * seq * 4
    kept_hook = prompts * heads * seq * seq * 4  # one layer at a time
    return {
        "model": name,
        "probe": f"{prompts} x {seq} tokens",
        "hooked_s": round(t_hook, 3),
        "output_attentions_s": round(t_full, 3),
        "speedup": round(t_full / t_hook, 2),
        "attention_bytes_alive_ratio": round(kept_full / kept_hook, 1),
    }


def bench_generation(name: str, prompts: int, prompt_len: int, new_tokens: int) -> dict:
    model = pythia_shaped(name)
    ids = torch.randint(2, 50000, (prompts, prompt_len), generator=torch.Generator().manual_seed(1))
    t_batched, batched = timed(lambda: greedy_generate(model, ids, new_tokens, batch_size=prompts, desc=None))

    def one_by_one():
        with torch.no_grad():
            return [
                model.generate(
                    ids[i : i + 1],
                    max_new_tokens=new_tokens,
                    do_sample=False,
                    min_new_tokens=new_tokens,
                    pad_token_id=0,
                )[0, prompt_len:]
                for i in range(prompts)
            ]

    t_single, single = timed(one_by_one)
    same = all(torch.equal(a, b) for a, b in zip(batched.ids, single))
    tokens = prompts * new_tokens
    return {
        "model": name,
        "prompts": prompts,
        "new_tokens": new_tokens,
        "batched_tok_per_s": round(tokens / t_batched, 1),
        "generate_bs1_tok_per_s": round(tokens / t_single, 1),
        "speedup": round(t_single / t_batched, 2),
        "same_tokens": same,
    }


def bench_cycles() -> dict:
    gen = torch.Generator().manual_seed(2)
    no_loops = torch.randint(0, 50000, (1000, 1000), generator=gen)
    loops = torch.randint(0, 50000, (1000, 1000), generator=gen)
    for row in range(1000):  # half the rows end in a loop of period 2..200 starting somewhere
        if row % 2:
            period = 2 + row % 199
            start = 1000 - period * (2 + row % 3)
            loops[row, start:] = loops[row, start : start + period].repeat(1000 // period + 1)[: 1000 - start]
    t_none, _ = timed(lambda: trailing_cycles(no_loops), repeat=3)
    t_half, (period, _, _) = timed(lambda: trailing_cycles(loops), repeat=3)
    return {"no_loops_s": round(t_none, 3), "half_looping_s": round(t_half, 3), "found": int((period > 0).sum())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small shapes only (a smoke run)")
    parser.add_argument("--out", default="outputs/bench/bench.json")
    args = parser.parse_args()
    torch.set_grad_enabled(True)
    big = "pythia-14m" if args.quick else "pythia-160m"
    report = {
        "ablation": bench_ablation(big, prompts=4, length=16),
        "capture": bench_capture(big, prompts=8, length=50),
        "generation": bench_generation(
            "pythia-14m" if args.quick else "pythia-70m", prompts=16, prompt_len=32, new_tokens=64
        ),
        "cycles_1000x1000": bench_cycles(),
        "torch_threads": torch.get_num_threads(),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1))
    for section, values in report.items():
        print(f"{section}: {values}")
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()

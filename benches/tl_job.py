"""The TransformerLens baseline of one checkpoint job: the icl/, rep/ and lowinfo/ metrics computed the way a
competent TransformerLens user would, on the same model (TransformerLens 4.x `TransformerBridge` around the
same HF GPT-NeoX, identical logits).

Model-facing work is TransformerLens's:
- greedy continuations: `bridge.generate(do_sample=False, output_logits=True)` (batched, KV cache); the
  next-token entropies come from the returned logits;
- head patterns: `run_with_cache(names_filter=...hook_pattern)`, every layer's pattern of the whole probe in
  the cache at once, then reduced per layer;
- losses: the full logits of `bridge(ids)`;
- per-head ablation: one `run_with_hooks` per head that zeroes that head's `hook_z` (the standard
  activation-patching loop), full logits each time.
The analysis after that (cycle detection, enrichment, concentration statistics...) reuses ckptstudy's pure
functions, so a difference between the two jobs can only come from the model-facing work.
"""

from __future__ import annotations

import math
import time

import torch

from ckptstudy.measure.ablation import Targets, token_scores
from ckptstudy.measure.generation import Generation, NaturalLoops, entropy_of_logits
from ckptstudy.measure.token_classes import CLASS_INDEX, CLASSES, low_information_ids, vocabulary_classes
from ckptstudy.metrics import FamilyResult
from ckptstudy.metrics import icl_heads as icl
from ckptstudy.metrics import low_info as li
from ckptstudy.metrics import repetition as rep

PATTERN = "attn.hook_pattern"


def generate(bridge, prompts: torch.Tensor, new_tokens: int) -> Generation:
    out = bridge.generate(
        prompts, max_new_tokens=new_tokens, do_sample=False, stop_at_eos=False, verbose=False, output_logits=True
    )
    logits = torch.stack(list(out.logits), dim=1)
    return Generation(ids=out.sequences[:, prompts.shape[1] :].cpu(), entropy=entropy_of_logits(logits).cpu())


def natural_loops(bridge, ctx) -> NaturalLoops:
    prompts = ctx.probes.natural
    tokens = min(ctx.natural_new_tokens, ctx.context_length - prompts.shape[1])
    gen = generate(bridge, prompts, tokens)
    period, copies, onset = ctx.loops.detect(gen.ids)
    return NaturalLoops(prompts, gen, period, copies, onset, ctx.loops)


def head_effects(bridge, targets: Targets, score: str = "logprob") -> torch.Tensor:
    """Zero-ablation effect of every head: one run_with_hooks per head."""
    cfg = bridge.cfg
    ids, mask, expected = targets.ids, targets.mask, targets.expected
    with torch.no_grad():
        clean = token_scores(bridge(ids)[mask], expected, score).double().sum()
    n = int(mask.sum())
    effects = torch.zeros(cfg.n_layers, cfg.n_heads)
    for layer in range(cfg.n_layers):
        for head in range(cfg.n_heads):

            def ablate(z, hook, head=head):
                z[:, :, head, :] = 0.0
                return z

            with torch.no_grad():
                logits = bridge.run_with_hooks(ids, fwd_hooks=[(f"blocks.{layer}.attn.hook_z", ablate)])
            effects[layer, head] = float(clean - token_scores(logits[mask], expected, score).double().sum()) / n
    return effects


def patterns(bridge, ids: torch.Tensor):
    """(logits, per-layer attention patterns) of one run_with_cache."""
    with torch.no_grad():
        logits, cache = bridge.run_with_cache(ids, names_filter=lambda name: name.endswith(PATTERN))
    return logits, [cache[f"blocks.{i}.{PATTERN}"] for i in range(bridge.cfg.n_layers)]


def icl_family(bridge, ctx, loops: NaturalLoops, params: dict) -> FamilyResult:
    probes = ctx.probes
    r, ids = probes.repeat_length, probes.random_repeat
    logits, pats = patterns(bridge, ids)
    per_layer = torch.stack([icl.head_pattern_sums(p.float(), r) for p in pats])
    per_layer = per_layer / (torch.tensor([r, r, 2 * r], dtype=torch.float) * ids.shape[0])[None, :, None]
    induction, duplicate, prev = per_layer[:, 0], per_layer[:, 1], per_layer[:, 2]
    nll = icl.token_nll(logits, ids).sum(0) / ids.shape[0]
    k = params["top_k"]
    result = FamilyResult(
        scalars={
            "icl/induction_max": float(induction.max()),
            f"icl/induction_top{k}_mean": icl.top_k_mean(induction, k),
            "icl/prev_token_max": float(prev.max()),
            "icl/duplicate_max": float(duplicate.max()),
            "icl/repeat_nll_gain": icl.repeat_nll_gain(nll, r),
        }
    )
    long_text = probes.long_text[:, : ctx.context_length]
    with torch.no_grad():
        long_nll = icl.token_nll(bridge(long_text), long_text).sum(0) / long_text.shape[0]
    score = icl.icl_score(long_nll, params["late_position"], params["early_position"], params["window"])
    result.set("icl/icl_score", score, "")
    prompts, length = probes.icl_repeat, probes.icl_length
    room = ctx.context_length - prompts.shape[1]
    gen = generate(bridge, prompts, min(params["rate_cycles"] * length, room))
    rate, accuracy = icl.copy_rate(gen.ids, prompts[:, :length])
    result.set("icl/icl_repeat_rate", rate, "")
    result.set("icl/icl_copy_accuracy", accuracy, "")
    if params["mode"] == "off":
        return result
    targets = icl.icl_targets(probes.icl_repeat[:, : ctx.context_length], length)
    effects = head_effects(bridge, targets, params["score"])
    result.update(icl.specialization_scalars(effects, induction, k, params["min_effect_total"]))
    result.set("icl/natural_loop_prompts", int(loops.looping.sum()), "")
    natural_targets = icl.natural_loop_targets(loops)
    natural = head_effects(bridge, natural_targets, params["score"]) if natural_targets is not None else None
    missing = "no natural loop or no query inside a copy"
    result.update(icl.comparison_scalars(effects, natural, k, params["min_effect_total"], missing))
    return result


def repetition_family(loops: NaturalLoops, params: dict) -> FamilyResult:
    result, _ = rep.loop_summary(loops, params["max_cycles"])
    result.set("rep/generated_tokens", loops.generation.ids.shape[1], "")
    return result


def context_statistics(bridge, ids, query_weight, key_classes, low_info) -> dict[str, torch.Tensor]:
    """lowinfo/'s statistics of one context from one run_with_cache (the family's own pure reductions)."""
    classes = key_classes[ids]
    onehot = torch.nn.functional.one_hot(classes, len(CLASSES)).double()
    onehot = torch.cat([onehot, low_info[ids].double()[..., None]], dim=-1)
    kind = torch.where(low_info[ids], 1, torch.where(classes == CLASS_INDEX["CONTENT_WORD"], 2, 0))
    kind = kind * (query_weight > 0)
    weight = query_weight.double()
    _, pats = patterns(bridge, ids)
    sums = []
    for attn in pats:
        attn = attn.double()
        sums.append(
            {
                "mass": li.class_mass(attn, onehot, weight),
                "mass_nosink": li.class_mass(attn, onehot, weight, sink=False),
                "entropy": li.entropy_sums(attn, kind),
                "entropy_nosink": li.entropy_sums(attn, kind, sink=False),
            }
        )
    out = {}
    for suffix, sink in (("", True), ("_nosink", False)):
        expected = li.uniform_mass(onehot, weight, sink)
        mass = torch.stack([layer[f"mass{suffix}"] for layer in sums])
        out[f"enrich{suffix}"] = torch.where(expected > 0, mass / expected.clamp(min=1e-30), math.nan)
        out[f"expected{suffix}"] = expected
        counts = li.entropy_counts(kind, sink)
        out[f"entropy_rows{suffix}"] = counts
        entropy = torch.stack([layer[f"entropy{suffix}"] for layer in sums])
        out[f"entropy{suffix}"] = entropy / counts[None, None, :, None].clamp(min=1)
        out[f"entropy{suffix}"][:, :, counts == 0] = math.nan
    return out


def low_info_family(bridge, ctx, params: dict) -> FamilyResult:
    key_classes = vocabulary_classes(ctx.tokenizer)
    vocab = max(len(ctx.tokenizer), int(bridge.cfg.d_vocab))
    key_classes = torch.cat([key_classes, torch.full((vocab - len(key_classes),), CLASS_INDEX["OTHER"])])
    corpus = torch.cat([ctx.probes.long_text.flatten(), ctx.probes.natural.flatten()])
    low_info = low_information_ids(corpus, vocab, params["quantile"])
    result = FamilyResult()
    inputs = li.context_inputs(ctx, params["text_skip"])
    for context in li.CONTEXTS:
        if context not in inputs:
            for key in li.context_keys(context):
                result.nan(key, "no prompt's continuation loops at this checkpoint")
            continue
        ids, weight = inputs[context]
        stats = context_statistics(bridge, ids, weight, key_classes, low_info)
        result.update(li.context_scalars(context, stats))
    result.update(li.newline_ratios(result.scalars, result.nan_reasons))
    result.set("lowinfo/low_info_vocab_share", low_info.double().mean(), "")
    return result


def run(bridge, ctx, metrics: dict) -> tuple[dict[str, float], dict[str, float]]:
    """Every scalar of the icl_heads, repetition and low_info families, and seconds per step."""
    seconds, scalars = {}, {}
    start = time.perf_counter()
    loops = natural_loops(bridge, ctx)
    ctx.shared["natural_loops"] = loops  # context_inputs reads ctx.natural_loops()
    seconds["natural_generation"] = time.perf_counter() - start
    families = {
        "repetition": lambda: repetition_family(loops, metrics["repetition"]),
        "icl_heads": lambda: icl_family(bridge, ctx, loops, metrics["icl_heads"]),
        "low_info": lambda: low_info_family(bridge, ctx, metrics["low_info"]),
    }
    for name, fn in families.items():
        if name not in metrics:
            continue
        start = time.perf_counter()
        scalars.update(fn().scalars)
        seconds[name] = time.perf_counter() - start
    return scalars, seconds

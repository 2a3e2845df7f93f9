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
functions (each family's `*_result` from per-prompt rows) and its reference reductions of materialised weights
(`ckptstudy.reference`), so a difference between the two jobs can only come from the model-facing work.
"""

from __future__ import annotations

import time

import torch

from ckptstudy import reference
from ckptstudy.measure.ablation import EffectRows, Targets, token_scores
from ckptstudy.measure.generation import Generation, NaturalLoops, entropy_of_logits
from ckptstudy.measure.token_classes import CLASS_INDEX, CLASSES
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


def row_sums(scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-row sums [n] (float64) of per-target scores given in the order of mask.nonzero()."""
    return torch.zeros(mask.shape[0], dtype=torch.float64).index_add_(0, mask.nonzero()[:, 0], scores.double())


def head_effect_rows(bridge, targets: Targets, score: str = "logprob") -> EffectRows:
    """Zero-ablation effect of every head per prompt: one run_with_hooks per head."""
    cfg = bridge.cfg
    ids, mask, expected = targets.ids, targets.mask, targets.expected
    with torch.no_grad():
        clean = row_sums(token_scores(bridge(ids)[mask], expected, score), mask)
    sums = torch.zeros(ids.shape[0], cfg.n_layers, cfg.n_heads, dtype=torch.float64)
    for layer in range(cfg.n_layers):
        for head in range(cfg.n_heads):

            def ablate(z, hook, head=head):
                z[:, :, head, :] = 0.0
                return z

            with torch.no_grad():
                logits = bridge.run_with_hooks(ids, fwd_hooks=[(f"blocks.{layer}.attn.hook_z", ablate)])
            sums[:, layer, head] = clean - row_sums(token_scores(logits[mask], expected, score), mask)
    return EffectRows(sums, mask.sum(1).double())


def head_effects(bridge, targets: Targets, score: str = "logprob") -> torch.Tensor:
    """Zero-ablation effect of every head pooled over the targets: [n_layers, n_heads]."""
    return head_effect_rows(bridge, targets, score).pooled


def patterns(bridge, ids: torch.Tensor):
    """(logits, per-layer attention patterns) of one run_with_cache."""
    with torch.no_grad():
        logits, cache = bridge.run_with_cache(ids, names_filter=lambda name: name.endswith(PATTERN))
    return logits, [cache[f"blocks.{i}.{PATTERN}"] for i in range(bridge.cfg.n_layers)]


def nll_rows(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Each row's next-token NLL from full logits [n, s, vocab]: [n, s - 1] (float64)."""
    return torch.stack([icl.next_token_nll(logits[r : r + 1], ids[r : r + 1]) for r in range(len(ids))]).double()


def icl_family(bridge, ctx, loops: NaturalLoops, params: dict) -> FamilyResult:
    probes = ctx.probes
    r, ids = probes.repeat_length, probes.random_repeat
    logits, pats = patterns(bridge, ids)
    counts = torch.tensor([r, r, 2 * r], dtype=torch.double)[None, :, None]
    rows = torch.stack(
        [
            torch.stack([reference.head_pattern_sums(p[i : i + 1].double(), r) for p in pats]) / counts
            for i in range(len(ids))
        ]
    )  # [n, layer, 3, head]: each prompt's mean pattern weights
    result = icl.pattern_result(rows, nll_rows(logits, ids), r, params["top_k"])
    long_text = probes.long_text[:, : ctx.context_length]
    with torch.no_grad():
        long_logits = bridge(long_text)
    result.update(
        icl.loss_result(
            nll_rows(long_logits, long_text), params["late_position"], params["early_position"], params["window"]
        )
    )
    prompts, length = probes.icl_repeat, probes.icl_length
    room = ctx.context_length - prompts.shape[1]
    gen = generate(bridge, prompts, min(params["rate_cycles"] * length, room))
    result.update(icl.copy_result(gen.ids, prompts[:, :length]))
    if params["mode"] == "off":
        return result
    settings = icl.EffectSettings("exact", "zero", params["score"], 0, params["top_k"], params["min_effect_total"])
    targets = icl.icl_targets(probes.icl_repeat[:, : ctx.context_length], length)
    effects = icl.icl_effect_result(head_effect_rows(bridge, targets, params["score"]), settings)
    result.update(effects)
    natural_targets = icl.natural_loop_targets(loops)
    natural = None if natural_targets is None else head_effect_rows(bridge, natural_targets, params["score"])
    result.update(icl.natural_effect_result(loops, natural, effects, settings))
    return result


def repetition_family(loops: NaturalLoops, params: dict) -> FamilyResult:
    result, _ = rep.loop_summary(loops, params["max_cycles"])
    result.value("rep/generated_tokens", loops.generation.ids.shape[1], "the continuation length")
    return result


def context_statistics(bridge, ids, query_weight, key_classes, low_info) -> dict[str, torch.Tensor]:
    """lowinfo/'s per-prompt statistics of one context (`low_info.context_statistics`' format) from one
    run_with_cache, by the reference reductions of the materialised patterns, one prompt at a time."""
    classes = key_classes[ids]
    onehot = torch.nn.functional.one_hot(classes, len(CLASSES)).double()
    onehot = torch.cat([onehot, low_info[ids].double()[..., None]], dim=-1)
    kind = torch.where(low_info[ids], 1, torch.where(classes == CLASS_INDEX["CONTENT_WORD"], 2, 0))
    kind = kind * (query_weight > 0)
    weight = query_weight.double()
    _, pats = patterns(bridge, ids)
    out = {}
    for suffix, sink in (("", True), ("_nosink", False)):
        mass, entropy = [], []
        for i in range(len(ids)):
            one = slice(i, i + 1)
            mass.append(
                torch.stack([reference.class_mass(a[one].double(), onehot[one], weight[one], sink) for a in pats])
            )
            entropy.append(torch.stack([reference.entropy_sums(a[one].double(), kind[one], sink) for a in pats]))
        out[f"mass{suffix}"] = torch.stack(mass)
        out[f"expected{suffix}"] = li.uniform_mass_rows(onehot, weight, sink)
        out[f"entropy{suffix}"] = torch.stack(entropy)
        out[f"rows{suffix}"] = li.entropy_count_rows(kind, sink)
    return out


def low_info_family(bridge, ctx, params: dict) -> FamilyResult:
    key_classes, low_info = li.key_classes_of(ctx, params["quantile"])  # ctx.model is the bridge's model
    result = FamilyResult()
    inputs = li.context_inputs(ctx, params["text_skip"])
    for context in li.CONTEXTS:
        if context not in inputs:
            for key in li.context_keys(context):
                result.nan(key, "no prompt's continuation loops at this checkpoint")
            continue
        ids, weight = inputs[context]
        stats = context_statistics(bridge, ids, weight, key_classes, low_info)
        result.update(li.context_result(context, stats, ctx.natural_loops() if context == "natural" else None))
    result.update(li.newline_ratios(result))
    result.value("lowinfo/low_info_vocab_share", low_info.double().mean(), li.VOCABULARY)
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

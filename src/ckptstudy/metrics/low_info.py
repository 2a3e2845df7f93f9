"""Attention on low-information tokens (`lowinfo/`), in natural loops, copied (ICL) loops and ordinary text.

For the queries of a context, per layer and head:
- enrichment of key class c = attention mass on keys of class c / the mass uniform attention over the
  same (causal) keys would put there. 1 = no preference; uniform attention gives exactly 1.
- "nosink" variants drop key 0 (the attention sink) and renormalise each row over the other keys.
- entropy (nats) of attention rows whose query token is low-information (unigram surprisal in the
  bottom `quantile` of the probe corpus) or a content word; also normalised by log(number of keys).
Key classes: the token classes of ckptstudy.measure.token_classes plus LOW_INFO (surprisal-based).

Contexts, compared like with like (queries inside the copies of a cycle in both loop kinds):
- natural: prompt + generation of the natural prompts whose continuation loops (`ctx.natural_loops()`),
  queries from the first COPY of the cycle on (onset + period: `NaturalLoops.first_copy_start()`);
- icl: `icl_repeat`, queries from its second passage on (the first copy);
- text: `long_text`, queries from position `text_skip` on.

The headline is the no-sink newline ratio `lowinfo/enrich_newline_natural_over_icl_nosink`: the probes have
no BOS, so position 0 is an ordinary text token that collects the sink's mass, and the with-sink enrichment
of a class mostly says whether token 0 is of that class. Both variants are kept in the records. Every NaN
carries its reason (no loop, no query of a kind, no key of a class).

Every scalar but the vocabulary share is a statistic over prompts (`context_result`), from the same fused pass
(`capture_stats` keeps prompts apart: `StatsRequest(per_row=True)`): per prompt, its attention mass per head
and class with the mass uniform attention would give (an enrichment is a ratio of sums over prompts: its
head mean from per-prompt head-mean masses, its head maximum from per-prompt per-head masses), its summed
attention entropy per kind with the rows it counts (the mean entropy is a ratio of sums too), and
differences and ratios of those. Prompt sets: natural rows are indexed by natural prompt (zero mass, zero
expected mass and no rows for a prompt that does not loop), so they resample with `rep/`'s prompts;
`icl_repeat` and `long_text` for the ICL and text contexts. The per-head arrays are the per-head statistics of
the same per-prompt values (`bootstrap.columns`).
"""

from __future__ import annotations

import math
from typing import Annotated

import numpy as np
import torch

from ckptstudy.measure.attention_stats import StatsRequest
from ckptstudy.measure.capture import capture_stats
from ckptstudy.measure.cost import Pass, ProbeSizes, Shape, natural_generation
from ckptstudy.measure.generation import NaturalLoops
from ckptstudy.measure.precision import Tolerance
from ckptstudy.measure.token_classes import CLASS_INDEX, CLASSES, low_information_ids, vocabulary_classes
from ckptstudy.metrics import FamilyResult
from ckptstudy.params import Range
from ckptstudy.stats.bootstrap import Sample, columns

DEFINITION_VERSION = 3  # 2: natural queries from the first copy; NaN reasons; headline = the _nosink ratio
# Scalars on a bfloat16/float16 load within this of float32 (measured: <= 0.05 of it, README "Precision").
TOLERANCE = Tolerance(rtol=0.05, atol=0.02)
# 3: bootstrap samples for every scalar (per-prompt statistics from the one fused pass)

CONTEXT_PROMPTS = {"natural": "natural", "icl": "icl_repeat", "text": "long_text"}  # prompt set of each context
KEY_CLASSES = (*CLASSES, "LOW_INFO")
REPORTED = {
    "NEWLINE": "newline",
    "PUNCTUATION": "punctuation",
    "FUNCTION_WORD": "function_word",
    "LOW_INFO": "low_info",
}
CONTEXTS = ("natural", "icl", "text")
QUERY_KINDS = ("lowinfo", "content")
QUERY_KIND_NAMES = {"lowinfo": "low-information", "content": "content-word"}
SUFFIXES = ("", "_nosink")
VOCABULARY = "a property of the vocabulary and the probe corpus, not of prompts"


def uniform_mass_rows(key_onehot: torch.Tensor, query_weight: torch.Tensor, sink: bool = True) -> torch.Tensor:
    """The mass per class that uniform causal attention would give each prompt's weighted queries: [b, class]
    (sink=False: keys 1.. only, and query 0, which then sees no key, left out)."""
    if not sink:
        key_onehot, query_weight = key_onehot[:, 1:], query_weight[:, 1:]
    seen = key_onehot.cumsum(1)
    n_keys = torch.arange(1, seen.shape[1] + 1, dtype=seen.dtype, device=seen.device)[None, :, None]
    return torch.einsum("bqc,bq->bc", seen / n_keys, query_weight)


def entropy_count_rows(query_kind: torch.Tensor, sink: bool = True) -> torch.Tensor:
    """How many attention rows of each query kind (1 = low-information, 2 = content) the entropy sums count,
    per prompt: rows with at least 2 keys: [b, kind]."""
    if not sink:
        query_kind = query_kind[:, 1:]
    usable = torch.arange(query_kind.shape[1]) >= 1
    return torch.stack([((query_kind == k) & usable).sum(1) for k in (1, 2)], dim=1).double()


def context_statistics(
    model,
    ids: torch.Tensor,
    query_weight: torch.Tensor,
    key_classes: torch.Tensor,
    low_info: torch.Tensor,
    batch_size: int,
) -> dict[str, torch.Tensor]:
    """One fused pass over a context (`capture_stats`, no attention weights materialised), per prompt: the
    attention mass per layer, head and key class `mass` [n, layer, head, class], the mass uniform attention
    would give `expected` [n, class], the summed row entropy per layer, head and query kind `entropy`
    [n, layer, head, kind, (nats, normalised)] and the rows it counts `rows` [n, kind]; each with a `_nosink`
    twin (key 0 left out, rows renormalised). Their sums over prompts make every statistic."""
    classes = key_classes[ids]
    onehot = torch.nn.functional.one_hot(classes, len(CLASSES)).double()
    onehot = torch.cat([onehot, low_info[ids].double()[..., None]], dim=-1)  # + LOW_INFO
    kind = torch.where(low_info[ids], 1, torch.where(classes == CLASS_INDEX["CONTENT_WORD"], 2, 0))
    kind = kind * (query_weight > 0)
    weight = query_weight.double()
    request = StatsRequest(key_values=onehot, query_weight=weight, query_kind=kind, n_kinds=2, per_row=True)
    cap = capture_stats(model, ids, request, batch_size=batch_size)
    out = {}
    for suffix, sink in (("", True), ("_nosink", False)):
        out[f"mass{suffix}"] = torch.stack([layer[f"mass{suffix}"] for layer in cap.attn], dim=1)
        out[f"expected{suffix}"] = uniform_mass_rows(onehot, weight, sink)
        out[f"entropy{suffix}"] = torch.stack([layer[f"entropy{suffix}"] for layer in cap.attn], dim=1)
        out[f"rows{suffix}"] = entropy_count_rows(kind, sink)
    return out


def natural_context(loops: NaturalLoops) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(ids, query weight) of the natural loops: prompt + generation of the looping rows, queries from the
    first copy of the cycle on (like icl_repeat's queries from its second passage); None when nothing loops."""
    if not loops.looping.any():
        return None
    ids = loops.sequences()
    start = loops.first_copy_start()
    return ids, (torch.arange(ids.shape[1])[None, :] >= start[:, None]).double()


def context_inputs(ctx, text_skip: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """(ids, query weight) of each context; the natural context is left out when no prompt loops."""
    out = {}
    natural = natural_context(ctx.natural_loops())
    if natural is not None:
        out["natural"] = natural
    icl = ctx.probes.icl_repeat[:, : ctx.context_length]
    weight = torch.zeros(icl.shape, dtype=torch.double)
    weight[:, ctx.probes.icl_length :] = 1
    out["icl"] = (icl, weight)
    text = ctx.probes.long_text[:, : ctx.context_length]
    weight = torch.zeros(text.shape, dtype=torch.double)
    weight[:, text_skip:] = 1
    out["text"] = (text, weight)
    return out


def context_keys(context: str) -> list[str]:
    """Every scalar key `context_result` reports for one context."""
    keys = []
    for suffix in SUFFIXES:
        for short in REPORTED.values():
            keys += [f"lowinfo/enrich_{short}_{context}{suffix}", f"lowinfo/enrich_{short}_{context}{suffix}_max"]
        for kind in QUERY_KINDS:
            keys += [f"lowinfo/entropy_{kind}_{context}{suffix}", f"lowinfo/entropy_{kind}_{context}{suffix}_norm"]
        keys.append(f"lowinfo/entropy_diff_{context}{suffix}")
    return keys


def by_prompt(rows: torch.Tensor, loops: NaturalLoops | None) -> np.ndarray:
    """Per-prompt rows as float64 numpy; the natural context's rows (one per looping prompt) spread over
    every natural prompt (`NaturalLoops.per_prompt`: zero for a prompt that does not loop)."""
    return (rows.double() if loops is None else loops.per_prompt(rows)).numpy()


def head_mean(values: np.ndarray) -> float:
    """Mean over the finite entries (NaN when there is none)."""
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if finite.size else math.nan


def enrichment_result(context: str, suffix: str, mass: np.ndarray, expected: np.ndarray) -> FamilyResult:
    """Enrichment of the reported key classes (head mean and head maximum of mass / expected mass, ratios of
    sums over prompts), the per-head enrichment array [layer, head, class] and its bar chart of head means."""
    out = FamilyResult()
    prompts = CONTEXT_PROMPTS[context]
    where = f"the {context} context" + (" (position 0 left out)" if suffix else "")
    for cls, short in REPORTED.items():
        index = KEY_CLASSES.index(cls)
        why = "enrichment is not finite for any head"
        if not expected[:, index].sum() > 0:
            why = f"no {cls} key at or before any query of {where}: enrichment undefined"
        key = f"lowinfo/enrich_{short}_{context}{suffix}"
        # one expected mass for every head: the head mean of the ratios of sums is the ratio of the sums of
        # per-prompt head-mean masses, so the mean needs [n] values and only the maximum [n, heads]
        head_mean_mass = mass[..., index].reshape(len(mass), -1).mean(1)
        out.stat(key, Sample("ratio_of_sums", head_mean_mass, prompts=prompts, weights=expected[:, index]), why)
        per_head = Sample("ratio_of_sums", mass[..., index], prompts=prompts, weights=expected[:, index], reduce="max")
        out.stat(f"{key}_max", per_head, why)
    every_class = Sample("ratio_of_sums", mass, weights=np.broadcast_to(expected[:, None, None, :], mass.shape))
    enrichment = columns(every_class)  # [layer, head, class]
    out.heads[f"lowinfo/enrich_{context}{suffix}"] = enrichment.astype(np.float32)
    out.bars[f"lowinfo/enrichment_{context}{suffix}"] = {
        cls: head_mean(enrichment[..., i]) for i, cls in enumerate(KEY_CLASSES)
    }
    return out


def entropy_result(context: str, suffix: str, entropy: np.ndarray, rows: np.ndarray) -> FamilyResult:
    """Mean attention entropy of low-information and of content queries (nats and normalised; ratios of sums
    over prompts of summed entropy over rows counted) and their difference."""
    out = FamilyResult()
    prompts = CONTEXT_PROMPTS[context]
    where = f"the {context} context" + (" (position 0 left out)" if suffix else "")
    reasons = {}
    for k, kind in enumerate(QUERY_KINDS):
        reasons[kind] = "attention entropy is not finite for any head"
        if not rows[:, k].sum() > 0:
            reasons[kind] = f"no {QUERY_KIND_NAMES[kind]} query token in {where}"
        key = f"lowinfo/entropy_{kind}_{context}{suffix}"
        for j, name in enumerate((key, f"{key}_norm")):  # every head counts the same rows: [n] suffices
            head_mean_sum = entropy[..., k, j].reshape(len(entropy), -1).mean(1)
            out.stat(name, Sample("ratio_of_sums", head_mean_sum, prompts=prompts, weights=rows[:, k]), reasons[kind])
    low, content = (f"lowinfo/entropy_{kind}_{context}{suffix}" for kind in QUERY_KINDS)
    why = reasons["lowinfo"] if not math.isfinite(out.scalars[low]) else reasons["content"]
    out.stat(f"lowinfo/entropy_diff_{context}{suffix}", Sample("difference", of=(low, content)), why)
    return out


def context_result(context: str, stats: dict[str, torch.Tensor], loops: NaturalLoops | None) -> FamilyResult:
    """Every statistic of one context (`enrichment_result`, `entropy_result`, with and without the sink) from
    its per-prompt rows (`context_statistics`; `loops` spreads the natural context's rows over the natural
    prompts, None for the other contexts), and the per-head entropy array [layer, head, kind]."""
    out = FamilyResult()
    for suffix in SUFFIXES:
        mass, expected = by_prompt(stats[f"mass{suffix}"], loops), by_prompt(stats[f"expected{suffix}"], loops)
        out.update(enrichment_result(context, suffix, mass, expected))
        entropy, rows = by_prompt(stats[f"entropy{suffix}"], loops), by_prompt(stats[f"rows{suffix}"], loops)
        out.update(entropy_result(context, suffix, entropy, rows))
    entropy, rows = by_prompt(stats["entropy"][..., 0], loops), by_prompt(stats["rows"], loops)  # nats, with sink
    per_head = Sample("ratio_of_sums", entropy, weights=np.broadcast_to(rows[:, None, None, :], entropy.shape))
    out.heads[f"lowinfo/entropy_{context}"] = columns(per_head).astype(np.float32)
    return out


def newline_ratios(result: FamilyResult) -> FamilyResult:
    """lowinfo/enrich_newline_natural_over_icl[_nosink]: the natural over the ICL newline enrichment (a ratio
    of two statistics on independent prompt sets), with the reason when a side is NaN or the ICL side is 0."""
    out = FamilyResult()
    scalars, reasons = result.scalars, result.nan_reasons
    for suffix in SUFFIXES:
        natural_key, icl_key = f"lowinfo/enrich_newline_natural{suffix}", f"lowinfo/enrich_newline_icl{suffix}"
        natural, icl = scalars[natural_key], scalars[icl_key]
        key = f"lowinfo/enrich_newline_natural_over_icl{suffix}"
        why = None
        if not math.isfinite(natural):
            why = f"natural newline enrichment is NaN: {reasons[natural_key]}"
        elif not math.isfinite(icl):
            why = f"ICL newline enrichment is NaN: {reasons[icl_key]}"
        elif icl == 0:
            why = "ICL newline enrichment is 0: no attention on newlines in ICL loops, ratio undefined"
        if natural_key in result.samples and icl_key in result.samples:
            out.stat(key, Sample("ratio", of=(natural_key, icl_key)), why)
        else:
            out.nan(key, why)
    return out


def no_query_reason(ctx, context: str, ids: torch.Tensor, text_skip: int) -> str:
    """Why a context has no query to measure."""
    probe = {"icl": "icl_repeat", "text": "long_text"}.get(context)
    if probe is not None and ids.shape[0] == 0:
        return ctx.probes.empty_reason(probe)
    if context == "text":
        return f"text_skip={text_skip} leaves no query in probes.long_text ({ids.shape[1]} tokens)"
    return f"the {context} context has no query"


def key_classes_of(ctx, quantile: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The class of every token id (token_classes; ids beyond the tokenizer are OTHER) and which ids are
    low-information (unigram surprisal in the bottom `quantile` of the probe corpus)."""
    classes = vocabulary_classes(ctx.tokenizer)
    vocab = max(len(ctx.tokenizer), int(ctx.model.config.vocab_size))
    classes = torch.cat([classes, torch.full((vocab - len(classes),), CLASS_INDEX["OTHER"])])
    corpus = torch.cat([ctx.probes.long_text.flatten(), ctx.probes.natural.flatten()])
    return classes, low_information_ids(corpus, vocab, quantile)


def measure(
    ctx,
    *,
    quantile: Annotated[float, Range(min=0, max=1, min_open=True, max_open=True)],
    text_skip: Annotated[int, Range(min=0)],
) -> FamilyResult:
    """Enrichment and entropy per layer and head in the three contexts; see the module docstring."""
    key_classes, low_info = key_classes_of(ctx, quantile)
    inputs = context_inputs(ctx, text_skip)
    result = FamilyResult()
    for context in CONTEXTS:
        if context not in inputs:
            for key in context_keys(context):
                result.nan(key, "no prompt's continuation loops at this checkpoint")
            continue
        ids, weight = inputs[context]
        if not weight.any():
            for key in context_keys(context):
                result.nan(key, no_query_reason(ctx, context, ids, text_skip))
            continue
        rows = ctx.rows(context_pass(context, ids.shape[0], ids.shape[1], ctx.shape, ctx.batch_size))
        stats = context_statistics(ctx.model, ids, weight, key_classes, low_info, rows)
        result.update(context_result(context, stats, ctx.natural_loops() if context == "natural" else None))
    result.update(newline_ratios(result))
    result.value("lowinfo/low_info_vocab_share", low_info.double().mean(), VOCABULARY, "empty vocabulary")
    return result


def context_pass(context: str, rows: int, seq: int, shape: Shape, cap: int | None) -> Pass:
    """The fused statistics pass over one context (class mass and row entropy: an extra pass over the keys)."""
    what = {"natural": "natural loops", "icl": "icl_repeat", "text": "long_text"}[context]
    return Pass(f"class mass + entropy, {what}", rows, seq, cap, shape.n_layers, attention="fused_pass")


def passes(sizes: ProbeSizes, shape: Shape, **_params) -> list[Pass]:
    """One fused pass per context (natural loops from the shared continuations, icl_repeat, long_text)."""
    return [
        natural_generation(sizes, shape),
        context_pass("natural", sizes.looping, sizes.nat_len + sizes.gen, shape, sizes.batch),
        context_pass("icl", sizes.icl_n, sizes.icl_seq, shape, sizes.batch),
        context_pass("text", sizes.lt_n, sizes.lt_len, shape, sizes.batch),
    ]

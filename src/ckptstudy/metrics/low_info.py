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

Bootstrap samples (`context_samples`) for every scalar but the vocabulary share, from the same fused pass
(`capture_stats` keeps prompts apart: `StatsRequest(per_row=True)`): per prompt, its attention mass per head
and class with the mass uniform attention would give (an enrichment is a ratio of sums over prompts: its
head mean from per-prompt head-mean masses, its head maximum from per-prompt per-head masses), its summed
attention entropy per kind with the rows it counts (the mean entropy is a ratio of sums too), and
differences and ratios of those. Prompt sets: natural rows are indexed by natural prompt (zero mass, zero
expected mass and no rows for a prompt that does not loop), so they resample with `rep/`'s prompts;
`icl_repeat` and `long_text` for the ICL and text contexts.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ckptstudy.measure.attention_stats import StatsRequest
from ckptstudy.measure.capture import capture_stats
from ckptstudy.measure.generation import NaturalLoops
from ckptstudy.measure.token_classes import CLASS_INDEX, CLASSES, low_information_ids, vocabulary_classes
from ckptstudy.metrics import FamilyResult
from ckptstudy.stats.bootstrap import Sample

DEFINITION_VERSION = 3  # 2: natural queries from the first copy; NaN reasons; headline = the _nosink ratio
# 3: bootstrap samples for every scalar (per-prompt statistics from the one fused pass)

NO_INTERVAL = {
    r"lowinfo/low_info_vocab_share": "a property of the vocabulary and the probe corpus, not of prompts",
}
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


def _drop_sink(attn: torch.Tensor) -> torch.Tensor:
    """Rows of queries 1.. over keys 1.., renormalised: [b, h, q-1, k-1] (query 0 only sees key 0)."""
    rest = attn[..., 1:, 1:]
    total = rest.sum(-1, keepdim=True)
    return torch.where(total > 0, rest / total.clamp(min=1e-30), torch.zeros_like(rest))


def class_mass(attn: torch.Tensor, key_onehot: torch.Tensor, query_weight: torch.Tensor, sink: bool = True):
    """Attention mass per head and key class summed over weighted queries: [head, class].

    attn [b, h, q, k]; key_onehot [b, k, classes]; query_weight [b, q]. sink=False drops key 0.
    """
    if not sink:
        attn, key_onehot, query_weight = _drop_sink(attn), key_onehot[:, 1:], _no_first(query_weight)
    return torch.einsum("bhqk,bkc,bq->hc", attn, key_onehot, query_weight)


def uniform_mass(key_onehot: torch.Tensor, query_weight: torch.Tensor, sink: bool = True) -> torch.Tensor:
    """The mass per class that uniform causal attention would give the same queries: [class]."""
    return uniform_mass_rows(key_onehot, query_weight, sink).sum(0)


def _no_first(query_weight: torch.Tensor) -> torch.Tensor:
    """Query weights aligned with keys 1.. (query 0 has no key left once key 0 is dropped)."""
    return query_weight[:, 1:]


def entropy_sums(attn: torch.Tensor, query_kind: torch.Tensor, sink: bool = True) -> torch.Tensor:
    """Summed row entropy (nats and normalised by log #keys) per head and query kind: [head, kind, 2].

    query_kind [b, q]: 1 = low-information query, 2 = content query, 0 = not counted. Rows with a
    single key have no entropy to normalise and are skipped.
    """
    if not sink:
        attn, query_kind = _drop_sink(attn), query_kind[:, 1:]
    entropy = -torch.special.xlogy(attn, attn).sum(-1)  # [b, h, q]
    n_keys = torch.arange(1, attn.shape[-2] + 1, dtype=attn.dtype, device=attn.device)
    usable = (n_keys > 1)[None, :]
    normalised = entropy / torch.log(n_keys.clamp(min=2))
    out = []
    for kind in (1, 2):
        weight = ((query_kind == kind) & usable).to(attn.dtype)  # [b, q]
        out.append(
            torch.stack(
                [torch.einsum("bhq,bq->h", entropy, weight), torch.einsum("bhq,bq->h", normalised, weight)], dim=-1
            )
        )
    return torch.stack(out, dim=1)


def entropy_counts(query_kind: torch.Tensor, sink: bool = True) -> torch.Tensor:
    """How many rows `entropy_sums` counted per query kind: [kind]."""
    return entropy_count_rows(query_kind, sink).sum(0)


def entropy_count_rows(query_kind: torch.Tensor, sink: bool = True) -> torch.Tensor:
    """How many rows `entropy_sums` counted per prompt and query kind: [b, kind]."""
    if not sink:
        query_kind = query_kind[:, 1:]
    usable = torch.arange(query_kind.shape[1]) >= 1
    return torch.stack([((query_kind == k) & usable).sum(1) for k in (1, 2)], dim=1).double()


def uniform_mass_rows(key_onehot: torch.Tensor, query_weight: torch.Tensor, sink: bool = True) -> torch.Tensor:
    """`uniform_mass` per prompt: [b, class]."""
    if not sink:
        key_onehot, query_weight = key_onehot[:, 1:], _no_first(query_weight)
    seen = key_onehot.cumsum(1)
    n_keys = torch.arange(1, seen.shape[1] + 1, dtype=seen.dtype, device=seen.device)[None, :, None]
    return torch.einsum("bqc,bq->bc", seen / n_keys, query_weight)


def context_statistics(
    model,
    ids: torch.Tensor,
    query_weight: torch.Tensor,
    key_classes: torch.Tensor,
    low_info: torch.Tensor,
    batch_size: int,
) -> dict[str, torch.Tensor]:
    """One forward pass over a context: per-layer enrichment [layer, head, class] (with and
    without the sink; NaN for a class no query sees a key of), per-layer entropies [layer, head, kind, 2]
    (means; NaN for a kind with no query), and what they rest on: `expected` [class] (uniform mass per
    class) and `entropy_rows` [kind] (rows counted), each with a `_nosink` twin; and the same per prompt,
    whose sums over prompts make them (the bootstrap samples): `mass_by_prompt` [n, layer, head, class],
    `expected_by_prompt` [n, class], `entropy_by_prompt` [n, layer, head, kind, 2] (summed entropies),
    `entropy_rows_by_prompt` [n, kind], each with a `_nosink` twin."""
    classes = key_classes[ids]
    onehot = torch.nn.functional.one_hot(classes, len(CLASSES)).double()
    onehot = torch.cat([onehot, low_info[ids].double()[..., None]], dim=-1)  # + LOW_INFO
    kind = torch.where(low_info[ids], 1, torch.where(classes == CLASS_INDEX["CONTENT_WORD"], 2, 0))
    kind = kind * (query_weight > 0)
    weight = query_weight.double()

    # per layer: class_mass and entropy_sums (with and without the sink) from the fused attention statistics,
    # no attention weights materialised (capture.capture_stats; method="eager" = the same from eager weights)
    request = StatsRequest(key_values=onehot, query_weight=weight, query_kind=kind, n_kinds=2, per_row=True)
    cap = capture_stats(model, ids, request, batch_size=batch_size)
    out = {}
    for suffix, sink in (("", True), ("_nosink", False)):
        expected_rows = uniform_mass_rows(onehot, weight, sink)
        mass_rows = torch.stack([layer[f"mass{suffix}"] for layer in cap.attn], dim=1)  # [n, layer, head, C]
        expected, mass = expected_rows.sum(0), mass_rows.sum(0)
        out[f"enrich{suffix}"] = torch.where(expected > 0, mass / expected.clamp(min=1e-30), math.nan)
        out[f"expected{suffix}"] = expected
        count_rows = entropy_count_rows(kind, sink)
        counts = count_rows.sum(0)
        out[f"entropy_rows{suffix}"] = counts
        sum_rows = torch.stack([layer[f"entropy{suffix}"] for layer in cap.attn], dim=1)  # [n, layer, head, kind, 2]
        out[f"entropy{suffix}"] = sum_rows.sum(0) / counts[None, None, :, None].clamp(min=1)
        out[f"entropy{suffix}"][:, :, counts == 0] = math.nan
        out.update(
            {
                f"mass_by_prompt{suffix}": mass_rows,
                f"expected_by_prompt{suffix}": expected_rows,
                f"entropy_by_prompt{suffix}": sum_rows,
                f"entropy_rows_by_prompt{suffix}": count_rows,
            }
        )
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


def head_mean(values: torch.Tensor) -> float:
    finite = values[torch.isfinite(values)]
    return float(finite.mean()) if finite.numel() else math.nan


def head_max(values: torch.Tensor) -> float:
    finite = values[torch.isfinite(values)]
    return float(finite.max()) if finite.numel() else math.nan


def context_keys(context: str) -> list[str]:
    """Every scalar key `context_scalars` reports for one context."""
    keys = []
    for suffix in SUFFIXES:
        for short in REPORTED.values():
            keys += [f"lowinfo/enrich_{short}_{context}{suffix}", f"lowinfo/enrich_{short}_{context}{suffix}_max"]
        for kind in QUERY_KINDS:
            keys += [f"lowinfo/entropy_{kind}_{context}{suffix}", f"lowinfo/entropy_{kind}_{context}{suffix}_norm"]
        keys.append(f"lowinfo/entropy_diff_{context}{suffix}")
    return keys


def context_scalars(context: str, stats: dict[str, torch.Tensor]) -> FamilyResult:
    """Scalars (head means and maxima), per-head arrays and bars of one context's statistics, with the
    reason of every NaN."""
    out = FamilyResult()
    for suffix in SUFFIXES:
        where = f"the {context} context" + (" (position 0 left out)" if suffix else "")
        enrich = stats[f"enrich{suffix}"]
        for cls, short in REPORTED.items():
            index = KEY_CLASSES.index(cls)
            why = f"no {cls} key at or before any query of {where}: enrichment undefined"
            if stats[f"expected{suffix}"][index] > 0:
                why = "enrichment is not finite for any head"
            out.set(f"lowinfo/enrich_{short}_{context}{suffix}", head_mean(enrich[..., index]), why)
            out.set(f"lowinfo/enrich_{short}_{context}{suffix}_max", head_max(enrich[..., index]), why)
        entropy, rows = stats[f"entropy{suffix}"], stats[f"entropy_rows{suffix}"]
        reasons = {}
        for k, kind in enumerate(QUERY_KINDS):
            why = f"no {QUERY_KIND_NAMES[kind]} query token in {where}"
            if rows[k] > 0:
                why = "attention entropy is not finite for any head"
            reasons[kind] = why
            out.set(f"lowinfo/entropy_{kind}_{context}{suffix}", head_mean(entropy[:, :, k, 0]), why)
            out.set(f"lowinfo/entropy_{kind}_{context}{suffix}_norm", head_mean(entropy[:, :, k, 1]), why)
        low, content = (out.scalars[f"lowinfo/entropy_{kind}_{context}{suffix}"] for kind in QUERY_KINDS)
        why = reasons["lowinfo"] if not math.isfinite(low) else reasons["content"]
        out.set(f"lowinfo/entropy_diff_{context}{suffix}", low - content, why)
        out.arrays[f"lowinfo/enrich_{context}{suffix}"] = enrich.float().numpy()
        out.bars[f"lowinfo/enrichment_{context}{suffix}"] = {
            cls: head_mean(enrich[..., i]) for i, cls in enumerate(KEY_CLASSES)
        }
    out.arrays[f"lowinfo/entropy_{context}"] = stats["entropy"][..., 0].float().numpy()
    return out


def newline_ratios(scalars: dict[str, float], reasons: dict[str, str]) -> FamilyResult:
    """lowinfo/enrich_newline_natural_over_icl[_nosink]: natural over ICL newline enrichment."""
    out = FamilyResult()
    for suffix in SUFFIXES:
        natural_key, icl_key = f"lowinfo/enrich_newline_natural{suffix}", f"lowinfo/enrich_newline_icl{suffix}"
        natural, icl = scalars[natural_key], scalars[icl_key]
        key = f"lowinfo/enrich_newline_natural_over_icl{suffix}"
        if not math.isfinite(natural):
            out.nan(key, f"natural newline enrichment is NaN: {reasons[natural_key]}")
        elif not math.isfinite(icl):
            out.nan(key, f"ICL newline enrichment is NaN: {reasons[icl_key]}")
        elif icl == 0:
            out.nan(key, "ICL newline enrichment is 0: no attention on newlines in ICL loops, ratio undefined")
        else:
            out.set(key, natural / icl, "")
    return out


def by_prompt(rows: torch.Tensor, loops: NaturalLoops | None) -> np.ndarray:
    """Per-prompt rows as float64 numpy; the natural context's rows (one per looping prompt) spread over
    every natural prompt (`NaturalLoops.per_prompt`)."""
    return (rows.double() if loops is None else loops.per_prompt(rows)).numpy()


def context_samples(context: str, stats: dict[str, torch.Tensor], loops: NaturalLoops | None) -> dict[str, Sample]:
    """Bootstrap samples of every scalar of one context (see the module docstring); `loops` gives the rows
    of the natural context (None for the other contexts)."""
    prompts = CONTEXT_PROMPTS[context]
    out = {}
    for suffix in SUFFIXES:
        mass = by_prompt(stats[f"mass_by_prompt{suffix}"], loops)  # [n, layer, head, C]
        expected = by_prompt(stats[f"expected_by_prompt{suffix}"], loops)  # [n, C]
        for cls, short in REPORTED.items():
            index = KEY_CLASSES.index(cls)
            key = f"lowinfo/enrich_{short}_{context}{suffix}"
            # one expected mass for every head: the head mean of the ratios of sums is the ratio of the sums of
            # per-prompt head-mean masses, so the mean needs [n] values and only the maximum [n, heads]
            head_mean_mass = mass[..., index].reshape(len(mass), -1).mean(1)
            out[key] = Sample("ratio_of_sums", head_mean_mass, prompts=prompts, weights=expected[:, index])
            out[f"{key}_max"] = Sample(
                "ratio_of_sums", mass[..., index], prompts=prompts, weights=expected[:, index], reduce="max"
            )
        entropy = by_prompt(stats[f"entropy_by_prompt{suffix}"], loops)  # [n, layer, head, kind, 2]
        rows = by_prompt(stats[f"entropy_rows_by_prompt{suffix}"], loops)  # [n, kind]
        for k, kind in enumerate(QUERY_KINDS):
            key = f"lowinfo/entropy_{kind}_{context}{suffix}"
            for j, name in enumerate((key, f"{key}_norm")):  # every head counts the same rows: [n] suffices
                head_mean = entropy[..., k, j].reshape(len(entropy), -1).mean(1)
                out[name] = Sample("ratio_of_sums", head_mean, prompts=prompts, weights=rows[:, k])
        low, content = (f"lowinfo/entropy_{kind}_{context}{suffix}" for kind in QUERY_KINDS)
        out[f"lowinfo/entropy_diff_{context}{suffix}"] = Sample("difference", of=(low, content))
    return out


def ratio_samples(samples: dict[str, Sample]) -> dict[str, Sample]:
    """Samples of the natural-over-ICL newline ratios, where both sides have one."""
    out = {}
    for suffix in SUFFIXES:
        natural, icl = f"lowinfo/enrich_newline_natural{suffix}", f"lowinfo/enrich_newline_icl{suffix}"
        if natural in samples and icl in samples:
            out[f"lowinfo/enrich_newline_natural_over_icl{suffix}"] = Sample("ratio", of=(natural, icl))
    return out


def no_query_reason(ctx, context: str, ids: torch.Tensor, text_skip: int) -> str:
    """Why a context has no query to measure."""
    probe = {"icl": "icl_repeat", "text": "long_text"}.get(context)
    if probe is not None and ids.shape[0] == 0:
        return ctx.probes.empty_reason(probe)
    if context == "text":
        return f"text_skip={text_skip} leaves no query in probes.long_text ({ids.shape[1]} tokens)"
    return f"the {context} context has no query"


def check_parameters(quantile, text_skip) -> None:
    """Refuse a bad `metrics.low_info.*` value before any work, naming it and what is valid."""
    if isinstance(quantile, bool) or not isinstance(quantile, (int, float)) or not 0 < quantile < 1:
        raise ValueError(f"metrics.low_info.quantile={quantile!r} is not valid; valid: a number in (0, 1)")
    if isinstance(text_skip, bool) or not isinstance(text_skip, int) or text_skip < 0:
        raise ValueError(f"metrics.low_info.text_skip={text_skip!r} is not valid; valid: an integer >= 0")


def measure(ctx, quantile: float = 0.2, text_skip: int = 32) -> FamilyResult:
    """Enrichment and entropy per layer and head in the three contexts; see the module docstring."""
    check_parameters(quantile, text_skip)
    key_classes = vocabulary_classes(ctx.tokenizer)
    vocab = max(len(ctx.tokenizer), int(ctx.model.config.vocab_size))
    key_classes = torch.cat([key_classes, torch.full((vocab - len(key_classes),), CLASS_INDEX["OTHER"])])
    corpus = torch.cat([ctx.probes.long_text.flatten(), ctx.probes.natural.flatten()])
    low_info = low_information_ids(corpus, vocab, quantile)
    result = FamilyResult()
    inputs = context_inputs(ctx, text_skip)
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
        stats = context_statistics(ctx.model, ids, weight, key_classes, low_info, ctx.batch_size)
        result.update(context_scalars(context, stats))
        loops = ctx.natural_loops() if context == "natural" else None
        for key, sample in context_samples(context, stats, loops).items():
            result.add_sample(key, sample)
    result.update(newline_ratios(result.scalars, result.nan_reasons))
    for key, sample in ratio_samples(result.samples).items():
        result.add_sample(key, sample)
    result.set("lowinfo/low_info_vocab_share", low_info.double().mean(), "empty vocabulary")
    return result

"""Attention on low-information tokens (`lowinfo/`), in natural loops, copied (ICL) loops and ordinary text.

For the queries of a context (the looping part of natural generations; cycles >= 2 of `icl_repeat`;
`long_text` past its first `skip` tokens), per layer and head:
- enrichment of key class c = attention mass on keys of class c / the mass uniform attention over the
  same (causal) keys would put there. 1 = no preference; uniform attention gives exactly 1.
- "nosink" variants drop key 0 (the attention sink) and renormalise each row over the other keys.
- entropy (nats) of attention rows whose query token is low-information (unigram surprisal in the
  bottom `quantile` of the probe corpus) or a content word; also normalised by log(number of keys).
Key classes: the token classes of ckptstudy.token_classes plus LOW_INFO (surprisal-based).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ckptstudy.capture import capture
from ckptstudy.metrics import FamilyResult
from ckptstudy.token_classes import CLASS_INDEX, CLASSES, low_information_ids, vocabulary_classes

KEY_CLASSES = (*CLASSES, "LOW_INFO")
REPORTED = {
    "NEWLINE": "newline",
    "PUNCTUATION": "punctuation",
    "FUNCTION_WORD": "function_word",
    "LOW_INFO": "low_info",
}
CONTEXTS = ("natural", "icl", "text")
QUERY_KINDS = ("lowinfo", "content")


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
    if not sink:
        key_onehot, query_weight = key_onehot[:, 1:], _no_first(query_weight)
    seen = key_onehot.cumsum(1)  # [b, q, c]: keys of each class at or before the query
    n_keys = torch.arange(1, seen.shape[1] + 1, dtype=seen.dtype, device=seen.device)[None, :, None]
    return torch.einsum("bqc,bq->c", seen / n_keys, query_weight)


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
    if not sink:
        query_kind = query_kind[:, 1:]
    usable = torch.arange(query_kind.shape[1]) >= 1
    return torch.stack([((query_kind == k) & usable).sum() for k in (1, 2)]).double()


def context_statistics(
    model,
    ids: torch.Tensor,
    query_weight: torch.Tensor,
    key_classes: torch.Tensor,
    low_info: torch.Tensor,
    batch_size: int,
) -> dict[str, torch.Tensor]:
    """One hooked forward pass over a context: per-layer enrichment [layer, head, class] (with and
    without the sink) and per-layer entropies [layer, head, kind, 2] (means)."""
    classes = key_classes[ids]
    onehot = torch.nn.functional.one_hot(classes, len(CLASSES)).double()
    onehot = torch.cat([onehot, low_info[ids].double()[..., None]], dim=-1)  # + LOW_INFO
    kind = torch.where(low_info[ids], 1, torch.where(classes == CLASS_INDEX["CONTENT_WORD"], 2, 0))
    kind = kind * (query_weight > 0)
    weight = query_weight.double()

    def reduce(_layer, attn, chunk):
        attn = attn.double()
        return {
            "mass": class_mass(attn, chunk["onehot"], chunk["weight"]),
            "mass_nosink": class_mass(attn, chunk["onehot"], chunk["weight"], sink=False),
            "entropy": entropy_sums(attn, chunk["kind"]),
            "entropy_nosink": entropy_sums(attn, chunk["kind"], sink=False),
        }

    cap = capture(
        model, ids, attn_fn=reduce, batch_size=batch_size, row_data={"onehot": onehot, "weight": weight, "kind": kind}
    )
    out = {}
    for suffix, sink in (("", True), ("_nosink", False)):
        expected = uniform_mass(onehot, weight, sink)
        mass = torch.stack([layer[f"mass{suffix}"] for layer in cap.attn])
        out[f"enrich{suffix}"] = torch.where(expected > 0, mass / expected.clamp(min=1e-30), math.nan)
        counts = entropy_counts(kind, sink)
        sums = torch.stack([layer[f"entropy{suffix}"] for layer in cap.attn])
        out[f"entropy{suffix}"] = sums / counts[None, None, :, None].clamp(min=1)
        out[f"entropy{suffix}"][:, :, counts == 0] = math.nan
    return out


def context_inputs(ctx, text_skip: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """(ids, query weight) of each context; a context with no query is left out."""
    out = {}
    loops = ctx.natural_loops()
    gen, period, onset = loops.generation, loops.period, loops.onset
    looping = period > 0
    if looping.any():
        prompts = ctx.probes.natural
        ids = torch.cat([prompts, gen.ids], dim=1)[looping]
        start = prompts.shape[1] + onset[looping]
        out["natural"] = (ids, (torch.arange(ids.shape[1])[None, :] >= start[:, None]).double())
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


def measure(ctx, quantile: float = 0.2, text_skip: int = 32) -> FamilyResult:
    """Enrichment and entropy per layer and head in the three contexts; see the module docstring."""
    key_classes = vocabulary_classes(ctx.tokenizer)
    vocab = max(len(ctx.tokenizer), int(ctx.model.config.vocab_size))
    key_classes = torch.cat([key_classes, torch.full((vocab - len(key_classes),), CLASS_INDEX["OTHER"])])
    corpus = torch.cat([ctx.probes.long_text.flatten(), ctx.probes.natural.flatten()])
    low_info = low_information_ids(corpus, vocab, quantile)
    result = FamilyResult()
    for context, (ids, weight) in context_inputs(ctx, text_skip).items():
        stats = context_statistics(ctx.model, ids, weight, key_classes, low_info, ctx.batch_size)
        for suffix in ("", "_nosink"):
            enrich = stats[f"enrich{suffix}"]
            for cls, short in REPORTED.items():
                per_head = enrich[..., KEY_CLASSES.index(cls)]
                result.scalars[f"lowinfo/enrich_{short}_{context}{suffix}"] = head_mean(per_head)
                result.scalars[f"lowinfo/enrich_{short}_{context}{suffix}_max"] = head_max(per_head)
            entropy = stats[f"entropy{suffix}"]
            for k, kind in enumerate(QUERY_KINDS):
                result.scalars[f"lowinfo/entropy_{kind}_{context}{suffix}"] = head_mean(entropy[:, :, k, 0])
                result.scalars[f"lowinfo/entropy_{kind}_{context}{suffix}_norm"] = head_mean(entropy[:, :, k, 1])
            result.scalars[f"lowinfo/entropy_diff_{context}{suffix}"] = (
                result.scalars[f"lowinfo/entropy_lowinfo_{context}{suffix}"]
                - result.scalars[f"lowinfo/entropy_content_{context}{suffix}"]
            )
            result.arrays[f"lowinfo/enrich_{context}{suffix}"] = enrich.float().numpy()
        result.arrays[f"lowinfo/entropy_{context}"] = stats["entropy"][..., 0].float().numpy()
        result.bars[f"lowinfo/enrichment_{context}"] = {
            cls: head_mean(stats["enrich"][..., i]) for i, cls in enumerate(KEY_CLASSES)
        }
    for suffix in ("", "_nosink"):
        natural = result.scalars.get(f"lowinfo/enrich_newline_natural{suffix}", math.nan)
        icl = result.scalars.get(f"lowinfo/enrich_newline_icl{suffix}", math.nan)
        result.scalars[f"lowinfo/enrich_newline_natural_over_icl{suffix}"] = (
            natural / icl if icl and np.isfinite(icl) else math.nan
        )
    result.scalars["lowinfo/low_info_vocab_share"] = float(low_info.double().mean())
    return result

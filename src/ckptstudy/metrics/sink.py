"""Attention sinks and the repeated-token phenomenon (`sink/`), after Yona et al., "Interpreting the
Repeated Token Phenomenon" (ICML 2025).

Residual points as in ckptstudy.measure.residual: "layer l" below is the output of layer l (0-based).
- Sink score of a head = mean attention on key 0 over the queries 1..s-1 of `long_text` windows
  (clipped to the context; uniform causal attention gives mean_q 1/(q+1), ~0.030 at 128 tokens);
  first-norm ratio of a layer = mean over windows of ||h_0|| / the median
  of ||h_i||, i >= 1.
- `single_repeat` = BOS + one token repeated K times (K clipped so the row fits the context), for M
  tokens drawn (seeded) from the `vocab_top` most frequent non-special tokens of the probe corpus
  (`long_text` + `natural`). BOS (as in the paper's code, which prepends it) is needed: without it a
  rotary-only model (GPT-NeoX has no absolute positions) computes exactly the same hidden state at
  every position of a single-token sequence, so the last position equals the first by construction
  (cos 1 at every layer and every training step). Convergence per layer and token:
  cos(h_last, h_0) and ||h_last|| / ||h_0||, h_0 = the BOS position (the sink);
  repeat_cos_max = max over layers of the mean cos over tokens; converge_layer = first layer whose
  mean cos >= `converge_cos` (-1 if none); converge_share = share of tokens whose max-over-layers
  cos >= `converge_cos`; repeat_norm_ratio = mean norm ratio at the layer of repeat_cos_max.
  repeat_cos_self_max: the same max of mean cos, against the token's own hidden state when it is the
  only token of a sequence (what the first attention layer cannot tell a long repetition from). It is
  ~1 whenever the attention to BOS is diluted over the K repeats, as in any untrained model; it
  only drops below 1 in a model whose BOS sink keeps its attention share.
- Repetition behaviour: for each K of `divergence_k` (clipped to the context minus BOS minus `new_tokens`) and
  each of the first `divergence_tokens` tokens, the greedy continuation (`new_tokens` tokens) of BOS +
  the token repeated K times; it diverges when any continuation token differs from the repeated token.
  divergence_rate = share of (token, K) that diverge; k50 = the K where the share of diverging
  tokens first reaches 0.5, linearly interpolated in log K (NaN if never, or already at the first K).
- Sink neurons: for each MLP neuron (layer l, index k), on `long_text`
  z = (mean_windows a_0 - mean_other) / std_other, a_0 = activation at position 0, mean/std over
  every other position of every window (population std). Neurons with |z| >= `neuron_z` are sink
  neurons (count: n_sink_neurons); the `max_neurons` with the largest |z| are patched: held at
  mean_other at every position >= 1. patch_cos_drop = repeat_cos_max - repeat_cos_max with the patch;
  patch_loss_delta = mean next-token NLL (nats) on `long_text` with the patch minus without.

Bootstrap samples (`ckptstudy.stats.bootstrap`), from the same passes: score_max / first_norm_ratio_max
(max_of_mean over per-window values [n, layer(, head)]), score_mean and patch_loss_delta (mean over
windows) on `long_text`; repeat_cos_max / repeat_cos_self_max (max_of_mean over per-token cos [tokens,
layer]) and converge_share (mean of 0/1 per token) on the repeated tokens ("sink_repeat");
repeat_divergence_rate (mean over tokens of each token's share of diverging Ks; "sink_divergence");
repeat_norm_ratio (mean over tokens at the layer the full sample picks: an interval given that layer);
patch_cos_drop (the difference of repeat_cos_max and the same max with the patch, over the same tokens).
The other scalars say why they have none where they are reported (`FamilyResult.value`).
"""

from __future__ import annotations

import math
from typing import Annotated

import numpy as np
import torch

from ckptstudy.measure.capture import capture, model_parts
from ckptstudy.measure.cost import Pass, ProbeSizes, Shape
from ckptstudy.measure.generation import greedy_generate
from ckptstudy.measure.readout import token_logprobs
from ckptstudy.measure.residual import clamp_mlp, tap_mlp, tap_residual
from ckptstudy.metrics import FamilyResult
from ckptstudy.params import Each, Range
from ckptstudy.stats.bootstrap import Sample, columns

DEFINITION_VERSION = 2  # 2: bootstrap samples for repeat_norm_ratio and patch_cos_drop


# ---------------------------------------------------------------------------------------------- sink
def first_position_mass(attn: torch.Tensor) -> torch.Tensor:
    """Attention on key 0 summed over the batch and queries 1..s-1, per head: attn [b, h, q, k] -> [h]."""
    return attn[:, :, 1:, 0].sum(dim=(0, 2))


def first_norm_ratio(hidden: torch.Tensor) -> torch.Tensor:
    """||h_0|| / median_{i >= 1} ||h_i|| per row: hidden [b, s, d] (s >= 2) -> [b]."""
    norms = hidden.double().norm(dim=-1)
    return norms[:, 0] / norms[:, 1:].quantile(0.5, dim=-1).clamp(min=1e-30)  # midpoint median


# ------------------------------------------------------------------------------ repeated-token probe
def frequent_tokens(corpus: torch.Tensor, vocab: int, special: list[int], top: int, m: int, seed: int) -> torch.Tensor:
    """`m` distinct token ids drawn (seeded, without replacement) from the `top` most frequent
    non-special ids of `corpus` (any shape; ids never seen are not drawn): [min(m, available)]."""
    counts = torch.bincount(corpus.flatten(), minlength=vocab)[:vocab].double()
    if special:
        counts[torch.tensor([s for s in special if 0 <= s < vocab], dtype=torch.long)] = 0
    order = counts.argsort(descending=True, stable=True)[:top]
    pool = order[counts[order] > 0]
    pick = torch.randperm(len(pool), generator=torch.Generator().manual_seed(seed))[:m]
    return pool[pick]


def single_repeat_ids(tokens: torch.Tensor, k: int, bos_id: int | None = None) -> torch.Tensor:
    """`bos_id` (when given) followed by each token repeated `k` times: tokens [m] -> [m, k (+1)]."""
    rows = tokens[:, None].repeat(1, k)
    if bos_id is None:
        return rows
    return torch.cat([torch.full((len(tokens), 1), bos_id, dtype=rows.dtype), rows], dim=1)


def convergence(first: torch.Tensor, last: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """cos(h_last, h_first) and ||h_last|| / ||h_first||: first, last [..., d] -> ([...], [...])."""
    first, last = first.double(), last.double()
    fn, ln = first.norm(dim=-1), last.norm(dim=-1)
    cos = (first * last).sum(-1) / (fn * ln).clamp(min=1e-30)
    return cos, ln / fn.clamp(min=1e-30)


def convergence_summary(cos: torch.Tensor, threshold: float) -> dict[str, float]:
    """From cos [tokens, layers]: max over layers of the mean cos, the first layer whose mean cos
    >= threshold (-1 if none), the share of tokens whose max-over-layers cos >= threshold, and the
    layer of the max mean cos."""
    mean = cos.mean(0)
    above = (mean >= threshold).nonzero()
    return {
        "cos_max": float(mean.max()),
        "layer": float(above[0]) if len(above) else -1.0,
        "share": float((cos.max(dim=1).values >= threshold).double().mean()),
        "argmax": int(mean.argmax()),
    }


# ----------------------------------------------------------------------------------- divergence
def diverged(continuations: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """True where a continuation [n, G] contains any token other than its repeated token [n]: [n]."""
    return (continuations != tokens[:, None]).any(dim=1)


def divergence_ks(requested: list[int], room: int) -> list[int]:
    """The repetition counts K actually probed: each requested K clipped to `room`, deduplicated, sorted."""
    return sorted({min(int(k), room) for k in requested})


def k_at_half(ks: list[int], share: torch.Tensor, level: float = 0.5) -> tuple[float, str]:
    """The K where `share` [len(ks)] first reaches `level`, linear in log K between the probed Ks;
    (NaN, reason) when it never does or already does at the smallest K."""
    share = [float(v) for v in share]
    if share[0] >= level:
        return math.nan, f"already {share[0]:.2f} >= {level} of the tokens diverge at the smallest K={ks[0]}"
    for i in range(1, len(ks)):
        if share[i] >= level:
            lo, hi = math.log(ks[i - 1]), math.log(ks[i])
            frac = (level - share[i - 1]) / (share[i] - share[i - 1])
            return math.exp(lo + frac * (hi - lo)), ""
    return math.nan, f"fewer than {level} of the tokens diverge at every K up to {ks[-1]}"


# ----------------------------------------------------------------------------------- sink neurons
def neuron_moments(activation: torch.Tensor) -> torch.Tensor:
    """Sums for the first-position z-score of one layer's activations [b, s, d_ff]:
    [5, d_ff] = (rows, sum a_0, n other, sum other, sum other^2), float64 (add over chunks)."""
    a = activation.double()
    other = a[:, 1:].reshape(-1, a.shape[-1])
    rows = torch.full((a.shape[-1],), float(a.shape[0]), dtype=torch.float64, device=a.device)
    n_other = torch.full_like(rows, float(other.shape[0]))
    return torch.stack([rows, a[:, 0].sum(0), n_other, other.sum(0), (other * other).sum(0)])


def first_position_z(moments: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """z = (mean a_0 - mean other) / std other (population) and mean other, from `neuron_moments`
    sums [..., 5, d_ff] -> ([..., d_ff], [..., d_ff]). A constant neuron (std 0) gets std 1e-12."""
    rows, first, n_other, s1, s2 = moments.unbind(-2)
    mean_other = s1 / n_other
    std = (s2 / n_other - mean_other**2).clamp(min=0).sqrt().clamp(min=1e-12)
    return (first / rows - mean_other) / std, mean_other


def outlier_neurons(z: torch.Tensor, threshold: float, max_neurons: int) -> tuple[torch.Tensor, int]:
    """Neurons with |z| >= threshold in z [layers, d_ff]: the `max_neurons` with the largest |z| as
    rows (layer, index, z) [k, 3] (sorted by |z| descending), and how many pass in all."""
    passing = (z.abs() >= threshold).nonzero()
    values = z[passing[:, 0], passing[:, 1]]
    order = values.abs().argsort(descending=True, stable=True)[:max_neurons]
    top = torch.cat([passing[order].double(), values[order, None].double()], dim=1)
    return top.reshape(-1, 3), len(passing)


def patch_plan(top: torch.Tensor, mean_other: torch.Tensor) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """{layer: (neuron indices, clamp values)} for `clamp_mlp` from `outlier_neurons` rows [k, 3]
    and the mean activation at non-first positions [layers, d_ff]."""
    plan: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    for layer in top[:, 0].long().unique().tolist():
        index = top[top[:, 0] == layer, 1].long()
        plan[layer] = (index, mean_other[layer, index].float())
    return plan


# ------------------------------------------------------------------------------------- forwards
def text_pass(model, ids: torch.Tensor, batch_size: int, plan: dict | None = None) -> dict[str, torch.Tensor]:
    """One hooked pass over natural text: sink mass [layers, heads] (mean), first-norm ratio [layers]
    (mean over rows), neuron moments [layers, 5, d_ff] (sums), mean NLL; with `plan` the MLP patch is on.
    Per row, for the bootstrap over rows: mass_rows [n, layers, heads] (mean over queries 1..s-1),
    ratio_rows [n, layers], nll_rows [n] (mean NLL of the row); their means over rows are mass, ratio, nll."""
    parts = model_parts(model)
    ratio = torch.zeros(parts.n_layers, dtype=torch.float64)
    moments: list = [None] * parts.n_layers
    mass_rows: list[list] = [[] for _ in range(parts.n_layers)]
    ratio_rows: list[list] = [[] for _ in range(parts.n_layers)]
    nll_rows: list = []

    def on_resid(point, hidden):
        if point > 0:
            row = first_norm_ratio(hidden).cpu()
            ratio_rows[point - 1].append(row)
            ratio[point - 1] += row.sum()

    def on_attn(layer, attn, _chunk):
        mass_rows[layer].append(attn[:, :, 1:, 0].double().mean(2).cpu())
        return first_position_mass(attn)

    def on_logits(logits, chunk):
        logp = token_logprobs(logits, chunk)
        nll_rows.append(-logp.double().sum(dim=1).cpu())
        return -logp.sum()

    def on_mlp(layer, act):
        m = neuron_moments(act).cpu()
        moments[layer] = m if moments[layer] is None else moments[layer] + m

    with clamp_mlp(model, plan or {}), tap_residual(model, on_resid), tap_mlp(model, on_mlp):
        cap = capture(
            model,
            ids,
            attn_fn=on_attn,
            logits_fn=on_logits,
            batch_size=batch_size,
        )
    n, s = ids.shape
    return {
        "mass": torch.stack(cap.attn).double() / (n * (s - 1)),
        "ratio": ratio / n,
        "moments": torch.stack(moments),
        "nll": cap.logits.double() / (n * (s - 1)),
        "mass_rows": torch.stack([torch.cat(m) for m in mass_rows], dim=1),
        "ratio_rows": torch.stack([torch.cat(r) for r in ratio_rows], dim=1).double(),
        "nll_rows": torch.cat(nll_rows) / (s - 1),
    }


@torch.no_grad()
def first_last_states(model, ids: torch.Tensor, batch_size: int, plan: dict | None = None):
    """Hidden states of the first and the last position at every layer output: ([n, L, d], [n, L, d]);
    with `plan` the MLP patch is on."""
    parts = model_parts(model)
    device = next(model.parameters()).device
    firsts: list[list] = [[] for _ in range(parts.n_layers)]
    lasts: list[list] = [[] for _ in range(parts.n_layers)]

    def on_resid(point, hidden):
        if point > 0:
            firsts[point - 1].append(hidden[:, 0].detach().cpu())
            lasts[point - 1].append(hidden[:, -1].detach().cpu())

    with clamp_mlp(model, plan or {}), tap_residual(model, on_resid):
        for start in range(0, ids.shape[0], batch_size):
            model(input_ids=ids[start : start + batch_size].to(device))
    return torch.stack([torch.cat(f) for f in firsts], dim=1), torch.stack([torch.cat(x) for x in lasts], dim=1)


def _check(name: str, value, ok: bool, valid: str) -> None:
    if not ok:
        raise ValueError(f"metrics.sink.{name}={value} is not valid; {valid}")


def check(*, new_tokens: int, shape: Shape | None, **_params) -> None:
    """Refuse `new_tokens` that leave no room in the model's context (from its yaml) for BOS + a repeat."""
    if shape is not None and new_tokens > shape.context - 3:
        raise ValueError(
            f"metrics.sink.new_tokens={new_tokens} is not valid; must be in 1..{shape.context - 3} "
            f"(the model's {shape.context}-token context minus BOS minus 2)"
        )


def measure(
    ctx,
    *,
    repeat_k: Annotated[int, Range(min=2)],
    n_tokens: Annotated[int, Range(min=1)],
    vocab_top: Annotated[int, Range(min=1)],
    converge_cos: Annotated[float, Range(min=-1, max=1)],
    divergence_k: Annotated[list[int], Each(Range(min=1), min_items=1)],
    divergence_tokens: Annotated[int, Range(min=0)],
    new_tokens: Annotated[int, Range(min=1)],
    divergence_batch: Annotated[int, Range(min=1)],
    neuron_z: Annotated[float, Range(min=0, min_open=True)],
    max_neurons: Annotated[int, Range(min=1)],
    text_rows: Annotated[int, Range(min=1)],
) -> FamilyResult:
    """Sink scores, repeated-token convergence and divergence, sink neurons and their patch."""
    room = ctx.context_length - 1  # BOS first
    divergence_k = [int(k) for k in divergence_k]
    _check("new_tokens", new_tokens, 1 <= new_tokens < room, f"must be in 1..{room - 1} (context minus BOS minus 1)")
    text = ctx.probes.long_text[:text_rows, : ctx.context_length]
    if text.shape[1] < 3:
        raise ValueError(f"probes.long_text has {text.shape[1]} tokens; metrics.sink needs >= 3")
    tok = ctx.tokenizer
    bos = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
    result = FamilyResult()

    # attention sink, first-position norm and MLP statistics on natural text (one pass)
    clean = text_pass(ctx.model, text, ctx.batch_size)
    rows = clean["mass_rows"].numpy()  # [n, layer, head]
    score = Sample("max_of_mean", rows, prompts="long_text")
    result.heads["sink/score"] = columns(score).astype(np.float32)
    result.stat("sink/score_max", score, "no attention")
    result.stat(
        "sink/score_mean", Sample("mean", rows.reshape(len(rows), -1).mean(1), prompts="long_text"), "no attention"
    )
    result.raw["sink/first_norm_ratio"] = clean["ratio"].numpy()
    ratio_rows = clean["ratio_rows"].numpy()  # [n, layer]
    result.stat(
        "sink/first_norm_ratio_max", Sample("max_of_mean", ratio_rows, prompts="long_text"), "zero hidden states"
    )

    # repeated-token convergence
    vocab = int(ctx.model.config.vocab_size)
    corpus = torch.cat([ctx.probes.long_text.flatten(), ctx.probes.natural.flatten()])
    special = list(getattr(tok, "all_special_ids", []) or [])
    tokens = frequent_tokens(corpus, vocab, special, vocab_top, n_tokens, ctx.seed)
    single = single_repeat_ids(tokens, min(repeat_k, room), bos)
    first, last = first_last_states(ctx.model, single, ctx.batch_size)
    cos, norm = convergence(first, last)
    summary = convergence_summary(cos, converge_cos)
    alone, _ = first_last_states(ctx.model, tokens[:, None], ctx.batch_size)
    cos_self, _ = convergence(alone, last)
    # one row per repeated token [tokens, layers]
    result.stat("sink/repeat_cos_max", Sample("max_of_mean", cos.numpy(), prompts="sink_repeat"), "zero hidden states")
    norm_rows = norm[:, summary["argmax"]].numpy()  # at the layer of repeat_cos_max on the full sample
    result.stat("sink/repeat_norm_ratio", Sample("mean", norm_rows, prompts="sink_repeat"), "zero hidden states")
    layer_index = "a layer index (the first layer over a threshold), not a statistic over prompts"
    result.value("sink/converge_layer", summary["layer"], layer_index)
    reached = (cos.max(dim=1).values >= converge_cos).double().numpy()
    result.stat("sink/converge_share", Sample("mean", reached, prompts="sink_repeat"), None)
    self_sample = Sample("max_of_mean", cos_self.numpy(), prompts="sink_repeat")
    result.stat("sink/repeat_cos_self_max", self_sample, "zero hidden states")
    result.raw.update(
        {
            "sink/repeat_tokens": tokens.numpy(),
            "sink/repeat_cos": cos.mean(0).numpy(),
            "sink/repeat_norm": norm.mean(0).numpy(),
            "sink/repeat_cos_self": cos_self.mean(0).numpy(),
        }
    )

    # sink neurons and the patch
    z, mean_other = first_position_z(clean["moments"])
    top, count = outlier_neurons(z, neuron_z, max_neurons)
    result.value("sink/n_sink_neurons", count, "a count of neurons over a z threshold")
    pooled_z = (
        "a maximum over every MLP neuron of z-scores whose moments pool every position of every window; "
        "per-window moments are not kept"
    )
    result.value("sink/neuron_z_max", float(z.abs().max()), pooled_z, "no MLP activation")
    result.raw["sink/sink_neurons"] = top.numpy()  # rows (layer, index, z), largest |z| first
    if count:
        plan = patch_plan(top, mean_other)
        patched = convergence(*first_last_states(ctx.model, single, ctx.batch_size, plan))[0]
        result.raw["sink/patch_repeat_cos"] = patched.mean(0).numpy()
        # the same tokens with and without the patch: one prompt set, paired draws
        result.part("sink/patch_repeat_cos_max", Sample("max_of_mean", patched.numpy(), prompts="sink_repeat"))
        drop = Sample("difference", of=("sink/repeat_cos_max", "sink/patch_repeat_cos_max"))
        result.stat("sink/patch_cos_drop", drop, "zero hidden states")
        patched_text = text_pass(ctx.model, text, ctx.batch_size, plan)
        delta_rows = (patched_text["nll_rows"] - clean["nll_rows"]).numpy()
        result.stat("sink/patch_loss_delta", Sample("mean", delta_rows, prompts="long_text"), "non-finite loss")
    else:
        why = f"no MLP neuron has |z| >= neuron_z={neuron_z} at position 0 (max |z| {float(z.abs().max()):.2f})"
        result.nan("sink/patch_cos_drop", why)
        result.nan("sink/patch_loss_delta", why)

    # repetition behaviour: does the greedy continuation of BOS + K x token keep repeating it?
    if divergence_tokens == 0:
        for key in ("sink/repeat_divergence_rate", "sink/repeat_divergence_k50"):
            result.nan(key, "metrics.sink.divergence_tokens=0 (skipped)")
        return result
    ks = divergence_ks(divergence_k, room - new_tokens)
    div_tokens = tokens[:divergence_tokens]
    prompts = [single_repeat_ids(div_tokens, k, bos) for k in ks]  # grouped by K: little padding
    gen = greedy_generate(
        ctx.model,
        [row for group in prompts for row in group.tolist()],
        new_tokens,
        pad_id=tok.pad_token_id or 0,
        batch_size=divergence_batch,
        desc=None,
    )
    flags = diverged(gen.ids, div_tokens.repeat(len(ks))).view(len(ks), len(div_tokens)).double()
    share = flags.mean(1)
    # resampled by token (each token is probed at every K): per token, the share of Ks that diverge
    rate = Sample("mean", flags.mean(0).numpy(), prompts="sink_divergence")
    result.stat("sink/repeat_divergence_rate", rate, None)
    k50, reason = k_at_half(ks, share)
    crossing = (
        "an interpolated crossing of the per-K divergence share (often undefined on a resample); "
        "sink/repeat_divergence_rate has the interval"
    )
    result.value("sink/repeat_divergence_k50", k50, crossing, reason)
    result.raw["sink/divergence_k"] = np.asarray(ks)
    result.raw["sink/divergence_by_k"] = share.numpy()
    return result


def passes(sizes: ProbeSizes, shape: Shape, **params) -> list[Pass]:
    """The text passes (clean and patched), the convergence passes and the divergence generation."""
    L, room = shape.n_layers, shape.context - 1
    text_rows = min(params["text_rows"], sizes.lt_n)
    k = min(params["repeat_k"], room)
    out = [
        Pass(
            "sink mass + neuron moments on long_text (x2 with the patch)",
            2 * text_rows,
            sizes.lt_len,
            sizes.batch,
            L,
            unembed=sizes.lt_len,
        ),
        Pass(
            "BOS + token x K convergence (x2 with the patch)",
            2 * params["n_tokens"],
            1 + k,
            sizes.batch,
            L,
            unembed=1 + k,
        ),
        Pass("single tokens", params["n_tokens"], 1, sizes.batch, L, unembed=1),
    ]
    new = params["new_tokens"]
    ks = divergence_ks(params["divergence_k"], room - new)
    rows = [kk + 1 for kk in ks for _ in range(params["divergence_tokens"])]  # grouped by K
    batch = params["divergence_batch"]
    for start in range(0, len(rows), batch):
        chunk = rows[start : start + batch]
        out.append(
            Pass(f"divergence generation, K <= {chunk[-1] - 1} (padded)", len(chunk), chunk[-1], batch, L, decode=new)
        )
    return out

"""Attention sinks and the repeated-token phenomenon (`sink/`), after Yona et al., "Interpreting the Repeated
Token Phenomenon" (ICML 2025).

Every scalar that claims a phenomenon comes as three keys from the same passes: the value `<key>`, its null
`<key>_null` (the same statistic on a control that lacks the phenomenon) and `<key>_excess` (the value minus the
null, or over it for ratios), each a bootstrap statistic over prompts; the excess is the headline. "Present" =
the excess's interval lies above its smallest effect of interest (MIN_EFFECT, a stated size; an excess of 0 or
a ratio of 1 is no effect). Residual points as in `ckptstudy.measure.residual`:
"layer l" is the output of layer l (0-based).

Text (`long_text` windows clipped to the context), twice: as they are (keys `sink/...`: Pythia packs documents
without a BOS at position 0, so a sink that Pythia learns must work there; the headline) and with BOS first
(`sink/bos_...`: a sink keyed to the BOS token, Yona et al.'s setting). Per variant:
- score_max: per head, the mean over queries 1..s-1 of the attention on key 0 (uniform causal attention gives
  1/(q+1): 0.0349 at 128 tokens), mean over windows, max over heads; null = the same on key 1 (uniform
  attention gives key 1 exactly what it gives key 0); excess = difference. Fused statistics, no weights.
- first_norm_ratio_max: ||h_0|| / median_{i >= 1} ||h_i|| per layer (mean over windows, max over layers). It is
  above 1 without any sink, because position 0 attends only to itself (1.3 at random init). Null = the same
  ratio with every MLP neuron held at position 0 at its typical value (the mean over windows of its median
  over positions 2..s-1): position 0 keeps its one-key attention but loses whatever its MLPs write there only;
  excess = ratio (how much position-0-specific MLP activity multiplies the first position's norm).
Sink neurons (MLP neuron k of layer l), on both variants (each window's value = the mean of its two variants):
z = (a_0 - median) / (1.4826 MAD), median and MAD over positions 2..s-1 of each window (the scale floored at
SCALE_FLOOR of the layer's median scale, plus 1e-8); write share = ((a_0 - median) W_out[:, k] . h_0) /
||h_0||^2, h_0 = position 0's residual at layer l's output: the share of position 0's state that the neuron's
position-0-specific activity writes (shares of all components of h_0 sum to 1). A sink neuron has mean |z| >=
`neuron_z` and mean share >= `neuron_share` (n_sink_neurons, a count; null: the same count at position 1).
neuron_share_max = the largest mean write share among the sink neurons (the `max_neurons` largest kept; 0 when
there is none); null = the same at position 1 (z, share and the criteria from a_1, h_1); excess = difference.
Where the MLP output is normalised before it is added to the residual (OLMo 2's post-norm) a neuron's write is
not a_k W_out[:, k], so the write share, the sink neurons and the patch are NaN with that reason.

Repeated tokens: `n_tokens` tokens drawn (seeded) from the `vocab_top` most frequent non-special probe tokens;
per token t: the row BOS + t x K (K = `repeat_k` clipped to the context minus BOS; BOS is needed: without it a
rotary-only model gives every position of a one-token sequence the same state) and its control BOS + K - 1
tokens drawn from the same pool (never t) + t: the same last token, nothing repeated. One pass each:
- repeat_cos_max: cos(h_K, h_0) per layer (h_0 = BOS, the sink), mean over tokens, max over layers; null = the
  same on the control rows; excess = difference. converge_share: share of tokens whose cos reaches
  `converge_cos` at some layer; null and excess likewise.
- repeat_divergence_rate: share of tokens whose first generated token (the argmax after BOS + t x K) is not t;
  null = the same after a short repetition, K = `short_k` (whether the model repeats at all); excess =
  difference. Read from the same pass (position k's prediction continues BOS + t x k), so K is exactly the
  repetition scored. repeat_divergence_k50: once the share of diverging tokens has dropped below 0.5 (the
  model repeats), the K where it comes back up to 0.5, linear in log K between integers (a value; NaN with
  its reason when the model never repeats or the share does not come back by K).
Patch (Yona et al.): the sink neurons (at most `max_neurons`, largest share first) held at their typical value
at positions >= 1 (position 0 free); null = as many random neurons of the same layers held the same way:
- patch_cos_drop = repeat_cos_max - the same with the patch (null: with the random set; excess = the random
  set's repeat_cos_max minus the patch's); patch_divergence_drop likewise for repeat_divergence_rate;
- patch_loss_delta = mean next-token NLL (nats) on `long_text` with the patch minus without: the cost (null:
  the random set's; excess: the patch's NLL minus the random set's).
All patch scalars are NaN (with the reason) when no neuron passes. Intervals: windows ("long_text") and tokens
("sink_repeat") are resampled; value and null share their rows, so every excess is a paired difference.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Annotated

import numpy as np
import torch

from ckptstudy.measure.attention_stats import StatsRequest
from ckptstudy.measure.capture import capture_stats
from ckptstudy.measure.cost import Pass, ProbeSizes, Shape
from ckptstudy.measure.precision import Tolerance
from ckptstudy.measure.readout import token_logprobs
from ckptstudy.measure.residual import MLP_WRITE_NONLINEAR, clamp_mlp, mlp_write_projection, tap_mlp, tap_residual
from ckptstudy.metrics import FamilyResult
from ckptstudy.model.arch import model_parts
from ckptstudy.params import Range
from ckptstudy.stats.bootstrap import Sample, columns

DEFINITION_VERSION = 3  # 3: nulls and excesses; robust z + write share; divergence on the first generated token
# Scalars on a bfloat16/float16 load within this of float32 (measured: <= 0.02 of it, README "Precision"). Counts and
# shares over a threshold (sink neurons over neuron_z, converged tokens over converge_cos, the first-token divergence
# rule: one token of n_tokens moves a rate by 1/n_tokens) are listed by the comparison, not checked.
TOLERANCE = Tolerance(rtol=0.05, atol=0.02, exclude=("n_sink_neurons", "converge_share", "repeat_divergence_rate"))
SCALE_FLOOR = 0.01  # a neuron's robust scale is at least this share of its layer's median robust scale
MAD_SCALE = 1.4826  # MAD -> standard deviation of a normal distribution
# The smallest excess that counts as the phenomenon: "present" = the excess's interval lies above it. A model is
# deterministic, so a tiny position effect (a noisy first position, BOS's own embedding) is reproducible over
# prompts and its interval clears 0; these are the sizes below which it is not the phenomenon: 0.1 of attention
# mass (a sink holds 0.3-1; uniform attention 0.035 at 128 tokens), a 2x first-position norm (massive activations
# are 10-1000x), a write share above the null (its sink neurons already pass neuron_share), 0.1 of cosine, 0.1
# of the tokens. The patch's text loss is its cost, not a phenomenon.
MIN_EFFECT = {
    **{f"sink/{v}score_max_excess": 0.1 for v in ("", "bos_")},
    **{f"sink/{v}first_norm_ratio_max_excess": 2.0 for v in ("", "bos_")},
    "sink/neuron_share_max_excess": 0.0,
    "sink/repeat_cos_max_excess": 0.1,
    "sink/converge_share_excess": 0.1,
    "sink/repeat_divergence_rate_excess": 0.1,
    "sink/patch_cos_drop_excess": 0.1,
    "sink/patch_divergence_drop_excess": 0.1,
}


def _triple(result: FamilyResult, key: str, value: Sample, null: Sample, excess: str, reason: str | None) -> None:
    """Report `key`, `key_null` and `key_excess` (their difference, or ratio: `excess`), one reason for all."""
    result.stat(key, value, reason)
    result.stat(f"{key}_null", null, reason)
    result.stat(f"{key}_excess", Sample(excess, of=(key, f"{key}_null")), reason)


# ---------------------------------------------------------------------------------------------- text
def key_mass_request(seq_len: int) -> StatsRequest:
    """Per row and head, the attention on key 0 and on key 1 summed over queries 1..s-1 (fused: no weights)."""
    queries = torch.arange(1, seq_len)
    keys = {"key0": torch.zeros_like(queries), "key1": torch.ones_like(queries)}
    return StatsRequest(diagonals={name: (queries, k) for name, k in keys.items()}, per_row=True)


def first_norm_ratio(hidden: torch.Tensor) -> torch.Tensor:
    """||h_0|| / median_{i >= 1} ||h_i|| per row: hidden [b, s, d] (s >= 2) -> [b]."""
    norms = hidden.double().norm(dim=-1)
    return norms[:, 0] / norms[:, 1:].quantile(0.5, dim=-1).clamp(min=1e-30)  # midpoint median


def neuron_rows(act: torch.Tensor) -> torch.Tensor:
    """Per row: the activation at positions 0 and 1, and the median and MAD over positions 2..s-1:
    act [b, s, d_ff] (s >= 3) -> [b, 4, d_ff] (float64)."""
    rest = act[:, 2:]  # in the model's dtype: medians select, and a float64 copy would double a large tensor
    median = rest.median(dim=1).values
    mad = (rest - median[:, None]).abs().median(dim=1).values
    return torch.stack([act[:, 0], act[:, 1], median, mad], dim=1).double()


def robust_z(value: torch.Tensor, median: torch.Tensor, mad: torch.Tensor) -> torch.Tensor:
    """(value - median) / (1.4826 MAD), the scale floored at SCALE_FLOOR of the median scale over the last axis
    (the layer's neurons) plus 1e-8: [..., d_ff] -> [..., d_ff]."""
    scale = MAD_SCALE * mad
    floor = SCALE_FLOOR * scale.median(dim=-1, keepdim=True).values + 1e-8
    return (value - median) / torch.maximum(scale, floor)


def write_share(delta: torch.Tensor, projection: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
    """Share of a residual state written by each neuron's activity `delta` [n, L, d_ff]: delta * (W_out^T h)
    / ||h||^2, projection = W_out^T h [n, L, d_ff], state h [n, L, d] -> [n, L, d_ff]."""
    norm_sq = state.double().pow(2).sum(-1).clamp(min=1e-30)
    return delta * projection / norm_sq[..., None]


class LayerOutputs:
    """A tap callback keeping `reduce(tensor)` of every chunk per layer: for `tap_residual` (offset 1: point l + 1
    is layer l's output, point 0 is skipped) or `tap_mlp` (offset 0); `stacked()` = the chunks concatenated in row
    order, layers on axis 1: [n, L, ...]."""

    def __init__(self, n_layers: int, reduce, offset: int = 1) -> None:
        self.reduce, self.offset, self.kept = reduce, offset, [[] for _ in range(n_layers)]

    def __call__(self, index: int, tensor: torch.Tensor) -> None:
        if index >= self.offset:
            self.kept[index - self.offset].append(self.reduce(tensor).cpu())

    def stacked(self) -> torch.Tensor:
        return torch.stack([torch.cat(chunks) for chunks in self.kept], dim=1)


@dataclass
class TextRows:
    """Per-window reductions of one text pass (n windows, L layers, H heads)."""

    mass: torch.Tensor  # [n, L, 2, H]: mean over queries 1..s-1 of the attention on key 0, key 1
    ratio: torch.Tensor  # [n, L] first-norm ratio
    states: torch.Tensor  # [n, L, 2, d] h_0 and h_1 at each layer output
    neurons: torch.Tensor  # [n, L, 4, d_ff] `neuron_rows`
    nll: torch.Tensor | None  # [n] mean next-token NLL (nats), when asked for


def _row_nll(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    return -token_logprobs(logits, ids).double().mean()


@torch.no_grad()
def text_pass(model, ids: torch.Tensor, batch_size: int, with_loss: bool) -> TextRows:
    """One hooked pass over text windows ids [n, s] (s >= 3): attention on keys 0 and 1 (fused statistics),
    residual norms and first states, MLP neuron statistics, and (with_loss) each window's mean NLL."""
    n_layers = model_parts(model).n_layers
    ratio = LayerOutputs(n_layers, first_norm_ratio)
    states = LayerOutputs(n_layers, lambda hidden: hidden[:, :2].double())
    neurons = LayerOutputs(n_layers, neuron_rows, offset=0)
    with tap_residual(model, lambda point, h: (ratio(point, h), states(point, h))), tap_mlp(model, neurons):
        cap = capture_stats(
            model, ids, key_mass_request(ids.shape[1]), _row_nll if with_loss else None, batch_size=batch_size
        )
    mass = torch.stack([cap.attn[layer]["diagonal"] for layer in range(n_layers)], dim=1) / (ids.shape[1] - 1)
    return TextRows(mass, ratio.stacked(), states.stacked(), neurons.stacked(), cap.logits)


@torch.no_grad()
def first_norm_rows(model, ids: torch.Tensor, batch_size: int, plan: dict) -> torch.Tensor:
    """`first_norm_ratio` per window and layer output with the MLP clamp `plan` on at every position: [n, L]."""
    ratio = LayerOutputs(model_parts(model).n_layers, first_norm_ratio)
    with clamp_mlp(model, plan, from_position=0), tap_residual(model, ratio):
        capture_stats(model, ids, StatsRequest(per_row=True), batch_size=batch_size)
    return ratio.stacked()


def typical_plan(typical: torch.Tensor) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """{layer: (every neuron, its typical value)} for `clamp_mlp`, typical [L, d_ff]."""
    return {layer: (torch.arange(typical.shape[1]), typical[layer].float()) for layer in range(typical.shape[0])}


def report_text(result: FamilyResult, prefix: str, rows: TextRows, first_null: torch.Tensor) -> None:
    """score_max and first_norm_ratio_max with their nulls and excesses for one text variant; first_null [n, L]
    = the null first-norm ratio (`first_norm_null`)."""
    on_key = {k: Sample("max_of_mean", rows.mass[:, :, i].numpy(), prompts="long_text") for i, k in enumerate("01")}
    _triple(result, f"sink/{prefix}score_max", on_key["0"], on_key["1"], "difference", "no attention")
    result.heads[f"sink/{prefix}score"] = columns(on_key["0"]).astype(np.float32)
    result.heads[f"sink/{prefix}score_excess"] = (columns(on_key["0"]) - columns(on_key["1"])).astype(np.float32)
    ratio = Sample("max_of_mean", rows.ratio.numpy(), prompts="long_text")
    null = Sample("max_of_mean", first_null.numpy(), prompts="long_text")
    _triple(result, f"sink/{prefix}first_norm_ratio_max", ratio, null, "ratio", "zero hidden states")
    result.raw[f"sink/{prefix}first_norm_ratio"] = rows.ratio.mean(0).numpy()


def first_norm_null(model, ids: torch.Tensor, rows: TextRows, batch_size: int) -> torch.Tensor:
    """The null first-norm ratio [n, L]: the same windows with every MLP neuron held, at every position, at its
    typical value (mean over windows of its median over positions 2..): attention's structure (position 0 sees
    only itself) is kept, what the MLPs write at one position and not at another is gone."""
    return first_norm_rows(model, ids, batch_size, typical_plan(rows.neurons[:, :, 2].mean(0)))


# ---------------------------------------------------------------------------------------- sink neurons
@dataclass
class NeuronStats:
    """Per window (mean of the text variants), layer and neuron: z and write share at positions 0 and 1."""

    z: torch.Tensor  # [n, L, 2, d_ff]
    share: torch.Tensor  # [n, L, 2, d_ff]
    typical: torch.Tensor  # [L, d_ff] mean over windows and variants of the median over positions 2..


def neuron_stats(model, variants: list[TextRows]) -> NeuronStats:
    """z and write shares of every MLP neuron at positions 0 and 1, averaged over the text variants."""
    zs, shares = [], []
    for rows in variants:
        a, median, mad = rows.neurons[:, :, :2], rows.neurons[:, :, 2:3], rows.neurons[:, :, 3:4]
        zs.append(robust_z(a, median, mad))
        proj = torch.stack([mlp_write_projection(model, rows.states[:, :, p]) for p in (0, 1)], dim=2)
        shares.append(write_share(a - median, proj, rows.states))
    typical = torch.stack([rows.neurons[:, :, 2].mean(0) for rows in variants]).mean(0)
    return NeuronStats(torch.stack(zs).mean(0), torch.stack(shares).mean(0), typical)


def sink_neurons(stats: NeuronStats, position: int, neuron_z: float, neuron_share: float) -> torch.Tensor:
    """Neurons whose mean |z| >= neuron_z and mean write share >= neuron_share at `position` (0, or 1 for the
    null): rows (layer, index, z, share) [k, 4], largest share first."""
    z, share = stats.z[:, :, position].mean(0), stats.share[:, :, position].mean(0)
    passing = ((z.abs() >= neuron_z) & (share >= neuron_share)).nonzero()
    layer, index = passing[:, 0], passing[:, 1]
    rows = torch.stack([layer.double(), index.double(), z[layer, index], share[layer, index]], dim=1)
    return rows[rows[:, 3].argsort(descending=True, stable=True)].reshape(-1, 4)


def share_rows(stats: NeuronStats, position: int, neurons: torch.Tensor) -> torch.Tensor:
    """Per-window write shares at `position` of `neurons` rows (layer, index, ...): [n, k] (one zero column
    when there are none: no neuron writes)."""
    share = stats.share[:, :, position]
    if not len(neurons):
        return torch.zeros(share.shape[0], 1, dtype=torch.float64)
    return share[:, neurons[:, 0].long(), neurons[:, 1].long()]


def report_neurons(result: FamilyResult, stats: NeuronStats, neuron_z: float, neuron_share: float, limit: int):
    """neuron_share_max (null, excess) and the counts; returns the sink neurons to patch [k <= limit, 4]."""
    found = [sink_neurons(stats, p, neuron_z, neuron_share) for p in (0, 1)]
    shares = [
        Sample("max_of_mean", share_rows(stats, p, found[p][:limit]).numpy(), prompts="long_text") for p in (0, 1)
    ]
    _triple(result, "sink/neuron_share_max", *shares, "difference", "zero hidden states")
    count = f"a count of MLP neurons with |z| >= neuron_z={neuron_z} and write share >= neuron_share={neuron_share}"
    result.value("sink/n_sink_neurons", len(found[0]), f"{count} at position 0")
    result.value("sink/n_sink_neurons_null", len(found[1]), f"{count} at position 1 (the null)")
    result.raw["sink/sink_neurons"] = found[0].numpy()  # rows (layer, index, z, share), largest share first
    return found[0][:limit]


def clamp_plan(neurons: torch.Tensor, typical: torch.Tensor) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """{layer: (neuron indices, typical values)} for `clamp_mlp`, from rows (layer, index, ...) [k, >= 2]."""
    plan: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    for layer in neurons[:, 0].long().unique().tolist():
        index = neurons[neurons[:, 0] == layer, 1].long()
        plan[layer] = (index, typical[layer, index].float())
    return plan


def random_neurons(neurons: torch.Tensor, d_ff: int, seed: int) -> torch.Tensor:
    """As many neurons per layer as `neurons` rows (layer, index, ...) hold, drawn (seeded) among that layer's
    other neurons: rows (layer, index) [k, 2]."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for layer in neurons[:, 0].long().unique().tolist():
        taken = set(neurons[neurons[:, 0] == layer, 1].long().tolist())
        others = torch.tensor([k for k in range(d_ff) if k not in taken], dtype=torch.long)
        pick = others[torch.randperm(len(others), generator=gen)[: len(taken)]]
        out.append(torch.stack([torch.full_like(pick, layer), pick], dim=1))
    return torch.cat(out).double() if out else torch.zeros(0, 2, dtype=torch.float64)


# --------------------------------------------------------------------------------- repeated tokens
def frequent_tokens(corpus: torch.Tensor, vocab: int, special: list[int], top: int) -> torch.Tensor:
    """The `top` most frequent non-special ids of `corpus` (any shape) that occur, most frequent first: [<= top]."""
    counts = torch.bincount(corpus.flatten(), minlength=vocab)[:vocab].double()
    if special:
        counts[torch.tensor([s for s in special if 0 <= s < vocab], dtype=torch.long)] = 0
    order = counts.argsort(descending=True, stable=True)[:top]
    return order[counts[order] > 0]


def repeat_rows(
    pool: torch.Tensor, m: int, k: int, bos: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`m` distinct tokens t drawn (seeded) from `pool`; per token the row BOS + t x k and its control BOS + k - 1
    tokens drawn from the pool without t + t: (tokens [m'], repeat [m', k + 1], control [m', k + 1])."""
    gen = torch.Generator().manual_seed(seed)
    tokens = pool[torch.randperm(len(pool), generator=gen)[:m]]
    repeat = torch.cat([torch.full((len(tokens), 1), bos), tokens[:, None].repeat(1, k)], dim=1)
    control = repeat.clone()
    for row, t in enumerate(tokens.tolist()):
        others = pool[pool != t]
        if len(others):
            control[row, 1:k] = others[torch.randint(len(others), (k - 1,), generator=gen)]
    return tokens, repeat, control


def convergence(first: torch.Tensor, later: torch.Tensor) -> torch.Tensor:
    """cos(h_later, h_first): first [..., d], later [..., d] -> [...] (float64)."""
    first, later = first.double(), later.double()
    return (first * later).sum(-1) / (first.norm(dim=-1) * later.norm(dim=-1)).clamp(min=1e-30)


@torch.no_grad()
def repeat_pass(model, ids: torch.Tensor, batch_size: int, plan: dict | None = None, divergence: bool = False):
    """cos(h_k, h_0) at every position k and layer output [n, L, s]; with `divergence` also whether the argmax at
    each position k (the first token generated after ids[:, :k + 1]) is not the row's (last) token [n, s], else
    None. With `plan` the MLP clamp is on (positions >= 1)."""
    cos = LayerOutputs(model_parts(model).n_layers, lambda hidden: convergence(hidden[:, :1], hidden))

    def diverges(logits, row_ids):
        token = row_ids[0, -1]  # the repeated token is the row's last one
        return (logits[0].argmax(-1) != token).double()

    with clamp_mlp(model, plan or {}), tap_residual(model, cos):
        cap = capture_stats(model, ids, StatsRequest(per_row=True), diverges if divergence else None, batch_size)
    return cos.stacked(), cap.logits


def divergence_k50(share: torch.Tensor, level: float = 0.5) -> tuple[float, str]:
    """The repetition length K at which the share of diverging tokens comes back up to `level` after the model
    started repeating: share [k] for K = 1..k; the first K whose share is below `level` starts the search, the
    first later K whose share reaches it ends it, linear in log K between the two integers around the crossing.
    (NaN, reason) when the share is never below `level` or does not come back up by K = k."""
    share = share.double()
    below = (share < level).nonzero()
    if not len(below):
        return math.nan, f"at least {level} of the tokens diverge at every K in 1..{len(share)}: no repetition to break"
    start = int(below[0])
    back = (share[start:] >= level).nonzero()
    if not len(back):
        return math.nan, f"fewer than {level} of the tokens diverge at every K from {start + 1} to {len(share)}"
    i = start + int(back[0])  # share[i] >= level > share[i - 1]; K = index + 1
    frac = float((level - share[i - 1]) / (share[i] - share[i - 1]))
    return math.exp(math.log(i) + frac * (math.log(i + 1) - math.log(i))), ""


def report_repeat(
    result: FamilyResult, cos: dict[str, torch.Tensor], flags: torch.Tensor, converge_cos: float, short_k: int
):
    """Convergence and divergence with their nulls: cos {"repeat", "control"} [m, L, k + 1], flags [m, k + 1]
    (position k diverges)."""
    last = {name: Sample("max_of_mean", c[:, :, -1].numpy(), prompts="sink_repeat") for name, c in cos.items()}
    _triple(result, "sink/repeat_cos_max", last["repeat"], last["control"], "difference", "zero hidden states")
    reached = {name: (c[:, :, -1].max(dim=1).values >= converge_cos).double().numpy() for name, c in cos.items()}
    shares = [Sample("mean", reached[name], prompts="sink_repeat") for name in ("repeat", "control")]
    _triple(result, "sink/converge_share", *shares, "difference", None)
    k = flags.shape[1] - 1
    rates = [Sample("mean", flags[:, col].numpy(), prompts="sink_repeat") for col in (k, min(short_k, k))]
    _triple(result, "sink/repeat_divergence_rate", *rates, "difference", None)
    k50, reason = divergence_k50(flags[:, 1:].mean(0))  # K = 1..k
    crossing = "an interpolated crossing of the per-K divergence share (often undefined on a resample)"
    result.value("sink/repeat_divergence_k50", k50, crossing, reason)
    result.raw.update({f"sink/{name}_cos": c.mean(0).numpy() for name, c in cos.items()})  # [L, k + 1]
    result.raw["sink/divergence_by_k"] = flags.mean(0).numpy()  # [k + 1], position k = K


def report_patch(result: FamilyResult, runs: dict, clean: dict, text_nll: dict) -> None:
    """patch_cos_drop, patch_divergence_drop and patch_loss_delta with the random-set null. `runs` / `clean`:
    {"patch" | "random": (cos [m, L, k + 1], flags [m, k + 1])} and the clean repeat run; text_nll {"clean",
    "patch", "random"}: [n]."""
    for name, (cos, flags) in {"clean": clean, **runs}.items():
        result.part(f"sink/{name}_repeat_cos", Sample("max_of_mean", cos[:, :, -1].numpy(), prompts="sink_repeat"))
        result.part(f"sink/{name}_divergence", Sample("mean", flags[:, -1].numpy(), prompts="sink_repeat"))
    for key, part in (("patch_cos_drop", "repeat_cos"), ("patch_divergence_drop", "divergence")):
        result.stat(f"sink/{key}", Sample("difference", of=(f"sink/clean_{part}", f"sink/patch_{part}")), None)
        result.stat(f"sink/{key}_null", Sample("difference", of=(f"sink/clean_{part}", f"sink/random_{part}")), None)
        excess = Sample("difference", of=(f"sink/random_{part}", f"sink/patch_{part}"))
        result.stat(f"sink/{key}_excess", excess, None)
    delta = {name: (text_nll[name] - text_nll["clean"]).numpy() for name in ("patch", "random")}
    loss = [Sample("mean", delta[name], prompts="long_text") for name in ("patch", "random")]
    _triple(result, "sink/patch_loss_delta", *loss, "difference", "non-finite loss")
    result.raw["sink/patch_repeat_cos"] = runs["patch"][0].mean(0).numpy()


NEURON_KEYS = [
    *(f"sink/neuron_share_max{s}" for s in ("", "_null", "_excess")),
    "sink/n_sink_neurons",
    "sink/n_sink_neurons_null",
]
PATCH_KEYS = [
    f"sink/{k}{s}"
    for k in ("patch_cos_drop", "patch_divergence_drop", "patch_loss_delta")
    for s in ("", "_null", "_excess")
]


# ------------------------------------------------------------------------------------------ measure
def check(*, repeat_k: int, short_k: int, shape: Shape | None, **_params) -> None:
    """The null's short repetition must be shorter than the scored one (repeat_k clipped to the model's context
    minus BOS, when its yaml states the context)."""
    if short_k >= repeat_k:
        raise ValueError(f"metrics.sink.short_k={short_k} is not valid; must be < repeat_k={repeat_k}")
    if shape is not None and short_k >= shape.context - 1:
        raise ValueError(
            f"metrics.sink.short_k={short_k} is not valid; must be < {shape.context - 1} (the model's "
            f"{shape.context}-token context minus BOS: the longest repetition scored)"
        )


def measure(
    ctx,
    *,
    repeat_k: Annotated[int, Range(min=2)],
    short_k: Annotated[int, Range(min=1)],
    n_tokens: Annotated[int, Range(min=1)],
    vocab_top: Annotated[int, Range(min=1)],
    converge_cos: Annotated[float, Range(min=-1, max=1)],
    neuron_z: Annotated[float, Range(min=0, min_open=True)],
    neuron_share: Annotated[float, Range(min=0, max=1, min_open=True)],
    max_neurons: Annotated[int, Range(min=1)],
    text_rows: Annotated[int, Range(min=1)],
) -> FamilyResult:
    """Sink scores and first-position norms (text with and without BOS), sink neurons, repeated-token
    convergence and divergence, and the patch; each with its null (module docstring)."""
    model, result, shape, cap = ctx.model, FamilyResult(), ctx.shape, ctx.batch_size
    tok = ctx.tokenizer
    bos = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
    plain = ctx.probes.long_text[:text_rows, : ctx.context_length]
    if plain.shape[1] < 3:
        raise ValueError(f"probes.long_text has {plain.shape[1]} tokens; metrics.sink needs >= 3")
    n, s = plain.shape
    variants = {"": plain, "bos_": torch.cat([torch.full_like(plain[:, :1], bos), plain[:, :-1]], dim=1)}
    batch = ctx.rows(text_passes(n, s, shape, cap)[0])
    rows = {prefix: text_pass(model, ids, batch, with_loss=not prefix) for prefix, ids in variants.items()}
    batch = ctx.rows(text_passes(n, s, shape, cap)[1])
    for prefix, ids in variants.items():
        report_text(result, prefix, rows[prefix], first_norm_null(model, ids, rows[prefix], batch))
    parts = model_parts(model)
    if parts.mlp_writes_linearly:
        stats = neuron_stats(model, list(rows.values()))
        neurons = report_neurons(result, stats, neuron_z, neuron_share, max_neurons)
    else:  # no write share, so no sink neuron and no patch: each key says why
        why = "no write share: " + MLP_WRITE_NONLINEAR.format(arch=parts.architecture.model_types[0])
        for key in NEURON_KEYS + PATCH_KEYS:
            result.nan(key, why)

    corpus = torch.cat([ctx.probes.long_text.flatten(), ctx.probes.natural.flatten()])
    special = list(getattr(tok, "all_special_ids", []) or [])
    pool = frequent_tokens(corpus, int(model.config.vocab_size), special, vocab_top)
    k = min(repeat_k, ctx.context_length - 1)
    tokens, repeat, control = repeat_rows(pool, n_tokens, k, bos, ctx.seed)
    described = repeat_passes(len(tokens), 1 + k, shape, cap)
    batch = ctx.rows(described[0])
    clean = repeat_pass(model, repeat, batch, divergence=True)
    cos = {"repeat": clean[0], "control": repeat_pass(model, control, ctx.rows(described[1]))[0]}
    report_repeat(result, cos, clean[1], converge_cos, short_k)
    result.raw["sink/repeat_tokens"] = tokens.numpy()

    if not parts.mlp_writes_linearly:
        return result
    if not len(neurons):
        why = f"no MLP neuron has |z| >= neuron_z={neuron_z} and write share >= neuron_share={neuron_share}"
        for key in PATCH_KEYS:
            result.nan(key, why)
        return result
    chosen = random_neurons(neurons, stats.typical.shape[1], ctx.seed)
    plans = {"patch": clamp_plan(neurons, stats.typical), "random": clamp_plan(chosen, stats.typical)}
    runs = {name: repeat_pass(model, repeat, batch, plan, divergence=True) for name, plan in plans.items()}
    batch = ctx.rows(text_passes(n, s, shape, cap)[2])
    nll = {name: text_loss(model, plain, batch, plan) for name, plan in plans.items()}
    report_patch(result, runs, clean, {"clean": rows[""].nll, **nll})
    return result


@torch.no_grad()
def text_loss(model, ids: torch.Tensor, batch_size: int, plan: dict) -> torch.Tensor:
    """Each window's mean next-token NLL (nats) with the MLP clamp `plan` on positions >= 1: [n]."""
    with clamp_mlp(model, plan):
        return capture_stats(model, ids, StatsRequest(per_row=True), _row_nll, batch_size).logits


def text_passes(rows: int, seq: int, shape: Shape, cap: int | None) -> list[Pass]:
    """The text passes, each over `rows` windows of `seq` tokens per text variant: keys 0 and 1, norms and neuron
    statistics (their per-window medians hold a few copies of the MLP activation); the same with every MLP
    neuron held typical (the first-norm null: a clamped copy of the activation); the patch's text loss."""
    L, f = shape.n_layers, shape.mlp_width
    return [
        Pass(
            "text (as is, with BOS): keys 0 and 1, norms, neurons",
            rows,
            seq,
            cap,
            L,
            seq,
            "fused",
            logits="row",
            extra=4 * f,
        ),
        Pass("text (as is, with BOS), MLPs held typical (first-norm null)", rows, seq, cap, L, 0, "fused", extra=f),
        Pass(
            "text loss with the patch and with the random set", rows, seq, cap, L, seq, "fused", logits="row", extra=f
        ),
    ]


def repeat_passes(rows: int, seq: int, shape: Shape, cap: int | None) -> list[Pass]:
    """The repeated-token rows (BOS + token x K: clean, patched, random set; the first generated token read at
    every position) and their control rows (convergence only)."""
    L, f = shape.n_layers, shape.mlp_width
    return [
        Pass("BOS + token x K: clean, patched, random set", rows, seq, cap, L, seq, "fused", logits="row", extra=f),
        Pass("BOS + unrepeated tokens + token (control rows)", rows, seq, cap, L, 0, "fused"),
    ]


def passes(sizes: ProbeSizes, shape: Shape, **params) -> list[Pass]:
    """Text with and without BOS, the same with the MLPs held typical (the first-norm null), the repeat rows
    (clean, patched, random set) and their control rows, and the patch's text loss (sink and random sets; both
    patch passes are skipped when no neuron passes: `sizes.sink_patch` says whether to assume they run)."""
    n, s = min(params["text_rows"], sizes.lt_n), sizes.lt_len
    k, m = min(params["repeat_k"], shape.context - 1), params["n_tokens"]
    text, null, loss = text_passes(n, s, shape, sizes.batch)
    repeat, control = repeat_passes(m, 1 + k, shape, sizes.batch)
    patched = [replace(loss, rows=2 * n)] if sizes.sink_patch else []
    return [
        replace(text, rows=2 * n),
        replace(null, rows=2 * n),
        replace(repeat, rows=(3 if sizes.sink_patch else 1) * m),
        control,
        *patched,
    ]

"""Perturbation response (`perturb/`), after Luick, "Universal Response and Emergence of Induction in LLMs".

A perturbation of strength eps at residual point l (the input of layer l; l = 0 is the embedding
output) and position j adds eps * ||h_lj|| * u to h_lj, u a random unit vector (`draws` seeded
draws). The response at a later position i > j and the output of layer m >= l is
    r_mi = ||h'_mi - h_mi|| / ||h_mi||
(h' perturbed, h clean; the clean row runs in the same batch as its perturbed copies, so batch-shape
rounding cancels).

Method checks (keys `perturb/check_*`): the regime the induction signature is read in, not findings about
training. A smooth model responds linearly to a small enough perturbation whatever it has learnt (random init
gives slopes 0.999-1.000), and a response that is any pure power of eps, quadratic included, has
scale_invariance 0. They say whether `induction_eps` sits in the linear regime at this checkpoint. Per layer m:
- R_m(eps) = mean of r_mi over prompts, draws and positions i > j (probe: `long_text`, clipped);
- slope_m = least-squares slope of log R_m against log eps over the whole eps range;
- local slopes s_mt = (log R_m(eps_t+1) - log R_m(eps_t)) / (log eps_t+1 - log eps_t), t = 0..T-2;
  spread_m = population std of s_mt over t;
- scale_invariance = mean over the measured layers of spread_m (0 = the response is a pure power of
  eps over the whole range, in every layer);
- linear_range_max_eps = the largest eps_t such that |s_mt' - 1| <= tolerance for every t' < t and
  every layer (NaN when already the first interval is not linear); linear_range_censored = 1 when every
  interval of the grid is linear: the value is then eps_max, a lower bound of the linear range, not its end.

Induction signature on `random_repeat` = BOS + R random tokens + the same R tokens: the token at
position j (first copy, 1 <= j <= R) recurs at j + R. An induction head at query q attends to the key
right after the previous occurrence of q's token and copies that key's token. The query whose key is
j is the one whose token is token j-1 in the second copy: q = (j - 1) + R. So the perturbed token's
own information (the value at j) is written to position j + R - 1, the position that predicts the
second occurrence of token j (the position *before* it, not after it). Position j + R (the second
occurrence itself) is reached only second-hand, through position j + 1, whose previous-token part
encodes token j: via its key (a saturated pattern barely moves) and via its value when the induction
head's OV circuit also reads that part (the micro suite: about half the target's response). Hence
    induction_ratio_m = mean r_m at i = j + R - 1 / mean r_m at the other second-copy positions
(pooled over prompts, draws and the perturbed positions j in 2..R, whose target j + R - 1 lies in
the second copy); ~1 without an induction circuit. The response profile at i = j + R - 1 + o,
o = -2..2, relative to the same baseline, is kept in raw (o = +1 is the second occurrence).
That baseline mixes distances: the target lies R - 1 after j, the other second-copy positions
R + 1 - j .. 2R - j after it, so a layer whose attention depends on distance alone moves the ratio away from 1
without any induction (measured on the micro suite: 1.4-2 in layer 0 from step 1000, also without a
repeat). The null of both is the control probe: the same BOS + first copy followed by fresh random tokens
(seeded, from the probe's token range) instead of the repeat: same positions, distances and perturbed tokens,
nothing to copy.
- induction_excess_m (the headline, max over layers induction_excess_max and its layer induction_layer) =
  mean r_m at j + R - 1 on `random_repeat` (raw `perturb/induction_response`) / the same on the control
  probe (raw `perturb/induction_response_null`): distance-matched, ~1 without induction whatever the
  positional pattern;
- induction_ratio_max (max over layers of induction_ratio_m), induction_ratio_max_null (the same ratio on the
  control probe: what the positional pattern alone gives) and induction_ratio_max_excess = their ratio.
"Present" = the excess's interval lies above MIN_EFFECT.

Bootstrap samples (`ckptstudy.stats.bootstrap`) over the `random_repeat` prompts: per layer, ratios of sums
over prompts (ratio_of_sums: per prompt, its mean response on the repeat / on its control row, or at the
target / at the baseline); maxima over layers are the maxima of those per-layer ratios of sums
(`reduce="max"`). The method checks are fits over `n_prompts` windows and say why they have no interval.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Annotated

import numpy as np
import torch

from ckptstudy.measure.cost import Pass, ProbeSizes, Shape
from ckptstudy.measure.precision import Tolerance
from ckptstudy.measure.residual import layer_inputs, run_layers
from ckptstudy.metrics import FamilyResult
from ckptstudy.model.arch import model_parts
from ckptstudy.params import Range
from ckptstudy.stats.bootstrap import Sample, columns

DEFINITION_VERSION = 4  # 4: computed in float32 whatever the loaded dtype; 3: check_* names, induction nulls
# A perturbation of 1e-4 ||h|| is below bfloat16's resolution (~4e-3 ||h||) and vanishes when added: the job runs
# this family on the model cast to float32 (`ckptstudy.measure.precision`), whatever dtype it was loaded in.
COMPUTE_DTYPE = "float32"
# Scalars on a bfloat16/float16 load within this of float32 (only the weights' rounding differs: the family computes
# in float32; measured <= 0.04 of it, README "Precision"). induction_layer, an argmax over layers, is not checked.
TOLERANCE = Tolerance(rtol=0.05, atol=0.02, exclude=("perturb/induction_layer",))
_CHECK = (
    "a method check (the perturbation regime), not a finding: a fit over eps of the response averaged over "
    "n_prompts long_text windows and the random directions, too few prompts to resample"
)
# The smallest excess that counts as induction: "present" = the excess's interval lies above it (a 1.5x larger
# response where an induction head writes than on the control; random init gives 1.00)
MIN_EFFECT = {"perturb/induction_excess_max": 1.5, "perturb/induction_ratio_max_excess": 1.5}
PROFILE_OFFSETS = (-2, -1, 0, 1, 2)
RESPONSE_COPIES = 5  # values per token and d beside a layer: the perturbed group, h' - h, its float64 copy
Positive = Annotated[float, Range(min=0, min_open=True)]  # a parameter > 0
Count = Annotated[int, Range(min=1)]  # a parameter >= 1


def eps_grid(eps_min: float, eps_max: float, n: int) -> torch.Tensor:
    """`n` perturbation strengths log-spaced from eps_min to eps_max: [n] (float64)."""
    return torch.logspace(math.log10(eps_min), math.log10(eps_max), n, dtype=torch.float64)


def unit_directions(draws: int, d: int, seed: int) -> torch.Tensor:
    """`draws` random unit vectors in R^d (Gaussian, normalised), seeded: [draws, d]."""
    u = torch.randn(draws, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return u / u.norm(dim=-1, keepdim=True)


def perturbed_group(
    hidden: torch.Tensor, positions: torch.Tensor, eps: torch.Tensor, directions: torch.Tensor
) -> torch.Tensor:
    """Each prompt's clean residual followed by its perturbed copies: [n, 1 + P*E*D, s, d].

    hidden [n, s, d]; positions [P]; eps [E]; directions [D, d]. Row 0 of each group is clean; row
    1 + (p*E + e)*D + k has eps_e * ||h[j_p]|| * directions_k added at position j_p only.
    """
    d = hidden.shape[-1]
    n_pos, n_eps, n_dir = len(positions), len(eps), len(directions)
    group = hidden[:, None].repeat(1, 1 + n_pos * n_eps * n_dir, 1, 1)
    step = (eps[:, None, None] * directions[None]).reshape(n_eps * n_dir, d)  # [E*D, d]
    for p, j in enumerate(positions.tolist()):
        scale = hidden[:, j].double().norm(dim=-1)  # [n]
        rows = slice(1 + p * n_eps * n_dir, 1 + (p + 1) * n_eps * n_dir)
        group[:, rows, j] += (scale[:, None, None] * step[None]).to(hidden.dtype)
    return group


def relative_response(group_out: torch.Tensor) -> torch.Tensor:
    """||h'_i - h_i|| / ||h_i|| per perturbed row and position: group_out [n, 1 + V, s, d] (row 0
    clean) -> [n, V, s]."""
    clean = group_out[:, :1]
    delta = (group_out[:, 1:] - clean).double().norm(dim=-1)
    return delta / clean.double().norm(dim=-1).clamp(min=1e-30)


def later_mean(response: torch.Tensor, position: int) -> torch.Tensor:
    """Mean response over the positions after `position`: [..., s] -> [...]."""
    return response[..., position + 1 :].mean(-1)


def loglog_slope(eps: torch.Tensor, response: torch.Tensor) -> torch.Tensor:
    """Least-squares slope of log(response) on log(eps): eps [E], response [..., E] -> [...];
    NaN where a response is not positive."""
    x = eps.double().log()
    y = torch.where(response > 0, response.double(), torch.nan).log()
    xc = x - x.mean()
    return ((y - y.mean(-1, keepdim=True)) * xc).sum(-1) / (xc * xc).sum()


def local_slopes(eps: torch.Tensor, response: torch.Tensor) -> torch.Tensor:
    """Slopes of log(response) vs log(eps) between consecutive strengths: [..., E] -> [..., E-1]."""
    y = torch.where(response > 0, response.double(), torch.nan).log()
    return y.diff(dim=-1) / eps.double().log().diff()


def scale_invariance(local: torch.Tensor) -> float:
    """Mean over layers of the population std of the local slopes: local [layers, E-1] -> float;
    0 = every layer's response is a pure power of eps over the range."""
    return float(local.std(dim=-1, correction=0).mean())


def linear_range_max_eps(eps: torch.Tensor, local: torch.Tensor, tolerance: float) -> tuple[float, bool]:
    """The largest eps_t such that every local slope below it (intervals t' < t) is within `tolerance` of 1
    in every layer, and whether it is censored (every interval of the grid is linear: eps_t = the grid's end,
    a lower bound); local [layers, E-1]. NaN when the first interval already fails."""
    ok = ((local - 1).abs() <= tolerance).all(dim=0)
    if not bool(ok[0]):
        return math.nan, False
    failing = (~ok).nonzero()
    t = int(failing[0]) if len(failing) else len(ok)
    return float(eps[t]), not len(failing)


def perturbed_positions(repeat_length: int, seq_len: int, n: int) -> torch.Tensor:
    """Up to `n` first-copy positions j, evenly spaced over 2..min(R, seq_len - R), whose induction
    target j + R - 1 is a second-copy position inside the (clipped) sequence: [J]."""
    high = min(repeat_length, seq_len - repeat_length)
    if high < 2:
        raise ValueError(f"random_repeat of {seq_len} tokens with R={repeat_length}: no position to perturb")
    return torch.linspace(2, high, n).round().long().unique()


def control_probe(repeat_ids: torch.Tensor, repeat_length: int, seed: int) -> torch.Tensor:
    """`random_repeat` rows [n, s] with the second copy (positions > R) replaced by fresh uniform random
    ids in the range of the first copies' ids (seeded): same prefix and positions, nothing repeated."""
    r = repeat_length
    first = repeat_ids[:, 1 : r + 1]
    low, high = int(first.min()), int(first.max()) + 1
    out = repeat_ids.clone()
    gen = torch.Generator().manual_seed(seed)
    out[:, r + 1 :] = torch.randint(low, high, out[:, r + 1 :].shape, generator=gen)
    return out


def _second_copy_masks(positions: torch.Tensor, repeat_length: int, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Target one-hot [J, s] at j + R - 1 and the other second-copy positions [J, s]."""
    r = repeat_length
    idx = torch.arange(seq_len)
    second = (idx >= r + 1) & (idx <= 2 * r)
    target = idx[None, :] == (positions[:, None] + r - 1)
    return target, second[None, :] & ~target


def induction_rows(response: torch.Tensor, positions: torch.Tensor, repeat_length: int):
    """Per prompt, the parts of induction_ratio_m: the mean response at j + R - 1 and the mean at the other
    second-copy positions, each over draws and perturbed positions: response [n, J, D, layers, s] for the
    perturbed positions `positions` [J] -> ([n, layers], [n, layers]); induction_ratio_m = the ratio of their
    sums over prompts (a layer with no response at the other positions has none)."""
    target, other = _second_copy_masks(positions, repeat_length, response.shape[-1])
    t = target[None, :, None, None, :].double()
    o = other[None, :, None, None, :].double()
    t_rows = (response * t).sum(dim=(1, 2, 4)) / t.sum() / response.shape[2]
    o_rows = (response * o).sum(dim=(1, 2, 4)) / o.sum() / response.shape[2]
    return t_rows, o_rows


def target_rows(response: torch.Tensor, positions: torch.Tensor, repeat_length: int) -> torch.Tensor:
    """Per prompt, the mean response at j + R - 1 over draws and perturbed positions: response
    [n, J, D, layers, s] for `positions` [J] -> [n, layers]."""
    picked = response[:, torch.arange(len(positions)), :, :, positions + repeat_length - 1]  # [J, n, D, layers]
    return picked.mean(dim=(0, 2))


def induction_profile(response: torch.Tensor, positions: torch.Tensor, repeat_length: int) -> torch.Tensor:
    """Mean response at i = j + R - 1 + o for o in PROFILE_OFFSETS, over the mean response at the other
    second-copy positions (induction_ratio's baseline): [layers, len(PROFILE_OFFSETS)] (NaN where no such
    position exists)."""
    s = response.shape[-1]
    _, other = _second_copy_masks(positions, repeat_length, s)
    o = other[None, :, None, None, :].double()
    base = (response * o).sum(dim=(0, 1, 2, 4)) / o.sum() / (response.shape[0] * response.shape[2])
    out = torch.full((response.shape[3], len(PROFILE_OFFSETS)), torch.nan, dtype=torch.float64)
    for c, off in enumerate(PROFILE_OFFSETS):
        where = positions + repeat_length - 1 + off
        valid = (where >= 0) & (where < s)
        if valid.any():
            picked = response[:, valid, :, :, :][..., where[valid]]  # [n, J', D, layers, J']
            diag = picked.diagonal(dim1=1, dim2=4)  # [n, D, layers, J']
            out[:, c] = diag.mean(dim=(0, 1, 3)) / base
    return out


@torch.no_grad()
def group_responses(
    model,
    hidden: torch.Tensor,
    kwargs: dict,
    layer: int,
    positions: torch.Tensor,
    eps: torch.Tensor,
    directions: torch.Tensor,
    max_rows: int,
) -> torch.Tensor:
    """Relative responses of every perturbed copy at every later layer output: [n, V, layers - layer, s].

    The clean residual entering `layer` (hidden [n, s, d]) is reused; groups (clean + V perturbed
    copies, see `perturbed_group`) run in chunks of whole groups, about `max_rows` rows per forward.
    """
    n, s, d = hidden.shape
    variants = len(positions) * len(eps) * len(directions)
    per_chunk = max(1, max_rows // (1 + variants))
    out = []
    for start in range(0, n, per_chunk):
        part = hidden[start : start + per_chunk]
        group = perturbed_group(part, positions, eps, directions.to(hidden.dtype))
        g = group.shape[0]
        layers: list[torch.Tensor] = []

        def keep(_point, output, g=g, layers=layers):
            layers.append(relative_response(output.view(g, 1 + variants, s, d)).cpu())

        run_layers(model, group.view(g * (1 + variants), s, d), layer, kwargs, keep)
        out.append(torch.stack(layers, dim=2))
    return torch.cat(out)


def _check(name: str, value, ok: bool, valid: str) -> None:
    if not ok:
        raise ValueError(f"metrics.perturb.{name}={value} is not valid; {valid}")


def check(*, layer: int, eps_min: float, eps_max: float, shape: Shape | None, **_params) -> None:
    """Refuse eps_max <= eps_min, and a perturbed layer the model (its yaml's n_layers) does not have."""
    _check("eps_max", eps_max, eps_min < eps_max, f"must be > eps_min={eps_min}")
    if shape is not None:
        valid = f"the perturbed residual point must be in 0..{shape.n_layers - 1}"
        _check("layer", layer, layer < shape.n_layers, valid)


def measure(
    ctx,
    *,
    layer: Annotated[int, Range(min=0)],
    eps_min: Positive,
    eps_max: Positive,
    n_eps: Annotated[int, Range(min=3)],
    draws: Count,
    position: Annotated[int, Range(min=0)],
    n_prompts: Count,
    tolerance: Positive,
    induction_eps: Positive,
    induction_prompts: Count,
    induction_positions: Count,
    induction_draws: Count,
    max_rows: Annotated[int | None, Range(min=1)],
) -> FamilyResult:
    """The method checks (response slopes over eps on `long_text`) and the induction signature on
    `random_repeat` against its control probe (module docstring)."""
    n_layers = model_parts(ctx.model).n_layers
    _check("layer", layer, 0 <= layer < n_layers, f"the perturbed residual point must be in 0..{n_layers - 1}")
    text = ctx.probes.long_text[:n_prompts, : ctx.context_length]
    if text.shape[1] < 3:
        raise ValueError(f"probes.long_text has {text.shape[1]} tokens; metrics.perturb needs >= 3")
    result = FamilyResult()
    d = ctx.model.config.hidden_size
    eps = eps_grid(eps_min, eps_max, n_eps)
    j = min(position, text.shape[1] - 2)
    directions = unit_directions(draws, d, ctx.seed)
    clean, perturbed = response_passes(
        "long_text", len(text), text.shape[1], 1 + n_eps * draws, layer, ctx.shape, (ctx.batch_size, max_rows)
    )
    curve = response_curve(ctx, text, layer, torch.tensor([j]), eps, directions, ctx.rows(clean), ctx.rows(perturbed))
    report_checks(result, layer, eps, curve, tolerance)

    repeat = ctx.probes.random_repeat[:induction_prompts, : ctx.context_length]
    r = int(ctx.probes.repeat_length)
    positions = perturbed_positions(r, repeat.shape[1], induction_positions)
    probes = {"repeat": repeat, "control": control_probe(repeat, r, ctx.seed)}
    strength = torch.tensor([induction_eps], dtype=torch.float64)
    directions = unit_directions(induction_draws, d, ctx.seed)
    group = 1 + len(positions) * induction_draws
    clean, perturbed = response_passes(
        "random_repeat", len(repeat), repeat.shape[1], group, layer, ctx.shape, (ctx.batch_size, max_rows)
    )
    batch, rows = ctx.rows(clean), ctx.rows(perturbed)
    responses = {
        name: response_curve(ctx, ids, layer, positions, strength, directions, batch, rows, per_position=True)
        for name, ids in probes.items()
    }
    report_induction(result, layer, responses, positions, r)
    return result


def response_curve(ctx, ids, layer, positions, eps, directions, batch, max_rows, per_position: bool = False):
    """Responses of `ids` [n, s] perturbed at `positions` (the input of `layer`) with strengths `eps` and
    `directions` (the clean residual `batch` rows per call, perturbed groups about `max_rows` rows per call):
    per_position -> [n, J, D, layers, s] (one strength); else the mean later-position response over prompts and
    draws R[layer, E] (one position)."""
    hidden, kwargs = layer_inputs(ctx.model, ids, layer, batch)
    resp = group_responses(ctx.model, hidden, kwargs, layer, positions, eps, directions, max_rows)
    if per_position:
        return resp.view(resp.shape[0], len(positions), len(directions), *resp.shape[2:])
    curve = later_mean(resp, int(positions[0])).view(resp.shape[0], len(eps), len(directions), -1)
    return curve.mean(dim=(0, 2)).T


def report_checks(result: FamilyResult, layer: int, eps: torch.Tensor, curve: torch.Tensor, tolerance: float) -> None:
    """The method checks from the response curve R [layers, E] (keys `perturb/check_*`)."""
    slopes, local = loglog_slope(eps, curve), local_slopes(eps, curve)
    silent = "the perturbation does not reach later positions at some strength (response 0)"
    for row in range(curve.shape[0]):
        m = layer + row
        result.value(f"perturb/check_slope_l{m}", float(slopes[row]), _CHECK, silent)
        result.value(f"perturb/check_slope_spread_l{m}", float(local[row].std(correction=0)), _CHECK, silent)
    result.value("perturb/check_slope_small_eps", float(local[:, 0].mean()), _CHECK, silent)
    result.value("perturb/check_scale_invariance", scale_invariance(local), _CHECK, silent)
    linear, censored = linear_range_max_eps(eps, local, tolerance)
    off = f"the local slope is off 1 by more than tolerance={tolerance} already between the two smallest eps"
    reason = silent if not torch.isfinite(local).all() else off
    grid = _CHECK + "; a grid point" + ("; censored: linear over the whole grid, a lower bound" if censored else "")
    result.value("perturb/check_linear_range_max_eps", linear, grid, reason)
    flag = "a method check: 1 when every local slope of the grid is linear (check_linear_range_max_eps = eps_max)"
    result.value("perturb/check_linear_range_censored", float(censored), flag)
    result.raw.update(
        {"perturb/eps": eps.numpy(), "perturb/response": curve.numpy(), "perturb/local_slopes": local.numpy()}
    )


def report_induction(result: FamilyResult, layer: int, responses: dict, positions: torch.Tensor, r: int) -> None:
    """induction_excess per layer and its maximum, the induction ratio with its control-probe null, and the
    raw profiles; responses {"repeat", "control"}: [n, J, D, layers, s]."""
    target = {name: target_rows(resp, positions, r) for name, resp in responses.items()}  # [n, layers]
    unreached = "no response at j + R - 1 on the control probe in this layer"
    for c in range(target["repeat"].shape[1]):
        excess = Sample(
            "ratio_of_sums",
            target["repeat"][:, c].numpy(),
            prompts="random_repeat",
            weights=target["control"][:, c].numpy(),
        )
        result.stat(f"perturb/induction_excess_l{layer + c}", excess, unreached)
    excess_max = Sample(
        "ratio_of_sums",
        target["repeat"].numpy(),
        prompts="random_repeat",
        weights=target["control"].numpy(),
        reduce="max",
    )
    result.stat("perturb/induction_excess_max", excess_max, f"{unreached} (every layer)")
    ratios = columns(excess_max)
    finite = np.isfinite(ratios)
    best = layer + int(np.where(finite, ratios, -np.inf).argmax()) if finite.any() else math.nan
    argmax = "a layer index (the argmax of the per-layer induction_excess), not a statistic over prompts"
    result.value("perturb/induction_layer", best, argmax, f"{unreached} (every layer)")
    quiet = "no response at the other second-copy positions (every layer)"
    ratio = {}
    for name, resp in responses.items():
        t_rows, o_rows = induction_rows(resp, positions, r)
        ratio[name] = Sample(
            "ratio_of_sums", t_rows.numpy(), prompts="random_repeat", weights=o_rows.numpy(), reduce="max"
        )
    result.stat("perturb/induction_ratio_max", ratio["repeat"], quiet)
    result.stat("perturb/induction_ratio_max_null", ratio["control"], quiet)
    result.stat(
        "perturb/induction_ratio_max_excess",
        Sample("ratio", of=("perturb/induction_ratio_max", "perturb/induction_ratio_max_null")),
        quiet,
    )
    result.raw.update(
        {
            "perturb/induction_response": target["repeat"].mean(0).numpy(),
            "perturb/induction_response_null": target["control"].mean(0).numpy(),
            "perturb/induction_ratio": columns(ratio["repeat"]),
            "perturb/induction_ratio_null": columns(ratio["control"]),
            "perturb/induction_profile": induction_profile(responses["repeat"], positions, r).numpy(),
            "perturb/induction_positions": np.asarray(positions),
        }
    )


def response_passes(
    probe: str, rows: int, seq: int, group: int, layer: int, shape: Shape, caps: tuple[int | None, int | None]
) -> tuple[Pass, Pass]:
    """The clean residual entering `layer` (the base model, no unembedding) and the perturbed copies through the
    layers from it, in whole groups of `group` rows (1 clean + its perturbed copies); `caps`: the configured
    batch_size and max_rows."""
    L, (batch, cap) = shape.n_layers, caps
    clean = Pass(f"clean residual of {probe}", rows, seq, batch, L)
    perturbed = Pass(
        f"perturbed copies of {probe}",
        rows * group,
        seq,
        cap,
        L - layer,
        limit="metrics.perturb.max_rows",
        group=group,
        extra=RESPONSE_COPIES * shape.d_model,
    )
    return clean, perturbed


def passes(sizes: ProbeSizes, shape: Shape, **params) -> list[Pass]:
    """The clean residual and perturbed copies of long_text, and the induction signature (probe + control)."""
    layer, caps = params["layer"], (sizes.batch, params["max_rows"])
    n = min(params["n_prompts"], sizes.lt_n)
    ind_n = min(params["induction_prompts"], sizes.rr_n)
    ind_group = 1 + params["induction_positions"] * params["induction_draws"]
    text = response_passes("long_text", n, sizes.lt_len, 1 + params["n_eps"] * params["draws"], layer, shape, caps)
    induction = response_passes("random_repeat", ind_n, sizes.rr_len, ind_group, layer, shape, caps)
    both = [replace(p, rows=2 * p.rows, what=p.what + " (probe + control)") for p in induction]
    return [*text, *both]

"""Perturbation response (`perturb/`), after Luick, "Universal Response and Emergence of Induction in LLMs".

A perturbation of strength eps at residual point l (the input of layer l; l = 0 is the embedding
output) and position j adds eps * ||h_lj|| * u to h_lj, u a random unit vector (`draws` seeded
draws). The response at a later position i > j and the output of layer m >= l is
    r_mi = ||h'_mi - h_mi|| / ||h_mi||
(h' perturbed, h clean; the clean row runs in the same batch as its perturbed copies, so batch-shape
rounding cancels). Per layer m:
- R_m(eps) = mean of r_mi over prompts, draws and positions i > j (probe: `long_text`, clipped);
- slope_m = least-squares slope of log R_m against log eps over the whole eps range;
- local slopes s_mt = (log R_m(eps_t+1) - log R_m(eps_t)) / (log eps_t+1 - log eps_t), t = 0..T-2;
  spread_m = population std of s_mt over t;
- scale_invariance = mean over the measured layers of spread_m (0 = the response is a pure power of
  eps over the whole range, in every layer);
- linear_range_max_eps = the largest eps_t such that |s_mt' - 1| <= tolerance for every t' < t and
  every layer (NaN when already the first interval is not linear).

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
repeat). Hence also a distance-matched control:
    induction_control_m = mean r_m at j + R - 1 on `random_repeat` / the same on the control probe
(the same BOS + first copy followed by fresh random tokens, seeded, from the probe's token range
instead of the repeat: same positions, distances and perturbed tokens, nothing to copy); ~1 without
induction whatever the positional pattern.

Bootstrap samples (`ckptstudy.stats.bootstrap`) over the `random_repeat` prompts, per layer:
induction_ratio_l{m} and induction_control_l{m} are ratios of sums over prompts (ratio_of_sums:
per prompt, its mean response at the target / at the baseline, or on the repeat / on its control row);
their maxima over layers are the maxima of those per-layer ratios of sums (`reduce="max"`). The other scalars
say why they have none where they are reported (`FamilyResult.value`).
"""

from __future__ import annotations

import math
from typing import Annotated

import numpy as np
import torch

from ckptstudy.measure.capture import model_parts
from ckptstudy.measure.cost import Pass, ProbeSizes, Shape
from ckptstudy.measure.residual import layer_inputs, run_layers
from ckptstudy.metrics import FamilyResult
from ckptstudy.params import Range
from ckptstudy.stats.bootstrap import Sample, columns

DEFINITION_VERSION = 2  # 2: bootstrap samples for the maxima over layers
_FEW_PROMPTS = (
    "a fit over eps of the response averaged over n_prompts long_text windows (2 by default) and the random "
    "directions: too few prompts to resample"
)
PROFILE_OFFSETS = (-2, -1, 0, 1, 2)


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


def linear_range_max_eps(eps: torch.Tensor, local: torch.Tensor, tolerance: float) -> float:
    """The largest eps_t such that every local slope below it (intervals t' < t) is within
    `tolerance` of 1 in every layer; local [layers, E-1]. NaN when the first interval already fails."""
    ok = ((local - 1).abs() <= tolerance).all(dim=0)
    if not bool(ok[0]):
        return math.nan
    failing = (~ok).nonzero()
    t = int(failing[0]) if len(failing) else len(ok)
    return float(eps[t])


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


def target_response(response: torch.Tensor, positions: torch.Tensor, repeat_length: int) -> torch.Tensor:
    """Mean response at j + R - 1 over prompts, draws and perturbed positions: response
    [n, J, D, layers, s] for `positions` [J] -> [layers]."""
    picked = response[:, torch.arange(len(positions)), :, :, positions + repeat_length - 1]  # [J, n, D, layers]
    return picked.mean(dim=(0, 1, 2))


def _second_copy_masks(positions: torch.Tensor, repeat_length: int, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Target one-hot [J, s] at j + R - 1 and the other second-copy positions [J, s]."""
    r = repeat_length
    idx = torch.arange(seq_len)
    second = (idx >= r + 1) & (idx <= 2 * r)
    target = idx[None, :] == (positions[:, None] + r - 1)
    return target, second[None, :] & ~target


def induction_ratio(response: torch.Tensor, positions: torch.Tensor, repeat_length: int) -> torch.Tensor:
    """Pooled mean response at j + R - 1 over the pooled mean at the other second-copy positions.

    response [n, J, D, layers, s] for perturbed positions `positions` [J] -> [layers]; NaN for a
    layer with no response at the other second-copy positions.
    """
    target, other = _second_copy_masks(positions, repeat_length, response.shape[-1])
    t = target[None, :, None, None, :].double()
    o = other[None, :, None, None, :].double()
    t_mean = (response * t).sum(dim=(0, 1, 2, 4)) / t.sum() / (response.shape[0] * response.shape[2])
    o_mean = (response * o).sum(dim=(0, 1, 2, 4)) / o.sum() / (response.shape[0] * response.shape[2])
    return torch.where(o_mean > 0, t_mean / o_mean.clamp(min=1e-300), torch.nan)


def induction_rows(response: torch.Tensor, positions: torch.Tensor, repeat_length: int):
    """Per prompt, the parts of `induction_ratio`: the mean response at j + R - 1 and the mean at the other
    second-copy positions, each over draws and perturbed positions: ([n, layers], [n, layers]); their
    sums over prompts have the ratio `induction_ratio`."""
    target, other = _second_copy_masks(positions, repeat_length, response.shape[-1])
    t = target[None, :, None, None, :].double()
    o = other[None, :, None, None, :].double()
    t_rows = (response * t).sum(dim=(1, 2, 4)) / t.sum() / response.shape[2]
    o_rows = (response * o).sum(dim=(1, 2, 4)) / o.sum() / response.shape[2]
    return t_rows, o_rows


def target_rows(response: torch.Tensor, positions: torch.Tensor, repeat_length: int) -> torch.Tensor:
    """Per prompt, `target_response`: the mean response at j + R - 1 over draws and perturbed positions,
    [n, J, D, layers, s] -> [n, layers]."""
    picked = response[:, torch.arange(len(positions)), :, :, positions + repeat_length - 1]  # [J, n, D, layers]
    return picked.mean(dim=(0, 2))


def induction_profile(response: torch.Tensor, positions: torch.Tensor, repeat_length: int) -> torch.Tensor:
    """Mean response at i = j + R - 1 + o for o in PROFILE_OFFSETS, over the same baseline as
    `induction_ratio`: [layers, len(PROFILE_OFFSETS)] (NaN where no such position exists)."""
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
    eps_min: Annotated[float, Range(min=0, min_open=True)],
    eps_max: Annotated[float, Range(min=0, min_open=True)],
    n_eps: Annotated[int, Range(min=3)],
    draws: Annotated[int, Range(min=1)],
    position: Annotated[int, Range(min=0)],
    n_prompts: Annotated[int, Range(min=1)],
    tolerance: Annotated[float, Range(min=0, min_open=True)],
    induction_eps: Annotated[float, Range(min=0, min_open=True)],
    induction_prompts: Annotated[int, Range(min=1)],
    induction_positions: Annotated[int, Range(min=1)],
    induction_draws: Annotated[int, Range(min=1)],
    max_rows: Annotated[int, Range(min=1)],
) -> FamilyResult:
    """Response slopes over eps on `long_text` and the induction signature on `random_repeat` (module docstring)."""
    n_layers = model_parts(ctx.model).n_layers
    _check("layer", layer, 0 <= layer < n_layers, f"the perturbed residual point must be in 0..{n_layers - 1}")
    text = ctx.probes.long_text[:n_prompts, : ctx.context_length]
    if text.shape[1] < 3:
        raise ValueError(f"probes.long_text has {text.shape[1]} tokens; metrics.perturb needs >= 3")
    repeat = ctx.probes.random_repeat[:induction_prompts, : ctx.context_length]
    r = int(ctx.probes.repeat_length)
    positions = perturbed_positions(r, repeat.shape[1], induction_positions)

    result = FamilyResult()
    eps = eps_grid(eps_min, eps_max, n_eps)
    directions = unit_directions(draws, ctx.model.config.hidden_size, ctx.seed)
    j = min(position, text.shape[1] - 2)
    hidden, kwargs = layer_inputs(ctx.model, text, layer, ctx.batch_size)
    resp = group_responses(ctx.model, hidden, kwargs, layer, torch.tensor([j]), eps, directions, max_rows)
    # [n, E*D, layers, s] -> R[layer, E]
    curve = later_mean(resp, j).view(resp.shape[0], n_eps, draws, -1).mean(dim=(0, 2)).T
    slopes, local = loglog_slope(eps, curve), local_slopes(eps, curve)
    silent = "the perturbation does not reach later positions at some strength (response 0)"
    for m in range(layer, n_layers):
        row = m - layer
        result.value(f"perturb/slope_l{m}", float(slopes[row]), _FEW_PROMPTS, silent)
        result.value(f"perturb/slope_spread_l{m}", float(local[row].std(correction=0)), _FEW_PROMPTS, silent)
    result.value("perturb/slope_small_eps", float(local[:, 0].mean()), _FEW_PROMPTS, silent)
    result.value("perturb/scale_invariance", scale_invariance(local), _FEW_PROMPTS, silent)
    linear = linear_range_max_eps(eps, local, tolerance)
    off = f"the local slope is off 1 by more than tolerance={tolerance} already between the two smallest eps"
    grid = _FEW_PROMPTS + "; and a grid point, not a statistic"
    result.value("perturb/linear_range_max_eps", linear, grid, silent if not torch.isfinite(local).all() else off)
    result.raw.update(
        {"perturb/eps": eps.numpy(), "perturb/response": curve.numpy(), "perturb/local_slopes": local.numpy()}
    )

    eps_ind = torch.tensor([induction_eps], dtype=torch.float64)
    dirs_ind = unit_directions(induction_draws, ctx.model.config.hidden_size, ctx.seed)
    signature = {}
    for name, ids in (("repeat", repeat), ("control", control_probe(repeat, r, ctx.seed))):
        hidden, kwargs = layer_inputs(ctx.model, ids, layer, ctx.batch_size)
        out = group_responses(ctx.model, hidden, kwargs, layer, positions, eps_ind, dirs_ind, max_rows)
        signature[name] = out.view(out.shape[0], len(positions), induction_draws, *out.shape[2:])  # [n,J,D,L,s]
    resp = signature["repeat"]
    quiet = "no response at the other second-copy positions in this layer"
    unreached = "no response at j + R - 1 on the control probe in this layer"
    t_rows, o_rows = induction_rows(resp, positions, r)
    on_repeat, on_control = target_rows(resp, positions, r), target_rows(signature["control"], positions, r)
    for m in range(layer, n_layers):
        c = m - layer
        ratio_parts = Sample(
            "ratio_of_sums", t_rows[:, c].numpy(), prompts="random_repeat", weights=o_rows[:, c].numpy()
        )
        result.stat(f"perturb/induction_ratio_l{m}", ratio_parts, quiet)
        control_parts = Sample(
            "ratio_of_sums", on_repeat[:, c].numpy(), prompts="random_repeat", weights=on_control[:, c].numpy()
        )
        result.stat(f"perturb/induction_control_l{m}", control_parts, unreached)
    # per-column denominators [n, layers]: the max over layers of the per-layer ratios of sums
    ratio_max = Sample("ratio_of_sums", t_rows.numpy(), prompts="random_repeat", weights=o_rows.numpy(), reduce="max")
    result.stat("perturb/induction_ratio_max", ratio_max, f"{quiet} (every layer)")
    ratios = columns(ratio_max)  # the per-layer ratios of sums
    finite = np.isfinite(ratios)
    argmax = "a layer index (the argmax of the per-layer ratios), not a statistic over prompts"
    best = layer + int(np.where(finite, ratios, -np.inf).argmax()) if finite.any() else math.nan
    result.value("perturb/induction_layer", best, argmax, f"{quiet} (every layer)")
    control_max = Sample(
        "ratio_of_sums", on_repeat.numpy(), prompts="random_repeat", weights=on_control.numpy(), reduce="max"
    )
    result.stat("perturb/induction_control_max", control_max, f"{unreached} (every layer)")
    result.raw["perturb/induction_profile"] = induction_profile(resp, positions, r).numpy()
    result.raw["perturb/induction_positions"] = np.asarray(positions)
    return result


def passes(sizes: ProbeSizes, shape: Shape, **params) -> list[Pass]:
    """The clean residual and perturbed copies of long_text, and the induction signature (probe + control)."""
    L, layer = shape.n_layers, params["layer"]
    n = min(params["n_prompts"], sizes.lt_n)
    group = 1 + params["n_eps"] * params["draws"]
    ind_n = min(params["induction_prompts"], sizes.rr_n)
    ind_group = 1 + params["induction_positions"] * params["induction_draws"]
    per_call = lambda g: max(1, params["max_rows"] // g) * g  # noqa: E731 - whole groups per call
    return [
        Pass("clean residual of long_text", n, sizes.lt_len, sizes.batch, max(layer, 1)),
        Pass("perturbed copies of long_text", n * group, sizes.lt_len, per_call(group), L - layer),
        Pass(
            "induction signature (probe + control)", 2 * ind_n * ind_group, sizes.rr_len, per_call(ind_group), L - layer
        ),
    ]

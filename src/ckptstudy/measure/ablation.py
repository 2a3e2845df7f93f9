"""Per-head ablation effects on predicting expected tokens: exact (batched, reusing the clean residual) and
attribution patching (one forward + backward); `ckptstudy.reference.naive_effects` is the reference (one full
forward per head). Only the target positions are unembedded. Callers choose the rows per call (the job's memory
budget, `ckptstudy.measure.budget`): `max_rows` ablated (or attributed) rows per forward, and for exact ablation
`group_rows` prompts per clean pass, whose residuals are kept while their ablated variants run.

The quantity is the pooled mean, over target positions, of a score of the expected next token:
`logprob` = log p(expected) or `contrast` = log p(expected) - log p(best other token). A head's effect
is clean score minus ablated score (positive = the head helps). Ablation replaces the head's output
(the slice of the attention output projection's input) by 0 (`zero`) or by its mean over the probe's
positions (`mean`).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch

from ckptstudy.measure.capture import hooks
from ckptstudy.measure.layers import LayerCall, layer_input
from ckptstudy.measure.readout import log_probs, output_logits, pick, unembed
from ckptstudy.model.arch import model_parts

SCORES = ("logprob", "contrast")
ABLATIONS = ("zero", "mean")


@dataclass
class Targets:
    """Token ids [n, seq] and the query positions [n, seq] (bool) whose next token is the expected one."""

    ids: torch.Tensor
    mask: torch.Tensor

    def __post_init__(self):
        if self.mask[:, -1].any():
            raise ValueError("the last position has no next token to predict")
        if not self.mask.any():
            raise ValueError("no target position to measure")

    @property
    def expected(self) -> torch.Tensor:
        """The expected token at each target position: the next token in `ids`: [n_targets]."""
        return self.ids[:, 1:][self.mask[:, :-1]]


def token_scores(logits: torch.Tensor, expected: torch.Tensor, score: str) -> torch.Tensor:
    """Per-position score of the expected token from logits [T, vocab]: [T]."""
    logp = log_probs(logits)
    chosen = pick(logp, expected)
    if score == "logprob":
        return chosen
    if score == "contrast":
        others = logp.scatter(-1, expected[:, None], float("-inf"))
        return chosen - others.max(-1).values
    raise ValueError(f"score={score!r} is not valid; choose one of {', '.join(SCORES)}")


@dataclass
class CleanRun:
    """What the clean forward leaves for the ablated runs: each layer's input residual and call (`LayerCall`: mask,
    positions, rotary tables), each head's mean output, and the clean score sum."""

    resid: list[torch.Tensor]  # [n, seq, d] input of each layer
    calls: list[LayerCall]  # what each layer was called with besides its input
    head_means: list[torch.Tensor]  # [n_heads * head_dim] per layer
    score_sum: float
    n_targets: int
    score_rows: torch.Tensor  # [n] float64: each prompt's clean score summed over its targets
    target_rows: torch.Tensor  # [n] float64: each prompt's number of targets


@dataclass
class EffectRows:
    """Per-prompt ablation effects: `sums` [n, n_layers, n_heads] (float64) = per prompt, the sum over its
    target positions of clean minus ablated score (NaN for heads not measured); `targets` [n] (float64) =
    its number of target positions. The pooled effect is sums.sum(0) / targets.sum()."""

    sums: torch.Tensor
    targets: torch.Tensor

    @property
    def pooled64(self) -> torch.Tensor:
        """The effect pooled over every target position of every prompt: [n_layers, n_heads] (float64, the
        per-head vector the bootstrap's `vector` samples pool the same way)."""
        return self.sums.double().sum(0) / self.targets.double().sum()

    @property
    def pooled(self) -> torch.Tensor:
        """`pooled64` in float32 (what `exact_effects` and `attribution_effects` return)."""
        return self.pooled64.float()


@torch.no_grad()
def clean_run(model, targets: Targets, score: str) -> CleanRun:
    """One clean forward that records every layer's input residual and kwargs, and head output means."""
    parts = model_parts(model)
    resid: list = [None] * parts.n_layers
    calls: list = [None] * parts.n_layers
    means: list = [None] * parts.n_layers

    def grab_input(i):
        def hook(_module, args, kwargs):
            resid[i] = layer_input(args, kwargs).detach()
            calls[i] = LayerCall.recorded(args, kwargs)

        return hook

    def grab_heads(i):
        def hook(_module, args):
            means[i] = args[0].detach().reshape(-1, args[0].shape[-1]).mean(0)

        return hook

    handles = [layer.register_forward_pre_hook(grab_input(i), with_kwargs=True) for i, layer in enumerate(parts.layers)]
    handles += [proj.register_forward_pre_hook(grab_heads(i)) for i, proj in enumerate(parts.out_projs)]
    device = next(model.parameters()).device
    mask = targets.mask.to(device)
    with hooks(handles):
        final = model.base_model(input_ids=targets.ids.to(device), use_cache=False).last_hidden_state
    scores = token_scores(output_logits(model, final[mask]), targets.expected.to(device), score)
    n = targets.ids.shape[0]
    rows = mask.nonzero()[:, 0]  # the prompt of each target, in the order of `scores`
    score_rows = torch.zeros(n, dtype=torch.float64).index_add_(0, rows.cpu(), scores.double().cpu())
    target_rows = targets.mask.sum(1).double()
    return CleanRun(resid, calls, means, float(scores.sum()), int(scores.numel()), score_rows, target_rows)


@contextmanager
def ablate_heads(out_proj, head_of_row: torch.Tensor, head_dim: int, replacement: torch.Tensor):
    """Pre-hook on a layer's output projection: row r gets head `head_of_row[r]` replaced (-1 = none)."""
    n_heads = replacement.numel() // head_dim
    # in the model's dtype: a float32 mask would promote a half-precision model's z to float32 (dense then fails)
    keep = torch.ones(len(head_of_row), n_heads, dtype=replacement.dtype, device=replacement.device)
    rows = (head_of_row >= 0).nonzero().squeeze(-1)
    keep[rows, head_of_row[rows]] = 0
    keep = keep.repeat_interleave(head_dim, dim=1)[:, None, :]  # [rows, 1, n_heads * head_dim]

    def hook(_module, args):
        z = args[0]
        return (z * keep + replacement * (1 - keep),)

    handle = out_proj.register_forward_pre_hook(hook)
    with hooks([handle]):
        yield


@torch.no_grad()
def exact_effect_rows(
    model,
    targets: Targets,
    ablation: str = "zero",
    score: str = "logprob",
    heads: list[tuple[int, int]] | None = None,
    max_rows: int = 64,
    group_rows: int | None = None,
) -> EffectRows:
    """Exact per-prompt effects (`EffectRows`; NaN for heads not in `heads`, when given).

    Prompts run in groups of `group_rows` (None: all at once): one clean pass per group keeps the residual
    entering every layer; then for each layer the ablated variants of all its heads run as one batch (in chunks
    of `max_rows` rows) through the remaining layers from that residual, and only target positions are
    unembedded. `mean` ablation replaces a head by its mean output over every prompt, whatever the groups.
    """
    if ablation not in ABLATIONS:
        raise ValueError(f"ablation={ablation!r} is not valid; choose one of {', '.join(ABLATIONS)}")
    parts = model_parts(model)
    n = targets.ids.shape[0]
    group = n if group_rows is None else max(1, int(group_rows))
    means = head_output_means(model, targets.ids, group) if ablation == "mean" and group < n else None
    wanted = set(heads) if heads is not None else None
    sums = torch.full((n, parts.n_layers, parts.n_heads), float("nan"), dtype=torch.float64)
    for start in range(0, n, group):
        rows = slice(start, start + group)
        part = targets.mask[rows]
        if not part.any():  # no target in these prompts: every effect sum is 0
            for layer, h in wanted or [(i, j) for i in range(parts.n_layers) for j in range(parts.n_heads)]:
                sums[rows, layer, h] = 0.0
            continue
        sums[rows] = _exact_group(model, Targets(targets.ids[rows], part), ablation, score, wanted, max_rows, means)
    return EffectRows(sums, targets.mask.sum(1).double())


def _exact_group(model, targets: Targets, ablation: str, score: str, wanted, max_rows: int, means) -> torch.Tensor:
    """`exact_effect_rows`' sums [n, layers, heads] for the prompts of one clean pass (`means`: the mean
    ablation's replacement per layer when it is taken over more prompts than these)."""
    parts = model_parts(model)
    device = next(model.parameters()).device
    clean = clean_run(model, targets, score)
    n = targets.ids.shape[0]
    mask, expected = targets.mask.to(device), targets.ids[:, 1:].to(device)
    sums = torch.full((n, parts.n_layers, parts.n_heads), float("nan"), dtype=torch.float64)
    for layer in range(parts.n_layers):
        layer_heads = [h for h in range(parts.n_heads) if wanted is None or (layer, h) in wanted]
        if not layer_heads:
            continue
        variants = torch.tensor([(h, i) for h in layer_heads for i in range(n)])  # (head, prompt) per row
        totals = torch.zeros(parts.n_heads * n, dtype=torch.float64)  # ablated score sums, index head * n + prompt
        mean = clean.head_means[layer] if means is None else means[layer].to(device)
        replacement = torch.zeros_like(clean.head_means[layer]) if ablation == "zero" else mean
        for start in range(0, len(variants), max_rows):
            chunk = variants[start : start + max_rows]
            head_of_row, prompt = chunk[:, 0].to(device), chunk[:, 1].to(device)
            hidden = clean.resid[layer][prompt]
            with ablate_heads(parts.out_projs[layer], head_of_row, parts.head_dim, replacement):
                hidden = clean.calls[layer].rows(prompt, n)(parts.layers[layer], hidden)
            for later in range(layer + 1, parts.n_layers):
                hidden = clean.calls[later].rows(prompt, n)(parts.layers[later], hidden)
            row_mask = mask[prompt]
            logits = unembed(model, hidden[row_mask])
            want = expected[prompt][row_mask[:, :-1]]
            scores = token_scores(logits, want, score).double()
            owner = (head_of_row * n + prompt)[:, None].expand_as(row_mask)[row_mask]
            totals.index_add_(0, owner.cpu(), scores.cpu())
        ablated = totals.view(parts.n_heads, n)
        for h in layer_heads:
            sums[:, layer, h] = clean.score_rows - ablated[h]
    return sums


def exact_effects(model, targets: Targets, *options, **named) -> torch.Tensor:
    """Exact pooled per-head effects [n_layers, n_heads]: `exact_effect_rows` (same arguments), pooled."""
    return exact_effect_rows(model, targets, *options, **named).pooled


@torch.no_grad()
def head_output_means(model, ids: torch.Tensor, max_rows: int) -> list[torch.Tensor]:
    """Each layer's head outputs (the output projection's input) averaged over every row and position of
    `ids` [n, seq]: the `mean` ablation's replacement, computed `max_rows` rows at a time."""
    parts = model_parts(model)
    device = next(model.parameters()).device
    sums: list = [0.0] * parts.n_layers

    def add(i):
        def hook(_module, args):
            sums[i] = sums[i] + args[0].detach().double().reshape(-1, args[0].shape[-1]).sum(0)

        return hook

    with hooks([proj.register_forward_pre_hook(add(i)) for i, proj in enumerate(parts.out_projs)]):
        for start in range(0, ids.shape[0], max_rows):
            model.base_model(input_ids=ids[start : start + max_rows].to(device))
    return [(total / ids.numel()).float() for total in sums]


def attribution_effect_rows(
    model, targets: Targets, ablation: str = "zero", score: str = "logprob", max_rows: int | None = None
) -> EffectRows:
    """Attribution patching per prompt: effect_h ~ grad(score) . (z_h - z_ablated), from forward + backward
    passes of the summed score over `max_rows` rows at a time (None: all rows at once). Rows of a batch do
    not interact, so a prompt's row of `EffectRows.sums` is the gradient product of its own targets' score sum,
    whatever the chunking; `mean` ablation replaces a head by its mean over every row (`head_output_means`)."""
    parts = model_parts(model)
    device = next(model.parameters()).device
    n = targets.ids.shape[0]
    step = n if max_rows is None else max(1, int(max_rows))
    means = head_output_means(model, targets.ids, step) if ablation == "mean" else None
    sums = torch.zeros(n, parts.n_layers, parts.n_heads, dtype=torch.float64)
    outputs: list = [None] * parts.n_layers

    def keep(i):
        def hook(_module, args):
            args[0].retain_grad()
            outputs[i] = args[0]

        return hook

    handles = [proj.register_forward_pre_hook(keep(i)) for i, proj in enumerate(parts.out_projs)]
    with hooks(handles):
        for start in range(0, n, step):
            rows = slice(start, start + step)
            if not targets.mask[rows].any():
                continue
            chunk = Targets(targets.ids[rows], targets.mask[rows])
            with torch.enable_grad():
                final = model.base_model(input_ids=chunk.ids.to(device)).last_hidden_state
                logits = output_logits(model, final[chunk.mask.to(device)])
                token_scores(logits, chunk.expected.to(device), score).sum().backward()
            for i, z in enumerate(outputs):
                delta = z.detach() if means is None else z.detach() - means[i].to(device)
                contribution = (z.grad * delta).reshape(*z.shape[:-1], parts.n_heads, parts.head_dim)
                sums[rows, i] = contribution.sum(dim=(1, 3)).double().cpu()
            model.zero_grad(set_to_none=True)
            outputs[:] = [None] * parts.n_layers
    return EffectRows(sums, targets.mask.sum(1).double())


def attribution_effects(model, targets: Targets, *options, **named) -> torch.Tensor:
    """Attribution patching pooled over every target [n_layers, n_heads]: `attribution_effect_rows` (same
    arguments), pooled."""
    return attribution_effect_rows(model, targets, *options, **named).pooled

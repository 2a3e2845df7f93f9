"""Batched greedy generation with the KV cache, shared by every family that needs continuations.

Prompts of different lengths are left-padded; the attention mask hides the padding and
position ids count only real tokens, so each row generates exactly what it would alone.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch

from ckptstudy.measure.cycles import LoopRule
from ckptstudy.progress import progress_bar


@dataclass
class Generation:
    """Greedy continuations: ids[n, G] and the next-token entropy (nats) each token was chosen from."""

    ids: torch.Tensor
    entropy: torch.Tensor


def left_pad(prompts: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded ids [n, max_len] and the attention mask (1 = real token)."""
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        if prompt:
            ids[row, width - len(prompt) :] = torch.as_tensor(prompt)
            mask[row, width - len(prompt) :] = 1
    return ids, mask


def entropy_of_logits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy in nats of softmax(logits) over the last axis."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp).sum(-1)


def _cache_keyword(model) -> str:
    """The forward keyword that takes the KV cache: `cache` (transformers >= 5.24) or `past_key_values`
    (older releases; deprecated in 5.24 and removed in 5.40)."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def _returned_cache(output):
    """The KV cache a forward returned, under either name."""
    return output["cache"] if "cache" in output else output["past_key_values"]


@torch.no_grad()
def greedy_generate(
    model,
    prompts: list[list[int]] | torch.Tensor,
    new_tokens: int,
    pad_id: int = 0,
    batch_size: int = 16,
    desc: str | None = "greedy generation",
) -> Generation:
    """Greedily continue every prompt by `new_tokens` tokens, `batch_size` prompts at a time."""
    if isinstance(prompts, torch.Tensor):
        prompts = prompts.tolist()
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("greedy_generate needs at least one prompt and no empty prompt")
    device = next(model.parameters()).device
    ids_out, ent_out = [], []
    bar = progress_bar(total=len(prompts) * new_tokens, desc=desc, unit="tok", disable=desc is None, leave=False)
    for start in range(0, len(prompts), batch_size):
        ids, mask = left_pad(prompts[start : start + batch_size], pad_id)
        ids, mask = ids.to(device), mask.to(device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        out = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True)
        cache_kwarg = _cache_keyword(model)
        chosen, entropies = [], []
        for i in range(new_tokens):
            logits = out.logits[:, -1]
            token = logits.argmax(-1)
            chosen.append(token)
            entropies.append(entropy_of_logits(logits))
            bar.update(len(token))
            if i == new_tokens - 1:
                break
            mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=1)
            positions = positions[:, -1:] + 1
            out = model(
                input_ids=token[:, None],
                attention_mask=mask,
                position_ids=positions,
                use_cache=True,
                **{cache_kwarg: _returned_cache(out)},
            )
        ids_out.append(torch.stack(chosen, dim=1).cpu())
        ent_out.append(torch.stack(entropies, dim=1).cpu())
    bar.close()
    return Generation(ids=torch.cat(ids_out), entropy=torch.cat(ent_out))


@dataclass
class NaturalLoops:
    """Greedy continuations of the `natural` prompts and their loops under one `LoopRule`.

    Computed once per checkpoint and read by every family that needs natural loops (rep/, icl/, lowinfo/).
    period/copies/onset are [n] (onset indexes the generation; period 0 and onset -1 = no loop).
    """

    prompts: torch.Tensor  # [n, P]
    generation: Generation  # ids [n, G], entropy [n, G]
    period: torch.Tensor
    copies: torch.Tensor
    onset: torch.Tensor
    rule: LoopRule

    @property
    def looping(self) -> torch.Tensor:
        """Bool [n]: the continuation ends in a loop."""
        return self.period > 0

    @property
    def degenerate(self) -> torch.Tensor:
        """Bool [n]: the loop's cycle holds a single distinct token (collapse, not a loop of text)."""
        ids = self.generation.ids
        out = torch.zeros_like(self.looping)
        for row in self.looping.nonzero().flatten().tolist():
            start = int(self.onset[row])
            cycle = ids[row, start : start + int(self.period[row])]
            out[row] = bool((cycle == cycle[0]).all())
        return out

    def sequences(self) -> torch.Tensor:
        """Prompt + generation of the looping rows: [n_looping, P + G]."""
        return torch.cat([self.prompts, self.generation.ids], dim=1)[self.looping]

    def per_prompt(self, rows: torch.Tensor) -> torch.Tensor:
        """Values of the looping rows (one per row of `sequences()`, in its order) placed at their prompts,
        zero for a prompt that does not loop: [n, ...] float64 (bootstrap rows indexed by natural prompt, so
        they resample with every other family's `natural` rows; a zero row adds nothing to a sum)."""
        out = torch.zeros(len(self.looping), *rows.shape[1:], dtype=torch.float64)
        out[self.looping] = rows.double()
        return out

    def first_copy_start(self) -> torch.Tensor:
        """Index in `sequences()` of the first copy of each looping row's cycle (onset + period): its
        tokens repeat the cycle's first instance, like cycle 2 onward of `icl_repeat`."""
        looping = self.looping
        return self.prompts.shape[1] + self.onset[looping] + self.period[looping]


def natural_loops(
    model, prompts: torch.Tensor, new_tokens: int, rule: LoopRule, pad_id: int, batch_size: int
) -> NaturalLoops:
    """Greedy continuations of `prompts` [n, P] by `new_tokens` tokens, and their loops under `rule`."""
    gen = greedy_generate(model, prompts, new_tokens, pad_id=pad_id, batch_size=batch_size, desc="natural generation")
    period, copies, onset = rule.detect(gen.ids)
    return NaturalLoops(prompts, gen, period, copies, onset, rule)

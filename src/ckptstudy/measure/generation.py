"""Batched greedy generation through `model.generate`, shared by every family that needs continuations.

Prompts of different lengths are left-padded; the attention mask hides the padding and `generate` counts
position ids over real tokens only, so each row generates exactly what it would alone. A logits processor
records the entropy of each step's raw next-token distribution.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import torch
from transformers import GenerationConfig, LogitsProcessor, LogitsProcessorList

from ckptstudy.measure import heap
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


class EntropyRecorder(LogitsProcessor):
    """A logits processor that changes nothing: it keeps the entropy of every step's next-token
    distribution ([n] per step) and advances `bar` by one token per row."""

    def __init__(self, bar=None) -> None:
        self.entropies: list[torch.Tensor] = []
        self.bar = bar

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        self.entropies.append(entropy_of_logits(scores))
        if self.bar is not None:
            self.bar.update(scores.shape[0])
        return scores


def greedy_config(new_tokens: int, pad_id: int, static_cache: bool) -> GenerationConfig:
    """Exactly `new_tokens` argmax tokens per row: no EOS (so no stop and no EOS suppression before
    `min_new_tokens`), no penalty, no bad or suppressed tokens, no sampling. With `static_cache` the KV cache is
    allocated once at its final length: a cache grown by one token per step reallocates every layer's keys and
    values at every step, which on CPU left glibc's heap holding 6.2 GB for a 0.5 GB cache (64 rows x 1032
    tokens, Pythia-14m shape; NOTES.md). A static cache attends over its whole length at every step, so on CUDA
    (whose caching allocator reuses the blocks) the growing cache is kept: half the attention traffic of long
    generations, and on CUDA a static cache would also switch on transformers' auto-compilation). Both give the
    same tokens."""
    return GenerationConfig(
        do_sample=False,
        num_beams=1,
        max_new_tokens=new_tokens,
        min_new_tokens=new_tokens,
        pad_token_id=pad_id,
        use_cache=True,
        cache_implementation="static" if static_cache else None,
    )


def static_cache_on(device: torch.device | str) -> bool:
    """Whether greedy decoding on `device` uses a static KV cache: on CPU only (`greedy_config`)."""
    return torch.device(device).type == "cpu"


@contextmanager
def generation_defaults(model, config: GenerationConfig) -> Iterator[None]:
    """`model.generation_config` replaced by `config` for the duration of the block.

    `generate` fills every field its `generation_config` argument leaves unset (None) from the model's
    own generation config, and several fields that alter a greedy choice are off only when None (EOS,
    bad words, suppressed or forced tokens, sequence bias, watermarking): a checkpoint's
    generation_config.json would otherwise change which token is chosen or stop a row at EOS."""
    saved = model.generation_config
    model.generation_config = config
    try:
        yield
    finally:
        model.generation_config = saved


@torch.no_grad()
def greedy_generate(
    model,
    prompts: list[list[int]] | torch.Tensor,
    new_tokens: int,
    pad_id: int = 0,
    batch_size: int = 16,
    desc: str | None = "greedy generation",
) -> Generation:
    """Greedily continue every prompt by `new_tokens` tokens, `batch_size` prompts at a time
    (`model.generate` with a clean greedy config; the checkpoint's generation config is not used)."""
    if isinstance(prompts, torch.Tensor):
        prompts = prompts.tolist()
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("greedy_generate needs at least one prompt and no empty prompt")
    if new_tokens < 1:
        raise ValueError(f"greedy_generate needs new_tokens >= 1, got {new_tokens}")
    device = next(model.parameters()).device
    static = static_cache_on(device)
    config = greedy_config(new_tokens, pad_id, static)
    ids_out, ent_out = [], []
    bar = progress_bar(total=len(prompts) * new_tokens, desc=desc, unit="tok", disable=desc is None, leave=False)
    for start in range(0, len(prompts), batch_size):
        ids, mask = left_pad(prompts[start : start + batch_size], pad_id)
        recorder = EntropyRecorder(bar)
        # transformers sizes a static cache to the longest any earlier call made on this model: forget it, so
        # each call's cache is its own length (what the plan and the memory budget assume)
        vars(model).pop("_previous_max_cache_length", None)
        with generation_defaults(model, config), heap.returning_large_blocks() if static else nullcontext():
            out = model.generate(
                ids.to(device),
                attention_mask=mask.to(device),
                generation_config=config,
                logits_processor=LogitsProcessorList([recorder]),
            )
        chosen = out[:, ids.shape[1] :]
        if chosen.shape[1] != new_tokens or len(recorder.entropies) != new_tokens:
            raise RuntimeError(
                f"model.generate returned {chosen.shape[1]} tokens and {len(recorder.entropies)} steps, "
                f"expected {new_tokens}"
            )
        ids_out.append(chosen.cpu())
        ent_out.append(torch.stack(recorder.entropies, dim=1).cpu())
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

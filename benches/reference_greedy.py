"""The hand-written greedy loop ckptstudy used before `greedy_generate` moved to `model.generate` (issue 21,
item 8), kept only as `make bench`'s baseline for it: batched, left-padded, KV cache, explicit position ids.
It needs its own cache keyword shim (`cache=` from transformers 5.24, `past_key_values=` before)."""

from __future__ import annotations

import inspect

import torch

from ckptstudy.measure.generation import Generation, entropy_of_logits, left_pad


def _cache_keyword(model) -> str:
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def _returned_cache(output):
    return output["cache"] if "cache" in output else output["past_key_values"]


@torch.no_grad()
def loop_greedy(model, prompts: list[list[int]], new_tokens: int, pad_id: int = 0, batch_size: int = 16) -> Generation:
    """Greedy continuations of `prompts` by `new_tokens` tokens, one forward per step."""
    device = next(model.parameters()).device
    ids_out, ent_out = [], []
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
    return Generation(ids=torch.cat(ids_out), entropy=torch.cat(ent_out))

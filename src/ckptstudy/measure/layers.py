"""Re-running decoder layers on modified residuals: the call a layer got in a clean forward (its positional and
keyword arguments after the hidden states: causal mask, positions, rotary tables, ...), recorded once and
replayed on other inputs. Architecture-neutral: whatever a model hands its layers is replayed as it was, except
a KV cache (a replay must not append to the clean pass's cache), which is dropped."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers.cache_utils import Cache

CACHE_KEYWORDS = ("past_key_values", "past_key_value", "layer_past", "cache")


def layer_output(output) -> torch.Tensor:
    """A decoder layer's hidden states: transformers 5.0 returns a tuple, later releases the tensor."""
    return output[0] if isinstance(output, tuple) else output


def layer_input(args: tuple, kwargs: dict) -> torch.Tensor:
    """The hidden states a layer is called with (first positional argument, or `hidden_states=`)."""
    return args[0] if args else kwargs["hidden_states"]


def _no_cache(value):
    return None if isinstance(value, Cache) else value


@dataclass
class LayerCall:
    """What a decoder layer is called with besides its hidden states (a forward pre-hook's args[1:] and kwargs)."""

    args: tuple
    kwargs: dict

    @classmethod
    def recorded(cls, args: tuple, kwargs: dict) -> LayerCall:
        """From a `register_forward_pre_hook(..., with_kwargs=True)` call: the hidden states left out, any KV cache
        replaced by None and `use_cache` off."""
        rest = tuple(_no_cache(a) for a in args[1:])
        kept = {k: (None if k in CACHE_KEYWORDS else _no_cache(v)) for k, v in kwargs.items() if k != "hidden_states"}
        if "use_cache" in kept:
            kept["use_cache"] = False
        return cls(rest, kept)

    def rows(self, prompt: torch.Tensor, n: int) -> LayerCall:
        """The call for rows `prompt` of the recorded batch of `n` rows (tensors with a batch axis of n are indexed;
        batch-1 tensors broadcast as they are)."""

        def pick(value):
            if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] == n and n > 1:
                return value[prompt]
            if isinstance(value, tuple):
                return tuple(pick(v) for v in value)
            return value

        return LayerCall(tuple(pick(a) for a in self.args), {k: pick(v) for k, v in self.kwargs.items()})

    def __call__(self, layer: torch.nn.Module, hidden: torch.Tensor) -> torch.Tensor:
        """`layer` run on `hidden` [b, s, d] with the recorded arguments: its output hidden states."""
        return layer_output(layer(hidden, *self.args, **self.kwargs))

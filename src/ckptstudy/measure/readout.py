"""Reading the model's output: log-probabilities of chosen tokens, and a residual through the final norm and
the unembedding. The one implementation of log-softmax + gather every family and `ablation` uses."""

from __future__ import annotations

import torch

from ckptstudy.model.arch import model_parts


def log_probs(logits: torch.Tensor) -> torch.Tensor:
    """log softmax over the vocabulary (last axis), in float32 at least."""
    return torch.log_softmax(logits.float(), dim=-1)


def pick(logp: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """logp[..., tokens]: the log-probability of one token per position, logp [..., vocab], tokens [...]."""
    return logp.gather(-1, tokens[..., None]).squeeze(-1)


def logprob_of(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """log p(tokens) under logits [..., vocab]: [...]."""
    return pick(log_probs(logits), tokens)


def token_logprobs(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """log p of each next token: out[b, t] = log p(ids[b, t + 1] | ids[b, :t + 1]), logits [b, s, vocab],
    ids [b, s] -> [b, s - 1]."""
    return logprob_of(logits[:, :-1], ids[:, 1:])


def unembed(model, hidden: torch.Tensor) -> torch.Tensor:
    """Logits of residual-stream states [..., d]: the final norm, then the output embedding."""
    return model.get_output_embeddings()(model_parts(model).final_norm(hidden))


def output_logits(model, final: torch.Tensor) -> torch.Tensor:
    """Logits of states already through the final norm [..., d] (a base model's `last_hidden_state`): the output
    embedding only. Unembedding only the positions a family reads keeps [rows, seq, vocab] logits from existing."""
    return model.get_output_embeddings()(final)

"""Readout helpers: the one log-softmax + gather, and a residual through the final norm and unembedding."""

from __future__ import annotations

import math

import pytest
import torch

from ckptstudy.measure.readout import logprob_of, token_logprobs, unembed
from conftest import tiny_neox


def test_token_logprobs_are_the_next_tokens_log_probabilities():
    logits = torch.log(torch.tensor([[[0.5, 0.5], [0.9, 0.1], [0.2, 0.8]]]))
    ids = torch.tensor([[0, 1, 1]])
    out = token_logprobs(logits, ids)  # p(ids[1] | ids[:1]) = 0.5, p(ids[2] | ids[:2]) = 0.1
    torch.testing.assert_close(out, torch.log(torch.tensor([[0.5, 0.1]])))
    assert logprob_of(torch.zeros(3, 4), torch.tensor([0, 1, 3])).tolist() == pytest.approx(
        [-math.log(4)] * 3
    )  # uniform


def test_unembed_of_the_last_residual_is_the_models_logits():
    model = tiny_neox(seed=3)
    ids = torch.randint(0, 500, (2, 9))
    with torch.no_grad():
        out = model(input_ids=ids, output_hidden_states=True)
        # hidden_states[-1] is after the final norm in GPT-NeoX: take the last layer's output instead
        residual = []
        handle = model.gpt_neox.layers[-1].register_forward_hook(
            lambda _m, _a, o: residual.append(o[0] if isinstance(o, tuple) else o)
        )
        model(input_ids=ids)
        handle.remove()
        torch.testing.assert_close(unembed(model, residual[0]), out.logits, atol=1e-5, rtol=1e-5)
        # the opposite: without the final norm the logits differ
        assert not torch.allclose(model.get_output_embeddings()(residual[0]), out.logits, atol=1e-3)

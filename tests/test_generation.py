"""Greedy generation through `model.generate`: exact length, padding-independent rows, raw-logit entropies, no
influence of the checkpoint's generation config, progress, and no warnings."""

from __future__ import annotations

import logging
import warnings

import pytest
import torch
from transformers import GenerationConfig

from ckptstudy.measure import generation
from ckptstudy.measure.generation import EntropyRecorder, entropy_of_logits, greedy_generate, left_pad
from conftest import tiny_neox

PROMPTS = [[5, 6, 7, 8, 9, 10], [11, 12], [13, 14, 15, 16]]


def reference_greedy(model, prompt: list[int], new_tokens: int) -> tuple[list[int], torch.Tensor]:
    """The definition, spelled out: one prompt, no padding, no cache, a full forward of the whole sequence per
    step; the argmax token and the entropy of the next-token distribution it was chosen from."""
    ids = torch.tensor([prompt])
    entropies = []
    with torch.no_grad():
        for _ in range(new_tokens):
            logits = model(input_ids=ids).logits[0, -1]
            entropies.append(entropy_of_logits(logits))
            ids = torch.cat([ids, logits.argmax().view(1, 1)], dim=1)
    return ids[0, len(prompt) :].tolist(), torch.stack(entropies)


def test_left_pad_masks_the_padding():
    ids, mask = left_pad([[5, 6, 7], [8]], pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]] and mask.tolist() == [[1, 1, 1], [0, 0, 1]]


def test_padded_batch_generates_what_each_prompt_generates_alone():
    model = tiny_neox(seed=1)
    batched = greedy_generate(model, PROMPTS, 10, pad_id=1, batch_size=3, desc=None)
    assert batched.ids.shape == batched.entropy.shape == (3, 10)
    for row, prompt in enumerate(PROMPTS):
        alone = greedy_generate(model, [prompt], 10, desc=None)
        assert torch.equal(batched.ids[row], alone.ids[0])
        torch.testing.assert_close(batched.entropy[row], alone.entropy[0], atol=1e-5, rtol=1e-5)
        ids, entropy = reference_greedy(model, prompt, 10)
        assert batched.ids[row].tolist() == ids
        torch.testing.assert_close(batched.entropy[row], entropy, atol=1e-5, rtol=1e-5)


def test_padding_without_the_mask_would_change_the_rows():
    # the opposite case of the test above: the same left-padded batch with the padding attended to (mask of
    # ones) does not give each prompt's own continuation, so that test can tell masked padding from none
    model = tiny_neox(seed=1)
    ids, mask = left_pad(PROMPTS, pad_id=1)
    unmasked = model.generate(
        ids, attention_mask=torch.ones_like(mask), generation_config=GenerationConfig(max_new_tokens=10, pad_token_id=1)
    )
    alone = greedy_generate(model, PROMPTS, 10, pad_id=1, batch_size=1, desc=None)
    assert not torch.equal(unmasked[:, ids.shape[1] :], alone.ids)


def test_batches_and_tensor_prompts_give_the_same_rows():
    model = tiny_neox(seed=2)
    prompts = torch.randint(2, 512, (5, 7), generator=torch.Generator().manual_seed(0))
    one = greedy_generate(model, prompts, 6, batch_size=5, desc=None)
    several = greedy_generate(model, prompts.tolist(), 6, batch_size=2, desc=None)
    assert torch.equal(one.ids, several.ids)
    torch.testing.assert_close(one.entropy, several.entropy, atol=1e-5, rtol=1e-5)


def hostile_config(token: int) -> GenerationConfig:
    """A checkpoint generation config that changes greedy decoding in every way it can: `token` is EOS (stop,
    and suppressed before min_new_tokens), a bad word, suppressed; repeats are penalised; a short max_length."""
    return GenerationConfig(
        eos_token_id=token,
        bad_words_ids=[[token]],
        suppress_tokens=[token],
        repetition_penalty=5.0,
        no_repeat_ngram_size=1,
        max_length=10,
    )


def test_the_checkpoints_generation_config_does_not_change_the_greedy_choice():
    model = tiny_neox(seed=1)
    clean = greedy_generate(model, PROMPTS, 12, pad_id=1, desc=None)
    token = int(clean.ids[0, 0])  # a token the model really chooses: it must stay a real token, never a stop
    saved = hostile_config(token)
    model.generation_config = saved
    # the opposite case: `generate` with the checkpoint's defaults stops, bans or penalises, and the rows change
    ids, mask = left_pad(PROMPTS, pad_id=1)
    defaults = model.generate(ids, attention_mask=mask, generation_config=GenerationConfig(pad_token_id=1))
    assert defaults.shape[1] - ids.shape[1] < 12 or not torch.equal(defaults[:, ids.shape[1] :], clean.ids)

    guarded = greedy_generate(model, PROMPTS, 12, pad_id=1, desc=None)
    assert torch.equal(guarded.ids, clean.ids) and (guarded.ids == token).any()
    torch.testing.assert_close(guarded.entropy, clean.entropy, atol=0, rtol=0)
    assert model.generation_config is saved  # restored after the call


def test_an_eos_token_the_model_keeps_choosing_does_not_end_the_rows():
    model = tiny_neox(seed=3)
    first = greedy_generate(model, PROMPTS, 1, pad_id=1, desc=None).ids[:, 0]
    model.generation_config.eos_token_id = int(first[0])  # row 0's very first token is "EOS"
    out = greedy_generate(model, PROMPTS, 9, pad_id=1, desc=None)
    assert out.ids.shape == (3, 9) and out.ids[0, 0] == first[0]
    assert out.ids[0].tolist() == reference_greedy(model, PROMPTS[0], 9)[0]


def test_entropy_recorder_sees_the_logits_and_leaves_them_unchanged():
    class Bar:
        n = 0

        def update(self, k):
            self.n += k

    bar = Bar()
    recorder = EntropyRecorder(bar)
    scores = torch.tensor([[0.0, 0.0], [0.0, -1e9]])
    assert recorder(torch.zeros(2, 1, dtype=torch.long), scores) is scores
    assert recorder.entropies[0].tolist() == pytest.approx([0.6931472, 0.0]) and bar.n == 2


def test_progress_counts_every_generated_token(capsys):
    greedy_generate(tiny_neox(), PROMPTS, 7, pad_id=1, batch_size=2, desc="gen test")
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("gen test")]
    assert lines and "21/21" in lines[-1], lines


class Captured(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def warnings_of(fn) -> list[str]:
    """Python warnings and transformers log records (WARNING and above) raised by `fn()`."""
    handler, logger = Captured(), logging.getLogger("transformers")
    logger.addHandler(handler)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            fn()
    finally:
        logger.removeHandler(handler)
    return [str(w.message) for w in caught] + handler.messages


def test_generation_raises_no_warning():
    model = tiny_neox()
    assert warnings_of(lambda: greedy_generate(model, PROMPTS, 5, pad_id=1, batch_size=2, desc=None)) == []
    # the opposite case: a batched `generate` without a pad token or mask is warned about, and seen here
    ids, _ = left_pad(PROMPTS, pad_id=1)
    assert warnings_of(lambda: model.generate(ids, max_new_tokens=2))


def test_empty_prompt_and_no_tokens_are_refused():
    with pytest.raises(ValueError, match="empty prompt"):
        greedy_generate(tiny_neox(), [[1, 2], []], 3, desc=None)
    with pytest.raises(ValueError, match="new_tokens >= 1, got 0"):
        greedy_generate(tiny_neox(), [[1, 2]], 0, desc=None)


def test_a_static_cache_on_cpu_and_a_growing_one_on_cuda_give_the_same_tokens(monkeypatch):
    assert generation.static_cache_on("cpu") and not generation.static_cache_on("cuda:0")
    assert generation.greedy_config(4, 0, static_cache=True).cache_implementation == "static"
    assert generation.greedy_config(4, 0, static_cache=False).cache_implementation is None
    model = tiny_neox(seed=3)
    prompts = [[5, 6, 7, 8], [9, 10, 11], [12, 13, 14, 15, 16]]  # padded: the static cache sees the mask too
    static = greedy_generate(model, prompts, 24, batch_size=3, desc=None)
    monkeypatch.setattr(generation, "static_cache_on", lambda device: False)  # as on CUDA
    growing = greedy_generate(model, prompts, 24, batch_size=3, desc=None)
    assert torch.equal(static.ids, growing.ids)
    assert torch.allclose(static.entropy, growing.entropy, atol=1e-5)


def test_each_call_gets_a_static_cache_of_its_own_length():
    model = tiny_neox(seed=4)
    greedy_generate(model, [[5, 6, 7, 8, 9, 10]], 30, desc=None)
    greedy_generate(model, [[5, 6, 7]], 4, desc=None)
    # transformers keeps the longest length it allocated on the model and sizes later static caches to it
    remembered = getattr(model, "_previous_max_cache_length", None)
    if remembered is None:
        pytest.skip("this transformers version does not carry a static cache's length between calls")
    assert remembered < 3 + 4 + 2  # the short call's own length (prompt + new tokens), not 36

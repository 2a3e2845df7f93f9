"""Hand-built GPT-NeoX models with a planted attention sink, and controls that lack it (tests of `sink/`).

`planted_sink()` is a 3-layer GPT-NeoX (Pythia's choices: rotary-only positions, parallel residual) whose
weights are all zero except a first-token circuit after Yona et al. (2025):

- embedding: token t -> A * e_t (subspace TOKEN, dims 0..V-1) + C * e_u (one dimension U shared by every token);
- layer 0, head 0: no query or key (uniform causal attention); its value copies the token one-hot into subspace
  MIX (dims V..2V-1). Position 0 attends only to itself, so its MIX part is one whole one-hot (norm ~MIX_NORM);
  position i >= 1 averages i + 1 one-hots (norm ~MIX_NORM / sqrt(i + 1) for distinct tokens). This is the feature
  only the first position has; a long repetition of one token averages identical one-hots and gets it too (the
  first attention layer cannot tell a first token from a long repeat: Yona et al.'s explanation);
- layer 1, MLP neuron DETECTOR: reads the U coordinate of the layer's LayerNorm input with a negative weight.
  LayerNorm divides by the residual's norm, so the U coordinate is small exactly where the MIX part is large:
  the neuron fires at position 0 (and at the end of a long repetition), not at ordinary later positions. It
  writes WRITE per unit of activation to the massive dimension MASSIVE;
- layer 2, head 0 (the sink head): a constant query in a non-rotary dimension, a key that reads MASSIVE minus the
  always-zero REF (so LayerNorm's mean subtraction, which differs at position 0, leaves the key exactly 0 where
  nothing is written): every query attends to the keys that carry the massive dimension (position 0), with a
  zero value (a no-op sink);
- unembedding: the logit of token t reads TOKEN (predict the current token again: a repeating model) and the
  logit of DIVERGE = 0 reads MASSIVE: where the massive dimension dominates the final LayerNorm, the model
  predicts DIVERGE instead of repeating (after a repetition of about 8 tokens).

`keyed="bos"` plants the same circuit keyed to the BOS token instead of position 0 (the detector reads token 0's
one-hot): found only on text that starts with BOS. Controls (`control=`): "no_detector" (the detector's input
weights zero: a constant activation, a massive dimension at every position, one shared direction), "silent" (the
detector fires but its output weights are zero: writes nothing), "noise" (no detector at all, then Gaussian
noise of std 0.03 on every weight matrix), and `random_init()` (the same shape, default initialisation).
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import torch

from configured import top_level
from conftest import tiny_neox

V, D, HEADS, LAYERS = 64, 256, 2, 3
HEAD_DIM, ROTARY = D // HEADS, 32  # 25% rotary dims: 32 of 128 per head
TOKEN, MIX = 0, V  # subspace offsets
U, MASSIVE, REF = 2 * V, 2 * V + 1, 2 * V + 2  # single dimensions (REF stays 0: the key's reference)
DETECTOR = 7  # the planted neuron of layer 1's MLP
DIVERGE = 0  # the token predicted where the massive dimension dominates (also BOS)
A, C = 10.0, 10.0  # embedding: token one-hot and shared U coordinate
MIX_GAIN = 5.3  # layer 0's value x output gain: MIX norm ~60 at position 0
THRESHOLD, SHARPNESS = 2.9, 20.0  # the detector fires when LayerNorm's U coordinate < THRESHOLD
WRITE = 100.0  # massive dimension written per unit of detector activation
SINK_QK = 10.0  # query x key gain of the sink head on the massive dimension
COPY, DIVERT = 1.0, 1.0  # unembedding gains: repeat the current token / predict DIVERGE from MASSIVE
CONTROLS = ("no_detector", "silent", "noise")


def _zero(model: torch.nn.Module) -> None:
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "layernorm" not in name and "layer_norm" not in name:
                p.zero_()


def planted_sink(control: str | None = None, keyed: str = "position", seed: int = 0) -> torch.nn.Module:
    """The planted first-token sink (module docstring), or one of its `CONTROLS`; keyed="bos" keys it to token 0."""
    if control not in (None, *CONTROLS) or keyed not in ("position", "bos"):
        raise ValueError(f"unknown control {control!r} or keyed {keyed!r}")
    model = tiny_neox(vocab_size=V, layers=LAYERS, d_model=D, heads=HEADS, seed=seed)
    _zero(model)
    tokens = torch.arange(V)
    body = model.gpt_neox
    with torch.no_grad():
        body.embed_in.weight[tokens, TOKEN + tokens] = A
        body.embed_in.weight[:, U] = C
        mixer = body.layers[0].attention
        mixer.query_key_value.weight.view(HEADS, 3, HEAD_DIM, D)[0, 2, tokens, TOKEN + tokens] = 1.0  # value = TOKEN
        mixer.dense.weight[MIX + tokens, tokens] = MIX_GAIN
        mlp = body.layers[1].mlp
        if control not in ("no_detector", "noise"):
            if keyed == "position":  # fires where LayerNorm's U coordinate is small
                mlp.dense_h_to_4h.weight[DETECTOR, U] = -SHARPNESS
                mlp.dense_h_to_4h.bias[DETECTOR] = SHARPNESS * THRESHOLD
            else:  # fires on token 0 (BOS) wherever it is
                mlp.dense_h_to_4h.weight[DETECTOR, TOKEN] = SHARPNESS
                mlp.dense_h_to_4h.bias[DETECTOR] = -SHARPNESS * 1.0
        if control == "no_detector":
            mlp.dense_h_to_4h.bias[DETECTOR] = SHARPNESS * THRESHOLD  # constant activation everywhere
        if control not in ("silent", "noise"):
            mlp.dense_4h_to_h.weight[MASSIVE, DETECTOR] = WRITE
        sink = body.layers[2].attention
        sink.query_key_value.bias.view(HEADS, 3, HEAD_DIM)[0, 0, ROTARY] = SINK_QK  # constant query
        key = sink.query_key_value.weight.view(HEADS, 3, HEAD_DIM, D)[0, 1, ROTARY]
        key[MASSIVE], key[REF] = 1.0, -1.0  # MASSIVE against REF: LayerNorm's mean and scale cancel
        head = model.get_output_embeddings().weight
        head[tokens, TOKEN + tokens] = COPY
        head[DIVERGE, MASSIVE] = DIVERT
        if control == "noise":
            gen = torch.Generator().manual_seed(seed)
            for p in model.parameters():
                if p.ndim == 2:
                    p += 0.03 * torch.randn(p.shape, generator=gen)
    return model


def random_init(seed: int = 0) -> torch.nn.Module:
    """The planted model's shape with GPT-NeoX's default initialisation."""
    return tiny_neox(vocab_size=V, layers=LAYERS, d_model=D, heads=HEADS, seed=seed)


def random_text(n: int, length: int, seed: int = 0) -> torch.Tensor:
    """`n` rows of `length` random ids in 1..V-1 (never BOS): [n, length]."""
    return torch.randint(1, V, (n, length), generator=torch.Generator().manual_seed(seed))


INTERVALS = SimpleNamespace(**top_level()["report"]["bootstrap"])  # conf/config.yaml's report.bootstrap


def presence(result, min_effect: dict[str, float]) -> dict[str, bool]:
    """{excess key: present} for every key of `min_effect` the result reports: present = the excess's 95%
    bootstrap interval lies above the key's smallest effect of interest (absent when it has no interval)."""
    ci = result.intervals(INTERVALS).ci
    low = {key: ci.get(key, [math.nan])[0] for key in min_effect if key in result.scalars}
    return {key: math.isfinite(value) and value > min_effect[key] for key, value in low.items()}

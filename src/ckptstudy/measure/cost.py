"""What a job's forward passes cost, from shapes alone: the vocabulary families use to describe their passes.

Each metric family describes the passes its `measure` runs, next to it: `passes(sizes, shape, **params) ->
list[Pass]` (`sizes`: the job's `ProbeSizes`, `shape`: the model's `Shape`, params: the family's configured
parameters). `ckptstudy-plan` sums them; a pass marked `shared` (the natural greedy continuations every
loop family reads from `JobContext.natural_loops()`) is counted once however many families describe it.

The model (estimates; `ckptstudy-plan` prints its assumptions):
- a forward over s tokens: 2 (4 d^2 + m d d_ff) FLOPs per token and layer (QKV + output 4 d^2, an MLP of m
  matrices of d x d_ff: m = 2 for GELU, 3 for SwiGLU; Pythia's 24 d^2 with d_ff = 4 d), causal
  attention 2 s^2 d per layer (SDPA skips the masked half; eager computes all of it, 4 s^2 d; the fused
  statistics add passes over the keys), 2 d V per unembedded position, x3 with a backward pass;
- greedy decoding: a prefill, then per step a one-token forward over the KV cache;
- peak memory: the largest transient activations of one call (weights not included).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

LOADED_ATTENTION = "eager"  # checkpoints.load_checkpoint loads attn_implementation="eager"
STATS_CLASSES = 9  # lowinfo/ key classes (8 token classes + LOW_INFO): the fused pass's extra value width


@dataclass
class Shape:
    """A decoder-only model's shape. The last four default to Pythia's choices: MLP width 4 d (d_ff None), a
    2-matrix MLP (GELU; SwiGLU has 3), untied embeddings, rotary positions (no position embedding; GPT-2 learns
    one row per context position); a model yaml and its architecture state what differs (config.model_shape)."""

    n_layers: int
    d_model: int
    n_heads: int
    vocab: int
    context: int
    d_ff: int | None = None
    mlp_matrices: int = 2
    tied_embeddings: bool = False
    learned_positions: bool = False

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def mlp_width(self) -> int:
        return self.d_ff or 4 * self.d_model

    @property
    def layer_matmul_params(self) -> int:
        """Weights one token meets in a layer's matrix multiplications: QKV and output 4 d^2, the MLP m d d_ff."""
        return 4 * self.d_model**2 + self.mlp_matrices * self.d_model * self.mlp_width

    @property
    def params(self) -> int:
        """Parameters (norms and biases counted as in GPT-NeoX: an upper bound for models without biases)."""
        d = self.d_model
        positions = self.context * d if self.learned_positions else 0
        embeddings = (1 if self.tied_embeddings else 2) * self.vocab * d + positions
        return embeddings + self.n_layers * (self.layer_matmul_params + 9 * d + self.mlp_width) + 2 * d


@dataclass
class Pass:
    """Forward passes one family runs: `rows` sequences of `seq` tokens, `batch` rows per call, `layers`
    layers each, `unembed` unembedded positions per row; `decode` > 0 = greedy steps after a prefill of `seq`
    tokens (prompts of `rows` rows padded to `seq`). `shared` names a pass several families read (counted
    once by the plan, under "<shared> (shared)")."""

    what: str
    rows: int
    seq: int
    batch: int
    layers: float
    unembed: int = 0
    attention: str = LOADED_ATTENTION  # eager | sdpa | fused
    backward: bool = False
    decode: int = 0
    keep_layers: int = 0  # layers of residuals kept alive across calls (exact ablation)
    shared: str | None = None

    @property
    def calls(self) -> int:
        return max(1, math.ceil(self.rows / max(1, self.batch))) if self.rows else 0


@dataclass
class ProbeSizes:
    """The probe sizes a job uses (configured sizes, clipped to the context like the families do)."""

    rr_n: int
    rr_len: int  # 1 + 2R
    repeat: int
    nat_n: int
    nat_len: int
    gen: int  # natural continuation length
    icl_n: int
    icl_len: int  # passage length
    icl_seq: int  # passage x copies (clipped)
    lt_n: int
    lt_len: int
    batch: int
    loop_share: float

    @property
    def looping(self) -> int:
        return round(self.nat_n * self.loop_share)


def probe_sizes(cfg, context: int, loop_share: float) -> ProbeSizes:
    """The sizes of a composed config's probes on a model with a `context`-token window; `loop_share` of the
    natural prompts are assumed to loop."""
    p = cfg.probes
    nat_len = p.natural.length
    return ProbeSizes(
        rr_n=p.random_repeat.n,
        rr_len=1 + 2 * p.random_repeat.length,
        repeat=p.random_repeat.length,
        nat_n=p.natural.n,
        nat_len=nat_len,
        gen=max(0, min(cfg.loops.new_tokens, context - nat_len)),
        icl_n=p.icl_repeat.n,
        icl_len=p.icl_repeat.length,
        icl_seq=min(p.icl_repeat.length * p.icl_repeat.copies, context),
        lt_n=p.long_text.n,
        lt_len=min(p.long_text.length, context),
        batch=cfg.batch_size,
        loop_share=loop_share,
    )


def natural_generation(sizes: ProbeSizes, shape: Shape) -> Pass:
    """The natural greedy continuations (`JobContext.natural_loops()`), shared by every family that reads them."""
    return Pass(
        "natural greedy continuations",
        sizes.nat_n,
        sizes.nat_len,
        sizes.batch,
        shape.n_layers,
        decode=sizes.gen,
        shared="natural generation",
    )


def pass_flops(p: Pass, shape: Shape) -> float:
    """Forward (x3 with backward) FLOPs of every call of the pass, decoding steps included."""
    d, s = shape.d_model, p.seq
    attn = {"sdpa": 2.0, "eager": 4.0, "fused": 2.0 + 2.0 * (shape.head_dim + STATS_CLASSES) / shape.head_dim}
    prefill = p.rows * (
        s * p.layers * 2 * shape.layer_matmul_params
        + p.layers * attn[p.attention] * s * s * d
        + p.unembed * 2 * d * shape.vocab
    )
    if p.backward:
        prefill *= 3
    decode = 0.0
    for step in range(p.decode):
        keys = s + step + 1
        decode += p.rows * (shape.n_layers * (2 * shape.layer_matmul_params + 4 * d * keys) + 2 * d * shape.vocab)
    return prefill + decode


def pass_peak_bytes(p: Pass, shape: Shape, dtype_bytes: int) -> float:
    """Largest transient memory of one call of the pass (weights not included)."""
    d, s, b = shape.d_model, p.seq, min(p.batch, max(p.rows, 1))
    # qkv, rotary copies, attention output, residuals (12 d) and the MLP's intermediate tensors (2 or 3 of d_ff)
    layer_acts = b * s * (12 * d + shape.mlp_matrices * shape.mlp_width) * dtype_bytes
    if p.attention == "eager":
        attention = b * shape.n_heads * s * s * dtype_bytes * 3  # scores, masked scores, softmax
    elif p.attention == "fused":
        attention = b * shape.n_heads * s * (shape.head_dim + STATS_CLASSES) * 8 * 3
    else:
        attention = 0
    if p.attention == "fused":  # capture_stats unembeds one row at a time
        logits = min(p.unembed, s) * shape.vocab * 4 * 2
    else:
        logits = b * min(p.unembed, s) * shape.vocab * 4 * 2  # logits + log_softmax, float32
    if p.backward:
        layer_acts *= shape.n_layers
        attention *= shape.n_layers
    if p.decode:
        cache = 2 * shape.n_layers * b * (s + p.decode) * d * dtype_bytes
        logits = max(logits, b * s * shape.vocab * 4)  # the prefill's logits over every prompt position
        return layer_acts + attention + logits + cache
    kept = p.keep_layers * p.rows * s * d * dtype_bytes
    return layer_acts + attention + logits + kept

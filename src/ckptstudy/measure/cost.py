"""What a job's forward passes cost, from shapes alone: the vocabulary families use to describe their passes.

Each metric family describes the passes its `measure` runs, next to it: `passes(sizes, shape, **params) ->
list[Pass]` (`sizes`: the job's `ProbeSizes`, `shape`: the model's `Shape`, params: the family's configured
parameters), and `measure` asks the job's memory budget for the rows per call of the same descriptions
(`JobContext.rows(pass)`, `ckptstudy.measure.budget`). `ckptstudy-plan` sums them; a pass marked `shared` (the
natural greedy continuations every loop family reads from `JobContext.natural_loops()`) is counted once however
many families describe it.

The model (estimates; `ckptstudy-plan` prints its assumptions):
- FLOPs of a forward over s tokens: per token and layer 2 x (4 d^2 + m d d_ff) (QKV + output, an MLP of m
  matrices of d x d_ff: m = 2 for GELU, 3 for SwiGLU), causal
  attention 2 s^2 d per layer (SDPA skips the masked half; eager computes all of it, 4 s^2 d; the fused statistics
  pass adds another pass over the keys), 2 d V per unembedded position, x3 with a backward pass; greedy decoding:
  a prefill, then per step a one-token forward over the KV cache so far (the useful work; a static cache,
  used on CPU, attends over its whole length: `tools/machine.py` times that);
- peak memory of one call (weights not included), calibrated against measured peaks (`benches/peaks.py`:
  resident memory above the start of the call, in fresh processes, at the micro, Pythia-14m and -70m
  shapes): the transient activations of one layer, (8 d + 4 d_ff) per token in the model's dtype (all layers,
  and more per layer, when a backward pass keeps them); the logits the pass materialises (float32); the KV cache
  of greedy decoding; the residuals an exact ablation keeps; the fused statistics' workspace.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

LOADED_ATTENTION = "sdpa"  # checkpoints.load_model loads attn_implementation="sdpa" (eager only in reference.py)
STATS_CLASSES = 9  # lowinfo/ key classes (8 token classes + LOW_INFO): the fused pass's extra value width
LOGITS = ("none", "all", "row", "selected", "last")
ATTENTION = ("sdpa", "eager", "fused", "fused_pass")

# peak-memory coefficients (bytes = coefficient x elements x element size), fitted to benches/peaks.py measurements
LAYER_D, LAYER_FF = 8.0, 4.0  # one layer's transient activations per token: 8 d + 4 d_ff values
SAVED_D, SAVED_FF = 14.0, 3.0  # per layer and token kept for a backward pass: 14 d + 3 d_ff values
LOGIT_COPIES = {"all": 3.0, "row": 3.0, "selected": 3.0, "last": 3.0, "none": 0.0}  # float32 [.., V] copies alive
LOGIT_COPIES_BACKWARD = 5.0  # logits, log-softmax and their gradients
STATS_COPIES = 5.0  # fused statistics pass: padded q, k, values, output (+ one), float32, per head and position


@dataclass(frozen=True)
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

    @classmethod
    def of(cls, config, mlp_matrices: int = 2, learned_positions: bool = False) -> Shape:
        """The shape of a loaded model's Hugging Face config or of a config.json dict (GPT-2's own key names
        too); `mlp_matrices` and `learned_positions` come from the model's architecture adapter."""
        if isinstance(config, dict):

            def get(*keys):
                return next((config[k] for k in keys if config.get(k) is not None), None)
        else:

            def get(*keys):
                return next((getattr(config, k) for k in keys if getattr(config, k, None) is not None), None)

        d_ff = get("intermediate_size", "n_inner")
        return cls(
            n_layers=int(get("num_hidden_layers", "n_layer")),
            d_model=int(get("hidden_size", "n_embd")),
            n_heads=int(get("num_attention_heads", "n_head")),
            vocab=int(get("vocab_size")),
            context=int(get("max_position_embeddings", "n_positions")),
            d_ff=int(d_ff) if d_ff else None,
            mlp_matrices=mlp_matrices,
            tied_embeddings=bool(get("tie_word_embeddings")),
            learned_positions=learned_positions,
        )


@dataclass(frozen=True)
class Pass:
    """Forward passes one family runs: `rows` sequences of `seq` tokens, `layers` layers each.

    `batch`: at most this many rows per call (the configured cap, named by `limit`); None = as many as the memory
    budget allows (`budget.call_rows` resolves it, the plan and the job alike). `logits`: what the pass
    unembeds: none, all (every position of every row of a call: `model(...).logits`), row (every position, one
    row at a time: `capture_stats`), selected (`unembed` positions per row), last (greedy decoding: the last
    position per step). `decode` > 0 = greedy steps after a prefill of `seq` tokens. `keep_layers`: layers of
    residuals a call keeps for its rows (exact ablation's clean pass); `share`: the part of the budget the pass
    may use (the rest holds what another pass of the same step keeps); `group`: rows per call come in whole
    groups of this many; `extra`: values per token that hooks hold beside one layer's activations. `shared` names
    a pass several families read (counted once by the plan)."""

    what: str
    rows: int
    seq: int
    batch: int | None
    layers: float
    unembed: int = 0
    attention: str = LOADED_ATTENTION  # sdpa | eager | fused (diagonals from the kernel) | fused_pass (+ a pass)
    backward: bool = False
    decode: int = 0
    keep_layers: int = 0
    shared: str | None = None
    logits: str = "none"
    limit: str = "batch_size"  # the config key of `batch`
    share: float = 1.0
    group: int = 1
    extra: float = 0.0  # values per token a hook holds beside one layer's activations (model dtype)

    def __post_init__(self):
        if self.logits not in LOGITS or self.attention not in ATTENTION:
            raise ValueError(f"pass {self.what!r}: logits={self.logits!r}, attention={self.attention!r}")

    @property
    def calls(self) -> int:
        return max(1, math.ceil(self.rows / max(1, self.batch or self.rows))) if self.rows else 0

    @property
    def unembedded(self) -> int:
        """Positions per row whose logits are computed (for the FLOPs)."""
        return self.seq if self.logits == "all" else self.unembed

    def with_batch(self, batch: int) -> Pass:
        return replace(self, batch=batch)


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
    batch: int | None  # config batch_size: the cap of rows per call (None = from the memory budget)
    loop_share: float
    sink_patch: bool = True  # assumed: some sink neuron passes, so sink's patch passes run

    @property
    def looping(self) -> int:
        return round(self.nat_n * self.loop_share)


def probe_sizes(cfg, context: int, loop_share: float, sink_patch: bool = True) -> ProbeSizes:
    """The sizes of a composed config's probes on a model with a `context`-token window; `loop_share` of the
    natural prompts are assumed to loop, and with `sink_patch` the sink neuron patch is assumed to run (the job's
    budget check assumes the most: every prompt loops, the patch runs)."""
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
        sink_patch=sink_patch,
    )


def generation_pass(what: str, rows: int, prompt: int, new_tokens: int, shape: Shape, cap: int | None) -> Pass:
    """Greedy continuations (`generation.greedy_generate`): a prefill of `prompt` tokens, `new_tokens` steps."""
    return Pass(what, rows, prompt, cap, shape.n_layers, unembed=1, decode=new_tokens, logits="last")


def natural_generation_pass(rows: int, prompt: int, new_tokens: int, shape: Shape, cap: int | None) -> Pass:
    """The natural greedy continuations (`JobContext.natural_loops()`), shared by every family that reads them."""
    p = generation_pass("natural greedy continuations", rows, prompt, new_tokens, shape, cap)
    return replace(p, shared="natural generation")


def natural_generation(sizes: ProbeSizes, shape: Shape) -> Pass:
    """`natural_generation_pass` at the probe sizes."""
    return natural_generation_pass(sizes.nat_n, sizes.nat_len, sizes.gen, shape, sizes.batch)


def pass_flops(p: Pass, shape: Shape) -> float:
    """Forward (x3 with backward) FLOPs of every call of the pass, decoding steps included."""
    d, s = shape.d_model, p.seq
    dense = 2 * shape.layer_matmul_params
    extra = 2.0 * (shape.head_dim + STATS_CLASSES) / shape.head_dim
    attn = {"sdpa": 2.0, "fused": 2.0, "eager": 4.0, "fused_pass": 2.0 + extra}
    per_row = s * p.layers * dense + p.layers * attn[p.attention] * s * s * d + p.unembedded * 2 * d * shape.vocab
    prefill = p.rows * per_row
    if p.backward:
        prefill *= 3
    keys = p.decode * s + p.decode * (p.decode + 1) // 2  # summed over the steps: the cache grows by one per step
    decode = p.rows * (p.decode * (shape.n_layers * dense + 2 * d * shape.vocab) + shape.n_layers * 4 * d * keys)
    return prefill + decode


def pass_peak_bytes(p: Pass, shape: Shape, dtype_bytes: int) -> float:
    """Largest transient memory of one call of the pass with `p.batch` rows (weights not included)."""
    d, s, t = shape.d_model, p.seq, dtype_bytes
    b = min(p.batch or p.rows, max(p.rows, 1))
    tokens = b * s
    mlp = shape.mlp_width * shape.mlp_matrices / 2  # the fit is for 2-matrix MLPs; SwiGLU holds a third d_ff
    layer = tokens * (LAYER_D * d + LAYER_FF * mlp + p.extra) * t
    if p.backward:
        layer += math.ceil(p.layers) * tokens * (SAVED_D * d + SAVED_FF * mlp) * t
    if p.attention == "eager":
        layer += b * shape.n_heads * s * s * t * 3 * (math.ceil(p.layers) if p.backward else 1)
    elif p.attention == "fused_pass":
        width = math.ceil((shape.head_dim + STATS_CLASSES) / 8) * 8
        layer += STATS_COPIES * tokens * shape.n_heads * width * 4
    copies = LOGIT_COPIES_BACKWARD if p.backward else LOGIT_COPIES[p.logits]
    positions = {"all": tokens, "row": s, "selected": b * p.unembed, "last": b, "none": 0}[p.logits]
    logits = copies * positions * shape.vocab * 4
    if p.logits == "all":
        logits += tokens * shape.vocab * t  # the model's own logits in its dtype
    kept = p.keep_layers * tokens * d * t
    if p.decode:
        # the whole cache beside the prefill's activations: a static cache (CPU) exists from the prefill on; a
        # growing one (CUDA) ends at this size plus one layer's concatenation
        cache = 2 * shape.n_layers * b * (s + p.decode) * d * t * (1 + 1 / shape.n_layers)
        return layer + cache + logits + kept
    return layer + logits + kept

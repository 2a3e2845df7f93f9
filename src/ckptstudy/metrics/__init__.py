"""Metric families. Each module holds pure tensor functions plus one `measure(ctx, *, **params)` entry named by
`_target_` in conf/metrics/<family>.yaml (parameters annotated with their ranges, `ckptstudy.params`; values
only in the yaml), and `passes(sizes, shape, **params)` describing its forward passes (`ckptstudy.measure.cost`).
A family returns a `FamilyResult`; README "How to add a metric family" has the template."""

from __future__ import annotations

import inspect
import logging
import math
from contextlib import nullcontext
from dataclasses import dataclass, field

import numpy as np
from omegaconf import OmegaConf

from ckptstudy.measure.budget import MemoryBudget, call_rows, lowered, resolve_budget
from ckptstudy.measure.cost import Pass, ProbeSizes, Shape, natural_generation_pass
from ckptstudy.measure.cycles import LoopRule
from ckptstudy.measure.generation import NaturalLoops, natural_loops
from ckptstudy.measure.meter import Meter
from ckptstudy.measure.precision import compute_bytes, upcast_bytes
from ckptstudy.model import arch
from ckptstudy.params import check_family
from ckptstudy.stats.bootstrap import Sample, full_statistics
from ckptstudy.stats.intervals import Intervals, record_intervals

log = logging.getLogger("ckptstudy")

UNEXPLAINED = "unexplained: the family gave no reason"


class FamilyResult:
    """What one family measured at one checkpoint, every key named `family/name`.

    Scalars come in two kinds, and `scalars` (the trajectories.csv columns) holds both, in the order given:
    - statistics over prompts (`stat`): a `Sample` of per-prompt values; the scalar IS its statistic on the
      full sample (`bootstrap.full_statistics`), with a bootstrap interval from the same sample;
    - other values (`value`): counts, layer indices, constants, fits over too few prompts, each with the reason
      it has no interval (`no_interval`); `nan` = NaN, nothing measured, with its reason.
    A NaN scalar carries the reason given with it (`nan_reasons`); one given none is "unexplained" (a defect).

    Also: `heads` (per-head arrays [layer, head, ...], drawn as heatmaps), `raw` (other arrays saved with the
    record, e.g. generated ids; the record's npz keeps heads, raw and samples apart, `record.RecordArrays`),
    `histograms` (W&B histograms), `bars` ({chart: {label: value}} bar charts).
    `part` keeps a sample that only serves another one (e.g. one side of a difference) without reporting it.
    A composite sample (`of=` other keys) is evaluated where its parts are: results of a family's steps are
    merged with `update`, and the job merges the families.
    """

    def __init__(self) -> None:
        self.samples: dict[str, Sample] = {}  # scalar key (or part) -> its per-prompt sample
        self.values: dict[str, float] = {}  # scalars that are not statistics over prompts
        self.no_interval: dict[str, str] = {}  # value key -> why it has no bootstrap interval
        self.heads: dict[str, np.ndarray] = {}
        self.raw: dict[str, np.ndarray] = {}
        self.histograms: dict[str, np.ndarray] = {}
        self.bars: dict[str, dict[str, float]] = {}
        self._reasons: dict[str, str | None] = {}  # key -> the reason to record if it is NaN
        self._order: dict[str, None] = {}  # reported keys in the order given
        self._parts: set[str] = set()
        self._scalars: dict[str, float] | None = None

    def stat(self, key: str, sample: Sample, nan_reason: str | None) -> None:
        """Report `key` as the full-sample statistic of `sample`; `nan_reason` is recorded if it is NaN (None:
        it cannot be NaN, so a NaN is flagged unexplained)."""
        self._forget(key)
        self.samples[key] = sample
        self._keep(key, nan_reason)

    def part(self, key: str, sample: Sample) -> None:
        """Keep `sample` (saved with the record) for other samples to name (`of=`), without reporting it."""
        self.samples[key] = sample
        self._parts.add(key)
        self._scalars = None

    def value(self, key: str, value: float, no_interval: str, nan_reason: str | None = None) -> None:
        """Report `key` = `value`, which is not a statistic over prompts: `no_interval` says what it is instead
        (a count of ..., a layer index, ...); `nan_reason` is recorded if it is NaN."""
        self._forget(key)
        self.values[key] = float(value)
        self.no_interval[key] = no_interval
        self._keep(key, nan_reason)

    def nan(self, key: str, reason: str) -> None:
        """Report `key` as NaN with its reason: nothing was measured, so there is nothing to resample."""
        self.value(key, math.nan, "NaN at this checkpoint, nothing to resample (its reason is in nan_reasons)", reason)

    def _forget(self, key: str) -> None:
        self.samples.pop(key, None)
        self.values.pop(key, None)
        self.no_interval.pop(key, None)
        self._parts.discard(key)

    def _keep(self, key: str, nan_reason: str | None) -> None:
        self._reasons[key] = nan_reason or None
        self._order[key] = None
        self._scalars = None

    @property
    def scalars(self) -> dict[str, float]:
        """{key: value}: the full-sample statistic of each reported sample and each value, in the order given
        (computed once until the next change)."""
        if self._scalars is None:
            reported = {k: s for k, s in self.samples.items() if k not in self._parts}
            stats = full_statistics(self.samples) if reported else {}
            self._scalars = {k: stats.get(k, math.nan) if k in reported else self.values[k] for k in self._order}
        return self._scalars

    @property
    def nan_reasons(self) -> dict[str, str]:
        """{key: why it is not a finite number} for every non-finite scalar (UNEXPLAINED when none was given)."""
        return {k: self._reasons.get(k) or UNEXPLAINED for k, v in self.scalars.items() if not math.isfinite(v)}

    def unexplained_nans(self) -> list[str]:
        """Scalars that are not finite and carry no reason (a defect of the family that made them)."""
        return sorted(k for k, v in self.scalars.items() if not math.isfinite(v) and not self._reasons.get(k))

    def explain(self, key: str, reason: str) -> None:
        """Give `key` a reason after the fact (the job marks a family's unexplained NaNs)."""
        self._reasons[key] = reason

    @property
    def arrays(self) -> dict[str, np.ndarray]:
        """`heads` under its old name (report/tracking.py reads it)."""
        return self.heads

    def update(self, other: FamilyResult) -> None:
        """Add everything `other` holds (its keys win)."""
        for key in other._order:
            self._forget(key)
        for name in ("samples", "values", "no_interval", "heads", "raw", "histograms", "bars", "_reasons", "_order"):
            getattr(self, name).update(getattr(other, name))
        self._parts |= other._parts
        self._scalars = None

    def intervals(self, settings) -> Intervals:
        """Bootstrap intervals of the reported statistics (`ci` {key: [low, high]}), why the NaN ones are NaN and
        the method of each (`intervals.checked_intervals`); `settings` = config `report.bootstrap`."""
        return record_intervals(self.samples, self.scalars, settings)


@dataclass
class JobContext:
    """What a family's `measure` gets: the loaded checkpoint, its probes, the memory budget, and a cache shared
    by families.

    `rows(pass)` is how many rows a batched pass runs per call: the largest that fits the memory budget
    (`ckptstudy.measure.budget`), capped by the pass's configured size; a cap the budget lowers is warned about
    once per job (`warnings`, which the job copies into the record). `shared` lets one family reuse another's
    work at the same checkpoint (e.g. greedy generations), keyed by a name both agree on; families never load
    models, log or touch files themselves.
    """

    model: object
    tokenizer: object
    probes: object
    batch_size: int | None  # the cap of rows per call (config `batch_size`; None = the memory budget alone)
    seed: int  # config `seed`
    loops: LoopRule  # the one definition of a natural loop (config `loops`)
    natural_new_tokens: int  # length of the natural greedy continuations (config `loops.new_tokens`)
    budget: MemoryBudget | None = None  # None = `memory_budget=auto`, resolved at the first `rows`
    loaded_bytes: int | None = None  # bytes per weight as loaded (None: as now); a family cast wider holds more
    meter: Meter | None = None  # measures the shared computations apart from the family that triggers them
    shared: dict = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    @classmethod
    def from_config(cls, cfg, model, tokenizer, probes, budget: MemoryBudget | None = None) -> JobContext:
        """The context of one job under a composed config (batch size, seed, the `loops` rule and length)."""
        loops = cfg.loops
        return cls(
            model=model,
            tokenizer=tokenizer,
            probes=probes,
            batch_size=cfg.batch_size,
            seed=cfg.seed,
            loops=LoopRule(loops.definition, loops.min_period, loops.max_period, loops.min_copies),
            natural_new_tokens=loops.new_tokens,
            budget=budget,
            loaded_bytes=next(model.parameters()).element_size(),
        )

    @property
    def device(self):
        return next(self.model.parameters()).device

    @property
    def shape(self) -> Shape:
        """The loaded model's dimensions (`cost.Shape` of its config and architecture)."""
        family = arch.of(self.model)
        return Shape.of(self.model.config, family.mlp_matrices, family.learned_positions)

    @property
    def dtype_bytes(self) -> int:
        return next(self.model.parameters()).element_size()

    @property
    def context_length(self) -> int:
        """The longest input the model takes (its max_position_embeddings)."""
        return int(self.model.config.max_position_embeddings)

    def rows(self, p: Pass) -> int:
        """Rows per call of pass `p` (`budget.call_rows`); warns once per pass when the budget lowers its cap.
        While a family computes in a wider dtype than the weights were loaded in (`precision.computing_in`), the
        wider copy of the weights comes out of the budget."""
        if self.budget is None:
            self.budget = resolve_budget("auto", str(self.device), 0)
        shape, nbytes = self.shape, self.dtype_bytes
        available = self.budget.bytes - upcast_bytes(shape.params, self.loaded_bytes or nbytes, nbytes)
        rows = call_rows(p, shape, available, nbytes)
        why = lowered(p, rows, shape, available, nbytes)
        if why and f"memory budget: {why}" not in self.warnings:
            log.warning("memory budget: %s", why)
            self.warnings.append(f"memory budget: {why}")
        return rows

    def room_after(self, prompts, minimum: int, probe: str) -> int:
        """Tokens left in the model's context after `prompts` [n, len]; refused below `minimum`."""
        room = self.context_length - prompts.shape[1]
        if room < minimum:
            raise ValueError(
                f"probes.{probe} prompts ({prompts.shape[1]} tokens) leave {room} of the model's "
                f"{self.context_length}-token context to generate in (need {minimum}); shorten probes.{probe}"
            )
        return room

    def natural_loops(self) -> NaturalLoops:
        """Greedy continuations of the `natural` probe (clipped to the context) and their loops, computed
        once per checkpoint with the job's one loop rule and shared by every family."""
        prompts = self.probes.natural
        tokens = min(self.natural_new_tokens, self.room_after(prompts, 4, "natural"))

        def generate() -> NaturalLoops:
            described = natural_generation_pass(len(prompts), prompts.shape[1], tokens, self.shape, self.batch_size)
            rows = self.rows(described)
            return natural_loops(self.model, prompts, tokens, self.loops, self.tokenizer.pad_token_id or 0, rows)

        return self.reuse("natural_loops", generate, label="natural generation (shared)")

    def reuse(self, key: str, compute, label: str | None = None):
        """`shared[key]`, computed once with `compute()` when absent (measured apart as `label`, with a meter)."""
        if key not in self.shared:
            with self.meter.part(label or key) if self.meter else nullcontext():
                self.shared[key] = compute()
        return self.shared[key]


def describe_passes(metrics_cfg, sizes: ProbeSizes, shape: Shape) -> tuple[dict[str, list[Pass]], list[str]]:
    """Every pass of one job by family, as each family describes them (`passes` next to its `measure`), at the
    probe `sizes` on a model of `shape`; a pass several families share is listed once, under "<shared> (shared)",
    first. Also the enabled families that describe no passes. `ckptstudy-plan` and the job's budget check."""
    shared: dict[str, list[Pass]] = {}
    own: dict[str, list[Pass]] = {}
    undescribed = []
    for family, family_cfg in metrics_cfg.items():
        fn, params = check_family(family, OmegaConf.to_container(family_cfg, resolve=True), shape)
        describe = getattr(inspect.getmodule(fn), "passes", None)
        if describe is None:
            undescribed.append(family)
        own[family] = []
        for p in describe(sizes, shape, **params) if describe else []:
            if p.shared is None:
                own[family].append(p)
            elif all(q.what != p.what for q in shared.setdefault(f"{p.shared} (shared)", [])):
                shared[f"{p.shared} (shared)"].append(p)
    return {**shared, **own}, undescribed


def family_compute_bytes(metrics_cfg, loaded_bytes: int) -> dict[str, int]:
    """{family: bytes per value it computes in} on a model loaded at `loaded_bytes` (`precision.compute_bytes`):
    the job's budget check and `ckptstudy-plan` fit each family's passes at its own width."""
    out = {}
    for family, family_cfg in metrics_cfg.items():
        fn, _ = check_family(family, OmegaConf.to_container(family_cfg, resolve=True))
        out[family] = compute_bytes(inspect.getmodule(fn), loaded_bytes)
    return out

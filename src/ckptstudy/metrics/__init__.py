"""Metric families. Each module holds pure tensor functions plus one `measure(ctx, *, **params)` entry named by
`_target_` in conf/metrics/<family>.yaml (parameters annotated with their ranges, `ckptstudy.params`; values
only in the yaml), and `passes(sizes, shape, **params)` describing its forward passes (`ckptstudy.measure.cost`).
A family returns a `FamilyResult`; README "How to add a metric family" has the template."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ckptstudy.measure.cycles import LoopRule
from ckptstudy.measure.generation import NaturalLoops, natural_loops
from ckptstudy.stats.bootstrap import Sample, encode, full_statistics
from ckptstudy.stats.intervals import Intervals, record_intervals

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
    record, e.g. generated ids), `histograms` (W&B histograms), `bars` ({chart: {label: value}} bar charts).
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

    def saved_arrays(self) -> dict[str, np.ndarray]:
        """Every array the record's npz holds: the per-head arrays, the raw data and the samples
        (`bootstrap/<key>/...`, so intervals are recomputed from the record alone)."""
        out = {**self.heads, **self.raw}
        for key, sample in self.samples.items():
            out.update(encode(key, sample))
        return out

    def intervals(self, settings) -> Intervals:
        """Bootstrap intervals of the reported statistics (`ci` {key: [low, high]}), why the NaN ones are NaN and
        the method of each (`intervals.checked_intervals`); `settings` = config `report.bootstrap`."""
        return record_intervals(self.samples, self.scalars, settings)


@dataclass
class JobContext:
    """What a family's `measure` gets: the loaded checkpoint, its probes, and a cache shared by families.

    `shared` lets one family reuse another's work at the same checkpoint (e.g. greedy generations),
    keyed by a name both agree on; families never load models, log or touch files themselves.
    """

    model: object
    tokenizer: object
    probes: object
    batch_size: int  # prompts per forward pass (config `batch_size`)
    seed: int  # config `seed`
    loops: LoopRule  # the one definition of a natural loop (config `loops`)
    natural_new_tokens: int  # length of the natural greedy continuations (config `loops.new_tokens`)
    shared: dict = field(default_factory=dict)

    @classmethod
    def from_config(cls, cfg, model, tokenizer, probes) -> JobContext:
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
        )

    @property
    def device(self):
        return next(self.model.parameters()).device

    @property
    def context_length(self) -> int:
        """The longest input the model takes (its max_position_embeddings)."""
        return int(self.model.config.max_position_embeddings)

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
        return self.reuse(
            "natural_loops",
            lambda: natural_loops(
                self.model, prompts, tokens, self.loops, self.tokenizer.pad_token_id or 0, self.batch_size
            ),
        )

    def reuse(self, key: str, compute):
        """`shared[key]`, computed once with `compute()` when absent."""
        if key not in self.shared:
            self.shared[key] = compute()
        return self.shared[key]

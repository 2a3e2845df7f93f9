"""Metric families. Each module holds pure tensor functions plus one `measure(ctx, **params)` entry
named by `_target_` in conf/metrics/<family>.yaml; `run_family` checks the parameters and calls it."""

from __future__ import annotations

import inspect
import math
import re
from dataclasses import dataclass, field

import numpy as np

from ckptstudy.measure.cycles import LoopRule
from ckptstudy.measure.generation import NaturalLoops, natural_loops
from ckptstudy.stats.bootstrap import Sample, encode, record_intervals


@dataclass
class FamilyResult:
    """What one family measured at one checkpoint, every key named `family/name`.

    scalars: flat numbers (trajectories.csv columns); arrays: per-head arrays (layer x head [x ...]),
    saved with the record and drawn as heatmaps; raw: other arrays saved with the record (e.g.
    generated ids) for re-analysis; histograms: value samples logged as W&B histograms; bars: small
    {label: value} charts logged as W&B bar charts; samples: the per-prompt values a scalar is a statistic
    of (`ckptstudy.stats.bootstrap.Sample`), for its bootstrap interval; `add_sample` also puts them in `raw`,
    so they are saved with the record and intervals can be recomputed without the model.
    """

    scalars: dict[str, float] = field(default_factory=dict)
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    raw: dict[str, np.ndarray] = field(default_factory=dict)
    histograms: dict[str, np.ndarray] = field(default_factory=dict)
    bars: dict[str, dict[str, float]] = field(default_factory=dict)  # bar charts: {chart: {label: value}}
    nan_reasons: dict[str, str] = field(default_factory=dict)  # why a scalar is not a finite number
    samples: dict[str, Sample] = field(default_factory=dict)  # scalar key -> its per-prompt sample
    no_interval: dict[str, str] = field(default_factory=dict)  # scalar key -> why it has no interval

    def update(self, other: FamilyResult) -> None:
        for name in ("scalars", "arrays", "raw", "histograms", "bars", "nan_reasons", "samples", "no_interval"):
            getattr(self, name).update(getattr(other, name))

    def add_sample(self, key: str, sample: Sample) -> None:
        """Keep the per-prompt sample of scalar `key` (statistic of it = the scalar) for its bootstrap
        interval; its arrays go into `raw` (saved with the record)."""
        self.samples[key] = sample
        stale = [name for name in self.raw if name.startswith(f"bootstrap/{key}/")]  # a sample added again
        for name in stale:
            del self.raw[name]
        self.raw.update(encode(key, sample))

    def intervals(self, settings) -> tuple[dict[str, list[float]], dict[str, str]]:
        """Bootstrap intervals {key: [low, high]} of the scalars that have a sample, and why the NaN ones are
        NaN (`bootstrap.checked_intervals`); `settings` = config `report.bootstrap`."""
        return record_intervals(self, settings)

    def set(self, key: str, value: float, reason_if_nan: str) -> None:
        """Store a scalar; when it is not finite, store why (`reason_if_nan`) beside it."""
        self.scalars[key] = float(value)
        if not math.isfinite(self.scalars[key]):
            self.nan_reasons[key] = reason_if_nan
        else:
            self.nan_reasons.pop(key, None)

    def nan(self, key: str, reason: str) -> None:
        """Store NaN for `key` with its reason."""
        self.scalars[key] = math.nan
        self.nan_reasons[key] = reason

    def without_interval(self, declared: dict[str, str]) -> dict[str, str]:
        """{key: why it has no bootstrap interval} for every scalar without a sample: the reason of the first
        pattern of `declared` (a family's `NO_INTERVAL`: regular expression -> reason, matched in full) that
        matches the key; for a NaN without a sample, that it is NaN (its reason is in `nan_reasons`); else
        "undeclared: ..." (a defect of the family: a statistic over prompts without an interval, or a key
        missing from its declaration)."""
        out = {}
        for key, value in self.scalars.items():
            if key in self.samples:
                continue
            reason = next((why for pattern, why in declared.items() if re.fullmatch(pattern, key)), None)
            if reason is None and not math.isfinite(value):
                reason = "NaN at this checkpoint, nothing to resample (its reason is in nan_reasons)"
            out[key] = reason or "undeclared: no per-prompt sample and no reason in the family's NO_INTERVAL"
        return out

    def unexplained_nans(self) -> list[str]:
        """Scalars that are not finite and carry no reason (a defect of the family that made them)."""
        return sorted(k for k, v in self.scalars.items() if not math.isfinite(v) and k not in self.nan_reasons)


class MetricConfigError(ValueError):
    """A metric family's config names an unknown parameter or target."""


def family_function(name: str, family_cfg: dict):
    """The `measure` function a family config names, after checking its parameters against it."""
    from hydra.utils import get_method

    params = {k: v for k, v in family_cfg.items() if k != "_target_"}
    target = family_cfg.get("_target_")
    if not target:
        raise MetricConfigError(f"metrics.{name} has no _target_ (the measure function to call)")
    try:
        fn = get_method(target)
    except Exception as err:
        raise MetricConfigError(f"metrics.{name}._target_={target!r} cannot be imported: {err}") from err
    valid = [p for p in inspect.signature(fn).parameters if p != "ctx"]
    unknown = sorted(set(params) - set(valid))
    if unknown:
        raise MetricConfigError(f"metrics.{name}: unknown parameter(s) {unknown}; valid parameters: {', '.join(valid)}")
    return fn, params


@dataclass
class JobContext:
    """What a family's `measure` gets: the loaded checkpoint, its probes, and a cache shared by families.

    `shared` lets one family reuse another's work at the same checkpoint (e.g. greedy generations),
    keyed by a name both agree on; families never load models, log or touch files themselves.
    """

    model: object
    tokenizer: object
    probes: object
    batch_size: int = 16
    seed: int = 0
    loops: LoopRule = field(default_factory=LoopRule)  # the one definition of a natural loop (config `loops`)
    natural_new_tokens: int = 1000  # length of the natural greedy continuations (config `loops.new_tokens`)
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

"""`ckptstudy-refine`: locate a metric's onset to two adjacent checkpoints while measuring few of them.

A full sweep of Pythia-1.4B is 154 checkpoints of ~2.8 GB each; the onset of one metric only needs the
checkpoints that narrow it down. From the study's records (`results.load_records`), for each model:

1. the onset is `onsets.onset_step` over the measured checkpoints (the summary's rule, with the study's
   `report.onset_fraction` and any other `report.onset_<name>` setting that function takes), and its
   bracket is the pair of consecutive measured checkpoints (low, high] that holds it;
2. while available checkpoints (`checkpoints.available_steps`) lie strictly inside the bracket, the
   middle one **by checkpoint index** is measured through `ckptstudy --multirun` (the configured Hydra
   launcher: basic, joblib, submitit_slurm ...), the records are read again and the bracket recomputed;
3. it stops when the bracket is two adjacent available checkpoints.

Why index space and not log-step space: the cost is one download and one job per checkpoint, and the
answer is a pair of adjacent checkpoints, so the quantity to halve is the number of candidate
checkpoints. The middle by index halves it whatever the spacing, so k candidates take at most
ceil(log2(k + 1)) jobs (Pythia's 152 checkpoints between step 0 and 143000: 8). Log-step midpoints
would be lopsided on Pythia's schedule, log-spaced to 512 then linear every 1000 steps: between
1000 and 143000 the log midpoint is step ~12000, the 11th of 141 candidates.

The bracket is recomputed from every measurement each round, so when a new checkpoint moves the
metric's extreme (and so the threshold), refinement continues in the new bracket; each round measures
a checkpoint not measured before, so it always ends. With a persistence rule (`report.onset_persist`
p > 1: the crossing must hold for p consecutive checkpoints) sparse measurements cannot confirm a
change seen at one measured checkpoint only, so every place where the values cross the plain rule's
level is settled first and each settled bracket is followed by its p - 1 next checkpoints (see
`plan_refinement`); on the micro suite that is one checkpoint more than plain bisection. What
bisection cannot see: a crossing inside a gap between two measured checkpoints that are both on the
same side of the threshold (a one-checkpoint spike there, which a persistence rule ignores anyway).

Existing records are reused: a checkpoint whose record is current for this measurement config is not
launched again (and the launched jobs skip any record that is current). Records made with another
config are ignored and said so: pass the overrides of the sweep that made them. The launches run
without the end-of-sweep callback; refine builds the study summary once, at the end.
"""

from __future__ import annotations

import argparse
import inspect
import itertools
import math
import subprocess
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
from omegaconf import DictConfig

from ckptstudy import fingerprint, results
from ckptstudy.config import CONF_DIR, compose_config
from ckptstudy.model import checkpoints
from ckptstudy.model.suite import ensure_suite
from ckptstudy.record import Record
from ckptstudy.report.summary import summarize
from ckptstudy.stats import onsets
from ckptstudy.sweeps import take_override

START = "start"  # fewer than two values: measure the first and the last checkpoint
REFINE = "refine"  # checkpoints remain inside the bracket: measure `next_steps`
LOCATED = "located"  # the bracket cannot be narrowed further
NO_CHANGE = "no change"  # the metric does not change: there is no onset
UNLOCATED = "unlocated"  # no bracket can be formed (too few values, onset at the first measured step)


class RefineError(RuntimeError):
    """Refinement cannot go on (unknown metric, a launch that failed as a whole); the message says why."""


@dataclass
class Plan:
    """What the measured values say about one model's onset and what to measure next."""

    status: str
    onset: float = math.nan
    bracket: tuple[int, int] | None = None
    inside: list[int] = field(default_factory=list)  # available checkpoints strictly inside the bracket
    next_steps: list[int] = field(default_factory=list)
    message: str = ""

    @property
    def adjacent(self) -> bool:
        return self.bracket is not None and not self.inside


def middle_steps(candidates: Sequence[int], per_round: int = 1) -> list[int]:
    """`per_round` checkpoints that split `candidates` (sorted) into per_round + 1 parts of near-equal
    size by index; per_round = 1 is the lower middle, candidates[(n - 1) // 2]."""
    n = len(candidates)
    if per_round >= n:
        return list(candidates)
    picks = {j * (n + 1) // (per_round + 1) - 1 for j in range(1, per_round + 1)}
    return [candidates[i] for i in sorted(picks)]


def onset_bracket(steps: Sequence[int], onset: float) -> tuple[int, int] | None:
    """The consecutive measured steps (low, high) with low < onset <= high; None when the onset is at or
    before the first step (nothing measured below it). A tolerance absorbs the log/exp round trip."""
    ordered = sorted(steps)
    for low, high in itertools.pairwise(ordered):
        if high >= onset - 1e-9 * max(1.0, abs(onset)):
            return (low, high) if onset > low else None
    return None


def plan_refinement(
    measured: Mapping[int, float],
    available: Sequence[int],
    per_round: int = 1,
    unusable: Iterable[int] = (),
    metric: str = "metric",
    **onset_options,
) -> Plan:
    """The next checkpoints to measure to narrow the onset of one model's metric (pure).

    `measured`: step -> value of every checkpoint measured (NaN when measured without a value);
    `available`: every checkpoint step of the model; `unusable`: steps that cannot be measured (their
    job failed in this refinement); `onset_options`: keyword arguments of `onsets.onset_step`.

    With a persistence rule (`persist` p > 1: a crossing counts when it holds for p consecutive
    checkpoints), sparse measurements cannot confirm a change seen at one measured checkpoint only (the
    last one, typically), so the rule may put the onset elsewhere until they are dense there. Hence:
    (1) every place where the measured values cross the plain rule's level (the value at the onset with
    the function's other defaults, p = 1) is settled in step order: bisected to adjacent checkpoints,
    then the p - 1 checkpoints after it measured (a later crossing can still change the held extreme,
    hence the threshold); (2) then the configured rule's bracket, the same way. "Holds for p consecutive
    checkpoints" is then judged on consecutive checkpoints wherever it matters, as a full sweep judges it.
    """
    available = sorted({int(s) for s in available})
    finite = {int(s): float(v) for s, v in measured.items() if v is not None and math.isfinite(float(v))}
    done = {int(s) for s in measured} | {int(s) for s in unusable}
    plan = bracket_plan(finite, done, available, per_round, metric, onset_options)
    persist = int(onset_options.get("persist", 1))
    if persist <= 1 or plan.status == START:
        return plan
    plain = {k: v for k, v in onset_options.items() if k == "fraction"}
    level = crossing_level(finite, plain)
    for pair in crossings(finite, level):
        todo = steps_to_settle(pair, done, available, per_round, persist)
        if todo:
            why = (
                f"the metric crosses {level:.4g} in ({pair[0]}, {pair[1]}]: measuring {todo} to judge whether "
                f"it holds for {persist} consecutive checkpoints"
            )
            return replace(plan, status=REFINE, next_steps=todo, message=why)
    todo = steps_to_settle(plan.bracket, done, available, per_round, persist) if plan.bracket else []
    if todo:
        low, high = plan.bracket
        why = f"onset in ({low}, {high}]: measuring {todo}"
        if not plan.next_steps:
            why += f" to check it holds for {persist} consecutive checkpoints"
        return replace(plan, status=REFINE, next_steps=todo, message=why)
    return plan


def crossing_level(finite: dict[int, float], options: dict) -> float | None:
    """The value the metric has at its onset under `options` (`onsets.onset_step`'s result read back on
    the trajectory interpolated in log(1 + step), the rule's own interpolation); None without an onset."""
    steps = sorted(finite)
    onset = float(onsets.onset_step(steps, [finite[s] for s in steps], **options))
    bracket = onset_bracket(steps, onset) if not math.isnan(onset) else None
    if bracket is None:
        return None
    (a, b), (x, xa, xb) = bracket, np.log1p([onset, *bracket])
    t = min(1.0, max(0.0, (x - xa) / (xb - xa)))
    return finite[a] + t * (finite[b] - finite[a])


def crossings(finite: dict[int, float], level: float | None) -> list[tuple[int, int]]:
    """Consecutive measured pairs (a, b) whose values cross `level` (a strictly on one side, b on the
    other side or at it), in step order."""
    if level is None:
        return []
    eps = 1e-12 * (1.0 + abs(level))

    def side(value: float) -> int:
        return 0 if abs(value - level) <= eps else (1 if value > level else -1)

    steps = sorted(finite)
    return [(a, b) for a, b in itertools.pairwise(steps) if side(finite[a]) != 0 and side(finite[b]) != side(finite[a])]


def steps_to_settle(
    bracket: tuple[int, int], done: set[int], available: list[int], per_round: int, persist: int
) -> list[int]:
    """What a bracket still needs before a persistence rule can judge it as a full sweep would: its
    middle checkpoint(s) while it has unmeasured ones inside, then the persist - 1 checkpoints after it."""
    low, high = bracket
    inside = [s for s in available if low < s < high and s not in done]
    if inside:
        return middle_steps(inside, per_round)
    after = [s for s in available if s > high][: persist - 1]
    return [s for s in after if s not in done]


def bracket_plan(
    finite: dict[int, float], done: set[int], available: list[int], per_round: int, metric: str, options: dict
) -> Plan:
    """The onset bracket of the finite values under one onset rule, and its middle checkpoint(s)."""
    if len(finite) < 2:
        ends = [s for s in dict.fromkeys((available[0], available[-1])) if s not in done]
        if ends:
            return Plan(START, next_steps=ends, message=f"fewer than 2 values of {metric}: measuring steps {ends}")
        return Plan(UNLOCATED, message=f"fewer than 2 checkpoints have a value of {metric}: no onset to locate")
    steps = sorted(finite)
    onset = float(onsets.onset_step(steps, [finite[s] for s in steps], **options))
    if math.isnan(onset):
        return Plan(
            NO_CHANGE,
            message=f"no onset: {metric} does not change over the {len(steps)} measured checkpoints "
            f"(steps {steps[0]}..{steps[-1]}); nothing to refine",
        )
    bracket = onset_bracket(steps, onset)
    if bracket is None:
        return Plan(UNLOCATED, onset, message=f"the onset of {metric} is at the first measured step {steps[0]}")
    low, high = bracket
    inside = [s for s in available if low < s < high]
    candidates = [s for s in inside if s not in done]
    if candidates:
        picks = middle_steps(candidates, per_round)
        return Plan(
            REFINE,
            onset,
            bracket,
            inside,
            picks,
            f"onset in ({low}, {high}], {len(candidates)} checkpoint(s) between: measuring {picks}",
        )
    if not inside:
        return Plan(LOCATED, onset, bracket, inside, message=f"onset in ({low}, {high}]: adjacent checkpoints")
    return Plan(
        LOCATED,
        onset,
        bracket,
        inside,
        message=f"onset in ({low}, {high}]; the {len(inside)} checkpoint(s) between, {inside}, have no value "
        f"of {metric} (failed or NaN)",
    )


def onset_options(report_cfg) -> dict:
    """Keyword arguments of `onsets.onset_step` from the `report` config: `onset_fraction` -> fraction, and
    every other `onset_<name>` setting whose <name> the function takes, so refine applies the very rule
    the summary does."""
    parameters = inspect.signature(onsets.onset_step).parameters
    return {
        key[len("onset_") :]: value
        for key, value in report_cfg.items()
        if key.startswith("onset_") and key[len("onset_") :] in parameters
    }


def is_current(record: Record, cfg: DictConfig) -> bool:
    """Whether a finished record stands for this measurement config (the jobs' reuse rule, by the
    record's format, identity, revision and definitions; the files' fingerprint is left to the job)."""
    try:
        step = int(record.identity.step)
        source = checkpoints.source_for(cfg.model, step)
    except (KeyError, TypeError, ValueError):
        return False
    current = fingerprint.identify(cfg)
    current.identity.step, current.identity.revision = step, source.describe()
    return fingerprint.stale_reason(record, current, force=False) is None


@dataclass
class Measured:
    """One model's measurements of a metric, read from the study's records."""

    values: dict[int, float]  # step -> value (NaN when the record has none)
    other_config: list[int]  # steps whose record was made with another config (ignored)
    keys: set[str]  # every metric key of the current records


def read_measured(cfg: DictConfig, metric: str) -> Measured:
    values, other, keys = {}, [], set()
    for record in results.load_records(cfg.paths.root, cfg.study):
        if record.model != checkpoints.run_name(cfg.model):
            continue
        if is_current(record, cfg):
            found = record.scalars.metrics.get(metric)
            values[record.step] = math.nan if found is None else float(found)
            keys.update(record.scalars.metrics)
        elif record.ok:
            other.append(record.step)
    return Measured(values, sorted(other), keys)


def launch_command(model_choice: str | None, steps: Sequence[int], overrides: Sequence[str]) -> list[str]:
    """`ckptstudy --multirun model=<m> step=<a>,<b> <overrides>` with this Python, without the
    end-of-sweep callback (refine summarizes once at the end)."""
    model = [f"model={model_choice}"] if model_choice else []
    step = "step=" + ",".join(str(s) for s in steps)
    return [sys.executable, "-m", "ckptstudy", "--multirun", *model, step, *overrides, "~hydra.callbacks.trajectories"]


def run_command(command: list[str]) -> int:
    return subprocess.run(command, check=False).returncode


@dataclass
class Outcome:
    model: str
    plan: Plan
    measured: int  # checkpoints with a current record for this config
    available: int  # checkpoints the model has
    launched: list[int]
    failed: list[int]
    rounds: int


@dataclass
class ModelRefinement:
    """One model's refinement in progress: its config, checkpoints and onset rule, what was launched and
    failed, and the latest plan."""

    choice: str | None  # the `model=` choice (None = the config's default model)
    cfg: DictConfig
    available: list[int]
    options: dict  # onset rule (`onset_options`)
    launched: list[int] = field(default_factory=list)
    failed: set[int] = field(default_factory=set)
    rounds: int = 0
    plan: Plan | None = None

    def outcome(self, metric: str) -> Outcome:
        name, measured = checkpoints.run_name(self.cfg.model), len(read_measured(self.cfg, metric).values)
        return Outcome(name, self.plan, measured, len(self.available), self.launched, sorted(self.failed), self.rounds)


def start_refinement(choice: str | None, overrides: list[str], metric: str) -> ModelRefinement:
    """Compose the model's config and say what is measured already (refusing a metric its records lack)."""
    cfg = compose_config([*([f"model={choice}"] if choice else []), *overrides])
    state = ModelRefinement(choice, cfg, checkpoints.available_steps(cfg.model), onset_options(cfg.report))
    describe_start(cfg, metric, read_measured(cfg, metric), len(state.available))
    return state


def launch_round(state: ModelRefinement, overrides: list[str], metric: str, run) -> None:
    """Measure the plan's next steps through `ckptstudy --multirun` and note the steps that gave no record."""
    cfg, steps = state.cfg, state.plan.next_steps
    state.rounds += 1
    print(f"[refine] {checkpoints.run_name(cfg.model)} round {state.rounds}: {state.plan.message}", flush=True)
    if state.rounds == 1:
        ensure_suite(cfg.model)  # what the multirun callback would do (the launches skip it)
    command = launch_command(state.choice, steps, overrides)
    code = run(command)
    if code != 0:
        raise RefineError(f"`{' '.join(command)}` exited with code {code}")
    state.launched.extend(steps)
    values = read_measured(cfg, metric).values
    for step in steps:
        if step not in values:
            state.failed.add(step)
            print(
                f"[refine] {checkpoints.run_name(cfg.model)} step {step}: no usable record ({failure_note(cfg, step)})"
            )


def refine(
    overrides: list[str],
    metric: str,
    models: list[str | None],
    per_round: int = 1,
    dry_run: bool = False,
    run=None,
) -> list[Outcome]:
    """Bisect every model's onset bracket of `metric` until adjacent; returns one outcome per model.

    `models` are `model=` choices (None = the config's default model); `overrides` go to every launch;
    `run(command) -> exit code` launches (default `run_command`, a subprocess).
    """
    run = run or run_command
    states = [start_refinement(choice, overrides, metric) for choice in dict.fromkeys(models)]
    while True:
        for state in states:
            values = read_measured(state.cfg, metric).values
            state.plan = plan_refinement(values, state.available, per_round, state.failed, metric, **state.options)
        todo = [state for state in states if state.plan.next_steps]
        if not todo or dry_run:
            break
        for state in todo:
            launch_round(state, overrides, metric, run)
    return [state.outcome(metric) for state in states]


def describe_start(cfg: DictConfig, metric: str, measured: Measured, n_available: int) -> None:
    print(
        f"[refine] {checkpoints.run_name(cfg.model)} {metric}: {len(measured.values)} of {n_available} checkpoints "
        f"measured in study {cfg.study!r} (steps {sorted(measured.values)})",
        flush=True,
    )
    if measured.values and metric not in measured.keys:
        raise RefineError(
            f"metric {metric!r} is not in the records of {checkpoints.run_name(cfg.model)} in study {cfg.study!r}; "
            f"their metrics: {', '.join(sorted(measured.keys))}"
        )
    if measured.other_config:
        print(
            f"[refine] {checkpoints.run_name(cfg.model)}: {len(measured.other_config)} record(s) made with another "
            f"measurement config are not used (steps {measured.other_config}); pass the overrides of the sweep that "
            "made them",
            flush=True,
        )


def failure_note(cfg: DictConfig, step: int) -> str:
    record = results.read_record(results.record_path(cfg.paths.root, cfg.study, checkpoints.run_name(cfg.model), step))
    if record is None:
        return "no record written"
    error = record.outcome.error or {}
    return f"status {record.outcome.status}: {error.get('type', '')} {error.get('message', '')}".strip()


def report(outcomes: list[Outcome], metric: str) -> None:
    """The final bracket of every model and how many checkpoints it took."""
    print(f"\n== refine {metric} (bisection by checkpoint index) ==")
    for out in outcomes:
        plan = out.plan
        if plan.bracket is not None:
            low, high = plan.bracket
            how = "adjacent checkpoints" if plan.adjacent else f"not adjacent: {plan.message}"
            print(f"{out.model}: onset between step {low} and step {high} ({how}), interpolated ~step {plan.onset:.0f}")
        else:
            print(f"{out.model}: {plan.message}")
        print(
            f"{out.model}: measured {out.measured} of {out.available} checkpoints "
            f"({len(out.launched)} launched by refine in {out.rounds} round(s){failed_text(out)})"
        )


def failed_text(out: Outcome) -> str:
    return f"; failed: {out.failed}" if out.failed else ""


def models_to_refine(model_value: str | None, overrides: list[str]) -> list[str | None]:
    """The `model=` choices to refine: those given (a comma list is several), else every model with
    records in the study (each must have conf/model/<name>.yaml), else the config's default model."""
    if model_value:
        return [m.strip() for m in model_value.split(",") if m.strip()]
    cfg = compose_config(overrides)
    names = sorted({r.model for r in results.load_records(cfg.paths.root, cfg.study) if r.model})
    unknown = [n for n in names if not (CONF_DIR / "model" / f"{n}.yaml").exists()]
    if unknown:
        raise RefineError(f"records of model(s) {unknown} have no conf/model/<name>.yaml: pass model=<config>")
    return list(names) or [None]


def main(argv: list[str] | None = None) -> None:
    """`ckptstudy-refine study=<name> metric=<key> [overrides]`: locate the onset of <key> to two adjacent
    checkpoints, launching only the checkpoints that bisect its bracket (see the module docstring)."""
    parser = argparse.ArgumentParser(prog="ckptstudy-refine", description=main.__doc__)
    parser.add_argument("overrides", nargs="*", help="metric=<key> and Hydra overrides (those of the sweep)")
    parser.add_argument("--per-round", type=int, default=1, help="checkpoints per round and model (default 1)")
    parser.add_argument("--dry-run", action="store_true", help="print the next round, launch nothing")
    parser.add_argument("--no-summary", action="store_true", help="skip the study summary at the end")
    args = parser.parse_args(argv)
    metric, overrides = take_override(args.overrides, "metric")
    if not metric:
        parser.error("metric=<key> is required, e.g. metric=icl/induction_max")
    if args.per_round < 1:
        parser.error("--per-round must be >= 1")
    step, overrides = take_override(overrides, "step")
    if step is not None:
        print(f"[refine] step={step} ignored: refine chooses the steps")
    model_value, overrides = take_override(overrides, "model")
    try:
        outcomes = refine(overrides, metric, models_to_refine(model_value, overrides), args.per_round, args.dry_run)
    except RefineError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    if args.dry_run:
        for out in outcomes:
            print(f"[refine] {out.model}: {out.plan.message or out.plan.status} (dry run: nothing launched)")
        return
    report(outcomes, metric)
    if not args.no_summary and any(out.launched for out in outcomes):
        first = model_value.split(",")[0] if model_value else None
        summarize(compose_config([*([f"model={first}"] if first else []), *overrides]))
    located = all(out.plan.status == NO_CHANGE or out.plan.adjacent for out in outcomes)
    sys.exit(0 if located else 1)


if __name__ == "__main__":
    main()

"""Verdicts of claims (`claim_spec.Claim`) on the trajectory of one model (or one seed): supported, contradicted or
undetermined, each with its reason and the numbers it rests on. Pure: values, intervals and paired bootstrap
replicates in, verdicts out.

What a verdict may use. An interval that the bootstrap withheld (a `ci_reasons` entry at a checkpoint with a
finite value: too few prompts, undefined in too many resamples) makes the verdict undetermined with that reason,
and so does a NaN value where the test reads a value (with its NaN reason); a trend window and an onset skip
NaN checkpoints (listed) and need a value left. Values without an interval are used only by a method check whose
family declares none (`no_interval`). Derived quantities (the mean over several checkpoints, a difference of
two metrics, a late-minus-early change, an onset) are computed on every paired replicate (replicate r is the
same prompt resample at every checkpoint, `bootstrap.replicates`), and their interval is the percentile interval
of those (`bootstrap.interval`); a single checkpoint's interval is the record's own (Wilson for rates).

Per test kind, for a threshold t (a level's `above` / `below`, a comparison's or trend's margin):
- level, `every`: supported when every selected checkpoint's interval lies on the claimed side of t,
  contradicted when one lies wholly on the other side, else undetermined (an interval spans t);
  `mean`: the same for the interval of the mean over the selected checkpoints;
- comparison: the same for the difference metric - than (`above`) or than - metric (`below`) against the margin;
- trend: the same for the change late mean - early mean (`up`; early - late for `down`) against min_change;
- onset order: the onset rule of `stats.onsets` on the trajectory and on every replicate, each onset compared by
  the checkpoint it is reached by (two onsets between the same two checkpoints are not ordered by the sweep: their
  interpolation is a model); supported when the first metric's onset comes first (`or_same`: or between the same
  checkpoints) in at least `share` of the replicates (a replicate where only it has an onset counts as first),
  contradicted when the other comes first in that share, undetermined otherwise ("the sweep does not resolve the
  order" when the onsets share a pair of checkpoints in more than 1 - share of them), and when either metric has
  no onset within the swept steps or, with a MIN_EFFECT, is never present (its interval never above it: its
  onset would mark noise).
A claim of several tests: `all` is supported when every test is and contradicted when one is; `any` is
supported when one is and contradicted when every one is; otherwise undetermined with the first reason.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ckptstudy.stats.bootstrap import SCALAR_FINITE_SHARE, interval
from ckptstudy.stats.claim_spec import Claim, Test
from ckptstudy.stats.onsets import onset_step, replicate_onsets

SUPPORTED, CONTRADICTED, UNDETERMINED = "supported", "contradicted", "undetermined"
VERDICTS = (SUPPORTED, CONTRADICTED, UNDETERMINED)
PASS, FAIL, SPAN = "pass", "fail", "span"
SHOWN = 3  # checkpoints listed in a reason


@dataclass
class Trajectory:
    """One model's ok checkpoints as a verdict reads them; every mapping is metric -> step -> ..."""

    steps: list[int]  # ascending
    values: dict[str, dict[int, float]]
    intervals: dict[str, dict[int, tuple[float, float]]] = field(default_factory=dict)
    withheld: dict[str, dict[int, str]] = field(default_factory=dict)  # why an interval is NaN (`ci_reasons`)
    replicates: dict[str, dict[int, np.ndarray]] = field(default_factory=dict)  # [R] per checkpoint, paired
    nan_reasons: dict[str, dict[int, str]] = field(default_factory=dict)
    no_interval: dict[str, str] = field(default_factory=dict)  # metric -> why it has no interval (declared)


@dataclass(frozen=True)
class Rule:
    """The onset rule (`report.onset_fraction`, `report.onset_persist`) and the interval level."""

    fraction: float
    persist: int
    level: float


@dataclass
class Outcome:
    """The verdict of one test, why, and what it read: `numbers` (values, intervals, steps) for claims.json and
    `marks` (thresholds, windows, onsets) for its plot."""

    verdict: str
    reason: str
    metrics: list[str]
    steps: list[int] = field(default_factory=list)
    numbers: dict = field(default_factory=dict)
    marks: dict = field(default_factory=dict)


@dataclass
class Verdict:
    """A claim's verdict on one trajectory (`group`: the model, or model and seed)."""

    claim: Claim
    group: str
    verdict: str
    reason: str
    outcomes: list[Outcome]


class _Undecided(Exception):
    """A test cannot be decided: the message is the reason the verdict gives."""


def fmt(value: float) -> str:
    """A number in a reason: 3 significant digits."""
    return "NaN" if value is None or not math.isfinite(value) else f"{value:.3g}"


def _ci(low: float, high: float) -> str:
    return f"[{fmt(low)}, {fmt(high)}]"


def _steps_text(steps: list[int]) -> str:
    if not steps:
        return "no steps"
    return f"step {steps[0]}" if len(steps) == 1 else f"steps {steps[0]}-{steps[-1]} ({len(steps)} checkpoints)"


# --- reading the trajectory -----------------------------------------------------------------------------------


def _require(traj: Trajectory, metric: str) -> None:
    if metric not in traj.values or not any(v is not None for v in traj.values[metric].values()):
        raise _Undecided(f"{metric} is not in the study's records (no configured metric family reports it)")


def _value(traj: Trajectory, metric: str, step: int) -> float:
    value = traj.values.get(metric, {}).get(step)
    return math.nan if value is None else float(value)


def _nan_reason(traj: Trajectory, metric: str, step: int) -> str:
    why = traj.nan_reasons.get(metric, {}).get(step) or "no reason recorded"
    return f"{metric} is NaN at step {step}: {why}"


def _point(traj: Trajectory, metric: str, step: int, method_check: bool = False) -> tuple[float, float, float, bool]:
    """(value, low, high, has an interval) at one checkpoint; a method check on a metric its family declares
    without an interval gets (v, v, v, False)."""
    value = _value(traj, metric, step)
    if not math.isfinite(value):
        raise _Undecided(_nan_reason(traj, metric, step))
    withheld = traj.withheld.get(metric, {}).get(step)
    if withheld:
        raise _Undecided(f"the interval of {metric} at step {step} is withheld: {withheld}")
    low, high = traj.intervals.get(metric, {}).get(step, (math.nan, math.nan))
    if math.isfinite(low) and math.isfinite(high):
        return value, float(low), float(high), True
    declared = traj.no_interval.get(metric)
    if method_check and declared:
        return value, value, value, False
    why = declared or "no per-prompt sample in its record"
    raise _Undecided(f"{metric} has no interval at step {step} ({why})")


def _replicates(traj: Trajectory, metric: str, steps: list[int]) -> np.ndarray:
    """The paired replicates of `metric` at `steps`: [R, len(steps)]."""
    rows = []
    for step in steps:
        reps = traj.replicates.get(metric, {}).get(step)
        if reps is None:
            why = traj.no_interval.get(metric) or "its record has no per-prompt sample"
            raise _Undecided(f"no bootstrap replicates of {metric} at step {step} ({why})")
        rows.append(np.asarray(reps, dtype=float))
    if len({len(r) for r in rows}) != 1:
        raise _Undecided(f"the replicates of {metric} differ in number between steps (records bootstrapped apart)")
    return np.stack(rows, axis=1)


def _derived_interval(reps: np.ndarray, level: float, what: str) -> tuple[float, float]:
    low, high = interval(reps, level, SCALAR_FINITE_SHARE)
    if not math.isfinite(low):
        share = float(np.isfinite(reps).mean()) if len(reps) else 0.0
        raise _Undecided(f"{what} is defined in {share:.0%} of the replicates (< {SCALAR_FINITE_SHARE:.0%})")
    return low, high


def _selected(traj: Trajectory, test: Test) -> list[int]:
    """The checkpoints a level or comparison reads: `steps` [first, last], the `last` k, or every one."""
    if test.steps is not None:
        first, last = test.steps
        chosen = [s for s in traj.steps if first <= s <= last]
        if not chosen:
            raise _Undecided(f"no ok checkpoint in steps {first:g}-{last:g} (swept: {_steps_text(traj.steps)})")
        return chosen
    if test.last is None:
        return list(traj.steps)
    if len(traj.steps) < test.last:
        raise _Undecided(f"too few checkpoints: {len(traj.steps)} ok, the test reads the last {test.last}")
    return traj.steps[-test.last :]


# --- deciding against a threshold -----------------------------------------------------------------------------


def side(low: float, high: float, above: float | None, below: float | None) -> str:
    """PASS when [low, high] lies inside (above, below), FAIL when it lies wholly outside, SPAN otherwise."""
    inside = (above is None or low > above) and (below is None or high < below)
    outside = (above is not None and high < above) or (below is not None and low > below)
    return PASS if inside else FAIL if outside else SPAN


def _bounds_text(above: float | None, below: float | None) -> str:
    parts = [f"{name} {fmt(bound)}" for name, bound in (("above", above), ("below", below)) if bound is not None]
    return " and ".join(parts)


def _slack(low: float, high: float, above: float | None, below: float | None) -> float:
    """How far [low, high] clears the bounds (negative when it does not)."""
    return min((low - above) if above is not None else math.inf, (below - high) if below is not None else math.inf)


def _decide(results: list[tuple[str, str, float]]) -> tuple[str, str]:
    """(verdict, reason) from per-checkpoint (side, text, slack): every PASS supports (the reason lists them, or
    the one closest to the threshold when there are many), one FAIL contradicts (the reason lists the failing
    ones), else the first interval that spans the threshold leaves it undetermined."""
    sides = [side for side, _, _ in results]
    if all(side == PASS for side in sides):
        if len(results) <= SHOWN:
            return SUPPORTED, "; ".join(text for _, text, _ in results)
        closest = min(results, key=lambda r: r[2])
        return SUPPORTED, f"every interval clears it, the closest: {closest[1]}"
    if FAIL in sides:
        failed = [text for side, text, _ in results if side == FAIL]
        more = f" (and {len(failed) - SHOWN} more)" if len(failed) > SHOWN else ""
        return CONTRADICTED, "; ".join(failed[:SHOWN]) + more
    first = next(text for side, text, _ in results if side == SPAN)
    return UNDETERMINED, f"the interval spans the threshold: {first}"


# --- the four kinds -------------------------------------------------------------------------------------------


def _level(traj: Trajectory, test: Test, rule: Rule, method_check: bool) -> Outcome:
    if test.unresolved:
        raise _Undecided(test.unresolved)
    _require(traj, test.metric)
    steps = _selected(traj, test)
    bounds = _bounds_text(test.above, test.below)
    marks = {"above": test.above, "below": test.below, "steps": steps}
    if test.combine == "every":
        results, per_step = [], {}
        for step in steps:
            value, low, high, has_ci = _point(traj, test.metric, step, method_check)
            shown = f"{fmt(value)} {_ci(low, high)}" if has_ci else f"{fmt(value)} (a method check: no interval)"
            slack = _slack(low, high, test.above, test.below)
            results.append((side(low, high, test.above, test.below), f"{shown} at step {step}", slack))
            per_step[step] = {"value": value, "ci": [low, high] if has_ci else None}
        verdict, reason = _decide(results)
        numbers = {"per_step": per_step, "above": test.above, "below": test.below, "combine": "every"}
        text = f"{test.metric}: {reason}; claimed {bounds} at every one of {_steps_text(steps)}"
        return Outcome(verdict, text, [test.metric], steps, numbers, marks)
    values = [_point(traj, test.metric, step)[0] for step in steps]
    value = float(np.mean(values))
    low, high = _derived_interval(_replicates(traj, test.metric, steps).mean(axis=1), rule.level, "the mean")
    verdict = {PASS: SUPPORTED, FAIL: CONTRADICTED, SPAN: UNDETERMINED}[side(low, high, test.above, test.below)]
    text = f"{test.metric}: mean over {_steps_text(steps)} {fmt(value)} {_ci(low, high)}; claimed {bounds}"
    if verdict == UNDETERMINED:
        text = f"the interval spans the threshold: {text}"
    numbers = {"value": value, "ci": [low, high], "above": test.above, "below": test.below, "combine": "mean"}
    return Outcome(verdict, text, [test.metric], steps, numbers, marks)


def _comparison(traj: Trajectory, test: Test, rule: Rule) -> Outcome:
    _require(traj, test.metric)
    _require(traj, test.other)
    steps = _selected(traj, test)
    sign = 1.0 if test.direction == "above" else -1.0
    what = f"{test.metric} - {test.other}" if sign > 0 else f"{test.other} - {test.metric}"
    claimed = f"{test.metric} {test.direction} {test.other}"
    claimed += f" by more than {fmt(test.margin)}" if test.margin else ""
    values = {s: sign * (_point(traj, test.metric, s)[0] - _point(traj, test.other, s)[0]) for s in steps}
    reps = sign * (_replicates(traj, test.metric, steps) - _replicates(traj, test.other, steps))  # paired
    marks = {"steps": steps, "margin": test.margin}
    if test.combine == "every":
        results, per_step = [], {}
        for i, step in enumerate(steps):
            low, high = _derived_interval(reps[:, i], rule.level, f"{what} at step {step}")
            a, b = _value(traj, test.metric, step), _value(traj, test.other, step)
            text = f"{fmt(a)} vs {fmt(b)}, {what} = {fmt(values[step])} {_ci(low, high)} at step {step}"
            results.append((side(low, high, test.margin, None), text, low - test.margin))
            per_step[step] = {"metric": a, "than": b, "difference": values[step], "ci": [low, high]}
        verdict, reason = _decide(results)
        numbers = {"per_step": per_step, "difference": what, "margin": test.margin, "combine": "every"}
        return Outcome(verdict, f"{reason}; claimed {claimed}", test.metrics, steps, numbers, marks)
    value = float(np.mean(list(values.values())))
    low, high = _derived_interval(reps.mean(axis=1), rule.level, f"the mean of {what}")
    verdict = {PASS: SUPPORTED, FAIL: CONTRADICTED, SPAN: UNDETERMINED}[side(low, high, test.margin, None)]
    text = f"mean of {what} over {_steps_text(steps)}: {fmt(value)} {_ci(low, high)}; claimed {claimed}"
    if verdict == UNDETERMINED:
        text = f"the interval spans the margin: {text}"
    numbers = {"value": value, "ci": [low, high], "difference": what, "margin": test.margin, "combine": "mean"}
    return Outcome(verdict, text, test.metrics, steps, numbers, marks)


def trend_windows(steps: list[int], test: Test) -> tuple[list[int], list[int]]:
    """The early and late checkpoints of a trend: its explicit step ranges, else the first and last `window`
    share of the swept steps in log(1 + step)."""
    if test.early is not None:
        early = [s for s in steps if test.early[0] <= s <= test.early[1]]
    else:
        x = np.log1p(np.asarray(steps, dtype=float))
        early = [s for s, xi in zip(steps, x) if xi <= x[0] + test.window * (x[-1] - x[0])]
    if test.late is not None:
        late = [s for s in steps if test.late[0] <= s <= test.late[1]]
    else:
        x = np.log1p(np.asarray(steps, dtype=float))
        late = [s for s, xi in zip(steps, x) if xi >= x[-1] - test.window * (x[-1] - x[0])]
    return early, [s for s in late if s not in early]


def _window_values(traj: Trajectory, metric: str, steps: list[int], name: str) -> tuple[list[int], list[str]]:
    """The checkpoints of a window with a finite value (each must have a usable interval), and the NaN ones."""
    used, skipped = [], []
    for step in steps:
        if math.isfinite(_value(traj, metric, step)):
            _point(traj, metric, step)
            used.append(step)
        else:
            skipped.append(_nan_reason(traj, metric, step))
    if not used:
        where = _steps_text(steps) if steps else "no checkpoint"
        why = f": {skipped[0]}" if skipped else ""
        raise _Undecided(f"no finite value of {metric} in the {name} window ({where}){why}")
    return used, skipped


def _too_few(traj: Trajectory, test: Test, what: str) -> str:
    return f"too few checkpoints for {what}: {len(traj.steps)} ok (min_checkpoints {test.min_checkpoints})"


def _trend(traj: Trajectory, test: Test, rule: Rule) -> Outcome:
    _require(traj, test.metric)
    if len(traj.steps) < test.min_checkpoints:
        raise _Undecided(_too_few(traj, test, "a trend"))
    early_steps, late_steps = trend_windows(traj.steps, test)
    early, skipped_early = _window_values(traj, test.metric, early_steps, "early")
    late, skipped_late = _window_values(traj, test.metric, late_steps, "late")
    sign = 1.0 if test.direction == "up" else -1.0
    early_mean = float(np.mean([_value(traj, test.metric, s) for s in early]))
    late_mean = float(np.mean([_value(traj, test.metric, s) for s in late]))
    reps = _replicates(traj, test.metric, late).mean(axis=1) - _replicates(traj, test.metric, early).mean(axis=1)
    low, high = _derived_interval(reps, rule.level, "the change")
    signed = (low, high) if sign > 0 else (-high, -low)  # the change in the claimed direction
    verdict = {PASS: SUPPORTED, FAIL: CONTRADICTED, SPAN: UNDETERMINED}[side(*signed, test.margin, None)]
    change = late_mean - early_mean
    claimed = f"{test.direction}" + (f" by more than {fmt(test.margin)}" if test.margin else "")
    text = (
        f"{test.metric}: {fmt(early_mean)} over early {_steps_text(early)} -> {fmt(late_mean)} over late "
        f"{_steps_text(late)}, change {fmt(change)} {_ci(low, high)}; claimed {claimed}"
    )
    skipped = skipped_early + skipped_late
    if skipped:
        text += f"; {len(skipped)} NaN checkpoint(s) left out ({skipped[0]})"
    if verdict == UNDETERMINED:
        text = f"the interval of the change spans {fmt(sign * test.margin)}: {text}"
    numbers = {
        "early_steps": early,
        "late_steps": late,
        "early_mean": early_mean,
        "late_mean": late_mean,
        "change": change,
        "ci": [low, high],
        "direction": test.direction,
        "min_change": test.margin,
    }
    marks = {"early": [early_steps[0], early_steps[-1]], "late": [late_steps[0], late_steps[-1]]}
    return Outcome(verdict, text, [test.metric], early + late, numbers, marks)


def _onset_series(traj: Trajectory, metric: str) -> tuple[list[int], list[float]]:
    """The checkpoints with a finite value of `metric` (each with a usable interval) and those values."""
    steps = [s for s in traj.steps if math.isfinite(_value(traj, metric, s))]
    for step in steps:
        _point(traj, metric, step)
    return steps, [_value(traj, metric, s) for s in steps]


def _presence(traj: Trajectory, metric: str, threshold: float) -> None:
    """Undecided unless `metric`'s interval lies above `threshold` (its MIN_EFFECT) at some checkpoint."""
    best, where = -math.inf, None
    for step in traj.steps:
        low = traj.intervals.get(metric, {}).get(step, (math.nan, math.nan))[0]
        if math.isfinite(low) and not traj.withheld.get(metric, {}).get(step) and low > best:
            best, where = low, step
    if best <= threshold:
        at = f"; its largest lower bound is {fmt(best)} at step {where}" if where is not None else ""
        never = f"its interval never lies above MIN_EFFECT {fmt(threshold)}{at}"
        raise _Undecided(f"{metric} is never present ({never}): its onset marks noise")


def order_shares(steps: list[int], a: np.ndarray, b: np.ndarray) -> tuple[float, float, float]:
    """Shares of replicates where onset a comes before b, between the same two checkpoints, after b. An onset is
    compared by the checkpoint it is reached by (its interpolation between two checkpoints is a model, not a
    measurement); a replicate where only one metric has an onset counts that one as first."""
    grid = np.asarray(steps, dtype=float)

    def reached_by(onsets: np.ndarray) -> np.ndarray:
        """The index of the first checkpoint at or after each onset (-1: no onset)."""
        return np.where(np.isfinite(onsets), np.searchsorted(grid, np.nan_to_num(onsets), side="left"), -1)

    ia, ib = reached_by(a), reached_by(b)
    has_a, has_b = ia >= 0, ib >= 0
    before = (has_a & has_b & (ia < ib)) | (has_a & ~has_b)
    same = has_a & has_b & (ia == ib)
    after = (has_a & has_b & (ib < ia)) | (has_b & ~has_a)
    return float(before.mean()), float(same.mean()), float(after.mean())


def _onset_order(traj: Trajectory, test: Test, rule: Rule) -> Outcome:
    for metric in test.metrics:
        _require(traj, metric)
    if len(traj.steps) < test.min_checkpoints:
        raise _Undecided(_too_few(traj, test, "onsets"))
    for metric, threshold in test.presence.items():
        _presence(traj, metric, threshold)
    found, marks = {}, {"onsets": {}}
    for metric in test.metrics:
        steps, values = _onset_series(traj, metric)
        onset = onset_step(steps, values, rule.fraction, rule.persist)
        if not math.isfinite(onset):
            raise _Undecided(f"no onset of {metric} within the swept steps ({_steps_text(traj.steps)}): no held change")
        reps = replicate_onsets(steps, _replicates(traj, metric, steps), rule.fraction, rule.persist)
        low, high = interval(reps, rule.level)
        found[metric] = (onset, low, high, reps)
        marks["onsets"][metric] = [onset, low, high]
    before, same, after = order_shares(traj.steps, found[test.metric][3], found[test.other][3])
    described = "; ".join(
        f"{m} onset ~{fmt(found[m][0])} {_ci(found[m][1], found[m][2])}" for m in (test.metric, test.other)
    )
    n = len(found[test.metric][3])
    counted = (
        f"{test.metric} before {test.other} in {before:.0%} of {n} replicates, between the same two checkpoints "
        f"in {same:.0%}, after in {after:.0%}"
    )
    claimed = before + same if test.or_same else before
    if claimed >= test.share:
        verdict, text = SUPPORTED, f"{described}; {counted}"
    elif after >= test.share:
        verdict, text = CONTRADICTED, f"{described}; {counted}"
    elif same >= 1 - test.share and not test.or_same:
        short = f"the sweep does not resolve the order (the onsets share a pair of checkpoints in {same:.0%})"
        verdict, text = UNDETERMINED, f"{short}: {described}; {counted}"
    else:
        short = f"the order holds in {claimed:.0%} of the replicates (< {test.share:.0%})"
        verdict, text = UNDETERMINED, f"{short}: {described}; {counted}"
    numbers = {
        m: {"onset": v[0], "ci": [v[1], v[2]], "with_onset": float(np.isfinite(v[3]).mean())} for m, v in found.items()
    }
    numbers.update(share_before=before, share_same=same, share_after=after, replicates=n, share_needed=test.share)
    return Outcome(verdict, text, test.metrics, list(traj.steps), numbers, marks)


KINDS = {"onset_order": _onset_order, "trend": _trend, "comparison": _comparison}


def evaluate_test(traj: Trajectory, test: Test, rule: Rule, method_check: bool = False) -> Outcome:
    """The outcome of one test on one trajectory (undetermined, with the reason, when it cannot be decided)."""
    try:
        if test.kind == "level":
            return _level(traj, test, rule, method_check)
        return KINDS[test.kind](traj, test, rule)
    except _Undecided as why:
        return Outcome(UNDETERMINED, str(why), test.metrics)


def combine(outcomes: list[Outcome], how: str) -> tuple[str, str]:
    """(verdict, reason) of a claim from its tests' outcomes (`all` or `any`, the module docstring)."""
    verdicts = [o.verdict for o in outcomes]
    if len(outcomes) == 1:
        return verdicts[0], outcomes[0].reason
    wanted, opposite = (SUPPORTED, CONTRADICTED) if how == "all" else (CONTRADICTED, SUPPORTED)
    if all(v == wanted for v in verdicts):
        return wanted, "; ".join(o.reason for o in outcomes)
    if opposite in verdicts:
        decisive = next(o for o in outcomes if o.verdict == opposite)
        return opposite, decisive.reason
    pending = next(o for o in outcomes if o.verdict == UNDETERMINED)
    return UNDETERMINED, pending.reason


def evaluate(claims: list[Claim], trajectories: dict[str, Trajectory], rule: Rule) -> list[Verdict]:
    """Every claim on every trajectory ({group: trajectory}, e.g. one per model), claims in order, groups sorted."""
    out = []
    for claim in claims:
        for group in sorted(trajectories):
            outcomes = [evaluate_test(trajectories[group], t, rule, claim.method_check) for t in claim.tests]
            verdict, reason = combine(outcomes, claim.combine)
            out.append(Verdict(claim, group, verdict, reason, outcomes))
    return out


def agreement(verdicts: list[Verdict]) -> str:
    """Whether one claim's verdicts on several groups agree: '' for one group, else e.g. 'all 3 agree:
    supported' or 'disagree: supported (a, b); contradicted (c)'."""
    if len(verdicts) < 2:
        return ""
    by: dict[str, list[str]] = {}
    for v in verdicts:
        by.setdefault(v.verdict, []).append(v.group)
    if len(by) == 1:
        return f"all {len(verdicts)} agree: {verdicts[0].verdict}"
    return "disagree: " + "; ".join(f"{kind} ({', '.join(groups)})" for kind, groups in by.items())

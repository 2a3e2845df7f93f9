"""Claims as data: a paper's statement about training, written as tests of a study's trajectories.

A claims file (`conf/claims/<paper>.yaml`, package `claims.<paper>`) holds `paper` (a title), optionally `note`,
and `claims`: {claim key: claim}. A claim has a one-line `statement`, optionally `method_check: true` (a check of
the method, not a finding: shown as such, and decided on values without an interval where the family declares
none) and `note` (shown with its verdict), and either one test (its `test` kind and fields inline) or several,
`all: [test, ...]` (supported when every test is) or `any: [test, ...]` (supported when one is). Test kinds:

- `onset_order`: `first`'s onset comes before `then`'s, at the resolution of the swept checkpoints (`or_same:
  true`: or between the same two checkpoints), decided on the paired bootstrap replicates: the share of
  replicates where it does must reach `share`;
- `trend`: `metric` goes `up` or `down` (`direction`) by more than `min_change` (default 0) from the `early`
  steps to the `late` steps (each `[first, last]`, inclusive; default: the first and last `window` share of the
  swept steps in log(1 + step)), the difference of the two windows' means computed per replicate;
- `level`: `metric` lies `above` and/or `below` a threshold at the `last` k checkpoints (`all` = every one) or
  at the `steps` [first, last]; `combine: every` (each checkpoint's own interval) or `mean` (the mean over them,
  its interval from the paired replicates);
- `comparison`: `metric` lies `above` or `below` (`direction`) the metric `than` by more than `margin` at the
  same checkpoints (`last` / `steps` / `combine` as for a level), the difference computed per replicate.

A threshold (`above`, `below`) is a number or `min_effect`: the smallest effect that counts as present, read from
the `MIN_EFFECT` of the configured family that reports the metric (one source of truth: the family module). An
onset-order test on a metric with a MIN_EFFECT also needs that metric to be present somewhere (its interval
above it), else its onset marks noise. Unset fields take `report.verdicts` (`Defaults`).

`parse_claims` turns the composed `claims` config into `Claim`s, refusing an unknown field, kind, direction or a
value out of range with the config key and what is valid.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

KINDS = ("onset_order", "trend", "level", "comparison")
COMBINES = ("every", "mean")
TREND_DIRECTIONS = ("up", "down")
SIDES = ("above", "below")
MIN_EFFECT = "min_effect"  # a threshold read from the family module's MIN_EFFECT
ALL_STEPS = "all"  # `last: all` = every ok checkpoint
CLAIM_FIELDS = ("statement", "method_check", "note", "test", "all", "any")
FILE_FIELDS = ("paper", "note", "claims")
TEST_FIELDS = {
    "onset_order": ("first", "then", "or_same", "share", "min_checkpoints"),
    "trend": ("metric", "direction", "min_change", "early", "late", "window", "min_checkpoints"),
    "level": ("metric", "above", "below", "last", "steps", "combine"),
    "comparison": ("metric", "than", "direction", "margin", "last", "steps", "combine"),
}


class ClaimConfigError(ValueError):
    """A claim in the `claims` config is not valid (the message names its key and what is valid)."""


@dataclass(frozen=True)
class Defaults:
    """`report.verdicts`: what a test does not say for itself."""

    last: int | None  # level, comparison: the last k ok checkpoints (None = every one)
    combine: str  # level, comparison: `every` or `mean`
    window: float  # trend: early / late = the first / last this share of the swept steps in log(1 + step)
    share: float  # onset order: share of replicates the order must hold in
    min_checkpoints: int  # trend, onset order: fewer ok checkpoints are too few


@dataclass(frozen=True)
class Test:
    """One test of a claim (the module docstring says what each field means for each kind)."""

    kind: str
    metric: str  # onset_order: `first`
    other: str | None = None  # onset_order: `then`; comparison: `than`
    above: float | None = None
    below: float | None = None
    direction: str | None = None  # trend: up/down; comparison: above/below
    margin: float = 0.0  # comparison: `margin`; trend: `min_change`
    last: int | None = None
    steps: tuple[float, float] | None = None
    combine: str = "every"
    early: tuple[float, float] | None = None
    late: tuple[float, float] | None = None
    window: float = 1 / 3
    share: float = 0.95
    or_same: bool = False
    min_checkpoints: int = 4
    presence: dict[str, float] = field(default_factory=dict)  # onset order: metric -> its MIN_EFFECT
    from_min_effect: bool = False  # the threshold is the family's MIN_EFFECT
    unresolved: str | None = None  # why a `min_effect` threshold could not be read (the verdict says so)

    @property
    def metrics(self) -> list[str]:
        """The metrics the test reads."""
        return [self.metric] + ([self.other] if self.other else [])


@dataclass(frozen=True)
class Claim:
    """A statement of a paper and the tests that decide it."""

    id: str  # `<file>/<key>`, e.g. mahaut_franzon/natural_first
    paper: str
    statement: str
    tests: tuple[Test, ...]
    combine: str = "all"  # all: every test must pass; any: one is enough
    method_check: bool = False
    note: str = ""

    @property
    def metrics(self) -> list[str]:
        return list(dict.fromkeys(m for t in self.tests for m in t.metrics))


def _fail(where: str, message: str) -> None:
    raise ClaimConfigError(f"{where}: {message}")


def _number(where: str, value: Any, low: float | None = None, high: float | None = None, integer=False) -> float:
    """A finite number (an int when `integer`) in [low, high], else a ClaimConfigError naming `where`."""
    ok = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok or not math.isfinite(value):
        _fail(where, f"{value!r} is not valid; valid: {'an integer' if integer else 'a number'}" + _range(low, high))
    if (low is not None and value < low) or (high is not None and value > high):
        _fail(where, f"{value!r} is not valid; valid:{_range(low, high)}")
    return value


def _range(low, high) -> str:
    if low is not None and high is not None:
        return f" in [{low:g}, {high:g}]"
    return f" >= {low:g}" if low is not None else (f" <= {high:g}" if high is not None else "")


def _metric(where: str, value: Any) -> str:
    if not isinstance(value, str) or value.count("/") < 1 or not all(value.split("/")):
        _fail(where, f"{value!r} is not a metric key; valid: family/name, e.g. icl/induction_max")
    return value


def _step_range(where: str, value: Any) -> tuple[float, float]:
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        _fail(where, f"{value!r} is not valid; valid: [first step, last step] (inclusive)")
    first, last = (_number(where, v, 0) for v in value)
    if first > last:
        _fail(where, f"{list(value)} is not valid: the first step is after the last")
    return float(first), float(last)


def _choice(where: str, value: Any, valid: tuple[str, ...]) -> str:
    if value not in valid:
        _fail(where, f"{value!r} is not valid; valid: {', '.join(valid)}")
    return value


def _last(where: str, value: Any) -> int | None:
    if value == ALL_STEPS:
        return None
    return int(_number(where, value, 1, integer=True))


def _threshold(where: str, value: Any, metric: str, min_effects: dict[str, float]) -> tuple[float | None, str | None]:
    """(threshold, why it is unknown) from a number or `min_effect`."""
    if value == MIN_EFFECT:
        if metric in min_effects:
            return float(min_effects[metric]), None
        known = ", ".join(sorted(min_effects)) or "none"
        return None, f"no MIN_EFFECT for {metric} in the configured metric families (those with one: {known})"
    return float(_number(where, value)), None


def parse_test(where: str, spec: Any, defaults: Defaults, min_effects: dict[str, float]) -> Test:
    """One test from its config mapping (`where` = its config key, for errors)."""
    if not isinstance(spec, dict):
        _fail(where, f"{spec!r} is not a test; valid: a mapping with `test: {' | '.join(KINDS)}` and its fields")
    kind = _choice(f"{where}.test", spec.get("test"), KINDS)
    unknown = sorted(set(spec) - {"test", *TEST_FIELDS[kind]})
    if unknown:
        _fail(where, f"unknown field(s) {unknown} for a {kind} test; valid: {', '.join(TEST_FIELDS[kind])}")
    needed = {"onset_order": ("first", "then"), "trend": ("metric", "direction"), "level": ("metric",)}
    needed["comparison"] = ("metric", "than", "direction")
    missing = [name for name in needed[kind] if spec.get(name) is None]
    if missing:
        _fail(where, f"a {kind} test needs {', '.join(missing)}")

    def at(name: str) -> str:
        return f"{where}.{name}"

    fields: dict[str, Any] = {"kind": kind}
    if kind == "onset_order":
        fields["metric"], fields["other"] = _metric(at("first"), spec["first"]), _metric(at("then"), spec["then"])
        fields["or_same"] = bool(spec.get("or_same", False))
        fields["share"] = _number(at("share"), spec.get("share", defaults.share), 0.5, 1.0)
        fields["presence"] = {m: float(min_effects[m]) for m in (fields["metric"], fields["other"]) if m in min_effects}
    else:
        fields["metric"] = _metric(at("metric"), spec["metric"])
    if kind in ("onset_order", "trend"):
        count = spec.get("min_checkpoints", defaults.min_checkpoints)
        fields["min_checkpoints"] = int(_number(at("min_checkpoints"), count, 2, integer=True))
    if kind == "trend":
        fields["direction"] = _choice(at("direction"), spec["direction"], TREND_DIRECTIONS)
        fields["margin"] = float(_number(at("min_change"), spec.get("min_change", 0.0), 0))
        fields["window"] = float(_number(at("window"), spec.get("window", defaults.window), 0.01, 0.5))
        for name in ("early", "late"):
            fields[name] = None if spec.get(name) is None else _step_range(at(name), spec[name])
        if fields["early"] and fields["late"] and fields["early"][1] >= fields["late"][0]:
            _fail(where, f"early {list(fields['early'])} must end before late {list(fields['late'])} starts")
    if kind in ("level", "comparison"):
        fields["combine"] = _choice(at("combine"), spec.get("combine", defaults.combine), COMBINES)
        if spec.get("steps") is not None and spec.get("last") is not None:
            _fail(where, "give `last` (the last k checkpoints) or `steps` ([first, last]), not both")
        fields["steps"] = None if spec.get("steps") is None else _step_range(at("steps"), spec["steps"])
        fields["last"] = _last(at("last"), spec.get("last", defaults.last if defaults.last else ALL_STEPS))
    if kind == "level":
        if spec.get("above") is None and spec.get("below") is None:
            _fail(where, "a level test needs `above` and/or `below` (a number or min_effect)")
        why = []
        for side in SIDES:
            if spec.get(side) is not None:
                fields[side], unknown_reason = _threshold(at(side), spec[side], fields["metric"], min_effects)
                why += [unknown_reason] if unknown_reason else []
                fields["from_min_effect"] = fields.get("from_min_effect", False) or spec[side] == MIN_EFFECT
        fields["unresolved"] = "; ".join(why) or None
        if fields.get("above") is not None and fields.get("below") is not None and fields["above"] >= fields["below"]:
            _fail(where, f"above={fields['above']:g} must be below below={fields['below']:g}")
    if kind == "comparison":
        fields["other"] = _metric(at("than"), spec["than"])
        fields["direction"] = _choice(at("direction"), spec["direction"], SIDES)
        fields["margin"] = float(_number(at("margin"), spec.get("margin", 0.0), 0))
    return Test(**fields)


def parse_claim(where: str, claim_id: str, paper: str, spec: Any, defaults: Defaults, min_effects) -> Claim:
    """One claim from its config mapping."""
    if not isinstance(spec, dict):
        _fail(where, f"{spec!r} is not a claim; valid: a mapping with statement and a test (or all / any)")
    unknown = sorted(set(spec) - set(CLAIM_FIELDS) - {f for fields in TEST_FIELDS.values() for f in fields})
    if unknown:
        _fail(where, f"unknown field(s) {unknown}; valid: {', '.join(CLAIM_FIELDS)} and the fields of its test")
    statement = spec.get("statement")
    if not isinstance(statement, str) or not statement.strip():
        _fail(f"{where}.statement", "missing: every claim says what it claims in one line")
    groups = [name for name in ("all", "any") if spec.get(name) is not None]
    if len(groups) + (spec.get("test") is not None) != 1:
        _fail(where, "give one test inline (`test: ...`) or a list of tests under `all` or `any`, exactly one")
    combine = groups[0] if groups else "all"
    if groups:
        listed = spec[combine]
        if not isinstance(listed, (list, tuple)) or not listed:
            _fail(f"{where}.{combine}", f"{listed!r} is not valid; valid: a non-empty list of tests")
        tests = tuple(parse_test(f"{where}.{combine}[{i}]", t, defaults, min_effects) for i, t in enumerate(listed))
    else:
        inline = {k: v for k, v in spec.items() if k not in CLAIM_FIELDS or k == "test"}
        tests = (parse_test(where, inline, defaults, min_effects),)
    return Claim(
        id=claim_id,
        paper=paper,
        statement=statement.strip(),
        tests=tests,
        combine=combine,
        method_check=bool(spec.get("method_check", False)),
        note=str(spec.get("note") or ""),
    )


def parse_claims(claims_cfg: dict, defaults: Defaults, min_effects: dict[str, float]) -> list[Claim]:
    """Every claim of the composed `claims` config ({file: {paper, note, claims: {key: claim}}}), in file then
    claim order; `min_effects` = {metric: smallest effect that counts} of the configured families."""
    out = []
    for name, spec in (claims_cfg or {}).items():
        where = f"claims.{name}"
        if not isinstance(spec, dict):
            _fail(where, f"{spec!r} is not a claims file; valid: a mapping with {', '.join(FILE_FIELDS)}")
        unknown = sorted(set(spec) - set(FILE_FIELDS))
        if unknown:
            _fail(where, f"unknown field(s) {unknown}; valid: {', '.join(FILE_FIELDS)}")
        claims = spec.get("claims")
        if not isinstance(claims, dict) or not claims:
            _fail(f"{where}.claims", "missing or empty: a mapping {claim key: claim}")
        paper = str(spec.get("paper") or name)
        for key, claim in claims.items():
            out.append(parse_claim(f"{where}.claims.{key}", f"{name}/{key}", paper, claim, defaults, min_effects))
    return out


def defaults_from(verdicts_cfg) -> Defaults:
    """`Defaults` from the config `report.verdicts`, each value checked."""
    where = "report.verdicts"
    missing = [k for k in ("last", "combine", "window", "share", "min_checkpoints") if verdicts_cfg.get(k) is None]
    if missing:
        _fail(where, f"missing {', '.join(missing)}")
    return Defaults(
        last=_last(f"{where}.last", verdicts_cfg["last"]),
        combine=_choice(f"{where}.combine", verdicts_cfg["combine"], COMBINES),
        window=float(_number(f"{where}.window", verdicts_cfg["window"], 0.01, 0.5)),
        share=float(_number(f"{where}.share", verdicts_cfg["share"], 0.5, 1.0)),
        min_checkpoints=int(_number(f"{where}.min_checkpoints", verdicts_cfg["min_checkpoints"], 2, integer=True)),
    )

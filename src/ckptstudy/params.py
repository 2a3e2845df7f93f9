"""A metric family's parameters, declared once: names, types and valid ranges in its `measure` signature.

    def measure(ctx, *, top_k: Annotated[int, Range(min=1)], mode: Annotated[str, Choice("exact", "off")]):

Values live only in conf/metrics/<family>.yaml (no defaults in the signature). `check_family` refuses a
configured value that is unknown, missing, of the wrong type, out of its `Range`, not one of its `Choice`
values, or against the module's optional cross-parameter rule `check(**params)` (which may also take the
model's `shape`, a `ckptstudy.measure.cost.Shape` or None, for rules such as "a layer of the model"), naming
`metrics.<family>.<param>=<value>` and what is valid. `config.validate` runs it right after composition.

Supported types: int, float (an int is accepted), bool, str, list[int | float | str] (a tuple annotation
reads the same), each optionally `| None`. No heavy imports: every family module imports this one.
"""

from __future__ import annotations

import importlib
import inspect
import math
import typing
from dataclasses import dataclass
from typing import Any

SCALARS = (bool, int, float, str)


class MetricConfigError(ValueError):
    """A metric family's config names an unknown target or parameter, or a value that is not valid."""


@dataclass(frozen=True)
class Range:
    """A number in [min, max]; `min_open` / `max_open` exclude that end; None = unbounded."""

    min: float | None = None
    max: float | None = None
    min_open: bool = False
    max_open: bool = False

    def admits(self, value: float) -> bool:
        if self.min is not None and (value <= self.min if self.min_open else value < self.min):
            return False
        return self.max is None or (value < self.max if self.max_open else value <= self.max)

    def describe(self) -> str:
        low = None if self.min is None else f"{'>' if self.min_open else '>='} {self.min:g}"
        high = None if self.max is None else f"{'<' if self.max_open else '<='} {self.max:g}"
        if low and high:
            left, right = "(" if self.min_open else "[", ")" if self.max_open else "]"
            return f"in {left}{self.min:g}, {self.max:g}{right}"
        return low or high or ""


class Choice:
    """One of a few strings."""

    def __init__(self, *values: str) -> None:
        self.values = tuple(values)

    def admits(self, value: Any) -> bool:
        return value in self.values

    def describe(self) -> str:
        return "one of " + ", ".join(self.values)


@dataclass(frozen=True)
class Each:
    """A list parameter: every item meets `item` (a Range or a Choice), and there are at least `min_items`."""

    item: Range | Choice | None = None
    min_items: int = 0


@dataclass(frozen=True)
class Parameter:
    """One keyword parameter of a family's `measure`: its type, whether None is allowed, and its constraints."""

    name: str
    kind: type  # bool, int, float, str or list
    item_kind: type | None  # the type of a list's items
    optional: bool
    constraints: tuple

    def describe(self) -> str:
        """What is valid, in words: "an integer >= 1", "a non-empty list of integers >= 1", ..."""
        if self.kind is list:
            each = next((c for c in self.constraints if isinstance(c, Each)), Each())
            items = _NOUNS[self.item_kind] + "s"
            what = f"a list of {items}" + (f" {each.item.describe()}" if each.item else "")
            if each.min_items:
                what += f", at least {each.min_items} item{'s' if each.min_items > 1 else ''}"
        else:
            ranges = " and ".join(c.describe() for c in self.constraints if isinstance(c, Range))
            choices = [c for c in self.constraints if isinstance(c, Choice)]
            what = choices[0].describe() if choices else f"{_ARTICLES[self.kind]} {ranges}".strip()
        return what + (" (or null)" if self.optional else "")

    def problem(self, value: Any) -> str | None:
        """None when `value` is valid, else what is valid (`describe`)."""
        if value is None:
            return None if self.optional else self.describe()
        if self.kind is list:
            each = next((c for c in self.constraints if isinstance(c, Each)), Each())
            ok = isinstance(value, (list, tuple)) and len(value) >= each.min_items
            ok = ok and all(_fits(self.item_kind, v) and (each.item is None or each.item.admits(v)) for v in value)
        else:
            ok = _fits(self.kind, value) and all(c.admits(value) for c in self.constraints if hasattr(c, "admits"))
        return None if ok else self.describe()


_ARTICLES = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
_NOUNS = {int: "integer", float: "number", str: "string", bool: "boolean"}


def _fits(kind: type, value: Any) -> bool:
    """`value` has type `kind` (no bool for a number; an int for a float; a float must be finite)."""
    if kind is bool:
        return isinstance(value, bool)
    if isinstance(value, bool):
        return False
    if kind is float:
        return isinstance(value, (int, float)) and math.isfinite(value)
    return isinstance(value, kind)


def _parameter(name: str, annotation: Any) -> Parameter:
    """A `Parameter` from one annotation: `Annotated[base, *constraints]`, base a supported type."""
    constraints: tuple = ()
    if typing.get_origin(annotation) is typing.Annotated:
        annotation, *extra = typing.get_args(annotation)
        constraints = tuple(extra)
    args = typing.get_args(annotation)
    optional = type(None) in args
    if optional:
        (annotation,) = [a for a in args if a is not type(None)]
    origin = typing.get_origin(annotation)
    if origin in (list, tuple):
        item = typing.get_args(annotation)[0]
        if item not in SCALARS:
            raise TypeError(f"parameter {name}: unsupported list item type {item!r}")
        return Parameter(name, list, item, optional, constraints)
    if annotation not in SCALARS:
        raise TypeError(f"parameter {name}: unsupported type {annotation!r}; use bool, int, float, str or a list")
    return Parameter(name, annotation, None, optional, constraints)


def parameters(fn) -> dict[str, Parameter]:
    """Every parameter of a family's `measure(ctx, *, ...)` but `ctx`, from its annotations."""
    hints = typing.get_type_hints(fn, include_extras=True)
    return {name: _parameter(name, hints.get(name, Any)) for name in inspect.signature(fn).parameters if name != "ctx"}


def measure_function(name: str, target: str | None):
    """The function `metrics.<name>._target_` names."""
    if not target:
        raise MetricConfigError(f"metrics.{name} has no _target_ (the measure function to call)")
    module, _, attribute = target.rpartition(".")
    try:
        return getattr(importlib.import_module(module), attribute)
    except Exception as err:
        raise MetricConfigError(f"metrics.{name}._target_={target!r} cannot be imported: {err}") from err


def min_effects(metrics_cfg) -> dict[str, float]:
    """{metric: the smallest effect that counts as present}: the `MIN_EFFECT` of every configured family's module
    (a family without one adds nothing)."""
    out: dict[str, float] = {}
    for name, family_cfg in metrics_cfg.items():
        fn = measure_function(name, family_cfg.get("_target_"))
        out.update({k: float(v) for k, v in getattr(inspect.getmodule(fn), "MIN_EFFECT", {}).items()})
    return out


def check_family(name: str, family_cfg: dict, shape=None) -> tuple[Any, dict]:
    """(measure function, parameters) of `metrics.<name>`, after refusing anything not valid (module
    docstring); `shape` (the model's, or None when its yaml does not state it) goes to the module's `check`."""
    fn = measure_function(name, family_cfg.get("_target_"))
    values = {k: v for k, v in family_cfg.items() if k != "_target_"}
    declared = parameters(fn)
    unknown = sorted(set(values) - set(declared))
    if unknown:
        raise MetricConfigError(
            f"metrics.{name}: unknown parameter(s) {unknown}; valid parameters: {', '.join(declared)}"
        )
    missing = sorted(k for k in declared if k not in values or values[k] == "???")
    if missing:
        raise MetricConfigError(
            f"metrics.{name}: missing parameter(s) {missing}: give them in conf/metrics/{name}.yaml"
        )
    for key, parameter in declared.items():
        valid = parameter.problem(values[key])
        if valid is not None:
            raise MetricConfigError(f"metrics.{name}.{key}={values[key]!r} is not valid; valid: {valid}")
    cross_check(name, fn, values, shape)
    return fn, values


def cross_check(name: str, fn, values: dict, shape) -> None:
    """The module's `check(**params)` (with `shape=` when it takes it); its ValueError names the family."""
    check = getattr(inspect.getmodule(fn), "check", None)
    if check is None:
        return
    extra = {"shape": shape} if "shape" in inspect.signature(check).parameters else {}
    try:
        check(**values, **extra)
    except ValueError as err:
        message = str(err) if str(err).startswith(f"metrics.{name}") else f"metrics.{name}: {err}"
        raise MetricConfigError(message) from err

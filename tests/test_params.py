"""Parameters declared once in `measure`'s signature: types and ranges read from the annotations, every value
checked with a message that names it and what is valid (ckptstudy.params)."""

from __future__ import annotations

import re
import sys
from typing import Annotated

import pytest

from ckptstudy.params import Choice, Each, MetricConfigError, Range, check_family, parameters


def measure(
    ctx,
    *,
    k: Annotated[int, Range(min=1)],
    share: Annotated[float, Range(min=0, max=1, min_open=True, max_open=True)],
    cos: Annotated[float, Range(min=-1, max=1)],
    mode: Annotated[str, Choice("fast", "slow")],
    keep: bool,
    ks: Annotated[list[int], Each(Range(min=1), min_items=1)],
    label: str | None,
):
    """A family's measure, for the tests."""


def check(*, k: int, ks: list[int], shape=None, **_params) -> None:
    if max(ks) < k:
        raise ValueError(f"metrics.toy.ks={ks} is not valid; needs a value >= k={k}")
    if shape is not None and k > shape:
        raise ValueError(f"k={k} is more than the model has ({shape})")


GOOD = {"k": 2, "share": 0.5, "cos": -1.0, "mode": "fast", "keep": True, "ks": [2, 3], "label": None}


def family(**values) -> dict:
    return {"_target_": f"{__name__}.measure", **GOOD, **values}


def test_annotations_are_read_as_types_and_constraints():
    declared = parameters(measure)
    assert list(declared) == list(GOOD)
    assert declared["k"].describe() == "an integer >= 1"
    assert declared["share"].describe() == "a number in (0, 1)"
    assert declared["cos"].describe() == "a number in [-1, 1]"
    assert declared["mode"].describe() == "one of fast, slow"
    assert declared["keep"].describe() == "true or false"
    assert declared["ks"].describe() == "a list of integers >= 1, at least 1 item"
    assert declared["label"].describe() == "a string (or null)"


def test_valid_values_pass_with_their_function():
    fn, values = check_family("toy", family())
    assert fn is measure and values == GOOD
    assert check_family("toy", family(share=0.999, cos=1, label="x", ks=[1, 5]))[1]["cos"] == 1  # an int is a number


@pytest.mark.parametrize(
    ("key", "value", "valid"),
    [
        ("k", 0, "an integer >= 1"),
        ("k", 2.0, "an integer >= 1"),  # not an integer
        ("k", True, "an integer >= 1"),  # a bool is not a number
        ("share", 0.0, r"a number in \(0, 1\)"),  # open end
        ("share", 1, r"a number in \(0, 1\)"),
        ("share", float("nan"), r"a number in \(0, 1\)"),
        ("cos", 1.5, r"a number in \[-1, 1\]"),
        ("mode", "medium", "one of fast, slow"),
        ("keep", "yes", "true or false"),
        ("ks", [], "a list of integers >= 1, at least 1 item"),
        ("ks", [0, 2], "a list of integers >= 1"),
        ("ks", 3, "a list of integers"),
        ("label", 3, r"a string \(or null\)"),
    ],
)
def test_a_bad_value_is_refused_naming_the_key_the_value_and_what_is_valid(key, value, valid):
    with pytest.raises(
        MetricConfigError, match=rf"^metrics\.toy\.{key}={re.escape(repr(value))} is not valid; valid: {valid}"
    ):
        check_family("toy", family(**{key: value}))


def test_unknown_missing_and_cross_parameter_rules():
    with pytest.raises(MetricConfigError, match=r"unknown parameter\(s\) \['kk'\]; valid parameters: k, share"):
        check_family("toy", family(kk=1))
    values = family()
    del values["mode"]
    with pytest.raises(MetricConfigError, match=r"missing parameter\(s\) \['mode'\]: give them in conf/metrics/toy"):
        check_family("toy", values)
    with pytest.raises(MetricConfigError, match=r"missing parameter\(s\) \['mode'\]"):
        check_family("toy", family(mode="???"))  # OmegaConf's MISSING
    with pytest.raises(MetricConfigError, match=r"^metrics\.toy\.ks=\[2, 3\] is not valid; needs a value >= k=4"):
        check_family("toy", family(k=4))
    # a rule against the model's shape (here a number) runs only when the shape is known, prefixed by the family
    assert check_family("toy", family(k=3, ks=[3]))
    with pytest.raises(MetricConfigError, match=r"^metrics\.toy: k=3 is more than the model has \(2\)"):
        check_family("toy", family(k=3, ks=[3]), shape=2)


def test_a_target_that_cannot_be_imported_is_named():
    with pytest.raises(MetricConfigError, match=r"metrics\.toy\._target_='nowhere\.measure' cannot be imported"):
        check_family("toy", {"_target_": "nowhere.measure"})
    with pytest.raises(MetricConfigError, match=r"metrics\.toy has no _target_"):
        check_family("toy", {})


def test_unsupported_annotations_are_refused():
    def bad(ctx, *, x: dict):
        """A parameter OmegaConf values cannot be checked against."""

    with pytest.raises(TypeError, match="parameter x: unsupported type"):
        parameters(bad)
    assert sys.modules[__name__].measure is measure

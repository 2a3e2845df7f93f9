"""Console scripts besides `ckptstudy` itself (Hydra owns that one's command line), and the helpers the
other console scripts (`ckptstudy-refine`, `ckptstudy-prefetch`) share to read Hydra overrides."""

from __future__ import annotations

import argparse
import sys

from hydra.core.override_parser.overrides_parser import OverridesParser

from ckptstudy.config import compose_config
from ckptstudy.report.summary import summarize_study


def trajectories(argv: list[str] | None = None) -> None:
    """`ckptstudy-trajectories [overrides]`: rebuild trajectories.csv, onsets, plot and W&B trajectory runs
    from the study's records alone (sweeps run elsewhere or in pieces are assembled this way)."""
    parser = argparse.ArgumentParser(description=trajectories.__doc__)
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. study=mine paths.root=outputs logger=none")
    args = parser.parse_args(argv)
    out = summarize_study(compose_config(args.overrides))
    sys.exit(1 if out["failed"] else 0)


def take_override(overrides: list[str], key: str) -> tuple[str | None, list[str]]:
    """The value of the `key=value` override (the last one when repeated; None when absent) and the
    other overrides, in order. `+key=` and `++key=` count as `key=`."""
    value, rest = None, []
    for override in overrides:
        name, sep, found = override.lstrip("+").partition("=")
        if sep and name == key:
            value = found
        else:
            rest.append(override)
    return value, rest


def sweep_values(value: str) -> list[str]:
    """The values a Hydra sweep expression expands to, as strings: `1,2` -> ["1", "2"],
    `range(1000,4000,1000)` -> ["1000", "2000", "3000"], `choice(a,b)`, or a single value."""
    override = OverridesParser.create().parse_override(f"key={value}")
    if override.is_sweep_override():
        return [str(v) for v in override.sweep_string_iterator()]
    return [override.get_value_element_as_str()]

"""Console scripts besides `ckptstudy` itself (Hydra owns that one's command line)."""

from __future__ import annotations

import argparse
import sys

from ckptstudy.config import compose_config
from ckptstudy.summary import summarize_study


def trajectories(argv: list[str] | None = None) -> None:
    """`ckptstudy-trajectories [overrides]`: rebuild trajectories.csv, onsets, plot and W&B trajectory runs
    from the study's records alone (sweeps run elsewhere or in pieces are assembled this way)."""
    parser = argparse.ArgumentParser(description=trajectories.__doc__)
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. study=mine paths.root=outputs logger=none")
    args = parser.parse_args(argv)
    out = summarize_study(compose_config(args.overrides))
    sys.exit(1 if out["failed"] else 0)

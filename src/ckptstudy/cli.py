"""`ckptstudy-report`: the one console script that rebuilds a study's summary from its records (`ckptstudy`
itself is Hydra's, in app.py; refine, prefetch and plan live in tools/)."""

from __future__ import annotations

import argparse
import sys

from ckptstudy.config import compose_config
from ckptstudy.report.summary import summarize


def report(argv: list[str] | None = None) -> None:
    """`ckptstudy-report [overrides]`, e.g. `ckptstudy-report study=pythia160m`: rebuild trajectories.csv (with
    interval columns), onsets.json, the plot and report.html, and log the W&B trajectory runs (`logger=none`
    skips them), from the study's records alone: sweeps run on a cluster or in pieces are assembled here.
    Every setting comes from the composed config (`report.*`, e.g. `report.bootstrap.n=1000`). Exits 1 when
    a checkpoint of the study failed."""
    parser = argparse.ArgumentParser(prog="ckptstudy-report", description=report.__doc__)
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. study=mine paths.root=outputs logger=none")
    args = parser.parse_args(argv)
    out = summarize(compose_config(args.overrides))
    sys.exit(1 if out["failed"] else 0)

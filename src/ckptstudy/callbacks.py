"""Hydra callback of a multirun: validate the config and build the micro suite before the jobs, summarize the
study after them."""

from __future__ import annotations

import datetime
import logging
import sys

from hydra.experimental.callback import Callback

from ckptstudy.config import validate_sweep
from ckptstudy.model.suite import ensure_suite
from ckptstudy.report.summary import summarize_study

log = logging.getLogger(__name__)


class TrajectoryCallback(Callback):
    """Refuses a bad config (exit code 2) and builds the suite before a sweep, and the trajectories after it
    (exit code 1 when a job failed)."""

    def __init__(self) -> None:
        self.started: str | None = None

    def on_multirun_start(self, config, **kwargs) -> None:
        self.started = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        try:  # a bad value, swept or not, refuses the whole sweep before any job launches
            # (Hydra only warns about an exception in a callback)
            validate_sweep(config)
        except ValueError as err:
            print(f"error: {err}\n(no job of this sweep was launched)", file=sys.stderr)
            sys.exit(2)
        try:
            ensure_suite(config.model)
        except Exception as err:  # each job then fails with its own record naming the cause
            log.error("could not build the micro suite: %s", err)

    def on_multirun_end(self, config, **kwargs) -> None:
        out = summarize_study(config, since=self.started)
        if out["failed"]:
            print(f"{len(out['failed'])} checkpoint(s) failed: {out['failed']}", file=sys.stderr)
            sys.exit(1)

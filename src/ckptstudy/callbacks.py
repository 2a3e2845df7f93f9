"""Hydra callback of a multirun: build the micro suite before the jobs, summarize the study after them."""

from __future__ import annotations

import datetime
import logging
import sys

from hydra.experimental.callback import Callback

from ckptstudy.model.suite import ensure_suite
from ckptstudy.report.summary import summarize

log = logging.getLogger(__name__)


class TrajectoryCallback(Callback):
    """Builds the suite before a sweep and the trajectories after it (exit code 1 when a job failed)."""

    def __init__(self) -> None:
        self.started: str | None = None

    def on_multirun_start(self, config, **kwargs) -> None:
        self.started = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        try:
            ensure_suite(config.model)
        except Exception as err:  # each job then fails with its own record naming the cause
            log.error("could not build the micro suite: %s", err)

    def on_multirun_end(self, config, **kwargs) -> None:
        out = summarize(config, since=self.started)
        if out["failed"]:
            print(f"{len(out['failed'])} checkpoint(s) failed: {out['failed']}", file=sys.stderr)
            sys.exit(1)

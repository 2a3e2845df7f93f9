"""Hydra callback of a multirun: validate the config and check the micro suite before the jobs, summarize the
study after them."""

from __future__ import annotations

import datetime
import logging
import sys

from hydra.experimental.callback import Callback

from ckptstudy.config import validate_sweep
from ckptstudy.model.suite_spec import BUILD_HINT, build_problem, spec_from_config, suite_dir
from ckptstudy.report.summary import summarize

log = logging.getLogger(__name__)


class TrajectoryCallback(Callback):
    """Refuses a bad config (exit code 2) and says when the suite is not built before a sweep; builds the
    trajectories after it (exit code 1 when a job failed).

    It does not build the suite: a build takes minutes (on a cluster, on the submitting node), so it happens
    only when asked (`make suite`, `make run`).
    """

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
            problem = suite_problem(config.model)
        except Exception as err:  # each job then fails with its own record naming the cause
            problem = f"{type(err).__name__}: {err}"
        if problem:
            log.warning("%s: jobs whose checkpoint is missing will fail; %s", problem, BUILD_HINT)

    def on_multirun_end(self, config, **kwargs) -> None:
        out = summarize(config, since=self.started)
        if out["failed"]:
            print(f"{len(out['failed'])} checkpoint(s) failed: {out['failed']}", file=sys.stderr)
            sys.exit(1)


def suite_problem(model_cfg) -> str | None:
    """Why a suite model's suite directory is not a finished build of its recipe (None when it is, or for a
    model that is not a suite)."""
    if model_cfg.checkpoints != "suite":
        return None
    problem = build_problem(spec_from_config(model_cfg), suite_dir(model_cfg))
    return f"micro suite {model_cfg.name!r}: {problem}" if problem else None

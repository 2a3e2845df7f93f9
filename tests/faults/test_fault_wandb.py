"""Fault 5: W&B cannot start, or dies in the middle of a run (injected in-process into wandb.init and
run.log). The record is written and the failure reported once per job (one `warnings` entry, one log
line); with `logger.strict=true` it is fatal: the record says failed with the TrackingError, and a re-run
measures the job again."""

from __future__ import annotations

import logging

import fault_helpers
import pytest
from fault_helpers import overrides, read, run

out_root = fault_helpers.out_root  # fixtures


class DyingRun:
    """A W&B run whose backend died: logging and finishing raise."""

    def __init__(self, directory):
        self.dir = str(directory / "run-dying" / "files")
        self.summary: dict = {}

    def log(self, *args, **kwargs):
        raise ConnectionResetError("wandb-core went away")

    def finish(self, *args, **kwargs):
        raise BrokenPipeError("wandb-core went away")


def refuse_to_start(**kwargs):
    raise RuntimeError("wandb.init() timed out")


def wandb_warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING and "W&B" in r.getMessage()]


@pytest.mark.parametrize("fault", ["init", "log"])
def test_wandb_failure_keeps_the_record_and_is_reported_once(
    micro_suite, out_root, tmp_path, monkeypatch, caplog, fault
):
    import wandb

    monkeypatch.setattr(wandb, "init", refuse_to_start if fault == "init" else lambda **kw: DyingRun(tmp_path))
    caplog.set_level(logging.INFO)
    record = run(overrides(out_root, micro_suite, "step=1", "logger.heatmaps=false", logger="wandb"))
    assert record.outcome.status == "ok"
    on_disk = read(out_root, 1)
    assert on_disk.outcome.status == "ok" and on_disk.scalars.metrics == record.scalars.metrics
    reported = [w for w in on_disk.outcome.warnings if w.startswith("W&B")]
    expected = "wandb.init() timed out" if fault == "init" else "wandb-core went away"
    assert len(reported) == 1 and expected in reported[0] and "results are still written locally" in reported[0]
    assert len(wandb_warnings(caplog)) == 1
    assert run(overrides(out_root, micro_suite, "step=1")).outcome.skipped  # a finished job: not measured again


def test_strict_logger_makes_a_wandb_failure_fail_the_job(micro_suite, out_root, monkeypatch):
    import wandb

    monkeypatch.setattr(wandb, "init", refuse_to_start)
    record = run(overrides(out_root, micro_suite, "step=1", "logger.strict=true", logger="wandb"))
    assert record.outcome.status == "failed" and record.outcome.error["type"] == "TrackingError"
    assert (
        "wandb.init() timed out" in record.outcome.error["message"]
        and "logger.strict=true" in record.outcome.error["message"]
    )
    assert read(out_root, 1).outcome.status == "failed"
    monkeypatch.undo()
    again = run(overrides(out_root, micro_suite, "step=1"))
    assert again.outcome.status == "ok" and again.outcome.recomputed_because == "previous record failed"

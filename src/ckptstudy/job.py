"""One job = one (model, step): resolve, reuse or load, measure every family, write the record, log it.

Failures never escape `run_job`: a bad config value, a missing or corrupt checkpoint or a failing
metric family becomes a failure record naming the cause, so a sweep goes on and loses nothing.
"""

from __future__ import annotations

import datetime
import logging
import time
import traceback
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from ckptstudy import checkpoints, fingerprint, results
from ckptstudy.cycles import LoopRule
from ckptstudy.metrics import FamilyResult, JobContext, family_function
from ckptstudy.probes import cached_probes
from ckptstudy.suite import ensure_suite
from ckptstudy.tracking import Tracker

log = logging.getLogger("ckptstudy")


def run_job(cfg: DictConfig) -> dict:
    """Measure one checkpoint and write its record; returns the record (status ok or failed, or
    the previous record with `skipped` when it is still valid)."""
    started = time.time()
    record = {"model": cfg.model.name, "step": cfg.step, "study": cfg.study}
    measured = FamilyResult()
    try:
        record.update(fingerprint.identity(cfg))
        source = resolve_source(cfg)
        record.update(step=source.step, revision=source.describe())
        previous = results.read_record(results.record_path(cfg.paths.root, cfg.study, cfg.model.name, source.step))
        stale = fingerprint.stale_reason(previous, record, cfg.force)
        if stale is None:
            log.info("%s step %s: record exists and is current, skipped (force=true recomputes)", *_job(record))
            return {**previous, "skipped": True}
        if previous is not None:
            record["recomputed_because"] = stale
            log.info("%s step %s: recomputing (%s)", *_job(record), stale)
        measured = measure_checkpoint(cfg, source, record)
    except Exception as err:
        log.error("%s step %s failed: %s: %s", *_job(record), type(err).__name__, err)
        record.update(status="failed", error=_error(err))
    return finish(cfg, record, measured, started)


def resolve_source(cfg: DictConfig) -> checkpoints.CheckpointSource:
    """The checkpoint of (model, step), after checking the step against the model's schedule."""
    steps = checkpoints.available_steps(cfg.model)
    step = checkpoints.resolve_step(cfg.step, steps, cfg.model.name)
    return checkpoints.source_for(cfg.model, step)


def measure_checkpoint(cfg: DictConfig, source: checkpoints.CheckpointSource, record: dict) -> FamilyResult:
    """Load the checkpoint, build its probes, run every family; fills `record` and returns the measurements."""
    ensure_suite(cfg.model)
    device = checkpoints.resolve_device(cfg.device)
    model, tokenizer = checkpoints.load_checkpoint(
        source, device=device, dtype=checkpoints.resolve_dtype(cfg.dtype, device)
    )
    record["weights_sha256"] = checkpoints.weights_sha256(model)
    probes = cached_probes(cfg.probes, tokenizer, Path(cfg.paths.root) / "cache" / "probes")
    ctx = JobContext(
        model=model,
        tokenizer=tokenizer,
        probes=probes,
        batch_size=cfg.batch_size,
        seed=cfg.seed,
        loops=LoopRule(cfg.loops.definition, cfg.loops.min_period, cfg.loops.max_period, cfg.loops.min_copies),
        natural_new_tokens=cfg.loops.new_tokens,
    )
    measured, errors = measure_families(ctx, cfg.metrics)
    record.update(
        status="failed" if errors else "ok",
        metrics=measured.scalars,
        nan_reasons=measured.nan_reasons,
        probes={"skipped_short_texts": probes.skipped_short, "key": probes.key},
        identical_weights_as=_identical_steps(cfg, record["step"], record["weights_sha256"]),
    )
    record["ci"] = measured.intervals(cfg.report.bootstrap)  # bootstrap intervals over prompts, beside metrics
    if errors:
        message = "; ".join(f"metrics.{k}: {v}" for k, v in errors.items())
        record["error"] = {"type": "MetricError", "message": message}
    return measured


def measure_families(ctx: JobContext, metrics_cfg) -> tuple[FamilyResult, dict[str, str]]:
    """Run every enabled metric family; a failing family is reported, the others still run.

    A non-finite scalar that its family gave no reason for is flagged as unexplained (a defect to fix).
    """
    total, errors = FamilyResult(), {}
    for name, family_cfg in metrics_cfg.items():
        fn, params = family_function(name, OmegaConf.to_container(family_cfg, resolve=True))
        try:
            result = fn(ctx, **params)
        except Exception as err:
            log.error("metrics.%s failed: %s: %s", name, type(err).__name__, err)
            errors[name] = f"{type(err).__name__}: {err}"
            continue
        for key in result.unexplained_nans():
            log.warning("metrics.%s gave %s = %s without a reason", name, key, result.scalars[key])
            result.nan_reasons[key] = f"unexplained: metrics.{name} gave no reason"
        total.update(result)
    return total, errors


def finish(cfg: DictConfig, record: dict, measured: FamilyResult, started: float) -> dict:
    """Write the record (and its arrays) atomically, then log it to W&B; a logging failure loses nothing."""
    record["seconds"] = round(time.time() - started, 2)
    record["finished_at"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    record["config"] = OmegaConf.to_container(cfg, resolve=True)
    path = results.record_path(cfg.paths.root, cfg.study, cfg.model.name, record["step"])
    record = results.write_record(path, record, {**measured.arrays, **measured.raw})
    tracker = Tracker(cfg.logger, results.study_dir(cfg.paths.root, cfg.study), cfg.study)
    run_dir = tracker.log_checkpoint(record, measured, record["config"])
    if run_dir or tracker.failures:
        record = {**record, "wandb_run_dir": run_dir, "warnings": record.get("warnings", []) + tracker.failures}
        results.write_record(path, record)
    return record


def _identical_steps(cfg: DictConfig, step: int, sha: str) -> list[int]:
    """Other steps of this model already recorded with exactly these weights (a hub integrity problem)."""
    same = [
        int(r["step"])
        for r in results.load_records(cfg.paths.root, cfg.study)
        if r.get("model") == cfg.model.name and r.get("weights_sha256") == sha and int(r["step"]) != step
    ]
    if same:
        log.warning(
            "%s step %s has weights identical to step(s) %s: the checkpoint source may serve wrong weights "
            "for one of them",
            cfg.model.name,
            step,
            same,
        )
    return same


def _error(err: Exception) -> dict:
    return {"type": type(err).__name__, "message": str(err), "traceback": traceback.format_exc()}


def _job(record: dict) -> tuple:
    return record["model"], record["step"]


def summary_line(record: dict) -> str:
    """One line per job for the console."""
    where = f"{record['model']} step {record['step']}"
    if record.get("skipped"):
        return f"{where}: skipped (record exists)"
    if record["status"] != "ok":
        return f"{where}: FAILED {record['error']['type']}: {record['error']['message']}"
    shown = ", ".join(f"{k}={v:.3g}" for k, v in list(record["metrics"].items())[:4])
    return f"{where}: ok in {record['seconds']} s ({shown})"

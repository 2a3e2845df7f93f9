"""`ckptstudy`: the Hydra entry point. One job = one (model, step): load, measure, record, log."""

from __future__ import annotations

import hashlib
import json
import logging
import sys
import time
import traceback
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from ckptstudy import checkpoints, results, tracking
from ckptstudy.config import CONF_DIR, check_choices, register_configs
from ckptstudy.cycles import LoopRule
from ckptstudy.metrics import FamilyResult, JobContext, family_function
from ckptstudy.probes import cached_probes

log = logging.getLogger("ckptstudy")
HASHED_KEYS = ("model", "probes", "loops", "metrics", "seed", "dtype")


def config_hash(cfg: DictConfig) -> str:
    """Hash of everything that changes the measurement (not logging, paths or study name)."""
    part = {k: OmegaConf.to_container(cfg, resolve=True)[k] for k in HASHED_KEYS}
    return hashlib.sha256(json.dumps(part, sort_keys=True, default=str).encode()).hexdigest()[:16]


def measure(ctx: JobContext, metrics_cfg) -> tuple[FamilyResult, dict[str, str]]:
    """Run every enabled metric family; a failing family is reported, the others still run."""
    total, errors = FamilyResult(), {}
    for name, family_cfg in metrics_cfg.items():
        fn, params = family_function(name, OmegaConf.to_container(family_cfg, resolve=True))
        try:
            result = fn(ctx, **params)
        except Exception as err:
            log.error("metrics.%s failed: %s: %s", name, type(err).__name__, err)
            errors[name] = f"{type(err).__name__}: {err}"
            continue
        total.update(result)
    return total, errors


def run_job(cfg: DictConfig) -> dict:
    """Measure one checkpoint and write its record; returns the record (status ok, failed or skipped).

    Checkpoint and metric failures become a failure record instead of an exception, so a
    sweep goes on; bad configuration (unknown option, step not in the schedule) also lands
    in a failure record that names the bad value and the valid choices.
    """
    root, study, model_name = cfg.paths.root, cfg.study, cfg.model.name
    started = time.time()
    base = {"model": model_name, "step": cfg.step, "study": study, "config_hash": config_hash(cfg)}
    measured = FamilyResult()
    try:
        check_choices(cfg)
        steps = checkpoints.available_steps(cfg.model)
        step = checkpoints.resolve_step(cfg.step, steps, model_name)
        base["step"] = step
        source = checkpoints.source_for(cfg.model, step)
        base["revision"] = source.describe()
        path = results.record_path(root, study, model_name, step)
        previous = results.read_record(path)
        if _can_skip(previous, base, cfg.force):
            log.info(
                "%s step %s: record exists with the same config, skipped (force=true recomputes)",
                model_name,
                step,
            )
            return {**previous, "skipped": True}
        from ckptstudy.suite import ensure_suite

        ensure_suite(cfg.model)
        device = checkpoints.resolve_device(cfg.device)
        model, tokenizer = checkpoints.load_checkpoint(
            source, device=device, dtype=checkpoints.resolve_dtype(cfg.dtype, device)
        )
        sha = checkpoints.weights_sha256(model)
        probes = cached_probes(cfg.probes, tokenizer, Path(root) / "cache" / "probes")
        ctx = JobContext(
            model=model,
            tokenizer=tokenizer,
            probes=probes,
            batch_size=cfg.batch_size,
            seed=cfg.seed,
            loops=LoopRule(cfg.loops.definition, cfg.loops.min_period, cfg.loops.max_period, cfg.loops.min_copies),
            natural_new_tokens=cfg.loops.new_tokens,
        )
        measured, errors = measure(ctx, cfg.metrics)
        record = {
            **base,
            "status": "failed" if errors else "ok",
            "weights_sha256": sha,
            "metrics": measured.scalars,
            "probes": {"skipped_short_texts": probes.skipped_short, "key": probes.key},
        }
        if errors:
            record["error"] = {
                "type": "MetricError",
                "message": "; ".join(f"metrics.{k}: {v}" for k, v in errors.items()),
            }
        record["identical_weights_as"] = _identical_steps(root, study, model_name, step, sha)
    except Exception as err:
        log.error("%s step %s failed: %s: %s", model_name, base["step"], type(err).__name__, err)
        record = {
            **base,
            "status": "failed",
            "error": {"type": type(err).__name__, "message": str(err), "traceback": traceback.format_exc()},
        }
    record["seconds"] = round(time.time() - started, 2)
    record["config"] = OmegaConf.to_container(cfg, resolve=True)
    path = results.record_path(root, study, model_name, record["step"])
    record = results.write_record(path, record, {**measured.arrays, **measured.raw})
    run_dir = tracking.log_checkpoint(
        cfg.logger, results.study_dir(root, study), study, record, measured, record["config"]
    )
    if run_dir:
        record["wandb_run_dir"] = run_dir
        results.write_record(path, record)
    return record


def _can_skip(previous: dict | None, base: dict, force: bool) -> bool:
    return (
        not force
        and previous is not None
        and previous.get("status") == "ok"
        and previous.get("config_hash") == base["config_hash"]
        and previous.get("revision") == base["revision"]
    )


def _identical_steps(root: str, study: str, model: str, step: int, sha: str) -> list[int]:
    """Other steps of this model already recorded with exactly these weights (a hub integrity problem)."""
    same = [
        int(r["step"])
        for r in results.load_records(root, study)
        if r.get("model") == model and r.get("weights_sha256") == sha and int(r["step"]) != step
    ]
    if same:
        log.warning(
            "%s step %s has weights identical to step(s) %s: the checkpoint source may serve "
            "wrong weights for one of them",
            model,
            step,
            same,
        )
    return same


def _summary_line(record: dict) -> str:
    if record.get("skipped"):
        return f"{record['model']} step {record['step']}: skipped (record exists)"
    if record["status"] != "ok":
        return (
            f"{record['model']} step {record['step']}: FAILED {record['error']['type']}: {record['error']['message']}"
        )
    shown = ", ".join(f"{k}={v:.3g}" for k, v in list(record["metrics"].items())[:4])
    return f"{record['model']} step {record['step']}: ok in {record['seconds']} s ({shown})"


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def _hydra_main(cfg: DictConfig) -> dict:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    record = run_job(cfg)
    print(_summary_line(record), flush=True)
    if HydraConfig.get().mode == RunMode.RUN and record["status"] != "ok" and not record.get("skipped"):
        path = results.record_path(cfg.paths.root, cfg.study, record["model"], record["step"])
        print(f"error: {record['error']['message']}\n(failure record: {path})", file=sys.stderr)
        sys.exit(1)
    return record


def main() -> None:
    """Console script `ckptstudy` (and `python -m ckptstudy`)."""
    register_configs()
    _hydra_main()

"""One job = one (model, step): resolve, reuse or load, measure every family, write the record, log it.

Failures never escape `run_job`: a bad config value, a missing, corrupt or unsafe checkpoint, an
unwritable results directory, a failing metric family or (with `logger.strict`) a W&B failure becomes
a failure record naming the cause, so a sweep goes on and loses nothing. The order is cheap checks
first: inputs (`config.validate`: loops, probe sizes, metric parameters), the step, the reuse decision, the results
directory, then the checkpoint's config.json and weight files, the tokenizer and the probes, the memory budget
(`memory_budget`, resolved now; every pass every family describes must fit it, one row per call at least), and
only then the weights. The record keeps the resolved budget, what each family cost (wall time and peak memory,
`ckptstudy.measure.meter`) and a warning for every configured batch size the budget lowered.
"""

from __future__ import annotations

import datetime
import inspect
import logging
import math
import time
import traceback
from contextlib import nullcontext
from pathlib import Path

import numpy as np
from omegaconf import DictConfig, OmegaConf

from ckptstudy import fingerprint, results
from ckptstudy.config import validate
from ckptstudy.measure import precision
from ckptstudy.measure.budget import BudgetError, MemoryBudget, fit_rows, gigabytes, resolve_budget
from ckptstudy.measure.cost import Shape, probe_sizes
from ckptstudy.measure.meter import Meter
from ckptstudy.metrics import FamilyResult, JobContext, describe_passes, family_compute_bytes
from ckptstudy.model import arch, checkpoints, hubcache
from ckptstudy.model.suite_spec import checkpoint_problem
from ckptstudy.params import check_family
from ckptstudy.probes import cached_probes
from ckptstudy.record import FORMAT, Identity, Record, RecordArrays, Scalars
from ckptstudy.report.tracking import Tracker, TrackingError

log = logging.getLogger("ckptstudy")


def run_job(cfg: DictConfig) -> Record:
    """Measure one checkpoint and write its record; returns the record (status ok or failed, or
    the previous record with `outcome.skipped` when it is still valid)."""
    started = time.time()
    record = Record(Identity(model=checkpoints.run_name(cfg.model), step=cfg.step, study=cfg.study))
    measured = FamilyResult()
    disk = hubcache.JobDisk()  # checkpoints.evict / prefetch_ahead: inactive until the source is known
    try:
        validate(cfg)  # loops, probe sizes, every family's parameters: before anything is resolved
        record = fingerprint.identify(cfg)
        source = resolve_source(cfg)
        record.identity.step, record.identity.revision = source.step, source.describe()
        record.provenance.checkpoint_fingerprint = fingerprint.checkpoint_fingerprint(source)
        path = results.record_path(cfg.paths.root, cfg.study, record.model, source.step)
        previous = results.read_record(path)
        stale = fingerprint.stale_reason(previous, record, cfg.force)
        if stale is None and (mismatch := results.arrays_mismatch(previous)):
            stale = f"previous record unusable: {mismatch}"
        disk = hubcache.job_disk(cfg, source, done=_recorded(cfg, record.provenance.config_hash))
        if stale is None:
            log.info("%s step %s: record exists and is current, skipped (force=true recomputes)", *_job(record))
            disk.finish(written=True)  # a revision a killed sweep downloaded for this record is evicted now
            previous.outcome.skipped = True
            return previous
        if previous is not None:
            record.outcome.recomputed_because = stale
            log.info("%s step %s: recomputing (%s)", *_job(record), stale)
        results.check_writable(path.parent)
        results.remove_stale_temps(path.parent)
        disk.fetch()  # this job's revision first, then the next ones in the background
        disk.start_prefetch()
        measured = measure_checkpoint(cfg, source, record)
    except Exception as err:
        log.error("%s step %s failed: %s: %s", *_job(record), type(err).__name__, err)
        record.outcome.status, record.outcome.error = "failed", _error(err)
    record = finish(cfg, record, measured, started)
    disk.finish(written=record.outcome.unwritten is None)
    return record


def resolve_source(cfg: DictConfig) -> checkpoints.CheckpointSource:
    """The checkpoint of (model, step), after checking the step against the model's schedule."""
    steps = checkpoints.available_steps(cfg.model)
    step = checkpoints.resolve_step(cfg.step, steps, cfg.model.name)
    return checkpoints.source_for(cfg.model, step)


def measure_checkpoint(cfg: DictConfig, source: checkpoints.CheckpointSource, record: Record) -> FamilyResult:
    """Check, then load the checkpoint, build its probes, run every family; fills `record` and returns the
    measurements. Non-finite weights, activations, metrics and arrays are flagged in its `outcome.warnings`."""
    if cfg.model.checkpoints == "suite" and (problem := checkpoint_problem(cfg.model, source.step)):
        raise checkpoints.CheckpointError(problem)  # a job never trains the suite (`make suite` does)
    config = checkpoints.inspect_checkpoint(source, getattr(cfg.model.arch, "value", cfg.model.arch))
    tokenizer = checkpoints.load_tokenizer(source, bool(cfg.model.bos_from_eos))
    probes = cached_probes(cfg.probes, tokenizer, Path(cfg.paths.root) / "cache" / "probes")
    device = checkpoints.resolve_device(cfg.device)
    dtype = checkpoints.resolve_dtype(cfg.dtype, device)
    family = arch.for_model_type(config.get("model_type"), str(source))
    shape = Shape.of(config, family.mlp_matrices, family.learned_positions)
    budget = job_budget(cfg, shape, device, dtype.itemsize)
    found = record.provenance
    found.memory_budget = {"bytes": budget.bytes, "how": budget.how}
    model = checkpoints.load_model(source, device=device, dtype=dtype)
    if found.checkpoint_fingerprint is None:  # a hub revision downloaded just now
        found.checkpoint_fingerprint = fingerprint.checkpoint_fingerprint(source)
    warnings = record.outcome.warnings
    bad_weights = checkpoints.nonfinite_weights(model)
    for name, count in bad_weights.items():
        warnings.append(f"weights: {count} non-finite values in {name}")
    if bad_weights:
        log.warning("%s step %s: non-finite weights in %d tensors: %s", *_job(record), len(bad_weights), bad_weights)
    hashes = checkpoints.hash_weights(model)
    found.weights_sha256, found.weights_hash_version = hashes.weights_sha256, checkpoints.WEIGHTS_HASH_VERSION
    found.tensor_hashes, found.constant_tensors = hashes.tensors, hashes.constant
    ctx = JobContext.from_config(cfg, model, tokenizer, probes, budget)
    ctx.meter = Meter(device)
    found.family_dtypes = {}  # the dtype each family computed in (measure/precision.py)
    with checkpoints.ActivationGuard(model) as guard:
        measured, errors = measure_families(ctx, cfg.metrics, found.family_dtypes)
    found.cost = ctx.meter.costs
    warnings += ctx.warnings
    bad_activations = guard.nonfinite()
    for name, calls in bad_activations.items():
        warnings.append(f"activations: non-finite values in the output of {name} ({calls} forward calls)")
    if bad_activations:
        log.warning("%s step %s: non-finite activations in %s", *_job(record), sorted(bad_activations))
    warnings += nonfinite_warnings(measured, suspect=bool(bad_weights or bad_activations))
    if bad_weights or bad_activations:
        found.nonfinite = {"weights": bad_weights, "activations": bad_activations}
    record.outcome.status = "failed" if errors else "ok"
    record.scalars = record_scalars(measured, cfg.report.bootstrap)
    found.probes = {"skipped_short_texts": probes.skipped_short, "key": probes.key}
    if errors:
        message = "; ".join(f"metrics.{k}: {v}" for k, v in errors.items())
        record.outcome.error = {"type": "MetricError", "message": message}
    return measured


def job_budget(cfg: DictConfig, shape: Shape, device: str, dtype_bytes: int) -> MemoryBudget:
    """The job's memory budget (`memory_budget` on `device`, the weights of `shape` not yet loaded), after checking
    that one row (or group) per call of every pass the enabled families describe fits in it, at the width its
    family computes in and beside that family's wider copy of the weights (`BudgetError` naming the pass
    otherwise): a job that cannot fit fails before its weights load."""
    budget = resolve_budget(cfg.memory_budget, device, shape.params * dtype_bytes)
    passes, _ = describe_passes(cfg.metrics, probe_sizes(cfg, shape.context, loop_share=1.0), shape)
    widths = family_compute_bytes(cfg.metrics, dtype_bytes)
    for family, described in passes.items():
        nbytes = widths.get(family, dtype_bytes)  # a shared pass runs in the loaded dtype
        upcast = precision.upcast_bytes(shape.params, dtype_bytes, nbytes)
        for p in described:
            try:
                fit_rows(p, shape, budget.bytes - upcast, nbytes)
            except BudgetError as err:
                if not upcast:
                    raise
                raise BudgetError(
                    f"{err} (metrics.{family} computes in {8 * nbytes}-bit floats: its copy of the weights, "
                    f"{gigabytes(upcast)}, comes out of the memory budget of {gigabytes(budget.bytes)})"
                ) from err
    log.info("memory budget: %s", budget.describe())
    return budget


def record_scalars(measured: FamilyResult, bootstrap_settings) -> Scalars:
    """The record's scalars from what the families measured: `metrics` (every scalar), `nan_reasons`,
    `no_interval` (why a value has no interval), and the bootstrap intervals of the statistics (`ci`) with why
    an interval is NaN (`ci_reasons`) and the method of each finite one (`ci_method`, `intervals.METHODS`). The
    samples go to the npz (`RecordArrays.of`)."""
    found = measured.intervals(bootstrap_settings)
    return Scalars(
        metrics=measured.scalars,
        nan_reasons=measured.nan_reasons,
        no_interval=dict(measured.no_interval),
        ci=found.ci,
        ci_reasons=found.reasons,
        ci_method=found.methods,
    )


def nonfinite_warnings(measured: FamilyResult, suspect: bool) -> list[str]:
    """Warnings for non-finite results: every non-finite scalar and array of a checkpoint whose weights or
    activations were not finite (`suspect`), and otherwise the scalars whose family gave no reason."""
    out = []
    for key, value in measured.scalars.items():
        unexplained = measured.nan_reasons.get(key, "unexplained").startswith("unexplained")
        if not math.isfinite(value) and (suspect or unexplained):
            out.append(f"metric {key} is non-finite ({value})")
    if suspect:
        for key, array in {**measured.heads, **measured.raw}.items():
            array = np.asarray(array)
            if array.dtype.kind in "fc":
                count = int((~np.isfinite(array)).sum())
                if count:
                    out.append(f"array {key}: {count} of {array.size} values are non-finite")
    return out


def measure_families(
    ctx: JobContext, metrics_cfg, dtypes: dict[str, str] | None = None
) -> tuple[FamilyResult, dict[str, str]]:
    """Run every enabled metric family, each in the dtype it needs (`precision.required_dtype`: the model is cast
    for it and back); a failing family is reported, the others still run. `dtypes` gets {family: dtype used}.

    A non-finite scalar that its family gave no reason for is flagged as unexplained (a defect to fix).
    """
    total, errors = FamilyResult(), {}
    for name, family_cfg in metrics_cfg.items():
        fn, params = check_family(name, OmegaConf.to_container(family_cfg, resolve=True))
        compute = precision.required_dtype(inspect.getmodule(fn), precision.model_dtype(ctx.model))
        if dtypes is not None:
            dtypes[name] = precision.dtype_name(compute)
        try:
            with ctx.meter.part(name) if ctx.meter else nullcontext(), precision.computing_in(ctx.model, compute):
                result = fn(ctx, **params)
        except Exception as err:
            log.error("metrics.%s failed: %s: %s", name, type(err).__name__, err)
            errors[name] = f"{type(err).__name__}: {err}"
            continue
        for key in result.unexplained_nans():
            log.warning("metrics.%s gave %s = %s without a reason", name, key, result.scalars[key])
            result.explain(key, f"unexplained: metrics.{name} gave no reason")
        total.update(result)
    return total, errors


def finish(cfg: DictConfig, record: Record, measured: FamilyResult, started: float) -> Record:
    """Write the record (and its arrays) atomically, then log it to W&B; a logging failure loses nothing
    (with `logger.strict`, it fails the job: the record is rewritten as failed, so a re-run recomputes it).

    The identical-weights check and the write hold the study's file lock, so parallel jobs see each other.
    A record that cannot be written (read-only or full disk) is returned as failed, naming the path.
    """
    outcome = record.outcome
    outcome.seconds = round(time.time() - started, 2)
    outcome.finished_at = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    record.provenance.config = OmegaConf.to_container(cfg, resolve=True)
    path = results.record_path(cfg.paths.root, cfg.study, record.model, record.identity.step)
    try:
        with results.study_lock(cfg.paths.root, cfg.study):
            if record.provenance.weights_sha256:
                others = results.load_records(cfg.paths.root, cfg.study)
                record.provenance.identical_weights_as = _identical_steps(cfg, record, others)
                if record.provenance.tensor_hashes:
                    record.provenance.integrity = _equal_tensors(cfg, record, others)
            record = results.write_record(path, record, RecordArrays.of(measured))
    except OSError as err:
        log.error("%s step %s: cannot write its record %s: %s: %s", *_job(record), path, type(err).__name__, err)
        if outcome.status == "ok":
            outcome.status, outcome.error = "failed", _error(err)
        outcome.unwritten = f"{path}: {type(err).__name__}: {err}"
        return record
    tracker = Tracker(cfg.logger, results.study_dir(cfg.paths.root, cfg.study), cfg.study)
    try:
        run_dir = tracker.log_checkpoint(record, measured, record.provenance.config)
    except TrackingError as err:
        log.error("%s step %s failed: %s", *_job(record), err)
        outcome.status, outcome.error = "failed", _error(err)
        outcome.warnings.append(str(err))
        return _rewrite(path, record)
    if run_dir or tracker.failures:
        record.provenance.wandb_run_dir = run_dir
        outcome.warnings += tracker.failures
        record = _rewrite(path, record)
    return record


def _rewrite(path: Path, record: Record) -> Record:
    """Rewrite a written record with what W&B added; if that fails, the record on disk stays as it was."""
    try:
        results.write_record(path, record)
    except OSError as err:
        log.error("%s step %s: cannot update its record %s: %s: %s", *_job(record), path, type(err).__name__, err)
        record.outcome.unwritten = f"{path}: {type(err).__name__}: {err}"
    return record


def _identical_steps(cfg: DictConfig, record: Record, others: list[Record]) -> list[int]:
    """Other steps of this run already recorded with exactly these weights (a hub integrity problem)."""
    step, key, run = record.step, results.weights_key(record), record.model
    same = [r.step for r in others if r.model == run and results.weights_key(r) == key and r.step != step]
    if same:
        log.warning(
            "%s step %s has weights identical to step(s) %s: the checkpoint source may serve wrong weights "
            "for one of them",
            run,
            step,
            same,
        )
    return same


def _equal_tensors(cfg: DictConfig, record: Record, others: list[Record]) -> list[dict]:
    """Parameter tensors equal to the same tensor at another recorded step (whose weights differ as a whole),
    e.g. a shard of another checkpoint served for this one; `final` marks the model's last checkpoint."""
    final, run = checkpoints.available_steps(cfg.model)[-1], record.model
    mine = [r for r in others if not (r.model == run and r.step == record.step)]
    found = results.tensor_equalities([record, *mine], {run: final}).get((run, record.step), [])
    for entry in found:
        log.warning("%s step %s: %s", run, record.step, results.describe_equality(entry))
    return found


def _recorded(cfg: DictConfig, config_hash: str):
    """`done(step)`: whether a step of this model has an ok current-format record made with this config (its job
    will be skipped, so prefetching its revision is not needed)."""

    def done(step: int) -> bool:
        path = results.record_path(cfg.paths.root, cfg.study, checkpoints.run_name(cfg.model), step)
        previous = results.read_record(path)
        return (
            previous is not None
            and previous.ok
            and previous.format == FORMAT
            and previous.provenance.config_hash == config_hash
        )

    return done


def _error(err: Exception) -> dict:
    return {"type": type(err).__name__, "message": str(err), "traceback": traceback.format_exc()}


def _job(record: Record) -> tuple:
    return record.model, record.identity.step


def summary_line(record: Record) -> str:
    """One line per job for the console."""
    where = f"{record.model} step {record.identity.step}"
    if record.outcome.skipped:
        return f"{where}: skipped (record exists)"
    if not record.ok:
        error = record.outcome.error or {}
        return f"{where}: FAILED {error.get('type')}: {error.get('message')}"
    shown = ", ".join(f"{k}={v:.3g}" for k, v in list(record.scalars.metrics.items())[:4])
    return f"{where}: ok in {record.outcome.seconds} s ({shown})"

"""Weights & Biases: one run per checkpoint, one trajectory run per model at the end of a sweep.

Offline by default (no account, no network). Local records stay the source of truth: a W&B failure
(wandb.init raising, a run dying in `log` or `finish`) is reported once per `Tracker` (one per job: one
log line, one entry in `failures` that the job puts in its record's `warnings`) and never loses a
record; `logger.strict=true` makes it fatal instead (TrackingError, which fails the job).
"""

from __future__ import annotations

import logging
import re
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from ckptstudy.record import Record
from ckptstudy.report.plots import heatmap_figure, png_bytes

log = logging.getLogger(__name__)


CLAIM_COLUMNS = ("id", "statement", "verdict", "reason", "agreement")  # the W&B table of a model's verdicts
CLAIM_TABLE = "claim_verdicts"  # its key (not under claims/, where each verdict is a summary key)


class TrackingError(RuntimeError):
    """W&B failed and `logger.strict=true` asked for that to be fatal."""


def enabled(logger_cfg) -> bool:
    return logger_cfg.backend == "wandb" and logger_cfg.mode != "disabled"


class Tracker:
    """W&B runs under `<study dir>/wandb`, with the failure policy of one job or one summary."""

    def __init__(self, logger_cfg, directory: Path, study: str):
        self.cfg = logger_cfg
        self.directory = Path(directory)
        self.study = study
        self.failures: list[str] = []

    def report_failure(self, what: str, err: Exception) -> None:
        """Say once that W&B failed (the local results are unaffected); raise if `logger.strict`.

        Only the first failure is logged and kept in `failures`: a run that died in `log` usually fails
        again in `finish`, and that is the same failure.
        """
        failure = f"W&B {what} failed ({type(err).__name__}: {err})"
        if self.cfg.get("strict", False):
            raise TrackingError(f"{failure} and logger.strict=true makes that fatal") from err
        message = f"{failure}; results are still written locally"
        if self.failures:
            log.debug("W&B failed again: %s", message)
            return
        log.warning(message)
        self.failures.append(message)

    @contextmanager
    def run(self, what: str, **init_kwargs) -> Iterator[object | None]:
        """A W&B run that is always finished; yields None when W&B is off or could not start.

        An exception inside the block is reported (not raised, unless strict): logging never fails a job.
        """
        if not enabled(self.cfg):
            yield None
            return
        try:
            run = self._init(**init_kwargs)
        except Exception as err:
            self.report_failure(what, err)  # raises when strict
            yield None
            return
        try:
            yield run
        except TrackingError:
            raise
        except Exception as err:
            self.report_failure(what, err)
        finally:
            try:
                run.finish()
            except Exception as err:
                self.report_failure(f"{what} (finish)", err)

    def _init(self, **kwargs):
        import wandb

        self.directory.mkdir(parents=True, exist_ok=True)
        settings = wandb.Settings(
            silent=True,
            console="off",
            disable_git=True,
            x_disable_stats=True,
            x_save_requirements=False,
            save_code=False,
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return wandb.init(
                project=self.cfg.project,
                entity=self.cfg.entity,
                mode=self.cfg.mode,
                dir=str(self.directory),
                reinit="finish_previous",
                settings=settings,
                group=self.study,
                **kwargs,
            )

    def log_checkpoint(self, record: Record, measured, config: dict) -> str | None:
        """One `job_type=checkpoint` run: config, summary scalars, layer x head heatmaps, histograms.

        `measured` is the job's FamilyResult. Returns the run directory, or None when W&B is off or failed.
        """
        step = record.identity.step
        name = f"{record.model}@step{step}"
        tags = run_tags(record.identity.base_model or record.model, record.identity.seed, self.study)
        with self.run("checkpoint run", job_type="checkpoint", name=name, config=config, tags=tags) as run:
            if run is None:
                return None
            import wandb

            scalars = dict(record.scalars.metrics)
            media = {k: wandb.Histogram(np.asarray(v)) for k, v in measured.histograms.items() if len(v)}
            for chart, values in measured.bars.items():
                table = wandb.Table(columns=["label", "value"], data=[[k, float(v)] for k, v in values.items()])
                media[f"bar/{chart}"] = wandb.plot.bar(table, "label", "value", title=f"{chart} @ step {step}")
            if self.cfg.heatmaps:
                for key, array in measured.arrays.items():
                    media[f"heatmap/{key}"] = _image(heatmap_figure(array, f"{key} @ step {step}"))
            run.log({"train/step": step, **scalars, **media})
            summary = {"status": record.outcome.status, "weights_sha256": record.provenance.weights_sha256}
            run.summary.update({**summary, **scalars})
            return str(Path(run.dir).parent)
        return None

    def log_trajectory(
        self,
        model: str,
        table,
        onsets: dict[str, float],
        head_tables: dict[str, list[list]] | None = None,
        plot_path: Path | None = None,
        artifacts: dict[str, Path] | None = None,
        claims: list[dict] | None = None,
    ) -> str | None:
        """One `job_type=trajectory` run per model run (a training seed of a model is its own run): every ok
        checkpoint in step order against `train/step`, config {study, model, base_model, seed}, tagged
        `model:<base model>`, `run:<model>`, `seed:<seed>` (when it has one) and `study:<study>`; each file of
        `artifacts` ({kind: path}, e.g. the report and trajectories.csv) is logged as an artifact `<study>-<kind>`.
        `claims`: the model's verdicts as rows {id, statement, verdict, reason, agreement}: summary keys
        `claims/<id>` (the verdict) and a table `claim_verdicts`."""
        rows = table[(table["model"] == model) & (table["status"] == "ok")].sort_values("step")
        base, seed = _run_identity(table, model)
        config = {"study": self.study, "model": model, "base_model": base, "seed": seed}
        tags = run_tags(base, seed, self.study, run_label=model)
        name = f"{model}/trajectory"
        with self.run("trajectory run", job_type="trajectory", name=name, config=config, tags=tags) as run:
            if run is None:
                return None
            import wandb

            run.define_metric("train/step")
            run.define_metric("*", step_metric="train/step")
            metric_cols = [c for c in rows.columns if "/" in c]
            for _, row in rows.iterrows():
                values = {c: float(row[c]) for c in metric_cols if _is_number(row[c])}
                run.log({"train/step": int(row["step"]), **values})
            run.summary.update({f"onset/{k}": v for k, v in onsets.items()})
            if claims:
                run.summary.update({f"claims/{row['id']}": row["verdict"] for row in claims})
                columns = list(CLAIM_COLUMNS)
                data = [[str(row[c]) for c in columns] for row in claims]
                run.log({CLAIM_TABLE: wandb.Table(columns=columns, data=data)})
            for key, data in (head_tables or {}).items():
                run.log({f"heads/{key}": wandb.Table(columns=["step", "layer", "head", "value"], data=data)})
            if plot_path is not None and Path(plot_path).exists():
                run.log({"trajectory_plot": wandb.Image(str(plot_path))})
            for kind, path in (artifacts or {}).items():
                if Path(path).exists():
                    artifact = wandb.Artifact(_artifact_name(f"{self.study}-{kind}"), type=kind)
                    artifact.add_file(str(path))
                    run.log_artifact(artifact)
            return str(Path(run.dir).parent)
        return None

    def log_trajectories(
        self,
        table,
        onsets: dict[str, dict[str, float]],
        head_tables: dict[str, dict[str, list[list]]],
        plot_path: Path | None = None,
        artifacts: dict[str, Path] | None = None,
        claims: dict[str, list[dict]] | None = None,
    ) -> None:
        """`log_trajectory` for every model of the table: `onsets`, `head_tables` and `claims` are keyed by model."""
        for model in sorted(table["model"].unique()):
            verdicts = (claims or {}).get(model)
            self.log_trajectory(
                model, table, onsets.get(model, {}), head_tables.get(model), plot_path, artifacts, verdicts
            )


def run_tags(base_model: str, seed, study: str, run_label: str | None = None) -> list[str]:
    """W&B tags of a run: `model:<base model>` (every seed of a model shares it: W&B groups by it), `seed:<k>` when
    the run has a training seed, `run:<label>` for a trajectory run, `study:<study>`."""
    tags = [f"model:{base_model}"]
    if run_label is not None:
        tags.append(f"run:{run_label}")
    if seed is not None and _is_number(seed):
        tags.append(f"seed:{int(float(seed))}")
    return [t[:64] for t in [*tags, f"study:{study}"]]


def _run_identity(table, model: str) -> tuple[str, int | None]:
    """(base model, training seed) of a run's rows in the trajectories table (the run's name and None for tables
    without those columns)."""
    rows = table[table["model"] == model]
    base = rows["base_model"].iloc[0] if "base_model" in rows and len(rows) else model
    seed = rows["seed"].iloc[0] if "seed" in rows and len(rows) else None
    return str(base), (int(float(seed)) if _is_number(seed) else None)


def _artifact_name(name: str) -> str:
    """A W&B artifact name (letters, digits, '-', '_', '.') made from `name`."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)[:128]


def _image(fig):
    """A W&B image of a matplotlib figure (rendered here, so W&B needs no plotting backend)."""
    import io

    import wandb
    from PIL import Image

    return wandb.Image(Image.open(io.BytesIO(png_bytes(fig))))


def _is_number(value) -> bool:
    try:
        return bool(np.isfinite(float(value)))
    except (TypeError, ValueError):
        return False

"""Weights & Biases: one run per checkpoint, one trajectory run per model at the end of a sweep.

Offline by default (no account, no network). Local records stay the source of truth:
a W&B failure is reported once and never loses a record.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)
_warned = False


def _settings():
    import wandb

    return wandb.Settings(
        silent=True,
        console="off",
        disable_git=True,
        x_disable_stats=True,
        x_save_requirements=False,
        save_code=False,
    )


def _init(logger_cfg, directory: Path, **kwargs):
    import wandb

    directory.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return wandb.init(
            project=logger_cfg.project,
            entity=logger_cfg.entity,
            mode=logger_cfg.mode,
            dir=str(directory),
            reinit="finish_previous",
            settings=_settings(),
            **kwargs,
        )


def enabled(logger_cfg) -> bool:
    return logger_cfg.backend == "wandb" and logger_cfg.mode != "disabled"


def report_failure(what: str, err: Exception) -> None:
    """Say once per process that W&B failed; the local results are unaffected."""
    global _warned
    if not _warned:
        log.warning("W&B %s failed (%s: %s); results are still written locally", what, type(err).__name__, err)
        _warned = True


def log_checkpoint(logger_cfg, directory: Path, study: str, record: dict, measured, config: dict) -> str | None:
    """One `job_type=checkpoint` run: config, summary scalars, layer x head heatmaps, histograms.

    `measured` is the job's FamilyResult. Returns the run directory, or None when W&B is off or failed.
    """
    if not enabled(logger_cfg):
        return None
    run = None
    try:
        import wandb

        from ckptstudy.plots import heatmap_figure

        run = _init(
            logger_cfg,
            directory,
            group=study,
            job_type="checkpoint",
            name=f"{record['model']}@step{record['step']}",
            config=config,
        )
        scalars = dict(record.get("metrics") or {})
        images = {k: wandb.Histogram(np.asarray(v)) for k, v in measured.histograms.items() if len(v)}
        for name, values in measured.bars.items():
            table = wandb.Table(columns=["label", "value"], data=[[k, float(v)] for k, v in values.items()])
            images[f"bar/{name}"] = wandb.plot.bar(table, "label", "value", title=f"{name} @ step {record['step']}")
        if logger_cfg.heatmaps:
            for name, array in measured.arrays.items():
                fig = heatmap_figure(array, f"{name} @ step {record['step']}")
                images[f"heatmap/{name}"] = wandb.Image(fig)
                _close(fig)
        run.log({"train/step": record["step"], **scalars, **images})
        run.summary.update({"status": record["status"], "weights_sha256": record.get("weights_sha256"), **scalars})
        return str(Path(run.dir).parent)
    except Exception as err:  # logging must never fail a job: the record is already on disk
        report_failure("checkpoint run", err)
        return None
    finally:
        _finish(run)


def log_trajectory(
    logger_cfg,
    directory: Path,
    study: str,
    model: str,
    table,
    onsets: dict[str, float],
    head_tables: dict[str, list[list]] | None = None,
    plot_path: Path | None = None,
) -> str | None:
    """One `job_type=trajectory` run per model: every ok checkpoint in step order against `train/step`."""
    if not enabled(logger_cfg):
        return None
    run = None
    try:
        import wandb

        run = _init(
            logger_cfg,
            directory,
            group=study,
            job_type="trajectory",
            name=f"{model}/trajectory",
            config={"study": study, "model": model},
        )
        run.define_metric("train/step")
        run.define_metric("*", step_metric="train/step")
        rows = table[(table["model"] == model) & (table["status"] == "ok")].sort_values("step")
        metric_cols = [c for c in rows.columns if "/" in c]
        for _, row in rows.iterrows():
            values = {c: float(row[c]) for c in metric_cols if _is_number(row[c])}
            run.log({"train/step": int(row["step"]), **values})
        run.summary.update({f"onset/{k}": v for k, v in onsets.items()})
        for name, data in (head_tables or {}).items():
            run.log({f"heads/{name}": wandb.Table(columns=["step", "layer", "head", "value"], data=data)})
        if plot_path is not None and Path(plot_path).exists():
            run.log({"trajectory_plot": wandb.Image(str(plot_path))})
        return str(Path(run.dir).parent)
    except Exception as err:
        report_failure("trajectory run", err)
        return None
    finally:
        _finish(run)


def _is_number(value) -> bool:
    try:
        return bool(np.isfinite(float(value)))
    except (TypeError, ValueError):
        return False


def _close(fig) -> None:
    import matplotlib.pyplot as plt

    plt.close(fig)


def _finish(run) -> None:
    if run is None:
        return
    try:
        run.finish()
    except Exception as err:
        report_failure("finish", err)

"""End of a sweep: trajectories.csv, onset steps, a trajectory plot, W&B trajectory runs, a summary.

Runs as a Hydra callback (`on_multirun_end`) and on demand as `ckptstudy-trajectories`.
"""

from __future__ import annotations

import json
import logging
import math
import sys
from pathlib import Path

import numpy as np
from hydra.experimental.callback import Callback

from ckptstudy import results, tracking

log = logging.getLogger(__name__)


def onset_step(steps, values, fraction: float = 0.5) -> float:
    """First step where `values` crosses baseline + fraction * (extreme - baseline), interpolated in log step.

    Baseline is the value at the first step; the extreme is the max or the min, whichever lies
    further from the baseline (so falling metrics get an onset too). NaN when there is no change.
    """
    pairs = [(float(s), float(v)) for s, v in zip(steps, values) if v is not None and np.isfinite(v)]
    if len(pairs) < 2:
        return math.nan
    pairs.sort()
    s, v = np.array([p[0] for p in pairs]), np.array([p[1] for p in pairs])
    base = v[0]
    sign = 1.0 if (v.max() - base) >= (base - v.min()) else -1.0
    rel = sign * (v - base)
    span = rel.max()
    if span <= 0:
        return math.nan
    threshold = fraction * span
    i = int(np.argmax(rel >= threshold))
    if i == 0:
        return float(s[0])
    x0, x1 = np.log1p(s[i - 1]), np.log1p(s[i])
    t = (threshold - rel[i - 1]) / (rel[i] - rel[i - 1])
    return float(np.expm1(x0 + t * (x1 - x0)))


def onsets(table, metrics: list[str], fraction: float = 0.5) -> dict[tuple[str, str], float]:
    """Onset step per (model, metric) over the ok rows of the table."""
    out = {}
    ok = table[table["status"] == "ok"]
    for model, part in ok.groupby("model"):
        for metric in metrics:
            if metric in part.columns:
                out[(model, metric)] = onset_step(part["step"].tolist(), part[metric].astype(float).tolist(), fraction)
    return out


def add_cross_step_columns(table, records: list[dict], k: int = 5):
    """`icl/top5_jaccard_prev`: overlap of the top-k ablation heads with the previous ok step's."""
    import torch

    from ckptstudy.metrics.specialization import jaccard, top_heads

    column = f"icl/top{k}_jaccard_prev"
    values = {}
    for model in {r.get("model") for r in records}:
        previous = None
        for record in sorted(
            (r for r in records if r.get("model") == model and r.get("status") == "ok"), key=lambda r: int(r["step"])
        ):
            effects = results.read_arrays(Path(record["_path"])).get("icl/ablation_effect")
            if effects is None:
                continue
            current = top_heads(torch.from_numpy(effects), k)
            values[(model, int(record["step"]))] = jaccard(previous, current) if previous is not None else math.nan
            previous = current
    if values:
        table[column] = [values.get((m, int(s)), math.nan) for m, s in zip(table["model"], table["step"])]
    return table


def head_tables(records: list[dict], model: str) -> dict[str, list[list]]:
    """Per-head arrays over steps as rows [step, layer, head, value] (2-D layer x head arrays only)."""
    tables: dict[str, list[list]] = {}
    for record in records:
        if record.get("model") != model or record.get("status") != "ok":
            continue
        for name, array in results.read_arrays(Path(record["_path"])).items():
            if array.ndim == 2:
                rows = tables.setdefault(name, [])
                rows.extend([int(record["step"]), li, hi, float(x)] for (li, hi), x in np.ndenumerate(array))
    return tables


def summarize(
    root: str,
    study: str,
    logger_cfg=None,
    summary_metrics: list[str] | None = None,
    onset_metrics: list[str] | None = None,
    onset_fraction: float = 0.5,
) -> dict:
    """Rebuild the table, compute onsets, plot, log W&B trajectory runs, print the summary."""
    from ckptstudy.plots import save_figure, trajectory_figure

    records = results.load_records(root, study)
    table = add_cross_step_columns(results.results_table(records), records)
    path, table = results.write_table(root, study, table)
    directory = results.study_dir(root, study)
    if table.empty:
        print(f"no records under {directory / 'records'}")
        return {"table": path, "failed": []}
    summary_metrics = [m for m in (summary_metrics or []) if m in table.columns]
    onset_metrics = [m for m in (onset_metrics or []) if m in table.columns]
    found = onsets(table, onset_metrics, onset_fraction)
    (directory / "onsets.json").write_text(
        json.dumps({f"{m}@{k}": (None if math.isnan(v) else v) for (m, k), v in found.items()}, indent=1)
    )
    plot_path = directory / "trajectories.png"
    if summary_metrics and (table["status"] == "ok").any():
        save_figure(trajectory_figure(table[table["status"] == "ok"], summary_metrics, found), plot_path)
    for model in sorted(table["model"].unique()):
        if logger_cfg is not None:
            model_onsets = {metric: v for (m, metric), v in found.items() if m == model and not math.isnan(v)}
            tracking.log_trajectory(
                logger_cfg,
                directory,
                study,
                model,
                table,
                model_onsets,
                head_tables(records, model),
                plot_path,
            )
    failed = table[table["status"] != "ok"]
    print_summary(table, summary_metrics, found, failed, path, plot_path, directory)
    return {
        "table": path,
        "plot": plot_path,
        "onsets": found,
        "failed": failed[["model", "step"]].values.tolist(),
    }


def print_summary(table, metrics, found, failed, path, plot_path, directory) -> None:
    import pandas as pd

    with pd.option_context("display.width", 200, "display.max_columns", 20, "display.float_format", "{:.3f}".format):
        print(f"\n== trajectories ({len(table)} checkpoints) ==")
        print(table[["model", "step", "status", *metrics]].to_string(index=False))
    for (model, metric), value in sorted(found.items()):
        shown = "no change" if math.isnan(value) else f"~step {value:.0f}"
        print(f"onset {model} {metric}: {shown}")
    dup = table[table["identical_weights_as"].astype(str) != ""]
    for _, row in dup.iterrows():
        print(f"WARNING {row['model']} step {row['step']}: weights identical to step(s) {row['identical_weights_as']}")
    for _, row in failed.iterrows():
        print(
            f"FAILED {row['model']} step {row['step']}: see {directory}/records/{row['model']}/step{row['step']}.json"
        )
    print(f"results: {path}")
    if Path(plot_path).exists():
        print(f"plot:    {plot_path}")
    if (directory / "wandb").exists():
        print(f"W&B:     {directory / 'wandb'} (offline runs: `wandb sync {directory / 'wandb'}/offline-run-*`)")


def summarize_study(cfg) -> dict:
    """`summarize` for the study, paths, logger and report settings of a composed config."""
    report = cfg.report
    return summarize(
        cfg.paths.root,
        cfg.study,
        cfg.logger,
        list(report.summary_metrics),
        list(report.onset_metrics),
        report.onset_fraction,
    )


class TrajectoryCallback(Callback):
    """Hydra callback: builds the suite before a sweep and the trajectories after it."""

    def on_multirun_start(self, config, **kwargs) -> None:
        from ckptstudy.suite import ensure_suite

        try:
            ensure_suite(config.model)
        except Exception as err:
            log.error("could not build the micro suite: %s", err)

    def on_multirun_end(self, config, **kwargs) -> None:
        out = summarize_study(config)
        if out["failed"]:
            print(f"{len(out['failed'])} checkpoint(s) failed: {out['failed']}", file=sys.stderr)
            sys.exit(1)


def cli(argv: list[str] | None = None) -> None:
    """`ckptstudy-trajectories [overrides]`: rebuild trajectories.csv, onsets, plot and W&B trajectory runs."""
    import argparse

    from ckptstudy.config import compose_config

    parser = argparse.ArgumentParser(description=cli.__doc__)
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. study=mine paths.root=outputs logger=none")
    args = parser.parse_args(argv)
    out = summarize_study(compose_config(args.overrides))
    sys.exit(1 if out["failed"] else 0)

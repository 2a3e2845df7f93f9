"""End of a sweep, from records alone: trajectories.csv, onsets.json, the plot, W&B trajectory runs,
and the printed summary (table, onsets, identical weights, NaN reasons, recomputed and failed jobs)."""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ckptstudy import results
from ckptstudy.metrics.specialization import jaccard, top_heads
from ckptstudy.onsets import onsets
from ckptstudy.plots import save_figure, trajectory_figure
from ckptstudy.tracking import Tracker


def add_cross_step_columns(table: pd.DataFrame, records: list[dict], k: int = 3) -> pd.DataFrame:
    """`icl/top{k}_jaccard_prev`: overlap of the top-k ablation heads with the previous ok step's."""
    column = f"icl/top{k}_jaccard_prev"
    values = {}
    for model in {r.get("model") for r in records}:
        previous = None
        ok = sorted(
            (r for r in records if r.get("model") == model and r.get("status") == "ok"), key=lambda r: int(r["step"])
        )
        for record in ok:
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


def nan_reason_counts(records: list[dict]) -> Counter:
    """How many (record, metric) values are NaN for each reason."""
    counts: Counter = Counter()
    for record in records:
        for key, reason in (record.get("nan_reasons") or {}).items():
            counts[f"{key}: {reason}"] += 1
    return counts


def summarize(
    root: str,
    study: str,
    logger_cfg=None,
    summary_metrics: list[str] | None = None,
    onset_metrics: list[str] | None = None,
    onset_fraction: float = 0.5,
    top_k: int = 3,
    since: str | None = None,
) -> dict:
    """Rebuild the table, compute onsets, plot, log W&B trajectory runs, print the summary.

    `since` (ISO time) limits the "recomputed" count to records finished after it (this sweep's).
    """
    records = results.load_records(root, study)
    table = add_cross_step_columns(results.results_table(records), records, top_k)
    path, table = results.write_table(root, study, table)
    directory = results.study_dir(root, study)
    if table.empty:
        print(f"no records under {directory / 'records'}")
        return {"table": path, "failed": []}
    summary_metrics = [m for m in (summary_metrics or []) if m in table.columns]
    found = onsets(table, [m for m in (onset_metrics or []) if m in table.columns], onset_fraction)
    onsets_json = {f"{m}@{k}": (None if math.isnan(v) else v) for (m, k), v in found.items()}
    results.atomic_write_bytes(directory / "onsets.json", json.dumps(onsets_json, indent=1).encode())
    plot_path = directory / "trajectories.png"
    ok = table[table["status"] == "ok"]
    if summary_metrics and not ok.empty:
        save_figure(trajectory_figure(ok, summary_metrics, found), plot_path)
    if logger_cfg is not None:
        tracker = Tracker(logger_cfg, directory, study)
        for model in sorted(table["model"].unique()):
            model_onsets = {metric: v for (m, metric), v in found.items() if m == model and not math.isnan(v)}
            tracker.log_trajectory(model, table, model_onsets, head_tables(records, model), plot_path)
    failed = table[table["status"] != "ok"]
    recomputed = [
        r for r in records if r.get("recomputed_because") and (since is None or r.get("finished_at", "") >= since)
    ]
    print_summary(table, summary_metrics, found, failed, path, plot_path, directory)
    print_notes(nan_reason_counts(records), recomputed)
    return {
        "table": path,
        "plot": plot_path,
        "onsets": found,
        "failed": failed[["model", "step"]].values.tolist(),
        "recomputed": len(recomputed),
    }


def print_summary(table, metrics, found, failed, path, plot_path, directory) -> None:
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


def print_notes(nan_reasons: Counter, recomputed: list[dict]) -> None:
    """NaN values by reason, and records recomputed because their definitions or config changed."""
    if nan_reasons:
        print(f"NaN values: {sum(nan_reasons.values())} (each has its reason in the record's nan_reasons):")
        for reason, count in nan_reasons.most_common(8):
            print(f"  {count:4d} x {reason}")
        if len(nan_reasons) > 8:
            print(f"  ... and {len(nan_reasons) - 8} other reasons")
    if recomputed:
        why = Counter(r["recomputed_because"] for r in recomputed)
        print(f"recomputed {len(recomputed)} existing record(s): " + "; ".join(f"{n} x {k}" for k, n in why.items()))


def summarize_study(cfg, since: str | None = None) -> dict:
    """`summarize` for the study, paths, logger and report settings of a composed config."""
    report = cfg.report
    icl = cfg.metrics.get("icl_heads") or {}
    return summarize(
        cfg.paths.root,
        cfg.study,
        cfg.logger,
        list(report.summary_metrics),
        list(report.onset_metrics),
        report.onset_fraction,
        top_k=int(icl.get("top_k", 3)),
        since=since,
    )

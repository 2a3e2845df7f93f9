"""End of a sweep, from records alone: trajectories.csv (with bootstrap interval columns), onsets.json (with
onset intervals), the plot, report.html, W&B trajectory runs (the report and the table as artifacts), and
the printed summary (table, onsets, identical weights and tensors, NaN reasons, recomputed and failed jobs).

The multirun-end callback, `ckptstudy-trajectories` and `ckptstudy-report` all run `summarize`, so a sweep
run on a cluster or in pieces is assembled afterwards from its records.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import re
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ckptstudy import results
from ckptstudy.config import compose_config
from ckptstudy.report.html import ReportData, is_head_array, write_report
from ckptstudy.report.plots import save_figure, trajectory_figure
from ckptstudy.report.tracking import Tracker
from ckptstudy.stats.bootstrap import MIN_PROMPTS, checked_intervals, decode, replicates, without_samples
from ckptstudy.stats.onsets import onset_intervals, onsets
from ckptstudy.stats.specialization import jaccard, jaccard_chance, top_heads

log = logging.getLogger(__name__)
DEFAULT_BOOTSTRAP = {"n": 200, "level": 0.95, "seed": 0, "min_prompts": MIN_PROMPTS}


def add_cross_step_columns(
    table: pd.DataFrame,
    records: list[dict],
    k: int = 3,
    arrays: dict[str, dict] | None = None,
    min_total: float = 0.0,
) -> pd.DataFrame:
    """`icl/top{k}_jaccard_prev`: overlap of the top-k ablation heads with the previous ok step's, beside
    its chance level `icl/top{k}_jaccard_prev_chance` (two random k-subsets of the model's heads).

    Held to the icl family's bar: NaN when either step's total positive effect is below `min_total`
    (`metrics.icl_heads.min_effect_total`), where the top-k set would be a ranking of noise.
    """
    column = f"icl/top{k}_jaccard_prev"
    values, chance = {}, {}
    for model in {r.get("model") for r in records}:
        previous = None
        ok = sorted(
            (r for r in records if r.get("model") == model and r.get("status") == "ok"), key=lambda r: int(r["step"])
        )
        for record in ok:
            stored = arrays[record["_path"]] if arrays is not None else results.read_arrays(Path(record["_path"]))
            effects = stored.get("icl/ablation_effect")
            if effects is None:
                continue
            effects = torch.from_numpy(effects)
            step = (model, int(record["step"]))
            chance[step] = jaccard_chance(effects.numel(), min(k, effects.numel()))
            above = float(effects.nan_to_num(0).clamp(min=0).sum()) >= min_total
            current = top_heads(effects, k) if above else None
            values[step] = jaccard(previous, current) if previous is not None and current is not None else math.nan
            previous = current
    if values:
        table[column] = [values.get((m, int(s)), math.nan) for m, s in zip(table["model"], table["step"])]
        table[f"{column}_chance"] = [chance.get((m, int(s)), math.nan) for m, s in zip(table["model"], table["step"])]
    return table


def head_tables(records: list[dict], model: str, arrays: dict[str, dict] | None = None) -> dict[str, list[list]]:
    """Per-head arrays over steps as rows [step, layer, head, value] (layer x head arrays only: not generated
    ids or other 2-D raw data)."""
    tables: dict[str, list[list]] = {}
    for record in records:
        if record.get("model") != model or record.get("status") != "ok":
            continue
        stored = arrays[record["_path"]] if arrays is not None else results.read_arrays(Path(record["_path"]))
        for name, array in without_samples(stored).items():
            if is_head_array(record, array):
                rows = tables.setdefault(name, [])
                rows.extend([int(record["step"]), li, hi, float(x)] for (li, hi), x in np.ndenumerate(array))
    return tables


def nan_reason_counts(records: list[dict]) -> Counter:
    """How many (record, metric) values are NaN for each kind of reason (numbers in a reason are replaced
    by `#`, so "max |z| 2.66" and "max |z| 4.2" count as one kind; the records keep the exact reason)."""
    counts: Counter = Counter()
    for record in records:
        for key, reason in (record.get("nan_reasons") or {}).items():
            counts[f"{key}: {re.sub(r'[-+]?[0-9]*[.]?[0-9]+(e[-+]?[0-9]+)?', '#', reason)}"] += 1
    return counts


def needed_arrays(record: dict) -> dict[str, np.ndarray]:
    """The arrays of a record the summary uses: its bootstrap samples and its layer x head arrays (not the
    generated ids and other raw data, which can be large)."""
    if not record.get("arrays") or record.get("status") != "ok":
        return {}
    stored = results.read_arrays(Path(record["_path"]))
    kept = without_samples(stored)
    heads = {k: v for k, v in kept.items() if is_head_array(record, v)}
    return {**heads, **{k: v for k, v in stored.items() if k not in kept}}


@dataclass
class Resampled:
    """The bootstrap of a study's records: replicates {(model, step): {key: [n]}} (for onset intervals; keys
    whose sample does not give the reported value are left out), intervals {(model, step): {key: [low,
    high]}} and why an interval is NaN {(model, step): {key: why}}."""

    replicates: dict = field(default_factory=dict)
    intervals: dict = field(default_factory=dict)
    reasons: dict = field(default_factory=dict)


def resample_records(records: list[dict], arrays: dict[str, dict], settings: dict) -> Resampled:
    """Replicates and checked intervals (`bootstrap.checked_intervals`) of every ok record's scalars that have
    stored samples, recomputed from the npz (the model is not needed; the same resamples at every step). A
    record whose arrays file is not the one written with it is skipped, with a warning."""
    out = Resampled()
    for record in records:
        if record.get("status") != "ok" or not record.get("arrays"):
            continue
        where = (record["model"], int(record["step"]))
        mismatch = results.arrays_mismatch(Path(record["_path"]), record)
        if mismatch:
            log.warning("%s step %s: no intervals: %s", *where, mismatch)
            continue
        samples = decode(arrays[record["_path"]])
        metrics = record.get("metrics") or {}
        if not any(k in metrics for k in samples):
            continue
        reps = replicates(samples, int(settings["n"]), int(settings["seed"]))  # hidden parts of composites too
        ci, reasons = checked_intervals(samples, reps, metrics, float(settings["level"]), int(settings["min_prompts"]))
        stale = {k for k, why in reasons.items() if why.startswith("its stored sample")}
        out.replicates[where] = {k: v for k, v in reps.items() if k in metrics and k not in stale}
        out.intervals[where], out.reasons[where] = ci, reasons
    return out


def add_interval_columns(table: pd.DataFrame, intervals: dict[tuple[str, int], dict]) -> pd.DataFrame:
    """`<key>/ci_low` and `<key>/ci_high` right after each column `<key>` that has an interval at some step."""
    bounds: dict[str, dict[tuple[str, int], tuple[float, float]]] = {}
    for where, keys in intervals.items():
        for key, (low, high) in keys.items():
            bounds.setdefault(key, {})[where] = (low, high)
    if not bounds:
        return table
    columns = []
    for column in table.columns:
        columns.append(column)
        if column in bounds:
            columns += [f"{column}/ci_low", f"{column}/ci_high"]
    where = list(zip(table["model"], table["step"].astype(int)))
    added = {}
    for key, found in bounds.items():
        if key in table.columns:
            added[f"{key}/ci_low"] = [found.get(w, (math.nan, math.nan))[0] for w in where]
            added[f"{key}/ci_high"] = [found.get(w, (math.nan, math.nan))[1] for w in where]
    table = pd.concat([table, pd.DataFrame(added, index=table.index)], axis=1)  # one insert: no fragmentation
    return table[columns]


def _settings(bootstrap) -> dict:
    """n, level, seed of a `report.bootstrap` config, dict or namespace (defaults where absent)."""
    if bootstrap is None:
        return dict(DEFAULT_BOOTSTRAP)
    if isinstance(bootstrap, dict):
        return {k: bootstrap.get(k, v) for k, v in DEFAULT_BOOTSTRAP.items()}
    return {k: getattr(bootstrap, k, v) for k, v in DEFAULT_BOOTSTRAP.items()}


def summarize(
    root: str,
    study: str,
    logger_cfg=None,
    summary_metrics: list[str] | None = None,
    onset_metrics: list[str] | None = None,
    onset_fraction: float = 0.5,
    top_k: int = 3,
    since: str | None = None,
    onset_persist: int = 2,
    min_effect_total: float = 0.0,
    bootstrap=None,
    panels_per_family: int = 12,
) -> dict:
    """Rebuild the table (with interval columns), compute onsets and their intervals, plot, write
    report.html, log W&B trajectory runs, print the summary.

    `since` (ISO time) limits the "recomputed" count to records finished after it (this sweep's).
    `bootstrap`: n, level, seed (config `report.bootstrap`).
    """
    settings = _settings(bootstrap)
    records = results.load_records(root, study)
    directory = results.study_dir(root, study)
    arrays = {r["_path"]: needed_arrays(r) for r in records}
    table = add_cross_step_columns(results.results_table(records), records, top_k, arrays, min_effect_total)
    started = time.perf_counter()
    resampled = resample_records(records, arrays, settings)
    table = add_interval_columns(table, resampled.intervals)
    bootstrap_seconds = time.perf_counter() - started
    path, table = results.write_table(root, study, table)
    if table.empty:
        print(f"no records under {directory / 'records'}")
        return {"table": path, "failed": []}
    summary_metrics = [m for m in (summary_metrics or []) if m in table.columns]
    onset_metrics = [m for m in (onset_metrics or []) if m in table.columns]
    found = onsets(table, onset_metrics, onset_fraction, onset_persist)
    ok = table[table["status"] == "ok"]
    steps_by_model = {m: sorted(int(s) for s in part["step"]) for m, part in ok.groupby("model")}
    values = {(r["model"], int(r["step"])): r.get("metrics") or {} for r in records if r.get("status") == "ok"}
    started = time.perf_counter()
    onset_ci = onset_intervals(
        steps_by_model,
        resampled.replicates,
        values,
        onset_metrics,
        onset_fraction,
        onset_persist,
        float(settings["level"]),
    )
    bootstrap_seconds += time.perf_counter() - started
    write_onsets(directory / "onsets.json", found, onset_ci, onset_fraction, onset_persist, settings)
    plot_path = directory / "trajectories.png"
    if summary_metrics and not ok.empty:
        save_figure(trajectory_figure(ok, summary_metrics, found, onset_ci), plot_path)
    report_data = ReportData(
        study=study,
        directory=directory,
        table=table,
        records=records,
        arrays={k: without_samples(v) for k, v in arrays.items()},
        onsets=found,
        onset_ci=onset_ci,
        summary_metrics=summary_metrics,
        onset_metrics=onset_metrics,
        onset_fraction=onset_fraction,
        onset_persist=onset_persist,
        bootstrap=settings,
        interval_reasons=resampled.reasons,
        panels_per_family=panels_per_family,
        bootstrap_seconds=bootstrap_seconds,
    )
    report_path = write_report(directory / "report.html", report_data)
    if logger_cfg is not None:
        tracker = Tracker(logger_cfg, directory, study)
        for model in sorted(table["model"].unique()):
            model_onsets = {metric: v for (m, metric), v in found.items() if m == model and not math.isnan(v)}
            for (m, metric), ci in onset_ci.items():
                if m == model and all(np.isfinite(ci["ci"])):
                    model_onsets.update({f"{metric}/ci_low": ci["ci"][0], f"{metric}/ci_high": ci["ci"][1]})
            artifacts = {"report": report_path, "trajectories": path}
            tracker.log_trajectory(
                model, table, model_onsets, head_tables(records, model, arrays), plot_path, artifacts
            )
    failed = table[table["status"] != "ok"]
    recomputed = [
        r for r in records if r.get("recomputed_because") and (since is None or r.get("finished_at", "") >= since)
    ]
    print_summary(table, summary_metrics, found, failed, path, plot_path, directory, onset_ci)
    print(f"report:  {report_path}")
    print_notes(nan_reason_counts(records), recomputed)
    return {
        "table": path,
        "plot": plot_path,
        "report": report_path,
        "report_data": report_data,
        "onsets": found,
        "onset_intervals": onset_ci,
        "failed": failed[["model", "step"]].values.tolist(),
        "recomputed": len(recomputed),
        "bootstrap_seconds": bootstrap_seconds,
    }


def write_onsets(path: Path, found: dict, onset_ci: dict, fraction: float, persist: int, settings: dict) -> None:
    """onsets.json: the rule, and per `<metric>@<model>` the onset step (null = no held change), its interval
    and the share of bootstrap replicates that have an onset (both null without stored samples)."""

    def number(x):
        return None if x is None or not np.isfinite(x) else float(x)

    entries = {}
    for (model, metric), value in sorted(found.items()):
        ci = onset_ci.get((model, metric)) or {}
        entries[f"{metric}@{model}"] = {
            "step": number(value),
            "ci": [number(x) for x in ci["ci"]] if ci else None,
            "with_onset": ci.get("with_onset"),
        }
    rule = {"fraction": fraction, "persist": persist, "bootstrap": settings}
    results.atomic_write_bytes(path, json.dumps({"rule": rule, "onsets": entries}, indent=1).encode())


def print_summary(table, metrics, found, failed, path, plot_path, directory, onset_ci=None) -> None:
    onset_ci = onset_ci or {}
    with pd.option_context("display.width", 200, "display.max_columns", 20, "display.float_format", "{:.3f}".format):
        print(f"\n== trajectories ({len(table)} checkpoints) ==")
        print(table[["model", "step", "status", *metrics]].to_string(index=False))
    for (model, metric), value in sorted(found.items()):
        shown = "no change" if math.isnan(value) else f"~step {value:.0f}"
        low, high = (onset_ci.get((model, metric)) or {}).get("ci", [math.nan, math.nan])
        if np.isfinite(low) and np.isfinite(high) and not math.isnan(value):
            shown += f" (interval {low:.0f}-{high:.0f})"
        print(f"onset {model} {metric}: {shown}")
    dup = table[table["identical_weights_as"].astype(str) != ""]
    for _, row in dup.iterrows():
        print(f"WARNING {row['model']} step {row['step']}: weights identical to step(s) {row['identical_weights_as']}")
    for _, row in table[table["integrity"].fillna("").astype(str) != ""].iterrows():
        print(f"WARNING {row['model']} step {row['step']}: same tensors as step {row['integrity']}")
    if "nonfinite" in table.columns:
        flagged = table[~table["nonfinite"].fillna("").astype(str).str.strip().isin(["", "nan"])]
        for _, row in flagged.iterrows():
            where = f"{row['model']} step {row['step']}"
            print(f"WARNING {where}: non-finite {row['nonfinite']} (see the record's warnings)")
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
        min_effect_total=float(icl.get("min_effect_total", 0.0)),
        since=since,
        onset_persist=int(report.get("onset_persist", 2)),
        bootstrap=report.get("bootstrap"),
        panels_per_family=int(report.get("panels_per_family", 12)),
    )


def report_main(argv: list[str] | None = None) -> None:
    """`ckptstudy-report [overrides]`, e.g. `ckptstudy-report study=pythia160m`: rebuild trajectories.csv (with
    interval columns), onsets.json, the plot and report.html, and log the W&B trajectory runs (`logger=none`
    skips them), from the study's records alone: sweeps run on a cluster or in pieces are assembled here."""
    parser = argparse.ArgumentParser(prog="ckptstudy-report", description=report_main.__doc__)
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. study=mine paths.root=outputs logger=none")
    args = parser.parse_args(argv)
    out = summarize_study(compose_config(args.overrides))
    sys.exit(1 if out["failed"] else 0)

"""End of a sweep, from records alone, every setting from the composed config: trajectories.csv (with interval
and cross-step columns), onsets.json (with onset intervals), claims.json (the verdicts of the configured claims),
the plot, report.html, the W&B trajectory runs (the report and the table as artifacts, the verdicts as summary
keys and a table) and the printed summary.

The multirun-end callback, `ckptstudy-report` and `ckptstudy-refine` run `summarize`, so a sweep run on a
cluster or in pieces is assembled afterwards from its records. The work is in the modules named below; this
one only puts them in order.
"""

from __future__ import annotations

import math
from pathlib import Path

from ckptstudy import results
from ckptstudy.config import configured_claims
from ckptstudy.record import Record
from ckptstudy.report import console, seeds
from ckptstudy.report.claim_results import ClaimResults, study_claims, write_claims
from ckptstudy.report.html import write_report
from ckptstudy.report.onset_results import Onsets, study_onsets, write_onsets
from ckptstudy.report.plots import save_figure, trajectory_figure
from ckptstudy.report.resample import bootstrap_settings, resample_records
from ckptstudy.report.sections import ReportData
from ckptstudy.report.study import Study, load_study
from ckptstudy.report.table import head_tables, trajectory_table
from ckptstudy.report.tracking import Tracker, enabled
from ckptstudy.stats.claim_spec import defaults_from
from ckptstudy.stats.claims import Rule


def cross_step_settings(metrics_cfg) -> dict:
    """`top_k` and `min_effect_total` of the icl_heads family for the cross-step head overlap (top_k None,
    i.e. no such column, when icl_heads is not among the configured metrics)."""
    icl = metrics_cfg.get("icl_heads")
    if icl is None:
        return {"top_k": None, "min_effect_total": 0.0}
    return {"top_k": int(icl.top_k), "min_effect_total": float(icl.min_effect_total)}


def plot_summary(path: Path, table, metrics: list[str], found: Onsets) -> Path:
    """trajectories.png: the summary metrics of the ok checkpoints (not written when there are none)."""
    ok = table[table["status"] == "ok"]
    if metrics and not ok.empty:
        save_figure(trajectory_figure(ok, metrics, found.steps, found.intervals), path)
    return path


def recomputed_since(records: list[Record], since: str | None) -> list[Record]:
    """Records that replaced an older one (`recomputed_because`), finished after `since` (ISO time) if given."""
    return [
        r for r in records if r.outcome.recomputed_because and (since is None or (r.outcome.finished_at or "") >= since)
    ]


def log_trajectories(
    cfg,
    study: Study,
    table,
    found: Onsets,
    plot_path: Path,
    artifacts: dict,
    claims: ClaimResults | None,
    across: list | None = None,
) -> None:
    """One W&B trajectory run per model run (config `logger`; nothing when W&B is off). A run of a model swept over
    training seeds also gets the spread of each onset across the seeds (`seed_spread/<metric>`) in its summary."""
    if not enabled(cfg.logger):
        return
    models = sorted(table["model"].unique())
    heads = {m: head_tables(study.records, m) for m in models}
    verdicts = {m: claims.rows(m) for m in models} if claims is not None else None
    onsets = {m: found.of_model(m) for m in models}
    for entry in across or []:
        if not math.isnan(entry.spread):
            for run in entry.runs:
                onsets.setdefault(run, {})[f"seed_spread/{entry.metric}"] = entry.spread
    tracker = Tracker(cfg.logger, study.directory, study.name)
    tracker.log_trajectories(table, onsets, heads, plot_path, artifacts, verdicts)


def summarize(cfg, since: str | None = None) -> dict:
    """Rebuild the table, onsets and their intervals, the plot, report.html and the W&B trajectory runs of the
    study `cfg.study` under `cfg.paths.root`, with the settings of `cfg.report` and `cfg.logger`, and print the
    summary. `since` (ISO time) limits the "recomputed" count to records finished after it (this sweep's).
    Returns the paths written, the onsets, the report data and the failed (model, step) pairs."""
    report = cfg.report
    settings = bootstrap_settings(report.bootstrap)
    study = load_study(cfg.paths.root, cfg.study)
    resampled = resample_records(study.records, settings)
    table = trajectory_table(study, resampled.intervals, **cross_step_settings(cfg.metrics))
    path, table = results.write_table(cfg.paths.root, cfg.study, table)
    if table.empty:
        print(f"no records under {study.directory / 'records'}")
        return {"table": path, "failed": []}
    summary_metrics = [m for m in report.summary_metrics if m in table.columns]
    onset_metrics = [m for m in report.onset_metrics if m in table.columns]
    found = study_onsets(
        table, study.records, resampled, onset_metrics, report.onset_fraction, report.onset_persist, settings["level"]
    )
    across = seeds.seed_onsets(table, found)
    write_onsets(study.directory / "onsets.json", found, settings, seeds.as_json(across))
    rule = Rule(float(report.onset_fraction), int(report.onset_persist), settings["level"])
    claims = configured_claims(cfg)
    verdicts = study_claims(claims, defaults_from(report.verdicts), table, study.records, resampled, rule)
    claims_path = write_claims(study.directory / "claims.json", verdicts, settings)
    plot_path = plot_summary(study.directory / "trajectories.png", table, summary_metrics, found)
    data = ReportData(
        study=study.name,
        directory=study.directory,
        table=table,
        records=study.records,
        onsets=found,
        summary_metrics=summary_metrics,
        bootstrap=settings,
        interval_reasons=resampled.reasons,
        interval_methods=resampled.methods,
        panels_per_family=int(report.panels_per_family),
        bootstrap_seconds=resampled.seconds + found.seconds,
        claims=verdicts,
        across_seeds=across,
    )
    report_path = write_report(study.directory / "report.html", data)
    artifacts = {"report": report_path, "trajectories": path, "claims": claims_path}
    log_trajectories(cfg, study, table, found, plot_path, artifacts, verdicts, across)
    recomputed = recomputed_since(study.records, since)
    files = console.file_lines(study.directory, path, plot_path, report_path, claims_path)
    notes = console.note_lines(console.nan_reason_counts(study.records), recomputed, study.converted)
    console.print_summary(table, summary_metrics, found, study.directory, files, notes, verdicts, across)
    failed = table[table["status"] != "ok"]
    return {
        "table": path,
        "plot": plot_path,
        "report": report_path,
        "report_data": data,
        "onsets": found.steps,
        "onset_intervals": found.intervals,
        "claims": verdicts,
        "claims_path": claims_path,
        "across_seeds": across,
        "failed": failed[["model", "step"]].values.tolist(),
        "recomputed": len(recomputed),
        "bootstrap_seconds": data.bootstrap_seconds,
    }

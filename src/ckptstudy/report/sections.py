"""The sections of report.html as plain data for its template (`templates/report.html`): rows of strings,
figures as PNG data URIs. Nothing here writes HTML; the template escapes every string.

Sections, findings first: the verdicts of the configured claims (one row per claim and model, with a small plot
and a link to the family's trajectories), onsets, the summary metrics' trajectories, then per metric family
(folded) its trajectory panels and its layer x head arrays over training; then checkpoints, NaN reasons,
intervals and how the report was made.
"""

from __future__ import annotations

import base64
import math
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ckptstudy.record import Record
from ckptstudy.report.claim_results import ClaimResults
from ckptstudy.report.onset_results import Onsets
from ckptstudy.report.plots import (
    claim_figure,
    head_snapshots_figure,
    head_step_figure,
    png_bytes,
    trajectory_figure,
)
from ckptstudy.report.provenance import command_line
from ckptstudy.report.study import drawn_heads
from ckptstudy.results import RECORD_COLUMNS

CI_SUFFIXES = ("/ci_low", "/ci_high")
NUMBER = re.compile(r"-?\d+(?:\.\d+)?(?:e[-+]?\d+)?")
DPI = 90
SHOWN_PLACES = 12  # places listed per (metric, reason) row


@dataclass
class ReportData:
    """Everything the report shows, assembled by `summary.summarize` from the study's records; `claims` (the
    verdicts of the configured claims, shown first) is None when no claim is configured."""

    study: str
    directory: Path
    table: pd.DataFrame  # the trajectories table, with `<key>/ci_low|ci_high` columns
    records: list[Record]  # each reads its arrays when first asked (`study.drawn_heads`)
    onsets: Onsets
    summary_metrics: list[str]
    bootstrap: dict  # n, level, seed, min_prompts
    interval_reasons: dict  # (model, step) -> {key: why its interval is NaN}
    panels_per_family: int
    bootstrap_seconds: float  # time spent resampling stored samples for this report
    claims: ClaimResults | None = None
    across_seeds: list = field(default_factory=list)  # `seeds.SeedOnsets` of models swept over training seeds
    interval_methods: dict = field(default_factory=dict)  # (model, step) -> {key: method of its interval}
    built_by: str = field(default_factory=command_line)

    @property
    def level(self) -> int:
        """The interval level in percent."""
        return round(100 * float(self.bootstrap["level"]))


def figure(fig, alt: str) -> dict:
    """A figure as {alt, uri}: its PNG inlined as a data URI."""
    return {"alt": alt, "uri": "data:image/png;base64," + base64.b64encode(png_bytes(fig, DPI)).decode()}


def fmt(value, digits: int = 3) -> str:
    """A number for a table cell: `digits` significant digits, thousands separators from 1e4, NaN for
    non-finite values; anything else as its text."""
    try:
        value = float(value)
    except (TypeError, ValueError):
        return str(value)
    if not math.isfinite(value):
        return "NaN"
    return f"{value:.{digits}g}" if abs(value) < 1e4 else f"{value:,.0f}"


def metric_columns(table) -> list[str]:
    """Scalar metric columns of the table (not record fields, not interval columns)."""
    return [c for c in table.columns if c not in RECORD_COLUMNS and "/" in c and not c.endswith(CI_SUFFIXES)]


def interval_keys(table) -> set[str]:
    """Metrics with a finite interval bound somewhere in the table."""
    return {c[: -len("/ci_low")] for c in table.columns if c.endswith("/ci_low") and table[c].notna().any()}


def tokens_per_step(records: list[Record]) -> dict[str, float | None]:
    """Training tokens per step of each model, from the model config stored in its records."""
    out: dict[str, float | None] = {}
    for record in records:
        value = ((record.provenance.config or {}).get("model") or {}).get("tokens_per_step")
        if out.get(record.model) is None:
            out[record.model] = float(value) if value else None
    return out


# --- claims ---------------------------------------------------------------------------------------------------


def claims_rule(found: ClaimResults, level: int) -> str:
    """How verdicts are decided, in words."""
    d = found.defaults
    last = "every ok checkpoint" if d.last is None else f"the last {d.last} ok checkpoints"
    combine = "each on its own interval" if d.combine == "every" else "their mean, with a paired interval"
    return (
        "Each claim of conf/claims/ is decided per model: supported, contradicted, or undetermined with its reason "
        "(an interval that spans the threshold, no onset within the swept steps, a NaN and its reason, a withheld "
        f"interval, too few checkpoints, a metric not measured). Unless a claim says otherwise, a level or a "
        f"comparison reads {last} ({combine}); a trend compares the first and last {d.window:.0%} of the swept "
        "steps in log(1 + step) (late mean - early mean); an onset order must hold in "
        f"{d.share:.0%} of the paired bootstrap replicates (the same prompt resample at every checkpoint), where "
        f"differences and means are computed too. Intervals: {level}%. A `min_effect` threshold is the MIN_EFFECT "
        "of the family that reports the metric (presence). Large dots: the checkpoints a test read; dotted: "
        "thresholds; shaded grey: trend windows; dashed: onsets (shaded: their intervals)."
    )


def claim_rows(data: ReportData, ok) -> list[dict]:
    """Per claim: its id, statement, paper, label and note, a row per model (verdict, evidence, a small plot of
    the metrics it read, links to their families' trajectories) and the agreement line."""
    found = data.claims
    families = {c.split("/")[0] for c in metric_columns(data.table)}
    out = []
    for claim in found.claims:
        rows = []
        for verdict in found.of_claim(claim.id):
            part = ok[ok["model"] == verdict.group]
            panels = [
                (f"{t.kind}: {o.verdict}", t.metrics, o.marks, o.steps) for t, o in zip(claim.tests, verdict.outcomes)
            ]
            tests = list(zip(claim.tests, verdict.outcomes))
            evidence = [f"{t.kind} ({', '.join(t.metrics)}): {o.verdict}: {o.reason}" for t, o in tests]
            if len(tests) == 1:
                evidence = [verdict.reason]
            links = [f for f in dict.fromkeys(m.split("/")[0] for m in claim.metrics) if f in families]
            alt = f"{claim.id} on {verdict.group}"
            rows.append(
                {
                    "model": verdict.group,
                    "verdict": verdict.verdict,
                    "evidence": evidence,
                    "figure": figure(claim_figure(part, panels), alt),
                    "links": [{"href": f"#family-{f}", "label": f"{f}/ trajectories"} for f in links],
                }
            )
        out.append(
            {
                "id": claim.id,
                "statement": claim.statement,
                "paper": claim.paper,
                "label": "method check" if claim.method_check else "",
                "note": claim.note,
                "rows": rows,
                "agreement": found.agreement(claim.id),
            }
        )
    return out


def claim_section(data: ReportData, ok) -> dict | None:
    """The claims section (None when no claim is configured): the rule in words, the counts and the rows."""
    if data.claims is None or not data.claims.claims:
        return None
    counts = ", ".join(f"{n} {kind}" for kind, n in data.claims.counts().items())
    return {"rule": claims_rule(data.claims, data.level), "counts": counts, "rows": claim_rows(data, ok)}


# --- onsets ---------------------------------------------------------------------------------------------------


def bracket(steps: list[int], onset: float) -> str:
    """The two checkpoints an onset lies between (its resolution on the checkpoint grid)."""
    if not np.isfinite(onset) or not steps:
        return ""
    after = [s for s in steps if s >= onset]
    before = [s for s in steps if s < onset]
    if not before:
        return f"at {after[0]}"
    return f"{before[-1]}–{after[0]}" if after else f"after {before[-1]}"


def onset_rule(data: ReportData) -> str:
    """The onset rule and what its interval means, in words."""
    o = data.onsets
    return (
        f"onset = first checkpoint where the metric crosses baseline (first step) + {o.fraction:g} x its "
        f"change and stays across for {o.persist} consecutive checkpoint(s); the change is the largest "
        "level held that long, so one outlying checkpoint neither sets it nor marks the onset; interpolated in "
        f"log(1 + step). Interval: {data.level}% bias-corrected percentile interval of the onset recomputed on "
        f"each of {data.bootstrap['n']} bootstrap replicates of the whole trajectory (the same prompt resample at "
        "every step; bias-corrected because the change is the largest held level over noisy checkpoints, so "
        "replicate onsets lean late); 'with onset' = share of replicates that have one. The interval is the "
        "uncertainty from the choice of prompts only: the onset is also only resolved to the two checkpoints "
        "around it."
    )


def onset_rows(data: ReportData, tps: dict) -> list[dict]:
    """Per (model, metric), models in order, onsets in order of step (no held change last)."""
    steps = {m: sorted(int(s) for s in part["step"]) for m, part in data.table.groupby("model")}

    def order(item):
        (model, metric), value = item
        return (model, 0 if np.isfinite(value) else 1, value if np.isfinite(value) else 0.0, metric)

    rows = []
    for (model, metric), value in sorted(data.onsets.steps.items(), key=order):
        ci = data.onsets.intervals.get((model, metric))
        low, high = (ci or {}).get("ci", [math.nan, math.nan])
        share = (ci or {}).get("with_onset")
        tokens = tps.get(model)
        interval = f"{fmt(low, 4)} – {fmt(high, 4)}" if np.isfinite(low) else ("no interval" if ci is None else "NaN")
        rows.append(
            {
                "metric": metric,
                "model": model,
                "onset": fmt(value, 4) if np.isfinite(value) else "no held change",
                "between": bracket(steps.get(model, []), value),
                "interval": interval,
                "share": "" if share is None else f"{100 * share:.0f}%",
                "tokens": fmt(value * tokens, 4) if tokens and np.isfinite(value) else "",
            }
        )
    return rows


def seed_rows(data: ReportData) -> list[dict]:
    """Per model swept over training seeds and onset metric: each seed's onset with its prompt interval, the
    spread across seeds, the median prompt-interval width and whether the intervals overlap."""
    rows = []
    for entry in data.across_seeds:
        runs = []
        for seed, step, (low, high) in zip(entry.seeds, entry.steps, entry.intervals):
            shown = fmt(step, 4) if np.isfinite(step) else "no held change"
            if np.isfinite(low) and np.isfinite(high):
                shown += f" [{fmt(low, 4)}, {fmt(high, 4)}]"
            runs.append(f"seed {seed}: {shown}")
        overlap = {True: "yes", False: "no", None: ""}[entry.intervals_overlap]
        rows.append(
            {
                "metric": entry.metric,
                "model": entry.base_model,
                "runs": "; ".join(runs),
                "spread": fmt(entry.spread, 4) if np.isfinite(entry.spread) else "",
                "width": fmt(entry.interval_width, 4) if np.isfinite(entry.interval_width) else "",
                "overlap": overlap,
            }
        )
    return rows


# --- trajectories and heads -----------------------------------------------------------------------------------


def family_panels(data: ReportData) -> dict[str, tuple[list[str], int]]:
    """Per family (the part before '/'): the metrics drawn (summary and onset metrics first, then those with
    intervals, then the rest, at most `panels_per_family`) and how many were left out."""
    columns = metric_columns(data.table)
    with_ci = interval_keys(data.table)
    out = {}
    for family in sorted({c.split("/")[0] for c in columns}):
        mine = [c for c in columns if c.split("/")[0] == family and data.table[c].notna().any()]
        first = [m for m in dict.fromkeys(data.summary_metrics + data.onsets.metrics) if m in mine]
        ranked = first + [m for m in mine if m in with_ci and m not in first]
        ranked += [m for m in mine if m not in ranked]
        out[family] = (ranked[: data.panels_per_family], max(0, len(ranked) - data.panels_per_family))
    return out


def trajectory_figures(data: ReportData, ok, tps: dict, metrics: list[str], name: str) -> dict:
    """The panels of `metrics` by training step and by tokens seen (models with a known tokens_per_step)."""
    known = {m: t for m, t in tps.items() if t}
    o = data.onsets
    by_step = trajectory_figure(ok, metrics, o.steps, o.intervals, "step")
    by_tokens = trajectory_figure(ok, metrics, o.steps, o.intervals, "tokens", known)
    return {
        "by_step": figure(by_step, f"{name} trajectories by step"),
        "by_tokens": figure(by_tokens, f"{name} trajectories by tokens seen"),
    }


def summary_section(data: ReportData, ok, tps: dict) -> dict:
    """The summary metrics (config `report.summary_metrics`) found in the table, drawn together."""
    metrics = [m for m in data.summary_metrics if m in ok.columns]
    figures = trajectory_figures(data, ok, tps, metrics, "summary metrics") if metrics else None
    return {"metrics": metrics, "figures": figures}


def family_trajectories(data: ReportData, ok, tps: dict) -> dict[str, dict]:
    """Per family with a metric to draw: its figures and a note on intervals and metrics left out."""
    with_ci = interval_keys(ok)
    out = {}
    for family, (metrics, left_out) in family_panels(data).items():
        if not metrics:
            continue
        more = f" {left_out} more {family}/ metrics are in trajectories.csv." if left_out else ""
        without = [m for m in metrics if m not in with_ci]
        note = f"No interval: {', '.join(without)}." if without else "Every metric drawn has an interval."
        out[family] = {**trajectory_figures(data, ok, tps, metrics, family), "note": note + more, "count": len(metrics)}
    return out


def onset_reference(key: str, model: str, data: ReportData) -> tuple[str | None, float]:
    """The onset metric (and its onset) that a per-head array is read against: a metric whose name starts
    with the array's name (icl/induction -> icl/induction_max), else one starting with its name less a
    trailing `_effect` (icl/ablation_effect -> icl/ablation_top3_share), else any metric of its family."""
    found = {m: v for (mod, m), v in data.onsets.steps.items() if mod == model and np.isfinite(v)}
    stem = key.removesuffix("_effect")
    metrics = data.onsets.metrics
    for candidates in (
        [m for m in metrics if m.startswith(key + "_")],
        [m for m in metrics if m.startswith(stem + "_")],
        [m for m in metrics if m.split("/")[0] == key.split("/")[0]],
    ):
        for metric in candidates:
            if metric in found:
                return metric, found[metric]
    return None, math.nan


def head_arrays(data: ReportData, model: str) -> dict[str, list[tuple[int, np.ndarray]]]:
    """Per layer x head array of a model's ok records: [(step, array)] in step order."""
    out: dict[str, list] = defaultdict(list)
    for record in sorted(data.records, key=lambda r: r.step):
        if record.model != model or not record.ok:
            continue
        for key, array in drawn_heads(record).items():
            out[key].append((record.step, array))
    return dict(out)


def head_panel(data: ReportData, model: str, key: str, series: list[tuple[int, np.ndarray]]) -> dict:
    """One array over training: the head x step heatmap, and the first, onset (or middle) and last checkpoints."""
    steps = [s for s, _ in series]
    metric, onset = onset_reference(key, model, data)
    title = f"{model}: {key} per head" + (f" (onset of {metric})" if metric else "")
    grid = figure(head_step_figure(steps, [a for _, a in series], title, onset), f"{model} {key} head x step")
    picks = [("first", 0)]
    if np.isfinite(onset):
        index = min(int(np.searchsorted(np.asarray(steps, dtype=float), onset)), len(steps) - 1)
        picks.append((f"onset (~{onset:.0f})", index))
    else:
        picks.append(("middle", len(steps) // 2))
    picks.append(("last", len(steps) - 1))
    panels = [(f"{label}: step {steps[i]}", series[i][1]) for label, i in picks]
    snaps = figure(head_snapshots_figure(panels, f"{model}: {key}"), f"{model} {key} first onset last")
    return {"model": model, "key": key, "grid": grid, "snaps": snaps}


def head_panels(data: ReportData) -> dict[str, list[dict]]:
    """Per family: its layer x head arrays over training, by model then array name."""
    out: dict[str, list[dict]] = defaultdict(list)
    for model in sorted({r.model for r in data.records if r.ok}):
        for key, series in sorted(head_arrays(data, model).items()):
            out[key.split("/")[0]].append(head_panel(data, model, key, series))
    return dict(out)


def family_sections(data: ReportData, ok, tps: dict) -> list[dict]:
    """Per metric family, in name order: its trajectories (or None) and its head arrays."""
    trajectories = family_trajectories(data, ok, tps)
    heads = head_panels(data)
    return [
        {"name": name, "trajectories": trajectories.get(name), "heads": heads.get(name, [])}
        for name in sorted(set(trajectories) | set(heads))
    ]


# --- checkpoints, NaN values, intervals ------------------------------------------------------------------------


def checkpoint_section(data: ReportData) -> dict:
    """Counts, failed checkpoints with their errors, identical weights, and every record's time and warnings."""
    table = data.table
    failed = table[table["status"] != "ok"]
    flagged = table[table["identical_weights_as"].astype(str).str.strip() != ""]
    by_key = {(r.model, r.step): r for r in data.records}
    failures = []
    for _, row in failed.iterrows():
        found = by_key.get((row["model"], int(row["step"])))
        error = (found.outcome.error if found else None) or {}
        message = f"{error.get('type', '?')}: {error.get('message', '')}"
        trace = error.get("traceback")
        failures.append({"model": str(row["model"]), "step": row["step"], "error": message, "trace": trace})
    identical = [
        {
            "model": str(row["model"]),
            "step": row["step"],
            "same": str(row["identical_weights_as"]),
            "sha": str(row["weights_sha256"])[:16],
        }
        for _, row in flagged.iterrows()
    ]
    every = [
        {
            "model": str(r.model),
            "step": r.identity.step,
            "status": str(r.outcome.status),
            "seconds": fmt(r.outcome.seconds, 4),
            "finished": str(r.outcome.finished_at or ""),
            "warnings": "; ".join(map(str, r.outcome.warnings)),
        }
        for r in data.records
    ]
    ok = int((table["status"] == "ok").sum())
    return {"total": len(table), "ok": ok, "failed": failures, "identical": identical, "every": every}


def reason_groups(entries) -> dict[tuple[str, str], tuple[str, list[str]]]:
    """(metric, reason with its numbers as #) -> (the first such reason, where) for (where, metric, reason)
    entries: the same reason with other numbers in it is one row."""
    groups: dict[tuple[str, str], tuple[str, list[str]]] = {}
    for where, key, reason in entries:
        groups.setdefault((key, NUMBER.sub("#", reason)), (reason, []))[1].append(where)
    return groups


def reason_rows(rows: list[tuple[str, str, list[str]]]) -> list[dict]:
    """Rows of (metric, reason, where): the count and the first `SHOWN_PLACES` places."""
    return [
        {
            "metric": key,
            "reason": reason,
            "count": len(where),
            "where": ", ".join(where[:SHOWN_PLACES]) + (" …" if len(where) > SHOWN_PLACES else ""),
        }
        for key, reason, where in rows
    ]


def nan_section(data: ReportData) -> dict:
    """NaN values of the records grouped by (metric, reason), family by family, the most frequent first."""
    groups = reason_groups(
        (record.label, key, reason) for record in data.records for key, reason in record.scalars.nan_reasons.items()
    )
    ordered = sorted(groups.items(), key=lambda kv: (kv[0][0].split("/")[0], -len(kv[1][1]), kv[0]))
    rows = reason_rows([(kind[0], first, where) for kind, (first, where) in ordered])
    return {"total": sum(len(where) for _, where in groups.values()), "rows": rows}


def no_interval_reasons(data: ReportData) -> dict[str, str]:
    """{key: why it has no interval} from the records (`no_interval`, the families' declarations)."""
    reasons: dict[str, str] = {}
    for record in data.records:
        for key, why in record.scalars.no_interval.items():
            reasons.setdefault(key, why)
    return reasons


def left_out_intervals(reasons: dict) -> dict:
    """Where a scalar with a sample got no interval, grouped by (metric, reason with numbers as #); a NaN
    scalar is left out here (it is listed with its reason under NaN values)."""
    groups = reason_groups(
        (f"{model}@{step}", key, why)
        for (model, step), keys in sorted(reasons.items())
        for key, why in keys.items()
        if why != "the scalar is NaN"
    )
    rows = reason_rows([(key, pattern, where) for (key, pattern), (_, where) in sorted(groups.items())])
    return {"total": sum(len(w) for _, w in groups.values()), "rows": rows}


def interval_methods(methods: dict) -> list[dict]:
    """[{method, metrics}]: which method gave the intervals of each metric (`ci_method`; a metric whose intervals
    came from more than one method at different checkpoints is listed under each)."""
    by_method: dict[str, set] = {}
    for keys in methods.values():
        for key, method in keys.items():
            by_method.setdefault(method, set()).add(key)
    return [{"method": m, "metrics": sorted(keys)} for m, keys in sorted(by_method.items())]


def interval_section(data: ReportData) -> dict:
    """The bootstrap settings, the scalars with an interval, those without and why, and intervals left out."""
    with_ci = sorted(interval_keys(data.table))
    declared = no_interval_reasons(data)
    old = "no per-prompt sample in its records (written before samples existed? force=true recomputes)"
    without = [
        {"metric": key, "why": declared.get(key, old)} for key in sorted(set(metric_columns(data.table)) - set(with_ci))
    ]
    seconds = f"{data.bootstrap_seconds:.2f}" if np.isfinite(data.bootstrap_seconds) else None
    return {
        "settings": data.bootstrap,
        "seconds": seconds,
        "methods": interval_methods(data.interval_methods),
        "with_ci": with_ci,
        "without": without,
        "left_out": left_out_intervals(data.interval_reasons),
    }

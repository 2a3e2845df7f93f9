"""What the end of a sweep prints: the summary metrics per checkpoint, onsets with their intervals, the verdicts of
the claims, flagged checkpoints (identical weights or tensors, non-finite values, failures), where the files are,
NaN values by reason and the records recomputed by this sweep."""

from __future__ import annotations

import math
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd

from ckptstudy.record import FORMAT, Record
from ckptstudy.report import seeds
from ckptstudy.report.claim_results import ClaimResults
from ckptstudy.report.onset_results import Onsets

NUMBER = re.compile(r"[-+]?[0-9]*[.]?[0-9]+(e[-+]?[0-9]+)?")
SHOWN_REASONS = 8


def nan_reason_counts(records: list[Record]) -> Counter:
    """How many (record, metric) values are NaN for each kind of reason (numbers in a reason are replaced
    by `#`, so "max |z| 2.66" and "max |z| 4.2" count as one kind; the records keep the exact reason)."""
    counts: Counter = Counter()
    for record in records:
        for key, reason in record.scalars.nan_reasons.items():
            counts[f"{key}: {NUMBER.sub('#', reason)}"] += 1
    return counts


def onset_lines(found: Onsets) -> list[str]:
    """`onset <model> <metric>: ~step N (interval a-b)` or `no change`, sorted by model and metric."""
    lines = []
    for (model, metric), value in sorted(found.steps.items()):
        shown = "no change" if math.isnan(value) else f"~step {value:.0f}"
        low, high = (found.intervals.get((model, metric)) or {}).get("ci", [math.nan, math.nan])
        if np.isfinite(low) and np.isfinite(high) and not math.isnan(value):
            shown += f" (interval {low:.0f}-{high:.0f})"
        lines.append(f"onset {model} {metric}: {shown}")
    return lines


def claim_lines(found: ClaimResults | None) -> list[str]:
    """`== claims ... ==`, then per claim and model `<verdict> <id> [<model>]: <reason>`, and per claim whether
    the models agree (with several models); nothing without claims."""
    if found is None or not found.claims:
        return []
    counts = ", ".join(f"{n} {kind}" for kind, n in found.counts().items())
    lines = [f"== claims ({len(found.claims)} claims x {len(found.groups)} model(s): {counts}) =="]
    for claim in found.claims:
        for verdict in found.of_claim(claim.id):
            label = " (method check)" if claim.method_check else ""
            lines.append(f"{verdict.verdict:<12} {claim.id}{label} [{verdict.group}]: {verdict.reason}")
        if found.agreement(claim.id):
            lines.append(f"{'':<12} {claim.id} across models: {found.agreement(claim.id)}")
    return lines


def flagged_lines(table: pd.DataFrame, directory: Path) -> list[str]:
    """Warnings for identical weights, tensors equal to another step's and non-finite values, and where each
    failed checkpoint's record is."""
    lines = []
    for _, row in table[table["identical_weights_as"].astype(str) != ""].iterrows():
        same = row["identical_weights_as"]
        lines.append(f"WARNING {row['model']} step {row['step']}: weights identical to step(s) {same}")
    if "integrity" in table.columns:
        for _, row in table[table["integrity"].fillna("").astype(str) != ""].iterrows():
            lines.append(f"WARNING {row['model']} step {row['step']}: same tensors as step {row['integrity']}")
    if "nonfinite" in table.columns:
        flagged = table[~table["nonfinite"].fillna("").astype(str).str.strip().isin(["", "nan"])]
        for _, row in flagged.iterrows():
            what = row["nonfinite"]
            lines.append(f"WARNING {row['model']} step {row['step']}: non-finite {what} (see the record's warnings)")
    for _, row in table[table["status"] != "ok"].iterrows():
        record = f"{directory}/records/{row['model']}/step{row['step']}.json"
        lines.append(f"FAILED {row['model']} step {row['step']}: see {record}")
    return lines


def file_lines(
    directory: Path, table_path: Path, plot_path: Path, report_path: Path, claims_path: Path | None = None
) -> list[str]:
    """Where the table, the claims' verdicts, the plot, the offline W&B runs and the report are."""
    lines = [f"results: {table_path}"]
    if claims_path is not None and Path(claims_path).exists():
        lines.append(f"claims:  {claims_path}")
    if Path(plot_path).exists():
        lines.append(f"plot:    {plot_path}")
    runs = directory / "wandb"
    if runs.exists():
        lines.append(f"W&B:     {runs} (offline runs: `wandb sync {runs}/offline-run-*`)")
    lines.append(f"report:  {report_path}")
    return lines


def note_lines(nan_reasons: Counter, recomputed: list[Record], converted: list[Record] | None = None) -> list[str]:
    """NaN values by reason (the most common first), records recomputed because their definitions, format or
    config changed, and records of an older format read through a converter (`record.from_json`)."""
    lines = []
    if nan_reasons:
        lines.append(f"NaN values: {sum(nan_reasons.values())} (each has its reason in the record's nan_reasons):")
        lines += [f"  {count:4d} x {reason}" for reason, count in nan_reasons.most_common(SHOWN_REASONS)]
        if len(nan_reasons) > SHOWN_REASONS:
            lines.append(f"  ... and {len(nan_reasons) - SHOWN_REASONS} other reasons")
    if recomputed:
        why = Counter(r.outcome.recomputed_because for r in recomputed)
        lines.append(
            f"recomputed {len(recomputed)} existing record(s): " + "; ".join(f"{n} x {k}" for k, n in why.items())
        )
    if converted:
        formats = ", ".join(str(f) for f in sorted({r.format for r in converted}))
        lines.append(
            f"read {len(converted)} record(s) of format {formats} through a converter (record format is now "
            f"{FORMAT}; a sweep of the same config rewrites them)"
        )
    return lines


def print_summary(
    table: pd.DataFrame,
    metrics: list[str],
    found: Onsets,
    directory: Path,
    files: list[str],
    notes: list[str],
    claims: ClaimResults | None = None,
    across_seeds: list | None = None,
) -> None:
    """The summary metrics per checkpoint, then onsets (and, for models swept over training seeds, each metric's
    onsets side by side: `across_seeds`, `seeds.seed_onsets`), the claims' verdicts, flagged checkpoints, `files`
    (`file_lines`) and `notes` (`note_lines`)."""
    with pd.option_context("display.width", 200, "display.max_columns", 20, "display.float_format", "{:.3f}".format):
        print(f"\n== trajectories ({len(table)} checkpoints) ==")
        print(table[["model", "step", "status", *metrics]].to_string(index=False))
    across = [seeds.describe(entry) for entry in across_seeds or []]
    for line in [*onset_lines(found), *across, *claim_lines(claims), *flagged_lines(table, directory), *files, *notes]:
        print(line)

"""The verdicts of the configured claims (`conf/claims/`, `stats.claims`) on a study: one per claim and model, an
agreement line per claim when the study holds several models, and claims.json beside trajectories.csv.

A trajectory is one model's ok checkpoints: its values from the trajectories table (cross-step columns included),
its intervals, withheld intervals and paired replicates from the study's bootstrap (`resample.Resampled`), its NaN
and no-interval reasons from the records. `GROUP_FIELDS` names what a trajectory is one of: the model today; a
seed axis adds its record field there, and every claim then gets a verdict per model and seed.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ckptstudy import results
from ckptstudy.record import Record, Scalars
from ckptstudy.report.resample import Resampled
from ckptstudy.stats.claim_spec import Claim, Defaults
from ckptstudy.stats.claims import VERDICTS, Rule, Trajectory, Verdict, agreement, evaluate

GROUP_FIELDS = ("model",)  # the record fields whose values make one trajectory (a verdict each)
CI_SUFFIXES = ("/ci_low", "/ci_high")


@dataclass
class ClaimResults:
    """The claims, their verdicts (claim order, then group), the onset rule and the defaults they were read with."""

    claims: list[Claim]
    verdicts: list[Verdict]
    rule: Rule
    defaults: Defaults
    groups: list[str] = field(default_factory=list)

    def of_claim(self, claim_id: str) -> list[Verdict]:
        return [v for v in self.verdicts if v.claim.id == claim_id]

    def agreement(self, claim_id: str) -> str:
        """'' with one group, else whether the groups' verdicts agree (`stats.claims.agreement`)."""
        return agreement(self.of_claim(claim_id))

    def of_group(self, group: str) -> dict[str, str]:
        """{claim id: verdict} of one group (a model): the W&B summary keys `claims/<id>`."""
        return {v.claim.id: v.verdict for v in self.verdicts if v.group == group}

    def rows(self, group: str) -> list[dict]:
        """One group's verdicts as rows {id, statement, verdict, reason, agreement} (the W&B table)."""
        return [
            {
                "id": v.claim.id,
                "statement": v.claim.statement,
                "verdict": v.verdict,
                "reason": v.reason,
                "agreement": self.agreement(v.claim.id),
            }
            for v in self.verdicts
            if v.group == group
        ]

    def counts(self) -> dict[str, int]:
        """How many verdicts of each kind."""
        return {kind: sum(v.verdict == kind for v in self.verdicts) for kind in VERDICTS}


def group_of(row) -> str:
    """The trajectory a table row belongs to: its `GROUP_FIELDS` values joined by '/'."""
    return "/".join(str(row[name]) for name in GROUP_FIELDS)


def record_group(record: Record) -> str:
    """The trajectory a record belongs to (`group_of` of its row): its identity's `GROUP_FIELDS` joined by '/'."""
    return "/".join(str(getattr(record.identity, name)) for name in GROUP_FIELDS)


def metric_columns(table: pd.DataFrame) -> list[str]:
    """The scalar metric columns of a trajectories table (not record fields, not interval bounds)."""
    return [c for c in table.columns if c not in results.RECORD_COLUMNS and "/" in c and not c.endswith(CI_SUFFIXES)]


def _number(value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def trajectories(table: pd.DataFrame, records: list[Record], resampled: Resampled) -> dict[str, Trajectory]:
    """One `Trajectory` per group (model) of the table's ok rows."""
    ok = table[table["status"] == "ok"]
    if ok.empty:
        return {}
    by_step = {(record_group(r), r.step): r.scalars for r in records if r.ok}
    columns = metric_columns(table)
    out = {}
    for group, part in ok.groupby(ok.apply(group_of, axis=1)):
        part = part.sort_values("step")
        steps = [int(s) for s in part["step"]]
        traj = Trajectory(steps, {c: dict(zip(steps, map(_number, part[c]))) for c in columns})
        for step, row in zip(steps, part.itertuples(index=False)):
            model = row.model
            found = by_step.get((group, step), Scalars())
            for key, bounds in resampled.intervals.get((model, step), {}).items():
                traj.intervals.setdefault(key, {})[step] = (float(bounds[0]), float(bounds[1]))
            for key, why in resampled.reasons.get((model, step), {}).items():
                traj.withheld.setdefault(key, {})[step] = why
            for key, reps in resampled.replicates.get((model, step), {}).items():
                traj.replicates.setdefault(key, {})[step] = np.asarray(reps, dtype=float)
            for key, why in found.nan_reasons.items():
                traj.nan_reasons.setdefault(key, {})[step] = why
            for key, why in found.no_interval.items():
                traj.no_interval.setdefault(key, why)
        out[group] = traj
    return out


def study_claims(
    claims: list[Claim],
    defaults: Defaults,
    table: pd.DataFrame,
    records: list[Record],
    resampled: Resampled,
    rule: Rule,
) -> ClaimResults:
    """The verdict of every claim on every group's trajectory."""
    found = trajectories(table, records, resampled)
    return ClaimResults(claims, evaluate(claims, found, rule), rule, defaults, sorted(found))


def _plain(value):
    """JSON-ready: NaN and infinities as null, numpy numbers as Python ones, tuples as lists."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (np.floating, float)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


def claims_document(found: ClaimResults, bootstrap: dict) -> dict:
    """What claims.json holds: the rule, and per claim its statement, tests, verdict per group (with reason,
    numbers and steps per test) and the agreement line."""
    entries = []
    for claim in found.claims:
        verdicts = {}
        for v in found.of_claim(claim.id):
            tests = [
                {"kind": t.kind, "metrics": t.metrics, "verdict": o.verdict, "reason": o.reason, "steps": o.steps}
                | {"numbers": o.numbers}
                for t, o in zip(claim.tests, v.outcomes)
            ]
            verdicts[v.group] = {"verdict": v.verdict, "reason": v.reason, "tests": tests}
        entries.append(
            {
                "id": claim.id,
                "paper": claim.paper,
                "statement": claim.statement,
                "method_check": claim.method_check,
                "note": claim.note,
                "combine": claim.combine,
                "tests": [t.__dict__ for t in claim.tests],
                "verdicts": verdicts,
                "agreement": found.agreement(claim.id),
            }
        )
    rule = {"onset": found.rule.__dict__, "defaults": found.defaults.__dict__, "bootstrap": bootstrap}
    return _plain({"rule": rule, "groups": list(GROUP_FIELDS), "counts": found.counts(), "claims": entries})


def write_claims(path: Path, found: ClaimResults, bootstrap: dict) -> Path:
    """claims.json (atomically)."""
    results.atomic_write_bytes(Path(path), json.dumps(claims_document(found, bootstrap), indent=1).encode())
    return Path(path)

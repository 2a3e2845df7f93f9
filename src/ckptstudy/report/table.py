"""trajectories.csv: one row per (model, step) from the records (`results.results_table`), the cross-step
columns no single record can hold (`icl/top{k}_jaccard_prev` beside its chance level), and each interval as
`<key>/ci_low`, `<key>/ci_high` right after its value; plus the per-head arrays over steps as rows for W&B."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import torch

from ckptstudy import results
from ckptstudy.record import Record
from ckptstudy.report.study import Study, drawn_heads
from ckptstudy.stats.specialization import jaccard, jaccard_chance, top_heads

EFFECTS = "icl/ablation_effect"  # the per-head array the cross-step overlap is taken of


def _ok_by_step(records: list[Record], model: str) -> list[Record]:
    return sorted((r for r in records if r.model == model and r.ok), key=lambda r: r.step)


def add_cross_step_columns(table: pd.DataFrame, records: list[Record], k: int, min_total: float) -> pd.DataFrame:
    """`icl/top{k}_jaccard_prev`: overlap of the top-k ablation heads with the previous ok step's, beside
    its chance level `icl/top{k}_jaccard_prev_chance` (two random k-subsets of the model's heads).

    Held to the icl family's bar: NaN when either step's total positive effect is below `min_total`
    (`metrics.icl_heads.min_effect_total`), where the top-k set would be a ranking of noise.
    """
    values, chance = {}, {}
    for model in {r.model for r in records}:
        previous = None
        for record in _ok_by_step(records, model):
            effects = record.heads().get(EFFECTS)
            if effects is None:
                continue
            effects = torch.from_numpy(effects)
            where = (model, record.step)
            chance[where] = jaccard_chance(effects.numel(), min(k, effects.numel()))
            above = float(effects.nan_to_num(0).clamp(min=0).sum()) >= min_total
            current = top_heads(effects, k) if above else None
            values[where] = jaccard(previous, current) if previous is not None and current is not None else math.nan
            previous = current
    if values:
        where = list(zip(table["model"], table["step"].astype(int)))
        table[f"icl/top{k}_jaccard_prev"] = [values.get(w, math.nan) for w in where]
        table[f"icl/top{k}_jaccard_prev_chance"] = [chance.get(w, math.nan) for w in where]
    return table


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


def trajectory_table(study: Study, intervals: dict, top_k: int | None, min_effect_total: float) -> pd.DataFrame:
    """The study's table: record columns, scalar metrics, the cross-step head overlap (skipped when `top_k` is
    None: icl_heads is not configured) and the interval columns (`intervals` from `resample_records`)."""
    table = results.results_table(study.records)
    if top_k is not None:
        table = add_cross_step_columns(table, study.records, top_k, min_effect_total)
    return add_interval_columns(table, intervals)


def head_tables(records: list[Record], model: str) -> dict[str, list[list]]:
    """A model's layer x head arrays (`study.drawn_heads`) over its ok steps as rows [step, layer, head, value]
    (W&B tables)."""
    tables: dict[str, list[list]] = {}
    for record in _ok_by_step(records, model):
        for name, array in drawn_heads(record).items():
            rows = tables.setdefault(name, [])
            rows.extend([record.step, li, hi, float(x)] for (li, hi), x in np.ndenumerate(array))
    return tables

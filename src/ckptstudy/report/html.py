"""`<root>/<study>/report.html`: one self-contained page a person reads, built from records alone.

Images are inlined as base64 PNG and the page carries a Content-Security-Policy that forbids every fetch,
so it opens anywhere without network. Sections: onsets (with bootstrap intervals), per metric family a
trajectory plot (all models overlaid, symlog step axis with step 0, bands, onset markers) by training step
and by tokens seen (a plain CSS radio toggle, no script), head x step heatmaps of every layer x head array
with the first / onset / last checkpoint side by side, checkpoints that failed or carry identical weights,
NaN reasons, which scalars have intervals, and the commands, config and package versions behind it.

`summary.summarize` builds a `ReportData` and calls `write_report`; `test_hooks=True` adds a small script
that records script errors and images that do not decode to their last row (matplotlib PNGs are opaque, a
truncated one ends transparent) into the DOM, for the headless-browser test only.
"""

from __future__ import annotations

import base64
import datetime
import html
import importlib.metadata
import math
import platform
import re
import shlex
import subprocess
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf

from ckptstudy.report.plots import head_snapshots_figure, head_step_figure, png_bytes, trajectory_figure
from ckptstudy.results import RECORD_COLUMNS, atomic_write_bytes, step_number

PACKAGES = ("torch", "transformers", "tokenizers", "hydra-core", "omegaconf", "numpy", "pandas", "matplotlib", "wandb")
CI_SUFFIXES = ("/ci_low", "/ci_high")
NUMBER = re.compile(r"-?\d+(?:\.\d+)?(?:e[-+]?\d+)?")
DPI = 90


@dataclass
class ReportData:
    """Everything the report shows, assembled by `summary.summarize` from the study's records."""

    study: str
    directory: Path
    table: object  # the trajectories table (pandas), with `<key>/ci_low|ci_high` columns
    records: list[dict]
    arrays: dict[str, dict[str, np.ndarray]]  # record path -> its arrays (bootstrap samples left out)
    onsets: dict[tuple[str, str], float]
    onset_ci: dict[tuple[str, str], dict]
    summary_metrics: list[str]
    onset_metrics: list[str]
    onset_fraction: float
    onset_persist: int
    bootstrap: dict  # n, level, seed, min_prompts
    interval_reasons: dict = field(default_factory=dict)  # (model, step) -> {key: why its interval is NaN}
    panels_per_family: int = 12
    bootstrap_seconds: float = math.nan  # time spent resampling stored samples for this report
    built_by: str = field(
        default_factory=lambda: " ".join([Path(sys.argv[0]).name, *(shell_quote(a) for a in sys.argv[1:])])
    )


def _img(png: bytes, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'


def _figure(fig, alt: str) -> str:
    return _img(png_bytes(fig, DPI), alt)


def _fmt(value, digits: int = 3) -> str:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return html.escape(str(value))
    if not math.isfinite(value):
        return "NaN"
    return f"{value:.{digits}g}" if abs(value) < 1e4 else f"{value:,.0f}"


def metric_columns(table) -> list[str]:
    """Scalar metric columns of the table (not record fields, not interval columns)."""
    return [c for c in table.columns if c not in RECORD_COLUMNS and "/" in c and not c.endswith(CI_SUFFIXES)]


def interval_keys(table) -> set[str]:
    return {c[: -len("/ci_low")] for c in table.columns if c.endswith("/ci_low") and table[c].notna().any()}


def family_panels(data: ReportData) -> dict[str, tuple[list[str], int]]:
    """Per family (the part before '/'): the metrics drawn (summary and onset metrics first, then those with
    intervals, then the rest, at most `panels_per_family`) and how many were left out."""
    columns = metric_columns(data.table)
    with_ci = interval_keys(data.table)
    out = {}
    for family in sorted({c.split("/")[0] for c in columns}):
        mine = [c for c in columns if c.split("/")[0] == family and data.table[c].notna().any()]
        first = [m for m in dict.fromkeys(data.summary_metrics + data.onset_metrics) if m in mine]
        ranked = first + [m for m in mine if m in with_ci and m not in first]
        ranked += [m for m in mine if m not in ranked]
        out[family] = (ranked[: data.panels_per_family], max(0, len(ranked) - data.panels_per_family))
    return out


def tokens_per_step(records: list[dict]) -> dict[str, float | None]:
    """Training tokens per step of each model, from the model config stored in its records."""
    out: dict[str, float | None] = {}
    for record in records:
        value = ((record.get("config") or {}).get("model") or {}).get("tokens_per_step")
        if out.get(record.get("model")) is None:
            out[record.get("model")] = float(value) if value else None
    return out


def onset_reference(key: str, model: str, data: ReportData) -> tuple[str | None, float]:
    """The onset metric (and its onset) that a per-head array is read against: a metric whose name starts
    with the array's name (icl/induction -> icl/induction_max), else one starting with its name less a
    trailing `_effect` (icl/ablation_effect -> icl/ablation_top3_share), else any metric of its family."""
    found = {m: v for (mod, m), v in data.onsets.items() if mod == model and np.isfinite(v)}
    stem = key.removesuffix("_effect")
    for candidates in (
        [m for m in data.onset_metrics if m.startswith(key + "_")],
        [m for m in data.onset_metrics if m.startswith(stem + "_")],
        [m for m in data.onset_metrics if m.split("/")[0] == key.split("/")[0]],
    ):
        for metric in candidates:
            if metric in found:
                return metric, found[metric]
    return None, math.nan


def is_head_array(record: dict, array: np.ndarray) -> bool:
    """True for a layer x head array: 2-D with the shape (n_layers, n_heads) of the model config stored in
    the record (any 2-D array when the config does not say; generated ids and the like are not)."""
    model = (record.get("config") or {}).get("model") or {}
    shape = (model.get("n_layers"), model.get("n_heads"))
    return array.ndim == 2 and (None in shape or tuple(array.shape) == shape)


def head_arrays(data: ReportData, model: str) -> dict[str, list[tuple[int, np.ndarray]]]:
    """Per layer x head array of a model's ok records: [(step, array)] in step order."""
    out: dict[str, list] = defaultdict(list)
    for record in sorted(data.records, key=step_number):
        if record.get("model") != model or record.get("status") != "ok":
            continue
        for key, array in data.arrays.get(record["_path"], {}).items():
            if is_head_array(record, array):
                out[key].append((int(record["step"]), array))
    return dict(out)


CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:0;color:#1d2330;background:#fff}
header{background:#1d2330;color:#fff;padding:14px 24px}
header h1{margin:0;font-size:20px} header p{margin:4px 0 0;font-size:13px;color:#c9d1e0}
nav{padding:8px 24px;background:#eef1f6;font-size:13px;position:sticky;top:0;z-index:2}
nav a{margin-right:12px;color:#1f4fa3;text-decoration:none}
.axis{margin-left:18px;font-weight:600} .axis label{font-weight:normal;margin-right:10px;cursor:pointer}
main{padding:8px 24px 40px;max-width:1400px}
h2{border-bottom:2px solid #dfe4ec;padding-bottom:4px;margin-top:28px;font-size:18px}
h3{font-size:15px;margin:18px 0 6px}
table{border-collapse:collapse;font-size:12px;margin:6px 0}
th,td{border:1px solid #dfe4ec;padding:3px 7px;text-align:left;vertical-align:top}
th{background:#f5f7fa} td.num{text-align:right;font-variant-numeric:tabular-nums}
img{max-width:100%;height:auto;display:block;margin:6px 0}
.note{font-size:12px;color:#555} .bad{color:#b00020;font-weight:600} .warn{color:#9a6700;font-weight:600}
pre{background:#f5f7fa;padding:8px;font-size:11px;overflow:auto;max-height:420px}
details{margin:6px 0} summary{cursor:pointer;font-size:13px}
input.axis-choice{position:absolute;opacity:0;pointer-events:none}
.by-tokens{display:none}
#axis-tokens:checked ~ main .by-tokens{display:block}
#axis-tokens:checked ~ main .by-step{display:none}
#axis-step:checked ~ nav label[for=axis-step],
#axis-tokens:checked ~ nav label[for=axis-tokens]{text-decoration:underline;font-weight:600}
.pair{display:flex;gap:18px;align-items:flex-start}
.pair img{max-width:calc(50% - 9px)}
.muted{color:#555}
"""

TEST_SCRIPT = """<script>
(function(){
  var errors=[];
  function note(){document.body.setAttribute('data-errors', JSON.stringify(errors));}
  window.addEventListener('error', function(e){
    var t=e.target;
    errors.push(t && t.tagName ? ('resource: '+t.tagName+' '+(t.alt||'')) : ('script: '+e.message)); note();
  }, true);
  var original=console.error;
  console.error=function(){
    errors.push('console: '+Array.prototype.join.call(arguments,' ')); note(); original.apply(console, arguments);
  };
  function decoded(img){
    if(!(img.complete && img.naturalWidth>0)) return false;
    var c=document.createElement('canvas'); c.width=img.naturalWidth; c.height=img.naturalHeight;
    var g=c.getContext('2d'); g.drawImage(img,0,0);
    var row=g.getImageData(0,c.height-1,c.width,1).data;  // a truncated PNG leaves its last rows transparent
    for(var k=3;k<row.length;k+=4){ if(row[k]===0) return false; }
    return true;
  }
  window.addEventListener('load', function(){
    var imgs=document.images, bad=[];
    for(var i=0;i<imgs.length;i++){ if(!decoded(imgs[i])) bad.push(imgs[i].alt); }
    document.body.setAttribute('data-images', String(imgs.length));
    document.body.setAttribute('data-undecoded', JSON.stringify(bad));
    note();
    document.body.setAttribute('data-checked', 'yes');
  });
})();
</script>"""


def _onset_section(data: ReportData, tps: dict) -> str:
    level = round(100 * float(data.bootstrap.get("level", 0.95)))
    rows = []
    steps = {m: sorted(int(s) for s in part["step"]) for m, part in data.table.groupby("model")}

    def order(item):
        (model, metric), value = item
        return (model, 0 if np.isfinite(value) else 1, value if np.isfinite(value) else 0.0, metric)

    for (model, metric), value in sorted(data.onsets.items(), key=order):
        ci = data.onset_ci.get((model, metric))
        low, high = (ci or {}).get("ci", [math.nan, math.nan])
        share = (ci or {}).get("with_onset")
        interval = f"{_fmt(low, 4)} – {_fmt(high, 4)}" if np.isfinite(low) else ("no interval" if ci is None else "NaN")
        tokens = tps.get(model)
        in_tokens = _fmt(value * tokens, 4) if tokens and np.isfinite(value) else ""
        between = _bracket(steps.get(model, []), value)
        rows.append(
            f"<tr><td>{html.escape(metric)}</td><td>{html.escape(model)}</td>"
            f"<td class=num>{'no held change' if not np.isfinite(value) else _fmt(value, 4)}</td>"
            f"<td class=num>{between}</td>"
            f"<td class=num>{interval}</td><td class=num>{'' if share is None else f'{100 * share:.0f}%'}</td>"
            f"<td class=num>{in_tokens}</td></tr>"
        )
    rule = (
        f"onset = first checkpoint where the metric crosses baseline (first step) + {data.onset_fraction:g} x its "
        f"change and stays across for {data.onset_persist} consecutive checkpoint(s); the change is the largest "
        "level held that long, so one outlying checkpoint neither sets it nor marks the onset; interpolated in "
        f"log(1 + step). Interval: {level}% percentile interval of the onset recomputed on each of "
        f"{data.bootstrap.get('n')} bootstrap replicates of the whole trajectory (the same prompt resample at every "
        "step); 'with onset' = share of replicates that have one. The interval is the uncertainty from the "
        "choice of prompts only: the onset is also only resolved to the two checkpoints around it."
    )
    body = "".join(rows) or "<tr><td colspan=7>no onset metric found in the table</td></tr>"
    return (
        f"<h2 id=onsets>Onsets</h2><p class=note>{html.escape(rule)}</p>"
        f"<table><tr><th>metric</th><th>model</th><th>onset step</th><th>between checkpoints</th>"
        f"<th>{level}% interval</th><th>with onset</th><th>onset, tokens seen</th></tr>{body}</table>"
    )


def _bracket(steps: list[int], onset: float) -> str:
    """The two checkpoints an onset lies between (its resolution on the checkpoint grid)."""
    if not np.isfinite(onset) or not steps:
        return ""
    after = [s for s in steps if s >= onset]
    before = [s for s in steps if s < onset]
    if not before:
        return f"at {after[0]}"
    return f"{before[-1]}–{after[0]}" if after else f"after {before[-1]}"


def _family_sections(data: ReportData, ok, tps: dict) -> str:
    out = ["<h2 id=trajectories>Trajectories</h2>"]
    level = round(100 * float(data.bootstrap.get("level", 0.95)))
    out.append(
        f"<p class=note>Lines: the value on all prompts; bands: {level}% intervals over prompts (bootstrap "
        "percentile; Wilson for rates), where the metric has per-prompt samples; dashed lines: onsets, shaded: "
        "their intervals. "
        "The x axis is symlog (linear below one step, so step 0 is shown). Switch the axis at the top.</p>"
    )
    known = {m: t for m, t in tps.items() if t}
    for family, (metrics, left_out) in family_panels(data).items():
        if not metrics:
            continue
        by_step = trajectory_figure(ok, metrics, data.onsets, data.onset_ci, "step")
        by_tokens = trajectory_figure(ok, metrics, data.onsets, data.onset_ci, "tokens", known)
        more = f" {left_out} more {family}/ metrics are in trajectories.csv." if left_out else ""
        with_ci = interval_keys(ok)
        without = [m for m in metrics if m not in with_ci]
        note = f"No interval: {', '.join(without)}." if without else "Every metric drawn has an interval."
        out.append(
            f"<h3 id=family-{html.escape(family)}>{html.escape(family)}/</h3>"
            f"<div class=by-step>{_figure(by_step, f'{family} trajectories by step')}</div>"
            f"<div class=by-tokens>{_figure(by_tokens, f'{family} trajectories by tokens seen')}</div>"
            f"<p class=note>{html.escape(note + more)}</p>"
        )
    missing = sorted(m for m, t in tps.items() if not t)
    if missing:
        out.append(f"<p class=note>No tokens_per_step in the config of: {html.escape(', '.join(missing))}.</p>")
    return "".join(out)


def _head_sections(data: ReportData) -> str:
    out = [
        "<h2 id=heads>Heads over training</h2><p class=note>Every layer x head array of the records: one row per "
        "head, one column per checkpoint (which heads form and when), then the first, onset and last "
        "checkpoints side by side on one colour scale. The onset is that of the metric named beside it.</p>"
    ]
    for model in sorted({r.get("model") for r in data.records if r.get("status") == "ok"}):
        for key, series in sorted(head_arrays(data, model).items()):
            steps = [s for s, _ in series]
            metric, onset = onset_reference(key, model, data)
            title = f"{model}: {key} per head" + (f" (onset of {metric})" if metric else "")
            grid = _figure(head_step_figure(steps, [a for _, a in series], title, onset), f"{model} {key} head x step")
            picks = [("first", 0)]
            if np.isfinite(onset):
                index = min(int(np.searchsorted(np.asarray(steps, dtype=float), onset)), len(steps) - 1)
                picks.append((f"onset (~{onset:.0f})", index))
            else:
                picks.append(("middle", len(steps) // 2))
            picks.append(("last", len(steps) - 1))
            panels = [(f"{label}: step {steps[i]}", series[i][1]) for label, i in picks]
            snaps = _figure(head_snapshots_figure(panels, f"{model}: {key}"), f"{model} {key} first onset last")
            out.append(f"<h3>{html.escape(model)} — {html.escape(key)}</h3><div class=pair>{grid}{snaps}</div>")
    if len(out) == 1:
        out.append("<p>No layer x head arrays in the records.</p>")
    return "".join(out)


def _checkpoint_section(data: ReportData) -> str:
    table = data.table
    failed = table[table["status"] != "ok"]
    flagged = table[table["identical_weights_as"].astype(str).str.strip() != ""]
    by_key = {(r.get("model"), step_number(r)): r for r in data.records}
    out = [
        f"<h2 id=checkpoints>Checkpoints</h2><p>{len(table)} checkpoint(s): "
        f"{int((table['status'] == 'ok').sum())} ok, <span class={'bad' if len(failed) else 'muted'}>"
        f"{len(failed)} failed</span>, <span class={'warn' if len(flagged) else 'muted'}>{len(flagged)} with "
        "weights identical to another step</span>.</p>"
    ]
    if len(failed):
        out.append("<h3>Failed</h3><table><tr><th>model</th><th>step</th><th>error</th></tr>")
        for _, row in failed.iterrows():
            record = by_key.get((row["model"], int(row["step"])), {})
            error = record.get("error") or {}
            trace = error.get("traceback")
            details = f"<details><summary>traceback</summary><pre>{html.escape(trace)}</pre></details>" if trace else ""
            message = f"{error.get('type', '?')}: {error.get('message', '')}"
            out.append(
                f"<tr><td>{html.escape(str(row['model']))}</td><td class=num>{row['step']}</td>"
                f"<td class=bad>{html.escape(message)}{details}</td></tr>"
            )
        out.append("</table>")
    if len(flagged):
        out.append(
            "<h3>Identical weights</h3><p class=note>Two steps with the same weights hash: the checkpoint source "
            "may serve wrong weights for one of them (a known Pythia hub defect).</p>"
            "<table><tr><th>model</th><th>step</th><th>same weights as step(s)</th><th>sha256</th></tr>"
        )
        for _, row in flagged.iterrows():
            out.append(
                f"<tr><td>{html.escape(str(row['model']))}</td><td class=num>{row['step']}</td>"
                f"<td class=warn>{html.escape(str(row['identical_weights_as']))}</td>"
                f"<td><code>{html.escape(str(row['weights_sha256'])[:16])}…</code></td></tr>"
            )
        out.append("</table>")
    rows = []
    for record in data.records:
        warnings = record.get("warnings") or []
        rows.append(
            f"<tr><td>{html.escape(str(record.get('model')))}</td><td class=num>{record.get('step')}</td>"
            f"<td>{html.escape(str(record.get('status')))}</td><td class=num>{_fmt(record.get('seconds'), 4)}</td>"
            f"<td>{html.escape(str(record.get('finished_at', '')))}</td>"
            f"<td>{html.escape('; '.join(map(str, warnings)))}</td></tr>"
        )
    out.append(
        "<details><summary>every checkpoint (seconds per job, warnings)</summary><table><tr><th>model</th>"
        f"<th>step</th><th>status</th><th>seconds</th><th>finished</th><th>warnings</th></tr>{''.join(rows)}</table>"
        "</details>"
    )
    return "".join(out)


def reason_groups(entries) -> dict[tuple[str, str], tuple[str, list[str]]]:
    """(metric, reason with its numbers as #) -> (the first such reason, where) for (where, metric, reason)
    entries: the same reason with other numbers in it is one row."""
    groups: dict[tuple[str, str], tuple[str, list[str]]] = {}
    for where, key, reason in entries:
        groups.setdefault((key, NUMBER.sub("#", reason)), (reason, []))[1].append(where)
    return groups


def _reason_rows(rows: list[tuple[str, str, list[str]]]) -> str:
    """Table rows of (metric, reason, where): the count and the first 12 places."""
    return "".join(
        f"<tr><td>{html.escape(key)}</td><td>{html.escape(reason)}</td><td class=num>{len(where)}</td>"
        f"<td>{html.escape(', '.join(where[:12]) + (' …' if len(where) > 12 else ''))}</td></tr>"
        for key, reason, where in rows
    )


def _nan_section(data: ReportData) -> str:
    groups = reason_groups(
        (f"{record.get('model')}@{record.get('step')}", key, reason)
        for record in data.records
        for key, reason in (record.get("nan_reasons") or {}).items()
    )
    if not groups:
        return "<h2 id=nan>NaN values</h2><p>No NaN values.</p>"
    ordered = sorted(groups.items(), key=lambda kv: (kv[0][0].split("/")[0], -len(kv[1][1]), kv[0]))
    rows = _reason_rows([(kind[0], first, where) for kind, (first, where) in ordered])
    total = sum(len(where) for _, where in groups.values())
    return (
        f"<h2 id=nan>NaN values</h2><p class=note>{total} NaN values, each with the reason its family gave "
        "(reasons that differ only in their numbers share a row; the first is shown).</p><details open><summary>"
        f"{len(groups)} (metric, reason) pairs</summary><table><tr><th>metric</th><th>reason (first)</th>"
        f"<th>count</th><th>where</th></tr>{rows}</table></details>"
    )


def no_interval_reasons(data: ReportData) -> dict[str, str]:
    """{key: why it has no interval} from the records (`no_interval`, the families' declarations); a key
    with neither an interval nor a declared reason is said to come from a record that predates them."""
    reasons: dict[str, str] = {}
    for record in data.records:
        for key, why in (record.get("no_interval") or {}).items():
            reasons.setdefault(key, why)
    return reasons


def _interval_section(data: ReportData) -> str:
    columns = metric_columns(data.table)
    with_ci = sorted(interval_keys(data.table))
    declared = no_interval_reasons(data)
    old = "no per-prompt sample in its records (written before samples existed? force=true recomputes)"
    without = {key: declared.get(key, old) for key in sorted(set(columns) - set(with_ci))}
    b = data.bootstrap
    seconds = (
        ""
        if not np.isfinite(data.bootstrap_seconds)
        else f" Resampling for this report: {data.bootstrap_seconds:.2f} s."
    )
    rows = "".join(f"<tr><td>{html.escape(k)}</td><td>{html.escape(why)}</td></tr>" for k, why in without.items())
    nan_rows = _nan_interval_rows(data.interval_reasons)
    return (
        "<h2 id=intervals>Intervals</h2><p class=note>"
        f"Bootstrap over prompts: {b.get('n')} resamples, {100 * float(b.get('level', 0.95)):.0f}% percentile "
        f"intervals, seed {b.get('seed')}; recomputed from the per-prompt samples stored with each record (npz), "
        f"the same resample at every checkpoint.{seconds} An interval needs the sample to give the reported value, "
        f"at least {b.get('min_prompts')} contributing prompts and the statistic defined in 90% of the resamples. "
        "Percentile intervals of discrete statistics (top-k Jaccard, Spearman over few heads) sit on a lattice and "
        "can have zero width; rates (shares of prompts) get Wilson intervals; maxima over heads and concentration "
        "statistics lean upward under resampling, so with near-tied heads an interval can lie above its value.</p>"
        f"<details><summary>{len(with_ci)} scalars with an interval</summary><p>{html.escape(', '.join(with_ci))}"
        f"</p></details><details><summary>{len(without)} scalars without, and why</summary><table><tr><th>metric"
        f"</th><th>why it has no interval</th></tr>{rows}</table></details>{nan_rows}"
    )


def _nan_interval_rows(reasons: dict) -> str:
    """Where a scalar with a sample got no interval, grouped by (metric, reason with numbers as #)."""
    groups = reason_groups(
        (f"{model}@{step}", key, why)
        for (model, step), keys in sorted(reasons.items())
        for key, why in keys.items()
        if why != "the scalar is NaN"  # already listed with its reason under NaN values
    )
    if not groups:
        return ""
    rows = _reason_rows([(key, pattern, where) for (key, pattern), (_, where) in sorted(groups.items())])
    return (
        f"<details><summary>{sum(len(w) for _, w in groups.values())} intervals left out at some checkpoints, and "
        f"why</summary><table><tr><th>metric</th><th>why</th><th>count</th><th>where</th></tr>{rows}</table></details>"
    )


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version(), "platform": platform.platform()}
    for name in ("ckptstudy", *PACKAGES):
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "not installed"
    try:
        commit = subprocess.run(
            ["git", "-C", str(Path(__file__).parent), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10
        )
        if commit.returncode == 0:
            out["ckptstudy git commit"] = commit.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return out


def shell_quote(word: str) -> str:
    """`word` as a shell would need it typed: bare when safe, in double quotes when that suffices (Hydra's
    own quotes inside an override stay readable), else shlex's single quotes."""
    if re.fullmatch(r"[\w@%+=:,./-]+", word):
        return word
    if not re.search(r'["$`\\!]', word):
        return f'"{word}"'
    return shlex.quote(word)


def sweep_commands(directory: Path) -> list[tuple[str, str]]:
    """(when, command) of every Hydra run and multirun that wrote into the study (from Hydra's own
    records of the overrides: multirun.yaml, .hydra/overrides.yaml)."""
    out = []
    for path in sorted((directory / "hydra" / "multirun").glob("*/multirun.yaml")):
        try:
            task = list(OmegaConf.load(path).hydra.overrides.task)
        except Exception:
            continue
        out.append((path.parent.name, "ckptstudy -m " + " ".join(shell_quote(str(o)) for o in task)))
    for path in sorted((directory / "hydra" / "run").glob("*/.hydra/overrides.yaml")):
        try:
            task = list(OmegaConf.load(path))
        except Exception:
            continue
        out.append((path.parent.parent.name, "ckptstudy " + " ".join(shell_quote(str(o)) for o in task)))
    return out


def _provenance_section(data: ReportData) -> str:
    commands = sweep_commands(data.directory)
    listed = "".join(f"<tr><td>{html.escape(w)}</td><td><code>{html.escape(c)}</code></td></tr>" for w, c in commands)
    if not listed:
        listed = (
            "<tr><td colspan=2>no Hydra run directory under this study (records assembled from elsewhere?): "
            "see each record's config</td></tr>"
        )
    hashes: dict[str, list] = defaultdict(list)
    for record in data.records:
        hashes[str(record.get("config_hash"))].append(f"{record.get('model')}@{record.get('step')}")
    newest = max(data.records, key=lambda r: str(r.get("finished_at", "")), default={})
    config = newest.get("config") or {}
    config_yaml = OmegaConf.to_yaml(OmegaConf.create(config)) if config else "(no config stored)"
    hash_rows = "".join(
        f"<tr><td><code>{html.escape(h)}</code></td><td class=num>{len(w)}</td>"
        f"<td>{html.escape(', '.join(w[:16]) + (' …' if len(w) > 16 else ''))}</td></tr>"
        for h, w in sorted(hashes.items())
    )
    versions = "".join(f"<tr><td>{html.escape(k)}</td><td>{html.escape(v)}</td></tr>" for k, v in _versions().items())
    record_versions = sorted({str(r.get("package_version")) for r in data.records})
    definitions = sorted({str(r.get("definitions")) for r in data.records if r.get("definitions")})
    return (
        "<h2 id=provenance>How this was made</h2><h3>Sweeps that wrote the records</h3>"
        f"<table><tr><th>started</th><th>command</th></tr>{listed}</table>"
        f"<h3>This report</h3><p><code>{html.escape(data.built_by)}</code> at "
        f"{datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')}</p>"
        f"<h3>Configs</h3><table><tr><th>config hash</th><th>records</th><th>which</th></tr>{hash_rows}</table>"
        f"<details><summary>resolved config of the newest record ({html.escape(str(newest.get('model')))}@"
        f"{html.escape(str(newest.get('step')))})</summary><pre>{html.escape(config_yaml)}</pre></details>"
        f"<h3>Versions</h3><p class=note>Records written by ckptstudy {html.escape(', '.join(record_versions))}; "
        f"definition versions {html.escape('; '.join(definitions))}. Environment of this report:</p>"
        f"<table>{versions}</table>"
    )


def render(data: ReportData, test_hooks: bool = False) -> str:
    """The report as one HTML string."""
    table = data.table
    ok = table[table["status"] == "ok"]
    tps = tokens_per_step(data.records)
    models = sorted(table["model"].unique()) if len(table) else []
    steps = sorted(int(s) for s in table["step"].unique()) if len(table) else []
    script_src = "'unsafe-inline'" if test_hooks else "'none'"
    csp = f"default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src {script_src}"
    head = (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{csp}">'
        f'<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>ckptstudy report: {html.escape(data.study)}</title><style>{CSS}</style>"
        f"{TEST_SCRIPT if test_hooks else ''}</head><body>"
    )
    span = f"steps {steps[0]}–{steps[-1]}" if steps else "no steps"
    header = (
        f"<header><h1>ckptstudy report — study {html.escape(data.study)}</h1><p>{len(models)} model(s): "
        f"{html.escape(', '.join(map(str, models)))}; {len(table)} checkpoint(s), {span}; built "
        f"{datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')} from the records alone</p>"
        "</header>"
    )
    radios = (
        "<input class=axis-choice type=radio name=axis id=axis-step checked>"
        "<input class=axis-choice type=radio name=axis id=axis-tokens>"
    )
    nav = (
        "<nav><a href=#onsets>onsets</a><a href=#trajectories>trajectories</a><a href=#heads>heads</a>"
        "<a href=#checkpoints>checkpoints</a><a href=#nan>NaN reasons</a><a href=#intervals>intervals</a>"
        "<a href=#provenance>provenance</a><span class=axis>x axis: <label for=axis-step>training step</label>"
        "<label for=axis-tokens>tokens seen (step x model.tokens_per_step)</label></span></nav>"
    )
    if ok.empty:
        body = "<p class=bad>No checkpoint finished ok: nothing to plot.</p>"
    else:
        body = _onset_section(data, tps) + _family_sections(data, ok, tps) + _head_sections(data)
    body += _checkpoint_section(data) + _nan_section(data) + _interval_section(data) + _provenance_section(data)
    return f"{head}{header}{radios}{nav}<main>{body}</main></body></html>"


def write_report(path: Path, data: ReportData, test_hooks: bool = False) -> Path:
    """Render the report and write it atomically to `path`."""
    atomic_write_bytes(Path(path), render(data, test_hooks).encode())
    return Path(path)

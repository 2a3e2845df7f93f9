"""`<root>/<study>/report.html`: one self-contained page a person reads, built from records alone.

The page is the jinja2 template `templates/report.html` (its CSS and the browser-test script are files beside
it, inlined by the template) filled with the plain data of `sections`. Images are inlined as base64 PNG and
the page carries a Content-Security-Policy that forbids every fetch, so it opens anywhere without network.

`summary.summarize` builds a `ReportData` and calls `write_report`; `test_hooks=True` adds a small script
that records script errors and images that do not decode to their last row (matplotlib PNGs are opaque, a
truncated one ends transparent) into the DOM, for the headless-browser test only.
"""

from __future__ import annotations

import datetime
from pathlib import Path

import jinja2

from ckptstudy.report import sections
from ckptstudy.report.provenance import provenance
from ckptstudy.report.sections import ReportData
from ckptstudy.results import atomic_write_bytes

TEMPLATES = Path(__file__).parent / "templates"
ENVIRONMENT = jinja2.Environment(
    loader=jinja2.FileSystemLoader(TEMPLATES),
    autoescape=True,
    undefined=jinja2.StrictUndefined,  # a name the data does not provide fails the render, not a blank
    trim_blocks=True,
    lstrip_blocks=True,
    keep_trailing_newline=True,
)


def browser_hooks_script() -> str:
    """The browser-test script as a `<script>` element (what `test_hooks=True` puts in the page's head)."""
    return f"<script>\n{(TEMPLATES / 'test_hooks.js').read_text()}</script>"


def page_context(data: ReportData, test_hooks: bool = False) -> dict:
    """Everything the template shows, as plain data (strings, rows, figures as data URIs)."""
    table = data.table
    ok = table[table["status"] == "ok"]
    tps = sections.tokens_per_step(data.records)
    steps = sorted(int(s) for s in table["step"].unique()) if len(table) else []
    context = {
        "test_hooks": test_hooks,
        "study": data.study,
        "models": [str(m) for m in sorted(table["model"].unique())] if len(table) else [],
        "n_checkpoints": len(table),
        "span": f"steps {steps[0]}–{steps[-1]}" if steps else "no steps",
        "built": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "level": data.level,
        "claims": sections.claim_section(data, ok),
        "any_ok": not ok.empty,
        "checkpoints": sections.checkpoint_section(data),
        "nan": sections.nan_section(data),
        "intervals": sections.interval_section(data),
        "provenance": provenance(data.records, data.directory, data.built_by),
    }
    if not ok.empty:
        families = sections.family_sections(data, ok, tps)
        context.update(
            onsets={
                "rule": sections.onset_rule(data),
                "rows": sections.onset_rows(data, tps),
                "seeds": sections.seed_rows(data),
            },
            summary=sections.summary_section(data, ok, tps),
            families=families,
            has_heads=any(f["heads"] for f in families),
            missing_tokens=sorted(str(m) for m, t in tps.items() if not t),
        )
    return context


def render(data: ReportData, test_hooks: bool = False) -> str:
    """The report as one HTML string."""
    return ENVIRONMENT.get_template("report.html").render(page_context(data, test_hooks))


def write_report(path: Path, data: ReportData, test_hooks: bool = False) -> Path:
    """Render the report and write it atomically to `path`."""
    atomic_write_bytes(Path(path), render(data, test_hooks).encode())
    return Path(path)

"""report.html from its jinja2 template: every section present and in order (findings first), the claims slot
empty until there are claims and then first, text escaped, the CSS and test script inlined unchanged, and a
template that names data it is not given fails instead of rendering a blank. Figures are stubbed here (their
pixels are checked in test_report.py, in a browser)."""

from __future__ import annotations

import dataclasses
import re

import jinja2
import numpy as np
import pytest

from ckptstudy.report import html, sections
from ckptstudy.report.claim_results import ClaimResults
from ckptstudy.report.summary import summarize
from ckptstudy.stats.claim_spec import Defaults, parse_claims
from ckptstudy.stats.claims import Rule, Trajectory, evaluate
from report_study import study_config, write_study

SECTIONS = ["onsets", "summary", "families", "checkpoints", "nan", "intervals", "provenance"]  # the order read
STUB = "data:image/png;base64,AAAA"


def stub_figures(patch: pytest.MonkeyPatch) -> None:
    """Figures become a fixed data URI (no matplotlib): the page's structure is what is tested here."""
    for name in ("trajectory_figure", "head_step_figure", "head_snapshots_figure", "claim_figure"):
        patch.setattr(sections, name, lambda *args, **kwargs: None)
    patch.setattr(sections, "figure", lambda fig, alt: {"alt": alt, "uri": STUB})


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("page")
    write_study(root)
    with pytest.MonkeyPatch.context() as patch:
        stub_figures(patch)
        return summarize(study_config(root))["report_data"]


@pytest.fixture
def page(data, monkeypatch):
    def render(**changes) -> str:
        stub_figures(monkeypatch)
        return html.render(dataclasses.replace(data, **changes))

    return render


def section_ids(page: str) -> list[str]:
    """The ids of the page's sections (its `<h2>` headings), in order."""
    return re.findall(r"<h2 id=([\w-]+)>", page)


def test_every_section_is_there_findings_first(page):
    text = page()
    assert section_ids(text) == SECTIONS
    assert text.index("<h2 id=onsets>") < text.index("<h2 id=summary>") < text.index("<h2 id=families>")
    nav = re.search(r"<nav>(.*?)</nav>", text, re.S).group(1)
    assert re.findall(r"<a href=#([\w-]+)>", nav) == SECTIONS  # every section is linked, nothing else


def test_a_missing_section_is_caught(data, monkeypatch, tmp_path):
    # the check above can fail: the same template without its NaN section gives a page without it
    for template in html.TEMPLATES.iterdir():
        (tmp_path / template.name).write_text(template.read_text())
    report = tmp_path / "report.html"
    report.write_text(report.read_text().replace('{% include "nan.html" %}', ""))
    monkeypatch.setattr(html.ENVIRONMENT, "loader", jinja2.FileSystemLoader(tmp_path))
    stub_figures(monkeypatch)
    found = section_ids(html.render(data))
    assert "nan" not in found and found != SECTIONS


def test_families_are_folded_with_their_trajectories_and_heads(page, data):
    text = page()
    (family,) = re.findall(r'<details class=family id="family-([\w-]+)">', text)
    assert family == "x"
    folded = text[text.index('<details class=family id="family-x">') : text.index("<h2 id=checkpoints>")]
    for alt in ("x trajectories by step", "x trajectories by tokens seen", "small x/score head x step"):
        assert f'alt="{alt}"' in folded, alt
    summary = text[text.index("<h2 id=summary>") : text.index("<h2 id=families>")]
    assert 'alt="summary metrics trajectories by step"' in summary and "x/rate, x/score_max" in summary


def demo_claims(data, statement: str = "the rate <b>rises</b>") -> ClaimResults:
    """The verdicts of two claims on the demo study (x/rate rises in both models; x/none is not measured)."""
    spec = {
        "rises": {"statement": statement, "test": "trend", "metric": "x/rate", "direction": "up"},
        "absent": {"statement": "absent", "method_check": True, "test": "level", "metric": "x/none", "above": 0},
    }
    defaults = Defaults(last=3, combine="every", window=1 / 3, share=0.95, min_checkpoints=4)
    claims = parse_claims({"demo": {"paper": "000 a paper", "claims": spec}}, defaults, {})
    verdicts = evaluate(claims, {"small": trajectory(data)}, Rule(0.5, 2, 0.9))
    return ClaimResults(claims, verdicts, Rule(0.5, 2, 0.9), defaults, ["small"])


def trajectory(data) -> Trajectory:
    """x/rate of the demo's small model with stand-in intervals and replicates (the page is what is tested)."""
    ok = data.table[(data.table["model"] == "small") & (data.table["status"] == "ok")]
    steps = [int(s) for s in ok["step"]]
    values = dict(zip(steps, ok["x/rate"].astype(float)))
    traj = Trajectory(steps, {"x/rate": values})
    traj.intervals["x/rate"] = {s: (v - 0.05, v + 0.05) for s, v in values.items()}
    traj.replicates["x/rate"] = {s: np.full(20, v) for s, v in values.items()}
    return traj


def test_no_claims_render_nothing_and_claims_come_first_escaped(page, data):
    assert "id=claims" not in page() and "href=#claims" not in page()
    text = page(claims=demo_claims(data))
    assert section_ids(text) == ["claims", *SECTIONS]
    nav = re.search(r"<nav>(.*?)</nav>", text, re.S).group(1)
    assert re.findall(r"<a href=#([\w-]+)>", nav)[0] == "claims"
    assert "the rate &lt;b&gt;rises&lt;/b&gt;" in text and "<b>rises" not in text
    assert '<td class="verdict supported">supported</td>' in text
    assert '<td class="verdict undetermined">undetermined</td>' in text
    claims = text[text.index("<h2 id=claims>") : text.index("<h2 id=onsets>")]
    assert "x/none is not in the study&#39;s records" in claims and "method check" in claims
    assert 'alt="demo/rises on small"' in claims and '<a href="#family-x">x/ trajectories</a>' in claims
    assert "Verdicts: 1 supported, 0 contradicted, 1 undetermined." in claims


def test_css_and_test_script_are_inlined_unchanged(data, monkeypatch):
    css = (html.TEMPLATES / "report.css").read_text()
    script = (html.TEMPLATES / "test_hooks.js").read_text()
    stub_figures(monkeypatch)
    plain, hooked = html.render(data), html.render(data, test_hooks=True)
    assert css in plain and "<script" not in plain and "script-src 'none'" in plain
    assert css in hooked and script in hooked and "script-src 'unsafe-inline'" in hooked


def test_no_finished_checkpoint_still_lists_the_records(page, data):
    failed = data.table.assign(status="failed")
    text = page(table=failed)
    assert "No checkpoint finished ok: nothing to plot." in text
    assert section_ids(text) == ["checkpoints", "nan", "intervals", "provenance"]


def test_a_name_the_data_lacks_fails_the_render(data, monkeypatch):
    stub_figures(monkeypatch)
    context = html.page_context(data)
    del context["intervals"]
    with pytest.raises(jinja2.UndefinedError, match="intervals"):
        html.ENVIRONMENT.get_template("report.html").render(context)

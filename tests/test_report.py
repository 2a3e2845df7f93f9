"""report.html and the end-of-sweep summary, from records alone: interval columns, onset intervals, a
self-contained page (checked as a person sees it, in headless Chromium), the console script, W&B tags and
artifacts. The study is written the way jobs write it (FamilyResult -> record + npz), without a model."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest

from ckptstudy import results
from ckptstudy.cli import report
from ckptstudy.report.html import browser_hooks_script, render
from ckptstudy.report.summary import summarize
from report_study import MODELS, STEPS, study_config, write_study


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    directory = write_study(root)
    out = summarize(study_config(root))
    return {"root": root, "dir": directory, "out": out}


def test_csv_has_interval_columns_beside_each_value_equal_to_the_records(study):
    table = pd.read_csv(study["dir"] / "trajectories.csv")
    columns = list(table.columns)
    for key in ("x/rate", "x/score_max"):
        at = columns.index(key)
        assert columns[at + 1 : at + 3] == [f"{key}/ci_low", f"{key}/ci_high"]
    assert "x/count/ci_low" not in columns and "x/late/ci_low" not in columns  # no sample, no interval
    ok = table[table["status"] == "ok"]
    assert (ok["x/rate/ci_low"] <= ok["x/rate"]).all() and (ok["x/rate"] <= ok["x/rate/ci_high"]).all()
    # recomputed from the stored samples, without the model: the same as the record's own `ci`
    for record in results.load_records(study["root"], "demo"):
        if not record.ok:
            continue
        row = ok[(ok["model"] == record.model) & (ok["step"] == record.step)].iloc[0]
        assert [row["x/rate/ci_low"], row["x/rate/ci_high"]] == pytest.approx(record.scalars.ci["x/rate"])


def test_onsets_have_intervals_from_replicated_trajectories(study):
    data = json.loads((study["dir"] / "onsets.json").read_text())
    assert data["rule"]["persist"] == 2 and data["rule"]["bootstrap"]["n"] == 100
    small, large = data["onsets"]["x/rate@small"], data["onsets"]["x/rate@large"]
    assert small["step"] < large["step"]  # the small model's rate rises first (around 20 vs 100)
    for entry in (small, large):
        low, high = entry["ci"]
        assert low <= entry["step"] <= high and entry["with_onset"] > 0.5
    assert data["onsets"]["x/late@small"]["ci"] is None  # no samples: an onset without an interval


def test_report_is_one_self_contained_page_with_every_section(study):
    page = (study["dir"] / "report.html").read_text()
    assert "<script" not in page  # no script outside test mode; the CSP forbids it too
    assert "default-src 'none'; img-src data:" in page
    sources = re.findall(r'(?:src|href)="?([^" >]+)', page)
    assert sources and all(s.startswith(("data:image/png;base64,", "#")) for s in sources), set(sources)
    assert not re.search(r"https?://", page)
    for text in (
        "Onsets",
        "x/rate",
        "by tokens seen",
        "by step",
        "head x step",
        "first onset last",
        "disk on fire",  # the failed checkpoint's error
        "same weights as step(s)",
        "nothing to measure at step 0",  # a NaN reason
        "No interval: x/late",
        "How this was made",
        "Versions",
    ):
        assert text in page, text
    assert "x/generated" not in page  # 2-D raw data is not drawn as a head array
    assert "id=axis-tokens" in page and "#axis-tokens:checked ~ main .by-tokens{display:block}" in page


def test_head_tables_for_wandb_hold_layer_x_head_arrays_only(study):
    from ckptstudy.report.study import load_study
    from ckptstudy.report.table import head_tables

    loaded = load_study(study["root"], "demo")
    tables = head_tables(loaded.records, "small")
    assert set(tables) == {"x/score"} and len(tables["x/score"]) == len(STEPS) * 4
    assert [row[0] for row in tables["x/score"][::4]] == STEPS  # in step order


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def run_browser(page: Path, tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--enable-logging=stderr",
        "--v=0",
    ]
    return subprocess.run(
        [chromium(), *flags, *args, page.resolve().as_uri()], capture_output=True, text=True, timeout=180
    )


@pytest.mark.skipif(chromium() is None, reason="no headless browser: install Debian's `chromium` to run this check")
def test_report_renders_in_a_browser_without_errors_and_every_image_decodes(study, tmp_path):
    from PIL import Image

    page = tmp_path / "report.html"
    page.write_text(render(study["out"]["report_data"], test_hooks=True))
    dom = run_browser(page, tmp_path, "--virtual-time-budget=20000", "--dump-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    body = re.search(r"<body([^>]*)>", dom.stdout).group(1)
    attributes = dict(re.findall(r'data-([a-z]+)="([^"]*)"', body))
    assert attributes.get("checked") == "yes", body  # the page loaded and the checks ran
    assert json.loads(attributes["errors"].replace("&quot;", '"')) == []  # no script or resource error
    assert json.loads(attributes["undecoded"].replace("&quot;", '"')) == []  # every image decoded
    assert int(attributes["images"]) >= 6
    assert "Uncaught" not in dom.stderr and "CONSOLE" not in dom.stderr, dom.stderr[-2000:]

    shot = tmp_path / "shot.png"
    taken = run_browser(page, tmp_path, f"--screenshot={shot}", "--window-size=1280,2000")
    assert taken.returncode == 0 and shot.exists(), taken.stderr[-2000:]
    image = Image.open(shot).convert("RGB")
    assert image.size == (1280, 2000)
    colours = image.getcolors(maxcolors=1 << 20)
    assert colours is not None and len(colours) > 50  # not blank: text, tables and plots


def test_a_broken_image_is_caught_by_the_browser_check(study, tmp_path):
    if chromium() is None:
        pytest.skip("no headless browser: install Debian's `chromium` to run this check")
    page = tmp_path / "broken.html"
    page.write_text(
        f"<html><head>{browser_hooks_script()}</head><body><img alt=bad src='data:image/png;base64,AAAA'>"
        "<script>undefined_function()</script></body></html>"
    )
    dom = run_browser(page, tmp_path, "--virtual-time-budget=5000", "--dump-dom")
    body = re.search(r"<body([^>]*)>", dom.stdout).group(1)
    attributes = dict(re.findall(r'data-([a-z]+)="([^"]*)"', body))
    assert json.loads(attributes["undecoded"].replace("&quot;", '"')) == ["bad"]
    assert any("undefined_function" in e for e in json.loads(attributes["errors"].replace("&quot;", '"')))


def test_console_script_rebuilds_everything_from_records(tmp_path):
    write_study(tmp_path, "pieces")
    overrides = [f"paths.root={tmp_path}", "study=pieces", "logger=none", "report.bootstrap.n=50"]
    with pytest.raises(SystemExit) as exit_code:
        report(overrides)
    assert exit_code.value.code == 1  # one checkpoint failed
    for name in ("trajectories.csv", "onsets.json", "report.html"):
        assert (tmp_path / "pieces" / name).stat().st_size > 0, name
    assert json.loads((tmp_path / "pieces" / "onsets.json").read_text())["rule"]["bootstrap"]["n"] == 50


def test_trajectory_runs_carry_tags_and_the_report_and_table_as_artifacts(tmp_path):
    from wandb.proto import wandb_internal_pb2

    from wandb_files import raw_records

    write_study(tmp_path, "tracked")
    logger = ["logger=wandb", "logger.mode=offline", "logger.project=ckptstudy-test", "logger.strict=true"]
    summarize(study_config(tmp_path, "tracked", *logger, "report.summary_metrics=[x/rate]"))
    found = {}
    for run in sorted((tmp_path / "tracked" / "wandb").glob("offline-run-*")):
        (path,) = run.glob("run-*.wandb")
        tags, artifacts = [], {}
        for blob in raw_records(path):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(blob)
            kind = record.WhichOneof("record_type")
            if kind == "run":
                tags = list(record.run.tags)
            elif kind == "artifact":
                artifacts[record.artifact.type] = [entry.path for entry in record.artifact.manifest.contents]
        found[tags[0]] = (tags, artifacts)
    assert set(found) == {"model:small", "model:large"}
    for tags, artifacts in found.values():
        assert "study:tracked" in tags
        assert artifacts["report"] == ["report.html"] and artifacts["trajectories"] == ["trajectories.csv"]


def test_trajectory_plot_draws_bands_onset_spans_and_a_tokens_axis(study):
    from ckptstudy.report.plots import trajectory_figure

    table = pd.read_csv(study["dir"] / "trajectories.csv")
    ok = table[table["status"] == "ok"]
    out = study["out"]
    fig = trajectory_figure(ok, ["x/rate", "x/late"], out["onsets"], out["onset_intervals"], "step")
    with_band, without_band = fig.axes[:2]
    assert len(with_band.collections) == 2 and len(without_band.collections) == 0  # one band per model
    assert len(with_band.patches) == 2  # the onset interval of each model
    assert with_band.get_xlim()[0] == 0 and with_band.get_xscale() == "symlog"  # step 0 is on the axis
    by_tokens = trajectory_figure(ok, ["x/rate"], out["onsets"], out["onset_intervals"], "tokens", MODELS)
    line = {line.get_label(): line for line in by_tokens.axes[0].get_lines()}["small"]
    assert list(line.get_xdata()) == [s * MODELS["small"] for s in STEPS]


def test_left_out_intervals_are_listed_with_their_reasons():
    from ckptstudy.report.sections import left_out_intervals

    reasons = {
        ("micro", 8): {
            "icl/a": "only 2 prompt(s) contribute (report.bootstrap.min_prompts=5)",
            "icl/b": "the scalar is NaN",
        },
        ("micro", 16): {"icl/a": "only 3 prompt(s) contribute (report.bootstrap.min_prompts=5)"},
    }
    left_out = left_out_intervals(reasons)
    assert left_out["total"] == 2 and len(left_out["rows"]) == 1  # one row: the numbers differ only
    (row,) = left_out["rows"]
    assert row["metric"] == "icl/a" and row["count"] == 2 and row["where"] == "micro@8, micro@16"
    assert "#" in row["reason"]  # the reason with its numbers as #
    # a NaN scalar is listed with its reason under NaN values already
    assert left_out_intervals({("m", 1): {"icl/b": "the scalar is NaN"}}) == {"total": 0, "rows": []}

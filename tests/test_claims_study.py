"""Claims at the end of a summary, from the config: a user's claim from a yaml file in a directory of their own
(picked up with `hydra.searchpath` and `+claims=<file>`), claims.json beside trajectories.csv, the printed
verdicts, and the W&B trajectory runs' summary keys `claims/<id>` and table, each read back from disk; the claims
table on the report's first screen in headless Chromium."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from ckptstudy.config import ConfigValueError, compose_config, configured_claims
from ckptstudy.report.html import render
from ckptstudy.report.summary import summarize
from claim_study import SETTINGS, write_claim_study
from test_report import chromium, run_browser
from wandb_files import artifacts, history, run_config, summary

USER_CLAIMS = """\
# @package claims.mine
paper: my notes
claims:
  rise_first:
    statement: t/rise appears before t/late
    test: onset_order
    first: t/rise
    then: t/late
  fall_first:
    statement: t/late appears before t/rise (built to be contradicted)
    test: onset_order
    first: t/late
    then: t/rise
  flat_rises:
    statement: t/flat goes up (nothing changes, so undetermined)
    test: trend
    metric: t/flat
    direction: up
"""


def user_config(root, directory, *overrides: str):
    return compose_config(
        [
            f"paths.root={root}",
            "study=claims",
            f"hydra.searchpath=[file://{directory}]",
            "+claims=mine",
            "report.onset_persist=2",
            *(f"report.bootstrap.{key}={value}" for key, value in SETTINGS.items()),
            *overrides,
        ]
    )


@pytest.fixture(scope="module")
def summarized(tmp_path_factory):
    root = tmp_path_factory.mktemp("claims_study")
    directory = tmp_path_factory.mktemp("my_claims")
    (directory / "claims").mkdir()
    (directory / "claims" / "mine.yaml").write_text(USER_CLAIMS)
    write_claim_study(root, "claims", {"m": 20, "late": 400})
    logger = ["logger=wandb", "logger.mode=offline", "logger.project=ckptstudy-test", "logger.strict=true"]
    cfg = user_config(root, directory, *logger, "report.summary_metrics=[t/rise]", "report.onset_metrics=[t/rise]")
    with pytest.MonkeyPatch.context() as patch:
        printed = []
        patch.setattr("builtins.print", lambda *args, **kwargs: printed.append(" ".join(map(str, args))))
        out = summarize(cfg)
    return {"root": root, "dir": root / "claims", "out": out, "printed": "\n".join(printed), "claims_dir": directory}


EXPECTED = {
    ("mine/rise_first", "m"): "supported",
    ("mine/rise_first", "late"): "contradicted",
    ("mine/fall_first", "m"): "contradicted",
    ("mine/flat_rises", "m"): "undetermined",
}


def test_a_user_claim_from_a_yaml_file_is_picked_up_and_decided(summarized):
    found = {(v.claim.id, v.group): v.verdict for v in summarized["out"]["claims"].verdicts}
    assert {k: found[k] for k in EXPECTED} == EXPECTED
    # the papers' claims come with it (+claims appends): they read metrics this study does not have
    papers = [v for v in summarized["out"]["claims"].verdicts if not v.claim.id.startswith("mine/")]
    assert papers and all(v.verdict == "undetermined" and "not in the study's records" in v.reason for v in papers)


def test_claims_json_beside_the_table_reads_back(summarized):
    path = summarized["dir"] / "claims.json"
    assert summarized["out"]["claims_path"] == path and (summarized["dir"] / "trajectories.csv").exists()
    document = json.loads(path.read_text())
    assert document["rule"]["onset"] == {"fraction": 0.5, "persist": 2, "level": 0.95}
    assert document["rule"]["defaults"]["last"] == 3 and document["groups"] == ["model"]
    entries = {entry["id"]: entry for entry in document["claims"]}
    for (claim_id, model), verdict in EXPECTED.items():
        assert entries[claim_id]["verdicts"][model]["verdict"] == verdict
    rise = entries["mine/rise_first"]
    assert rise["paper"] == "my notes" and rise["agreement"] == "disagree: contradicted (late); supported (m)"
    (test,) = rise["verdicts"]["m"]["tests"]
    assert test["kind"] == "onset_order" and test["numbers"]["share_before"] == 1.0
    assert test["numbers"]["t/rise"]["onset"] < test["numbers"]["t/late"]["onset"]
    assert sum(document["counts"].values()) == len(summarized["out"]["claims"].verdicts)


def test_the_verdicts_are_printed_after_the_onsets(summarized):
    printed = summarized["printed"]
    assert printed.index("onset m t/rise") < printed.index("== claims (")
    assert "supported    mine/rise_first [m]: t/rise onset ~" in printed
    assert "mine/rise_first across models: disagree: contradicted (late); supported (m)" in printed
    assert f"claims:  {summarized['dir'] / 'claims.json'}" in printed


def test_wandb_trajectory_runs_hold_the_verdicts(summarized):
    runs = sorted((summarized["dir"] / "wandb").glob("offline-run-*"))
    by_model = {run_config(r)["name"]: r for r in runs}
    assert set(by_model) == {"m/trajectory", "late/trajectory"}
    for model in ("m", "late"):
        found = summary(by_model[f"{model}/trajectory"])
        for (claim_id, group), verdict in EXPECTED.items():
            if group == model:
                assert found[f"claims/{claim_id}"] == verdict
        (row,) = [row for row in history(by_model[f"{model}/trajectory"]) if "claim_verdicts/path" in row]
        assert row["claim_verdicts/_type"] == "table-file"
        table = json.loads((by_model[f"{model}/trajectory"] / "files" / row["claim_verdicts/path"]).read_text())
        assert table["columns"] == ["id", "statement", "verdict", "reason", "agreement"]
        assert len(table["data"]) == row["claim_verdicts/nrows"] == len(summarized["out"]["claims"].claims)
        rows = {r[0]: r for r in table["data"]}
        for (claim_id, group), verdict in EXPECTED.items():
            if group == model:
                assert rows[claim_id][2] == verdict and rows[claim_id][3]  # with its reason
        assert artifacts(by_model[f"{model}/trajectory"])["claims"] == ["claims.json"]


def test_a_user_claim_that_is_not_valid_is_refused_at_composition(summarized, tmp_path):
    (tmp_path / "claims").mkdir()
    (tmp_path / "claims" / "mine.yaml").write_text(USER_CLAIMS.replace("direction: up", "direction: sideways"))
    with pytest.raises(ConfigValueError, match=r"claims.mine.claims.flat_rises.direction: 'sideways' is not valid"):
        user_config(summarized["root"], tmp_path)
    with pytest.raises(ConfigValueError, match=r"report.verdicts.combine: 'median' is not valid; valid: every, mean"):
        user_config(summarized["root"], summarized["claims_dir"], "report.verdicts.combine=median")


@pytest.mark.skipif(chromium() is None, reason="no headless browser: install Debian's `chromium` to run this check")
def test_the_claims_table_is_on_the_first_screen_in_a_browser(summarized, tmp_path):
    page = tmp_path / "report.html"
    page.write_text(render(summarized["out"]["report_data"], test_hooks=True))
    dom = run_browser(page, tmp_path, "--virtual-time-budget=20000", "--window-size=1280,800", "--dump-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    attributes = dict(re.findall(r'data-([a-z]+)="([^"]*)"', re.search(r"<body([^>]*)>", dom.stdout).group(1)))
    assert attributes.get("checked") == "yes" and json.loads(attributes["errors"].replace("&quot;", '"')) == []
    # the first verdict row ends inside the window (800 px high, less the browser's own bars in headless mode)
    assert 0 < int(attributes["claimsrow"]) < int(attributes["viewport"]) <= 800, attributes
    assert dom.stdout.index('<table class="claims">') < dom.stdout.index('id="onsets"')


def test_the_readme_user_claim_composes_alone_or_with_the_papers(tmp_path):
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    (block,) = re.findall(r"```yaml\n# /home/me/my_claims/claims/mine.yaml\n(.*?)```", readme, re.S)
    (tmp_path / "claims").mkdir()
    (tmp_path / "claims" / "mine.yaml").write_text(block)
    search = f"hydra.searchpath=[file://{tmp_path}]"
    alone = configured_claims(compose_config([search, "claims=[mine]"]))
    assert [(c.id, c.tests[0].kind) for c in alone] == [
        ("mine/induction_before_copying", "onset_order"),
        ("mine/copying_stays_high", "level"),
    ]
    level = alone[1].tests[0]
    assert (level.metric, level.above, level.last, level.combine) == ("icl/icl_repeat_rate", 0.5, 3, "mean")
    added = {c.id.split("/")[0] for c in configured_claims(compose_config([search, "+claims=mine"]))}
    assert added == {"mahaut_franzon", "luick", "yona", "mine"}
    assert configured_claims(compose_config([search, "claims=[]"])) == []

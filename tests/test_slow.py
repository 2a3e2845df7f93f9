"""Slow end-to-end runs (`make test-full`): the whole default sweep (its phenomena and the claims' verdicts README.md
reports, and none of the induction claims supported on its steps 0-512), and the submitit launcher path."""

from __future__ import annotations

import json
import re
import shutil

import pandas as pd
import pytest

from ckptstudy.config import compose_config
from ckptstudy.report.summary import summarize
from conftest import REPO, run_cli
from test_sweep import suite_path_override

pytestmark = pytest.mark.slow

README = (REPO / "README.md").read_text()
README_VERDICTS = {  # the micro study's verdicts as README.md's claims table reports them
    "mahaut_franzon/natural_first": "supported",
    "mahaut_franzon/icl_heads_specialize": "supported",
    "mahaut_franzon/natural_no_circuit": "undetermined",
    "mahaut_franzon/low_info": "contradicted",
    "mahaut_franzon/cycle_entropy": "supported",
    "mahaut_franzon/icl_late": "supported",
    "luick/linear_regime": "supported",
    "luick/induction_emerges": "supported",
    "luick/intermediate_layer": "undetermined",
    "yona/sink_forms": "contradicted",
    "yona/repetition_converges": "contradicted",
    "yona/patch_undoes": "undetermined",
}
INDUCTION_CLAIMS = (  # claims about the induction heads or the ICL repetition they carry
    "mahaut_franzon/natural_first",
    "mahaut_franzon/icl_heads_specialize",
    "mahaut_franzon/icl_late",
    "luick/induction_emerges",
    "luick/intermediate_layer",
)


@pytest.fixture(scope="module")
def default_sweep(micro_suite, tmp_path_factory):
    """The default multirun over every micro checkpoint (the study `make run` makes): its results root."""
    root = tmp_path_factory.mktemp("default_sweep")
    proc = run_cli(["--multirun", suite_path_override(micro_suite)], root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return root


def test_default_sweep_over_every_micro_checkpoint_shows_the_phenomena(micro_suite, default_sweep):
    tmp_path = default_sweep
    table = pd.read_csv(tmp_path / "default" / "trajectories.csv").set_index("step")
    steps = json.loads((micro_suite / "suite.json").read_text())["steps"]
    assert table.index.tolist() == steps and (table["status"] == "ok").all()
    first, last = steps[0], steps[-1]
    induction = table["icl/induction_max"]
    assert induction[last] > 0.3 and induction[last] > 3 * induction[first]
    assert table.loc[last, "icl/repeat_nll_gain"] > 1.0  # second copy far easier than the first
    assert table["rep/natural_rate"].max() > 0.5  # greedy generation loops on many prompts
    onsets = json.loads((tmp_path / "default" / "onsets.json").read_text())["onsets"]
    # the paper's ordering, as a number: natural repetition appears before the induction heads
    assert onsets["rep/natural_rate@micro"]["step"] < onsets["icl/induction_max@micro"]["step"]


def verdicts_of(path) -> dict[str, str]:
    """{claim id: verdict} of the micro model from a claims.json."""
    return {entry["id"]: entry["verdicts"]["micro"]["verdict"] for entry in json.loads(path.read_text())["claims"]}


def test_the_full_micro_study_gives_the_verdicts_the_readme_reports(default_sweep):
    found = verdicts_of(default_sweep / "default" / "claims.json")
    assert found == README_VERDICTS
    table = dict(re.findall(r"^\| `([a-z_]+/[a-z_]+)`[^|]*\| (supported|contradicted|undetermined) \|", README, re.M))
    assert table == README_VERDICTS


def test_before_the_induction_heads_form_no_induction_claim_is_supported(default_sweep, tmp_path):
    """The same records restricted to steps 0-512 (the induction heads form after step 512 on micro)."""
    source = default_sweep / "default" / "records" / "micro"
    target = tmp_path / "early" / "records" / "micro"
    target.mkdir(parents=True)
    for path in source.glob("step*"):
        if int(path.stem[4:]) <= 512:
            shutil.copy2(path, target / path.name)
    summarize(compose_config([f"paths.root={tmp_path}", "study=early", "logger=none"]))
    found = verdicts_of(tmp_path / "early" / "claims.json")
    for claim_id in INDUCTION_CLAIMS:
        assert found[claim_id] in ("undetermined", "contradicted"), (claim_id, found[claim_id])


def test_submitit_local_launcher_runs_the_same_jobs(micro_suite, tmp_path):
    proc = run_cli(
        [
            "--multirun",
            suite_path_override(micro_suite),
            "step=0,1600",
            "hydra/launcher=submitit_local",
            "metrics=[icl_heads]",
            "metrics.icl_heads.mode=off",
            "logger=none",
        ],
        tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = pd.read_csv(tmp_path / "default" / "trajectories.csv")
    assert table["step"].tolist() == [0, 1600] and (table["status"] == "ok").all()

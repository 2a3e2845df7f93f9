"""Fault 2: a sweep under the parallel launcher (joblib, 2 workers) killed while one job computes and
another writes its record: the same guarantees as a single killed job, and writers of one study are
serialised by its file lock."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import fault_helpers
import pandas as pd
from fault_helpers import HERE, REPO, overrides, read, record_file, temp_files

from ckptstudy import results
from ckptstudy.record import Identity, Outcome, Provenance, Record
from wandb_files import run_config

out_root = fault_helpers.out_root  # fixtures

STEPS = [1, 2, 4, 8]


def _ours(pid: int, markers: Path) -> bool:
    """Whether `pid` is one of this test's processes (its environment names this test's markers dir)."""
    try:
        return str(markers).encode() in Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return False


def _kill_sweep(proc: subprocess.Popen, markers: Path) -> None:
    """SIGKILL the sweep: its process group, then any process of ours that left it (by id)."""
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    for marker in markers.glob("pid-*"):
        pid = int(marker.name[4:])
        if _ours(pid, markers):
            os.kill(pid, signal.SIGKILL)
    deadline = time.time() + 30
    while any(_ours(int(m.name[4:]), markers) for m in markers.glob("pid-*")) and time.time() < deadline:
        time.sleep(0.2)


def test_killed_parallel_sweep_loses_nothing_and_resumes(micro_suite, out_root, tmp_path):
    markers = tmp_path / "markers"
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text("import inject\n\ninject.install_from_env()\n")
    faults = {"dir": str(markers), "compute": {"4": "block"}, "write": {"step8": "block"}}
    args = [
        "-m",
        *overrides(out_root, micro_suite, "logger.heatmaps=false", logger="wandb"),
        f"step={','.join(map(str, STEPS))}",
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=2",
    ]
    env = {
        **os.environ,
        "WANDB_SILENT": "true",
        "PYTHONPATH": os.pathsep.join(p for p in [str(site), str(HERE), os.environ.get("PYTHONPATH", "")] if p),
        "CKPTSTUDY_FAULTS": json.dumps(faults),
    }
    log = (tmp_path / "sweep.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "ckptstudy", *args], cwd=REPO, env=env, stdout=log, stderr=log, start_new_session=True
    )
    try:
        deadline = time.time() + 400
        while not ((markers / "computing-4").exists() and (markers / "writing-step8").exists()):
            assert proc.poll() is None, (tmp_path / "sweep.log").read_text()[-4000:]
            assert time.time() < deadline, (tmp_path / "sweep.log").read_text()[-4000:]
            time.sleep(0.5)
    finally:  # step 4 is computing, step 8 has written its record's temporary file: kill everything
        _kill_sweep(proc, markers)

    # the two workers were busy with 4 and 8, so 1 and 2 had finished: complete records and W&B runs
    assert [(r.step, r.outcome.status) for r in results.load_records(out_root, "smoke")] == [(1, "ok"), (2, "ok")]
    assert not record_file(out_root, 4).exists() and not record_file(out_root, 8).exists()
    assert [p.name.split(".")[1] for p in temp_files(out_root / "smoke" / "records")] == ["step8"]
    assert not (out_root / "smoke" / results.TABLE_NAME).exists()  # the summary never ran: no table at all
    for step in (1, 2):
        assert run_config(read(out_root, step).provenance.wandb_run_dir)["name"] == f"micro@step{step}"
    mtimes = {s: record_file(out_root, s).stat().st_mtime_ns for s in (1, 2)}

    clean_env = {**os.environ, "WANDB_SILENT": "true"}
    again = subprocess.run(
        [sys.executable, "-m", "ckptstudy", *[a if a != "logger=wandb" else "logger=none" for a in args]],
        cwd=REPO,
        env=clean_env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert again.stdout.count("skipped (record exists)") == 2  # only the killed jobs ran again
    assert {s: record_file(out_root, s).stat().st_mtime_ns for s in (1, 2)} == mtimes
    assert all(read(out_root, s).outcome.status == "ok" for s in STEPS)
    assert temp_files(out_root / "smoke" / "records") == []
    table = pd.read_csv(out_root / "smoke" / results.TABLE_NAME)
    assert table["step"].tolist() == STEPS and set(table["status"]) == {"ok"}


def _finish_in_thread(cfg, step: int, sha: str, out: dict) -> threading.Thread:
    from ckptstudy.job import finish
    from ckptstudy.metrics import FamilyResult

    record = Record(Identity("micro", step, "smoke"), Outcome(status="ok"), provenance=Provenance(weights_sha256=sha))

    def target():
        out[step] = finish(cfg, record, FamilyResult(), time.time())

    return threading.Thread(target=target)


def test_parallel_jobs_with_identical_weights_see_each_other(tmp_path, monkeypatch):
    """Two jobs that finish at the same time with identical weights: the identical-weights check and the
    record write hold the study lock, so the second job sees the first one's record."""
    from ckptstudy.config import compose_config

    real_load = results.load_records

    def slow_load(root, study):  # widen the window between reading the records and writing one
        found = real_load(root, study)
        time.sleep(1.0)
        return found

    monkeypatch.setattr(results, "load_records", slow_load)
    root = tmp_path / "out"
    cfgs = {s: compose_config([f"paths.root={root}", "experiment=smoke", "logger=none", f"step={s}"]) for s in (1, 2)}
    out: dict = {}
    threads = [_finish_in_thread(cfgs[s], s, "ab" * 32, out) for s in (1, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    flagged = sorted(
        (s, r.provenance.identical_weights_as) for s, r in out.items() if r.provenance.identical_weights_as
    )
    assert len(flagged) == 1 and flagged[0][1] == [3 - flagged[0][0]], out
    assert read(root, flagged[0][0]).provenance.identical_weights_as == [3 - flagged[0][0]]


def test_table_writer_waits_for_the_study_lock(tmp_path):
    root = tmp_path / "out"
    results.write_record(results.record_path(root, "smoke", "micro", 1), Record(Identity("micro", 1), Outcome("ok")))
    done = threading.Event()
    writer = threading.Thread(target=lambda: (results.write_table(root, "smoke"), done.set()))
    with results.study_lock(root, "smoke"):  # another writer of the study holds the lock
        writer.start()
        assert not done.wait(1.0)  # the table writer waits
        assert not (root / "smoke" / results.TABLE_NAME).exists()
    assert done.wait(30)
    writer.join()
    assert pd.read_csv(root / "smoke" / results.TABLE_NAME)["step"].tolist() == [1]

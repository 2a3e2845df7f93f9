"""Fault 1: a job killed (SIGKILL, or the kernel's SIGXFSZ mid-write) while computing or writing its
record leaves no partial record; the re-run recomputes only the killed jobs; W&B runs of finished jobs
stay intact; end-of-sweep files are never half-written."""

from __future__ import annotations

import json
import signal

import fault_helpers
import pandas as pd
from fault_helpers import overrides, read, record_file, run, run_child, temp_files

from ckptstudy import results
from ckptstudy.record import Identity, Outcome, Record, Scalars
from wandb_files import history, run_config

out_root = fault_helpers.out_root  # fixtures

CHILD = r"""
import json, sys
args = json.loads(sys.argv[1])
from ckptstudy.config import compose_config
from ckptstudy.job import run_job
import inject
for job in args["jobs"]:
    if job.get("faults"):
        inject.install(job["faults"])
    record = run_job(compose_config(job["overrides"]))
    print("DONE", record.step, record.outcome.status, flush=True)
"""


def test_killed_jobs_leave_no_partial_record_and_only_they_rerun(micro_suite, out_root, tmp_path):
    markers = str(tmp_path / "markers")
    quiet = ["logger.heatmaps=false"]

    def job(step, logger="none", faults=None, *extra):
        return {"overrides": overrides(out_root, micro_suite, f"step={step}", *extra, logger=logger), "faults": faults}

    # 1. steps 16 and 8 finish (with offline W&B runs), then step 2 is killed while computing
    first = run_child(
        CHILD,
        {
            "jobs": [
                {**job(16, "wandb"), "overrides": job(16, "wandb")["overrides"] + quiet},
                {**job(8, "wandb"), "overrides": job(8, "wandb")["overrides"] + quiet},
                job(2, faults={"dir": markers, "compute": {"2": "kill"}}),
            ]
        },
    )
    assert first.returncode == -signal.SIGKILL, first.stdout[-2000:] + first.stderr[-3000:]
    assert "DONE 16 ok" in first.stdout and "DONE 8 ok" in first.stdout
    # 2. step 4 is killed by the kernel in the middle of writing its record's bytes
    second = run_child(CHILD, {"jobs": [job(4, faults={"dir": markers, "write": {"step4": "truncate"}})]})
    assert second.returncode == -signal.SIGXFSZ, second.stderr[-3000:]
    records_dir = record_file(out_root, 2).parent
    (half,) = temp_files(records_dir)  # the half-written record, under a temporary name only
    assert half.name.startswith(".step4.json.") and half.stat().st_size > 0
    # 3. step 8 is recomputed (force) with arrays that differ from the first run's, and killed after
    #    writing them, before renaming its record: the old record must not be served with the new arrays
    faults = {"dir": markers, "write": {"step8": "kill"}, "salt": True}
    third = run_child(CHILD, {"jobs": [job(8, "none", faults, "force=true")]})
    assert third.returncode == -signal.SIGKILL, third.stderr[-3000:]

    # no partial record is visible: killed jobs have none, the killed re-computation left the old one whole
    assert not record_file(out_root, 2).exists() and not record_file(out_root, 4).exists()
    assert [(r.step, r.outcome.status) for r in results.load_records(out_root, "smoke")] == [(8, "ok"), (16, "ok")]
    for step in (8, 16):
        json.loads(record_file(out_root, step).read_text())  # complete JSON
    # the unrenamed step8 record; step4's was removed by the next job in that directory (its writer is dead)
    assert [p.name.split(".")[1] for p in temp_files(records_dir)] == ["step8"]
    # W&B runs of the finished jobs are intact after the kills
    for step in (8, 16):
        run_dir = read(out_root, step).provenance.wandb_run_dir
        assert run_config(run_dir)["name"] == f"micro@step{step}"
        assert [row["train/step"] for row in history(run_dir) if "train/step" in row] == [step]

    before = {s: record_file(out_root, s).stat().st_mtime_ns for s in (16,)}
    rerun = {s: run(overrides(out_root, micro_suite, f"step={s}")) for s in (2, 4, 8, 16)}
    assert rerun[16].outcome.skipped and record_file(out_root, 16).stat().st_mtime_ns == before[16]
    recomputed = sorted(s for s, r in rerun.items() if not r.outcome.skipped)
    assert recomputed == [2, 4, 8]  # only the killed jobs
    assert all(r.outcome.status == "ok" for r in rerun.values())
    assert "arrays file step8.npz was rewritten" in rerun[8].outcome.recomputed_because
    assert temp_files(records_dir) == []  # the dead writers' temporary files are cleaned up
    assert [r.step for r in results.load_records(out_root, "smoke")] == [2, 4, 8, 16]


def _fake_record(root, step: int) -> None:
    path = results.record_path(root, "smoke", "micro", step)
    record = Record(Identity("micro", step), Outcome(status="ok"), Scalars(metrics={"x/y": step / 10}))
    results.write_record(path, record)


TABLE_CHILD = r"""
import json, sys
args = json.loads(sys.argv[1])
import inject
inject.install(args["faults"])
from ckptstudy import results
results.write_table(args["root"], "smoke")
print("WROTE", flush=True)
"""


def test_end_of_sweep_table_is_never_half_written(tmp_path):
    root = tmp_path / "out"
    for step in (1, 2):
        _fake_record(root, step)
    table_path, _ = results.write_table(root, "smoke")
    old = table_path.read_bytes()
    for step in range(3, 400):  # a table far larger than one write
        _fake_record(root, step)
    for action, signum in (("truncate", signal.SIGXFSZ), ("kill", signal.SIGKILL)):
        faults = {"dir": str(tmp_path / "markers"), "write": {"trajectories.csv": action}}
        proc = run_child(TABLE_CHILD, {"root": str(root), "faults": faults})
        assert proc.returncode == -signum, (action, proc.stdout, proc.stderr[-2000:])
        assert table_path.read_bytes() == old  # the old table, whole
        assert pd.read_csv(table_path)["step"].tolist() == [1, 2]
    assert temp_files(root / "smoke")  # the killed writers' temporary files, never read as results
    assert results.remove_stale_temps(root / "smoke") and temp_files(root / "smoke") == []
    _, table = results.write_table(root, "smoke")
    assert len(table) == 399 and pd.read_csv(table_path)["step"].tolist() == list(range(1, 400))

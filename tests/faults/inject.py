"""Fault injection for the kill tests, installed only in child processes (never in the pytest process).

`install(spec)` patches ckptstudy so that a job dies (or blocks, so the test can kill it) at a chosen
point; `install_from_env()` reads the spec from $CKPTSTUDY_FAULTS (JSON), for the processes a launcher
starts (a `sitecustomize.py` on PYTHONPATH calls it). Spec keys:

  dir:     directory for marker files (`pid-<pid>`, `computing-<step>`, `writing-<target>`)
  compute: {step: action}: when that step's job has loaded its checkpoint and starts measuring
  write:   {target: action}: when a file is written; target = `step<N>` for a record (.json), else the
           file name (e.g. `trajectories.csv`)
  salt:    true: every job adds a random raw array to its results (a re-computation whose arrays differ
           from the previous run's, as after a code change or with non-deterministic kernels)

Actions: "kill" (SIGKILL itself), "block" (write the marker, then sleep until the test kills it),
"truncate" (lower RLIMIT_FSIZE to half the file, so the kernel kills the writer with SIGXFSZ in the
middle of writing its bytes). "kill" and "block" on a write act at the rename of the written temporary
file (a writer that does not rename is not stopped at all, and the test sees it finish).
"""

from __future__ import annotations

import json
import os
import pathlib
import resource
import signal
import time

ENV = "CKPTSTUDY_FAULTS"


def _act(action: str, marker: pathlib.Path) -> None:
    marker.write_text(str(os.getpid()))
    if action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    while action == "block":
        time.sleep(0.5)


def _target(path) -> str:
    """`step<N>` for a record file, else the file's name."""
    path = pathlib.Path(path)
    if path.suffix == ".json" and path.parent.parent.name == "records":
        return path.stem
    return path.name


def install(spec: dict) -> None:
    from ckptstudy import results

    markers = pathlib.Path(spec["dir"])
    markers.mkdir(parents=True, exist_ok=True)
    (markers / f"pid-{os.getpid()}").write_text("")
    write = dict(spec.get("write") or {})

    real_atomic_write = results.atomic_write_bytes
    real_replace = pathlib.Path.replace

    def atomic_write_bytes(path, data):
        target = _target(path)
        if write.get(target) == "truncate":
            write.pop(target)
            (markers / f"writing-{target}").write_text(str(os.getpid()))
            signal.signal(signal.SIGXFSZ, signal.SIG_DFL)
            resource.setrlimit(resource.RLIMIT_FSIZE, (len(data) // 2, resource.RLIM_INFINITY))
        return real_atomic_write(path, data)

    def replace(self, target):
        name = _target(target)
        if write.get(name) in ("kill", "block"):
            _act(write.pop(name), markers / f"writing-{name}")
        return real_replace(self, target)

    results.atomic_write_bytes = atomic_write_bytes
    pathlib.Path.replace = replace
    if spec.get("compute") or spec.get("salt"):
        _install_compute(markers, {int(k): v for k, v in (spec.get("compute") or {}).items()}, spec.get("salt"))


def _install_compute(markers: pathlib.Path, compute: dict[int, str], salt: bool) -> None:
    import numpy as np

    from ckptstudy import job

    current: dict = {}
    real_measure_checkpoint = job.measure_checkpoint
    real_measure_families = job.measure_families

    def measure_checkpoint(cfg, source, record):
        current["step"] = source.step
        return real_measure_checkpoint(cfg, source, record)

    def measure_families(ctx, metrics_cfg, *args, **kwargs):
        step = current.get("step")
        if step in compute:
            _act(compute[step], markers / f"computing-{step}")
        measured, errors = real_measure_families(ctx, metrics_cfg, *args, **kwargs)
        if salt:
            measured.raw["test/salt"] = np.random.default_rng().random(4)
        return measured, errors

    job.measure_checkpoint = measure_checkpoint
    job.measure_families = measure_families


def install_from_env() -> None:
    spec = os.environ.get(ENV)
    if spec:
        install(json.loads(spec))

"""`checkpoints.evict` and `checkpoints.prefetch_ahead` in a fake HF cache (huggingface_hub's layout: blobs
shared between revisions, snapshots of symlinks, refs). Downloads are `fake_hub.fake_download` (copies from a
"remote" directory): huggingface_hub's own download cannot run offline."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import pytest
from huggingface_hub import scan_cache_dir

import fake_hub
from ckptstudy import results
from ckptstudy.model import hubcache
from ckptstudy.model.hubcache import JobDisk, Revision
from conftest import run_cli
from fake_hub import REPO_ID, commit_of, put_revision, repo_folder

MODEL = ["model=pythia-14m", f"model.repo={REPO_ID}"]


def item(step: int) -> Revision:
    return Revision("pythia-14m", step, REPO_ID, f"step{step}")


@pytest.fixture
def remote(tmp_path_factory, tiny_tokenizer) -> Path:
    """Five revisions of tiny models (equal tokenizer and config files: shared blobs in a cache)."""
    return fake_hub.make_remote(
        tmp_path_factory.mktemp("remote"), tiny_tokenizer, {f"step{s}": s for s in (1000, 2000, 3000, 4000, 5000)}
    )


@pytest.fixture
def cache(tmp_path, monkeypatch, remote) -> Path:
    """An HF cache (online, so downloads are attempted) whose downloads copy from `remote`."""
    import huggingface_hub.constants as hub_constants

    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(hubcache, "download", fake_hub.fake_download(remote, tmp_path / "downloads.jsonl"))
    return cache


def healthy(cache: Path) -> dict[str, set[str]]:
    """{commit: refs} of the fake repo after a full scan that finds nothing broken (no dangling symlink)."""
    info = scan_cache_dir(cache)
    assert info.warnings == []
    return {rev.commit_hash: set(rev.refs) for repo in info.repos for rev in repo.revisions}


def test_evict_deletes_what_the_sweep_downloaded_and_keeps_the_users_revision(cache, remote, tmp_path):
    put_revision(cache, remote, "step1000")  # the user's, cached before the sweep; its blobs are shared
    user_blobs = {p.resolve() for p in (repo_folder(cache) / "snapshots" / commit_of("step1000")).iterdir()}
    for step in (1000, 2000):
        disk = JobDisk(item(step), evict=True)
        disk.fetch()
        assert hubcache.cache_state(REPO_ID, f"step{step}").complete
        disk.finish(written=True)
    assert healthy(cache) == {commit_of("step1000"): {"step1000"}}  # step2000 gone, ref and snapshot
    assert all(blob.exists() for blob in user_blobs)  # blobs step2000 shared with the user's revision stay
    assert [e["revision"] for e in fake_hub.read_log(tmp_path / "downloads.jsonl")] == ["step2000"]
    assert hubcache.ledger_entries(cache) == {}
    # blobs only step2000 used are gone: the cache holds exactly the user's blobs
    assert {p.resolve() for p in (repo_folder(cache) / "blobs").iterdir()} == user_blobs


def test_no_eviction_without_the_option_or_before_the_record_is_written(cache):
    for evict, written in ((True, False), (False, True)):
        disk = JobDisk(item(2000), evict=evict)
        disk.fetch()
        disk.finish(written=written)
        assert hubcache.cache_state(REPO_ID, "step2000").complete
    # the revision entered the ledger (eviction on), so a later job with its record written evicts it
    assert list(hubcache.ledger_entries(cache)) == [f"{REPO_ID}@step2000"]
    JobDisk(item(2000), evict=True).finish(written=True)
    assert healthy(cache) == {}


def test_a_snapshot_another_ref_points_to_is_kept(cache, remote, monkeypatch):
    # the user has `main`; the sweep's step5000 resolves to the same commit (as Pythia's main = step143000)
    put_revision(cache, remote, "step5000", commit=commit_of("main"))
    (repo_folder(cache) / "refs" / "step5000").unlink()
    (repo_folder(cache) / "refs" / "main").write_text(commit_of("main"))
    disk = JobDisk(item(5000), evict=True)
    monkeypatch.setattr(hubcache, "download", _put_as(remote, "step5000", commit_of("main")))
    disk.fetch()
    disk.finish(written=True)
    assert healthy(cache) == {commit_of("main"): {"main", "step5000"}}
    assert hubcache.ledger_entries(cache) == {}


def _put_as(remote: Path, revision: str, commit: str):
    import huggingface_hub.constants as hub_constants

    def download(it):
        put_revision(Path(hub_constants.HF_HUB_CACHE), remote, revision, commit=commit)

    return download


def test_local_checkpoints_and_disabled_options_are_inactive(tmp_path):
    from ckptstudy.config import compose_config
    from ckptstudy.model.checkpoints import source_for

    cfg = compose_config([f"paths.root={tmp_path}", "checkpoints.evict=true", "checkpoints.prefetch_ahead=2"])
    local = hubcache.job_disk(cfg, source_for(cfg.model, 0))  # the micro suite: a local directory
    assert local.item is None and local.ahead == []
    off = compose_config(["model=pythia-70m"])
    assert hubcache.job_disk(off, source_for(off.model, 1000)).item is None
    on = compose_config(["model=pythia-70m", "checkpoints.evict=true"])
    assert hubcache.job_disk(on, source_for(on.model, 1000)).item == Revision(
        "pythia-70m", 1000, "EleutherAI/pythia-70m", "step1000"
    )


def test_bad_prefetch_ahead_is_refused_naming_the_key(tmp_path):
    from ckptstudy.config import ConfigValueError, compose_config
    from ckptstudy.job import run_job

    overrides = [f"paths.root={tmp_path}", "logger=none", "checkpoints.prefetch_ahead=-1"]
    with pytest.raises(ConfigValueError, match=r"checkpoints.prefetch_ahead=-1 .*>= 0"):
        compose_config(overrides)  # at composition
    record = run_job(compose_config(overrides, check=False))  # a job handed the value anyway refuses it too
    assert record.outcome.status == "failed" and record.provenance.weights_sha256 is None
    assert (
        "checkpoints.prefetch_ahead=-1" in record.outcome.error["message"] and ">= 0" in record.outcome.error["message"]
    )


def test_eviction_waits_for_a_download_in_progress(cache, remote):
    """A blob a download is about to link must not be deleted: eviction takes the cache lock exclusively,
    downloads share it."""
    JobDisk(item(2000), evict=True).fetch()
    finished = threading.Event()
    with hubcache.cache_lock(cache, shared=True):  # another job downloading
        worker = threading.Thread(target=lambda: (JobDisk(item(2000), evict=True).finish(True), finished.set()))
        worker.start()
        assert not finished.wait(1.0)
        assert hubcache.cache_state(REPO_ID, "step2000").complete
    assert finished.wait(30)
    worker.join()
    assert healthy(cache) == {}


def test_sweep_jobs_follow_hydras_order_and_parallel_slots_prefetch_disjoint_jobs():
    jobs = hubcache.sweep_jobs({"step": "5,6,7"}, ["step=1,2,3,4", "model=a,b"])
    # the command line's step list replaces the schedule's, in the schedule's position; last key fastest
    assert jobs[:3] == [["step=1", "model=a"], ["step=1", "model=b"], ["step=2", "model=a"]] and len(jobs) == 8
    assert hubcache.prefetch_positions(jobs, 0, 2, 2) == ["2", "3"]  # same model, the jobs its slot runs next
    one_model = hubcache.sweep_jobs({"step": "1,2,3,4,5,6"}, ["model=a"])
    fetched = [hubcache.prefetch_positions(one_model, n, 2, 1) for n in range(6)]
    assert fetched == [["3"], ["4"], ["5"], ["6"], [], []]  # each job prefetched once, by one slot
    models_outer = hubcache.sweep_jobs({}, ["model=a,b", "step=1,2"])
    assert hubcache.prefetch_positions(models_outer, 1, 1, 1) == []  # the next job is another model's


@pytest.mark.parametrize(
    ("launcher", "expected"),
    [({}, 1), ({"n_jobs": 3}, 3), ({"n_jobs": -1}, os.cpu_count()), ({"array_parallelism": 32}, 32)],
)
def test_launcher_parallelism(launcher, expected):
    assert hubcache.launcher_parallelism(launcher) == expected


def _sweep_env(tmp_path: Path, cache: Path, remote: Path, **spec) -> dict:
    site = tmp_path / "site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text("import fake_hub\n\nfake_hub.install_from_env()\n")
    spec = {"remote": str(remote), "log": str(tmp_path / "downloads.jsonl"), **spec}
    tests = Path(__file__).parent
    return {
        "HF_HUB_CACHE": str(cache),
        "HF_HUB_OFFLINE": "0",  # downloads are attempted (and faked): nothing reaches a network
        "HF_DATASETS_OFFLINE": "1",
        "PYTHONPATH": os.pathsep.join([str(site), str(tests), os.environ.get("PYTHONPATH", "")]),
        fake_hub.ENV: json.dumps(spec),
    }


def _records(root: Path, steps) -> dict:
    return {s: results.read_record(root / "default/records/pythia-14m" / f"step{s}.json") for s in steps}


def test_sweep_prefetches_the_next_revision_and_evicts_each_after_its_record(tmp_path, remote):
    cache = tmp_path / "hub"
    put_revision(cache, remote, "step4000")  # the user's: measured, never evicted
    steps = [1000, 2000, 3000, 4000, 5000]
    env = _sweep_env(tmp_path, cache, remote, fail_in_prefetch=["step3000"])
    args = ["-m", *MODEL, "step=" + ",".join(map(str, steps)), "checkpoints.evict=true"]
    args += ["checkpoints.prefetch_ahead=1", "logger=none", "experiment=smoke", "metrics=[repetition]", "study=default"]
    proc = run_cli(args, tmp_path / "out", env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert all(r.outcome.status == "ok" for r in _records(tmp_path / "out", steps).values())
    log = fake_hub.read_log(tmp_path / "downloads.jsonl")
    calls = [(e["revision"], e["thread"], e["ok"]) for e in log]
    assert calls == [
        ("step1000", "MainThread", True),  # the first job fetches its own revision ...
        ("step2000", "ckptstudy-prefetch", True),  # ... and the next one while it is measured
        ("step3000", "ckptstudy-prefetch", False),  # a failed prefetch fails nothing:
        ("step3000", "MainThread", True),  # its job downloads it itself
        ("step5000", "ckptstudy-prefetch", True),  # step4000 was cached: not downloaded
    ]
    sweep = {commit_of(f"step{s}") for s in (1000, 2000, 3000, 5000)}
    assert max(len(sweep & set(e["cached"])) for e in log) <= 2  # 1 + prefetch_ahead revisions at once
    assert healthy(cache) == {commit_of("step4000"): {"step4000"}}  # all evicted but the user's
    assert hubcache.ledger_entries(cache) == {}


def test_parallel_jobs_share_the_cache_without_breaking_it(tmp_path, remote):
    """joblib with 2 workers, each prefetching the job its slot runs next, evicting after its record: every
    job ok, nothing left but the user's revision, no dangling blob link, at most (1 + 1) x 2 at once."""
    cache = tmp_path / "hub"
    put_revision(cache, remote, "step1000")
    steps = [1000, 2000, 3000, 4000, 5000]
    env = _sweep_env(tmp_path, cache, remote)
    args = ["-m", *MODEL, "step=" + ",".join(map(str, steps)), "checkpoints.evict=true", "checkpoints.prefetch_ahead=1"]
    args += ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "logger=none", "experiment=smoke"]
    args += ["metrics=[repetition]", "study=default"]
    proc = run_cli(args, tmp_path / "out", env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert all(r.outcome.status == "ok" for r in _records(tmp_path / "out", steps).values())
    log = fake_hub.read_log(tmp_path / "downloads.jsonl")
    assert sorted({e["revision"] for e in log}) == ["step2000", "step3000", "step4000", "step5000"]
    assert max(len(set(e["cached"]) - {commit_of("step1000")}) for e in log) <= 4
    assert healthy(cache) == {commit_of("step1000"): {"step1000"}}
    assert hubcache.ledger_entries(cache) == {}

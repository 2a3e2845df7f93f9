"""Hub checkpoints on disk: what the HF cache holds of a revision, downloading one (the function
`ckptstudy-prefetch` uses), prefetching a sweep's next revisions while a job measures, and evicting the
revisions a sweep downloaded once their record is written (`checkpoints.evict`, `checkpoints.prefetch_ahead`).

Which revisions a sweep downloaded is kept in a ledger inside the HF cache it downloaded into
(`<HF_HUB_CACHE>/.locks/ckptstudy/downloaded.json`; huggingface_hub's cache scan skips `.locks`). A revision
enters the ledger only when a sweep with eviction on is about to download it and the cache holds nothing of
it: a revision that was cached before (by the user, `hf download` or `ckptstudy-prefetch`) is never
evicted, nor a snapshot that another ref (e.g. `main`) points to, nor a local checkpoint directory.

Downloads hold a shared lock on the cache and eviction an exclusive one (`cache_lock`), so parallel jobs
never delete a blob another job is about to link: huggingface_hub's `delete_revisions` keeps the blobs a
remaining revision references, but a download that finds a blob already present links it without a lock.
"""

from __future__ import annotations

import contextlib
import datetime
import fnmatch
import itertools
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from filelock import FileLock
from huggingface_hub import HfApi, constants, scan_cache_dir, snapshot_download, try_to_load_from_cache
from huggingface_hub.hf_api import RepoFile
from huggingface_hub.utils import disable_progress_bars
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.types import RunMode
from omegaconf import OmegaConf

from ckptstudy.model.checkpoints import CheckpointSource, available_steps, hub_offline, resolve_step, source_for

try:
    import fcntl
except ImportError:  # not POSIX: one exclusive lock for downloads and eviction alike
    fcntl = None

log = logging.getLogger(__name__)

FILES_PER_REVISION = 2  # parallel files inside one revision (snapshot_download's max_workers)
CONFIG_FILES = ["config.json", "generation_config.json"]
TOKENIZER_FILES = [
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
]
SAFETENSORS = ["*.safetensors", "*.safetensors.index.json"]
PICKLED = ["*.bin", "*.bin.index.json"]
STATE_DIR = Path(".locks") / "ckptstudy"  # inside the HF cache: the ledger and the cache lock
LEDGER = "downloaded.json"


@dataclass(frozen=True)
class Revision:
    """One checkpoint to have in the cache."""

    model: str
    step: int
    repo: str
    revision: str

    @property
    def key(self) -> str:
        return f"{self.repo}@{self.revision}"


@dataclass
class CacheState:
    """What the HF cache holds of one revision: complete (loadable offline) or what is missing."""

    missing: list[str] = field(default_factory=list)
    nbytes: int = 0
    path: Path | None = None

    @property
    def complete(self) -> bool:
        return not self.missing


def allow_patterns(files) -> list[str]:
    """The patterns to fetch for a revision holding `files` (names): config, tokenizer, and the
    safetensors weights, or the pickled `*.bin` ones only when there are no safetensors."""
    has_safetensors = any(fnmatch.fnmatch(name, "*.safetensors") for name in files)
    return [*CONFIG_FILES, *TOKENIZER_FILES, *(SAFETENSORS if has_safetensors else PICKLED)]


def matching(files: dict[str, int | None], patterns: list[str]) -> dict[str, int | None]:
    return {name: size for name, size in files.items() if any(fnmatch.fnmatch(name, p) for p in patterns)}


def cache_state(repo: str, revision: str) -> CacheState:
    """Whether the HF cache holds what loading `repo@revision` needs: config.json, every weight file (all
    shards an index names) and a tokenizer. Reads the cache only (no network)."""
    found = try_to_load_from_cache(repo, "config.json", revision=revision)
    if not isinstance(found, str):
        return CacheState(["config.json", "weights", "tokenizer"])
    snapshot = Path(found).parent
    files = {p.relative_to(snapshot).as_posix(): p for p in snapshot.rglob("*") if p.is_file()}
    missing = weights_missing(snapshot, files)
    if not any(name in files for name in ("tokenizer.json", "tokenizer_config.json", "vocab.json")):
        missing.append("tokenizer")
    return CacheState(missing, sum(p.stat().st_size for p in files.values()), snapshot)


def weights_missing(snapshot: Path, files: dict[str, Path]) -> list[str]:
    for index, kind in (("model.safetensors.index.json", ".safetensors"), ("pytorch_model.bin.index.json", ".bin")):
        if index in files:
            try:
                shards = set(json.loads(files[index].read_text())["weight_map"].values())
            except (OSError, ValueError, KeyError, TypeError):
                return [f"{index} (unreadable)"]
            return sorted(s for s in shards if s not in files)
        if any(name.endswith(kind) for name in files):
            return []
    return ["weights"]


def remote_files(repo: str, revision: str) -> dict[str, int | None]:
    """{file name: size in bytes} of a hub revision (one listing call)."""
    tree = HfApi().list_repo_tree(repo, revision=revision, recursive=True)
    return {entry.path: entry.size for entry in tree if isinstance(entry, RepoFile)}


def download(item: Revision) -> dict:
    """Fetch one revision's loading files into the HF cache; returns what was fetched and how long it took."""
    started = time.time()
    files = remote_files(item.repo, item.revision)
    patterns = allow_patterns(files)
    planned = matching(files, patterns)
    snapshot_download(item.repo, revision=item.revision, allow_patterns=patterns, max_workers=FILES_PER_REVISION)
    state = cache_state(item.repo, item.revision)
    return {
        "files": sorted(planned),
        "nbytes": sum(size or 0 for size in planned.values()),
        "seconds": time.time() - started,
        "state": state,
    }


# ---------------------------------------------------------------- the ledger and the cache lock


def cache_dir() -> Path:
    return Path(constants.HF_HUB_CACHE)


def repo_folder(cache: Path, repo: str) -> Path:
    return cache / f"models--{repo.replace('/', '--')}"


@contextlib.contextmanager
def cache_lock(cache: Path, shared: bool) -> Iterator[None]:
    """The sweep's lock on an HF cache: shared while downloading into it, exclusive while evicting from it.

    `flock` locks belong to an open file, so two threads of one process also exclude each other.
    """
    path = cache / STATE_DIR / "cache.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    if fcntl is None:
        with FileLock(str(path) + ".exclusive"):
            yield
        return
    with open(path, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextlib.contextmanager
def _ledger(cache: Path) -> Iterator[dict]:
    """The ledger {repo@revision: entry} under its own lock; changes are written back on exit."""
    path = cache / STATE_DIR / LEDGER
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock"):
        try:
            entries = json.loads(path.read_text())
        except (OSError, ValueError):
            entries = {}
        before = json.dumps(entries, sort_keys=True)
        yield entries
        if json.dumps(entries, sort_keys=True) != before:
            tmp = path.with_name(f".{LEDGER}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps(entries, indent=1, sort_keys=True))
            tmp.replace(path)


def ledger_entries(cache: Path | None = None) -> dict:
    """The revisions a sweep downloaded and has not evicted yet (for reports and tests)."""
    with _ledger(cache or cache_dir()) as entries:
        return dict(entries)


def _snapshots(cache: Path, repo: str) -> list[str]:
    folder = repo_folder(cache, repo) / "snapshots"
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def claim(item: Revision, cache: Path, study: str = "") -> bool:
    """Enter `item` in the ledger before downloading it, unless the cache already holds any of it (a ref for
    this revision: cached or partly cached before, the user's). True when the revision is the sweep's."""
    with _ledger(cache) as entries:
        if item.key in entries:
            return True
        if (repo_folder(cache, item.repo) / "refs" / item.revision).exists():
            return False
        entries[item.key] = {
            "preexisting": _snapshots(cache, item.repo),  # snapshots another ref may point to: never ours
            "by": f"{socket.gethostname()}:{os.getpid()}",
            "study": study,
            "at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        }
        return True


@dataclass
class Eviction:
    """What `evict` did with one revision: deleted (bytes freed) or kept, and why."""

    item: Revision
    deleted: bool
    freed: int = 0
    reason: str = ""


def evict(item: Revision, cache: Path | None = None) -> Eviction | None:
    """Delete `item` from the HF cache if the ledger says a sweep downloaded it (None when it did not):
    its snapshot, its ref and the blobs no other cached revision uses (huggingface_hub's `delete_revisions`).

    Kept (and forgotten by the ledger): a snapshot that was in the cache before the download (another ref
    pointed at the same commit) or that another ref still points to.
    """
    cache = cache or cache_dir()
    with cache_lock(cache, shared=False), _ledger(cache) as entries:
        entry = entries.pop(item.key, None)
        if entry is None:
            return None
        info = scan_cache_dir(cache)
        revisions = [
            rev
            for repo in info.repos
            if repo.repo_id == item.repo and repo.repo_type == "model"
            for rev in repo.revisions
            if item.revision in rev.refs
        ]
        if not revisions:
            if (repo_folder(cache, item.repo) / "refs" / item.revision).exists():  # unreadable: try again later
                entries[item.key] = entry
                why = "; ".join(str(w) for w in info.warnings) or "not found by the cache scan"
                return Eviction(item, False, reason=f"the cache scan cannot read it ({why})")
            return Eviction(item, False, reason="not in the cache any more")
        revision = revisions[0]
        if revision.commit_hash in entry.get("preexisting", []):
            return Eviction(item, False, reason=f"its snapshot {revision.commit_hash[:12]} was cached before")
        others = sorted(revision.refs - {item.revision})
        if others:
            return Eviction(item, False, reason=f"other refs point to its snapshot: {', '.join(others)}")
        strategy = info.delete_revisions(revision.commit_hash)
        strategy.execute()
        return Eviction(item, True, strategy.expected_freed_size)


# ---------------------------------------------------------------- which revisions come next in the sweep


def launcher_parallelism(launcher) -> int:
    """Jobs a Hydra launcher runs at once: joblib's `n_jobs` (-1 = every CPU, as joblib counts), submitit's
    `array_parallelism`, else 1 (the basic launcher runs jobs one after another)."""
    launcher = launcher or {}
    n_jobs = launcher.get("n_jobs")
    if n_jobs is not None:
        n_jobs = int(n_jobs)
        return max(1, n_jobs if n_jobs > 0 else (os.cpu_count() or 1) + 1 + n_jobs)
    if launcher.get("array_parallelism") is not None:
        return max(1, int(launcher["array_parallelism"]))
    return 1


def sweep_jobs(sweeper_params: dict, task_overrides: list[str]) -> list[list[str]]:
    """The overrides of every job of a multirun, in launch order, as Hydra's basic sweeper builds them: the
    sweeper's params (the schedule) then the command line, a key given twice keeping its first position and
    its last value, the cartesian product with the last key varying fastest."""
    arguments = [f"{key}={value}" for key, value in sweeper_params.items()] + list(task_overrides)
    values: dict[str, list[str]] = {}
    for override in OverridesParser.create().parse_overrides(arguments):
        key = override.get_key_element()
        if override.is_sweep_override():
            values[key] = [f"{key}={v}" for v in override.sweep_string_iterator()]
        else:
            values[key] = [f"{key}={override.get_value_element_as_str()}"]
    return [list(job) for job in itertools.product(*values.values())]


def _split(job: list[str]) -> tuple[str | None, list[str]]:
    """(the job's step value, its other overrides)."""
    step, rest = None, []
    for override in job:
        key, _, value = override.partition("=")
        if key.lstrip("+") == "step":
            step = value
        else:
            rest.append(override)
    return step, rest


def prefetch_positions(jobs: list[list[str]], num: int, parallelism: int, ahead: int) -> list[str]:
    """The step values job `num` prefetches: the jobs that start when its launcher slot frees, i.e. at
    positions num + parallelism x j (j = 1..ahead), when they differ from it only in `step` (same model and
    other settings: the same repo). Parallel slots thus prefetch disjoint jobs."""
    if not 0 <= num < len(jobs):
        return []
    _, mine = _split(jobs[num])
    out = []
    for j in range(1, ahead + 1):
        position = num + parallelism * j
        if position >= len(jobs):
            break
        step, rest = _split(jobs[position])
        if step is not None and rest == mine:
            out.append(step)
    return out


def next_steps(model_cfg, step: int, ahead: int) -> list[int]:
    """The steps this job of a multirun should prefetch (empty outside a multirun).

    A job sees only its own overrides; the sweep's command line is in `<sweep dir>/multirun.yaml`, which
    Hydra's sweeper writes before launching any job. `${ckptstudy_steps:}` (schedule=all) is this job's model's
    checkpoint list.
    """
    if ahead <= 0 or not HydraConfig.initialized():
        return []
    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode != RunMode.MULTIRUN:
        return []
    sweep_dir = Path(hydra_cfg.sweep.dir)
    if not sweep_dir.is_absolute():  # relative to where the sweep was launched (a job may chdir)
        sweep_dir = Path(hydra_cfg.runtime.cwd) / sweep_dir
    master = OmegaConf.load(sweep_dir / "multirun.yaml")
    params = OmegaConf.to_container(master.hydra.sweeper.get("params") or {}, resolve=False)
    steps = available_steps(model_cfg)
    params = {k: (",".join(map(str, steps)) if "ckptstudy_steps" in str(v) else v) for k, v in params.items()}
    jobs = sweep_jobs(params, list(master.hydra.overrides.task))
    num = int(hydra_cfg.job.num)
    value, _ = _split(jobs[num]) if num < len(jobs) else (None, [])
    if value is None or _resolved(value, steps, model_cfg.name) != step:
        log.warning("prefetch: job %d of the sweep is not step %s here; nothing is prefetched", num, step)
        return []
    chosen = prefetch_positions(jobs, num, launcher_parallelism(hydra_cfg.launcher), ahead)
    return [s for s in (_resolved(v, steps, model_cfg.name) for v in chosen) if s is not None and s != step]


def _resolved(value: str, steps: list[int], model: str) -> int | None:
    try:
        return resolve_step(None if value in ("null", "None") else value, steps, model)
    except ValueError:
        return None


# ---------------------------------------------------------------- one job's use of the cache


def check_config(checkpoints_cfg) -> None:
    """Refuse a bad `checkpoints` block before anything loads."""
    ahead = checkpoints_cfg.prefetch_ahead
    if not isinstance(ahead, int) or isinstance(ahead, bool) or ahead < 0:
        raise ValueError(
            f"checkpoints.prefetch_ahead={ahead!r} is not valid: it must be an integer >= 0 "
            "(revisions downloaded ahead of the one being measured; 0 = off)"
        )


class JobDisk:
    """What one job does with the HF cache when `checkpoints.evict` or `prefetch_ahead` is on: download its
    revision (entered in the ledger when eviction is on), prefetch the next revisions of the sweep in a
    background thread, and after its record is written, wait for the prefetch and evict its own revision.

    Inactive (every method a no-op) for local checkpoints, offline, or with both options off. A failed
    download or eviction is logged and never fails the job (loading then reports a missing revision).
    """

    def __init__(
        self,
        item: Revision | None = None,
        evict: bool = False,
        ahead: list[Revision] | None = None,
        done: Callable[[int], bool] | None = None,
        study: str = "",
    ):
        self.item, self.evict_after, self.ahead = item, evict, list(ahead or [])
        self.done = done or (lambda step: False)
        self.study = study
        self.thread: threading.Thread | None = None
        self.failures: list[str] = []

    def fetch(self) -> None:
        """Download this job's revision unless cached (offline: nothing to do, loading reports it)."""
        if self.item is not None and not hub_offline():
            self._fetch(self.item)

    def _fetch(self, item: Revision, skip: Callable[[], bool] | None = None) -> bool:
        """Download `item` unless cached (or `skip()`, asked under the lock); True when it downloaded."""
        cache = cache_dir()
        try:
            with cache_lock(cache, shared=True):
                # under the lock: a job that evicts `item` wrote its record first, so `skip` sees it
                if cache_state(item.repo, item.revision).complete or (skip is not None and skip()):
                    return False
                if self.evict_after:
                    claim(item, cache, self.study)
                log.info("downloading %s", item.key)
                download(item)
                return True
        except Exception as err:
            message = f"download of {item.key} failed: {type(err).__name__}: {err}"
            log.warning("%s", message)
            self.failures.append(message)
            return False

    def start_prefetch(self) -> None:
        """Download the next revisions of the sweep in a background thread (offline: nothing)."""
        if not self.ahead or hub_offline():
            return
        disable_progress_bars()  # a background download's bars would interleave with the job's output
        self.thread = threading.Thread(target=self._prefetch, name="ckptstudy-prefetch", daemon=True)
        self.thread.start()

    def _prefetch(self) -> None:
        for item in self.ahead:
            # a revision whose record exists is skipped by its job: not downloaded
            if self._fetch(item, skip=lambda step=item.step: self.done(step)):
                log.info("prefetched %s for a later job", item.key)

    def finish(self, written: bool) -> None:
        """Wait for the prefetch, then (eviction on, record written) evict this job's revision if the ledger
        says a sweep downloaded it."""
        if self.thread is not None:
            self.thread.join()
            self.thread = None
        if self.item is None or not self.evict_after or not written:
            return
        try:
            done = evict(self.item)
        except Exception as err:
            log.warning("eviction of %s failed: %s: %s", self.item.key, type(err).__name__, err)
            return
        if done is not None and done.deleted:
            log.info("evicted %s from the HF cache (%.1f MB freed)", self.item.key, done.freed / 1e6)
        elif done is not None:
            log.info("kept %s in the HF cache: %s", self.item.key, done.reason)


def job_disk(cfg, source: CheckpointSource, done: Callable[[int], bool] | None = None) -> JobDisk:
    """The `JobDisk` of a job (inactive for a local checkpoint or with both options off)."""
    options = cfg.checkpoints
    if source.kind != "hub" or not (options.evict or options.prefetch_ahead):
        return JobDisk()
    item = Revision(source.model, source.step, source.location, source.revision)
    ahead = []
    try:
        for step in next_steps(cfg.model, source.step, int(options.prefetch_ahead)):
            other = source_for(cfg.model, step)
            ahead.append(Revision(other.model, step, other.location, other.revision))
    except Exception as err:  # the sweep's plan is unreadable: measure without prefetching
        log.warning("prefetch: cannot tell the next revisions of the sweep (%s: %s)", type(err).__name__, err)
    return JobDisk(item, bool(options.evict), ahead, done, str(cfg.study))

"""A fake hub for the disk tests: revisions of tiny GPT-NeoX models in a "remote" directory, and a
`download` that copies one into an HF cache in huggingface_hub's layout (content-addressed blobs,
snapshots of relative symlinks, refs), so revisions with equal files share blobs as on the real hub.

`install_from_env()` replaces `ckptstudy.model.hubcache.download` with it in processes a test starts
(a `sitecustomize.py` on PYTHONPATH calls it): $CKPTSTUDY_FAKE_HUB is a JSON spec {"remote": dir, "log":
file, "fail_in_prefetch": [revision, ...]}. Every call appends a JSON line to the log: revision, thread,
pid, start and end times, and the snapshots of the repo cached when it ended.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from pathlib import Path

REPO_ID = "FakeOrg/tiny-neox"
ENV = "CKPTSTUDY_FAKE_HUB"


def commit_of(revision: str) -> str:
    return hashlib.sha1(revision.encode()).hexdigest()


def repo_folder(cache: Path, repo: str = REPO_ID) -> Path:
    return Path(cache) / f"models--{repo.replace('/', '--')}"


def make_remote(remote: Path, tokenizer, revisions: dict[str, object]) -> Path:
    """`remote/<revision>/` holding a saved model (or a seed for `tiny_neox`) and the tokenizer."""
    from conftest import tiny_neox

    for revision, model in revisions.items():
        directory = Path(remote) / revision
        model = tiny_neox(vocab_size=len(tokenizer), seed=model) if isinstance(model, int) else model
        model.save_pretrained(directory)
        tokenizer.save_pretrained(directory)
    return Path(remote)


def put_revision(cache: Path, remote: Path, revision: str, commit: str | None = None, repo: str = REPO_ID) -> Path:
    """Copy `remote/<revision>` into the HF cache as huggingface_hub would: blobs named by content hash,
    the snapshot's files symlinks to them, refs/<revision> naming the commit. Returns the snapshot."""
    folder = repo_folder(cache, repo)
    commit = commit or commit_of(revision)
    snapshot = folder / "snapshots" / commit
    for source in sorted(p for p in (Path(remote) / revision).rglob("*") if p.is_file()):
        data = source.read_bytes()
        blob = folder / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        if not blob.exists():
            blob.write_bytes(data)
        link = snapshot / source.relative_to(Path(remote) / revision)
        link.parent.mkdir(parents=True, exist_ok=True)
        if not link.exists():
            link.symlink_to(os.path.relpath(blob, link.parent))
    (folder / "refs").mkdir(parents=True, exist_ok=True)
    (folder / "refs" / revision).write_text(commit)
    return snapshot


def cached_snapshots(cache: Path, repo: str = REPO_ID) -> list[str]:
    folder = repo_folder(cache, repo) / "snapshots"
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def fake_download(remote: Path, log: Path | None = None, fail_in_prefetch: tuple[str, ...] = (), delay: float = 0.0):
    """A `hubcache.download` replacement that copies from `remote` into the current HF cache."""

    def download(item) -> dict:
        from huggingface_hub import constants

        from ckptstudy.model.hubcache import cache_state

        cache = Path(constants.HF_HUB_CACHE)
        thread = threading.current_thread().name
        started = time.time()
        entry = {"revision": item.revision, "thread": thread, "pid": os.getpid(), "start": started}
        try:
            if item.revision in fail_in_prefetch and thread == "ckptstudy-prefetch":
                raise ConnectionError(f"fake network failure for {item.revision}")
            time.sleep(delay)
            put_revision(cache, remote, item.revision, repo=item.repo)
            entry["ok"] = True
        except Exception as err:
            entry["ok"] = False
            entry["error"] = str(err)
            raise
        finally:
            entry["end"] = time.time()
            entry["cached"] = cached_snapshots(cache, item.repo)
            if log is not None:
                with open(log, "a") as handle:
                    handle.write(json.dumps(entry) + "\n")
        state = cache_state(item.repo, item.revision)
        return {"files": [], "nbytes": 0, "seconds": entry["end"] - started, "state": state}

    return download


def read_log(log: Path) -> list[dict]:
    return [json.loads(line) for line in Path(log).read_text().splitlines()] if Path(log).exists() else []


def install_from_env() -> None:
    spec = os.environ.get(ENV)
    if not spec:
        return
    spec = json.loads(spec)
    from ckptstudy.model import hubcache

    hubcache.download = fake_download(Path(spec["remote"]), Path(spec["log"]), tuple(spec.get("fail_in_prefetch", ())))

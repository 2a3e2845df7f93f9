"""Read back what an offline W&B run logged, from its `run-*.wandb` file (LevelDB log format)."""

from __future__ import annotations

import json
import struct
import time
from pathlib import Path

BLOCK = 32 * 1024
HEADER = 7  # crc32 (4) + length (2, little endian) + type (1)
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def raw_records(path: Path, timeout: float = 30.0) -> list[bytes]:
    """The records of a run file, once it holds the run's `exit` record (or after `timeout` seconds).

    wandb-core may still be writing the file's last records (artifacts, exit) when `run.finish()` returns:
    a test that read it at once saw no artifact in about 1 of 3 runs."""
    from wandb.proto import wandb_internal_pb2

    deadline = time.monotonic() + timeout
    while True:
        records = _parse(Path(path).read_bytes(), path)
        last = wandb_internal_pb2.Record.FromString(records[-1]).WhichOneof("record_type") if records else None
        if last == "exit" or time.monotonic() > deadline:
            return records
        time.sleep(0.2)


def _parse(data: bytes, path: Path) -> list[bytes]:
    assert data[:4] == b":W&B", f"{path} is not a W&B run file"
    body, out, pending, pos = data[7:], [], b"", 0
    # blocks are aligned on the file, not on the body: the 7-byte file header starts block 0
    pos, offset = 0, 7
    while pos + HEADER <= len(body):
        left_in_block = BLOCK - ((pos + offset) % BLOCK)
        if left_in_block < HEADER:
            pos += left_in_block
            continue
        length, kind = struct.unpack("<HB", body[pos + 4 : pos + 7])
        chunk = body[pos + HEADER : pos + HEADER + length]
        pos += HEADER + length
        if kind == FULL:
            out.append(chunk)
        elif kind == FIRST:
            pending = chunk
        elif kind == MIDDLE:
            pending += chunk
        elif kind == LAST:
            out.append(pending + chunk)
            pending = b""
        elif kind == 0 and length == 0:
            break
    return out


def records_of(run_dir: Path, kind: str) -> list:
    """The run's parsed records of one `record_type` (history, run, summary, artifact, ...), in order."""
    from wandb.proto import wandb_internal_pb2

    (path,) = Path(run_dir).glob("run-*.wandb")
    parsed = [wandb_internal_pb2.Record.FromString(blob) for blob in raw_records(path)]
    return [record for record in parsed if record.WhichOneof("record_type") == kind]


def _items(items) -> dict:
    return {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in items}


def history(run_dir: Path) -> list[dict]:
    """The rows the run logged with `run.log`, as {key: value} dicts, in order."""
    return [_items(record.history.item) for record in records_of(run_dir, "history")]


def run_config(run_dir: Path) -> dict:
    """Group, job type and display name of the run, from its run record."""
    for record in records_of(run_dir, "run"):
        return {"group": record.run.run_group, "job_type": record.run.job_type, "name": record.run.display_name}
    return {}


def summary(run_dir: Path) -> dict:
    """The run's summary as {key: value}: every summary update in the run file, later ones winning."""
    out = {}
    for record in records_of(run_dir, "summary"):
        out.update(_items(record.summary.update))
    return out


def artifacts(run_dir: Path) -> dict[str, list[str]]:
    """The run's logged artifacts as {type: [file path, ...]}."""
    return {
        record.artifact.type: [entry.path for entry in record.artifact.manifest.contents]
        for record in records_of(run_dir, "artifact")
    }

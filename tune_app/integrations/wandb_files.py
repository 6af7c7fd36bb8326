"""Read W&B run files (``run-<id>.wandb``) back: what a sweep logged, and which trials' runs were lost.

The file is a LevelDB-style log (a 7-byte ``:W&B`` header, then 32 KiB blocks of
records with a 7-byte header each: CRC32, length, type) whose records are
``wandb_internal_pb2.Record`` protobufs. wandb >= 0.2x reads it in Go only, so this reads
it here: after a sweep every trial must have a run holding its history (a run cut off
before W&B finished it may hold none), and the tests check what was logged.
"""
from __future__ import annotations

import json
import struct
from pathlib import Path

from wandb.proto import wandb_internal_pb2 as pb

BLOCK = 32768
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def records(path: Path) -> list[pb.Record]:
    raw = Path(path).read_bytes()
    if raw[:4] != b":W&B":
        raise ValueError(f"{path} is not a W&B run file")
    out, pending, pos = [], b"", 7
    while pos + 7 <= len(raw):
        left = BLOCK - pos % BLOCK
        if left < 7:  # a block's tail too short for a header is padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", raw[pos:pos + 7])
        data, pos = raw[pos + 7:pos + 7 + length], pos + 7 + length
        if kind in (FULL, FIRST):
            pending = data
        elif kind in (MIDDLE, LAST):
            pending += data
        if kind in (FULL, LAST):
            record = pb.Record()
            record.ParseFromString(pending)
            out.append(record)
    return out


def read_run(path: Path) -> dict:
    """{"name", "group", "project", "id", "job_type", "config": {...}, "history": [{metric: value}, ...],
    "summary": {key: value}, "artifacts": [{"type", "name", "aliases", "files", "metadata"}]}"""
    run = {"config": {}, "history": [], "summary": {}, "artifacts": []}
    for record in records(path):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            r = record.run
            run.update(name=r.display_name, group=r.run_group, project=r.project, id=r.run_id, job_type=r.job_type)
            run["config"].update({u.key: json.loads(u.value_json) for u in r.config.update if u.key != "_wandb"})
        elif kind == "history":
            run["history"].append({(i.key or "/".join(i.nested_key)): json.loads(i.value_json)
                                   for i in record.history.item})
        elif kind == "summary":
            run["summary"].update({(i.key or "/".join(i.nested_key)): json.loads(i.value_json)
                                   for i in record.summary.update})
        elif kind == "artifact":
            a = record.artifact
            run["artifacts"].append({"type": a.type, "name": a.name, "aliases": sorted(a.aliases),
                                     "files": [e.path for e in a.manifest.contents],
                                     "metadata": json.loads(a.metadata or "{}")})
    return run


def missing_runs(run_dir: Path, epochs: dict[str, int]) -> list[str]:
    """The trials (of ``epochs``: trial id -> epochs it reported) whose W&B runs in ``<run dir>/wandb`` are missing or
    hold fewer epochs than the trial reported. A trial continued by --resume logs into a second offline run with
    the same id: its epochs are counted over all of them."""
    logged: dict[str, set] = {}
    for folder in Path(run_dir, "wandb").glob("*run-*"):
        trial_id = folder.name.rsplit("-", 1)[-1]
        for file in folder.glob("run-*.wandb"):
            try:
                history = [r.history for r in records(file) if r.WhichOneof("record_type") == "history"]
            except (ValueError, OSError, struct.error):
                history = []
            for i, row in enumerate(history):
                epoch = next((item.value_json for item in row.item
                              if (item.key or "/".join(item.nested_key)) == "epoch"), f"{file} row {i}")
                logged.setdefault(trial_id, set()).add(epoch)
    return sorted(t for t, n in epochs.items() if n and len(logged.get(t, ())) < n)

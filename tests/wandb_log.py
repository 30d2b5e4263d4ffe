"""Read an offline W&B run file (``run-*.wandb``) to check what a run recorded.

The file is a LevelDB-style log (a 7-byte ``:W&B`` header, then 32 KiB blocks of records with a
7-byte header: CRC32, little-endian length, type FULL/FIRST/MIDDLE/LAST) of protobuf ``Record``s.
wandb >= 0.2x no longer ships a Python reader, so the tests carry this small one.
"""

from __future__ import annotations

import struct
from pathlib import Path

from wandb.proto import wandb_internal_pb2

BLOCK, HEADER = 32768, 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def records(path: str | Path) -> list[wandb_internal_pb2.Record]:
    """Every record in the file, in order."""
    data = Path(path).read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B run file"
    out, pos, pending = [], HEADER, b""
    while pos + HEADER <= len(data):
        room = BLOCK - pos % BLOCK
        if room < HEADER:  # the rest of a block too small for a header is padding
            pos += room
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + HEADER])
        if kind == 0 and length == 0:
            break
        chunk = data[pos + HEADER : pos + HEADER + length]
        pos += HEADER + length
        pending = chunk if kind in (FULL, FIRST) else pending + chunk
        if kind in (FULL, LAST):
            rec = wandb_internal_pb2.Record()
            rec.ParseFromString(pending)
            out.append(rec)
    return out


def logged_keys(path: str | Path) -> tuple[set[str], set[str]]:
    """The history keys and the summary keys a run file holds."""
    history, summary = set(), set()
    for rec in records(path):
        kind = rec.WhichOneof("record_type")
        if kind == "history":
            history |= {i.key or "/".join(i.nested_key) for i in rec.history.item}
        elif kind == "summary":
            summary |= {i.key or "/".join(i.nested_key) for i in rec.summary.update}
    return history, summary


def run_groups(folder: Path) -> dict[str, str]:
    """Every offline run under ``folder``: its run id and the group it was logged in."""
    groups = {}
    for run_file in folder.glob("**/offline-run-*/run-*.wandb"):
        for rec in records(run_file):
            if rec.WhichOneof("record_type") == "run":
                groups[rec.run.run_id] = rec.run.run_group
    return groups

"""Read what a wandb run wrote to its ``run-<id>.wandb`` file (offline runs keep everything there).

The file is wandb's record log (LevelDB's log format): a 7-byte header (``:W&B``, magic 0xBEE1, version),
then 32 KiB blocks of chunks, each ``crc32 (4) | length (2, little-endian) | type (1) | data``; type 1 is a
whole record, 2/3/4 the first/middle/last piece of one. Each record is a ``wandb_internal_pb2.Record``.
"""

from __future__ import annotations

import json
import struct
import time
from pathlib import Path

from google.protobuf.message import DecodeError
from wandb.proto import wandb_internal_pb2 as pb

BLOCK, HEADER = 32768, 7


def _parse(path: Path) -> list[pb.Record]:
    data = Path(path).read_bytes()
    assert data[:4] == b":W&B", f"{path}: not a wandb record file"
    records, pending, pos = [], b"", HEADER
    while pos + HEADER <= len(data):
        left = BLOCK - pos % BLOCK
        if left < HEADER:  # the block's tail is padding
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + HEADER])
        chunk = data[pos + HEADER : pos + HEADER + length]
        pos += HEADER + length
        if kind == 0 and length == 0:
            continue
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def read_records(path: Path, timeout: float = 120.0) -> list[pb.Record]:
    """The run's records once the file is whole. ``wandb.finish()`` can return while wandb-core is still writing
    an offline run's file (seen under load: a truncated last record, or rows not yet there), so wait for the
    ``exit`` record that closes every finished run."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            records = _parse(path)
            if any(r.HasField("exit") for r in records):
                return records
            problem = "no exit record yet"
        except (DecodeError, AssertionError, struct.error) as err:  # a record still being written
            problem = repr(err)
        if time.monotonic() > deadline:
            raise AssertionError(f"{path}: not a finished wandb run after {timeout:.0f} s ({problem})")
        time.sleep(0.2)


def history_rows(records: list[pb.Record]) -> list[dict]:
    """The logged rows, ``{key: value}`` (values decoded from JSON; ``_step`` is wandb's own row counter)."""
    rows = []
    for record in records:
        if record.HasField("history"):
            row: dict = {}
            for item in record.history.item:
                value = json.loads(item.value_json)
                if item.key or len(item.nested_key) == 1:
                    row[item.key or item.nested_key[0]] = value
                else:  # media: one key per field, e.g. ("samples/video", "_type") -> row["samples/video"]["_type"]
                    row.setdefault(item.nested_key[0], {})["/".join(item.nested_key[1:])] = value
            rows.append(row)
    return rows


def run_record(records: list[pb.Record]) -> pb.RunRecord:
    (run,) = [r.run for r in records if r.HasField("run")][:1]
    return run


def artifacts(records: list[pb.Record]) -> list[pb.ArtifactRecord]:
    return [r.artifact for r in records if r.HasField("artifact")]


def offline_run_file(folder: Path) -> Path:
    """The ``.wandb`` file of the single offline run under ``folder`` (e.g. a training run's ``wandb/``)."""
    (path,) = Path(folder).rglob("offline-run-*/run-*.wandb")
    return path

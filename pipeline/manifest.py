"""Append-only Arrow manifests: one Parquet file per update, the current state is the latest
row per item. Nothing is rewritten in place, so a crash never loses a finished item, and any
Arrow tool (or Ray Data's read_parquet) can read the directory."""
from __future__ import annotations

import os
import time
import uuid
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

SCHEMA = pa.schema([
    ("item", pa.string()),          # e.g. "seg-00003" or an image path
    ("kind", pa.string()),          # "segment", "image", ...
    ("status", pa.string()),        # "running" | "done" | "failed"
    ("source", pa.string()),
    ("source_size", pa.int64()),
    ("source_mtime", pa.float64()),
    ("settings", pa.string()),      # hash of everything that determines the output
    ("output", pa.string()),
    ("frames", pa.int64()),
    ("seconds", pa.float64()),
    ("error", pa.string()),
    ("updated", pa.timestamp("us")),
    ("seq", pa.int64()),
])


class Manifest:
    def __init__(self, directory: str | os.PathLike):
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)

    def append(self, rows: list[dict]) -> None:
        if not rows:
            return
        now_us = int(time.time() * 1e6)
        cols = {f.name: [] for f in SCHEMA}
        for i, r in enumerate(rows):
            for name in cols:
                cols[name].append(r.get(name))
            cols["updated"][-1] = now_us
            cols["seq"][-1] = time.monotonic_ns() + i
        table = pa.table(cols, schema=SCHEMA)
        name = f"part-{now_us:016d}-{uuid.uuid4().hex[:8]}.parquet"
        tmp = self.dir / (name + ".tmp")
        pq.write_table(table, tmp)
        os.replace(tmp, self.dir / name)

    def table(self) -> pa.Table:
        tables = []
        for p in sorted(self.dir.glob("part-*.parquet")):
            try:
                tables.append(pq.read_table(p, schema=SCHEMA))
            except FileNotFoundError:  # the job removed its work dir while we read
                continue
        return pa.concat_tables(tables) if tables else SCHEMA.empty_table()

    def latest(self) -> dict[str, dict]:
        """item -> its newest row."""
        rows = self.table().sort_by([("updated", "ascending"), ("seq", "ascending")]).to_pylist()
        return {r["item"]: r for r in rows}

"""Append-only Arrow manifests: a row per item and status change, stored as immutable Parquet parts.

Nothing is rewritten in place, so a crash never loses a row that reached disk, and any Arrow tool
(`pyarrow.dataset`, Ray Data's `read_parquet`) can read the directory. The current state is the
latest row per item (by `updated`, then `seq`). Rows are buffered and written as one part per
flush; `done`/`failed` rows flush at once unless the caller says otherwise, because they are the
rows resume depends on. Parts are written through a `pyarrow.fs` filesystem: locally to a hidden
temporary name and renamed; on an object store (no atomic rename) straight to a unique name, which
is safe because an object only becomes visible once its upload completes and parts never change.

A part that cannot be read (empty, cut short, overwritten) is set aside under a name readers skip
(`.damaged-part-...`), named in one line on stderr, and the state is read from the other parts:
the items whose rows it held look new to the next diff and are redone.

Compaction writes the rows resume needs (the latest row per item, and the last error of items
whose latest row has none) as a new part, then deletes the parts it read. The new rows are copies
of old ones (same `updated`/`seq`), so a reader that sees both, after a crash half-way, gets the
same state.
"""
from __future__ import annotations

import atexit
import json
import math
import os
import sys
import threading
import time
import uuid
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

STATUSES = ("pending", "running", "done", "failed", "skipped")
METRICS = ("psnr", "ssim", "psnr_bicubic", "ssim_bicubic")

SCHEMA = pa.schema([
    ("item", pa.string()),          # e.g. "seg-00003" or a path relative to the source root
    ("kind", pa.string()),          # "segment", "image", ...
    ("path", pa.string()),          # the source file (video: the whole input)
    ("size", pa.int64()),
    ("mtime", pa.float64()),
    ("hash", pa.string()),          # content hash, when the job computed one
    ("settings", pa.string()),      # hash of everything that determines the output
    ("status", pa.string()),        # one of STATUSES
    ("stage", pa.string()),         # last stage reached
    ("stages", pa.string()),        # JSON {stage: status}
    ("output", pa.string()),
    ("frames", pa.int64()),
    ("seconds", pa.float64()),
    ("timings", pa.string()),       # JSON {stage: seconds}
    ("psnr", pa.float64()),         # NaN when there is no reference
    ("ssim", pa.float64()),
    ("psnr_bicubic", pa.float64()),
    ("ssim_bicubic", pa.float64()),
    ("error", pa.string()),
    ("notes", pa.string()),         # the item's warnings, one per line (estimated degradation, repeated frames)
    ("degradation", pa.string()),   # JSON {"blur_sigma", "noise"} SRMD was given (--blur/--noise auto); older parts lack it
    ("attempts", pa.int64()),       # attempts that ended (done or failed), this one included; a running row's
                                    # has not (a killed job costs none); written by the engine
    ("run", pa.string()),           # run id of the writer
    ("updated", pa.timestamp("us")),  # UTC
    ("seq", pa.int64()),            # wall-clock ns, strictly increasing per writer
])
FIELDS = frozenset(SCHEMA.names)
ALIASES = {"source": "path", "source_size": "size", "source_mtime": "mtime"}  # the video job's names
JSON_COLUMNS = ("stages", "timings", "degradation")
TERMINAL = ("done", "failed")
PART_PREFIX, PART_SUFFIX = "part-", ".parquet"
DAMAGED_PREFIX = ".damaged-"   # a set-aside part: hidden from pyarrow.dataset and Ray Data, not a part-*
ROW_GROUP = 65536   # rows; reads of the latest rows go one row group at a time


def new_run_id() -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + uuid.uuid4().hex[:6]


def _open_fs(directory, filesystem):
    """(filesystem, root path, is_local) for a local path or a URI such as s3://bucket/prefix."""
    if filesystem is not None:
        return filesystem, str(directory), isinstance(filesystem, pafs.LocalFileSystem)
    text = str(directory)
    if "://" in text:
        fs, root = pafs.FileSystem.from_uri(text)
        return fs, root.rstrip("/"), isinstance(fs, pafs.LocalFileSystem)
    return pafs.LocalFileSystem(), os.path.abspath(text), True


def _write_part(fs, root: str, local: bool, table: pa.Table, tag: str = "") -> str:
    name = f"{PART_PREFIX}{time.time_ns():020d}-{uuid.uuid4().hex[:12]}{tag}{PART_SUFFIX}"
    final = f"{root}/{name}"
    if not local:  # unique, immutable name: no rename needed, the object appears whole or not at all
        pq.write_table(table, final, filesystem=fs, row_group_size=ROW_GROUP)
        return final
    tmp = f"{root}/.{name}.tmp"  # dot-prefixed: pyarrow.dataset and Ray Data skip it
    try:
        pq.write_table(table, tmp, filesystem=fs, row_group_size=ROW_GROUP)
        fs.move(tmp, final)
    except BaseException:
        try:
            fs.delete_file(tmp)
        except OSError:
            pass
        raise
    return final


def _flush_at_exit(fs, root, local, buffer):
    """Rows still buffered when the writer is garbage-collected or the process exits normally
    (or on Ctrl-C) reach disk. Never raises."""
    if buffer:
        try:
            if fs.get_file_info(root).type != pafs.FileType.Directory:
                return   # the job removed its work dir: do not bring it back
            _write_part(fs, root, local, _rows_to_table(buffer))
            buffer.clear()
        except Exception:
            pass


_LIVE: "weakref.WeakSet[Manifest]" = weakref.WeakSet()


@atexit.register
def _flush_live_manifests():
    for m in list(_LIVE):
        _flush_at_exit(m.fs, m.root, m.local, m._buffer)


def _rows_to_table(buffer: list) -> pa.Table:
    tables, rows = [], []
    for b in buffer:
        if isinstance(b, pa.Table):
            if rows:
                tables.append(pa.Table.from_pylist(rows, schema=SCHEMA))
                rows = []
            tables.append(b)
        else:
            rows.append(b)
    if rows:
        tables.append(pa.Table.from_pylist(rows, schema=SCHEMA))
    return pa.concat_tables(tables) if len(tables) > 1 else tables[0]


def _schema(columns: list[str]) -> pa.Schema:
    return pa.schema([SCHEMA.field(c) for c in columns])


def latest_positions(table: pa.Table, where: pa.Array | None = None) -> pa.Array:
    """Indices into `table` of the newest row per item (ascending). Vectorised: rank the rows by
    (updated, seq), then the highest rank per item; `where` restricts the rows. One hash table
    (use_threads=False) takes half the memory of per-thread ones and is faster here."""
    if where is not None:
        base = pc.indices_nonzero(pc.fill_null(where, False))
        table = table.take(base)
    n = table.num_rows
    if n == 0:
        return pa.array([], pa.int64())
    order = pc.sort_indices(table.select(["updated", "seq"]),
                            sort_keys=[("updated", "ascending"), ("seq", "ascending")]).to_numpy()
    rank = np.empty(n, np.int64)
    rank[order] = np.arange(n, dtype=np.int64)
    best = pa.table({"item": table["item"], "rank": rank}).group_by("item", use_threads=False) \
        .aggregate([("rank", "max")])["rank_max"].to_numpy()
    idx = np.sort(order[best]).astype(np.int64)
    return pa.array(base.to_numpy()[idx].astype(np.int64) if where is not None else idx)


def latest_rows(table: pa.Table) -> pa.Table:
    return table.take(latest_positions(table))


def _resume_rows(table: pa.Table) -> pa.Table:
    """What compaction keeps: the latest row per item, plus the last row with an error text for
    items whose latest row has none (so `failed`/`retry` can still say why)."""
    latest = latest_positions(table)
    last_err = latest_positions(table, pc.is_valid(table["error"]))
    return table.take(pa.array(np.union1d(latest.to_numpy(), last_err.to_numpy())))


def _read_parquet(f, columns: list[str], positions: np.ndarray | None) -> tuple[pa.Table, set]:
    """The `columns` a part has (all its rows, or those at sorted `positions`, read one row group
    at a time), and the names it has."""
    pf = pq.ParquetFile(f)
    have = set(pf.schema_arrow.names)
    present = [c for c in columns if c in have]
    if positions is None:
        return pf.read(columns=present), have
    sizes = [pf.metadata.row_group(i).num_rows for i in range(pf.num_row_groups)]
    starts = np.cumsum([0] + sizes, dtype=np.int64)
    cuts = np.searchsorted(positions, starts)
    pieces = [pf.read_row_group(i, columns=present).take(pa.array(positions[cuts[i]:cuts[i + 1]] - starts[i]))
              for i in range(pf.num_row_groups) if cuts[i + 1] > cuts[i]]
    return (pa.concat_tables(pieces) if pieces else pf.schema_arrow.empty_table().select(present)), have


def _conformed(t: pa.Table, have: set, columns: list[str]) -> pa.Table:
    """`t` with `columns` in SCHEMA's types; those a part written by an older version lacks are null (NaN metrics)."""
    arrays = []
    for c in columns:
        typ = SCHEMA.field(c).type
        if c in have:
            arrays.append(t[c].cast(typ))
        else:
            arrays.append(pa.repeat(pa.scalar(math.nan), t.num_rows) if c in METRICS
                          else pa.nulls(t.num_rows, typ))
    return pa.Table.from_arrays(arrays, schema=_schema(columns))


def first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


class _PartSetAside(Exception):
    """A damaged part was set aside during a read: list the parts again and read without it."""


@dataclass
class Diff:
    """Items to process (`todo`: item, path, size, mtime, hash, reason, attempts, error), the
    items whose source is gone (`deleted`: item, status, output; not yet marked `skipped`) and
    counts by outcome: new, changed, settings, retry, unchanged, exhausted, deleted, todo."""
    todo: pa.Table
    counts: dict = field(default_factory=dict)
    deleted: pa.Table | None = None


class Manifest:
    def __init__(self, directory: str | os.PathLike, *, filesystem: pafs.FileSystem | None = None,
                 run_id: str | None = None, flush_rows: int = 1000, flush_seconds: float = 5.0,
                 compact_parts: int = 256, create: bool = True, log=None):
        self.uri = str(directory)
        self.fs, self.root, self.local = _open_fs(directory, filesystem)
        self.dir = Path(self.root) if self.local else None
        if create:
            self.fs.create_dir(self.root, recursive=True)
        self.run_id = run_id or new_run_id()
        self.flush_rows, self.flush_seconds, self.compact_parts = flush_rows, flush_seconds, compact_parts
        self._buffer: list = []   # dicts already normalised to SCHEMA, or conformed tables
        self._buffered_rows = 0
        self._buffer_since = 0.0
        self._last_seq = 0
        self._known_parts: int | None = None   # parts on disk at the last listing, plus ours since
        self._lock = threading.RLock()           # writers may append from callback threads
        self._damaged: set[str] = set()          # parts found damaged, skipped even where renaming failed
        self.log = log or (lambda line: print(line, file=sys.stderr, flush=True))
        # a forgotten or garbage-collected writer still writes its buffer; at exit the atexit hook
        # below does it, because it runs before pyarrow's own teardown (weakref.finalize's may not)
        self._finalizer = weakref.finalize(self, _flush_at_exit, self.fs, self.root, self.local, self._buffer)
        self._finalizer.atexit = False
        _LIVE.add(self)
        pa.array([0])   # pyarrow imports pandas on its first pa.array; at exit that import fails

    # -- writing ------------------------------------------------------------------------------
    def _next_seq(self) -> int:
        self._last_seq = max(time.time_ns(), self._last_seq + 1)
        return self._last_seq

    def _row(self, r: dict) -> dict:
        row = {k: r[k] for k in r.keys() & FIELDS}
        for alias, name in ALIASES.items():
            if row.get(name) is None and r.get(alias) is not None:
                row[name] = r[alias]
        status = row.get("status")
        if status not in STATUSES:
            raise ValueError(f"manifest row for {row.get('item')!r}: status {status!r} is not one of {STATUSES}")
        for k in JSON_COLUMNS:
            v = row.get(k)
            if v is not None and not isinstance(v, str):
                row[k] = json.dumps(v, sort_keys=True)
        for k in METRICS:
            if row.get(k) is None:
                row[k] = math.nan
        if row.get("run") is None:
            row["run"] = self.run_id
        seq = self._next_seq()
        row["seq"], row["updated"] = seq, seq // 1000
        return row

    def _conform(self, table: pa.Table) -> pa.Table:
        """A table with any subset of the columns (aliases allowed) -> SCHEMA, stamped now."""
        n = table.num_rows
        cols = {}
        for name in table.column_names:
            target = ALIASES.get(name, name)
            if target in FIELDS and (target not in cols or name == target):
                cols[target] = table[name]
        if "status" not in cols or pc.any(pc.invert(pc.fill_null(
                pc.is_in(cols["status"], pa.array(STATUSES)), False))).as_py():
            raise ValueError(f"manifest rows: every status must be one of {STATUSES}")
        first = self._next_seq()
        self._last_seq = first + n - 1
        seq = pa.array(np.arange(first, first + n, dtype=np.int64))
        cols["seq"] = seq
        cols["updated"] = pc.divide(seq, 1000).cast(pa.timestamp("us"))
        if "run" not in cols:
            cols["run"] = pa.repeat(pa.scalar(self.run_id), n)
        arrays = []
        for f in SCHEMA:
            if f.name in cols:
                arrays.append(cols[f.name].cast(f.type))
            elif f.name in METRICS:
                arrays.append(pa.repeat(pa.scalar(math.nan), n))
            else:
                arrays.append(pa.nulls(n, f.type))
        if "run" in cols:
            arrays[SCHEMA.get_field_index("run")] = pc.fill_null(arrays[SCHEMA.get_field_index("run")], self.run_id)
        for k in METRICS:
            i = SCHEMA.get_field_index(k)
            arrays[i] = pc.fill_null(arrays[i], math.nan)
        return pa.Table.from_arrays(arrays, schema=SCHEMA)

    def append(self, rows: list[dict] | pa.Table, durable: bool | None = None) -> None:
        with self._lock:
            self._append(rows, durable)

    def _append(self, rows, durable) -> None:
        """Buffer rows (dicts, or a table with any subset of the columns; unknown keys are
        ignored). `durable=True` writes them, and everything buffered before, before returning;
        the default is durable when a row is `done` or `failed`. The buffer is also written when
        it holds `flush_rows` rows or is `flush_seconds` old, on close(), and at normal exit."""
        if isinstance(rows, pa.Table):
            if rows.num_rows == 0:
                return
            table = self._conform(rows)
            n = table.num_rows
            terminal = durable is None and pc.any(pc.is_in(table["status"], pa.array(TERMINAL))).as_py()
            self._buffer.append(table)
        else:
            if not rows:
                return
            normal = [self._row(r) for r in rows]
            n = len(normal)
            terminal = durable is None and any(r["status"] in TERMINAL for r in normal)
            self._buffer.extend(normal)
        if self._buffered_rows == 0:
            self._buffer_since = time.monotonic()
        self._buffered_rows += n
        if durable or terminal or self._buffered_rows >= self.flush_rows \
                or time.monotonic() - self._buffer_since >= self.flush_seconds:
            self.flush()

    def flush(self, compact: bool = True) -> str | None:
        """Write the buffer as one part; returns its path (None when there was nothing)."""
        with self._lock:
            return self._flush(compact)

    def _flush(self, compact: bool) -> str | None:
        if not self._buffer:
            return None
        path = _write_part(self.fs, self.root, self.local, _rows_to_table(self._buffer))
        self._buffer.clear()
        self._buffered_rows = 0
        if self._known_parts is not None:
            self._known_parts += 1
        if compact and (self._known_parts is None or self._known_parts > self.compact_parts):
            self._maybe_compact()
        return path

    def close(self) -> None:
        self.flush()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- reading ------------------------------------------------------------------------------
    def parts(self) -> list[pafs.FileInfo]:
        try:
            infos = self.fs.get_file_info(pafs.FileSelector(self.root, allow_not_found=True))
        except FileNotFoundError:
            return []
        return sorted((i for i in infos if i.is_file and i.base_name.startswith(PART_PREFIX)
                       and i.base_name.endswith(PART_SUFFIX) and i.path not in self._damaged),
                      key=lambda i: i.path)

    def damaged_parts(self) -> list[str]:
        """Names of the parts set aside as damaged (by this or an earlier run)."""
        try:
            infos = self.fs.get_file_info(pafs.FileSelector(self.root, allow_not_found=True))
        except OSError:
            return []
        return sorted(i.base_name for i in infos if i.base_name.startswith(DAMAGED_PREFIX))

    def _set_aside(self, path: str, error: BaseException) -> None:
        """Rename a damaged part out of every reader's way and say so in one line."""
        self._damaged.add(path)
        name = path.rsplit("/", 1)[-1]
        try:
            self.fs.move(path, f"{self.root}/{DAMAGED_PREFIX}{name}")
            where = f"set aside as {DAMAGED_PREFIX}{name}"
        except FileNotFoundError:       # another reader set it aside first
            return
        except OSError as e:            # read-only manifest: skipped by this reader only
            where = f"skipped (cannot rename it: {first_line(e)})"
        self.log(f"{self.uri}: manifest part {name} is damaged ({first_line(error)}); {where}; "
                 f"the state is read from the other parts (its items count as new)")

    def exists(self) -> bool:
        return self.fs.get_file_info(self.root).type == pafs.FileType.Directory

    # Reads go part by part in two passes: the narrow columns that decide which row is the latest
    # (item, status, updated, seq), then only the winning rows of the columns asked for. A
    # million-item manifest never sits in memory whole.
    def _read_part(self, source, columns: list[str], positions: np.ndarray | None = None) -> pa.Table:
        """Columns of one part (a path, or the in-memory buffer), conformed to SCHEMA (parts
        written by older versions lack some columns); only the rows at sorted `positions`, read
        one row group at a time, when given."""
        if isinstance(source, pa.Table):
            t = source.select(columns)
            return t if positions is None else t.take(pa.array(positions))
        try:
            with self.fs.open_input_file(source) as f:
                t, have = _read_parquet(f, columns, positions)
            return _conformed(t, have, columns)
        except (FileNotFoundError, PermissionError):   # gone (compacted) or not ours to read: not damage
            raise
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, OSError) as e:
            # a corrupt page reads as OSError ("Corrupt snappy compressed data"); on an object store
            # an OSError may be the network, and its parts appear whole or not at all: raise it
            if isinstance(e, OSError) and not self.local:
                raise
            self._set_aside(source, e)
            raise _PartSetAside(source) from None

    def _sources(self) -> list:
        buffered = [_rows_to_table(self._buffer)] if self._buffer else []
        return [p.path for p in self.parts()] + buffered

    def _narrow(self, sources: list, columns: list[str]):
        tables = [self._read_part(s, columns) for s in sources]
        offsets = np.cumsum([0] + [t.num_rows for t in tables], dtype=np.int64)
        return (pa.concat_tables(tables) if tables else _schema(columns).empty_table()), offsets

    def _gather(self, sources: list, offsets: np.ndarray, positions: np.ndarray, columns: list[str]) -> pa.Table:
        """The rows at sorted global `positions` of the concatenated sources."""
        cuts = np.searchsorted(positions, offsets)
        out = []
        for i, src in enumerate(sources):
            sel = positions[cuts[i]:cuts[i + 1]] - offsets[i]
            if len(sel):
                out.append(self._read_part(src, columns, sel))
        return pa.concat_tables(out) if out else _schema(columns).empty_table()

    def _retrying(self, fn):
        """A part can vanish between listing and reading (a compaction deleted it after writing
        its replacement, or the job removed its work dir), or be set aside as damaged: list again."""
        vanished = 0
        while True:
            try:
                return fn()
            except _PartSetAside:       # out of the listing now: each retry has one part fewer
                continue
            except FileNotFoundError:
                vanished += 1
                if vanished == 10:
                    raise
                time.sleep(0.05 * vanished)

    def table(self, columns: Iterable[str] | None = None) -> pa.Table:
        """Every row, on disk and in this writer's unflushed buffer."""
        cols = list(columns or SCHEMA.names)
        return self._retrying(lambda: self._narrow(self._sources(), cols)[0])

    def state(self, statuses: Iterable[str] | None = None, last_error: bool = False,
              columns: Iterable[str] | None = None) -> pa.Table:
        """The latest row per item (in storage order), optionally only those whose latest status
        is in `statuses`, with `columns` (default all). `last_error` adds the item's newest error
        text even when its latest row has none (retried after a failure, or killed running)."""
        cols = list(columns or SCHEMA.names)
        if "item" not in cols:
            cols.insert(0, "item")

        def once():
            sources = self._sources()
            narrow, offsets = self._narrow(sources, ["item", "status", "updated", "seq"]
                                           + (["error"] if last_error else []))
            pos = latest_positions(narrow)
            if statuses is not None:
                pos = pos.filter(pc.is_in(narrow["status"].take(pos), pa.array(list(statuses), pa.string())))
            t = self._gather(sources, offsets, np.sort(pos.to_numpy().astype(np.int64)), cols)
            if last_error:
                ep = latest_positions(narrow, pc.is_valid(narrow["error"]))
                errors = pa.table({"e_item": narrow["item"].take(ep), "last_error": narrow["error"].take(ep)})
                t = t.join(errors, keys="item", right_keys="e_item", join_type="left outer")
            return t
        return self._retrying(once)

    def latest(self) -> dict[str, dict]:
        """item -> its newest row, as dicts (small manifests; use state() for large ones)."""
        return {r["item"]: r for r in self.state().to_pylist()}

    # -- compaction ---------------------------------------------------------------------------
    def compact(self, parts: list[pafs.FileInfo] | None = None) -> int:
        """Merge `parts` (default: all) into one part of the rows resume needs (the latest row
        per item, and the last error of items whose latest row has none), then delete them.
        Returns how many parts were removed. Safe to kill at any point, and safe beside writers
        (their new parts are not in the list) and other compactions (rows are copies)."""
        self.flush(compact=False)
        parts = self.parts() if parts is None else parts
        if len(parts) <= 1:
            return 0
        sources = [p.path for p in parts]
        try:
            narrow, offsets = self._narrow(sources, ["item", "updated", "seq", "error"])
            keep = np.unique(np.concatenate([latest_positions(narrow).to_numpy(),
                                             latest_positions(narrow, pc.is_valid(narrow["error"])).to_numpy()
                                             ]).astype(np.int64))
            del narrow
            merged = self._gather(sources, offsets, keep, SCHEMA.names)
        except (FileNotFoundError, _PartSetAside):   # another compaction took them first, or one was damaged
            return 0
        _write_part(self.fs, self.root, self.local, merged, tag="-c")
        for p in parts:
            try:
                self.fs.delete_file(p.path)
            except FileNotFoundError:
                pass
        self._remove_stale_temporaries()
        return len(parts)

    def _remove_stale_temporaries(self, age_s: float = 3600) -> None:
        """Temporary parts of writers killed mid-write (hidden, so no reader sees them)."""
        try:
            infos = self.fs.get_file_info(pafs.FileSelector(self.root, allow_not_found=True))
        except OSError:
            return
        now = time.time()
        for i in infos:
            if i.is_file and i.base_name.startswith("." + PART_PREFIX) and i.base_name.endswith(".tmp") \
                    and i.mtime is not None and now - i.mtime.timestamp() > age_s:
                try:
                    self.fs.delete_file(i.path)
                except OSError:
                    pass

    def _maybe_compact(self) -> None:
        """Past `compact_parts` parts: merge the small ones alone while they are smaller than the
        biggest part (cheap, leaves the big base untouched), otherwise everything."""
        parts = self.parts()
        self._known_parts = len(parts)
        if len(parts) <= self.compact_parts:
            return
        parts.sort(key=lambda p: p.size)
        small = parts[:-1]
        merged = small if sum(p.size for p in small) < parts[-1].size else parts
        self._known_parts -= self.compact(merged) - 1

    # -- diff against a source listing --------------------------------------------------------
    def diff(self, listing: pa.Table, settings: str, max_attempts: int = 3, key: str | None = None) -> Diff:
        """Which items of `listing` (columns path, size, mtime, optional hash; the item id is
        `key`, else `item`, else `rel`, else `path`) need processing under `settings`: new ones,
        changed ones (hash differs when both sides have one, else size or mtime), ones done
        under other settings, pending or running ones (a killed job used up no attempt), and
        failed ones with fewer than `max_attempts` attempts. An item marked `skipped` (its source
        was deleted) whose source is back counts as new. Joins in Arrow; no per-row Python."""
        key = key or next(k for k in ("item", "rel", "path") if k in listing.column_names)
        n = listing.num_rows
        cur = pa.table({
            "item": listing[key].cast(pa.string()),
            "path": listing["path" if "path" in listing.column_names else key].cast(pa.string()),
            "size": listing["size"].cast(pa.int64()),
            "mtime": listing["mtime"].cast(pa.float64()),
            "hash": listing["hash"].cast(pa.string()) if "hash" in listing.column_names else pa.nulls(n, pa.string()),
        })
        st = self.state(last_error=True, columns=["item", "size", "mtime", "hash", "settings", "status",
                                                  "attempts", "output"])
        gone = pc.and_kleene(pc.invert(pc.is_in(st["item"], value_set=cur["item"])),
                             pc.not_equal(st["status"], "skipped"))
        deleted = st.filter(pc.fill_null(gone, True)).select(["item", "status", "output"]).sort_by("item")
        st = st.rename_columns(["m_item"] + ["m_" + c for c in st.column_names[1:]])
        j = cur.join(st, keys="item", right_keys="m_item", join_type="left outer", use_threads=True)
        true = pa.scalar(True)

        def differs(a, b):
            return pc.fill_null(pc.not_equal(j[a], j[b]), true)

        new = pc.or_kleene(pc.is_null(j["m_status"]), pc.equal(j["m_status"], "skipped"))
        both_hash = pc.and_kleene(pc.is_valid(j["hash"]), pc.is_valid(j["m_hash"]))
        ident = pc.if_else(both_hash, pc.or_kleene(differs("hash", "m_hash"), differs("size", "m_size")),
                           pc.or_kleene(differs("size", "m_size"), differs("mtime", "m_mtime")))
        changed = pc.and_kleene(pc.invert(new), ident)
        same = pc.invert(pc.or_kleene(new, changed))
        other_settings = pc.and_kleene(same, pc.fill_null(pc.not_equal(j["m_settings"], pa.scalar(settings)), true))
        same = pc.and_kleene(same, pc.invert(other_settings))
        open_ = pc.fill_null(pc.is_in(j["m_status"], pa.array(["pending", "running", "failed"])), False)
        # rows without an attempts count (older manifests): a failed item used one attempt, others none
        failed = pc.fill_null(pc.equal(j["m_status"], "failed"), False)
        attempts = pc.coalesce(j["m_attempts"], pc.if_else(failed, pa.scalar(1), pa.scalar(0)))
        # only a failure recorded against the item uses attempts up: pending and running ones are retried
        below = pc.or_kleene(pc.invert(failed), pc.fill_null(pc.less(attempts, max_attempts), False))
        retry = pc.and_kleene(pc.and_kleene(same, open_), below)
        exhausted = pc.and_kleene(pc.and_kleene(same, open_), pc.invert(below))
        unchanged = pc.and_kleene(same, pc.invert(open_))
        fresh = pc.or_kleene(pc.or_kleene(new, changed), other_settings)
        todo_mask = pc.or_kleene(fresh, retry)
        # build the answer from the (usually few) rows to process only
        t = j.select(["item", "path", "size", "mtime", "hash", "m_status", "m_last_error"]).append_column(
            "prev", attempts.cast(pa.int64())).append_column("is_new", new).append_column(
            "is_changed", changed).append_column("is_fresh", fresh).filter(todo_mask)
        reason = pc.if_else(t["is_new"], "new", pc.if_else(t["is_changed"], "changed",
                            pc.if_else(t["is_fresh"], "settings", t["m_status"])))
        todo = pa.table({
            "item": t["item"], "path": t["path"], "size": t["size"], "mtime": t["mtime"], "hash": t["hash"],
            "reason": reason,
            "attempts": pc.if_else(t["is_fresh"], pa.scalar(0, pa.int64()), t["prev"]),
            "error": pc.if_else(t["is_fresh"], pa.scalar(None, pa.string()), t["m_last_error"]),
        })
        todo = todo.take(pc.sort_indices(todo["item"]))

        def count(mask):
            return int(pc.sum(pc.cast(mask, pa.int64())).as_py() or 0)

        counts = {"new": count(new), "changed": count(changed), "settings": count(other_settings),
                  "retry": count(retry), "unchanged": count(unchanged), "exhausted": count(exhausted)}
        counts["deleted"] = deleted.num_rows
        counts["todo"] = todo.num_rows
        return Diff(todo, counts, deleted)

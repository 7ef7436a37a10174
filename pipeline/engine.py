"""One engine for every job: a Source plans items and reads them into batches, a chain of operator
stages transforms the batches in Ray actor pools, a Sink writes each item and finishes the job.

    source.read(item) ──> [stage pool] ──> [stage pool] ──> sink writer(item) ──> sink.on_write_complete

Shaped on Ray Data (Datasource/ReadTask, Datasink.on_write_start/write/on_write_complete/
on_write_failed, columnar numpy batches, fused map operators) and Video2X's processors (filter/flush).
The engine alone owns scheduling, bounded in-flight work, per-entry resume from the manifest, item
retries, the progress bar, the summary and the manifest rows; docs/batches.md is the contract.

What moves between processes is an *envelope*: {"columns": batch, "meta": {...}}. The batch holds
equal-length numpy columns only; warnings, timings, per-entry failures and per-row side data
(EXIF, ICC) ride in `meta`, beside it."""
from __future__ import annotations

import functools
import os
import sys
import time
import warnings as pywarnings
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import ray
from tqdm import tqdm

from operators.base import Batch, concat, rows
from .errors import InputError

# glibc returns big freed blocks to the OS, so every large activation costs fresh page faults
# (~40% of a CPU model's time here); keep blocks up to the 32 MiB maximum on the heap instead.
OPERATOR_ENV = {"MALLOC_MMAP_THRESHOLD_": str(32 << 20), "MALLOC_TRIM_THRESHOLD_": str(256 << 20)}


# ───────────────────────────── items, sources, sinks ─────────────────────────────

@dataclass
class Entry:
    """One manifest row's identity: a video segment, or one image file of a group."""
    id: str
    kind: str
    path: str | None = None
    size: int | None = None
    mtime: float | None = None
    hash: str | None = None
    units: int = 1                     # progress units (frames of a segment, 1 per image)
    attempts: int = 0                  # attempts that ended in earlier runs (from the manifest)


@dataclass
class Item:
    """The unit of scheduling and retry: read as one stream of batches, written by one writer."""
    key: str
    entries: list[Entry]
    payload: Any = None                # what the source's reader needs (small: it is pickled)
    hints: dict = field(default_factory=dict)   # set by the engine on a retry (e.g. {"shrink": 1})

    @property
    def units(self) -> int:
        return sum(e.units for e in self.entries)


class Source:
    """Plans items and reads one item into envelopes (in a Ray task, near the data)."""
    name = "source"
    unit = "item"                      # what the progress bar counts
    item_name = "item"                 # what the summary calls an item
    columns: tuple[str, ...] = ("frames", "index", "pts")

    def plan(self, done: set[str]) -> list[Item]:
        raise NotImplementedError

    def reader(self) -> Callable[[Item], Iterator[dict]]:
        """A small picklable callable: item -> envelopes. It must not capture the whole plan."""
        raise NotImplementedError

    def total_units(self) -> int | None:
        return None

    def identities(self) -> dict[str, tuple] | None:
        """item -> (size, mtime, content hash or None) of what it reads now; resume reuses a done
        row only when it matches. None: the settings hash already covers the input (video)."""
        return None


class ItemWriter:
    """Writes one item inside a writer actor; close() returns {entry id: result row fields}."""

    def write(self, columns: Batch, meta: dict) -> int:
        raise NotImplementedError

    def close(self) -> dict[str, dict]:
        raise NotImplementedError

    def abort(self) -> None:
        pass


class Sink:
    """Ray Data's Datasink shape. open() runs in a writer actor on the driver's node; the
    on_write_* hooks run on the driver."""
    reads: tuple[str, ...] | None = None     # columns its writers use (None: keep every column)

    def on_write_start(self, scale: int) -> None:
        pass

    def open(self, item: Item) -> ItemWriter:
        raise NotImplementedError

    def on_write_failed(self, item: Item, error: str) -> None:
        pass

    def on_write_complete(self, results: dict[str, dict], summary: "Summary") -> None:
        pass


# ───────────────────────────── stages ─────────────────────────────

@dataclass
class StageSpec:
    """One operator stage: how to build its operator, and its actor pool."""
    name: str
    factory: Callable            # picklable, builds the operator inside the actor
    actors: int = 1
    gpus_per_actor: float = 0
    cpus_per_actor: float | None = None   # None: 1, or a fair share when the pools need more CPUs than there are
    threads: int | None = None   # torch threads per actor on CPU
    identity: str = ""           # what determines its output (for resume)
    reads: tuple[str, ...] | None = None    # None: the operator class's declaration
    writes: tuple[str, ...] | None = None
    resources: dict | None = None           # custom Ray resources (e.g. pin a pool to a node)

    @property
    def device(self) -> str:
        return "gpu" if self.gpus_per_actor else "cpu"

    def declared(self, attr: str) -> tuple[str, ...]:
        given = getattr(self, attr)
        if given is not None:
            return tuple(given)
        f = self.factory
        while isinstance(f, functools.partial):
            f = f.func
        default = ("frames",) if attr == "reads" else ()
        return tuple(getattr(f, attr, default))


def check_graph(source_columns, stages: list[StageSpec]) -> None:
    """Every column a stage reads must come from the source or an earlier stage."""
    have = set(source_columns)
    for s in stages:
        missing = [c for c in s.declared("reads") if c not in have]
        if missing:
            raise InputError(f"stage {s.name}: reads '{missing[0]}', which neither the source nor an "
                             f"earlier stage writes (add the stage that produces it before {s.name})")
        have |= set(s.declared("writes"))


def fuse(stages: list[StageSpec], enabled: bool = True) -> list[list[StageSpec]]:
    """Consecutive stages on the same device with the same pool shape run in one actor, back to
    back, so what one writes for the next (HR segmentation maps, face crops) never crosses the
    object store."""
    groups: list[list[StageSpec]] = []
    for s in stages:
        prev = groups[-1][-1] if groups else None
        if (enabled and prev is not None and prev.device == s.device and prev.actors == s.actors
                and (prev.resources or {}) == (s.resources or {})):
            groups[-1].append(s)
        else:
            groups.append([s])
    return groups


class _Chain:
    """Several operators run back to back in one process."""

    def __init__(self, ops: list):
        self.ops = ops

    def __call__(self, columns: Batch, timings: dict, names: list[str]) -> Batch:
        for op, name in zip(self.ops, names):
            if not rows(columns) and not getattr(op, "stateful", False):
                continue
            t0 = time.perf_counter()
            columns = op(columns)
            timings[name] = timings.get(name, 0.0) + time.perf_counter() - t0
        return columns

    def drop_state(self) -> None:
        """Forget an abandoned item: its held rows must not leak into the next item's output."""
        for op in self.ops:
            if getattr(op, "stateful", False):
                op.flush()

    def flush(self, timings: dict, names: list[str]) -> Batch:
        """Flush each stateful operator in order, passing what it releases through the rest."""
        carry: Batch = {}
        for op, name in zip(self.ops, names):
            if carry and rows(carry):
                t0 = time.perf_counter()
                carry = op(carry)
                timings[name] = timings.get(name, 0.0) + time.perf_counter() - t0
            released = op.flush() if hasattr(op, "flush") else None
            if released is not None and rows(released):
                carry = concat([carry, released]) if carry and rows(carry) else released
        return carry


class Redo(RuntimeError):
    """An item's work was lost on the way (a stateful actor restarted mid-item, a sink got other
    rows than the source planned): the engine redoes the whole item from its first batch."""


class _ItemOrder:
    """Which item a stateful actor holds, and the number of the batch it expects next. State built
    from batches 0..k-1 is only right for batch k: a restarted actor (state lost) or batches Ray
    retried out of order must not be processed (they gave shortened or shuffled segments)."""

    def __init__(self):
        self.key, self.next = None, 0

    def admit(self, meta: dict, flush: bool = False) -> bool:
        """Raise Redo if this envelope does not continue the held item; True when the held state
        belongs to an abandoned item and must be dropped first. `released` marks a flush's rows
        (the tail of the item, not a batch of its own)."""
        key, seq, released = meta.get("item"), meta.get("seq"), bool(meta.get("released"))
        if seq is None:                  # not from the engine's reader (a direct call): nothing to check
            return False
        if seq == 0:                     # an item begins, or one that had no batch ends
            stale = self.key is not None
            self.key, self.next = (None, 0) if flush or released else (key, 1)
            return stale
        if key != self.key or seq != self.next:
            held = f"batch {self.next} of {self.key}" if self.key else "the first batch of an item"
            raise Redo(f"a stateful stage expected {held}, got batch {seq} of {key} (its actor was restarted "
                       f"mid-item, losing the state of the earlier batches)")
        if flush:
            self.key, self.next = None, 0
        elif not released:
            self.next += 1
        return False


@ray.remote
class OperatorActor:
    """Owns one fused chain of operators (and their models) for the actor's lifetime."""

    def __init__(self, factories: list[Callable], names: list[str], threads: int | None = None,
                 keep: tuple[str, ...] | None = None):
        import torch
        if threads:
            torch.set_num_threads(threads)
        self.names, self.error, self.chain = names, None, None
        self.keep = None if keep is None else set(keep)
        self.order = None
        try:
            self.chain = _Chain([f() for f in factories])
            if any(getattr(op, "stateful", False) for op in self.chain.ops):
                self.order = _ItemOrder()
        except Exception as e:  # reported by describe(): a one-line reason, not a traceback
            text = str(e).splitlines()[0] if str(e) else type(e).__name__
            self.error = text

    def describe(self) -> dict:
        if self.error:
            return {"error": self.error}
        ops = self.chain.ops
        scale = 1
        for op in ops:
            scale *= int(getattr(op, "scale", 1))
        return {"scale": scale, "device": str(getattr(ops[0], "device", "cpu")),
                "reads": [list(getattr(o, "reads", ("frames",))) for o in ops],
                "writes": [list(getattr(o, "writes", ())) for o in ops]}

    def process(self, env: dict) -> dict:
        return self._run(env, lambda timings: self.chain(env["columns"], timings, self.names))

    def flush(self, env: dict) -> dict:
        return self._run(env, lambda timings: self.chain.flush(timings, self.names), flush=True)

    def _run(self, env: dict, fn, flush: bool = False) -> dict:
        meta = dict(env["meta"])
        if self.order is not None and self.order.admit(meta, flush):
            self.chain.drop_state()
        if meta.get("shrink"):
            for op in self.chain.ops:
                if hasattr(op, "shrink"):
                    op.shrink(int(meta["shrink"]))
        timings = dict(meta.get("timings", {}))
        with pywarnings.catch_warnings(record=True) as caught:
            pywarnings.simplefilter("always")
            columns = fn(timings)
        if self.keep is not None and columns:
            # what no later stage and not the sink reads (HR segmentation maps, face crops) stops here
            columns = {k: v for k, v in columns.items() if k in self.keep}
        meta["timings"] = timings
        if caught:
            file_warnings(meta, [w.message for w in caught])
        return {"columns": columns, "meta": meta}


def file_warnings(meta: dict, messages: list) -> None:
    """Put an operator's warnings in the envelope: one about a row (operators.base.RowWarning)
    whose `index` the source mapped to an entry (`meta["entries"]`: an image file) under that
    entry in `meta["entry_warnings"]`, so it is not copied onto the rest of the group; the others
    item-wide in `meta["warnings"]` (a row of a video segment named by its frame number)."""
    entries = meta.get("entries", {})
    item = list(meta.get("warnings", ()))
    per_entry = {k: list(v) for k, v in meta.get("entry_warnings", {}).items()}
    for m in messages:
        index = getattr(m, "index", None)
        if index in entries:
            per_entry.setdefault(entries[index], []).append(str(m))
        else:
            item.append(str(m) if index is None else f"frame {index}: {m}")
    meta["warnings"] = item
    if per_entry:
        meta["entry_warnings"] = per_entry


class Pool:
    """An actor pool for one fused group. Stateless groups route each batch to the actor with the
    fewest batches outstanding; a group with a stateful operator is sticky: every batch of an item
    goes to one actor, which takes no other item until the item's flush."""

    def __init__(self, group: list[StageSpec], keep: tuple[str, ...] | None = None):
        self.group = group
        self.names = [s.name for s in group]
        self.sticky = any(bool(getattr(_op_class(s.factory), "stateful", False)) for s in group)
        g0 = group[0]
        opts = dict(num_cpus=max(s.cpus_per_actor or 0 for s in group), num_gpus=max(s.gpus_per_actor for s in group),
                    # an actor is restarted as often as it dies, but a batch is retried only twice
                    # in place: a batch that kills its worker every time (out of memory) must come
                    # back to the engine, which retries the item with smaller tiles or gives up.
                    # A sticky pool's batch never: the restarted actor lost the item's state (and
                    # Ray resubmits the lost batches in any order), so the engine redoes the item.
                    max_restarts=-1, max_task_retries=0 if self.sticky else 2,
                    runtime_env={"env_vars": OPERATOR_ENV})
        if g0.resources:
            opts["resources"] = g0.resources
        threads = next((s.threads for s in group if s.threads), None)
        self.actors = [OperatorActor.options(**opts).remote([s.factory for s in group], self.names, threads, keep)
                       for _ in range(g0.actors)]
        self.load = [0] * len(self.actors)
        self.bound: dict[str, int] = {}          # sticky: item key -> actor slot

    def describe(self) -> dict:
        desc = ray.get([a.describe.remote() for a in self.actors])
        err = next((d["error"] for d in desc if "error" in d), None)
        if err:
            self.kill()
            raise InputError(f"{'+'.join(self.names)}: {err}")
        return desc[0]

    def free_slots(self) -> int:
        return len(self.actors) - len(self.bound) if self.sticky else 1 << 30

    def bind(self, key: str) -> None:
        if self.sticky:
            used = set(self.bound.values())
            self.bound[key] = next(i for i in range(len(self.actors)) if i not in used)
            self._wait_alive(self.bound[key])

    def _wait_alive(self, slot: int) -> None:
        """A sticky actor takes an item only once it is up: while Ray restarts it (killed, out of
        memory), calls without in-place retries fail at once, and would cost the item an attempt."""
        try:
            ray.get(self.actors[slot].describe.options(max_task_retries=-1).remote(), timeout=600)
        except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
            pass                  # gone for good: the item's batches fail and the engine reports it

    def submit(self, key: str, env_ref) -> tuple[Any, int]:
        i = self.bound[key] if self.sticky else min(range(len(self.actors)), key=self.load.__getitem__)
        self.load[i] += 1
        return self.actors[i].process.remote(env_ref), i

    def flush(self, key: str, meta: dict) -> tuple[Any, int]:
        i = self.bound[key]
        self.load[i] += 1
        return self.actors[i].flush.remote({"columns": {}, "meta": meta}), i

    def release(self, key: str) -> None:
        self.bound.pop(key, None)

    def done(self, slot: int) -> None:
        self.load[slot] -= 1

    def kill(self) -> None:
        for a in self.actors:
            ray.kill(a)


# ───────────────────────────── writers and readers ─────────────────────────────

@ray.remote(num_cpus=0)
class WriterActor:
    """Writes items one after another; one actor per concurrently open item, on the driver's node
    (the sink's files are local to the driver, which finalizes them)."""

    def __init__(self, sink: Sink):
        self.sink, self.writer, self.failed = sink, None, None

    def open(self, item: Item) -> None:
        if self.writer is not None:
            self.writer.abort()
        self.failed = None
        self.writer = self.sink.open(item)

    def write(self, env: dict) -> dict:
        meta = env["meta"]
        if self.failed is not None:       # never touch a container after a failed write (PyAV crashes)
            raise self.failed
        try:
            n = self.writer.write(env["columns"], meta)
        except Exception as e:
            self.failed = disk_full(e) or e
            raise self.failed from None
        # progress counts rows written, and entries that failed (so the bar still reaches its end)
        return {"rows": n, "units": n + len(meta.get("failed", ())), "warnings": list(meta.get("warnings", ())),
                "entry_warnings": dict(meta.get("entry_warnings", {})),
                "timings": dict(meta.get("timings", {})), "failed": dict(meta.get("failed", {}))}

    def close(self) -> dict:
        t0 = time.perf_counter()
        if self.failed is not None:
            raise self.failed
        try:
            result = self.writer.close()
        except Exception as e:
            raise (disk_full(e) or e) from None
        self.writer = None
        return {"entries": result, "seconds": time.perf_counter() - t0}

    def abort(self) -> None:
        if self.writer is not None:
            self.writer.abort()
            self.writer = None


class DiskFull(RuntimeError):
    """No space left where the sink writes: the job stops (every item would fail the same way)."""


def disk_full(e: BaseException, folder: str | None = None) -> DiskFull | None:
    """A DiskFull naming the folder of the file written (or `folder`, for writers such as
    pyarrow's whose errors name no file), or None when `e` is another error."""
    import errno
    if getattr(e, "errno", None) == errno.ENOSPC or "No space left" in str(e):
        where = os.path.dirname(str(getattr(e, "filename", None) or "")) or folder
        return DiskFull(f"no space left on {where or 'the output device'}")
    return None


def _read_task(reader, item):
    for seq, env in enumerate(reader(item)):
        # hints: the operators see them (e.g. smaller tiles after an out-of-memory death); item and
        # seq: a stateful actor checks that it holds the state of every earlier batch (_ItemOrder)
        env["meta"] = {**env["meta"], **item.hints, "item": item.key, "seq": seq}
        yield env


def _driver_node_strategy():
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
    return NodeAffinitySchedulingStrategy(node_id=ray.get_runtime_context().get_node_id(), soft=False)


# ───────────────────────────── the job ─────────────────────────────

@dataclass
class Summary:
    unit: str = "frame"
    item_name: str = "item"
    units: int = 0
    items: int = 0
    entries: int = 0
    reused: int = 0
    seconds: float = 0.0
    stage_seconds: dict = field(default_factory=dict)
    warnings: list = field(default_factory=list)
    failed: list = field(default_factory=list)          # one line each: "path: reason"
    incomplete: list = field(default_factory=list)      # written, but with frames missing
    results: dict = field(default_factory=dict)         # entry id -> result fields
    first_write: float | None = None
    last_write: float | None = None
    units_after_first: int = 0
    notes: list = field(default_factory=list)

    # the video job's names
    @property
    def frames(self) -> int:
        return self.units

    @property
    def segments(self) -> int:
        return self.items

    @property
    def reused_segments(self) -> int:
        return self.reused

    @property
    def steady_fps(self) -> float:
        """Units/s between the first and the last written batch: start-up and finalizing left out."""
        span = (self.last_write or 0) - (self.first_write or 0)
        return self.units_after_first / span if span > 0 else 0.0

    @property
    def fps(self) -> float:
        return self.units / self.seconds if self.seconds else 0.0

    def lines(self) -> list[str]:
        per = f"{self.unit}s/s"
        if self.item_name == "segment":   # a video: entries are its segments
            counts = f"{self.unit}s: {self.units}  segments: {self.items + self.reused} ({self.reused} reused)"
        else:
            counts = (f"{self.unit}s: {self.units} ({self.reused} reused, {len(self.failed)} failed)  "
                      f"{self.item_name}s: {self.items}")
        out = [f"{counts}  wall: {self.seconds:.1f}s  {self.fps:.2f} {per}  (steady {self.steady_fps:.2f} {per})"]
        if self.stage_seconds:
            out.append("time per stage (worker-seconds): " + ", ".join(
                f"{k} {v:.1f}s" for k, v in sorted(self.stage_seconds.items())))
        out += [f"note: {n}" for n in self.notes]
        out += [f"warning: {w}" for w in self.warnings]
        out += [f"incomplete: {w}" for w in self.incomplete]
        out += [f"failed: {f}" for f in self.failed]
        return out


@dataclass
class Job:
    source: Source
    stages: list[StageSpec]
    sink: Sink
    manifest: Any = None               # pipeline.manifest.Manifest, or None
    settings: str = ""                 # hash of everything that determines the output
    batch_size: int = 4
    max_inflight: int | None = None
    max_active: int | None = None
    fuse: bool = True
    progress: bool = True
    item_retries: int = 2              # an item whose worker died is retried this often
    log: Callable[[str], None] = functools.partial(print, file=sys.stderr, flush=True)


def done_entries(manifest, settings: str, identities: dict[str, tuple] | None = None) -> dict[str, dict]:
    """Entries whose newest manifest row is `done` under the same settings, with their output present,
    and, when `identities` (item -> (size, mtime, hash)) are given, from a source that is still there
    and unchanged: a replaced source is redone, never served its old output."""
    if manifest is None:
        return {}
    if hasattr(manifest, "state"):      # vectorised: a million-row manifest is filtered in Arrow
        import pyarrow.compute as pc
        t = manifest.state(statuses=["done"])
        t = t.filter(pc.equal(t["settings"], settings))
        rows = t.select([c for c in ("item", "output", "frames", "size", "mtime", "hash", "psnr", "ssim",
                                     "psnr_bicubic", "ssim_bicubic") if c in t.column_names]).to_pylist()
    else:
        rows = [r for r in manifest.latest().values() if r.get("status") == "done" and r.get("settings") == settings]
    return {r["item"]: r for r in rows if (not r.get("output") or os.path.exists(r["output"]))
            and (identities is None or same_source(r, identities.get(r["item"])))}


def same_source(row: dict, current: tuple | None) -> bool:
    """Whether a manifest row was made from the source as it is now: by content hash when both
    sides have one (a `cp -p` keeps size and mtime), else by size and mtime (Manifest.diff's rule)."""
    if current is None:
        return False
    size, mtime, digest = current
    if digest and row.get("hash"):
        return digest == row["hash"] and size == row.get("size")
    return size == row.get("size") and mtime == row.get("mtime")


def start_pools(job: Job) -> tuple[list[Pool], int]:
    """Check the graph, fuse it, start the pools and ask each for its scale (raises InputError)."""
    check_graph(job.source.columns, job.stages)
    groups = share_cpus(fuse(job.stages, job.fuse))
    check_resources(groups)
    pools: list[Pool] = []
    scale = 1
    try:
        for k, group in enumerate(groups):
            keep = None
            if job.sink.reads is not None:
                later = {c for g in groups[k + 1:] for st in g for c in st.declared("reads")}
                # the source's row identity, shot starts and codec flag travel to the end (an upscaler may come late)
                keep = tuple(sorted(later | set(job.sink.reads) | {"frames", "index", "pts", "shot_start", "lossy"}))
            pool = Pool(group, keep)
            pools.append(pool)
            d = pool.describe()
            scale *= d["scale"]
    except BaseException:
        for p in pools:
            p.kill()
        raise
    return pools, scale


def share_cpus(groups: list[list[StageSpec]]) -> list[list[StageSpec]]:
    """A CPU reservation is only Ray's bookkeeping (torch threads are set apart): pools that did
    not ask for a number get one CPU per actor, or a fair share of the cluster's CPUs when there are
    more such actors than CPUs (unfused routes on a small machine), so they can all start."""
    import dataclasses
    free = ray.cluster_resources().get("CPU", 0) - sum(
        max(s.cpus_per_actor or 0 for s in g) * g[0].actors for g in groups
        if any(s.cpus_per_actor is not None for s in g))
    open_actors = sum(g[0].actors for g in groups if all(s.cpus_per_actor is None for s in g))
    share = 1.0 if not open_actors else max(0.01, min(1.0, free / open_actors))
    return [[s if s.cpus_per_actor is not None else dataclasses.replace(s, cpus_per_actor=share) for s in g]
            for g in groups]


def check_resources(groups: list[list[StageSpec]]) -> None:
    """Actors hold their CPUs and GPUs for their lifetime: pools that need more than the cluster
    has would wait forever for a place, so say so before starting any."""
    have = ray.cluster_resources()
    for kind, attr in (("CPU", "cpus_per_actor"), ("GPU", "gpus_per_actor")):
        need = sum(max(getattr(s, attr) for s in g) * g[0].actors for g in groups)
        if need > have.get(kind, 0) + 1e-9:
            names = ", ".join("+".join(s.name for s in g) for g in groups)
            raise InputError(f"the stages ({names}) need {need:g} {kind}s for their actors and the Ray cluster has "
                             f"{have.get(kind, 0):g}; lower --actors (or the per-actor {kind}s)")


def _op_class(factory):
    while isinstance(factory, functools.partial):
        factory = factory.func
    return factory


def run(job: Job) -> Summary:
    """Run a job to the end; returns the summary (failed entries listed, never raised)."""
    t_start = time.perf_counter()
    summary = Summary(unit=job.source.unit, item_name=job.source.item_name)
    done = done_entries(job.manifest, job.settings, job.source.identities())
    items = job.source.plan(set(done))
    summary.reused = len(done)
    summary.results.update({k: dict(v) for k, v in done.items()})
    pools, scale = start_pools(job)
    total = job.source.total_units()
    summary.units = sum(int(v.get("frames") or 0) for v in done.values()) if job.source.unit == "frame" \
        else len(done)
    summary.items = len(items)
    bar = None
    try:
        job.sink.on_write_start(scale)
        bar = tqdm(total=total, initial=summary.units, unit=job.source.unit, disable=not job.progress,
                   dynamic_ncols=True, desc=job.source.name, file=sys.stderr)
        _Scheduler(job, pools, summary, bar).run(items)
    finally:
        if bar is not None:
            bar.close()
        for p in pools:
            p.kill()
        if job.manifest is not None and hasattr(job.manifest, "flush"):
            try:
                job.manifest.flush()
            except OSError as e:
                raise (disk_full(e, getattr(job.manifest, "root", None)) or e) from None
    t0 = time.perf_counter()
    job.sink.on_write_complete(summary.results, summary)
    summary.stage_seconds["finalize"] = summary.stage_seconds.get("finalize", 0.0) + time.perf_counter() - t0
    summary.seconds = time.perf_counter() - t_start
    return summary


class _ItemState:
    def __init__(self, item: Item, writer, gen):
        self.item, self.writer, self.gen = item, writer, gen
        self.acks: set = set()
        self.decoded = False
        self.batches = 0                   # envelopes read so far (the flush's sequence number)
        self.flushing = False
        self.units = 0
        self.error: str | None = None
        self.failed: dict[str, str] = {}
        self.warnings: list[str] = []                    # the item's (a video segment's)
        self.entry_warnings: dict[str, list[str]] = {}   # entry id -> its own (an image file's)
        self.t0 = time.perf_counter()


class _Scheduler:
    """Streams every item through the pools with bounded in-flight work; no polling: the driver
    blocks on ray.wait until a batch is read or written, so the model actors keep the cores."""

    def __init__(self, job: Job, pools: list[Pool], summary: Summary, bar):
        self.job, self.pools, self.summary, self.bar = job, pools, summary, bar
        n_actors = sum(len(p.actors) for p in pools)
        self.max_active = job.max_active or max(2, (len(pools[0].actors) + 1) if pools else 2)
        sticky = [p.free_slots() for p in pools if p.sticky]
        if sticky:
            self.max_active = min(self.max_active, min(sticky))
        self.max_inflight = job.max_inflight or 2 * n_actors + 2
        self.reader = job.source.reader()
        self.read_task = ray.remote(num_cpus=0)(_read_task).options(
            scheduling_strategy=_driver_node_strategy(), _generator_backpressure_num_objects=2)
        self.writer_opts = dict(scheduling_strategy=_driver_node_strategy())
        self.free_writers: deque = deque()
        self.active: dict[str, _ItemState] = {}
        self.ack_owner: dict = {}          # write ack -> (state, [(pool, slot), ...])
        self.attempts: dict[str, int] = {}    # item key -> attempts in this run
        self.stopping: str | None = None

    def _writer(self):
        if self.free_writers:
            return self.free_writers.popleft()
        return WriterActor.options(**self.writer_opts).remote(self.job.sink)

    def _manifest(self, rows: list[dict], durable: bool = False) -> None:
        m = self.job.manifest
        if m is None or not rows:
            return
        for r in rows:
            r.setdefault("settings", self.job.settings)
        try:
            m.append(rows, durable=durable)
        except OSError as e:
            raise (disk_full(e, getattr(m, "root", None)) or e) from None

    def _entry_row(self, e: Entry, **kw) -> dict:
        # an attempt counts once it ended against the item (done, or an error recorded): a job
        # killed around a running item, or stopped by a full disk (pending), costs it none
        ended = kw.get("status") in ("done", "failed")
        row = {"item": e.id, "kind": e.kind, "path": e.path, "size": e.size, "mtime": e.mtime,
               "hash": e.hash, "attempts": e.attempts + ended}
        row.update(kw)
        return row

    def _failed_row(self, e: Entry, line: str) -> dict:
        """An entry that failed: its line in the summary, its row for the manifest."""
        self.summary.failed.append(line)
        return self._entry_row(e, status="failed", error=line)

    def open(self, item: Item) -> None:
        writer = self._writer()
        ray.get(writer.open.remote(item))
        for p in self.pools:
            p.bind(item.key)
        gen = self.read_task.remote(self.reader, item)
        self.active[item.key] = _ItemState(item, writer, gen)
        self.attempts[item.key] = self.attempts.get(item.key, 0) + 1
        # durable: an output renamed into place before a kill must be recognisable as this job's
        self._manifest([self._entry_row(e, status="running") for e in item.entries], durable=True)

    def finish(self, st: _ItemState) -> None:
        del self.active[st.item.key]
        for p in self.pools:
            p.release(st.item.key)
        item = st.item
        results: dict[str, dict] = {}
        if st.error is None:
            try:
                r = ray.get(st.writer.close.remote())
                results = r["entries"]
                self.summary.stage_seconds["write"] = self.summary.stage_seconds.get("write", 0) + r["seconds"]
            except ray.exceptions.RayError as e:
                st.error = one_line(e)
        if st.error is not None:
            try:
                ray.get(st.writer.abort.remote())
                self.free_writers.append(st.writer)
            except ray.exceptions.RayError:   # the writer itself died (memory monitor): a new one next time
                ray.kill(st.writer)
            if self._retry(st):
                return
            error = st.error.removeprefix("input: ").removeprefix("retry: ").removeprefix("fatal: ")
            self.job.sink.on_write_failed(item, error)
            rows_out = []
            for e in item.entries:
                where = e.path or e.id
                line = error if error.startswith(where) else (
                    f"{where}: {e.id}: {error}" if e.kind == "segment" else f"{where}: {error}")
                rows_out.append(self._failed_row(e, line))
            self._manifest(rows_out, durable=True)
            return
        self.free_writers.append(st.writer)
        seconds = time.perf_counter() - st.t0
        rows_out = []
        for e in item.entries:
            if e.id in st.failed:
                rows_out.append(self._failed_row(e, st.failed[e.id]))
                continue
            res = results.get(e.id)
            if res is None:
                msg = f"{e.path or e.id}: produced no output"
                rows_out.append(self._failed_row(e, msg))
                continue
            res = dict(res)
            # the entry's own (an image's read and write notes, its estimate), each naming its file
            own = [_named(e, w) for w in st.entry_warnings.get(e.id, []) + list(res.pop("warnings", ()))]
            self.summary.warnings.extend(own)
            self.summary.results[e.id] = res
            self.summary.entries += 1
            if res.get("incomplete"):
                self.summary.incomplete.append(res["incomplete"])
            # an item's warnings (a segment's repeated frames, estimates) go with each of its entries
            notes = "\n".join(dict.fromkeys(own + st.warnings)) or None
            rows_out.append(self._entry_row(e, status="done", seconds=seconds / max(1, len(item.entries)),
                                            notes=notes, **{k: v for k, v in res.items() if k != "incomplete"}))
        self._manifest(rows_out, durable=True)

    def _retry(self, st: _ItemState) -> bool:
        """A worker that died (killed, out of memory) costs the item a retry, with back-off and
        less work in flight; input errors are not retried (they would fail again)."""
        if st.error.startswith("fatal: "):      # disk full: the job stops; the item is left for the next run
            self.stopping = st.error
            self._set_aside(st)
            return True
        if self.attempts.get(st.item.key, 0) > self.job.item_retries or not st.error.startswith("retry: "):
            if "out of memory" in st.error:
                st.error += "; try --tile 256 (or smaller), fewer --actors or a smaller --batch-size"
            return False
        # a worker that died on this item most likely ran out of memory (Ray's monitor or the
        # kernel's killer): operators that can work in smaller tiles do so on the retry
        st.item.hints = {**st.item.hints, "shrink": self.attempts[st.item.key]}
        self.job.log(f"{st.item.key}: {st.error.removeprefix('retry: ')}; retrying ({self.attempts[st.item.key]} of "
                     f"{self.job.item_retries})")
        time.sleep(min(10.0, 0.5 * 2 ** self.attempts[st.item.key]))
        self.max_inflight = max(1, self.max_inflight // 2)
        if st.units:
            self.summary.units -= st.units
            self.bar.update(-st.units)
        self.pending.appendleft(st.item)
        return True

    def _set_aside(self, st: _ItemState) -> None:
        """An item the job stopped on (disk full): its bad entries keep their own reasons; the
        others go back to pending with the attempts they had (the item did not fail, the disk
        did; what of it reached the disk is redone by the next run)."""
        self._manifest([self._failed_row(e, st.failed[e.id]) if e.id in st.failed
                        else self._entry_row(e, status="pending") for e in st.item.entries], durable=True)

    def on_ack(self, ack) -> None:
        st, slots = self.ack_owner.pop(ack)
        for pool, slot in slots:
            pool.done(slot)
        st.acks.discard(ack)
        try:
            r = ray.get(ack)
        except ray.exceptions.RayError as e:
            st.error = st.error or one_line(e)
            return
        st.failed.update(r["failed"])
        for line in r["failed"].values():
            print(f"error: {line}", file=sys.stderr, flush=True)
        n = r["units"]
        st.units += n
        self.summary.units += n
        now = time.perf_counter()
        if self.summary.first_write is None:
            self.summary.first_write = now
        else:
            self.summary.units_after_first += n
        self.summary.last_write = now
        self.bar.update(n)
        self.summary.warnings.extend(r["warnings"])
        st.warnings.extend(r["warnings"])
        for entry, lines in r["entry_warnings"].items():     # named and counted when the item finishes
            st.entry_warnings.setdefault(entry, []).extend(lines)
        for k, v in r["timings"].items():
            self.summary.stage_seconds[k] = self.summary.stage_seconds.get(k, 0) + v

    def _route(self, st: _ItemState, ref, first_flush: int | None = None) -> None:
        """Send an envelope through the pools (from pool `first_flush` on, the flush of that pool)."""
        slots = []
        for k, pool in enumerate(self.pools):
            if first_flush is not None and k < first_flush:
                continue
            if first_flush is not None and k == first_flush:
                ref, slot = pool.flush(st.item.key, {"item": st.item.key, "seq": st.batches, "released": True})
            else:
                ref, slot = pool.submit(st.item.key, ref)
            slots.append((pool, slot))
        ack = st.writer.write.remote(ref)
        st.acks.add(ack)
        self.ack_owner[ack] = (st, slots)

    def on_batch(self, st: _ItemState) -> None:
        try:
            ref = next(st.gen)
        except StopIteration:
            st.decoded = True
            # end of item: each sticky pool releases the rows it held, through the pools after it
            for k, pool in enumerate(self.pools):
                if pool.sticky:
                    self._route(st, None, first_flush=k)
            return
        except ray.exceptions.RayError as e:
            st.decoded = True
            st.error = st.error or one_line(e)
            return
        st.batches += 1
        self._route(st, ref)

    def run(self, items: list[Item]) -> None:
        self.pending: deque = deque(items)
        while self.pending or self.active:
            if self.stopping:                 # disk full: let open items end, start no new one (they stay pending)
                self.pending.clear()
            while self.pending and len(self.active) < self.max_active:
                self.open(self.pending.popleft())
            for st in list(self.active.values()):
                if st.decoded and not st.acks:
                    self.finish(st)
            if not self.active:
                continue
            gens = {st.gen: st for st in self.active.values() if not st.decoded} \
                if len(self.ack_owner) < self.max_inflight else {}
            waitables = list(gens) + list(self.ack_owner)
            if not waitables:
                continue
            ready, _ = ray.wait(waitables, num_returns=1, timeout=None)
            for obj in ready:
                if obj in gens:
                    self.on_batch(gens[obj])
                else:
                    self.on_ack(obj)
            if self.ack_owner:  # collect every other finished write at once
                finished, _ = ray.wait(list(self.ack_owner), num_returns=len(self.ack_owner), timeout=0)
                for ack in finished:
                    self.on_ack(ack)
        if self.stopping:      # one line for the job (what finished is recorded), not one per item
            raise DiskFull(self.stopping.removeprefix("fatal: "))


def _named(e: Entry, text: str) -> str:
    """A line about an entry, starting with its file."""
    where = e.path or e.id
    return text if text.startswith(where) else f"{where}: {text}"


def one_line(e: BaseException) -> str:
    """The cause in one line; "retry: " marks a dead worker (killed, out of memory, lost data),
    which another attempt can fix, "input: " a bad input, which it cannot."""
    cause = getattr(e, "cause", None) or e
    if isinstance(cause, InputError):
        return "input: " + str(cause).strip().splitlines()[0]
    if isinstance(cause, DiskFull):
        return "fatal: " + str(cause)
    if isinstance(cause, Redo):
        return "retry: " + str(cause)
    if isinstance(e, ray.exceptions.OutOfMemoryError) or isinstance(cause, ray.exceptions.OutOfMemoryError):
        return "retry: a worker was killed by Ray's memory monitor (out of memory)"
    if isinstance(e, (ray.exceptions.RayActorError, ray.exceptions.WorkerCrashedError,
                      ray.exceptions.ObjectLostError, ray.exceptions.NodeDiedError)):
        return f"retry: a worker died ({type(e).__name__})"
    text = str(cause).strip().splitlines()
    return text[-1] if text else type(cause).__name__

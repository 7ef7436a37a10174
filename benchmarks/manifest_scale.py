"""The manifest at dataset scale: a million items, one process, no Ray.

Steps, each timed: build the manifest from a listing (diff against the empty manifest, append
every item as pending), record a finished run (one table of done rows), append 100,000 status
updates one row per call as a running job would (buffered, written every `flush_rows` rows),
diff against a changed listing (1% changed, 1% new, 1% deleted), query the items still open,
and compact. Peak memory is the process's max RSS (ru_maxrss) and Arrow's pool peak.

    python benchmarks/manifest_scale.py                 # 1,000,000 items
    python benchmarks/manifest_scale.py --items 100000
"""
from __future__ import annotations

import argparse
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from pipeline.manifest import Manifest  # noqa: E402


def rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def make_listing(ids: np.ndarray) -> pa.Table:
    rel = pa.array([f"d{i // 1000:04d}/img{i:07d}.jpg" for i in ids.tolist()])
    return pa.table({"rel": rel,
                     "path": pc.binary_join_element_wise("/archive/", rel, ""),
                     "size": pa.array(100_000 + ids % 50_000, pa.int64()),
                     "mtime": pa.array(1.7e9 + ids.astype(np.float64), pa.float64())})


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--items", type=int, default=1_000_000)
    ap.add_argument("--updates", type=int, default=100_000)
    ap.add_argument("--dir", help="where to build it (default: a temporary folder, removed after)")
    args = ap.parse_args(argv)
    n, u = args.items, args.updates
    root = Path(args.dir or tempfile.mkdtemp(prefix="manifest-scale-"))
    mdir = root / ".rayscale" / "manifest"
    rows = []

    def step(name, fn):
        t0, c0 = time.perf_counter(), time.process_time()
        out = fn()
        rows.append((name, time.perf_counter() - t0, time.process_time() - c0, rss_mib()))
        return out

    try:
        listing = make_listing(np.arange(n))
        settings = "settings-v1"
        m = Manifest(mdir, flush_rows=1000)
        base_rss = rss_mib()

        def build():
            d = m.diff(listing, settings)
            todo = d.todo
            m.append(pa.table({"item": todo["item"], "kind": pa.repeat(pa.scalar("image"), todo.num_rows),
                               "path": todo["path"], "size": todo["size"], "mtime": todo["mtime"],
                               "settings": pa.repeat(pa.scalar(settings), todo.num_rows),
                               "status": pa.repeat(pa.scalar("pending"), todo.num_rows),
                               "attempts": pa.repeat(pa.scalar(0), todo.num_rows)}), durable=True)
            return d.counts
        counts = step(f"build from a listing of {n:,} (diff + append pending)", build)
        assert counts["new"] == n, counts

        def finish_run():
            m.append(listing.select(["rel", "path", "size", "mtime"]).rename_columns(["item", "path", "size", "mtime"])
                     .append_column("settings", pa.repeat(pa.scalar(settings), n))
                     .append_column("status", pa.repeat(pa.scalar("done"), n))
                     .append_column("attempts", pa.repeat(pa.scalar(1), n)), durable=True)
        step(f"append {n:,} done rows (one table)", finish_run)

        # status updates as a running job sends them: one row per call, buffered
        rng = np.random.default_rng(0)
        upd = np.sort(rng.choice(n, size=u, replace=False))
        upd_rel = listing["rel"].take(pa.array(upd)).to_pylist()
        upd_size = listing["size"].take(pa.array(upd)).to_pylist()
        upd_mtime = listing["mtime"].take(pa.array(upd)).to_pylist()
        n_failed = u // 100

        def updates():
            for k, item in enumerate(upd_rel):
                failed = k < n_failed
                m.append([{"item": item, "path": "/archive/" + item, "size": upd_size[k], "mtime": upd_mtime[k],
                           "settings": settings, "status": "failed" if failed else "done", "attempts": 2,
                           "error": f"/archive/{item}: truncated JPEG" if failed else None,
                           "seconds": 0.5, "timings": '{"decode": 0.1, "sr": 0.3, "encode": 0.1}'}],
                         durable=False)
            m.flush()
        step(f"append {u:,} status updates (one row per call, buffered)", updates)
        parts_before = len(m.parts())

        # the next scheduled run's listing: 1% deleted, 1% changed, 1% new
        k = n // 100
        keep = np.arange(n - k)
        changed = rng.choice(n - k, size=k, replace=False)
        size = np.asarray(listing["size"])[keep].copy()
        size[changed] += 1
        cur = listing.take(pa.array(keep)).set_column(2, "size", pa.array(size))
        cur = pa.concat_tables([cur, make_listing(np.arange(n, n + k))])
        d = step(f"diff against a changed listing (1% changed/new/deleted)", lambda: m.diff(cur, settings, 3))
        failed_kept = int(np.isin(upd[:n_failed], keep).sum() - np.isin(upd[:n_failed], keep[changed]).sum())
        assert d.counts["new"] == k and d.counts["changed"] == k and d.counts["deleted"] == k, d.counts
        assert d.counts["retry"] == failed_kept, (d.counts, failed_kept)

        open_items = step("query open items (latest status pending/running/failed)",
                          lambda: m.state(["pending", "running", "failed"]))
        assert open_items.num_rows == n_failed, open_items.num_rows

        state_before = m.state().select(["item", "seq"]).sort_by("item")  # seq names the row
        removed = step(f"compact ({parts_before} parts -> 1)", m.compact)
        assert removed == parts_before and len(m.parts()) == 1
        state_after = m.state().select(["item", "seq"]).sort_by("item")
        assert state_after.equals(state_before), "compaction changed the state"
        size_mib = sum(p.size for p in m.parts()) / 2**20
    finally:
        if not args.dir:
            shutil.rmtree(root, ignore_errors=True)

    print(f"\nManifest of {n:,} items ({u:,} updates), {os.cpu_count()} CPUs; compacted size {size_mib:.1f} MiB\n")
    print(f"load average at the end: {os.getloadavg()[0]:.1f} (wall time stretches when other work shares the CPUs)\n")
    print("| step | wall s | CPU s | peak RSS so far (MiB) |")
    print("|---|---|---|---|")
    for name, sec, cpu, rss in rows:
        print(f"| {name} | {sec:.2f} | {cpu:.2f} | {rss:.0f} |")
    print(f"\nbefore the first step: {base_rss:.0f} MiB (Python, pyarrow, the listing); "
          f"Arrow pool peak: {pa.default_memory_pool().max_memory() / 2**20:.0f} MiB")
    print(f"diff counts: {d.counts}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

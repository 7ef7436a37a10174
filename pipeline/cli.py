"""The `rayscale` console script: look into a job's manifest and queue failed items for retry.

    rayscale manifest show PATH            counts by status, the last run, throughput, recent failures
    rayscale manifest failed PATH          every failed item with its error
    rayscale manifest retry PATH [ITEM...] mark failed (or the named) items pending, attempts reset

PATH is a manifest directory, or a job's output folder (its `.rayscale/manifest`, or a video
job's `OUT.parts/manifest`); object-store URIs work too.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from .errors import InputError
from .manifest import PART_PREFIX, PART_SUFFIX, STATUSES, Manifest, first_line

IDENTITY = ("kind", "path", "size", "mtime", "hash", "settings", "output")


def open_manifest(path: str) -> Manifest:
    """The manifest at PATH or under it; InputError when there is none."""
    candidates = [f"{path.rstrip('/')}/.rayscale/manifest", path, f"{path.rstrip('/')}/manifest"]
    if "://" not in path and not Path(path).exists():
        raise InputError(f"{path}: no such file or directory")
    for c in candidates:
        try:
            m = Manifest(c, create=False)
            if m.exists() and m.parts():
                return m
        except (OSError, pa.ArrowException) as e:
            raise InputError(f"{path}: cannot read the manifest: {first_line(e)}") from None
    raise InputError(f"{path}: no manifest here (looked for {PART_PREFIX}*{PART_SUFFIX} in it, "
                     f"in .rayscale/manifest and in manifest/)")


def _short(text, width: int = 160) -> str:
    text = " ".join(str(text or "").split())
    return text if len(text) <= width else text[:width - 1] + "…"


def _state(m: Manifest, **kw) -> pa.Table:
    try:
        return m.state(**kw)
    except (OSError, pa.ArrowException) as e:
        raise InputError(f"{m.uri}: cannot read the manifest: {first_line(e)}") from None


def show(m: Manifest, out=None, recent: int = 10) -> None:
    out = out or sys.stdout
    st = _state(m, columns=["item", "status", "updated", "attempts", "error"])
    counts = {s: 0 for s in STATUSES}
    for row in st.group_by("status").aggregate([("item", "count")]).to_pylist():
        counts[row["status"] or "?"] = row["item_count"]
    print(f"manifest {m.uri}: {st.num_rows} items, {len(m.parts())} parts", file=out)
    print("  " + "  ".join(f"{s} {n}" for s, n in counts.items()), file=out)
    if st.num_rows == 0:
        return
    table = m.table(columns=["item", "run", "status", "updated", "seq"])
    last = table.take(pc.sort_indices(table, [("updated", "descending"), ("seq", "descending")])[:1])
    run = last["run"][0].as_py()
    rows = table.filter(pc.equal(table["run"], run)) if run is not None else table.slice(0, 0)
    if rows.num_rows:
        start, end = pc.min(rows["updated"]).as_py(), pc.max(rows["updated"]).as_py()
        def items(status):
            return pc.count_distinct(rows.filter(pc.equal(rows["status"], status))["item"]).as_py()
        done, failed = items("done"), items("failed")
        span = (end - start).total_seconds()
        rate = f", {done / span:.2f} items/s" if span > 0 and done else ""
        print(f"last run {run}: {start:%Y-%m-%d %H:%M:%S} - {end:%H:%M:%S} UTC, {done} done, "
              f"{failed} failed{rate}", file=out)
    fails = st.filter(pc.equal(st["status"], "failed"))
    if fails.num_rows:
        fails = fails.sort_by([("updated", "descending")]).slice(0, recent)
        print(f"recent failures ({fails.num_rows} of {counts['failed']}):", file=out)
        for r in fails.select(["item", "attempts", "error"]).to_pylist():
            print(f"  {r['item']}  (attempts {r['attempts'] or 1}): {_short(r['error'])}", file=out)


def failed(m: Manifest, out=None) -> int:
    out = out or sys.stdout
    st = _state(m, statuses=["failed"], last_error=True, columns=["item", "attempts"]).sort_by("item")
    for r in st.select(["item", "attempts", "last_error"]).to_pylist():
        print(f"{r['item']}\t{r['attempts'] or 1}\t{_short(r['last_error'], 400)}", file=out)
    return st.num_rows


def retry(m: Manifest, items: list[str], out=None) -> int:
    """Append a pending row, attempts 0, with the item's identity, for each failed item (or each
    named item) so that the next run's diff picks it up again."""
    out = out or sys.stdout
    st = _state(m, last_error=True)
    if items:
        chosen = st.filter(pc.is_in(st["item"], pa.array(items, pa.string())))
        missing = sorted(set(items) - set(chosen["item"].to_pylist()))
        if missing:
            raise InputError(f"{m.uri}: no such item in the manifest: {', '.join(missing[:5])}"
                             + (f" (and {len(missing) - 5} more)" if len(missing) > 5 else ""))
    else:
        chosen = st.filter(pc.equal(st["status"], "failed"))
    if chosen.num_rows:
        n = chosen.num_rows
        cols = {c: chosen[c] for c in ("item",) + IDENTITY}
        cols.update(status=pa.repeat(pa.scalar("pending"), n), attempts=pa.repeat(pa.scalar(0), n),
                    error=chosen["last_error"])
        m.append(pa.table(cols), durable=True)
    print(f"{chosen.num_rows} items marked pending in {m.uri}; the next run retries them", file=out)
    return chosen.num_rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="rayscale", description="rayscale tools")
    sub = ap.add_subparsers(dest="command", required=True)
    man = sub.add_parser("manifest", help="look into a job's manifest").add_subparsers(dest="action", required=True)
    for name, text in (("show", "counts by status, the last run, throughput, recent failures"),
                       ("failed", "failed items with their errors (item, attempts, error; tab-separated)"),
                       ("retry", "mark failed items (or the named ones) pending so the next run retries them")):
        p = man.add_parser(name, help=text)
        p.add_argument("path", metavar="PATH", help="manifest directory or the job's output folder")
        if name == "retry":
            p.add_argument("items", nargs="*", metavar="ITEM")
        if name == "show":
            p.add_argument("--json", action="store_true", help="counts by status as JSON")
    args = ap.parse_args(argv)
    try:
        m = open_manifest(args.path)
        if args.action == "show":
            if args.json:
                st = _state(m, columns=["item", "status"])
                print(json.dumps({r["status"]: r["item_count"] for r in
                                  st.group_by("status").aggregate([("item", "count")]).to_pylist()}))
            else:
                show(m)
        elif args.action == "failed":
            failed(m)
        else:
            retry(m, args.items)
    except InputError as e:
        print(f"rayscale: error: {e}", file=sys.stderr)
        return 2
    except (OSError, pa.ArrowException) as e:   # e.g. a read-only manifest for `retry`
        print(f"rayscale: error: {args.path}: {first_line(e)}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `rayscale manifest failed PATH | head`
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())

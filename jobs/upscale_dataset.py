"""The scheduled form of the image job: each run diffs SRC against the manifest in DST and
processes only new, changed or failed images (failed ones up to --max-attempts), then prints and
writes a run report (counts by status, throughput, failures with reasons; PSNR/SSIM and a plot when
there is a reference or --downscale).

    python jobs/upscale_dataset.py /data/hr /data/hr_x4 --model rayscale-x4
    # crontab: 0 * * * *  cd /opt/rayscale && .venv/bin/python jobs/upscale_dataset.py /data/in /data/out

A source is "changed" when its size or mtime differs from the manifest's; `--verify-content` also
hashes the sources whose size and mtime agree and compares the hash stored when they were read
(an edit copied with `cp -p` or `rsync -t`). A source that is gone is reported each run with its
output kept; `--delete-missing` removes those outputs (only files the manifest says this job wrote,
under DST) and marks the items `skipped`. Unfinished items of a gone source are marked `skipped`.

Safe from cron: a run while another is active on the same DST refuses with one line (exit 2); the
lock of a killed run is taken over. Exit codes as the image job: 0, 1 some failed or given up
(failed --max-attempts times; `rayscale manifest retry DST` queues them again), 2 refused.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from jobs.common import add_ray_args, connect_ray, exit_on_input_error  # noqa: E402
from jobs.stages import add_compute_args, add_model_args, build_stages  # noqa: E402
from jobs.upscale_images import (add_image_args, plan_files, prepare, print_summary, run_images,  # noqa: E402
                                 STATE, settings_hash, state_dir, write_quality_report)


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_image_args(ap)
    ap.add_argument("--max-attempts", type=int, default=3,
                    help="a failing image is retried in later runs until it has failed this often "
                         "(a killed run costs its images no attempt)")
    ap.add_argument("--verify-content", action="store_true",
                    help="hash the sources whose size and mtime match the manifest and redo those whose "
                         "content changed (reads every such file)")
    ap.add_argument("--delete-missing", action="store_true",
                    help="remove the outputs of sources that are gone (files this job wrote, under DST only)")
    add_model_args(ap)
    add_compute_args(ap)
    add_ray_args(ap)
    args = ap.parse_args(argv)
    if args.downscale:
        args.scale = args.scale or args.downscale
    return args


def listing_table(files):
    import pyarrow as pa
    return pa.table({"item": [f.rel for f in files], "path": [f.path for f in files],
                     "size": pa.array([f.size for f in files], pa.int64()),
                     "mtime": pa.array([f.mtime for f in files], pa.float64()),
                     "hash": pa.array([f.hash for f in files], pa.string())})


def with_content_hashes(files, manifest) -> tuple[list, int]:
    """`files`, those whose size and mtime match their manifest row (which holds a hash) given
    their current content hash, so that the diff and the engine compare content; and how many
    were hashed. Threads: hashing is reading, and hashlib releases the GIL."""
    rows = {r["item"]: r for r in manifest.state(columns=["item", "size", "mtime", "hash"]).to_pylist()}
    picked = [k for k, f in enumerate(files) if f.ok and (r := rows.get(f.rel)) and r["hash"]
              and r["size"] == f.size and r["mtime"] == f.mtime]
    out = list(files)
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        for k, digest in zip(picked, pool.map(_hash_or_none, [files[k].path for k in picked])):
            out[k] = replace(files[k], hash=digest)
    return out, len(picked)


def _hash_or_none(path: str) -> str | None:
    from pipeline.listing import content_hash
    try:
        return content_hash(path)
    except OSError:     # gone or unreadable since the listing: the reader reports it
        return None


def settle_deleted(args, manifest, deleted) -> dict:
    """Items whose source is gone: unfinished ones are marked `skipped` (not pending forever);
    done ones keep their output and are reported, unless --delete-missing removes the output and
    marks them `skipped` too. Nothing changes on --dry-run. Returns the names by outcome."""
    rows = deleted.to_pylist()
    unfinished = [r["item"] for r in rows if r["status"] != "done"]
    done = [r for r in rows if r["status"] == "done"]
    removed = []
    if args.delete_missing and not args.dry_run:
        for r in done:
            if _remove_output(args.dst, r["output"]):
                removed.append(r["item"])
    kept = [r["item"] for r in done if r["item"] not in set(removed)]
    if not args.dry_run:
        marks = [{"item": k, "kind": "image", "status": "skipped", "notes": "source deleted"} for k in unfinished]
        marks += [{"item": k, "kind": "image", "status": "skipped", "notes": "source deleted; output removed"}
                  for k in removed]
        manifest.append(marks, durable=True)
    return {"kept": kept, "removed": removed, "unfinished": unfinished}


def _remove_output(dst, output) -> bool:
    """Remove an output the manifest recorded, only when it lies under DST (outside its state
    folder) and is not a folder; True when it is gone afterwards."""
    if not output:
        return True
    root, path = os.path.realpath(dst), os.path.realpath(output)
    if os.path.commonpath([root, path]) != root or path.startswith(os.path.join(root, STATE, "")) \
            or os.path.isdir(path):
        return False
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    return True


def _names(items: list[str], shown: int = 5) -> str:
    return ", ".join(items[:shown]) + (f" (and {len(items) - shown} more)" if len(items) > shown else "")


def deleted_lines(gone: dict) -> list[str]:
    """One line per kind of deleted source, naming them."""
    lines = []
    if gone["kept"]:
        lines.append(f"source deleted, output kept: {len(gone['kept'])} ({_names(gone['kept'])}); "
                     f"--delete-missing removes them")
    if gone["removed"]:
        lines.append(f"source deleted, output removed: {len(gone['removed'])} ({_names(gone['removed'])})")
    if gone["unfinished"]:
        lines.append(f"source deleted before it was done, skipped: {len(gone['unfinished'])} "
                     f"({_names(gone['unfinished'])})")
    return lines


def run_report(args, diff_counts: dict, summary, manifest, settings: str, todo: int, report_dir: Path,
               check: str, gone: dict) -> dict:
    """Counts by status over the whole dataset, this run's throughput, its failures, the identity
    check used (`check`) and the deleted sources (`gone`)."""
    import pyarrow.compute as pc
    state = manifest.state()
    state = state.filter(pc.equal(state["settings"], settings)) if state.num_rows else state
    by_status = {}
    for s in state["status"].to_pylist() if state.num_rows else []:
        by_status[s] = by_status.get(s, 0) + 1
    report = {
        "run": manifest.run_id, "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "source": str(args.src), "dst": str(args.dst), "model": args.model, "settings": settings,
        "diff": diff_counts, "processed": todo, "written": summary.entries, "failed": len(summary.failed),
        "seconds": round(summary.seconds, 3),
        "images_per_second": round(summary.entries / summary.seconds, 3) if summary.seconds else 0.0,
        "status_counts": by_status, "failures": summary.failed, "check": check, "deleted_sources": gone,
    }
    report_dir.mkdir(parents=True, exist_ok=True)
    (report_dir / "run.json").write_text(json.dumps(report, indent=1) + "\n")
    lines = [f"run {report['run']}: {todo} to process (new {diff_counts.get('new', 0)}, changed "
             f"{diff_counts.get('changed', 0)}, settings {diff_counts.get('settings', 0)}, retry "
             f"{diff_counts.get('retry', 0)}); unchanged {diff_counts.get('unchanged', 0)}, gave up "
             f"{diff_counts.get('exhausted', 0)}, deleted from source {diff_counts.get('deleted', 0)}; "
             f"changes found by {check}",
             f"written {summary.entries}, failed {len(summary.failed)} in {summary.seconds:.1f}s "
             f"({report['images_per_second']} images/s)",
             "dataset: " + ", ".join(f"{k} {v}" for k, v in sorted(by_status.items()))]
    lines += deleted_lines(gone)
    lines += [f"failed: {f}" for f in summary.failed]
    (report_dir / "run.txt").write_text("\n".join(lines) + "\n")
    for line in lines:
        print(line)
    return report


@exit_on_input_error
def main(argv=None) -> int:
    args = parse_args(argv)
    from pipeline.listing import list_sources
    from pipeline.lock import JobLock
    from pipeline.manifest import Manifest
    prepare(args)
    files = list_sources(args.src, exclude=[args.dst])
    outputs = plan_files(args, files)      # before Ray and before DST is written to: it may refuse the job
    state_dir(args.dst).mkdir(parents=True, exist_ok=True)
    with JobLock(state_dir(args.dst) / "job", what="rayscale run on this DST"):
        connect_ray(args)
        settings = settings_hash(args, build_stages(args, args.model, still=True))
        manifest = Manifest(state_dir(args.dst) / "manifest")
        check = "size+mtime"
        if args.verify_content:
            files, hashed = with_content_hashes(files, manifest)
            check = f"size+mtime, content hash on {hashed} file(s)"
        diff = manifest.diff(listing_table(files), settings, max_attempts=args.max_attempts)
        gone = settle_deleted(args, manifest, diff.deleted)
        if manifest.damaged_parts():
            # the rows of a damaged part are lost: outputs of listed sources found without a row are
            # presumed this job's (they are where it writes) and redone, not refused as foreign
            args.overwrite = True
        todo = set(diff.todo["item"].to_pylist())
        attempts = dict(zip(diff.todo["item"].to_pylist(), diff.todo["attempts"].to_pylist()))
        chosen = [f for f in files if f.rel in todo]
        if args.dry_run:
            print(f"{len(chosen)} of {len(files)} image(s) to process: " + json.dumps(diff.counts))
            for line in deleted_lines(gone):
                print(line)
            return 0
        if not chosen:      # an unchanged tree: no actors to start, so a cron run costs seconds
            from pipeline.engine import Summary
            summary = Summary(unit="image", item_name="group")
        else:
            try:
                summary, manifest, settings = run_images(args, chosen, attempts=attempts, outputs=outputs)
            except KeyboardInterrupt:
                print(f"{args.dst}: interrupted; finished images are kept; the next run goes on", file=sys.stderr)
                return 130
        print_summary(summary)
        report_dir = state_dir(args.dst) / "reports" / time.strftime("%Y%m%d-%H%M%S")
        run_report(args, diff.counts, summary, manifest, settings, len(chosen), report_dir, check, gone)
        if args.reference or args.downscale:
            write_quality_report(args, summary, manifest, settings, report_dir)
        print(f"report: {report_dir}")
    if diff.counts["exhausted"]:
        print(f"{diff.counts['exhausted']} image(s) given up after failing {args.max_attempts} time(s): "
              f"`rayscale manifest failed {args.dst}` lists them, `rayscale manifest retry {args.dst}` "
              f"queues them for the next run", file=sys.stderr)
    return 1 if summary.failed or diff.counts["exhausted"] else 0


if __name__ == "__main__":
    sys.exit(main())

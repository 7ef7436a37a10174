"""The scheduled form of the image job: each run diffs SRC against the manifest in DST and
processes only new, changed or failed images (failed ones up to --max-attempts), then prints and
writes a run report (counts by status, throughput, failures with reasons; PSNR/SSIM and a plot when
there is a reference or --downscale).

    python jobs/upscale_dataset.py /data/hr /data/hr_x4 --model rayscale-x4
    # crontab: 0 * * * *  cd /opt/rayscale && .venv/bin/python jobs/upscale_dataset.py /data/in /data/out

Safe from cron: a run while another is active on the same DST refuses with one line (exit 2); the
lock of a killed run is taken over. Exit codes as the image job: 0, 1 some failed, 2 refused.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from jobs.common import add_ray_args, connect_ray, exit_on_input_error  # noqa: E402
from jobs.stages import add_compute_args, add_model_args, build_stages  # noqa: E402
from jobs.upscale_images import (add_image_args, prepare, print_summary, run_images,  # noqa: E402
                                 settings_hash, state_dir, write_quality_report)


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_image_args(ap)
    ap.add_argument("--max-attempts", type=int, default=3,
                    help="a failing image is retried in later runs until it has failed this often")
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
                     "mtime": pa.array([f.mtime for f in files], pa.float64())})


def run_report(args, diff_counts: dict, summary, manifest, settings: str, todo: int, report_dir: Path) -> dict:
    """Counts by status over the whole dataset, this run's throughput and its failures."""
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
        "status_counts": by_status, "failures": summary.failed,
    }
    report_dir.mkdir(parents=True, exist_ok=True)
    (report_dir / "run.json").write_text(json.dumps(report, indent=1) + "\n")
    lines = [f"run {report['run']}: {todo} to process (new {diff_counts.get('new', 0)}, changed "
             f"{diff_counts.get('changed', 0)}, settings {diff_counts.get('settings', 0)}, retry "
             f"{diff_counts.get('retry', 0)}); unchanged {diff_counts.get('unchanged', 0)}, gave up "
             f"{diff_counts.get('exhausted', 0)}, deleted from source {diff_counts.get('deleted', 0)}",
             f"written {summary.entries}, failed {len(summary.failed)} in {summary.seconds:.1f}s "
             f"({report['images_per_second']} images/s)",
             "dataset: " + ", ".join(f"{k} {v}" for k, v in sorted(by_status.items()))]
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
    state_dir(args.dst).mkdir(parents=True, exist_ok=True)
    with JobLock(state_dir(args.dst) / "job", what="rayscale run on this DST"):
        files = list_sources(args.src, exclude=[args.dst])
        connect_ray(args)
        settings = settings_hash(args, build_stages(args, args.model, still=True))
        manifest = Manifest(state_dir(args.dst) / "manifest")
        diff = manifest.diff(listing_table(files), settings, max_attempts=args.max_attempts)
        todo = set(diff.todo["item"].to_pylist())
        attempts = dict(zip(diff.todo["item"].to_pylist(), diff.todo["attempts"].to_pylist()))
        chosen = [f for f in files if f.rel in todo]
        if args.dry_run:
            print(f"{len(chosen)} of {len(files)} image(s) to process: " + json.dumps(diff.counts))
            return 0
        try:
            summary, manifest, settings = run_images(args, chosen, attempts=attempts)
        except KeyboardInterrupt:
            print(f"{args.dst}: interrupted; finished images are kept; the next run goes on", file=sys.stderr)
            return 130
        print_summary(summary)
        report_dir = state_dir(args.dst) / "reports" / time.strftime("%Y%m%d-%H%M%S")
        run_report(args, diff.counts, summary, manifest, settings, len(chosen), report_dir)
        if args.reference or args.downscale:
            write_quality_report(args, summary, manifest, settings, report_dir)
        print(f"report: {report_dir}")
    return 1 if summary.failed else 0


if __name__ == "__main__":
    sys.exit(main())

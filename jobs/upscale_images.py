"""Upscale a photo archive: SRC (a folder, one image, or a .txt/.parquet list of paths) into DST,
the folder tree mirrored, each output keeping its input's name, format, EXIF (orientation applied
and reset), ICC profile, alpha, grayscale and bit depth. Tracked by a Parquet manifest in
DST/.rayscale/manifest/: a rerun skips what is done and retries what failed.

    python jobs/upscale_images.py photos/ photos_x2/ --scale 2
    python jobs/upscale_images.py list.txt out/ --model rdn --weights RDN_x4.pth --format webp --quality 90
    python jobs/upscale_images.py hr/ out/ --downscale 4 --model rayscale-x4      # measure: PSNR/SSIM per image

Exit codes: 0 every image written; 1 some images failed (each named on stderr and in the manifest);
2 the job was refused (bad arguments, SRC missing, another job on DST); 130 interrupted.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a plain script from a checkout
    sys.path.insert(0, str(ROOT))

from jobs.common import (add_ray_args, check_job_paths, connect_ray, default_model,  # noqa: E402
                         exit_on_input_error, validate_model)
from jobs.stages import (add_compute_args, add_model_args, annotation_options, build_stages,  # noqa: E402
                         lossy_note)

STATE = ".rayscale"


def add_image_args(ap) -> None:
    ap.add_argument("src", help="a folder (walked recursively), one image, or a .txt / .parquet list of paths")
    ap.add_argument("dst", help="output folder (the source tree is mirrored under it)")
    g = ap.add_argument_group("output")
    g.add_argument("--format", default=None, choices=("jpeg", "jpg", "png", "webp", "tiff", "tif", "bmp"),
                   help="output format (default: each file keeps its own)")
    g.add_argument("--quality", type=int, default=None, help="JPEG/WebP quality 1-100 (default: Pillow's, 75/80)")
    g.add_argument("--lossless", action="store_true", help="lossless WebP")
    g.add_argument("--overwrite", action="store_true",
                   help="replace output files that exist but are not recorded as done in the manifest")
    g = ap.add_argument_group("quality measurement")
    g.add_argument("--reference", default=None, metavar="DIR",
                   help="HR references under the same relative paths: PSNR/SSIM per image into the manifest and report")
    g.add_argument("--downscale", type=int, default=None, metavar="S",
                   help="dataset mode: each source image is the HR; it is downscaled xS (MATLAB bicubic) and "
                        "upscaled back, and measured against itself (implies --scale S)")
    g = ap.add_argument_group("limits")
    g.add_argument("--max-pixels", type=int, default=89_478_485,
                   help="refuse images larger than this (decompression bombs are refused before decoding)")
    g.add_argument("--group-size", type=int, default=8, help="files per work item")
    g.add_argument("--dry-run", action="store_true", help="list what would be done, start nothing")
    g.add_argument("--no-progress", action="store_true")


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_image_args(ap)
    add_model_args(ap)
    add_compute_args(ap)
    add_ray_args(ap)
    args = ap.parse_args(argv)
    if args.downscale:
        if args.scale and args.scale != args.downscale:
            ap.error(f"--downscale {args.downscale} measures x{args.downscale}: --scale must match or be left out")
        args.scale = args.downscale
    return args


def state_dir(dst) -> Path:
    return Path(dst) / STATE


def settings_hash(args, stages) -> str:
    key = {"stages": [s.identity for s in stages], "format": args.format, "quality": args.quality,
           "lossless": args.lossless, "reference": os.path.abspath(args.reference) if args.reference else None,
           "downscale": args.downscale}
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]


def check_paths(args) -> None:
    """Refusals that need no Ray: SRC exists, DST can be made, no output would replace its input."""
    from pipeline.errors import InputError, stat_input
    check_job_paths(src=args.src, dst=args.dst, weights=args.weights, reference=args.reference)
    stat_input(args.src, missing="no such file or folder")
    if os.path.isdir(args.src) and os.path.isdir(args.dst) and os.path.samefile(args.src, args.dst):
        # also through a symlink; outputs would replace their sources, or mix with them and be
        # listed as sources by the next run. A DST inside SRC is fine: the listing leaves it out.
        raise InputError(f"{args.dst}: DST is the source folder {args.src}: each output would replace its input; "
                         f"choose another DST")
    dst = Path(args.dst)
    if dst.exists() and not dst.is_dir():
        raise InputError(f"{args.dst}: exists and is not a folder")
    parent = dst if dst.exists() else dst.parent
    if not parent.exists():
        parent.mkdir(parents=True, exist_ok=True)
    if not os.access(parent, os.W_OK | os.X_OK):
        raise InputError(f"{args.dst}: output folder is not writable")
    if args.reference and not os.path.isdir(args.reference):
        raise InputError(f"{args.reference}: reference folder does not exist")
    if args.quality is not None and not 1 <= args.quality <= 100:
        raise InputError(f"--quality {args.quality}: must be 1-100")


def plan_files(args, files):
    """Output paths for the listing; an output that is its own input refuses the whole job."""
    from pipeline.errors import InputError
    from pipeline.listing import output_paths
    outputs = {rel: str(p) for rel, p in output_paths(args.dst, files, args.format).items()}
    for f in files:
        out = outputs[f.rel]
        if f.ok and os.path.exists(out):
            try:
                if os.path.samefile(out, f.path):
                    raise InputError(f"{out}: the output would replace its input {f.path}; choose another DST")
            except OSError:
                pass
    return outputs


def existing_outputs(files, outputs, ours: set[str], overwrite: bool):
    """Files whose output exists but was never started by this job (no manifest row under these
    settings): refused item by item (never silently replaced) unless --overwrite. An output of a
    run killed between its rename and its manifest row is ours, and is redone."""
    from dataclasses import replace
    if overwrite:
        return files
    out = []
    for f in files:
        if f.ok and f.rel not in ours and os.path.exists(outputs[f.rel]):
            f = replace(f, error=f"{outputs[f.rel]}: output exists and is not from this job; pass --overwrite to replace it")
        out.append(f)
    return out


def items_started(manifest, settings: str) -> set[str]:
    import pyarrow.compute as pc
    t = manifest.state(columns=["item", "settings"]) if manifest.exists() else None
    if t is None or not t.num_rows:
        return set()
    return set(t.filter(pc.equal(t["settings"], settings))["item"].to_pylist())


def remove_partial_writes(dst, src) -> list[str]:
    """Remove the temporary files of image writes a kill cut short under DST (the caller holds
    DST's job lock, so no live write owns them): write_image's naming pattern only. Skipped:
    hidden folders (the job's state), folders that are another job's DST (their own STATE, under
    their own lock) and SRC when it lies under DST (the user's files); symlinks are never
    followed, so nothing outside DST is touched. Returns the paths removed."""
    from pipeline.imageio import is_partial_write
    src = os.path.realpath(src)

    def ours(folder: Path) -> bool:
        return not folder.name.startswith(".") and not (folder / STATE).is_dir() and os.path.realpath(folder) != src

    removed = []
    for folder, dirs, names in os.walk(dst):
        dirs[:] = [d for d in dirs if ours(Path(folder) / d)]
        for p in (Path(folder) / n for n in names if is_partial_write(n)):
            if not p.is_symlink():
                p.unlink(missing_ok=True)
                removed.append(str(p))
    return removed


def run_images(args, files, attempts: dict | None = None, log=print, outputs: dict | None = None):
    """Build the engine job for `files` and run it; returns (summary, manifest, stages).
    `outputs`: plan_files' answer when the caller already has it."""
    from pipeline import engine
    from pipeline.images import ImageSink, ImageSource, ReadOptions, WriteOptions
    from pipeline.manifest import Manifest
    model = args.model
    stages = build_stages(args, model, still=True)
    manifest = Manifest(state_dir(args.dst) / "manifest")
    settings = settings_hash(args, stages)
    outputs = plan_files(args, files) if outputs is None else outputs
    partial = remove_partial_writes(args.dst, args.src)
    if partial:
        log(f"{args.dst}: removed {len(partial)} partial file(s) left by an interrupted run")
    files = existing_outputs(files, outputs, items_started(manifest, settings), args.overwrite)
    ropts = ReadOptions(batch_size=args.batch_size, max_pixels=args.max_pixels, min_size=2,
                        reference_dir=args.reference, downscale=args.downscale,
                        keep_lr=bool(args.reference or args.downscale))
    extra = {"lossless": True} if args.lossless else {}
    wopts = WriteOptions(format=args.format, quality=args.quality, options=tuple(extra.items()))
    source = ImageSource(files, outputs, ropts, group_size=args.group_size, name=Path(args.src).name or "images",
                         attempts=attempts)
    state = state_dir(args.dst)
    ann = annotation_options(args, faces_table=str(Path(args.dst) / "faces.parquet"), parts=str(state / "faces"),
                             gallery=str(Path(args.dst) / "faces_gallery.png"))
    job = engine.Job(source, stages, ImageSink(wopts, ann), manifest=manifest, settings=settings,
                     batch_size=args.batch_size, fuse=not args.no_fuse, progress=not args.no_progress)
    summary = engine.run(job)
    manifest.flush()
    note = lossy_note(model, summary.results)
    if note:
        summary.notes.append(note)
    return summary, manifest, settings


def write_quality_report(args, summary, manifest, settings, report_dir: Path) -> dict | None:
    """Per-image metrics (when there is a reference) as a table, a plot and before/after crops."""
    from pipeline.report import write_report
    rows = []
    for item, row in manifest.latest().items():
        if row.get("settings") != settings:
            continue
        rows.append({"item": item, "status": row.get("status"), "psnr": row.get("psnr"), "ssim": row.get("ssim"),
                     "psnr_bicubic": row.get("psnr_bicubic"), "ssim_bicubic": row.get("ssim_bicubic"),
                     "seconds": row.get("seconds"), "error": row.get("error"), "output": row.get("output"),
                     "path": row.get("path")})
    if not rows:
        return None
    crops = None
    if args.reference or args.downscale:
        crops = _crop_loader(args)
    return write_report(report_dir, rows, crops=crops, wall_seconds=summary.seconds,
                        extra={"counts": {"done": summary.entries, "reused": summary.reused,
                                          "failed": len(summary.failed)}})


def _crop_loader(args):
    """item -> (bicubic, output, reference) arrays, for the crops figure."""
    def load(row):
        from models.imresize import imresize
        from pipeline.imageio import read_image
        from pipeline.metrics import bicubic
        out = read_image(row["output"]).rgb
        if args.downscale:
            hr = read_image(row["path"]).rgb
            s = args.downscale
            hr = hr[:(hr.shape[0] // s) * s, :(hr.shape[1] // s) * s]
            lr = imresize(hr, 1.0 / s)
        else:
            hr = read_image(Path(args.reference) / row["item"]).rgb
            lr = read_image(row["path"]).rgb
        bic = bicubic(lr, round(out.shape[0] / lr.shape[0]))     # the baseline psnr_bicubic measures
        return bic[:out.shape[0], :out.shape[1]], out, hr[:out.shape[0], :out.shape[1]]
    return load


def validate_models(args) -> None:
    """Model flags checked on the driver before Ray starts (one line each)."""
    from pipeline.errors import InputError
    if args.model == "sftgan":
        if not args.weights or not args.seg_weights:
            raise InputError("--model sftgan needs --weights SFTGAN.pth and --seg-weights OutdoorSceneSeg.pth")
        from operators.sftgan import sftgan_stages
        sftgan_stages(args.weights, args.seg_weights, device="cpu")     # checks both files, one line each
        return
    if args.save_segmentation:
        raise InputError("--save-segmentation needs --model sftgan (the segmentation comes from its route)")
    validate_model(args.model, args.weights, args.scale)
    if args.faces:
        validate_model(args.face_model, args.face_weights, None)


def print_summary(summary, log=print) -> None:
    for line in summary.lines():
        log(line)


def prepare(args) -> None:
    """Everything the image and dataset jobs check before Ray starts (one line each)."""
    check_paths(args)
    args.model = args.model or default_model(args.scale)
    validate_models(args)


@exit_on_input_error
def main(argv=None) -> int:
    args = parse_args(argv)
    from pipeline.listing import list_sources
    from pipeline.lock import JobLock
    prepare(args)
    files = list_sources(args.src, exclude=[args.dst])
    outputs = plan_files(args, files)      # before Ray and before DST is written to: it may refuse the job
    if args.dry_run:
        bad = [f for f in files if not f.ok]
        print(f"{len(files)} file(s) under {args.src}: {len(files) - len(bad)} to upscale with {args.model}, "
              f"{len(bad)} unreadable")
        for f in files[:50]:
            print(f"  {f.rel} -> {outputs[f.rel]}" if f.ok else f"  {f.error}")
        if len(files) > 50:
            print(f"  ... and {len(files) - 50} more")
        return 0
    state_dir(args.dst).mkdir(parents=True, exist_ok=True)
    with JobLock(state_dir(args.dst) / "job", what="rayscale job on this DST"):
        connect_ray(args)
        try:
            summary, manifest, settings = run_images(args, files, outputs=outputs)
        except KeyboardInterrupt:
            print(f"{args.dst}: interrupted; finished images are kept and recorded; rerun to continue",
                  file=sys.stderr)
            return 130
        print_summary(summary)
        if args.reference or args.downscale:
            write_quality_report(args, summary, manifest, settings, state_dir(args.dst) / "report")
    if summary.failed:
        print(f"{len(summary.failed)} of {len(files)} image(s) failed; see above and "
              f"`rayscale manifest failed {args.dst}`", file=sys.stderr)
        return 1
    print(f"wrote {summary.entries} image(s) to {args.dst} ({summary.reused} already done)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Upscale a video on Ray: a private embedded Ray by default, an existing cluster with --address
HOST:6379, and unchanged under `ray job submit --working-dir . -- python jobs/upscale_video.py ...`
(with absolute paths there: the job runs in a temporary copy of the working dir).

    python jobs/upscale_video.py in.mp4 out.mp4 --model bicubic --scale 2
    python jobs/upscale_video.py in.mp4 out.mp4 --model rdn --weights RDN_x2.pth --scale 2 --tile 256
    python jobs/upscale_video.py in.mp4 out.mp4 --model zssr --budget 300 --scale 2
"""
from __future__ import annotations

import argparse
import functools
import os
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a plain script from a checkout
    sys.path.insert(0, str(ROOT))

from jobs.stages import (add_compute_args, add_model_args, annotation_options, build_stages,  # noqa: E402
                         degradation_of)
from jobs.common import (add_ray_args, check_job_paths, connect_ray, default_model,  # noqa: E402
                         end_ray, exit_on_input_error, looks_like_path, validate_input, validate_model,
                         validate_output)


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("input", help="source video (anything FFmpeg reads)")
    ap.add_argument("output", help="output video; the container follows the extension (.mp4, .mkv, .mov)")
    add_model_args(ap)
    g = ap.add_argument_group("zssr (--model zssr: one net trained per shot on the video itself)")
    g.add_argument("--budget", default="300",
                   help="training per shot: iterations per scale step (e.g. 300) or seconds with an s suffix (e.g. 60s)")
    g.add_argument("--zssr-frames-per-shot", type=int, default=3, help="frames of each shot to train on")
    g.add_argument("--zssr-ensemble", action="store_true",
                   help="8-way self-ensemble at test time (8x slower per frame; off for video by default)")
    g.add_argument("--zssr-cut-threshold", type=float, default=0.3, help="scene-cut histogram distance (0-1)")
    g = ap.add_argument_group("encoding")
    g.add_argument("--encoder", default="libx264",
                   help="libx264, libx265, libsvtav1, ffv1, h264_nvenc, hevc_nvenc (where present)")
    g.add_argument("--crf", type=int, default=18, help="quality (CRF, or CQ for NVENC)")
    g.add_argument("--preset", default=None, help="encoder preset (e.g. medium, slow, p5)")
    g.add_argument("--pix-fmt", default=None, help="output pixel format (default: the source's)")
    add_compute_args(ap)
    g = ap.add_argument_group("range and recovery")
    g.add_argument("--start", type=float, default=None, help="start time in seconds")
    g.add_argument("--end", type=float, default=None, help="end time in seconds")
    g.add_argument("--segment-frames", type=int, default=48, help="minimum frames per segment (segments start at keyframes)")
    g.add_argument("--resume", action="store_true", help="reuse finished segments of an interrupted run")
    g.add_argument("--keep-work", action="store_true", help="keep the per-segment files and manifest (OUTPUT.parts/)")
    g.add_argument("--overwrite", action="store_true", help="replace OUTPUT when it exists (never the input itself)")
    g.add_argument("--no-progress", action="store_true")
    add_ray_args(ap)
    return ap.parse_args(argv)


@exit_on_input_error
def main(argv=None) -> int:
    args = parse_args(argv)
    from pipeline.lock import JobLock
    from pipeline.video import check_output, work_dir

    # every check that needs no Ray comes first: a refusal costs no start-up and leaves nothing behind
    check_job_paths(input=args.input, output=args.output, weights=args.weights,
                    model=args.model if args.model and looks_like_path(args.model) else None)
    validate_input(args.input)
    # an OUT beside this job's own work folder is this job's: a kill after the output was renamed
    # into place but before the work was cleared (faces table, clean-up) is finished by --resume
    own_output = args.resume and (work_dir(args.output) / "manifest").is_dir()
    validate_output(args.output, args.input, overwrite=args.overwrite or own_output)
    check_output(args.output)
    model = args.model or default_model(args.scale)
    degradation = degradation_of(args)
    if model == "sftgan" or args.faces or args.save_segmentation:
        from jobs.upscale_images import validate_models
        args.model = model
        validate_models(args)
    elif model != "zssr":
        validate_model(model, args.weights, args.scale, degradation=degradation)
    info = _check_output_size(args, model)
    # workers of a cluster run in other folders (a copy of the checkout): give them absolute paths
    args.input, args.output = os.path.abspath(args.input), os.path.abspath(args.output)
    if args.weights:
        args.weights = os.path.abspath(args.weights)
    if Path(model).is_file():
        model = os.path.abspath(model)
    wdir = work_dir(args.output)
    with JobLock(wdir):  # one job per output: a second one is refused, not let loose in the same work folder
        had_work = wdir.exists()
        try:
            code = _run(args, model, degradation, info)
        except BaseException as e:
            from models import CheckpointError, UnknownCheckpoint
            from pipeline.errors import InputError
            if isinstance(e, (InputError, CheckpointError, UnknownCheckpoint)) and not had_work:
                shutil.rmtree(wdir, ignore_errors=True)  # refused: leave nothing behind
            raise
        if code in (0, 3) and not args.keep_work:
            # the work folder goes last, after Ray's shutdown: a job killed before it is gone is
            # still one --resume finishes (OUT kept), not a finished OUT that --resume refuses
            end_ray()
            shutil.rmtree(wdir, ignore_errors=True)
        return code


def _check_output_size(args, model: str):
    """An output larger than the encoder takes is refused before Ray starts (H.264: 16384).
    Returns the source's VideoInfo."""
    from jobs.stages import model_scale
    from pipeline.encode import check_size
    from pipeline.errors import InputError
    from pipeline.probe import probe
    if model == "sftgan":
        import models
        scale = models.detect(args.weights).scale
    else:
        scale = model_scale(model, args.weights, args.scale)
    info = probe(args.input)
    problem = check_size(args.encoder, info.width * scale, info.height * scale)
    if problem:
        raise InputError(f"{args.output}: {problem}")
    return info


def _run(args, model: str, degradation: dict, info) -> int:
    from jobs.stages import lossy_note
    from pipeline.encode import EncodeSettings
    from pipeline.probe import lossy
    from pipeline.video import StageSpec, VideoJob, run, work_dir

    connect_ray(args)
    if model == "zssr":
        from jobs.stages import _placement
        gpus, threads = _placement(args, model)
        factory, identity = _zssr_factory(args, "cuda" if gpus else "cpu", gpus)
        stages = [StageSpec("upscale", factory, actors=args.actors, gpus_per_actor=gpus, threads=threads,
                            identity=identity)]
    else:
        stages = build_stages(args, model)
    wdir = work_dir(args.output)
    ann = annotation_options(args, faces_table=args.output + ".faces.parquet", parts=str(wdir / "faces"),
                             gallery=args.output + ".faces.png")
    job = VideoJob(args.input, args.output, stages,
                   encode=EncodeSettings(args.encoder, args.crf, args.preset, args.pix_fmt),
                   batch_size=args.batch_size, segment_frames=args.segment_frames,
                   start=args.start, end=args.end, resume=args.resume, keep_work=True,   # main() removes it
                   progress=not args.no_progress, fuse=not args.no_fuse, annotations=ann)
    try:
        summary = run(job)
    except KeyboardInterrupt:
        return 130
    note = lossy_note(model, {args.input: {"lossy": lossy(info)}},
                      what=f"{args.input}: lossy source ({info.codec}, {info.pix_fmt})")
    if note:
        summary.notes.append(note)
    for line in summary.lines():
        print(line)
    if summary.failed:
        print(f"{args.output}: not written: {len(summary.failed)} segment(s) failed; fix the cause and rerun "
              f"with --resume to keep the finished ones", file=sys.stderr)
        return 1
    if summary.incomplete:
        print(f"wrote {args.output}, incomplete: the source is truncated (exit code 3)", file=sys.stderr)
        return 3
    print(f"wrote {args.output}")
    return 0


def _zssr_factory(args, device: str, gpus: float):
    """Find the shots of the selected range, start one training task per shot, return the stage factory."""
    import numpy as np
    from operators.zssr import ZSSRUpscaler, parse_budget
    from pipeline.zssr_shots import launch_training
    from pipeline.errors import InputError
    from pipeline.probe import probe
    from pipeline.shots import detect_shots
    from pipeline.video import _to_pts
    try:
        max_iters, max_seconds = parse_budget(args.budget)
    except ValueError as e:
        raise InputError(f"--budget: {e}") from None
    scale = args.scale or 2
    info = probe(args.input)
    lo = 0 if args.start is None else int(np.searchsorted(info.pts, _to_pts(args.start, info)))
    hi = info.frame_count if args.end is None else int(np.searchsorted(info.pts, _to_pts(args.end, info)))
    shots = [(max(a, lo), min(b, hi - 1)) for a, b in detect_shots(args.input, info, args.zssr_cut_threshold)
             if b >= lo and a < hi]
    if not shots:
        raise InputError(f"{args.input}: no frames in the selected time range")
    print(f"zssr: {len(shots)} shot(s), training {args.zssr_frames_per_shot} frame(s) each, budget {args.budget}",
          file=sys.stderr)
    refs = launch_training(info, shots, scale, args.zssr_frames_per_shot, max_iters, max_seconds,
                           device=device, num_gpus=min(gpus, 1) if gpus else 0)
    factory = functools.partial(ZSSRUpscaler, scale, shots, refs, ensemble=args.zssr_ensemble, device=device,
                                tile=args.tile or 512)
    identity = (f"zssr:{scale}:{args.budget}:{args.zssr_frames_per_shot}:{args.zssr_ensemble}:"
                f"{args.zssr_cut_threshold}:{shots}")
    return factory, identity


if __name__ == "__main__":
    sys.exit(main())

"""SFTGAN route, fused (segmentation + SFTGAN in one actor) against unfused (`--no-fuse`): frames/s
of the video job and the bytes that cross between processes through Ray's object store.

    python benchmarks/sftgan_fusion.py --frames 16 --size 160x96

The clip pans across a real outdoor photo (../shared/data/outdoor/OST, MATLAB bicubic x1/4 per frame,
a synthetic pattern without ../shared). Checkpoints are official-layout OutdoorSceneSeg and SFTGAN
(PyTorch variant) state dicts with random weights drawn by fan-in; `--full` builds the published
widths (ResNet-101 segmenter, 16 SFT blocks), the default the small widths of the tests
(tests/test_sftgan_route.py SEG_SMALL, tests/test_model_sftgan.py SMALL), so the bytes (which do not
depend on the widths) weigh as much as they can against the compute.

Both jobs run side by side in this one run (`jobs/upscale_video.py`, embedded Ray, same batch size
and threads). The bytes are the engine's envelopes ({"columns", "meta"}, pickled with protocol 5 as
Ray stores them) at each process boundary, computed in this process by running the same operators
on the same decoded batches and applying the engine's column pruning (`keep`: what a later stage or
the sink reads): source -> first pool, between the pools (unfused only), last pool -> writer.
"""
from __future__ import annotations

import argparse
import os
import pickle
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import av  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from benchmarks.video_job import run_video_job  # noqa: E402

SEG_SMALL = dict(stem=(4, 4, 8), stage_blocks=(1, 1, 1, 1), stage_mid=(4, 6, 6, 8),
                 stage_out=(12, 16, 20, 24), head_mid=10, num_classes=8)
SFT_SMALL = dict(nf=8, num_blocks=2, cond_nf=4, sft_hidden=6, seg_nc=8, cond_hidden=10, cond_mid_layers=1)


def random_sd(net: torch.nn.Module, seed: int) -> dict:
    """Conv weights N(0, 1/sqrt(fan_in)), BatchNorm around identity: activations stay in range
    through any depth, so the cost is the real network's."""
    g = torch.Generator().manual_seed(seed)
    sd = net.state_dict()
    for name, t in sd.items():
        if not t.is_floating_point():
            continue
        if t.ndim == 4:
            t.normal_(0, 1.0 / max(1, t[0].numel()) ** 0.5, generator=g)
        elif name.endswith(("running_var", "weight")):
            t.uniform_(0.5, 1.5, generator=g)
        else:
            t.uniform_(-0.1, 0.1, generator=g)
    return {k: v.clone() for k, v in sd.items()}


def make_checkpoints(folder: Path, full: bool) -> tuple[str, str]:
    from models.outdoorsceneseg import OutdoorSceneSeg
    from models.sftgan import VARIANT_PYTORCH, SFTNet
    seg = OutdoorSceneSeg() if full else OutdoorSceneSeg(**SEG_SMALL)
    sft = SFTNet(VARIANT_PYTORCH) if full else SFTNet(VARIANT_PYTORCH, **SFT_SMALL)
    seg_path, sft_path = folder / "segmentation_OST_bic.pth", folder / "SFTGAN_noBN_OST_bg.pth"
    torch.save(random_sd(seg, 0), seg_path)
    torch.save(random_sd(sft, 1), sft_path)
    return str(sft_path), str(seg_path)


def make_clip(path: Path, frames: int, w: int, h: int) -> None:
    """A pan across an outdoor photo: each frame an HR crop (4h x 4w) taken down x4 the authors' way."""
    from PIL import Image
    from models.imresize import imresize
    photo = Path(os.environ.get("RAYSCALE_SHARED", ROOT.parent / "shared")) / "data" / "outdoor" / "OST" / "OST_013.png"
    if photo.is_file():
        hr = np.asarray(Image.open(photo).convert("RGB"))
        step = max(1, (hr.shape[1] - 4 * w) // max(1, frames))
        lrs = [imresize(hr[:4 * h, i * step:i * step + 4 * w], 0.25) for i in range(frames)]
    else:
        yy, xx = np.mgrid[0:h, 0:w]
        lrs = [np.stack([(xx * 3 + i) % 256, (yy * 5) % 256, (xx + yy) % 256], -1).astype(np.uint8)
               for i in range(frames)]
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=25, options={"crf": "12"})
        s.width, s.height, s.pix_fmt = w, h, "yuv444p"
        for lr in lrs:
            for p in s.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(lr), format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)


def run_job(clip: Path, out: Path, sft: str, seg: str, batch: int, threads: int, fuse: bool, actors: int) -> dict:
    res = run_video_job([str(clip), str(out), "--model", "sftgan", "--weights", sft, "--seg-weights", seg,
                         "--batch-size", str(batch), "--threads", str(threads), "--actors", str(actors)]
                        + ([] if fuse else ["--no-fuse"]))
    res["stages"] = res["stages_line"]
    return res


def envelope_bytes(columns: dict, meta: dict) -> int:
    """What Ray stores for one envelope: pickle protocol 5 (arrays as out-of-band buffers)."""
    bufs: list = []
    head = pickle.dumps({"columns": columns, "meta": meta}, protocol=5, buffer_callback=bufs.append)
    return len(head) + sum(b.raw().nbytes for b in bufs)


def crossing_bytes(clip: Path, sft: str, seg: str, batch: int, threads: int) -> dict:
    """Bytes at each process boundary of both layouts, from the operators run here on the job's batches."""
    from operators.segment import Segmenter
    from operators.sftgan import SFTGANUpscaler
    from pipeline.decode import decode_segment
    from pipeline.probe import probe
    from pipeline.segments import plan_segments
    from pipeline.video import VideoSink
    torch.set_num_threads(threads)
    info = probe(str(clip))
    segs = plan_segments(info.pts, info.keyframe_pts, 10 ** 9)
    sink_reads = set(("frames", "index", "pts", "alpha", "repeated"))      # VideoSink.reads without annotations
    assert VideoSink is not None
    seg32, seg16 = Segmenter(seg, compact=False), Segmenter(seg, compact=True)
    sftop = SFTGANUpscaler(sft)
    keep_last = sink_reads | {"frames", "index", "pts"}
    keep_mid = keep_last | set(SFTGANUpscaler.reads)
    tot = dict(source=0, mid=0, out_fused=0, out_unfused=0, maps32=0, maps16=0, frames=0, hr_frames=0, max_diff=0)
    meta = {"item": "seg0", "warnings": [], "timings": {"decode": 0.0}, "units": batch}
    for s in segs:
        for b in decode_segment(info, s, batch):
            cols = {k: v for k, v in b.items() if k not in ("segment", "warnings", "timings")}
            tot["source"] += envelope_bytes(cols, meta)
            tot["frames"] += len(cols["frames"])
            a32 = seg32(cols)                                   # fused: float32 maps stay in the actor
            out_f = {k: v for k, v in sftop(a32).items() if k in keep_last}
            a16 = {k: v for k, v in seg16(cols).items() if k in keep_mid}     # unfused: float16 maps travel
            out_u = {k: v for k, v in sftop(a16).items() if k in keep_last}
            tot["maps32"] += a32["segmentation"].nbytes
            tot["maps16"] += a16["segmentation"].nbytes
            tot["mid"] += envelope_bytes(a16, meta)
            tot["out_fused"] += envelope_bytes(out_f, meta)
            tot["out_unfused"] += envelope_bytes(out_u, meta)
            tot["hr_frames"] += out_f["frames"].nbytes
            tot["max_diff"] = max(tot["max_diff"], int(np.abs(out_f["frames"].astype(int)
                                                               - out_u["frames"].astype(int)).max()))
    return tot


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--frames", type=int, default=16)
    ap.add_argument("--size", default="160x96", help="LR frame size WxH (output is x4)")
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--fused-actors", type=int, default=2,
                    help="actors of the fused pool (default 2: as many threads in all as the unfused run's two pools)")
    ap.add_argument("--unfused-actors", type=int, default=1, help="actors per pool when unfused")
    ap.add_argument("--abba", action="store_true", help="run fused, unfused, unfused, fused and average")
    ap.add_argument("--full", action="store_true", help="published widths instead of the tests' small ones")
    args = ap.parse_args()
    w, h = map(int, args.size.split("x"))
    work = Path(tempfile.mkdtemp(prefix="rayscale-sftbench-"))
    try:
        sft, seg = make_checkpoints(work, args.full)
        clip = work / "pan.mp4"
        make_clip(clip, args.frames, w, h)
        # ABBA order (fused, unfused, unfused, fused) with --abba: a shared machine's load drifts
        runs: dict[bool, list[dict]] = {True: [], False: []}
        for k, fuse in enumerate((True, False, False, True) if args.abba else (True, False)):
            runs[fuse].append(run_job(clip, work / f"out{k}.mp4", sft, seg, args.batch_size, args.threads, fuse,
                                      args.fused_actors if fuse else args.unfused_actors))
        fused, unfused = ({"fps": np.mean([r["fps"] for r in rs]), "steady": np.mean([r["steady"] for r in rs]),
                           "wall": np.mean([r["wall"] for r in rs]), "stages": " / ".join(r["stages"] for r in rs)}
                          for rs in (runs[True], runs[False]))
        b = crossing_bytes(clip, sft, seg, args.batch_size, args.threads)
        MiB = 1 << 20
        n = b["frames"]
        print(f"{n} frames {w}x{h} -> {4 * w}x{4 * h}, {'published' if args.full else 'small (tests)'} widths, "
              f"batch {args.batch_size}, {args.threads} torch thread(s) per actor, fused: {args.fused_actors} actor(s), "
              f"unfused: {args.unfused_actors} per pool{', mean of 2 runs each (ABBA)' if args.abba else ''}")
        print(f"{'':28s} {'fused':>10s} {'unfused':>10s}  ratio fused/unfused")
        print(f"{'frames/s, end to end':28s} {fused['fps']:10.3f} {unfused['fps']:10.3f}  {fused['fps'] / unfused['fps']:.2f}")
        print(f"{'frames/s, steady':28s} {fused['steady']:10.3f} {unfused['steady']:10.3f}  "
              f"{fused['steady'] / unfused['steady']:.2f}")
        print(f"{'job wall s':28s} {fused['wall']:10.1f} {unfused['wall']:10.1f}")
        fused_total = b["source"] + b["out_fused"]
        unfused_total = b["source"] + b["mid"] + b["out_unfused"]
        print(f"{'MiB source -> first pool':28s} {b['source'] / MiB:10.2f} {b['source'] / MiB:10.2f}")
        print(f"{'MiB segment -> sftgan':28s} {0:10.2f} {b['mid'] / MiB:10.2f}   (float16 maps {b['maps16'] / MiB:.2f})")
        print(f"{'MiB last pool -> writer':28s} {b['out_fused'] / MiB:10.2f} {b['out_unfused'] / MiB:10.2f}")
        print(f"{'MiB through the store':28s} {fused_total / MiB:10.2f} {unfused_total / MiB:10.2f}  "
              f"{fused_total / unfused_total:.2f}")
        print(f"float32 maps kept inside the fused actor: {b['maps32'] / MiB:.2f} MiB "
              f"({b['maps32'] / n / MiB:.2f} MiB per frame; at 4K output: {8 * 3840 * 2160 * 4 / 1e6:.0f} MB float32, "
              f"{8 * 3840 * 2160 * 2 / 1e6:.0f} MB float16 per frame)")
        print(f"per frame through the store: fused {fused_total / n / MiB:.3f} MiB, unfused {unfused_total / n / MiB:.3f} MiB; "
              f"fused vs unfused output, in-process: max difference {b['max_diff']} levels")
        print(f"fused   {fused['stages']}")
        print(f"unfused {unfused['stages']}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

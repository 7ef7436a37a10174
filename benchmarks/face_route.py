"""What the face route costs per frame beside the plain upscale of the same clip, the face-SR
pool's faces/s, and how both scale with the number of faces per frame.

    python benchmarks/face_route.py --frames 24 --faces 1 4 8

Clips made here: real face photos (../shared/data/faces: gfpgan/cropped_faces, kair_real_faces)
downscaled to `--face-px` (20 px: the 16->64 class the x4 face model restores) and pasted on a real
photo background (BSD100), drifting 1 px per frame, 1, 4 or 8 faces per frame. Each clip goes
through `jobs/upscale_video.py` twice in this one run: plain (`--model rayscale-x4`) and with
`--faces --face-model rayscale-face-x4` (rayscale-x4 as a stand-in when the face weights are not
there; the output says which). Printed: frames/s of both (end to end and steady), the face
route's worker-seconds per frame by stage (the job's own "time per stage" line: detect, track,
align, face SR, paste), the faces restored (OUT.faces.parquet) and the face-SR stage's faces/s.
`--hamilton N` adds the first N frames of ../shared/data/video/face_recognition/short_hamilton_clip.mp4.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import av  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks.video_job import run_video_job  # noqa: E402

SHARED = Path(os.environ.get("RAYSCALE_SHARED", ROOT.parent / "shared"))
FACE_FILES = ["gfpgan/cropped_faces/Adele_crop.png", "gfpgan/cropped_faces/Julia_Roberts_crop.png",
              "gfpgan/cropped_faces/Justin_Timberlake_crop.png", "gfpgan/cropped_faces/Paris_Hilton_crop.png",
              "kair_real_faces/face_01.png", "kair_real_faces/face_04.png", "kair_real_faces/face_08.png",
              "kair_real_faces/face_09.png", "kair_real_faces/face_13.png"]
STAGES = ("face_detect", "face_track", "face_align", "upscale", "face_sr", "face_paste")


def make_clip(path: Path, n_faces: int, frames: int, w: int, h: int, face_px: int) -> None:
    from PIL import Image
    bg_file = SHARED / "data" / "BSD100" / "HR" / "img_012.png"
    if bg_file.is_file():
        bg = np.asarray(Image.open(bg_file).convert("RGB").resize((w, h), Image.BICUBIC))
    else:
        yy, xx = np.mgrid[0:h, 0:w]
        bg = np.stack([(xx * 2) % 256, (yy * 3) % 256, (xx + yy) % 256], -1).astype(np.uint8)
    faces = [np.asarray(Image.open(SHARED / "data" / "faces" / f).convert("RGB").resize((face_px, face_px),
                                                                                          Image.LANCZOS))
             for f in FACE_FILES[:n_faces]]
    cols = 4
    gx, gy = w // (cols + 1), h // 3
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=25, options={"crf": "14"})
        s.width, s.height, s.pix_fmt = w, h, "yuv420p"
        for t in range(frames):
            frame = bg.copy()
            for k, face in enumerate(faces):
                x = gx * (k % cols + 1) - face_px // 2 + t % 12      # drift right 1 px/frame, wrap every 12
                y = gy * (k // cols + 1) - face_px // 2
                frame[y:y + face_px, x:x + face_px] = face
            for p in s.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)


def cut(src: Path, dst: Path, frames: int) -> None:
    with av.open(str(src)) as i, av.open(str(dst), "w") as o:
        s = o.add_stream("libx264", rate=i.streams.video[0].average_rate, options={"crf": "14"})
        s.width, s.height, s.pix_fmt = i.streams.video[0].width, i.streams.video[0].height, "yuv420p"
        for n, f in enumerate(i.decode(video=0)):
            if n >= frames:
                break
            for p in s.encode(av.VideoFrame.from_ndarray(f.to_ndarray(format="rgb24"), format="rgb24")):
                o.mux(p)
        for p in s.encode():
            o.mux(p)


def run_job(clip: Path, out: Path, extra: list[str], threads: int) -> dict:
    res = run_video_job([str(clip), str(out), "--model", "rayscale-x4", "--threads", str(threads)] + extra)
    res["notes"] = [x for x in res.pop("lines") if x.startswith(("note", "warning"))]
    table = Path(str(out) + ".faces.parquet")
    if table.is_file():
        import pyarrow.parquet as pq
        t = pq.read_table(table, columns=["restored", "track"] if "track" in pq.read_schema(table).names
                          else ["restored"])
        res["faces"] = int(sum(t["restored"].to_pylist()))
        res["rows"] = t.num_rows
        if "track" in t.column_names:
            res["tracks"] = len(set(t["track"].to_pylist()))
    return res


def operator_rates(face_model: str, clip_dir: Path, ks: list[int], w: int, h: int, face_px: int,
                   threads: int, reps: int = 3) -> None:
    """In one process (no Ray): the face-SR operator's faces/s with K faces per frame, 4 frames per
    batch (the job's stage times are rounded to 0.1 s, too coarse for it), and detection's cost per
    frame with and without the upsampling that finds small faces."""
    import torch
    from PIL import Image
    from operators.faces.detect import FaceDetector
    from operators.faces.sr import FaceSR
    torch.set_num_threads(threads)
    sr = FaceSR(model=face_model)
    side = 16
    crops = np.stack([np.asarray(Image.open(SHARED / "data" / "faces" / f).convert("RGB").resize((side, side), Image.BICUBIC))
                      for f in FACE_FILES[:max(ks)]])
    print(f"face SR operator ({face_model}, {side}x{side} crops, 4 frames per batch, {threads} thread(s)):")
    for k in ks:
        batch = {"faces_crops": np.broadcast_to(crops[:k], (4, k, side, side, 3)).copy(),
                 "faces_count": np.full(4, k, np.int32)}
        sr(batch)
        t0 = time.perf_counter()
        for _ in range(reps):
            sr(batch)
        dt = (time.perf_counter() - t0) / reps
        print(f"  {k} face(s)/frame: {4 * k / dt:7.1f} faces/s, {1000 * dt / 4:6.1f} ms per frame")
    for k in ks:
        clip = clip_dir / f"faces{k}.mp4"
        if not clip.is_file():
            make_clip(clip, k, 8, w, h, face_px)
        with av.open(str(clip)) as c:
            frames = np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)][:8])
        batch = {"frames": frames, "index": np.arange(len(frames)), "pts": np.arange(len(frames))}
        for up in (1280, 0):
            det = FaceDetector(upsample_to=up)
            det(batch)
            t0 = time.perf_counter()
            out = det(batch)
            dt = (time.perf_counter() - t0) / len(frames)
            print(f"  detect, {k} face(s) of {face_px} px in {w}x{h}, upsample_to={up}: {1000 * dt:6.1f} ms per frame, "
                  f"found {out['faces_count'].mean():.1f} per frame")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--frames", type=int, default=24)
    ap.add_argument("--faces", type=int, nargs="+", default=[1, 4, 8])
    ap.add_argument("--size", default="320x180")
    ap.add_argument("--face-px", type=int, default=20)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--hamilton", type=int, default=0, help="also the first N frames of the Hamilton clip")
    ap.add_argument("--operators-only", action="store_true", help="only the in-process operator timings")
    args = ap.parse_args()
    w, h = map(int, args.size.split("x"))
    face_model = "rayscale-face-x4"
    if not (ROOT / "models" / "weights" / "rayscale-face-x4.safetensors").is_file():
        face_model = "rayscale-x4"
    work = Path(tempfile.mkdtemp(prefix="rayscale-facebench-"))
    rows = []
    try:
        if args.operators_only:
            operator_rates(face_model, work, args.faces, w, h, args.face_px, args.threads)
            return
        clips = []
        for k in args.faces:
            clip = work / f"faces{k}.mp4"
            make_clip(clip, k, args.frames, w, h, args.face_px)
            clips.append((f"{k} face(s)/frame, {w}x{h}, {args.face_px} px", clip))
        ham = SHARED / "data" / "video" / "face_recognition" / "short_hamilton_clip.mp4"
        if args.hamilton and ham.is_file():
            clip = work / "hamilton.mp4"
            cut(ham, clip, args.hamilton)
            clips.append(("Hamilton clip, 640x360", clip))
        for label, clip in clips:
            plain = run_job(clip, work / f"{clip.stem}_plain.mp4", [], args.threads)
            face = run_job(clip, work / f"{clip.stem}_faces.mp4", ["--faces", "--face-model", face_model], args.threads)
            rows.append((label, plain, face))
        print(f"face model {face_model}{' (stand-in: no rayscale-face-x4 weights)' if face_model == 'rayscale-x4' else ''}, "
              f"background rayscale-x4, {args.threads} torch thread(s) per actor, {args.frames} frames per synthetic clip")
        print("| clip | faces restored | plain frames/s (steady) | face route frames/s (steady) | route / plain steady |"
              " face stages CPU-s/frame: detect, track, align, SR, paste | upscale CPU-s/frame | face SR faces/s (job; stage seconds rounded to 0.1) |")
        print("|---|---|---|---|---|---|---|---|")
        for label, p, f in rows:
            n = f["frames"]
            st = f["stages"]
            per = ", ".join(f"{1000 * st.get(k, 0) / n:.0f}" for k in STAGES if k != "upscale")
            fsr = f.get("faces", 0) / st["face_sr"] if st.get("face_sr") else 0.0
            print(f"| {label} | {f.get('faces', 0)} ({f.get('faces', 0) / n:.1f}/frame) | {p['fps']:.2f} ({p['steady']:.2f}) "
                  f"| {f['fps']:.2f} ({f['steady']:.2f}) | {f['steady'] / p['steady']:.2f} | {per} ms "
                  f"| plain {1000 * p['stages'].get('upscale', 0) / n:.0f} ms, route {1000 * st.get('upscale', 0) / n:.0f} ms "
                  f"| {fsr:.1f} |")
        operator_rates(face_model, work, args.faces, w, h, args.face_px, args.threads)
        for label, p, f in rows:
            print(f"{label}: plain stages {p['stages']}; face route stages {f['stages']}; {f['notes']}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

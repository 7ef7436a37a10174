"""The face route's quality in the frame: what a pasted face gains over the plain upscale.

FSRNet's CelebA HR faces (../shared/data/faces_eval/celeba_fsrnet, never used for training) are
scaled to `--face-px` HR pixels and put four to a frame on a BSD100 photo (HR 480x256); the LR frame
is MATLAB bicubic `imresize(HR, 1/4)`, so the faces are `face-px / 4` LR pixels wide. Each frame
goes through the face operators in one process (detect on LR -> align -> face SR -> paste) over
two backgrounds, bicubic and `rayscale-x4`. Scored: PSNR-Y / SSIM of the middle 60% of each face
against the HR frame (benchmarks/quality.py's `y_metrics`, no shave), for the background alone
and with the face pasted, and with the `identity` face model (bicubic of the crop) as a check of
the paste itself. Faces the detector misses count as the background (their score is unchanged).

    python benchmarks/face_paste_quality.py --frames 25                 # 100 faces, 64 px HR (16 px LR)
    python benchmarks/face_paste_quality.py --frames 25 --face-px 80

`--whole 20 24 28 32 36 40`: each held-out face photo on its own (the 10 Helen faces of
../shared/data/faces/fsrnet_helen/HR and the first `--celeba` CelebA faces), the whole 128x128 HR
image reduced so that its LR is SIDE px (MATLAB bicubic, then 1/4), as a user would give the route
a small portrait; the face fills most of the frame, so faces of ~12 to ~30 LR px. Per face, the
PSNR-Y of the middle 60% of the image (where the face is, whatever the detector found) of the
route against the plain `rayscale-x4` upscale of the same LR: mean, better / worse counts and the
worst face, for the route as shipped and with each of its two rules undone (faces shrunk into the
crop down to zoom 0.5 restored; every restored face pasted, `consistency=None`).

    python benchmarks/face_paste_quality.py --whole 20 24 28 32 36 40 --celeba 100
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks.face_quality import DATA  # noqa: E402
from benchmarks.quality import SHARED, read_rgb, y_metrics  # noqa: E402


def frames(n: int, face_px: int, seed: int = 0):
    """[(HR frame 256x480 uint8, [(x, y) of each face's top-left in HR])] with 4 faces each."""
    from models.imresize import imresize
    rng = np.random.default_rng(seed)
    faces = sorted((DATA / "HR").glob("*.jpg"))
    photos = sorted((SHARED / "data" / "BSD100" / "HR").glob("*.png"))
    out = []
    for i in range(n):
        bg = read_rgb(photos[i % len(photos)])
        if bg.shape[0] > bg.shape[1]:
            bg = np.ascontiguousarray(bg.transpose(1, 0, 2))
        hr = np.ascontiguousarray(bg[:256, :480])
        spots = []
        for k in range(4):
            face = imresize(read_rgb(faces[4 * i + k]), face_px / 128)
            x = 120 * k + int(rng.integers(4, 120 - face_px - 4)) // 4 * 4
            y = int(rng.integers(8, 256 - face_px - 8)) // 4 * 4
            hr[y:y + face_px, x:x + face_px] = face
            spots.append((x, y))
        out.append((hr, spots))
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--frames", type=int, default=25)
    ap.add_argument("--face-px", type=int, default=64, help="HR face side (LR = this / 4)")
    ap.add_argument("--face-model", default="rayscale-face-x4")
    ap.add_argument("--whole", type=int, nargs="*", default=None, metavar="SIDE",
                    help="whole face photos reduced to SIDE LR px instead of faces on a photo")
    ap.add_argument("--celeba", type=int, default=100, help="CelebA faces for --whole")
    a = ap.parse_args(argv)
    if a.whole:
        return whole(a.whole, a.celeba, a.face_model)

    from models.imresize import imresize
    from operators.faces.align import FaceAlign
    from operators.faces.detect import FaceDetector
    from operators.faces.paste import FacePaste
    from operators.faces.sr import FaceSR
    from operators.upscale import Upscaler

    cv2.setNumThreads(1)
    detect, align = FaceDetector(), FaceAlign(crop_size=16)
    face_models = {"identity": FaceSR("identity", scale=4), a.face_model: FaceSR(a.face_model, device="cpu")}
    backgrounds = {"bicubic": Upscaler("bicubic", scale=4, device="cpu"), "rayscale-x4": Upscaler("rayscale-x4", device="cpu")}
    scores: dict[tuple[str, str], list] = {}
    found = total = 0
    for hr, spots in frames(a.frames, a.face_px):
        lr = imresize(hr, 0.25)
        b = align(detect({"frames": lr[None]}))
        boxes = b["faces_box"][0, :int(b["faces_count"][0])] * 4
        for bg_name, up in backgrounds.items():
            bg = up({"frames": lr[None]})["frames"]
            rows = {"background": bg[0]}
            for fm_name, fm in face_models.items():
                c = fm(dict(b))
                c["frames"] = bg.copy()
                rows[fm_name] = FacePaste(4)(c)["frames"][0]
            for x, y in spots:
                m = int(0.2 * a.face_px)
                sl = (slice(y + m, y + a.face_px - m), slice(x + m, x + a.face_px - m))
                hit = any(bx0 <= x + a.face_px / 2 <= bx1 and by0 <= y + a.face_px / 2 <= by1
                          for bx0, by0, bx1, by1 in boxes)
                if bg_name == "bicubic":
                    found, total = found + hit, total + 1
                for name, out in rows.items():
                    scores.setdefault((bg_name, name), []).append(y_metrics(out[sl], hr[sl], 0))
    print(f"faces: {total}, {a.face_px} px HR ({a.face_px // 4} px LR), detected {found}; face model {a.face_model}")
    print("| background | background alone | + identity face | + face model | gain |")
    print("|---|---|---|---|---|")
    for bg_name in backgrounds:
        p = {n: np.mean([s[0] for s in scores[(bg_name, n)]]) for n in ("background", "identity", a.face_model)}
        q = {n: np.mean([s[1] for s in scores[(bg_name, n)]]) for n in p}
        print(f"| {bg_name} | {p['background']:.2f} / {q['background']:.4f} | {p['identity']:.2f} / {q['identity']:.4f} "
              f"| {p[a.face_model]:.2f} / {q[a.face_model]:.4f} | {p[a.face_model] - p['background']:+.2f} dB |")


WHOLE_SETS = {"Helen": SHARED / "data" / "faces" / "fsrnet_helen" / "HR", "CelebA": DATA / "HR"}


def whole_images(set_name: str, side: int, limit: int):
    """[(HR uint8 4*side square, LR side square)] of one set's face photos."""
    from models.imresize import imresize
    out = []
    for p in sorted(WHOLE_SETS[set_name].glob("*.jpg"))[:limit]:
        hr = read_rgb(p)
        hr = hr if 4 * side == hr.shape[0] else imresize(hr, 4 * side / hr.shape[0])
        out.append((hr, imresize(hr, 0.25)))
    return out


def route_gains(hr: np.ndarray, lr: np.ndarray, plain: np.ndarray, variants: dict) -> dict:
    """{variant: PSNR-Y gain over the plain upscale in the middle 60% of the image}."""
    h, w = hr.shape[:2]
    sl = (slice(int(0.2 * h), int(0.8 * h)), slice(int(0.2 * w), int(0.8 * w)))
    base = y_metrics(plain[sl], hr[sl], 0)[0]
    return {name: y_metrics(run(lr, plain)[sl], hr[sl], 0)[0] - base for name, run in variants.items()}


def face_route(face_model: str, min_zoom: float = 0.7, consistency="default"):
    """lr, plain HR -> the frame the face route makes (detect, align, face SR, paste), in process."""
    from operators.faces.align import FaceAlign
    from operators.faces.detect import FaceDetector
    from operators.faces.paste import CONSISTENCY, FacePaste
    from operators.faces.sr import FaceSR
    detect, align, sr = FaceDetector(), FaceAlign(crop_size=16, min_zoom=min_zoom), FaceSR(face_model, device="cpu")
    paste = FacePaste(4, consistency=CONSISTENCY if consistency == "default" else consistency)
    counts = {"found": 0, "restored": 0}

    def run(lr, plain):
        b = sr(align(detect({"frames": lr[None]})))
        b["frames"] = plain[None].copy()
        out = paste(b)
        n = int(b["faces_count"][0])
        counts["found"] += n
        counts["restored"] += int(out["faces_pasted"][0, :n].sum())
        return out["frames"][0]
    run.counts = counts
    return run


def whole(sides: list[int], celeba: int, face_model: str) -> None:
    from operators.upscale import Upscaler
    cv2.setNumThreads(1)
    plain_model = Upscaler("rayscale-x4", device="cpu")
    print(f"face model {face_model}, background rayscale-x4; gain = route - plain, PSNR-Y of the middle 60%")
    print("| set | LR side | faces | variant | found / restored | mean gain | better / worse | worst |")
    print("|---|---|---|---|---|---|---|---|")
    totals: dict[str, list] = {}
    for set_name in WHOLE_SETS:
        for side in sides:
            variants = {"route": face_route(face_model),
                        "shrunk faces restored (min_zoom 0.5)": face_route(face_model, 0.5),
                        "every face pasted (no consistency rule)": face_route(face_model, 0.7, None),
                        "before (both undone)": face_route(face_model, 0.5, None)}
            gains = {k: [] for k in variants}
            pics = whole_images(set_name, side, celeba if set_name == "CelebA" else 10)
            for hr, lr in pics:
                plain = plain_model({"frames": lr[None]})["frames"][0]
                for k, v in route_gains(hr, lr, plain, variants).items():
                    gains[k].append(v)
            for k, g in gains.items():
                g = np.array(g)
                totals.setdefault(k, []).extend(g.tolist())
                c = variants[k].counts
                print(f"| {set_name} | {side} | {len(g)} | {k} | {c['found']} / {c['restored']} | {g.mean():+.2f} dB "
                      f"| {(g > 0.005).sum()} / {(g < -0.005).sum()} | {g.min():+.2f} dB |")
    for k, g in totals.items():
        g = np.array(g)
        print(f"all: {k}: {len(g)} faces, mean {g.mean():+.2f} dB, better {(g > 0.005).sum()}, "
              f"worse {(g < -0.005).sum()}, worst {g.min():+.2f} dB")


if __name__ == "__main__":
    main()

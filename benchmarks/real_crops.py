"""Before/after crops of the real clips in ../shared/data/video: one frame per clip, one LR crop,
upscaled x2 by bicubic, rayscale-x2, rayscale-real-x2 and SRMD with the estimated degradation,
side by side in one small PNG (benchmarks/real_crops.png).

    python benchmarks/real_crops.py [--out benchmarks/real_crops.png]
"""
from __future__ import annotations

import argparse
import os
import sys
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import cv2  # noqa: E402
import numpy as np  # noqa: E402

SHARED = Path(os.environ.get("RAYSCALE_SHARED", ROOT.parent / "shared"))
# (clip, frame index, LR crop x, y): a detailed region of each clip
CLIPS = (("video/face_recognition/short_hamilton_clip.mp4", 120, 205, 50),
         ("video/liveportrait/d18.mp4", 100, 170, 195),
         ("video/real-esrgan/onepiece_demo.mp4", 90, 250, 180))
CROP = 72


def frame(path: Path, index: int) -> np.ndarray:
    import av
    with av.open(str(path)) as c:
        for i, f in enumerate(c.decode(video=0)):
            if i == index:
                return f.to_ndarray(format="rgb24")
    raise ValueError(f"{path}: fewer than {index + 1} frames")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "real_crops.png"))
    a = ap.parse_args(argv)
    import torch
    torch.set_num_threads(1)
    from operators.upscale import Upscaler
    ops = {"bicubic": None, "rayscale-x2": Upscaler("rayscale-x2", device="cpu"),
           "rayscale-real-x2": Upscaler("rayscale-real-x2", device="cpu")}
    try:
        ops["SRMD (auto)"] = Upscaler("srmd", scale=2, device="cpu", degradation={"sigma": "auto", "noise": "auto"})
    except ValueError as e:                                   # no wheel: skip the column
        print(f"note: {e}", file=sys.stderr)
    rows = []
    for clip, idx, x, y in CLIPS:
        f = frame(SHARED / "data" / clip, idx)
        lr = np.ascontiguousarray(f[y:y + CROP, x:x + CROP])
        tiles = []
        for name, op in ops.items():
            if op is None:
                from models.imresize import imresize
                up = imresize(lr, 2)
            else:
                with warnings.catch_warnings(record=True) as w:
                    warnings.simplefilter("always")
                    # H.264 4:2:0 frames: the video source marks them lossy
                    up = op({"frames": lr[None], "index": np.zeros(1, np.int64), "lossy": np.ones(1, bool)})["frames"][0]
                for m in w:
                    print(f"{Path(clip).name}: {m.message}", file=sys.stderr)
            t = np.ascontiguousarray(up)
            cv2.putText(t, name, (3, 11), cv2.FONT_HERSHEY_SIMPLEX, 0.33, (0, 0, 0), 2, cv2.LINE_AA)
            cv2.putText(t, name, (3, 11), cv2.FONT_HERSHEY_SIMPLEX, 0.33, (255, 255, 255), 1, cv2.LINE_AA)
            tiles.append(t)
        rows.append(np.concatenate(tiles, axis=1))
    img = np.concatenate(rows, axis=0)
    cv2.imwrite(a.out, img[:, :, ::-1], [cv2.IMWRITE_PNG_COMPRESSION, 9])
    print(f"{a.out}: {img.shape[1]}x{img.shape[0]}, {Path(a.out).stat().st_size // 1024} KB")
    return 0


if __name__ == "__main__":
    sys.exit(main())

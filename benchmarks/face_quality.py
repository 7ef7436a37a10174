"""Face SR quality on FSRNet's own CelebA test pairs (../shared/data/faces_eval/celeba_fsrnet, never
used for training): the shipped face models against bicubic and the general `rayscale-x4`.

Degradation (verified: `pipeline/face_data.py`): FSRNet's LR_8x files are MATLAB bicubic
`imresize(HR, 1/8)` then `imresize(., 8)`; recomputing that from HR matches the files to 42.3 dB (JPEG
noise). So the 16x16 LR is `imresize(HR uint8, 1/8)` (8-bit, MATLAB rounding), and at x4 the 32x32 LR
is `imresize(HR, 1/4)`. Rows:

* x8 (16 -> 128): bicubic = the authors' LR_8x file (FSRNet's "bicubic" input); `rayscale-face-x8`;
  the general `rayscale-x4` applied to the 16x16 LR then MATLAB bicubic x2 ("rayscale-x4 + bicubic
  x2") and the other order, bicubic x2 to 32x32 then `rayscale-x4` ("bicubic x2 + rayscale-x4").
* x4 (32 -> 128): bicubic (MATLAB), `rayscale-x4`, `rayscale-face-x4`.
* x4 (16 -> 64, the face-x4 class: HR = `imresize(HR, 1/2)`): the same three.

Metrics: `benchmarks/quality.py`'s `y_metrics` (Y of MATLAB rgb2ycbcr, `scale` px shaved, SSIM of
ssim_index). Models run through `operators.upscale.Upscaler` (fp32, CPU), as the jobs run them.

    python benchmarks/face_quality.py                 # all 500 pairs
    python benchmarks/face_quality.py --limit 50 --face-x8 /tmp/rsface/rayscale-face-x8.safetensors
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from benchmarks.quality import SHARED, read_rgb, y_metrics  # noqa: E402

DATA = SHARED / "data" / "faces_eval" / "celeba_fsrnet"
PUBLISHED_X8 = {"bicubic": (23.75, 0.6423), "FSRNet": (26.31, 0.7522)}   # CelebA x8, PSNR-Y / SSIM


def eval_pairs(limit: int | None = None, data: Path = DATA) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """[(name, HR 128x128 uint8 RGB, the authors' LR_8x 128x128 uint8 RGB)]."""
    out = []
    for hp in sorted((data / "HR").glob("*.jpg"))[:limit]:
        out.append((hp.stem, read_rgb(hp), read_rgb(data / "LR_8x" / hp.name)))
    return out


def down(img: np.ndarray, s: int) -> np.ndarray:
    from models.imresize import imresize
    return imresize(img, 1.0 / s)                         # uint8 -> uint8, MATLAB rounding


def up(img: np.ndarray, s: int) -> np.ndarray:
    from models.imresize import imresize
    return imresize(img, s)


class Model:
    """A model by name or file, through the upscale operator (fp32)."""

    def __init__(self, name: str):
        from operators.upscale import Upscaler
        self.op = Upscaler(name, device="cpu", precision="fp32")
        self.scale = self.op.scale

    def __call__(self, lr: np.ndarray) -> np.ndarray:
        return self.op({"frames": lr[None], "index": np.zeros(1, np.int64)})["frames"][0]


def run(limit: int | None, face_x4: str, face_x8: str, general: str = "rayscale-x4", log=print) -> dict:
    """{setting: {method: (psnr, ssim, n, seconds)}}"""
    import models
    data = eval_pairs(limit)
    if not data:
        raise FileNotFoundError(f"{DATA}: no pairs")
    have = set(models.shipped_weights())

    def model(name):
        if name in have or Path(name).is_file():
            return Model(name)
        log(f"note: {name} absent; its rows are skipped")
        return None

    g, f4, f8 = model(general), model(face_x4), model(face_x8)
    settings = {
        "x8 (16->128)": (8, lambda hr: hr, lambda hr: down(hr, 8), [
            ("bicubic (LR_8x file)", None),
            ("bicubic (MATLAB)", lambda lr: up(lr, 8)),
            ("rayscale-x4 + bicubic x2", g and (lambda lr: up(g(lr), 2))),
            ("bicubic x2 + rayscale-x4", g and (lambda lr: g(up(lr, 2)))),
            ("rayscale-face-x8", f8),
        ]),
        "x4 (32->128)": (4, lambda hr: hr, lambda hr: down(hr, 4), [
            ("bicubic (MATLAB)", lambda lr: up(lr, 4)),
            ("rayscale-x4", g),
            ("rayscale-face-x4", f4),
        ]),
        "x4 (16->64)": (4, lambda hr: down(hr, 2), lambda hr: down(down(hr, 2), 4), [
            ("bicubic (MATLAB)", lambda lr: up(lr, 4)),
            ("rayscale-x4", g),
            ("rayscale-face-x4", f4),
        ]),
    }
    results: dict = {}
    for setting, (s, make_hr, make_lr, methods) in settings.items():
        hrs = [make_hr(hr) for _, hr, _ in data]
        lrs = [make_lr(hr) for _, hr, _ in data]
        row = {}
        for mname, fn in methods:
            if fn is None and mname != "bicubic (LR_8x file)":
                continue
            ps, ss, t0 = [], [], time.perf_counter()
            for k, (hr, lr) in enumerate(zip(hrs, lrs)):
                sr = data[k][2] if fn is None else fn(lr)
                p, q = y_metrics(sr, hr, s)
                ps.append(p)
                ss.append(q)
            row[mname] = (float(np.mean(ps)), float(np.mean(ss)), len(ps), time.perf_counter() - t0)
            log(f"{setting} {mname}: {row[mname][0]:.2f} dB / {row[mname][1]:.4f} ({len(ps)} faces, "
                f"{row[mname][3]:.1f}s)")
        results[setting] = row
    return results


def table(results: dict) -> str:
    lines = ["| setting | method | PSNR-Y dB | SSIM-Y | faces |", "|---|---|---|---|---|"]
    for setting, row in results.items():
        for m, (p, q, n, _) in row.items():
            lines.append(f"| {setting} | {m} | {p:.2f} | {q:.4f} | {n} |")
        if setting.startswith("x8"):
            for m, (p, q) in PUBLISHED_X8.items():
                lines.append(f"| {setting} | {m} (FSRNet paper, 1000 faces) | {p:.2f} | {q:.4f} | - |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--limit", type=int, default=None, help="first N pairs (all 500 by default)")
    ap.add_argument("--face-x4", default="rayscale-face-x4", help="face x4 model: shipped name or file")
    ap.add_argument("--face-x8", default="rayscale-face-x8", help="face x8 model: shipped name or file")
    ap.add_argument("--general", default="rayscale-x4", help="the general x4 model to compare with")
    ap.add_argument("--threads", type=int, default=1, help="torch threads")
    a = ap.parse_args(argv)
    import torch
    torch.set_num_threads(a.threads)
    if not (DATA / "HR").is_dir():
        print(f"error: {DATA}: the CelebA pairs are not there (set RAYSCALE_SHARED)", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    res = run(a.limit, a.face_x4, a.face_x8, a.general, log=lambda m: print(m, file=sys.stderr))
    print(table(res))
    print(f"\n({time.perf_counter() - t0:.0f}s, {torch.get_num_threads()} torch thread(s), CPU)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

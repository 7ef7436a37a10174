"""Fit the blur estimator's calibration (`operators/estimate.py` `_CALIB`) with the authors' SRMD.

BSD100 img_001..img_050 only (Set5, Set14 and BSD100 img_051..img_100 are for testing): each image
gets one random SRMD degradation per scale (width uniform over SRMD's range, noise 0 for 40% of
them, else uniform 1-50, numpy seed = image number), `calibrate_blur` finds the raw minimiser and
fits width = c . (1, raw, raw^2, n, n raw) (n = noise / 50). Prints the coefficients (paste them
into `_CALIB`) and the mean absolute error before and after calibration. Needs the `[srmd]` extra.

    python benchmarks/blur_calibration.py --scales 2,3,4 --threads 1
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

from benchmarks.quality import SHARED, AuthorsSRMD, read_rgb, srmd_degrade  # noqa: E402


def samples(scale: int, first: int = 1, last: int = 50):
    from operators.estimate import SIGMA_RANGE
    lo, hi = SIGMA_RANGE[scale]
    for i in range(first, last + 1):
        rng = np.random.default_rng(i)
        sigma = float(rng.uniform(lo, hi))
        noise = 0.0 if rng.random() < 0.4 else float(rng.uniform(1, 50))
        hr = read_rgb(SHARED / "data" / "BSD100" / "HR" / f"img_{i:03d}.png")
        h, w = hr.shape[0] // scale * scale, hr.shape[1] // scale * scale
        yield srmd_degrade(hr[:h, :w], scale, sigma, noise, seed=i), sigma, noise


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scales", default="2,3,4")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--save", help="folder to keep the (true, noise, raw) rows in, one .npy per scale")
    a = ap.parse_args(argv)
    import torch
    torch.set_num_threads(a.threads)
    from operators.estimate import SIGMA_RANGE, _terms, calibrate_blur
    for s in (int(x) for x in a.scales.split(",")):
        t0 = time.perf_counter()
        coef, rows = calibrate_blur(list(samples(s)), s, AuthorsSRMD("srmd", s).sr)
        lo, hi = SIGMA_RANGE[s]
        raw = rows[:, 2]
        fit = np.clip(_terms(raw, rows[:, 1]) @ coef, lo, hi)
        print(f"x{s}: coef ({', '.join(f'{c:.4f}' for c in coef)}); mean |err| raw {np.abs(raw - rows[:, 0]).mean():.3f}"
              f" -> calibrated {np.abs(fit - rows[:, 0]).mean():.3f} HR px (noise-free: "
              f"{np.abs(fit - rows[:, 0])[rows[:, 1] == 0].mean():.3f}, noise < 10: "
              f"{np.abs(fit - rows[:, 0])[rows[:, 1] < 10].mean():.3f}); {len(rows)} images, "
              f"{time.perf_counter() - t0:.0f} s", flush=True)
        if a.save:
            np.save(Path(a.save) / f"blur_calibration_x{s}.npy", rows)


if __name__ == "__main__":
    main()

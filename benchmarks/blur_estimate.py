"""What `--blur auto --noise auto` costs SRMD against the true degradation, on held-out images.

BSD100 img_052..img_097 (every 5th; never used to calibrate the blur estimator), centre crops of
240x240 HR (x2), each degraded by SRMD's model (Gaussian blur of width 0.6/1.2/1.8, MATLAB bicubic,
AWGN 0 or 10; `benchmarks.quality.srmd_degrade`, byte for byte the tests' cv2 `_degrade`). The
estimate's loss is the authors' SRMD PSNR-Y with the true (width, noise) minus that with the
estimate (the first version read it off a 19-point PSNR curve, linear between grid points: 0.01-0.02
dB pessimistic, and twice the SRMD runs). Prints the mean loss (all, noise-free, noisy), the worst,
and the share within 0.3 dB. Needs the `[srmd]` extra and ../shared.

    python benchmarks/blur_estimate.py --first 52 --last 97 --threads 1     # 24 SRMD runs a case
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from benchmarks.quality import SHARED, AuthorsSRMD, read_rgb, srmd_degrade  # noqa: E402


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scale", type=int, default=2)
    ap.add_argument("--first", type=int, default=52)
    ap.add_argument("--last", type=int, default=97)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args(argv)
    import torch
    torch.set_num_threads(a.threads)
    from models.training import psnr_y
    from operators.estimate import blur_sigma, noise_sigma
    s = a.scale
    sr = AuthorsSRMD("srmd", s).sr
    widths = {2: (0.6, 1.2, 1.8), 3: (0.8, 1.6, 2.4), 4: (1.0, 2.0, 3.0)}[s]
    rows = []
    for i in range(a.first, a.last + 1, 5):
        hr = read_rgb(SHARED / "data" / "BSD100" / "HR" / f"img_{i:03d}.png")
        h, w = hr.shape[:2]
        c = 120 * s // 2
        hr = hr[h // 2 - c:h // 2 + c, w // 2 - c:w // 2 + c]
        for width in widths:
            for noise in (0.0, 10.0):
                lr = srmd_degrade(hr, s, width, noise, seed=i)
                hr_t = torch.from_numpy(hr[:lr.shape[0] * s, :lr.shape[1] * s].copy()).permute(2, 0, 1).float() / 255

                def score(wd, nz):
                    return psnr_y(torch.from_numpy(sr(lr, wd, nz)).permute(2, 0, 1).float() / 255, hr_t, s)
                n = noise_sigma(lr)
                est = blur_sigma(lr, s, sr, n)
                loss = score(width, noise) - score(est, n)
                rows.append((noise, loss, abs(est - width)))
                print(f"img_{i:03d} width {width} noise {noise:g}: estimate {est:.2f} / {n:.1f}, loss {loss:.2f} dB",
                      flush=True)
    r = np.array(rows)
    for name, sel in (("all", r[:, 0] >= 0), ("noise-free", r[:, 0] == 0), ("noise 10", r[:, 0] > 0)):
        v = r[sel]
        print(f"{name}: mean loss {v[:, 1].mean():.2f} dB, worst {v[:, 1].max():.2f}, within 0.3 dB "
              f"{(v[:, 1] <= 0.3).mean():.0%}, mean |width error| {v[:, 2].mean():.3f} HR px ({len(v)} cases)")


if __name__ == "__main__":
    main()

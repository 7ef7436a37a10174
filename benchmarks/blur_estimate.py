"""What `--blur auto --noise auto` costs SRMD against the true degradation, on held-out images.

BSD100 img_052..img_097 (every 5th; never used to fit any map), centre crops of 120 LR px where the
image allows (240x240 HR at x2; 321x321 at x3 and 320x320 at x4: BSD100's short side is 321 px;
before this was fixed the x3/x4 crops ran off the image and were 20-27 LR px strips), each degraded
by SRMD's model (Gaussian blur, 3 widths per scale, MATLAB bicubic, AWGN 0 or 10;
`benchmarks.quality.srmd_degrade`, byte for byte the tests' cv2 `_degrade`). The estimate's loss
is the authors' SRMD PSNR-Y with the true (width, noise) minus that with the estimate as
`operators.estimate.estimate` makes it (its parts, so the readings are shared with `--weights`):
the blur searched with the R, G, B noise reading, SRMD told `told_noise`. `--weights` scores other
shares of the R, G, B reading's excess beside it. Prints the mean loss (all, noise-free, noisy),
the worst, and the share within 0.3 dB. `--images set5+set14` scores the 19 whole Set5 and Set14
images instead (the same widths, noise 0 or 10, numpy seed = the image's index): larger images,
other content, a second check that a map which wins on the BSD100 crops is not fitted to them.
Needs the `[srmd]` extra and ../shared.

    python benchmarks/blur_estimate.py --first 52 --last 97 --threads 1     # 24 SRMD runs a case
    python benchmarks/blur_estimate.py --scale 4 --first 52 --last 97 --weights 0,0.25,0.5,1
    python benchmarks/blur_estimate.py --images set5+set14 --scale 4 --threads 1            # 114 cases
    python benchmarks/blur_estimate.py --images set5+set14 --scale 2 --shard 0/2 &          # the same, on
    python benchmarks/blur_estimate.py --images set5+set14 --scale 2 --shard 1/2            # two cores
    python benchmarks/blur_estimate.py --images set5+set14 --scale 3 --aggregates           # 1 vs 3 crops
    python benchmarks/blur_estimate.py --images bsd100-whole --aggregates --shard 0/2       # (and 1/2)
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from benchmarks.quality import SHARED, AuthorsSRMD, pairs, read_rgb, srmd_degrade  # noqa: E402


def _images(a, s: int):
    """(seed, name, HR array) of each held-out image the run scores."""
    if a.images == "set5+set14":
        whole = [(name, hr) for d in ("Set5", "Set14") for name, _, hr, _ in pairs(d, s)]
        for i, (name, hr) in enumerate(whole):
            yield i, name, hr
        return
    for i in range(a.first, a.last + 1, 5):
        hr = read_rgb(SHARED / "data" / "BSD100" / "HR" / f"img_{i:03d}.png")
        h, w = hr.shape[:2]
        if a.images == "bsd100-whole":
            yield i, f"img_{i:03d}", hr[:h // s * s, :w // s * s]
            continue
        side = min(120 * s, min(h, w) // s * s)      # 120 LR px where the image allows (BSD100: 321 px short side)
        y, x = (h - side) // 2, (w - side) // 2
        yield i, f"img_{i:03d}", hr[y:y + side, x:x + side]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scale", type=int, default=2)
    ap.add_argument("--images", choices=("bsd100", "bsd100-whole", "set5+set14"), default="bsd100",
                    help="BSD100 centre crops or whole images (--first/--last), or the whole Set5 and Set14 "
                    "images (19)")
    ap.add_argument("--first", type=int, default=52)
    ap.add_argument("--last", type=int, default=97)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--shard", default="0/1", help="k/n: score every n-th case from the k-th (run n at once; "
                    "the summary is of the shard)")
    ap.add_argument("--weights", default="", help="also score these shares of the R, G, B reading's excess "
                    "told to SRMD (comma-separated; `noise_rgb_weight` in blur_map.json), side by side")
    ap.add_argument("--aggregates", action="store_true", help="read the width on the 3 busiest crops and score "
                    "the first crop's, the median, the lowest and the mean of the two lowest side by side")
    a = ap.parse_args(argv)
    import torch
    torch.set_num_threads(a.threads)
    from models.training import psnr_y
    from operators.estimate import blur_crops, blur_sigma, crop_widths, noise_readings, told_noise
    s = a.scale
    weights = [float(v) for v in a.weights.split(",") if v]
    labels = [f"weight {wt:g}" for wt in weights]
    if a.aggregates:
        labels += ["first crop", "median of 3", "lowest of 3", "mean of 2 lowest"]
    sr = AuthorsSRMD("srmd", s).sr
    widths = {2: (0.6, 1.2, 1.8), 3: (0.8, 1.6, 2.4), 4: (1.0, 2.0, 3.0)}[s]
    rows = []
    k, n_shards = (int(v) for v in a.shard.split("/"))
    cases = [(i, name, hr, width, noise) for i, name, hr in _images(a, s) for width in widths for noise in (0.0, 10.0)]
    for i, name, hr, width, noise in cases[k::n_shards]:
        lr = srmd_degrade(hr, s, width, noise, seed=i)
        hr_t = torch.from_numpy(hr[:lr.shape[0] * s, :lr.shape[1] * s].copy()).permute(2, 0, 1).float() / 255

        def score(wd, nz):
            return psnr_y(torch.from_numpy(sr(lr, wd, nz)).permute(2, 0, 1).float() / 255, hr_t, s)
        reading, opp = noise_readings(lr)          # the parts of `estimate`, each read once
        n = told_noise(reading, opp, s)
        if a.aggregates:
            # busiest_windows is greedy, so blur_sigma's crops are the first blur_crops of these three:
            # read once, the shipped estimate is their median
            per = crop_widths(lr, s, sr, reading, 3)
            est = float(np.median(per[:blur_crops(s)]))
            print(f"{name} width {width} noise {noise:g}: crops " + " ".join(f"{v:.2f}" for v in per), flush=True)
        else:
            est = blur_sigma(lr, s, sr, reading)
        truth = score(width, noise)
        loss = truth - score(est, n)
        alt = [truth - score(est, opp + wt * max(reading - opp, 0.0)) for wt in weights]
        if a.aggregates:
            low = sorted(per)
            alt += [truth - score(v, n) for v in (per[0], float(np.median(low)), low[0], float(np.mean(low[:2])))]
        rows.append((noise, loss, abs(est - width), *alt))
        print(f"{name} width {width} noise {noise:g}: estimate {est:.2f} / {n:.1f} (read {reading:.1f}), "
              f"loss {loss:.2f} dB" + "".join(f"; {lb}: {v:.2f}" for lb, v in zip(labels, alt)), flush=True)
    r = np.array(rows)
    for name, sel in (("all", r[:, 0] >= 0), ("noise-free", r[:, 0] == 0), ("noise 10", r[:, 0] > 0)):
        v = r[sel]
        if not len(v):                          # a shard may hold no case of a kind
            continue
        print(f"{name}: mean loss {v[:, 1].mean():.2f} dB, worst {v[:, 1].max():.2f}, within 0.3 dB "
              f"{(v[:, 1] <= 0.3).mean():.0%}, mean |width error| {v[:, 2].mean():.3f} HR px ({len(v)} cases)"
              + "".join(f"; {lb}: mean {v[:, 3 + j].mean():.2f}, worst {v[:, 3 + j].max():.2f}, within 0.3 dB "
                        f"{(v[:, 3 + j] <= 0.3).mean():.0%}" for j, lb in enumerate(labels)))


if __name__ == "__main__":
    main()

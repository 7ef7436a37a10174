"""Candidate blur maps scored side by side on held-out images, the SRMD search run once.

`blur_estimate.py` scores what ships, and re-runs the search (22 SRMD runs on each of up to three
96 px crops) for every estimator it compares. Here `curves` runs the search once per case and stores
each crop's sparsity curve, the noise readings and SRMD's PSNR-Y with the true degradation; `score`
reads the width each map gives off the stored curves (`operators.estimate.map_width`, as `blur_sigma`
reads it: the median over the map's `crops`), runs SRMD on the whole image once per distinct estimate
(kept in a cache beside the curves, so a second map that agrees on a case costs nothing) and prints
the loss against the truth. The images, widths, noise and seeds are `blur_estimate.py`'s
(`--images set5+set14 | bsd100 | bsd100-whole`); a map is `operators/blur_map.json` itself or a file
`blur_corrector.py fit --out` writes. `--shifts` also scores each map read that much narrower.

    python benchmarks/blur_maps.py curves --images set5+set14 --shard 0/2 --curves /tmp/h2w &   # ~12 min
    python benchmarks/blur_maps.py curves --images set5+set14 --shard 1/2 --curves /tmp/h2w     # a shard
    python benchmarks/blur_maps.py score --images set5+set14 --curves /tmp/h2w \\
        --maps operators/blur_map.json,/tmp/photos.json --shifts 0.03,0.05 --shard 0/2 &         # ~3 min a map
    python benchmarks/blur_maps.py score ... --shard 1/2; python benchmarks/blur_maps.py score ...   # all cached:
                                                                                                   # the whole summary
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from benchmarks.blur_estimate import _images  # noqa: E402
from benchmarks.quality import AuthorsSRMD, srmd_degrade  # noqa: E402

WIDTHS = {2: (0.6, 1.2, 1.8), 3: (0.8, 1.6, 2.4), 4: (1.0, 2.0, 3.0)}


def _cases(a, s):
    return [(i, name, hr, wd, nz) for i, name, hr in _images(a, s) for wd in WIDTHS[s] for nz in (0.0, 10.0)]


def _tensor(img):
    import torch
    return torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1).float() / 255


def curves(a, s, sr, k, n) -> None:
    from models.training import psnr_y
    from operators.estimate import crop_curves, feature_grid, noise_readings, told_noise
    grid = feature_grid(s)
    Path(a.curves).parent.mkdir(parents=True, exist_ok=True)
    rows: dict[str, list] = {q: [] for q in ("name", "width", "noise", "reading", "told", "curves", "ncrops", "truth")}
    for i, name, hr, wd, nz in _cases(a, s)[k::n]:
        lr = srmd_degrade(hr, s, wd, nz, seed=i)
        reading, opp = noise_readings(lr)
        found = crop_curves(lr, s, sr, reading, 3)
        cs = np.full((3, len(grid)), np.nan)
        cs[:len(found)] = found
        truth = psnr_y(_tensor(sr(lr, wd, nz)), _tensor(hr[:lr.shape[0] * s, :lr.shape[1] * s]), s)
        for q, v in (("name", name), ("width", wd), ("noise", nz), ("reading", reading),
                     ("told", told_noise(reading, opp, s)), ("curves", cs), ("ncrops", len(found)), ("truth", truth)):
            rows[q].append(v)
        print(f"{name} width {wd} noise {nz:g}: truth {truth:.2f} dB", flush=True)
        np.savez(f"{a.curves}_{k}.npz", **{q: np.asarray(v) for q, v in rows.items()})


def score(a, s, sr, k, n) -> None:
    from models.training import psnr_y
    from operators.estimate import map_width
    parts = [dict(np.load(p)) for p in sorted(Path(a.curves).parent.glob(Path(a.curves).name + "_[0-9]*.npz"))]
    d = {q: np.concatenate([p[q] for p in parts]) for q in parts[0]}
    cache_path = Path(f"{a.curves}_scores_{k}.json")
    cache = {}             # every shard's scores: a run on --shard 0/1 after the shards prints the whole summary
    for p in Path(a.curves).parent.glob(Path(a.curves).name + "_scores_*.json"):
        cache |= json.loads(p.read_text())
    imgs = {name: (i, hr) for i, name, hr in _images(a, s)}
    shifts = [0.0] + [float(v) for v in a.shifts.split(",") if v]
    cands = []
    for p in a.maps.split(","):
        m = json.loads(Path(p).read_text())["scales"][str(s)]
        for sh in shifts:
            cands.append((p + (f", read {sh:g} px narrower" if sh else ""), dict(m, shift=m["shift"] + sh)))
    res: dict[str, list] = {label: [] for label, _ in cands}
    for j in range(k, len(d["name"]), n):
        name, wd, nz = str(d["name"][j]), float(d["width"][j]), float(d["noise"][j])
        i, hr = imgs[name]
        lr = None
        found = d["curves"][j][:int(d["ncrops"][j])]
        for label, m in cands:
            est = round(map_width(found, float(d["reading"][j]), s, m), 3)
            key = f"{name}:{wd}:{nz}:{est}"
            if key not in cache:
                lr = srmd_degrade(hr, s, wd, nz, seed=i) if lr is None else lr
                hr_t = _tensor(hr[:lr.shape[0] * s, :lr.shape[1] * s])
                cache[key] = psnr_y(_tensor(sr(lr, est, float(d["told"][j]))), hr_t, s)
                cache_path.write_text(json.dumps(cache))
            res[label].append((nz, float(d["truth"][j]) - cache[key], abs(est - wd), name, wd, est))
    for label, _ in cands:
        r = np.array([x[:3] for x in res[label]])
        w = max(res[label], key=lambda x: x[1])
        print(f"{label}: mean loss {r[:, 1].mean():.3f} dB (noise-free {r[r[:, 0] == 0, 1].mean():.3f} / n 10 "
              f"{r[r[:, 0] > 0, 1].mean():.3f}), worst {w[1]:.2f} ({w[3]} w {w[4]:g} n {w[0]:g} read {w[5]:.2f}), "
              f"within 0.3 dB {(r[:, 1] <= 0.3).mean():.0%}, mean |width error| {r[:, 2].mean():.3f} ({len(r)} cases)",
              flush=True)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("phase", choices=("curves", "score"))
    ap.add_argument("--scale", type=int, default=2)
    ap.add_argument("--images", choices=("bsd100", "bsd100-whole", "set5+set14"), default="set5+set14")
    ap.add_argument("--first", type=int, default=52)
    ap.add_argument("--last", type=int, default=97)
    ap.add_argument("--shard", default="0/1", help="k/n: every n-th case from the k-th (run n at once)")
    ap.add_argument("--curves", required=True, help="path prefix of the stored curves (PREFIX_k.npz)")
    ap.add_argument("--maps", default=str(ROOT / "operators" / "blur_map.json"), help="comma-separated map files")
    ap.add_argument("--shifts", default="", help="also score each map read this much narrower (HR px, comma-separated)")
    a = ap.parse_args(argv)
    import torch
    torch.set_num_threads(1)
    s = a.scale
    k, n = (int(v) for v in a.shard.split("/"))
    (curves if a.phase == "curves" else score)(a, s, AuthorsSRMD("srmd", s).sr, k, n)


if __name__ == "__main__":
    main()

"""The image job's images/s against a naive one-process loop over the same files and model.

    python benchmarks/image_throughput.py --images 48 --size 320x240 --model rayscale-x2

Both sides read the same JPEGs, run the same operator (operators.upscale.Upscaler with the same
torch threads) and write the same outputs; the naive loop is read -> model -> write in series in
one process, the job is `jobs/upscale_images.py` in its own process (embedded Ray, started once
for the whole run: the cost is per job, not per image). Printed side by side, with the ratio, and
the job's steady rate (first to last written image) that leaves the Ray start-up out."""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def make_images(folder: Path, n: int, w: int, h: int) -> None:
    """Real content: crops of the Set14/BSD100 photos when ../shared is there, else a synthetic pattern."""
    import numpy as np
    from PIL import Image
    folder.mkdir(parents=True, exist_ok=True)
    shared = Path(os.environ.get("RAYSCALE_SHARED", ROOT.parent / "shared")) / "data" / "BSD100" / "HR"
    photos = sorted(shared.glob("*.png")) if shared.is_dir() else []
    rng = np.random.default_rng(0)
    for i in range(n):
        if photos:
            im = np.asarray(Image.open(photos[i % len(photos)]).convert("RGB"))
            y, x = rng.integers(0, im.shape[0] - h + 1), rng.integers(0, im.shape[1] - w + 1)
            arr = im[y:y + h, x:x + w]
        else:
            yy, xx = np.mgrid[0:h, 0:w]
            arr = np.stack([(xx * 3 + i) % 256, (yy * 5) % 256, (xx + yy) % 256], -1).astype(np.uint8)
        Image.fromarray(np.ascontiguousarray(arr)).save(folder / f"img_{i:04d}.jpg", quality=92)


def naive(src: Path, dst: Path, model: str, threads: int) -> float:
    import torch
    from operators.upscale import Upscaler
    from pipeline.imageio import read_image, write_image
    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    op = Upscaler(model, device="cpu")
    files = sorted(src.glob("*.jpg"))
    for f in files:
        pic = read_image(f)
        out = op({"frames": pic.rgb[None], "index": [0], "pts": [0]})["frames"][0]
        write_image(dst / f.name, out, None, pic)
    return len(files) / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=48)
    ap.add_argument("--size", default="320x240")
    ap.add_argument("--model", default="rayscale-x2")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--child-naive", nargs=4, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child_naive:
        src, dst, model, threads = args.child_naive
        print(naive(Path(src), Path(dst), model, int(threads)))
        return
    w, h = map(int, args.size.split("x"))
    work = Path(tempfile.mkdtemp(prefix="rayscale-imgbench-"))
    try:
        src = work / "src"
        make_images(src, args.images, w, h)
        (work / "naive").mkdir()
        from pipeline.engine import OPERATOR_ENV
        env = dict(os.environ, **OPERATOR_ENV)      # the same allocator settings as the job's actors
        r = subprocess.run([sys.executable, __file__, "--child-naive", str(src), str(work / "naive"), args.model,
                            str(args.threads)], env=env, capture_output=True, text=True, check=True)
        naive_ips = float(r.stdout.strip().splitlines()[-1])
        t0 = time.perf_counter()
        r = subprocess.run([sys.executable, str(ROOT / "jobs" / "upscale_images.py"), str(src), str(work / "job"),
                            "--model", args.model, "--threads", str(args.threads), "--no-progress"],
                           capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if r.returncode != 0:
            raise SystemExit(f"job failed ({r.returncode}):\n{r.stdout}\n{r.stderr}")
        steady = float(r.stdout.split("(steady ")[1].split(" ")[0])
        job_ips = args.images / wall
        print(f"{args.images} JPEGs {w}x{h}, model {args.model}, {args.threads} torch threads")
        print(f"{'':34s} images/s   ratio to naive")
        print(f"{'naive one-process loop':34s} {naive_ips:8.2f}   1.00")
        print(f"{'image job, whole process':34s} {job_ips:8.2f}   {job_ips / naive_ips:.2f}")
        print(f"{'image job, steady (first-last write)':34s} {steady:8.2f}   {steady / naive_ips:.2f}")
        # what the job pays once (interpreter, Ray, actors, model load, finalize), not per image
        print(f"fixed cost of the job: {wall - args.images / steady:.1f} s of {wall:.1f} s wall "
              f"(break-even with the naive loop at {max(0.0, (wall - args.images / steady) / (1 / naive_ips - 1 / steady)):.0f} images)"
              if steady > naive_ips else f"job wall {wall:.1f} s")
        print("job summary: " + " | ".join(l for l in r.stdout.splitlines() if "wall:" in l or "per stage" in l))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

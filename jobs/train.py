"""Train or fine-tune a registered SR architecture on a folder of HR images.

    python jobs/train.py --train ../shared/data/T91 --arch rayscale --scale 2 --channels 32 --blocks 3 \\
        --steps 20000 --val-holdout 4 --ckpt /tmp/rs2.pt --export models/weights/rayscale-x2.safetensors
    python jobs/train.py --train DIR --init rayscale-x2 --scale 4 ...     # fine-tune / change scale
    python jobs/train.py ... --resume /tmp/rs2.pt                          # continue a checkpoint

LR images: MATLAB bicubic (`--degradation bicubic`, the benchmarks' convention) or SRMD's random
blur + bicubic + noise (`--degradation srmd`). Augmentation: the 8 flips/rotations. Loss: L1 (or the
architecture's `training_loss`). Adam with a cosine (or step) LR. CPU: bf16 autocast + channels_last
with fp32 master weights (`--no-amp` for fp32). A checkpoint (.pt: model, optimizer, scheduler, step,
RNG states) is written every `--ckpt-every` steps; `--export` writes a clean safetensors state dict
that `models.load` reads. Validation PSNR (Y, shaved by the scale) on `--val-holdout` held-back
training images and/or `--val DIR`, every `--val-every` steps. Exit status 2 with a one-line reason
for bad inputs.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

if not __package__:  # run as a file path: make the project importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.train import TrainConfig, train  # noqa: E402


def parse(argv=None) -> TrainConfig:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train", required=True, help="folder of HR training images")
    ap.add_argument("--scale", type=int, required=True)
    g = ap.add_mutually_exclusive_group(required=True)
    g.add_argument("--arch", help="build this architecture from scratch (e.g. rayscale)")
    g.add_argument("--init", help="fine-tune a checkpoint / shipped model name (anything models.load reads)")
    ap.add_argument("--channels", type=int, help="width (from-scratch builds)")
    ap.add_argument("--blocks", type=int, help="number of blocks (from-scratch builds)")
    ap.add_argument("--val", help="folder of HR validation images")
    ap.add_argument("--val-holdout", type=int, default=0, help="hold back the last N training images for validation")
    ap.add_argument("--steps", type=int, default=1000, help="total optimizer steps (the LR schedule's length)")
    ap.add_argument("--time-limit", type=float, default=0, help="stop after this many seconds (checkpoint + export)")
    ap.add_argument("--patch", type=int, default=48, help="LR patch size")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--schedule", choices=("cosine", "step", "constant"), default="cosine")
    ap.add_argument("--degradation", choices=("bicubic", "srmd", "real"), default="bicubic",
                    help="real: pipeline/degrade.py (blur, resampling, noise, JPEG, H.264/H.265)")
    ap.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 ...")
    ap.add_argument("--no-amp", action="store_true", help="train in fp32")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--val-every", type=int, default=500)
    ap.add_argument("--ckpt", help="checkpoint file (.pt) written every --ckpt-every steps and at the end")
    ap.add_argument("--ckpt-every", type=int, default=500)
    ap.add_argument("--resume", help="continue from this checkpoint (.pt)")
    ap.add_argument("--export", help="write the trained weights here (.safetensors)")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--log-every", type=int, default=50)
    ap.add_argument("--faces", action="store_true",
                    help="--train is a folder of aligned square faces: whole-face crops of patch*scale px, "
                         "horizontal flips only, FSRNet's MATLAB-bicubic LR (pipeline/face_data.py)")
    ap.add_argument("--face-zoom", type=float, nargs=2, default=(1.0, 1.0), metavar=("LO", "HI"),
                    help="random face size relative to the HR crop (log-uniform; <1 pads, >1 crops)")
    ap.add_argument("--face-limit", type=int, default=0, help="use only the first N faces")
    a = ap.parse_args(argv)
    kw = {}
    if a.channels is not None:
        kw["channels"] = a.channels
    if a.blocks is not None:
        kw["n_blocks"] = a.blocks
    return TrainConfig(train_dir=a.train, scale=a.scale, arch=a.arch, init=a.init, build_kwargs=kw,
                       val_dir=a.val, val_holdout=a.val_holdout, steps=a.steps, patch=a.patch, batch=a.batch,
                       lr=a.lr, schedule=a.schedule, degradation=a.degradation, device=a.device,
                       amp=not a.no_amp, seed=a.seed, val_every=a.val_every, ckpt=a.ckpt,
                       ckpt_every=a.ckpt_every, resume=a.resume, export=a.export, time_limit=a.time_limit,
                       threads=a.threads, log_every=a.log_every, faces=a.faces, face_zoom=tuple(a.face_zoom),
                       face_limit=a.face_limit)


def main(argv=None) -> int:
    cfg = parse(argv)
    try:
        train(cfg, log=lambda s: print(s, flush=True))
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Training from folders of HR images: reading images, the held-back validation set, checkpoint
files (model + optimizer + scheduler + step + RNG) with resume, and a clean safetensors export.
The tensor-level parts (degradations, sampling, the optimisation step) live in models/training.py."""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

import models
from models.training import PatchSampler, Trainer, bicubic_lr

IMAGE_EXTS = (".png", ".bmp", ".jpg", ".jpeg", ".tif", ".tiff", ".ppm", ".webp")


def list_images(folder: str | os.PathLike) -> list[Path]:
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: not a folder")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTS)
    if not files:
        raise FileNotFoundError(f"{folder}: no images ({', '.join(IMAGE_EXTS)})")
    return files


def read_rgb(path: str | os.PathLike) -> torch.Tensor:
    """(3, H, W) float32 RGB in [0, 1]; grey images are replicated to 3 channels."""
    import cv2
    a = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if a is None:
        raise ValueError(f"{path}: unreadable image")
    peak = 65535.0 if a.dtype == "uint16" else 255.0
    if a.ndim == 2:
        a = a[:, :, None].repeat(3, axis=2)
    a = a[:, :, :3][:, :, ::-1].copy()          # BGR(A) -> RGB
    return torch.from_numpy(a).permute(2, 0, 1).float() / peak


def val_pairs(images: list[torch.Tensor], scale: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(MATLAB-bicubic LR, HR cropped to a multiple of scale) per image: the benchmarks' LR sets."""
    out = []
    for im in images:
        h, w = (im.shape[-2] // scale) * scale, (im.shape[-1] // scale) * scale
        hr = im[:, :h, :w].contiguous()
        out.append((bicubic_lr(hr, scale).clamp(0, 1), hr))
    return out


def save_checkpoint(path: str | os.PathLike, trainer: Trainer, sampler: PatchSampler, meta: dict) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    st = trainer.state_dict()
    st["sampler"] = sampler.state_dict()
    st["meta"] = json.dumps(meta)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(st, tmp)
    os.replace(tmp, path)                        # never leave a half-written checkpoint behind


def load_checkpoint(path: str | os.PathLike) -> dict:
    return torch.load(str(path), map_location="cpu", weights_only=True)


def export_safetensors(net: torch.nn.Module, spec: models.ModelSpec, path: str | os.PathLike,
                       extra: dict | None = None) -> Path:
    """A clean fp32 state dict (official key names, no wrapper) + metadata naming the arch."""
    from safetensors.torch import save_file
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sd = {k: v.detach().float().cpu().contiguous() for k, v in net.state_dict().items()}
    meta = {"arch": spec.arch, "variant": spec.variant, "scale": str(spec.scale)}
    meta.update({k: str(v) for k, v in (extra or {}).items()})
    save_file(sd, str(path), metadata=meta)
    from models.convert import apply_umask
    apply_umask(str(path))            # safetensors writes 0600; exports are meant to be shared
    return path


@dataclass
class TrainConfig:
    train_dir: str
    scale: int
    arch: str | None = None
    init: str | None = None
    build_kwargs: dict = field(default_factory=dict)
    val_dir: str | None = None
    val_holdout: int = 0
    steps: int = 1000
    patch: int = 48
    batch: int = 16
    lr: float = 1e-3
    schedule: str = "cosine"
    degradation: str = "bicubic"
    device: str = "cpu"
    amp: bool = True
    seed: int = 0
    val_every: int = 500
    ckpt: str | None = None
    ckpt_every: int = 500
    resume: str | None = None
    export: str | None = None
    time_limit: float = 0.0       # seconds; stop (checkpoint + export) when reached
    threads: int = 0
    log_every: int = 50
    faces: bool = False           # aligned face folder: whole-face sampler (pipeline/face_data.py)
    face_zoom: tuple = (1.0, 1.0)  # random face size, relative to the HR crop (patch * scale)
    face_limit: int = 0           # use only the first N faces (0: all)


def build_network(cfg: TrainConfig):
    if cfg.init:
        net, spec = models.load(cfg.init)
        if spec.scale != cfg.scale:
            net, spec = _rescale(net, spec, cfg)
        return net, spec
    archs = models.architectures()
    if cfg.arch not in archs:
        raise ValueError(f"unknown --arch {cfg.arch!r} (known: {', '.join(sorted(archs))})")
    import importlib
    mod = importlib.import_module(f"models.{cfg.arch}")
    if not hasattr(mod, "build"):
        from pipeline.face_data import FACE_BUILDERS   # face archs with a reduced prior (no parsing maps)
        if cfg.arch in FACE_BUILDERS:
            return FACE_BUILDERS[cfg.arch](scale=cfg.scale, **cfg.build_kwargs)
        raise ValueError(f"{cfg.arch} has no from-scratch builder; pass --init CHECKPOINT to fine-tune")
    return mod.build(scale=cfg.scale, **cfg.build_kwargs)


def _rescale(net, spec, cfg: TrainConfig):
    """Fine-tune a checkpoint at another scale: a fresh net of the new scale takes every tensor whose
    name and shape match (the body), the upsampler starts fresh."""
    import importlib
    mod = importlib.import_module(f"models.{spec.arch}")
    if not hasattr(mod, "build"):
        raise ValueError(f"--init is x{spec.scale}, --scale {cfg.scale}: {spec.arch} cannot change scale")
    kw = {k: v for k, v in spec.hyperparams.items()}
    new, new_spec = mod.build(scale=cfg.scale, **kw)
    old = net.state_dict()
    sd = new.state_dict()
    taken = [k for k in sd if k in old and old[k].shape == sd[k].shape]
    sd.update({k: old[k] for k in taken})
    new.load_state_dict(sd)
    print(f"init: took {len(taken)}/{len(sd)} tensors from the x{spec.scale} checkpoint", flush=True)
    return new, new_spec


def train(cfg: TrainConfig, log: Callable[[str], None] = print) -> dict:
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    if not cfg.faces:
        files = list_images(cfg.train_dir)
        val_files: list[Path] = []
        if cfg.val_holdout:
            files, val_files = files[:-cfg.val_holdout], files[-cfg.val_holdout:]
        if cfg.val_dir:
            val_files += list_images(cfg.val_dir)
        if not files:
            raise ValueError("no training images left after --val-holdout")
    net, spec = build_network(cfg)
    if spec.scale != cfg.scale:
        raise ValueError(f"the network upscales x{spec.scale}, --scale is {cfg.scale}")
    if cfg.faces:
        from pipeline.face_data import face_training_data
        sampler, vpairs, files, val_files = face_training_data(cfg, spec, log=log)
        cfg.degradation = "matlab-bicubic-face"
    else:
        degradation = cfg.degradation
        if degradation == "real":                 # pipeline/degrade.py: blur, resampling, noise, JPEG, codec
            from pipeline.degrade import fixed_lr, real_lr
            degradation = real_lr
        sampler = PatchSampler([read_rgb(f) for f in files], cfg.scale, cfg.patch, cfg.batch,
                               degradation, seed=cfg.seed)
        vpairs = val_pairs([read_rgb(f) for f in val_files], cfg.scale)
        if cfg.degradation == "real":             # validate on the benchmarks' fixed real degradation
            vpairs = [(fixed_lr(hr, cfg.scale), hr) for _, hr in vpairs]
    trainer = Trainer(net, spec, cfg.steps, lr=cfg.lr, schedule=cfg.schedule, device=cfg.device, amp=cfg.amp)
    if cfg.resume:
        st = load_checkpoint(cfg.resume)
        trainer.load_state_dict(st)
        sampler.load_state_dict(st["sampler"])
        log(f"resumed {cfg.resume} at step {trainer.step}")
    meta = {"arch": spec.arch, "variant": spec.variant, "scale": spec.scale, "train_dir": str(cfg.train_dir),
            "train_images": len(files), "val_images": len(val_files), "degradation": cfg.degradation}
    log(f"{spec.variant} x{spec.scale}: {sum(p.numel() for p in net.parameters())} params, "
        f"{len(files)} train / {len(val_files)} val images, steps {trainer.step}->{cfg.steps}, "
        f"patch {cfg.patch} batch {cfg.batch}, {cfg.device} amp={trainer.amp}")
    history: dict = {"loss": [], "val": []}
    if vpairs and trainer.step == 0:
        p0 = trainer.evaluate(vpairs)
        history["val"].append((0, p0))
        log(f"step 0 val PSNR-Y {p0:.3f} dB")
    t0 = time.monotonic()
    if cfg.resume and cfg.time_limit:
        t0 -= float(json.loads(st.get("meta", "{}")).get("elapsed", 0.0))
    run_loss, n = 0.0, 0
    it = iter(sampler)
    stopped = False
    while trainer.step < cfg.steps:
        lr_b, hr_b, *extra = next(it)     # face samplers may add {"landmarks": heatmaps}
        if cfg.time_limit:        # the LR schedule follows elapsed time when a time budget is set
            trainer.progress = (time.monotonic() - t0) / cfg.time_limit
        loss = trainer.train_step(lr_b, hr_b, **(extra[0] if extra else {}))
        history["loss"].append(loss)
        run_loss, n = run_loss + loss, n + 1
        s = trainer.step
        if cfg.log_every and s % cfg.log_every == 0:
            el = time.monotonic() - t0
            log(f"step {s} loss {run_loss / n:.5f} lr {trainer.current_lr():.2e} {el:.0f}s")
            run_loss, n = 0.0, 0
        stopped = bool(cfg.time_limit) and time.monotonic() - t0 >= cfg.time_limit
        if vpairs and cfg.val_every and (s % cfg.val_every == 0 or s == cfg.steps or stopped):
            p = trainer.evaluate(vpairs)
            history["val"].append((s, p))
            log(f"step {s} val PSNR-Y {p:.3f} dB")
        if cfg.ckpt and ((cfg.ckpt_every and s % cfg.ckpt_every == 0) or s == cfg.steps or stopped):
            save_checkpoint(cfg.ckpt, trainer, sampler, {**meta, "elapsed": time.monotonic() - t0})
        if stopped:
            log(f"time limit {cfg.time_limit:.0f}s reached at step {s}")
            break
    if cfg.export:
        export_safetensors(trainer.net, spec, cfg.export,
                           {"steps": trainer.step, "train_dir": Path(cfg.train_dir).name,
                            "degradation": cfg.degradation})
        log(f"exported {cfg.export}")
    history.update(step=trainer.step, seconds=time.monotonic() - t0, trainer=trainer, spec=spec)
    return history

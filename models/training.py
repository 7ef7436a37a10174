"""Training pieces that work on tensors only (no files): degradations, patch sampling, the
Y-channel PSNR of the SR papers, and a `Trainer` that steps any registered network.

Conventions (the SR papers'): LR = MATLAB bicubic `imresize(hr, 1/scale)` (models/imresize.py),
or SRMD's general degradation `(hr * k)↓s + n` (Zhang et al. 2018, Eq. 2: Gaussian blur, bicubic
downsampler, AWGN); PSNR on Y (ITU-R BT.601, 16..235) with `scale` pixels shaved off each border.
The loss is L1 (EDSR/RDN) unless the architecture's module defines `training_loss(net, lr, hr)`.
CPU training runs the forward/backward in bf16 autocast with channels_last activations (3-8x faster
than fp32 on the target CPUs) while the optimizer keeps fp32 master weights.
"""
from __future__ import annotations

import contextlib
import importlib
import math
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .imresize import imresize
from .spec import ModelSpec

__all__ = ["bicubic_lr", "srmd_lr", "psnr_y", "rgb_to_y", "PatchSampler", "Trainer", "as_rgb01",
           "augment"]


# --------------------------------------------------------------------------- degradations
def bicubic_lr(hr: torch.Tensor, scale: int) -> torch.Tensor:
    """MATLAB `imresize(hr, 1/scale)` of a float (..., 3, H, W) tensor (H, W multiples of scale)."""
    return imresize(hr, 1.0 / scale)


def srmd_lr(hr: torch.Tensor, scale: int, gen: torch.Generator, sigma_range=(0.2, 2.6),
            noise_range_255=(0.0, 15.0), anisotropic: float = 0.5) -> torch.Tensor:
    """SRMD's degradation of one (3, H, W) patch: random Gaussian blur (isotropic, or anisotropic with
    probability `anisotropic`), MATLAB bicubic downsampling, AWGN with sigma in `noise_range_255`."""
    from .srmd import gaussian_kernel
    u = torch.rand(5, generator=gen, dtype=torch.float64).tolist()
    lo, hi = sigma_range
    if u[0] < anisotropic:
        l1 = (lo + (hi - lo) * u[1]) ** 2
        l2 = (lo + (hi - lo) * u[2]) ** 2
        k = gaussian_kernel(15, theta=math.pi * u[3], l1=l1, l2=l2)
    else:
        k = gaussian_kernel(15, sigma=lo + (hi - lo) * u[1])
    kt = torch.from_numpy(k).to(hr.dtype)[None, None].expand(hr.shape[-3], 1, 15, 15)
    blurred = F.conv2d(F.pad(hr[None], (7, 7, 7, 7), mode="replicate"), kt, groups=hr.shape[-3])[0]
    lr = imresize(blurred, 1.0 / scale)
    s = (noise_range_255[0] + (noise_range_255[1] - noise_range_255[0]) * u[4]) / 255.0
    if s > 0:
        lr = lr + s * torch.randn(lr.shape, generator=gen, dtype=lr.dtype)
    return lr


# --------------------------------------------------------------------------- metrics
def rgb_to_y(x: torch.Tensor) -> torch.Tensor:
    """RGB in [0, 1] (..., 3, H, W) -> BT.601 luma in [16/255, 235/255] (MATLAB rgb2ycbcr)."""
    w = x.new_tensor([65.481, 128.553, 24.966]).view(3, 1, 1) / 255.0
    return (x * w).sum(-3) + 16.0 / 255.0


def psnr_y(sr: torch.Tensor, hr: torch.Tensor, shave: int) -> float:
    """The SR papers' PSNR: both images quantised to 8 bits, Y channel, `shave` px cut per border."""
    sr = (sr.detach().double().clamp(0, 1) * 255).round() / 255
    hr = (hr.detach().double().clamp(0, 1) * 255).round() / 255
    d = rgb_to_y(sr) - rgb_to_y(hr)
    if shave:
        d = d[..., shave:-shave, shave:-shave]
    mse = d.pow(2).mean().item()
    return float("inf") if mse == 0 else 10 * math.log10(1.0 / mse)


# --------------------------------------------------------------------------- sampling
def augment(lr: torch.Tensor, hr: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One of the 8 dihedral transforms (k in 0..7) applied to both patches alike."""
    if k & 4:
        lr, hr = lr.flip(-1), hr.flip(-1)
    r = k & 3
    if r:
        lr, hr = lr.rot90(r, (-2, -1)), hr.rot90(r, (-2, -1))
    return lr, hr


class PatchSampler:
    """Random aligned (LR, HR) patch batches from whole images, with dihedral augmentation.

    `images`: HR tensors (3, H, W) in [0, 1]. With `degradation="bicubic"` each image is degraded
    once up front (MATLAB imresize of the whole image, like the benchmark LR sets) and patches are
    cropped at aligned positions; with "srmd" each HR patch (cropped with a margin for the blur)
    gets its own random blur kernel and noise level. The generator state is part of a checkpoint.
    """

    def __init__(self, images: Sequence[torch.Tensor], scale: int, patch: int, batch: int,
                 degradation: str = "bicubic", seed: int = 0, **srmd_kwargs):
        if not callable(degradation) and degradation not in ("bicubic", "srmd"):
            raise ValueError(f"unknown degradation {degradation!r} (bicubic, srmd, or a function)")
        self.scale, self.patch, self.batch, self.degradation = scale, patch, batch, degradation
        self.srmd_kwargs = srmd_kwargs
        self.gen = torch.Generator().manual_seed(seed)
        hrs = []
        for im in images:
            h, w = (im.shape[-2] // scale) * scale, (im.shape[-1] // scale) * scale
            if h // scale >= patch and w // scale >= patch:
                hrs.append(im[..., :h, :w].float().contiguous())
        if not hrs:
            raise ValueError(f"no training image is at least {patch * scale} px on each side")
        self.hrs = hrs
        self.lrs = [bicubic_lr(hr, scale) for hr in hrs] if degradation == "bicubic" else None

    def _one(self) -> tuple[torch.Tensor, torch.Tensor]:
        s, p = self.scale, self.patch
        i = int(torch.randint(len(self.hrs), (1,), generator=self.gen))
        hr = self.hrs[i]
        hl, wl = hr.shape[-2] // s, hr.shape[-1] // s
        y = int(torch.randint(hl - p + 1, (1,), generator=self.gen))
        x = int(torch.randint(wl - p + 1, (1,), generator=self.gen))
        hp = hr[:, y * s:(y + p) * s, x * s:(x + p) * s]
        if self.lrs is not None:
            lp = self.lrs[i][:, y:y + p, x:x + p]
        else:
            fn = self.degradation if callable(self.degradation) else srmd_lr   # fn(hr_patch, scale, gen)
            lp = fn(hp, s, self.gen, **self.srmd_kwargs)
        k = int(torch.randint(8, (1,), generator=self.gen))
        return augment(lp, hp, k)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        while True:
            pairs = [self._one() for _ in range(self.batch)]
            yield (torch.stack([a for a, _ in pairs]).clamp(0, 1),
                   torch.stack([b for _, b in pairs]))

    def state_dict(self) -> dict:
        return {"gen": self.gen.get_state()}

    def load_state_dict(self, st: dict) -> None:
        self.gen.set_state(st["gen"])


# --------------------------------------------------------------------------- training
def as_rgb01(net: nn.Module, spec: ModelSpec) -> Callable[[torch.Tensor], torch.Tensor]:
    """A function RGB [0, 1] -> RGB [0, 1] around `net`, honouring the spec (range, order, mean,
    residual output), the same conversions the upscale operator applies."""
    def run(x: torch.Tensor) -> torch.Tensor:
        inp = x.flip(1) if spec.channel_order == "BGR" else x
        inp = inp * spec.input_range
        if spec.mean is not None:
            inp = inp - inp.new_tensor(spec.mean).view(1, -1, 1, 1)
        y = net(inp.contiguous(memory_format=torch.channels_last))
        if spec.mean is not None:
            y = y + y.new_tensor(spec.mean).view(1, -1, 1, 1)
        y = y / spec.input_range
        if spec.channel_order == "BGR":
            y = y.flip(1)
        if spec.output == "residual":
            y = y + F.interpolate(x, scale_factor=spec.scale, mode="bicubic", align_corners=False)
        return y
    return run


def _arch_loss(spec: ModelSpec):
    try:
        mod = importlib.import_module(f"{__package__}.{spec.arch}")
    except ModuleNotFoundError:
        return None
    return getattr(mod, "training_loss", None)


class Trainer:
    """Adam + cosine (or step) LR over `total_steps`, L1 loss (or the arch's `training_loss`),
    bf16 autocast where it helps (CPU; CUDA with bf16 support), fp32 master weights."""

    def __init__(self, net: nn.Module, spec: ModelSpec, total_steps: int, lr: float = 1e-3,
                 schedule: str = "cosine", min_lr: float = 1e-6, step_every: int = 0, gamma: float = 0.5,
                 device: str | torch.device = "cpu", amp: bool = True, grad_clip: float = 0.0):
        self.device = torch.device(device)
        self.net = net.to(self.device).float().to(memory_format=torch.channels_last).train()
        self.spec = spec
        self.total_steps = max(1, int(total_steps))
        self.opt = torch.optim.Adam(self.net.parameters(), lr=lr, betas=(0.9, 0.999))
        if schedule not in ("cosine", "step", "constant"):
            raise ValueError(f"unknown schedule {schedule!r} (cosine, step, constant)")
        self.base_lr, self.min_lr, self.schedule, self.gamma = lr, min_lr, schedule, gamma
        self.step_every = step_every or max(1, self.total_steps // 4)
        self.progress: float | None = None   # set by a caller that schedules by time, not steps
        self.step = 0
        self.grad_clip = grad_clip
        self.run = as_rgb01(self.net, spec)
        self.custom_loss = _arch_loss(spec)
        if amp and self.device.type == "cuda":
            amp = torch.cuda.is_bf16_supported()
        self.amp = bool(amp) and self.device.type in ("cpu", "cuda")

    def _autocast(self):
        if not self.amp:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16)

    def current_lr(self) -> float:
        """The LR for the next step: cosine from `lr` to `min_lr` over the run's progress (steps done /
        total steps, or the caller's time-based `progress` when larger), or x`gamma` every N steps."""
        frac = min(1.0, max(self.step / self.total_steps, self.progress or 0.0))
        if self.schedule == "cosine":
            return self.min_lr + (self.base_lr - self.min_lr) * 0.5 * (1 + math.cos(math.pi * frac))
        if self.schedule == "step":
            return self.base_lr * self.gamma ** (self.step // self.step_every)
        return self.base_lr

    def train_step(self, lr: torch.Tensor, hr: torch.Tensor, **extra: torch.Tensor) -> float:
        """One update; `extra` (e.g. FSRNet's `landmarks` heatmaps) goes to the arch's training_loss."""
        for g in self.opt.param_groups:
            g["lr"] = self.current_lr()
        lr = lr.to(self.device, non_blocking=True)
        hr = hr.to(self.device, non_blocking=True)
        self.net.train()
        with self._autocast():
            if self.custom_loss is not None:
                extra = {k: v.to(self.device, non_blocking=True) for k, v in extra.items()}
                loss = self.custom_loss(self.net, lr, hr, **extra)   # the family's own objective and inputs
                if isinstance(loss, tuple):                  # (loss, logs) as dsrn/fsrnet/superfan return
                    loss = loss[0]
            else:
                loss = F.l1_loss(self.run(lr).float(), hr)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if self.grad_clip:
            nn.utils.clip_grad_norm_(self.net.parameters(), self.grad_clip)
        self.opt.step()
        self.step += 1
        return float(loss.detach())

    @torch.inference_mode()
    def upscale(self, lr: torch.Tensor) -> torch.Tensor:
        """Full-image inference (eval mode, same precision as training) -> RGB [0, 1], fp32."""
        self.net.eval()
        with self._autocast():
            out = self.run(lr.to(self.device)).float().clamp(0, 1)
        return out.cpu()

    def evaluate(self, pairs: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> float:
        """Mean Y-PSNR (shave = scale) over (LR (3,h,w), HR (3,H,W)) pairs."""
        vals = []
        for lr, hr in pairs:
            sr = self.upscale(lr[None])[0]
            hh, ww = min(sr.shape[-2], hr.shape[-2]), min(sr.shape[-1], hr.shape[-1])
            vals.append(psnr_y(sr[..., :hh, :ww], hr[..., :hh, :ww], self.spec.scale))
        return float(np.mean(vals)) if vals else float("nan")

    def state_dict(self) -> dict:
        return {"model": {k: v.detach().cpu() for k, v in self.net.state_dict().items()},
                "optimizer": self.opt.state_dict(),
                "step": self.step, "total_steps": self.total_steps,
                "torch_rng": torch.get_rng_state()}

    def load_state_dict(self, st: dict) -> None:
        self.net.load_state_dict(st["model"])
        self.opt.load_state_dict(st["optimizer"])
        self.step = int(st["step"])
        torch.set_rng_state(st["torch_rng"])

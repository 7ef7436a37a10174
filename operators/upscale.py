"""Upscale frame batches with a registered network or a classic interpolator.

The model's spec decides value range, channel order and mean, so a batch of uint8 or uint16 RGB
frames goes in and the same type comes out at `scale` x the size."""
from __future__ import annotations

import importlib
import warnings

import cv2
import numpy as np
import torch
import torch.nn.functional as F

import models
from models.spec import ModelSpec

from .tiling import tiled

INTERPOLATORS = {"bicubic": cv2.INTER_CUBIC, "lanczos": cv2.INTER_LANCZOS4}
PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


class UnsupportedScale(ValueError):
    pass


def resolve_device(device: str | None) -> torch.device:
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def with_degradation(net, spec: ModelSpec, d: dict):
    """Bind SRMD's degradation map: a blur kernel (isotropic `sigma`, or anisotropic `l1`, `l2`,
    `theta`; none = the authors' near-delta kernel for plain bicubic downscaling) and, for SRMD
    (not SRMDNF), a noise level on the 0-255 scale."""
    from models.srmd import SRMDWithDegradation, degradation_vector
    nf = spec.variant == "srmdnf"
    if nf and d.get("noise") not in (None, 0, 0.0, AUTO):
        raise ValueError("SRMDNF is the noise-free model; use SRMD for a noise level")
    noise = 0.0 if d.get("noise") in (None, AUTO) else d["noise"]   # "auto": set per batch (AutoDegradation)
    return SRMDWithDegradation(net, degradation_vector(_kernel(d), noise, with_noise=not nf))


AUTO = "auto"


def _kernel(d: dict, sigma: float | None = None):
    """The blur kernel of a degradation dict (`sigma` overrides an "auto" width)."""
    from models.srmd import bicubic_kernel, gaussian_kernel
    if d.get("l1"):
        return gaussian_kernel(l1=d["l1"], l2=d.get("l2") or d["l1"], theta=d.get("theta") or 0.0)
    s = sigma if d.get("sigma") == AUTO else d.get("sigma")
    return gaussian_kernel(sigma=s) if s else bicubic_kernel()


class AutoDegradation:
    """`--blur auto` / `--noise auto`: estimate (operators/estimate.py) the blur width and noise
    level of each batch (median over up to 3 of its frames), set SRMD's degradation map, report the
    estimate (a warning line) and store it as the `degradation` column: (N, 2) float32 [blur sigma
    in HR px, noise on the 0-255 scale] of what was applied (noise: the estimate, also for SRMDNF,
    which takes none)."""

    def __init__(self, wrapped, spec: ModelSpec, d: dict):
        self.wrapped, self.spec, self.d = wrapped, spec, dict(d)
        self.nf = spec.variant == "srmdnf"

    def apply(self, frames: np.ndarray) -> np.ndarray:
        from models.srmd import degradation_vector
        from .estimate import blur_sigma, noise_sigma
        d, n = self.d, len(frames)
        picks = sorted({0, n // 2, n - 1}) if n else []
        est_n, est_b = [], []
        for i in picks:
            nz = noise_sigma(frames[i]) if (d.get("noise") == AUTO or d.get("sigma") == AUTO) else None
            est_n.append(nz if d.get("noise") == AUTO else float(d.get("noise") or 0.0))
            if d.get("sigma") == AUTO:
                est_b.append(blur_sigma(frames[i], self.spec.scale, nz))
        noise = float(np.median(est_n)) if est_n else 0.0
        blur = float(np.median(est_b)) if est_b else float(d.get("sigma") or 0.0) if d.get("sigma") != AUTO else 0.0
        vec = degradation_vector(_kernel(d, blur), 0.0 if self.nf else noise, with_noise=not self.nf)
        self.wrapped.vector.copy_(vec.to(self.wrapped.vector.dtype))
        what = [f"blur sigma {blur:.2f} HR px" if d.get("sigma") == AUTO else None,
                f"noise {noise:.1f}/255" + (" (SRMDNF: not applied)" if self.nf else "")
                if d.get("noise") == AUTO else None]
        warnings.warn(f"{self.spec.variant} x{self.spec.scale}: estimated degradation of {n} frame(s): "
                      f"{', '.join(w for w in what if w)}", stacklevel=2)
        return np.tile(np.array([blur, noise], np.float32), (n, 1))


class Upscaler:
    def __init__(self, model: str, weights: str | None = None, scale: int | None = None,
                 device: str | None = "auto", precision: str = "fp32", tile: int = 0,
                 tile_overlap: int = 16, degradation: dict | None = None):
        self.model_name = model
        self.auto = None
        self.tile, self.tile_overlap = tile, tile_overlap
        self.device = resolve_device(device)
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}")
        if precision == "fp16" and self.device.type == "cpu":
            raise ValueError("fp16 needs a GPU; use bf16 or fp32 on CPU")
        self.dtype = PRECISIONS[precision]
        if model in INTERPOLATORS:
            if not scale:
                raise UnsupportedScale(f"{model} needs --scale")
            self.net, self.spec = None, ModelSpec(arch=model, variant=model, scale=int(scale))
            return
        net, spec = models.load(model, weights=weights, scale=scale)
        self.auto = None
        if spec.extra_inputs == ("degradation",):
            net = with_degradation(net, spec, degradation or {})
            if AUTO in ((degradation or {}).get("sigma"), (degradation or {}).get("noise")):
                self.auto = AutoDegradation(net, spec, degradation)
        elif spec.extra_inputs:
            raise ValueError(f"{model} needs {', '.join(spec.extra_inputs)} inputs; use its own operator")
        if spec.output not in ("image", "residual") or spec.scale < 1:
            raise ValueError(f"{model} is not an image-to-image upscaler")
        self.spec = spec
        self.residual_base = _residual_base(spec.arch)
        self.net = net.to(self.device, self.dtype).to(memory_format=torch.channels_last).eval()
        if self.auto is not None:
            self.auto.wrapped = self.net

    @property
    def scale(self) -> int:
        return self.spec.scale

    def shrink(self, level: int) -> None:
        """The engine's retry after a worker died on this item (out of memory, most often): tiles
        of 2048 >> level input pixels (1024 on the first retry), or the given tile halved per
        level, never below 64."""
        if not hasattr(self, "_tile0"):
            self._tile0 = self.tile
        self.tile = max(64, (self._tile0 or 2048) >> level)

    def __call__(self, batch: dict) -> dict:
        frames = batch["frames"]
        if len(frames) == 0:
            up = np.zeros((0, frames.shape[1] * self.scale, frames.shape[2] * self.scale, 3), frames.dtype)
        elif self.net is None:
            flag = INTERPOLATORS[self.model_name]
            up = np.stack([cv2.resize(f, None, fx=self.scale, fy=self.scale, interpolation=flag) for f in frames])
        else:
            deg = self.auto.apply(frames) if self.auto is not None and len(frames) else None
            up = self._network(frames)
        out = dict(batch)
        out["frames"] = up
        if self.auto is not None:
            out["degradation"] = deg if deg is not None else np.zeros((len(frames), 2), np.float32)
        return out

    @torch.inference_mode()
    def _network(self, frames: np.ndarray) -> np.ndarray:
        # On CPU one frame at a time: activations stay small enough for malloc to reuse them
        # (whole batches go through mmap and page faults: ~30% slower here); a GPU takes the batch.
        step = len(frames) if self.device.type == "cuda" else 1
        return np.concatenate([self._frames(frames[i:i + step]) for i in range(0, len(frames), step)])

    def _frames(self, frames: np.ndarray) -> np.ndarray:
        spec = self.spec
        peak = 255.0 if frames.dtype == np.uint8 else 65535.0
        x = torch.from_numpy(frames if frames.flags.writeable else frames.copy()).to(self.device).permute(0, 3, 1, 2).float() / peak
        out = tiled(lambda t: self._forward(t), x, spec.scale, self.tile, self.tile_overlap, spec.size_multiple)
        out = (out.clamp(0, 1) * peak).round()
        return out.permute(0, 2, 3, 1).to("cpu", torch.float32).numpy().astype(frames.dtype)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: float RGB in [0, 1] (N,3,h,w) -> RGB in [0, 1] at scale x."""
        spec = self.spec
        h, w = x.shape[-2:]
        m = spec.size_multiple
        ph, pw = (-h) % m, (-w) % m
        inp = F.pad(x, (0, pw, 0, ph), mode="replicate") if ph or pw else x
        if spec.channel_order == "BGR":
            inp = inp.flip(1)
        inp = inp * spec.input_range
        if spec.mean is not None:
            inp = inp - torch.tensor(spec.mean, device=inp.device).view(1, -1, 1, 1)
        inp = inp.to(self.dtype).contiguous(memory_format=torch.channels_last)
        y = self.net(inp).float()
        if spec.mean is not None:
            y = y + torch.tensor(spec.mean, device=y.device).view(1, -1, 1, 1)
        y = y / spec.input_range
        if spec.channel_order == "BGR":
            y = y.flip(1)
        y = y[..., : h * spec.scale, : w * spec.scale]
        if spec.output == "residual":
            y = y + self.residual_base(x, spec.scale)
        return y


def _residual_base(arch: str):
    """What a residual network's output is added to: the family's own upscale where it defines
    one (DBPN-RES-MR64-3 was trained on PIL's bicubic), else torch bicubic."""
    family = importlib.import_module(f"models.{arch}")
    return getattr(family, "bicubic_upscale", None) or (
        lambda x, s: F.interpolate(x, scale_factor=s, mode="bicubic", align_corners=False))

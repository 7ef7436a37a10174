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

from .base import RowWarning
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
    level of each shot, set SRMD's degradation map for its frames, report each estimate (a RowWarning
    on the shot's first row: the engine names its file or frame) and store what was applied as the `degradation` column: (N, 2) float32 [blur sigma in HR
    px, noise on the 0-255 scale] (noise: the estimate, also for SRMDNF, which takes none). The
    noise is read on the opponent-colour channels (`estimate.opponent_noise`), or on R, G, B where the
    batch's `lossy` column marks the shot's first frame (JPEG, lossy video: chroma smoothed); beside
    an estimated width SRMD is told `estimate.told_noise`.

    A frame starts a new shot where the batch's `shot_start` column says so (the image source: every
    file), else when its size changes or its luma histogram has moved from the last estimated
    frame's by more than SHOT_CUT (L1 distance of 32-bin histograms, 0..2): so each image of a
    photo batch gets its own estimate and a video's frames reuse their shot's, which keeps the blur
    search (22 SRMD runs on a 96 px crop) to once per shot."""

    SHOT_CUT = 0.25

    def __init__(self, wrapped, spec: ModelSpec, d: dict, run):
        """run(frames) upscales frames with the wrapped net's current vector."""
        self.wrapped, self.spec, self.d, self.run = wrapped, spec, dict(d), run
        self.nf = spec.variant == "srmdnf"
        self.ref: tuple | None = None       # (histogram, shape, blur, noise) of the shot's first frame

    def set(self, blur: float, noise: float) -> None:
        from models.srmd import degradation_vector
        vec = degradation_vector(_kernel(self.d, blur), 0.0 if self.nf else noise, with_noise=not self.nf)
        self.wrapped.vector.copy_(vec.to(self.wrapped.vector.dtype))

    def _sr(self, crop: np.ndarray, blur: float, noise: float) -> np.ndarray:
        self.set(blur, noise)
        return self.run(crop[None])[0]

    def _estimate(self, frame: np.ndarray, lossy: bool, index: int | None) -> tuple[float, float]:
        from .estimate import blur_sigma, noise_readings, told_noise
        d, s = self.d, self.spec.scale
        auto_blur, auto_noise = d.get("sigma") == AUTO, d.get("noise") == AUTO
        rgb, opp = noise_readings(frame, lossy) if auto_noise else (float(d.get("noise") or 0.0),) * 2
        # the blur search is steered by the R, G, B reading its maps were fitted on; SRMDNF takes no
        # noise level: its search runs noise-free, on the frame as it is
        blur = blur_sigma(frame, s, self._sr, 0.0 if self.nf else rgb) if auto_blur else float(d.get("sigma") or 0.0)
        noise = told_noise(rgb, opp, s, lossy) if auto_blur and auto_noise else opp
        what = [f"blur sigma {blur:.2f} HR px" if auto_blur else None,
                f"noise {noise:.1f}/255" + (" (SRMDNF: not applied)" if self.nf else "") if auto_noise else None]
        line = f"{self.spec.variant} x{s}: estimated degradation: {', '.join(w for w in what if w)}"
        # about this row alone: the runner names its file (or frame) and files it under that entry
        warnings.warn(line if index is None else RowWarning(line, index), stacklevel=3)
        return blur, noise

    def apply(self, frames: np.ndarray, shot_start: np.ndarray | None = None,
              lossy: np.ndarray | None = None, index: np.ndarray | None = None) -> np.ndarray:
        """(N, 2) [blur, noise] for the frames, estimating at each new shot (`index`: the batch's
        row identities, which each estimate's warning carries)."""
        out = np.zeros((len(frames), 2), np.float32)
        for i, f in enumerate(frames):
            lum = f.mean(-1) if f.ndim == 3 else f
            hist = np.histogram(lum, bins=32, range=(0, 255 if f.dtype == np.uint8 else 65535))[0] / lum.size
            if (self.ref is None or self.ref[1] != f.shape or np.abs(hist - self.ref[0]).sum() > self.SHOT_CUT
                    or (shot_start is not None and shot_start[i])):
                self.ref = (hist, f.shape) + self._estimate(f, bool(lossy is not None and lossy[i]),
                                                            None if index is None else int(index[i]))
            out[i] = self.ref[2:]
        return out


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
                self.auto = AutoDegradation(net, spec, degradation, self._network)
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
            deg = self.auto.apply(frames, batch.get("shot_start"), batch.get("lossy"),
                                  batch.get("index")) if self.auto is not None else None
            if deg is None:
                up = self._network(frames)
            else:                        # runs of frames with one degradation (a shot) share a call
                parts, a = [], 0
                for b in range(1, len(frames) + 1):
                    if b == len(frames) or (deg[b] != deg[a]).any():
                        self.auto.set(*map(float, deg[a]))
                        parts.append(self._network(frames[a:b]))
                        a = b
                up = np.concatenate(parts)
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

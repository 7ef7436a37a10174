"""A realistic degradation of HR training patches: what real footage goes through before it
reaches us (optics, resampling, sensor noise, JPEG, a video codec), after Real-ESRGAN's
"first-order" model (Wang et al. 2021, Sec. 3.1) with a video codec step added.

    lr = real_lr(hr, scale, gen)     # hr: (3, H, W) float in [0, 1], H and W multiples of scale

Steps, each with its own probability and random strength (`RealDegradation` holds the ranges):

1. blur: isotropic or anisotropic Gaussian (15x15, SRMD's kernels), sigma up to 0.6*scale + 0.4;
2. downscale by `scale` with one of: area, bilinear, bicubic (cv2), MATLAB bicubic (imresize);
3. noise: Gaussian (colour or grey, sigma 1..25 on the 0-255 scale) or Poisson (shot noise,
   10^2..10^3.5 photons at white);
4. JPEG at quality 30..95 (cv2);
5. H.264 or H.265 re-encode through PyAV (libx264/libx265, CRF 24..38): the patch is the second
   frame of a two-frame clip whose first frame is the same patch shifted by a few pixels, so it is
   coded as a P-frame with motion compensation, as in a video.

A small share of patches (`p_clean`) gets only the MATLAB bicubic downscale, so the network keeps
behaving on clean input. Randomness comes from the caller's torch.Generator (part of a training
checkpoint), so a resumed run continues the same sequence.
"""
from __future__ import annotations

import fractions
import math
from dataclasses import dataclass

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from models.imresize import imresize
from models.srmd import gaussian_kernel

__all__ = ["RealDegradation", "real_lr", "encode_video_frame", "FIXED_EVAL"]


@dataclass(frozen=True)
class RealDegradation:
    p_clean: float = 0.1
    p_blur: float = 0.9
    p_aniso: float = 0.5
    sigma_min: float = 0.2
    p_noise: float = 0.8
    p_poisson: float = 0.4
    p_grey_noise: float = 0.3
    noise_range_255: tuple[float, float] = (1.0, 25.0)
    photons_log10: tuple[float, float] = (2.0, 3.5)
    p_jpeg: float = 0.6
    jpeg_range: tuple[int, int] = (30, 95)
    p_video: float = 0.3
    crf_range: tuple[int, int] = (24, 38)

    def sigma_max(self, scale: int) -> float:
        return 0.6 * scale + 0.4


def _u(gen: torch.Generator, n: int = 1) -> list[float]:
    return torch.rand(n, generator=gen, dtype=torch.float64).tolist()


def _blur(hr: torch.Tensor, k: np.ndarray) -> torch.Tensor:
    r = k.shape[0] // 2
    kt = torch.from_numpy(k).to(hr.dtype)[None, None].expand(hr.shape[0], 1, *k.shape)
    return F.conv2d(F.pad(hr[None], (r, r, r, r), mode="replicate"), kt, groups=hr.shape[0])[0]


def _downscale(x: np.ndarray, scale: int, mode: int) -> np.ndarray:
    """x: (H, W, 3) float32. mode 0..2: cv2 area/bilinear/bicubic; 3: MATLAB bicubic."""
    h, w = x.shape[0] // scale, x.shape[1] // scale
    if mode == 3:
        t = torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))
        return imresize(t, 1.0 / scale).numpy().transpose(1, 2, 0)
    interp = (cv2.INTER_AREA, cv2.INTER_LINEAR, cv2.INTER_CUBIC)[mode]
    return cv2.resize(x, (w, h), interpolation=interp)


def _jpeg(x: np.ndarray, quality: int) -> np.ndarray:
    u8 = np.clip(np.rint(x * 255.0), 0, 255).astype(np.uint8)
    ok, buf = cv2.imencode(".jpg", u8[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise RuntimeError("cv2.imencode failed")
    return cv2.imdecode(buf, cv2.IMREAD_COLOR)[:, :, ::-1].astype(np.float32) / 255.0


def encode_video_frame(x: np.ndarray, codec: str = "libx264", crf: int = 30,
                       shift: tuple[int, int] = (2, 1)) -> np.ndarray:
    """Code `x` ((H, W, 3) uint8 RGB, H and W even) as the P-frame of a two-frame clip (first
    frame: `x` rolled by `shift`) and return the decoded P-frame, uint8 RGB."""
    import av
    h, w = x.shape[:2]
    # libx265 corrupts its heap on frames under one 64x64 CTU: pad small frames, crop the result
    ph, pw = max(0, 64 - h), max(0, 64 - w)
    if ph or pw:
        x = np.pad(x, ((0, ph), (0, pw), (0, 0)), mode="reflect" if ph < h and pw < w else "edge")
    first = np.roll(x, shift, axis=(0, 1))
    enc = av.CodecContext.create(codec, "w")            # no container: nothing to mux, no timestamps to guess
    enc.width, enc.height, enc.pix_fmt = x.shape[1], x.shape[0], "yuv420p"
    enc.time_base, enc.framerate = fractions.Fraction(1, 25), fractions.Fraction(25, 1)
    opts = {"crf": str(int(crf)), "preset": "ultrafast"}
    if codec == "libx265":
        opts["x265-params"] = "log-level=none:pools=none:frame-threads=1:lookahead-slices=0"
    enc.options = opts
    packets = []
    for i, a in enumerate((first, x)):
        fr = av.VideoFrame.from_ndarray(np.ascontiguousarray(a), format="rgb24").reformat(format="yuv420p")
        fr.pts = i
        packets += enc.encode(fr)
    packets += enc.encode(None)
    dec = av.CodecContext.create("hevc" if codec == "libx265" else "h264", "r")
    if enc.extradata:
        dec.extradata = enc.extradata
    frames = []
    for pkt in packets + [None]:
        frames += [f.to_ndarray(format="rgb24") for f in dec.decode(pkt)]
    return frames[-1][:h, :w]


def _video(x: np.ndarray, gen: torch.Generator, d: RealDegradation) -> np.ndarray:
    h, w = x.shape[:2]
    he, we = h - h % 2, w - w % 2
    if he < 16 or we < 16:
        return x
    u = _u(gen, 4)
    codec = "libx265" if u[0] < 0.5 else "libx264"
    crf = int(round(d.crf_range[0] + (d.crf_range[1] - d.crf_range[0]) * u[1]))
    shift = (int(u[2] * 7) - 3, int(u[3] * 7) - 3)
    u8 = np.clip(np.rint(x * 255.0), 0, 255).astype(np.uint8)[:he, :we]
    out = x.copy()
    import av
    try:
        coded = encode_video_frame(np.ascontiguousarray(u8), codec, crf, shift)
    except (av.FFmpegError, IndexError):     # a rare encoder refusal (EINVAL) must not stop a training run
        return x
    out[:he, :we] = coded[:he, :we].astype(np.float32) / 255.0
    return out


def real_lr(hr: torch.Tensor, scale: int, gen: torch.Generator,
            d: RealDegradation = RealDegradation()) -> torch.Tensor:
    """One random realistic degradation of a (3, H, W) HR patch -> (3, H/scale, W/scale)."""
    if _u(gen)[0] < d.p_clean:
        return imresize(hr, 1.0 / scale).clamp(0, 1)
    u = _u(gen, 6)
    x = hr
    if u[0] < d.p_blur:
        lo, hi = d.sigma_min, d.sigma_max(scale)
        v = _u(gen, 4)
        if u[1] < d.p_aniso:
            k = gaussian_kernel(15, theta=math.pi * v[0], l1=(lo + (hi - lo) * v[1]) ** 2,
                                l2=(lo + (hi - lo) * v[2]) ** 2)
        else:
            k = gaussian_kernel(15, sigma=lo + (hi - lo) * v[3])
        x = _blur(x, k)
    a = x.permute(1, 2, 0).numpy().astype(np.float32)
    a = np.clip(_downscale(a, scale, min(3, int(u[2] * 4))), 0, 1)
    rng = np.random.default_rng(int(torch.randint(2 ** 31 - 1, (1,), generator=gen)))
    if u[3] < d.p_noise:
        v = _u(gen, 3)
        if v[0] < d.p_poisson:
            lo, hi = d.photons_log10
            photons = 10.0 ** (lo + (hi - lo) * v[1])
            if v[2] < d.p_grey_noise:
                y = a @ np.array([0.299, 0.587, 0.114], np.float32)
                n = rng.poisson(np.clip(y, 0, 1) * photons) / photons - y
                a = a + n[:, :, None].astype(np.float32)
            else:
                a = (rng.poisson(np.clip(a, 0, 1) * photons) / photons).astype(np.float32)
        else:
            lo, hi = d.noise_range_255
            s = (lo + (hi - lo) * v[1]) / 255.0
            shape = a.shape[:2] + ((1,) if v[2] < d.p_grey_noise else (3,))
            a = a + (s * rng.standard_normal(shape)).astype(np.float32)
        a = np.clip(a, 0, 1)
    if u[4] < d.p_jpeg:
        q = int(round(d.jpeg_range[0] + (d.jpeg_range[1] - d.jpeg_range[0]) * _u(gen)[0]))
        a = _jpeg(a, q)
    if u[5] < d.p_video:
        a = _video(a, gen, d)
    return torch.from_numpy(np.ascontiguousarray(a.transpose(2, 0, 1))).to(hr.dtype).clamp(0, 1)


# The fixed evaluation degradation (benchmarks, tests): one stated setting, no randomness except
# the seeded noise.  Gaussian blur sigma 0.8*scale/2 ... see `fixed_lr`.
FIXED_EVAL = {"blur_sigma": {2: 1.2, 3: 1.6, 4: 2.0}, "noise_255": 10.0, "jpeg": 75, "seed": 0}


def fixed_lr(hr: torch.Tensor, scale: int, blur_sigma: float | None = None, noise_255: float | None = None,
             jpeg: int | None = None, seed: int | None = None) -> torch.Tensor:
    """The benchmarks' fixed real-world degradation: isotropic Gaussian blur (FIXED_EVAL sigma per
    scale), MATLAB bicubic downscale, AWGN (sigma 10/255, numpy seed 0), JPEG quality 75."""
    e = FIXED_EVAL
    sigma = e["blur_sigma"][scale] if blur_sigma is None else blur_sigma
    noise = e["noise_255"] if noise_255 is None else noise_255
    q = e["jpeg"] if jpeg is None else jpeg
    x = _blur(hr.double(), gaussian_kernel(15, sigma=sigma)).float() if sigma else hr
    lr = imresize(x, 1.0 / scale).permute(1, 2, 0).numpy().astype(np.float32)
    rng = np.random.default_rng(e["seed"] if seed is None else seed)
    if noise:
        lr = lr + (noise / 255.0) * rng.standard_normal(lr.shape).astype(np.float32)
    lr = np.clip(lr, 0, 1)
    if q:
        lr = _jpeg(lr, q)
    return torch.from_numpy(np.ascontiguousarray(lr.transpose(2, 0, 1))).clamp(0, 1)

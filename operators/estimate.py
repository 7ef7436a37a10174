"""Degradation of an input frame, estimated from the frame alone, to steer SRMD (`--blur auto`,
`--noise auto`): the AWGN level and the width of the Gaussian blur applied before downscaling.

Noise (`noise_sigma`): Chen, Zhu & Heng, "An Efficient Statistical Method for Image Noise Level
Estimation" (ICCV 2015). The covariance of 7x7 patches has the noise variance as its small
eigenvalues; the noise-only tail is the longest one whose mean equals its median. Estimated per
channel and averaged; robust to texture where a wavelet MAD over-reads (it counts fine detail
as noise).

Blur (`blur_sigma`): SRMD in the loop. SRMD given too narrow a kernel leaves the image soft; given
too wide a one it over-sharpens and rings. The sparsity of the output's Laplacian (L1/L2, after the
normalised sparsity measure of Krishnan, Tay & Fergus, CVPR 2011) is lowest near the true width,
so the width is the minimiser of that measure over SRMD's outputs for a grid of widths (a coarse
grid, a fine one around its best, a parabola through the fine minimum) on the busiest 96x96 LR
crop. The minimiser sits wide of the truth (more with noise), so a map of (minimiser, noise) to the
width, quadratic in the one and linear in the other, is fitted by `calibrate_blur` on BSD100
img_001..img_050 only (`_CALIB`); Set5, Set14 and BSD100 img_051..img_100 are what it is tested and
benchmarked on. Cost: 15 SRMD runs on the crop per estimate (per image, or per shot of a video).
Accuracy (benchmarks/README.md): mean PSNR loss against the true width 0.45 dB at x2, 0.29 at x4
on the fit images; image content still moves it 0.1-0.4 px, which SRMD's sharp noise-free optimum
at x2 turns into 1-3 dB on some images. It replaced a spectral (band-energy) estimator whose
errors at the ends of the range cost 2-8.5 dB.
"""
from __future__ import annotations

from typing import Callable

import cv2
import numpy as np

__all__ = ["noise_sigma", "blur_sigma", "estimate", "sparsity", "calibrate_blur", "SIGMA_RANGE"]

_PATCH = 7
_MAX_PATCHES = 15000
SIGMA_RANGE = {2: (0.2, 2.0), 3: (0.2, 3.0), 4: (0.2, 4.0)}   # SRMD paper's kernel widths


def _as_float255(img) -> np.ndarray:
    a = np.asarray(img)
    if a.dtype == np.uint8:
        return a.astype(np.float64)
    if a.dtype == np.uint16:
        return a.astype(np.float64) / 257.0
    a = a.astype(np.float64)
    return a * 255.0 if a.max() <= 1.0 + 1e-6 else a


def _chen(p: np.ndarray) -> float:
    """sqrt of the mean of the longest eigenvalue tail whose mean has reached its median."""
    p = p - p.mean(0)
    eig = np.sort(np.linalg.eigvalsh(p.T @ p / max(1, p.shape[0] - 1)))[::-1]
    eig = np.clip(eig, 0, None)
    for i in range(len(eig)):
        tail = eig[i:]
        tau = tail.mean()
        if np.sum(tail > tau) >= np.sum(tail < tau):     # mean has reached the median
            return float(np.sqrt(tau))
    return float(np.sqrt(eig[-1]))


def _grad_energy(x: np.ndarray) -> np.ndarray:
    """Sum of squared horizontal and vertical differences inside each 7x7 patch."""
    from numpy.lib.stride_tricks import sliding_window_view
    dh = np.diff(x, axis=1) ** 2
    dv = np.diff(x, axis=0) ** 2
    return (sliding_window_view(dh, (_PATCH, _PATCH - 1)).sum((-1, -2))
            + sliding_window_view(dv, (_PATCH - 1, _PATCH)).sum((-1, -2)))


_Q99: float | None = None


def _q99() -> float:
    """99th percentile of a patch's gradient energy for unit-variance white noise."""
    global _Q99
    if _Q99 is None:
        _Q99 = float(np.quantile(_grad_energy(np.random.default_rng(7).standard_normal((256, 256))), 0.99))
    return _Q99


def _channel_noise(x: np.ndarray, rng: np.random.Generator) -> float:
    """Chen et al. on all patches, then on the weak-texture patches only (Liu et al. 2013: those
    whose gradient energy noise alone would explain at 99%), iterated to a fixed point."""
    from numpy.lib.stride_tricks import sliding_window_view
    view = sliding_window_view(x, (_PATCH, _PATCH))
    g = _grad_energy(x)
    n = g.size
    keep = rng.integers(0, n, _MAX_PATCHES) if n > _MAX_PATCHES else np.arange(n)
    iy, ix = np.divmod(keep, g.shape[1])
    p, g = view[iy, ix].reshape(-1, _PATCH * _PATCH), g[iy, ix]
    sigma = _chen(p)
    for _ in range(5):
        sel = g < _q99() * max(sigma, 0.2) ** 2
        if sel.sum() < 20 * _PATCH * _PATCH:
            break
        new = _chen(p[sel])
        if abs(new - sigma) < 0.01:
            sigma = new
            break
        sigma = new
    return sigma


def noise_sigma(img) -> float:
    """AWGN standard deviation on the 0-255 scale of an (H, W[, C]) image (uint8, uint16 or float
    in [0, 1]); the mean over the colour channels."""
    a = _as_float255(img)
    if a.ndim == 2:
        a = a[:, :, None]
    if min(a.shape[:2]) < 2 * _PATCH:
        raise ValueError(f"image of {a.shape[1]}x{a.shape[0]} is too small to estimate its noise")
    rng = np.random.default_rng(0)
    return float(np.mean([_channel_noise(a[:, :, c], rng) for c in range(a.shape[2])]))


def _luma(a: np.ndarray) -> np.ndarray:
    return a if a.ndim == 2 else a[:, :, :3] @ np.array([0.299, 0.587, 0.114])


# SR(lr crop uint8/uint16 RGB, blur sigma in HR px, noise 0-255) -> the upscaled crop
SR = Callable[[np.ndarray, float, float], np.ndarray]

_CROP = 96
_COARSE = 8        # coarse grid points over the search range
_FINE = 7          # fine grid points over +-1 coarse step


def sparsity(img) -> float:
    """L1/L2 of the Laplacian of the luma: low for sharp, clean edges; raised by blur (spread
    responses) and by ringing (extra oscillations)."""
    lap = cv2.Laplacian(_luma(_as_float255(img)), cv2.CV_64F)
    return float(np.abs(lap).sum() / max(np.sqrt((lap ** 2).sum()), 1e-12))


def busiest_crop(img: np.ndarray, size: int = _CROP) -> np.ndarray:
    """The size x size window (on a size/4 grid) with the most Laplacian energy: flat sky says
    nothing about the blur."""
    h, w = img.shape[:2]
    if h <= size and w <= size:
        return img
    lap = np.abs(cv2.Laplacian(_luma(_as_float255(img)), cv2.CV_64F))
    ii = cv2.integral(lap)
    step = max(size // 4, 1)
    best, at = -1.0, (0, 0)
    for y in range(0, max(h - size, 0) + 1, step):
        for x in range(0, max(w - size, 0) + 1, step):
            y1, x1 = min(y + size, h), min(x + size, w)
            e = ii[y1, x1] - ii[y, x1] - ii[y1, x] + ii[y, x]
            if e > best:
                best, at = e, (y, x)
    y, x = at
    return img[y:y + size, x:x + size]


def raw_blur(img: np.ndarray, scale: int, sr: SR, noise: float = 0.0) -> float:
    """The width (HR px) whose SRMD output has the sparsest Laplacian, before calibration."""
    lo, hi = SIGMA_RANGE[int(scale)]
    hi = hi * 1.15                       # room for a minimum at the top of SRMD's range
    crop = np.ascontiguousarray(busiest_crop(img))
    shave = 4 * int(scale)

    def measure(sig: float) -> float:
        out = sr(crop, float(sig), float(noise))
        return sparsity(out[shave:-shave, shave:-shave] if min(out.shape[:2]) > 4 * shave else out)
    coarse = np.linspace(lo, hi, _COARSE)
    i = int(np.argmin([measure(x) for x in coarse]))
    step = coarse[1] - coarse[0]
    fine = np.linspace(max(lo, coarse[i] - step), min(hi, coarse[i] + step), _FINE)
    vals = np.array([measure(x) for x in fine])
    j = int(np.argmin(vals))
    if 0 < j < len(fine) - 1:
        a, b, c = vals[j - 1:j + 2]
        curv = a - 2 * b + c
        if curv > 0:
            return float(fine[j] + 0.5 * (a - c) / curv * (fine[1] - fine[0]))
    return float(fine[j])


# sigma = c . (1, raw, raw^2, n, n raw), n = noise / 50: least squares by calibrate_blur on BSD100
# img_001..img_050 with the authors' SRMD, leaving out minimisers at the top of the search (`python
# benchmarks/blur_calibration.py` prints the fit and its errors).
_CALIB = {2: (-0.0967, 1.0719, -0.0374, 0.1347, -0.4667),     # mean |error| on the fit images: 0.13 HR px
          3: (0.1271, 0.5586, 0.1242, -0.0773, -0.4414),      # (noise-free: 0.05 at x2, 0.11 at x3,
          4: (-0.034, 0.8764, -0.0114, -0.7797, 0.0332)}      # 0.24 at x4), 0.23 at x3, 0.48 at x4


# A minimiser at the top of the search is unreliable (strong noise, or texture SRMD turns into
# flat cartoon when told to sharpen a lot): there the estimate is a fixed 0.65 of SRMD's range,
# the value with the least mean PSNR loss on those cases of the fit images (a width read too wide
# costs SRMD far more than one read too narrow).
_UNSURE, _FALLBACK = 0.9, 0.65


def _terms(raw, n) -> np.ndarray:
    raw, n = np.asarray(raw, np.float64), np.asarray(n, np.float64) / 50.0
    return np.stack([np.ones_like(raw), raw, raw ** 2, n, n * raw], -1)


def _calibrated(raw: float, noise: float, scale: int) -> float:
    return float(_terms(raw, noise) @ np.asarray(_CALIB[int(scale)]))


def blur_sigma(img, scale: int, sr: SR, noise: float | None = None) -> float:
    """Width (HR pixels) of the Gaussian blur before the x`scale` bicubic downscale that made
    `img`, clipped to SRMD's range for the scale; `sr` runs the SRMD the estimate is for.
    Measured accuracy: tests/test_estimate.py, benchmarks/README.md."""
    if int(scale) not in SIGMA_RANGE:
        raise ValueError(f"no blur estimator for x{scale} (x2, x3, x4)")
    lo, hi = SIGMA_RANGE[int(scale)]
    n = noise_sigma(img) if noise is None else float(noise)
    raw = raw_blur(np.asarray(img), scale, sr, n)
    if raw >= _UNSURE * hi * 1.15:
        return _FALLBACK * hi
    return float(np.clip(_calibrated(raw, n, scale), lo, hi))


def estimate(img, scale: int, sr: SR) -> tuple[float, float]:
    """(blur sigma in HR pixels, noise sigma on the 0-255 scale) of one LR frame."""
    n = noise_sigma(img)
    return blur_sigma(img, scale, sr, n), n


def calibrate_blur(samples, scale: int, sr: SR) -> tuple[np.ndarray, np.ndarray]:
    """Fit `_CALIB[scale]` from (LR uint8 image, true sigma, true noise) samples: returns the
    coefficients and the rows (true sigma, noise, raw minimiser) they were fitted on. Minimisers at
    the top of the search (strong noise can push them there) say little and are left out."""
    rows = np.array([(sig, n, raw_blur(lr, scale, sr, n)) for lr, sig, n in samples])
    top = SIGMA_RANGE[int(scale)][1] * 1.15
    fit = rows[:, 2] < 0.98 * top
    coef, *_ = np.linalg.lstsq(_terms(rows[fit, 2], rows[fit, 1]), rows[fit, 0], rcond=None)
    return coef, rows

"""Degradation of an input frame, estimated from the frame alone, to steer SRMD (`--blur auto`,
`--noise auto`): the AWGN level and the width of the Gaussian blur applied before downscaling.

Noise (`noise_sigma`): Chen, Zhu & Heng, "An Efficient Statistical Method for Image Noise Level
Estimation" (ICCV 2015). The covariance of 7x7 patches has the noise variance as its small
eigenvalues; the noise-only tail is the longest one whose mean equals its median. Estimated per
channel and averaged; robust to texture where a wavelet MAD over-reads (it counts fine detail
as noise).

Blur (`blur_sigma`): the SRMD degradation model blurs the HR image with a Gaussian of width
sigma (HR pixels) before bicubic downscaling, which reshapes the LR image's spectrum. The feature
is the energy of 5 difference-of-Gaussians bands of the LR luma (noise share removed using the
noise estimate), as log ratios to the coarsest band; a quadratic least-squares fit maps them to
sigma/scale. The fit (`_BLUR_COEF`) was made by `calibrate_blur` on T91 only (91 images x 8 random
(sigma, noise) draws at x2); Set5/Set14/BSD100 were not used. It is coarse: mean absolute error
0.26 HR px at x2 on held-out T91 draws, regressing to the middle of the range (small widths read
high, large ones low); errors on Set14/BSD100 are asserted in tests/test_estimate.py.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

__all__ = ["noise_sigma", "blur_sigma", "estimate", "blur_features", "calibrate_blur", "SIGMA_RANGE"]

_PATCH = 7
_MAX_PATCHES = 15000
_DOG = (0.6, 1.0, 1.6, 2.6, 4.2, 6.8)     # band edges (LR px): 5 bands
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


def _band_noise_gain() -> np.ndarray:
    """Energy of each DoG band for unit-variance white noise (measured once on a fixed field)."""
    rng = np.random.default_rng(12345)
    n = rng.standard_normal((512, 512))
    return _bands(n, 0.0)


def _bands(y: np.ndarray, noise_var: float) -> np.ndarray:
    gs = [ndimage.gaussian_filter(y, s, mode="reflect") for s in _DOG]
    m = 8
    e = np.array([np.mean((gs[i] - gs[i + 1])[m:-m, m:-m] ** 2) for i in range(len(_DOG) - 1)])
    return e


_GAIN: np.ndarray | None = None


def blur_features(img, noise: float | None = None) -> np.ndarray:
    """log band-energy ratios (finest four bands over the coarsest), noise energy removed."""
    global _GAIN
    if _GAIN is None:
        _GAIN = _band_noise_gain()
    a = _as_float255(img)
    n = noise_sigma(a) if noise is None else float(noise)
    y = _luma(a)
    e = _bands(y, 0.0)
    luma_var = n * n * (0.299 ** 2 + 0.587 ** 2 + 0.114 ** 2)
    e = np.maximum(e - luma_var * _GAIN, 1e-3 * e[-1] + 1e-9)
    r = np.log(e[:-1] / e[-1])
    return np.concatenate([r, [1.0]])


def _quad(f: np.ndarray) -> np.ndarray:
    """[r, 1, r_i * r_j (i <= j)] of the log ratios r (the 4 first entries of `blur_features`)."""
    r = np.atleast_2d(f)[:, :4]
    cols = [r, np.ones((len(r), 1))] + [(r[:, i] * r[:, j])[:, None] for i in range(4) for j in range(i, 4)]
    return np.concatenate(cols, 1)


# sigma / scale = _quad(features) @ _BLUR_COEF: least squares on T91 at x2 (728 draws, sigma 0.2-2.0,
# noise 0-30 on 70% of them); the LR-pixel width sigma/scale is what the spectrum shows, so the same
# fit serves every scale (image statistics are close to scale-invariant).
_BLUR_COEF = np.array([-0.821791, 0.777567, 0.359033, -0.135075, 0.160735, -0.11069, 0.374452, -1.132738,
                       1.386541, -0.704555, 4.396774, -3.979816, -4.153239, 5.41278, -1.400219])


def blur_sigma(img, scale: int, noise: float | None = None) -> float:
    """Width (HR pixels) of the Gaussian blur before the x`scale` bicubic downscale that made
    `img`, clipped to SRMD's range for the scale. Measured accuracy: see tests/test_estimate.py."""
    if int(scale) not in SIGMA_RANGE:
        raise ValueError(f"no blur estimator for x{scale} (x2, x3, x4)")
    lo, hi = SIGMA_RANGE[int(scale)]
    return float(np.clip(scale * (_quad(blur_features(img, noise)) @ _BLUR_COEF)[0], lo, hi))


def estimate(img, scale: int) -> tuple[float, float]:
    """(blur sigma in HR pixels, noise sigma on the 0-255 scale) of one LR frame."""
    n = noise_sigma(img)
    return blur_sigma(img, scale, n), n


def calibrate_blur(hr_images, scale: int, draws: int = 12, noise_max: float = 30.0, seed: int = 0):
    """Fit `_BLUR_COEF[scale]` from HR images (float RGB [0,1], (3,H,W) torch tensors): each gets
    `draws` random (sigma, noise) degradations (SRMD's: Gaussian blur, MATLAB bicubic, AWGN)."""
    import torch
    import torch.nn.functional as F
    from models.imresize import imresize
    from models.srmd import gaussian_kernel
    rng = np.random.default_rng(seed)
    lo, hi = SIGMA_RANGE[scale]
    xs, ys = [], []
    for hr in hr_images:
        h, w = (hr.shape[-2] // scale) * scale, (hr.shape[-1] // scale) * scale
        hr = hr[:, :h, :w].double()
        for _ in range(draws):
            s = rng.uniform(lo, hi)
            n = rng.uniform(0, noise_max) if rng.random() < 0.7 else 0.0
            k = torch.from_numpy(gaussian_kernel(15, sigma=s))[None, None].expand(3, 1, 15, 15)
            b = F.conv2d(F.pad(hr[None], (7, 7, 7, 7), mode="replicate"), k, groups=3)[0]
            lr = imresize(b, 1.0 / scale).permute(1, 2, 0).numpy() * 255
            lr = np.clip(np.round(lr + n * rng.standard_normal(lr.shape)), 0, 255).astype(np.uint8)
            if min(lr.shape[:2]) < 32:
                continue
            xs.append(blur_features(lr, n))      # the true noise: the estimator is tested on its own
            ys.append(s)
    X, Y = np.array(xs), np.array(ys)
    coef, *_ = np.linalg.lstsq(_quad(X), Y / scale, rcond=None)
    return coef, X, Y

"""PSNR and SSIM as the SR papers compute them, one implementation for the quality benchmark
(benchmarks/quality.py imports these) and the image jobs' `--reference` mode.

Convention (RDN's `Evaluate_PSNR_SSIM.m`, SelfExSR): metrics on the Y channel of MATLAB `rgb2ycbcr`
(BT.601, 16..235, kept as float) after shaving `scale` pixels at every border; SSIM = Wang et al.'s
ssim_index (11x11 Gaussian, sigma 1.5, K = 0.01/0.03, L = 255, 'valid' window positions only).
Grey ground truths are compared on their grey values, as the MATLAB scripts do (rgb2ycbcr is only
applied to 3-channel images). 16-bit images are brought to the 0-255 scale first, so numbers are
comparable across bit depths."""
from __future__ import annotations

import math

import cv2
import numpy as np


def rgb2y(img: np.ndarray) -> np.ndarray:
    """MATLAB rgb2ycbcr's Y (BT.601, 16..235) of uint8 RGB, as float64 (grey images: the image)."""
    x = np.asarray(img, np.float64)
    if x.ndim == 2:
        return x
    return 16.0 + (65.481 * x[..., 0] + 128.553 * x[..., 1] + 24.966 * x[..., 2]) / 255.0


def _shave(a: np.ndarray, s: int) -> np.ndarray:
    return a[s:-s, s:-s] if s > 0 else a


def psnr(a: np.ndarray, b: np.ndarray, shave: int = 0, peak: float = 255.0) -> float:
    """PSNR of two float/uint8 images (any channels), borders of `shave` px dropped."""
    d = _shave(np.asarray(a, np.float64), shave) - _shave(np.asarray(b, np.float64), shave)
    mse = float(np.mean(d ** 2))
    return math.inf if mse == 0 else 10 * math.log10(peak ** 2 / mse)


def ssim(a: np.ndarray, b: np.ndarray, shave: int = 0, peak: float = 255.0) -> float:
    """Wang et al. SSIM of two single-channel images (MATLAB ssim_index: 'valid' windows only)."""
    x = _shave(np.asarray(a, np.float64), shave)
    y = _shave(np.asarray(b, np.float64), shave)
    c1, c2 = (0.01 * peak) ** 2, (0.03 * peak) ** 2
    g = cv2.getGaussianKernel(11, 1.5)
    w = g @ g.T

    def f(t):
        return cv2.filter2D(t, -1, w, borderType=cv2.BORDER_REFLECT)[5:-5, 5:-5]

    mx, my = f(x), f(y)
    sxx, syy, sxy = f(x * x) - mx ** 2, f(y * y) - my ** 2, f(x * y) - mx * my
    m = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx ** 2 + my ** 2 + c1) * (sxx + syy + c2))
    return float(m.mean())


def y_metrics(sr: np.ndarray, hr: np.ndarray, scale: int, grey: bool = False) -> tuple[float, float]:
    """(PSNR, SSIM) on Y, borders of `scale` px shaved. Grey ground truths (Set14 'bridge') are
    compared on the grey values: rgb2ycbcr of grey would squeeze it to 16..235."""
    if grey:
        ys = np.asarray(sr, np.float64).mean(-1) if sr.ndim == 3 else sr
        yh = np.asarray(hr, np.float64)[..., 0] if hr.ndim == 3 else hr
        return psnr(ys, yh, scale), ssim(ys, yh, scale)
    ys, yh = rgb2y(sr), rgb2y(hr)
    return psnr(ys, yh, scale), ssim(ys, yh, scale)


def _to_255(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a)
    if a.dtype == np.uint16:
        return a.astype(np.float64) / 257.0
    return a


def is_grey(img: np.ndarray) -> bool:
    """A 2-D image, or three equal channels (how imageio hands grayscale files to the models)."""
    img = np.asarray(img)
    return img.ndim == 2 or (img.shape[-1] == 3 and np.array_equal(img[..., 0], img[..., 1])
                             and np.array_equal(img[..., 0], img[..., 2]))


def item_metrics(sr: np.ndarray, hr: np.ndarray, scale: int, grey: bool | None = None) -> tuple[float, float]:
    """(PSNR, SSIM) of one output against its reference, for the image jobs: uint8 or uint16,
    the reference cropped top-left to the output's size (an HR whose sides are not multiples of the
    scale, the benchmark sets' convention), grey decided from the reference unless given."""
    sr, hr = _to_255(sr), _to_255(hr)
    h, w = min(sr.shape[0], hr.shape[0]), min(sr.shape[1], hr.shape[1])
    sr, hr = sr[:h, :w], hr[:h, :w]
    if grey is None:
        grey = is_grey(hr)
    return y_metrics(sr, hr, int(scale), grey)


def bicubic(lr: np.ndarray, scale: int) -> np.ndarray:
    """MATLAB imresize bicubic upscale (the papers' baseline), same dtype as `lr`."""
    from models.imresize import imresize
    return imresize(lr, scale)


def quality(sr: np.ndarray, hr: np.ndarray, scale: int, lr: np.ndarray | None = None) -> dict:
    """The manifest's metric columns for one item: psnr, ssim and, given the LR input, the bicubic
    baseline's psnr_bicubic, ssim_bicubic (so a report can say what the model added)."""
    grey = is_grey(_to_255(hr))
    p, s = item_metrics(sr, hr, scale, grey)
    out = {"psnr": p, "ssim": s}
    if lr is not None:
        pb, sb = item_metrics(bicubic(lr, scale), hr, scale, grey)
        out.update(psnr_bicubic=pb, ssim_bicubic=sb)
    return out

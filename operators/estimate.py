"""Degradation of an input frame, estimated from the frame alone, to steer SRMD (`--blur auto`,
`--noise auto`): the AWGN level and the width of the Gaussian blur applied before downscaling.

Noise (`noise_sigma`): Chen, Zhu & Heng, "An Efficient Statistical Method for Image Noise Level
Estimation" (ICCV 2015). The covariance of 7x7 patches has the noise variance as its small
eigenvalues; the noise-only tail is the longest one whose mean equals its median. Estimated per
channel and averaged; robust to texture where a wavelet MAD over-reads (it counts fine detail
as noise), though fine texture still reads as 0.2-6/255 on clean images. `opponent_noise` reads it
on the two opponent-colour channels instead, where grey edges and texture cancel and per-channel
noise (SRMD's model) stays whole: under 0.4/255 on clean x2 images; not for lossy input, whose
codec smoothed the colour but not the luma's noise (the `lossy` batch column). Beside an
estimated width SRMD is told `told_noise`: the opponent reading plus a quarter of the R, G, B
reading's excess, or for lossy input the R, G, B reading times a per-scale factor (2-4: the codec
took the noise but left blocking SRMD only smooths when told more), both fitted by
benchmarks/noise_blend.py.

Blur (`blur_sigma`): SRMD in the loop. SRMD given too narrow a kernel leaves the image soft; given
too wide a one it over-sharpens and rings. The sparsity of the output's Laplacian (L1/L2, after the
normalised sparsity measure of Krishnan, Tay & Fergus, CVPR 2011) is lowest near the true width.
SRMD runs on a busy 96x96 LR crop at 22 widths spanning its range, and a per-scale ridge map
(`blur_map.json`) reads the width off the curve of that measure and the noise level. At x2 the
estimate is the median of that over the three busiest crops that overlap by at most half (one where
the image is small). At x2 and x4 the map reads the whole curve (where its minimum lies, and how
steeply ringing sets in right of it), fitted by benchmarks/blur_corrector.py on T91, BSD100
img_001..img_050 and the Urban100 subset, with its penalty and a shift towards narrow widths chosen
for the least PSNR loss (a width read too wide costs SRMD more than one read too narrow). At x3 it
reads the minimiser and noise alone (the calibration fitted on BSD100 img_001..img_050 before the
learned maps), with a fixed width where the minimiser sits at the top of the search. Set5, Set14 and
BSD100 img_051..img_100 are what it is tested and benchmarked on. Cost: 22 SRMD runs on each crop
per estimate (per image, or per shot of a video). Accuracy: benchmarks/README.md. Image content
(bokeh, smooth skin, facades) still moves it by 0.1 px or more, which SRMD's sharp noise-free
optimum turns into 0.5 dB or more on some images.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import cv2
import numpy as np

__all__ = ["noise_sigma", "blur_sigma", "blur_crops", "crop_curves", "crop_widths", "map_width", "busiest_windows", "estimate",
           "sparsity", "sparsity_curve", "blur_features", "predict_blur", "feature_grid",
           "opponent_noise", "noise_readings", "told_noise", "SIGMA_RANGE"]

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
_GRID = 22         # widths per estimate: 0.1 HR px apart at x2


def sparsity(img) -> float:
    """L1/L2 of the Laplacian of the luma: low for sharp, clean edges; raised by blur (spread
    responses) and by ringing (extra oscillations)."""
    lap = cv2.Laplacian(_luma(_as_float255(img)), cv2.CV_64F)
    return float(np.abs(lap).sum() / max(np.sqrt((lap ** 2).sum()), 1e-12))


def busiest_windows(img: np.ndarray, count: int, size: int = _CROP) -> list[tuple[int, int, int, int]]:
    """(y, x, height, width) of up to `count` size x size windows (on a size/4 grid), busiest first
    (most Laplacian energy: flat sky says nothing about the blur), each overlapping every busier one
    by at most half its area. An image no larger than the window is the one window."""
    h, w = img.shape[:2]
    if h <= size and w <= size:
        return [(0, 0, h, w)]
    lap = np.abs(cv2.Laplacian(_luma(_as_float255(img)), cv2.CV_64F))
    ii = cv2.integral(lap)
    step = max(size // 4, 1)
    ch, cw = min(size, h), min(size, w)
    cands = []
    for y in range(0, max(h - size, 0) + 1, step):
        for x in range(0, max(w - size, 0) + 1, step):
            y1, x1 = min(y + size, h), min(x + size, w)
            cands.append((ii[y1, x1] - ii[y, x1] - ii[y1, x] + ii[y, x], -y, -x))
    cands.sort(reverse=True)                 # ties: the top-left window first
    got: list[tuple[int, int, int, int]] = []
    for _, y, x in cands:
        y, x = -y, -x
        if all(max(0, ch - abs(y - gy)) * max(0, cw - abs(x - gx)) <= ch * cw / 2 for gy, gx, _, _ in got):
            got.append((y, x, ch, cw))
            if len(got) == count:
                break
    return got


def busiest_at(img: np.ndarray, size: int = _CROP) -> tuple[int, int, int, int]:
    """The busiest window of `busiest_windows`."""
    return busiest_windows(img, 1, size)[0]


def busiest_crop(img: np.ndarray, size: int = _CROP) -> np.ndarray:
    y, x, ch, cw = busiest_at(img, size)
    return img[y:y + ch, x:x + cw]


def feature_grid(scale: int) -> np.ndarray:
    """Widths SRMD is run at: its range and 15% above it (room for a minimum at the top)."""
    lo, hi = SIGMA_RANGE[int(scale)]
    return np.linspace(lo, hi * 1.15, _GRID)


def sparsity_curve(outs, scale: int) -> np.ndarray:
    """`sparsity` of each SRMD output, its border (SRMD's receptive field) shaved."""
    shave = 4 * int(scale)
    return np.array([sparsity(o[shave:-shave, shave:-shave] if min(o.shape[:2]) > 4 * shave else o)
                     for o in outs])


def blur_features(curve, noise, scale: int) -> np.ndarray:
    """What the learned map reads: the curve's minimiser (parabola through the grid minimum), its
    square, the noise and their product, and the whole curve's shape (log of curve / its minimum,
    alone and times the noise): how steeply ringing sets in right of the minimum tells a blurred
    image from one whose content is soft."""
    c = np.asarray(curve, np.float64)
    g = feature_grid(scale)
    j = int(np.argmin(c))
    r = g[j]
    if 0 < j < len(c) - 1:
        a, b, d = c[j - 1:j + 2]
        if a - 2 * b + d > 0:
            r = g[j] + 0.5 * (a - d) / (a - 2 * b + d) * (g[1] - g[0])
    n = float(noise) / 50.0
    shape = np.log(c / c.min())
    return np.concatenate([[r, r * r, n, n * r], shape, shape * n])


_MAP_FILE = Path(__file__).with_name("blur_map.json")
_MAP: dict | None = None


def _blur_map(scale: int) -> dict:
    global _MAP
    if _MAP is None:
        _MAP = {int(k): v for k, v in json.loads(_MAP_FILE.read_text())["scales"].items()}
    return _MAP[int(scale)]


def predict_blur(features, scale: int, blur_map: dict | None = None) -> float:
    """The scale's map in `blur_map.json` (or `blur_map`, a candidate in that form: what
    benchmarks/blur_maps.py scores): ridge regression on the first `features` features (all of
    them: the learned curve map of benchmarks/blur_corrector.py; 4: the minimiser and noise alone),
    less its shift (a width read too wide costs SRMD more than one read too narrow); `top`: a
    minimiser at the top of the search is unreliable (strong noise, or texture SRMD turns into flat
    cartoon when told to sharpen a lot) and gets a fixed width instead."""
    m = _blur_map(scale) if blur_map is None else blur_map
    f = np.asarray(features, np.float64)[:m["features"]]
    lo, hi = SIGMA_RANGE[int(scale)]
    if m.get("top") and f[0] >= m["top"][0]:
        width = float(m["top"][1])
    else:
        z = (f - np.asarray(m["mean"])) / np.asarray(m["std"])
        width = m["intercept"] + z @ np.asarray(m["coef"]) - m["shift"]
    return float(np.clip(width, lo, hi))


def blur_crops(scale: int) -> int:
    """How many crops `blur_sigma` reads the width on (`crops` in blur_map.json).

    Why several at x2 (3): one crop's content (stripes, text) can read 0.5 px off where the image's
    other busy parts read right, and the median of three is immune to one (whole Set5/Set14 x2: 0.67
    -> 0.59 dB mean loss, worst 5.5 -> 4.2; whole BSD100 0.22 -> 0.24); at x3/x4 it gained nothing
    (benchmarks/README.md). Each crop costs the search's 22 SRMD runs again."""
    return int(_blur_map(scale).get("crops", 1))


def crop_curves(img, scale: int, sr: SR, noise: float, count: int) -> list[np.ndarray]:
    """The sparsity curve of each of the `count` busiest crops (`busiest_windows`), busiest first:
    SRMD run at every width of `feature_grid`, told `noise`. Kept apart from the map that reads
    them so benchmarks/blur_maps.py can score candidate maps on one search."""
    img = np.asarray(img)
    grid = feature_grid(scale)
    return [sparsity_curve([sr(np.ascontiguousarray(img[y:y + ch, x:x + cw]), float(g), noise) for g in grid], scale)
            for y, x, ch, cw in busiest_windows(img, count)]


def crop_widths(img, scale: int, sr: SR, noise: float, count: int) -> list[float]:
    """The width the scale's map reads on each of `crop_curves`."""
    return [predict_blur(blur_features(c, noise, scale), scale) for c in crop_curves(img, scale, sr, noise, count)]


def map_width(curves, noise: float, scale: int, blur_map: dict | None = None) -> float:
    """The width a map (the shipped one, or a candidate) reads off crops' curves, busiest first: the
    median of its reading on its `crops` first curves."""
    m = _blur_map(scale) if blur_map is None else blur_map
    return float(np.median([predict_blur(blur_features(c, noise, scale), scale, m) for c in curves[:int(m.get("crops", 1))]]))


def blur_sigma(img, scale: int, sr: SR, noise: float | None = None) -> float:
    """Width (HR pixels) of the Gaussian blur before the x`scale` bicubic downscale that made
    `img`, within SRMD's range for the scale: `map_width` over the curves of `blur_crops` crops;
    `sr` runs the SRMD the estimate is for. Measured accuracy: tests/test_estimate.py,
    benchmarks/README.md."""
    if int(scale) not in SIGMA_RANGE:
        raise ValueError(f"no blur estimator for x{scale} (x2, x3, x4)")
    n = noise_sigma(img) if noise is None else float(noise)
    return map_width(crop_curves(img, scale, sr, n, blur_crops(scale)), n, scale)


_ROUNDING_VAR = 1.0 / 12      # variance of uint8 rounding, per channel, on the 0-255 scale
_OPPONENT = np.array([[1, -1, 0], [1, 1, -2]]) / np.array([[np.sqrt(2)], [np.sqrt(6)]])


def opponent_noise(img) -> float:
    """The per-channel AWGN level (0-255 scale), as in SRMD's degradation model, read (Chen et al.,
    as `noise_sigma`) on the two opponent-colour channels (R-G)/sqrt2 and (R+G-2B)/sqrt6, the
    smaller of the two, less uint8 rounding.

    Why: the opponent transform is orthonormal, so per-channel noise keeps its level there, while
    edges and texture, mostly grey, cancel. `noise_sigma` on R, G, B counts fine texture as noise
    (0.2-6/255 on clean x2-x4 LR images, and SRMD told noise 1.5 on a clean image smooths it by up
    to 0.5 dB); the opponent reading is 0.1-0.9 there, most of it rounding. Blind to noise that is
    the same in every channel: grey images fall back to `noise_sigma`, and lossy input (JPEG,
    video: the codec smoothed the chroma and kept the luma's noise) must not come here
    (`noise_readings(..., lossy=True)`)."""
    r = _opponent(img)
    return noise_sigma(img) if r is None else r


def _opponent(img) -> float | None:
    """`opponent_noise`, or None where the colour channels cannot show the noise."""
    a = _as_float255(img)
    if a.ndim == 2 or a.shape[2] < 3 or min(a.shape[:2]) < 2 * _PATCH:
        return None
    if np.array_equal(a[:, :, 0], a[:, :, 1]) and np.array_equal(a[:, :, 1], a[:, :, 2]):
        return None                              # grey: no colour to read the noise in
    opp = a[:, :, :3] @ _OPPONENT.T
    rng = np.random.default_rng(0)
    r = min(_channel_noise(opp[:, :, c], rng) for c in range(2))
    q = _ROUNDING_VAR if np.asarray(img).dtype == np.uint8 else 0.0
    return float(np.sqrt(max(r * r - q, 0.0)))


def noise_readings(img, lossy: bool = False) -> tuple[float, float]:
    """(`noise_sigma`, `opponent_noise`) of one frame, the R, G, B reading standing in for the
    opponent one where that cannot see the noise (`lossy` input, grey, tiny) and computed once."""
    rgb = noise_sigma(img)
    opp = None if lossy else _opponent(img)
    return rgb, (rgb if opp is None else opp)


def told_noise(rgb: float, opponent: float, scale: int, lossy: bool = False) -> float:
    """The noise level SRMD is told beside a `blur_sigma` width (`blur_map.json`, fitted by
    benchmarks/noise_blend.py). Clean-codec input: the opponent reading plus the scale's share
    (`noise_rgb_weight`) of what the R, G, B reading adds; the blur maps were fitted with SRMD told
    the R, G, B reading, whose extra on textured images damps a width read too wide. Lossy input:
    the R, G, B reading times `lossy_noise_factor`; the codec took most of the noise out but left
    blocking and ringing that SRMD smooths only when told more noise than is left."""
    m = _blur_map(scale)
    if lossy:
        return float(rgb * m.get("lossy_noise_factor", 1.0))
    return float(opponent + m.get("noise_rgb_weight", 1.0) * max(rgb - opponent, 0.0))


def estimate(img, scale: int, sr: SR, lossy: bool = False) -> tuple[float, float]:
    """(blur sigma in HR pixels, noise level on the 0-255 scale to tell SRMD) of one LR frame; `lossy`:
    it came through a lossy codec or subsampled chroma, so the noise is read on R, G, B only."""
    rgb, opp = noise_readings(img, lossy)
    return blur_sigma(img, scale, sr, rgb), told_noise(rgb, opp, scale, lossy)

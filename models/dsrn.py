"""DSRN: Han, Chang, Liu, Yu, Witbrock, Huang, "Image Super-Resolution via Dual-State Recurrent
Networks", CVPR 2018 (arXiv 1805.02704). Official code: WeiHan3/dsrn, TensorFlow 1 (+ lingvo export).

Follows the authors' graph `model_recurrent_s2_u128_avg_t7.py` (`build_model`, `_unroll_rnn`), i.e. the
paper's dual-state recurrent design (LR state s1, HR state s2, delayed feedback s2 -> s1; figure numbers
not checked against the PDF) with the released hyper-parameters: hidden 128, T = 7 unrolled steps, summed
(`average_on_relu=False`) state inputs, output averaged over steps. 0.73 M parameters at x2.

    s1[0]  = InputNet(x)                 conv3x3 -> hidden/2, ReLU (in_0); conv3x3 -> hidden, ReLU (in_1)
    s1[t]  = ReLU(s1[t-1] + s1s1(s1[t-1]) + down(s2[t-1]))          t = 1..T-1 (s2 term from t = 2)
    s2[t]  = ReLU(up(s1[t-1]) + s2[t-1] + s2s2(s2[t-1]))            (s2 terms from t = 2)
    out    = conv1x1(mean_t s2[t], t = 1..T-1) -> 3 channels  = residual HR - bicubic(LR)
    SR     = bicubic(LR) + out          (added inside forward: the caller gets the image)

s1s1/s2s2 are "conv links" (conv3x3 + ReLU + conv3x3), all edges have delay 1, every weight is shared
across steps. x is RGB in [0, 1] (`tf.image.convert_image_dtype`); the LR image itself is the input.

Scales. The repository defines only the x2 pair: `up` = conv2d_transpose 2x2 stride 2, down = 2x2 average
pooling; x3/x4 checkpoints exist but their graph is not in the repository. OUR READING (unverified):
x s uses `up` = transposed conv s x s stride s and down = s x s average pooling, so s2 is always exactly
s times s1 (any input size, odd too, any s). The scale is read off the `up` kernel size.

Bicubic. The training target is HR - tf.image.resize_bicubic(LR) (`data.py _make_residual`,
`util.get_resize_func`), TF1 defaults: align_corners=False, half_pixel_centers=False, i.e. the legacy
mapping src = dst / s (no half-pixel shift), Keys a = -0.75, indices clamped, cubic weights quantised to
1/1024. `upsampler="tf1"` (default) replays exactly that (bit-exact against TF 2.21's
tf.compat.v1.image.resize_bicubic, tests/data/dsrn_tf_reference.npz), because the released weights learnt a residual
against it; `upsampler="torch"` uses F.interpolate(bicubic, align_corners=False) (half-pixel centres,
a = -0.75), which is fine for nets trained here with the same upsampler but shifts the base image by
(s-1)/(2s) LR pixel relative to what the official weights expect. The output is not clamped.

Training (train.py, data.py): MSE between the predicted and true residual (`tf.losses.mean_squared_error`),
Adam lr 1e-3, batch 32, gradients clipped by value to [-1, 1], HR patches 108x108 (LR 108/s) with random
rescale 0.5-1 and flips/rot90. See `training_loss`.

Converter: `state_dict_from_tf_checkpoint` maps the TF variable names (tf.layers scopes, see _TF_NAMES)
to our keys, which mirror those scopes; the lingvo checkpoints' exact names are unverified (see there).
"""
from __future__ import annotations

import math
from typing import Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .spec import Architecture, ModelSpec, StateDict, UnknownCheckpoint

HIDDEN = 128
STEPS = 7
SCALES = (2, 3, 4)


class ConvLink(nn.Module):
    """The s1->s1 / s2->s2 'conv link' edge: conv3x3 + ReLU + conv3x3 (no activation)."""

    def __init__(self, ch: int):
        super().__init__()
        self.conv1 = nn.Conv2d(ch, ch, 3, padding=1)
        self.conv2 = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x):
        return self.conv2(F.relu(self.conv1(x)))


class InputNet(nn.Module):
    def __init__(self, mid: int, hidden: int, in_ch: int = 3):
        super().__init__()
        self.in_0 = nn.Conv2d(in_ch, mid, 3, padding=1)
        self.in_1 = nn.Conv2d(mid, hidden, 3, padding=1)

    def forward(self, x):
        return F.relu(self.in_1(F.relu(self.in_0(x))))


class RecurrentNet(nn.Module):
    """The weights of the recurrent edges; the unrolling lives in DSRN.residual."""

    def __init__(self, hidden: int, scale: int):
        super().__init__()
        self.scale = scale
        self.s1s1 = ConvLink(hidden)
        self.s2s2 = ConvLink(hidden)
        self.up = nn.ConvTranspose2d(hidden, hidden, scale, stride=scale)  # s1 -> s2

    def down(self, s2):  # s2 -> s1: parameter-free average pooling
        return F.avg_pool2d(s2, self.scale, self.scale)


class OutputNet(nn.Module):
    def __init__(self, hidden: int, out_ch: int = 3):
        super().__init__()
        self.out = nn.Conv2d(hidden, out_ch, 1)


class DSRN(nn.Module):
    def __init__(self, scale: int = 2, hidden: int = HIDDEN, mid: int | None = None, steps: int = STEPS,
                 upsampler: str = "tf1"):
        super().__init__()
        if steps < 2:
            raise ValueError("DSRN needs steps >= 2: the HR state first exists at step 1")
        if upsampler not in ("tf1", "torch"):
            raise ValueError(f"upsampler must be 'tf1' or 'torch', not {upsampler!r}")
        self.scale, self.steps, self.upsampler = scale, steps, upsampler
        self.input_net = InputNet(hidden // 2 if mid is None else mid, hidden)
        self.recurrent = RecurrentNet(hidden, scale)
        self.output_net = OutputNet(hidden)

    def residual(self, x):
        """The network's own output: HR - bicubic(LR) (what the authors trained with MSE)."""
        r = self.recurrent
        s1 = self.input_net(x)          # step 0 (the extra ReLU of _unroll_rnn is a no-op here)
        s2 = None
        acc = None
        for t in range(1, self.steps):
            s1_in = s1 + r.s1s1(s1)
            s2_in = r.up(s1)
            if s2 is not None:
                s1_in = s1_in + r.down(s2)
                s2_in = s2_in + s2 + r.s2s2(s2)
            s2 = F.relu(s2_in)
            acc = s2 if acc is None else acc + s2
            if t + 1 < self.steps:      # s1 of the last step feeds nothing
                s1 = F.relu(s1_in)
        return self.output_net.out(acc / (self.steps - 1))

    def upsample(self, x):
        if self.upsampler == "torch":
            return F.interpolate(x, scale_factor=self.scale, mode="bicubic", align_corners=False)
        return bicubic_tf1(x, self.scale)

    def forward(self, x):
        return self.upsample(x) + self.residual(x)


# ---------------------------------------------------------------- TF1 legacy bicubic

_TABLE = 1024  # TF resize_bicubic_op.cc kTableSize: cubic weights are tabulated at 1/1024 steps


def _tf1_taps(n_in: int, n_out: int):
    """Per output index: 4 clamped source indices and their weights (float64), TF1 legacy mode."""
    a = -0.75
    scale = np.float32(n_in) / np.float32(n_out)      # TF computes the scale and positions in float32
    o = np.arange(n_out)
    src = o.astype(np.float32) * scale
    base = np.floor(src).astype(np.int64)
    off = np.rint((src - base) * np.float32(_TABLE)).astype(np.int64)  # lrintf: round half to even

    def near(i):   # |x| <= 1 branch at x = i / TABLE
        x = i / _TABLE
        return ((a + 2) * x - (a + 3)) * x * x + 1

    def far(i):    # 1 < |x| <= 2 branch at x = 1 + i / TABLE
        x = i / _TABLE + 1.0
        return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a

    weights = np.stack([far(off), near(off), near(_TABLE - off), far(_TABLE - off)]).astype(np.float32)
    idx = np.clip(base[None, :] + np.arange(-1, 3)[:, None], 0, n_in - 1)
    return idx, weights


def bicubic_tf1(x: torch.Tensor, scale: int) -> torch.Tensor:
    """tf.compat.v1.image.resize_bicubic(x, [s*H, s*W]) with align_corners=False,
    half_pixel_centers=False (TF1 default), on an NCHW tensor. Separable: rows, then columns."""
    h, w = x.shape[-2], x.shape[-1]
    for dim, n_in in ((-2, h), (-1, w)):
        idx, wt = _tf1_taps(int(n_in), int(n_in) * scale)
        shape = [1] * x.dim()
        shape[dim] = -1
        out = None
        for k in range(4):
            tap = x.index_select(dim, torch.from_numpy(idx[k]).to(x.device))
            term = tap * torch.from_numpy(wt[k]).to(x.device, x.dtype).view(shape)
            out = term if out is None else out + term
        x = out
    return x


# ---------------------------------------------------------------- state dict reading

_LAYERS = ("input_net.in_0", "input_net.in_1", "recurrent.s1s1.conv1", "recurrent.s1s1.conv2",
           "recurrent.s2s2.conv1", "recurrent.s2s2.conv2", "recurrent.up", "output_net.out")
_KEYS = tuple(f"{layer}.{p}" for layer in _LAYERS for p in ("weight", "bias"))


def detect(sd: StateDict) -> bool:
    keys = set(sd)
    return {"input_net.in_0.weight", "recurrent.up.weight", "recurrent.s1s1.conv1.weight",
            "output_net.out.weight"} <= keys and all(k.startswith(("input_net.", "recurrent.", "output_net."))
                                                     for k in keys)


def _hyperparams(sd: StateDict) -> dict:
    missing = [k for k in _KEYS if k not in sd]
    if missing:
        raise UnknownCheckpoint(f"dsrn: missing keys: {', '.join(missing)}")
    extra = sorted(set(sd) - set(_KEYS))
    if extra:
        raise UnknownCheckpoint(f"dsrn: unexpected keys: {', '.join(extra[:6])}")
    w_in0, w_in1, w_up = sd["input_net.in_0.weight"], sd["input_net.in_1.weight"], sd["recurrent.up.weight"]
    mid, hidden = w_in0.shape[0], w_in1.shape[0]
    scale = w_up.shape[-1]
    want = {
        "input_net.in_0.weight": (mid, 3, 3, 3), "input_net.in_0.bias": (mid,),
        "input_net.in_1.weight": (hidden, mid, 3, 3), "input_net.in_1.bias": (hidden,),
        "recurrent.up.weight": (hidden, hidden, scale, scale), "recurrent.up.bias": (hidden,),
        "output_net.out.weight": (3, hidden, 1, 1), "output_net.out.bias": (3,),
    }
    for link in ("s1s1", "s2s2"):
        for c in ("conv1", "conv2"):
            want[f"recurrent.{link}.{c}.weight"] = (hidden, hidden, 3, 3)
            want[f"recurrent.{link}.{c}.bias"] = (hidden,)
    for k, shape in want.items():
        if tuple(sd[k].shape) != shape:
            raise UnknownCheckpoint(f"dsrn: {k} has shape {tuple(sd[k].shape)}, expected {shape}")
    if scale < 2:
        raise UnknownCheckpoint(f"dsrn: up-sampling kernel {scale}x{scale} gives no scale")
    return {"hidden": int(hidden), "mid": int(mid), "scale": int(scale)}


def _spec(net: DSRN, hp: Mapping) -> ModelSpec:
    return ModelSpec(arch="dsrn", variant="dsrn", scale=net.scale, input_range=1.0, channel_order="RGB",
                     output="image",
                     hyperparams={"hidden": hp["hidden"], "mid": hp["mid"], "steps": net.steps,
                                  "upsampler": net.upsampler, "residual_base": "bicubic"})


def from_state_dict(sd: StateDict, steps: int = STEPS, upsampler: str = "tf1") -> tuple[DSRN, ModelSpec]:
    """steps (T) is not in any shape: the published graph uses 7."""
    hp = _hyperparams(sd)
    net = DSRN(scale=hp["scale"], hidden=hp["hidden"], mid=hp["mid"], steps=steps, upsampler=upsampler)
    return net, _spec(net, hp)


# ---------------------------------------------------------------- TF checkpoint converter

# Our layer -> TF scope suffixes that may hold it, from the tf.layers names in build_model.
# ASSUMED, unverified against the released (lingvo-exported) checkpoints:
#  * any outer prefix (lingvo task/model scopes) is allowed: names are matched by suffix;
#  * `out` is created after the `with tf.variable_scope('OutputNet')` block closes, so it is
#    `out/...` at top level as published, `OutputNet/out/...` if it was indented;
#  * `up` is `RecurrentNet/up` as published; `RecurrentNet/s1s2/up` if the name='s1s2' that the
#    edge passes (and _conv_upsample rejects) was turned into a scope;
#  * leaf names `kernel`/`bias` (tf.layers); `weights`/`biases` and `w`/`b` are accepted too;
#  * optimizer slots (`.../kernel/Adam`), EMA shadows and counters end differently and are ignored.
_TF_NAMES = {
    "input_net.in_0": ("InputNet/in_0",),
    "input_net.in_1": ("InputNet/in_1",),
    "recurrent.s1s1.conv1": ("RecurrentNet/s1s1/conv1",),
    "recurrent.s1s1.conv2": ("RecurrentNet/s1s1/conv2",),
    "recurrent.s2s2.conv1": ("RecurrentNet/s2s2/conv1",),
    "recurrent.s2s2.conv2": ("RecurrentNet/s2s2/conv2",),
    "recurrent.up": ("RecurrentNet/up", "RecurrentNet/s1s2/up"),
    "output_net.out": ("out", "OutputNet/out"),
}
_TF_LEAVES = {"weight": ("kernel", "weights", "w"), "bias": ("bias", "biases", "b")}
def _tf_lookup(names: Mapping[str, str], layer: str, param: str) -> str:
    hits = set()
    for scope in _TF_NAMES[layer]:
        for leaf in _TF_LEAVES[param]:
            suffix = f"{scope}/{leaf}"
            hits.update(n for n in names if n == suffix or n.endswith("/" + suffix))
    if len(hits) != 1:
        tried = ", ".join(f"{s}/{'|'.join(_TF_LEAVES[param])}" for s in _TF_NAMES[layer])
        what = "no variable" if not hits else f"several variables ({', '.join(sorted(hits))})"
        raise UnknownCheckpoint(f"dsrn TF checkpoint: {what} for {layer}.{param} (looked for {tried})")
    return names[hits.pop()]


def state_dict_from_tf_checkpoint(variables: Mapping[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """TF variable name -> array dict (e.g. from `tf.train.load_checkpoint(path)`:
    `{n: r.get_tensor(n) for n in r.get_variable_to_shape_map()}`) -> our state dict.

    Conv kernels are HWIO -> OIHW; conv2d_transpose kernels are (kh, kw, out, in) -> PyTorch
    ConvTranspose2d (in, out, kh, kw). No spatial flip: both frameworks' transposed convs are the
    gradient of a cross-correlation with the same kernel orientation."""
    names = {n[:-2] if n.endswith(":0") else n: n for n in variables}
    sd = {}
    for layer in _LAYERS:
        k = np.asarray(variables[_tf_lookup(names, layer, "weight")])
        b = np.asarray(variables[_tf_lookup(names, layer, "bias")])
        if k.ndim != 4 or b.ndim != 1:
            raise UnknownCheckpoint(f"dsrn TF checkpoint: {layer} kernel/bias have ranks {k.ndim}/{b.ndim}")
        k = k.transpose(3, 2, 0, 1)  # HWIO -> OIHW, and (kh, kw, out, in) -> (in, out, kh, kw)
        sd[f"{layer}.weight"] = torch.from_numpy(np.ascontiguousarray(k, dtype=np.float32))
        sd[f"{layer}.bias"] = torch.from_numpy(np.ascontiguousarray(b, dtype=np.float32))
    return sd


def tf_checkpoint_from_state_dict(sd: StateDict, prefix: str = "") -> dict[str, np.ndarray]:
    """The inverse mapping, with the published names (`RecurrentNet/up`, top-level `out`):
    for tests and for writing weights back into the authors' graph."""
    out = {}
    for layer in _LAYERS:
        scope = prefix + _TF_NAMES[layer][0]
        out[f"{scope}/kernel"] = sd[f"{layer}.weight"].detach().cpu().numpy().transpose(2, 3, 1, 0).copy()
        out[f"{scope}/bias"] = sd[f"{layer}.bias"].detach().cpu().numpy().copy()
    return out


# ---------------------------------------------------------------- training

def training_loss(net: DSRN, lr: torch.Tensor, hr: torch.Tensor):
    """The authors' loss: MSE between predicted and true residual, HR - bicubic(LR), with the net's own
    bicubic. HR larger than scale x LR is centre-cropped (train.py crop_center). Returns (loss, logs)."""
    s = net.scale
    h, w = lr.shape[-2] * s, lr.shape[-1] * s
    if hr.shape[-2] < h or hr.shape[-1] < w:
        raise ValueError(f"hr {tuple(hr.shape[-2:])} smaller than scale x lr {(h, w)}")
    top, left = (hr.shape[-2] - h) // 2, (hr.shape[-1] - w) // 2
    hr = hr[..., top:top + h, left:left + w]
    base = net.upsample(lr)
    pred = net.residual(lr)
    loss = F.mse_loss(pred, hr - base)
    with torch.no_grad():
        mse = F.mse_loss((base + pred).clamp(0, 1), hr).item()
    return loss, {"loss": loss.item(), "psnr": 10 * math.log10(1.0 / max(mse, 1e-12))}


ARCHITECTURES = (
    Architecture(name="dsrn", detect=detect, from_state_dict=from_state_dict, scales=SCALES),
)

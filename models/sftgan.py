"""SFTGAN: "Recovering Realistic Texture in Image Super-resolution by Deep Spatial Feature
Transform" (Wang, Yu, Dong, Loy, CVPR 2018).

The generator (paper Fig. 3) is an SRResNet-like x4 network whose residual blocks are modulated by
Spatial Feature Transform layers: a small condition network (``CondNet``) turns an 8-class outdoor
segmentation probability map (at HR size) into shared 32-channel conditions at LR size; every SFT
layer maps them to a per-pixel affine (scale, shift) applied to the features. Published config:
64 features, 16 SFT residual blocks, conditions 32 channels, CondNet 128 wide, x4.

Two released checkpoints share one key layout (``xinntao/CVPR18-SFTGAN``,
``pytorch_test/architectures.py``) but compute differently; the variant is read off the
``HR_branch`` key indices:

* ``sftgan-torch`` (``SFTGAN_torch.pth``, the paper model converted from Torch7): SFT output
  ``fea * scale + shift``, LeakyReLU 0.01 inside SFT layers, ReLU after each SFT inside a residual
  block, upsampling = nearest x2 + conv (weights at ``HR_branch.1, 4, 6, 8``).
* ``sftgan`` (``SFTGAN_noBN_OST_bg.pth``, retrained in PyTorch): SFT output
  ``fea * (scale + 1) + shift``, LeakyReLU 0.1, ReLU after the first conv of a block, upsampling =
  conv + PixelShuffle(2) (weights at ``HR_branch.0, 3, 6, 8``).

Like the reference, ``forward`` takes ONE tuple ``(img_lr, seg_prob)``: ``img_lr`` RGB in [0, 1]
(N x 3 x h x w), ``seg_prob`` the OutdoorSceneSeg softmax output at 4h x 4w (classes in
``outdoorsceneseg.CLASS_NAMES`` order). Output RGB, nominally [0, 1] (the authors clamp it).
"""
from __future__ import annotations

import math
import re

import torch
import torch.nn.functional as F
from torch import nn

from .spec import Architecture, ModelSpec, StateDict, UnknownCheckpoint

VARIANT_TORCH = "sftgan-torch"
VARIANT_PYTORCH = "sftgan"


class SFTLayer(nn.Module):
    """Per-pixel affine modulation from the shared conditions (two 1x1 conv pairs)."""

    def __init__(self, nf: int = 64, cond_nf: int = 32, hidden: int = 32, slope: float = 0.1,
                 plus_one: bool = True):
        super().__init__()
        self.SFT_scale_conv0 = nn.Conv2d(cond_nf, hidden, 1)
        self.SFT_scale_conv1 = nn.Conv2d(hidden, nf, 1)
        self.SFT_shift_conv0 = nn.Conv2d(cond_nf, hidden, 1)
        self.SFT_shift_conv1 = nn.Conv2d(hidden, nf, 1)
        self.slope = slope
        self.plus_one = plus_one  # PyTorch-trained variant learns scale around 0 (identity at 0)

    def forward(self, fea: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        scale = self.SFT_scale_conv1(F.leaky_relu(self.SFT_scale_conv0(cond), self.slope))
        shift = self.SFT_shift_conv1(F.leaky_relu(self.SFT_shift_conv0(cond), self.slope))
        if self.plus_one:
            scale = scale + 1
        return fea * scale + shift


class ResBlockSFT(nn.Module):
    """sft0 -> conv0 -> sft1 -> conv1, plus identity; the ReLU position differs per variant."""

    def __init__(self, nf: int, cond_nf: int, hidden: int, torch_variant: bool):
        super().__init__()
        slope, plus_one = (0.01, False) if torch_variant else (0.1, True)
        self.sft0 = SFTLayer(nf, cond_nf, hidden, slope, plus_one)
        self.conv0 = nn.Conv2d(nf, nf, 3, 1, 1)
        self.sft1 = SFTLayer(nf, cond_nf, hidden, slope, plus_one)
        self.conv1 = nn.Conv2d(nf, nf, 3, 1, 1)
        self.torch_variant = torch_variant

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        if self.torch_variant:   # Torch7 paper model: ReLU right after each SFT layer
            fea = self.conv0(F.relu(self.sft0(x, cond)))
            fea = self.conv1(F.relu(self.sft1(fea, cond)))
        else:                    # PyTorch-trained model: ReLU after conv0 only
            fea = F.relu(self.conv0(self.sft0(x, cond)))
            fea = self.conv1(self.sft1(fea, cond))
        return x + fea


class SFTNet(nn.Module):
    """The SFTGAN generator; every width/depth is a parameter so reduced configs build too.

    ``hr_convs``: (in, out) channels of each ``HR_branch`` conv, upsampling convs first
    (``num_up`` of them), then the conv + ReLU and the output conv. For the PyTorch variant an
    upsampling conv's ``out`` is ``in_next * r^2`` (PixelShuffle r); the Torch7 variant uses
    nearest x2 before each upsampling conv.
    """

    def __init__(self, variant: str = VARIANT_PYTORCH, in_nc: int = 3, nf: int = 64,
                 num_blocks: int = 16, cond_nf: int = 32, sft_hidden: int = 32, seg_nc: int = 8,
                 cond_hidden: int = 128, cond_mid_layers: int = 3, cond_kernel: int = 4,
                 hr_convs: tuple[tuple[int, int], ...] | None = None, num_up: int = 2):
        super().__init__()
        if variant not in (VARIANT_TORCH, VARIANT_PYTORCH):
            raise ValueError(f"unknown SFTGAN variant {variant!r}")
        tv = variant == VARIANT_TORCH
        self.variant = variant
        self.conv0 = nn.Conv2d(in_nc, nf, 3, 1, 1)
        blocks: list[nn.Module] = [ResBlockSFT(nf, cond_nf, sft_hidden, tv) for _ in range(num_blocks)]
        blocks.append(SFTLayer(nf, cond_nf, sft_hidden, 0.01 if tv else 0.1, not tv))
        blocks.append(nn.Conv2d(nf, nf, 3, 1, 1))
        # Sequential only for the official key names; forward() threads the condition itself.
        self.sft_branch = nn.Sequential(*blocks)

        if hr_convs is None:
            up_out = nf if tv else nf * 4
            hr_convs = tuple([(nf, up_out)] * num_up) + ((nf, nf), (nf, 3))
        num_up = len(hr_convs) - 2
        hr: list[nn.Module] = []
        self.scale = 1
        for k in range(num_up):
            cin, cout = hr_convs[k]
            if tv:
                hr += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(cin, cout, 3, 1, 1), nn.ReLU()]
                self.scale *= 2
            else:
                r = math.isqrt(cout // hr_convs[k + 1][0])
                hr += [nn.Conv2d(cin, cout, 3, 1, 1), nn.PixelShuffle(r), nn.ReLU()]
                self.scale *= r
        (c1i, c1o), (c2i, c2o) = hr_convs[-2:]
        hr += [nn.Conv2d(c1i, c1o, 3, 1, 1), nn.ReLU(), nn.Conv2d(c2i, c2o, 3, 1, 1)]
        self.HR_branch = nn.Sequential(*hr)

        # CondNet: non-overlapping k x k patches (stride = kernel) take the HR-size map to LR size.
        cond: list[nn.Module] = [nn.Conv2d(seg_nc, cond_hidden, cond_kernel, cond_kernel), nn.LeakyReLU(0.1)]
        for _ in range(cond_mid_layers):
            cond += [nn.Conv2d(cond_hidden, cond_hidden, 1), nn.LeakyReLU(0.1)]
        cond.append(nn.Conv2d(cond_hidden, cond_nf, 1))
        self.CondNet = nn.Sequential(*cond)

    def forward(self, x: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        img, seg = x
        cond = self.CondNet(seg)
        fea = self.conv0(img)
        res = fea
        n = len(self.sft_branch)
        for i, blk in enumerate(self.sft_branch):
            if i < n - 1:
                res = blk(res, cond)       # SFT residual blocks, then the final SFT layer
            else:
                res = blk(res)             # final 3x3 conv
        return self.HR_branch(fea + res)


_HR_KEY = re.compile(r"HR_branch\.(\d+)\.weight$")
_CORE_KEYS = ("conv0.weight", "sft_branch.0.sft0.SFT_scale_conv0.weight", "CondNet.0.weight")


def _hr_indices(sd: StateDict) -> list[int]:
    return sorted(int(m.group(1)) for k in sd if (m := _HR_KEY.match(k)))


def _variant(sd: StateDict) -> str | None:
    """Read the variant off the HR_branch conv indices (see the module docstring)."""
    idx = _hr_indices(sd)
    if len(idx) < 3:
        return None
    n = len(idx) - 2
    if idx == [3 * k + 1 for k in range(n)] + [3 * n, 3 * n + 2]:
        return VARIANT_TORCH
    if idx == [3 * k for k in range(n)] + [3 * n, 3 * n + 2]:
        return VARIANT_PYTORCH
    return None


def detect(sd: StateDict) -> bool:
    if not all(k in sd and sd[k].ndim == 4 for k in _CORE_KEYS):
        return False
    if not any(k.startswith("sft_branch.") and ".sft1." in k for k in sd):
        return False
    return _variant(sd) is not None


def _count(sd: StateDict, pattern: str) -> int:
    rx = re.compile(pattern)
    return len({m.group(1) for k in sd if (m := rx.match(k))})


def config_from_state_dict(sd: StateDict) -> dict:
    """Constructor arguments of SFTNet, read off key presence and tensor shapes."""
    variant = _variant(sd)
    if variant is None or not detect(sd):
        raise UnknownCheckpoint("sftgan: not an SFTGAN generator key layout")
    try:
        num_blocks = _count(sd, r"sft_branch\.(\d+)\.sft0\.SFT_scale_conv0\.weight$")
        if f"sft_branch.{num_blocks}.SFT_scale_conv0.weight" not in sd:
            raise UnknownCheckpoint("sftgan: final SFT layer sft_branch.%d missing" % num_blocks)
        nf, in_nc = sd["conv0.weight"].shape[:2]
        sft_hidden, cond_nf = sd["sft_branch.0.sft0.SFT_scale_conv0.weight"].shape[:2]
        cond_hidden, seg_nc, ck, ck2 = sd["CondNet.0.weight"].shape
        cond_convs = _count(sd, r"CondNet\.(\d+)\.weight$")
        hr_convs = tuple((int(sd[f"HR_branch.{i}.weight"].shape[1]), int(sd[f"HR_branch.{i}.weight"].shape[0]))
                         for i in _hr_indices(sd))
    except (KeyError, ValueError) as e:
        raise UnknownCheckpoint(f"sftgan: incomplete state dict ({e})") from None
    if ck != ck2 or cond_convs < 2:
        raise UnknownCheckpoint("sftgan: unexpected CondNet layout")
    if variant == VARIANT_PYTORCH:
        for k in range(len(hr_convs) - 2):
            ratio, rem = divmod(hr_convs[k][1], hr_convs[k + 1][0])
            if rem or math.isqrt(ratio) ** 2 != ratio or ratio < 4:
                raise UnknownCheckpoint("sftgan: HR_branch widths do not fit a PixelShuffle")
    return dict(variant=variant, in_nc=int(in_nc), nf=int(nf), num_blocks=num_blocks, cond_nf=int(cond_nf),
                sft_hidden=int(sft_hidden), seg_nc=int(seg_nc), cond_hidden=int(cond_hidden),
                cond_mid_layers=cond_convs - 2, cond_kernel=int(ck), hr_convs=hr_convs)


def from_state_dict(sd: StateDict) -> tuple[nn.Module, ModelSpec]:
    cfg = config_from_state_dict(sd)
    net = SFTNet(**cfg)
    if net.scale != cfg["cond_kernel"]:
        # CondNet's stride-k conv must bring the HR-size map exactly to LR size.
        raise UnknownCheckpoint(f"sftgan: CondNet stride {cfg['cond_kernel']} != upscale x{net.scale}")
    spec = ModelSpec(arch="sftgan", variant=cfg["variant"], scale=net.scale, input_range=1.0,
                     channel_order="RGB", mean=None, extra_inputs=("segmentation",), output="image",
                     size_multiple=1, hyperparams=cfg)
    return net, spec


ARCHITECTURES = (
    Architecture(name="sftgan", detect=detect, from_state_dict=from_state_dict, scales=(4,)),
)

"""OutdoorSceneSeg: the 8-class outdoor segmentation network that produces SFTGAN's condition maps
(Wang, Yu, Dong, Loy, "Recovering Realistic Texture in Image Super-resolution by Deep Spatial
Feature Transform", CVPR 2018, Sec. 3.1/4; released as ``segmentation_OST_bic.pth`` in
``xinntao/CVPR18-SFTGAN``, ``pytorch_test/architectures.py``).

A ResNet-101-style dilated FCN (output stride 8): a three-conv stem (3x3 stride 2, 3x3, 3x3; widths
64/64/128, BatchNorm+ReLU) and MaxPool(3, 2, ceil_mode); four stages of bottleneck blocks
(1x1 -> 3x3 -> 1x1, BatchNorm, 1x1 projection + BN when the width changes) with 3/4/23/3 blocks,
mid widths 64/128/256/512, output widths 256/512/1024/2048, stride 2 only in stage 2 and dilation
2 / 4 in stages 3 / 4 (instead of striding, to keep resolution); a 3x3 head (512) with BN, ReLU,
Dropout 0.1, a 1x1 classifier (the only biased conv), a fixed-size grouped ConvTranspose2d
(k16, s8, p4, one group per class) back to input size, and Softmax over classes.

Quirk: the authors' helper flattens nested Sequentials, so the stem, the blocks and the head share
ONE ``feature`` Sequential (``feature.0..8`` stem, ``9`` pool, one index per block, then head);
blocks keep ``res.{0,1,3,4,6,7}`` and ``proj.{0,1}``. Widths and depths are read from shapes;
strides and dilations are fixed by the architecture.

Input: BGR (OpenCV order), 0-255, minus mean (103.939, 116.779, 123.68); H, W multiples of 8. The
authors feed the bicubic-upsampled LR (MATLAB imresize x1/4 then x4, antialiased), i.e. what the
network was trained on ("_bic"). Output: N x 8 x H x W class probabilities, not an SR net
(ModelSpec.scale = 0, the registry's "not an SR network" value; output size = input size).
Old checkpoints lack BatchNorm ``num_batches_tracked``: plain ``nn.BatchNorm2d`` fills them when the
state dict carries no ``_metadata`` version (as from ``models.checkpoint.read_state_dict``).
"""
from __future__ import annotations


import torch
from torch import nn

from .spec import Architecture, ModelSpec, StateDict, UnknownCheckpoint

CLASS_NAMES = ("background", "sky", "water", "grass", "mountain", "building", "plant", "animal")
BGR_MEAN = (103.939, 116.779, 123.68)
STAGE_STRIDE = (1, 2, 1, 1)
STAGE_DILATION = (1, 1, 2, 4)
SEG_DEFAULT = dict(stem=(64, 64, 128), stage_blocks=(3, 4, 23, 3), stage_mid=(64, 128, 256, 512),
                   stage_out=(256, 512, 1024, 2048), stage_stride=STAGE_STRIDE,
                   stage_dilation=STAGE_DILATION, head_mid=512, num_classes=8)
_STEM_END = 10  # feature.0..8 = 3 x (conv, bn, relu), feature.9 = max pool


def _conv_bn(cin: int, cout: int, k: int, stride: int = 1, dilation: int = 1, relu: bool = True) -> list[nn.Module]:
    pad = dilation * (k - 1) // 2
    layers = [nn.Conv2d(cin, cout, k, stride, pad, dilation, bias=False), nn.BatchNorm2d(cout)]
    return layers + [nn.ReLU()] if relu else layers


class Res131(nn.Module):
    """Bottleneck block; relu(proj(x) + res(x)), the stride sits on the 3x3 conv and on proj."""

    def __init__(self, cin: int, mid: int, cout: int, dilation: int = 1, stride: int = 1):
        super().__init__()
        self.res = nn.Sequential(*_conv_bn(cin, mid, 1), *_conv_bn(mid, mid, 3, stride, dilation),
                                 *_conv_bn(mid, cout, 1, relu=False))
        # The reference projects only when widths differ; a strided block must therefore change width.
        self.proj = nn.Sequential(*_conv_bn(cin, cout, 1, stride, relu=False)) if cin != cout else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        res = self.res(x)
        if self.proj is not None:
            x = self.proj(x)
        return torch.relu(x + res)


class OutdoorSceneSeg(nn.Module):
    def __init__(self, stem=SEG_DEFAULT["stem"], stage_blocks=SEG_DEFAULT["stage_blocks"],
                 stage_mid=SEG_DEFAULT["stage_mid"], stage_out=SEG_DEFAULT["stage_out"],
                 stage_stride=STAGE_STRIDE, stage_dilation=STAGE_DILATION, head_mid: int = 512,
                 num_classes: int = 8, in_nc: int = 3):
        super().__init__()
        if tuple(stage_stride) != STAGE_STRIDE or tuple(stage_dilation) != STAGE_DILATION:
            raise ValueError("OutdoorSceneSeg strides/dilations are fixed to (1,2,1,1)/(1,1,2,4)")
        w0, w1, w2 = stem
        layers: list[nn.Module] = [*_conv_bn(in_nc, w0, 3, 2), *_conv_bn(w0, w1, 3), *_conv_bn(w1, w2, 3),
                                   nn.MaxPool2d(3, 2, 0, ceil_mode=True)]
        cin = w2
        for n, mid, cout, s, d in zip(stage_blocks, stage_mid, stage_out, stage_stride, stage_dilation):
            for b in range(n):
                layers.append(Res131(cin, mid, cout, d, s if b == 0 else 1))
                cin = cout
        layers += [*_conv_bn(cin, head_mid, 3), nn.Dropout(0.1), nn.Conv2d(head_mid, num_classes, 1)]
        self.feature = nn.Sequential(*layers)
        # Output stride 8 -> k16/s8/p4 gives exactly 8x the feature size, per class (groups).
        self.deconv = nn.ConvTranspose2d(num_classes, num_classes, 16, 8, 4, groups=num_classes, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.deconv(self.feature(x)), dim=1)


def _w(sd: StateDict, key: str) -> torch.Tensor | None:
    t = sd.get(key)
    return t if isinstance(t, torch.Tensor) else None


def detect(sd: StateDict) -> bool:
    w0, dc, b0 = _w(sd, "feature.0.weight"), _w(sd, "deconv.weight"), _w(sd, f"feature.{_STEM_END}.res.0.weight")
    return (w0 is not None and w0.ndim == 4 and w0.shape[2:] == (3, 3)
            and "feature.1.running_mean" in sd and "feature.6.weight" in sd
            and b0 is not None and b0.ndim == 4
            and dc is not None and dc.ndim == 4 and dc.shape[1] == 1)


def config_from_state_dict(sd: StateDict) -> dict:
    """Constructor arguments of OutdoorSceneSeg, read off tensor shapes (stages split where the
    width changes, i.e. at each block that carries a projection or a new mid width)."""
    if not detect(sd):
        raise UnknownCheckpoint("outdoorsceneseg: not an OutdoorSceneSeg key layout")
    try:
        stem = tuple(int(sd[f"feature.{i}.weight"].shape[0]) for i in (0, 3, 6))
        in_nc = int(sd["feature.0.weight"].shape[1])
        blocks = []  # (mid, out, has_proj)
        i = _STEM_END
        while f"feature.{i}.res.0.weight" in sd:
            blocks.append((int(sd[f"feature.{i}.res.0.weight"].shape[0]), int(sd[f"feature.{i}.res.6.weight"].shape[0]),
                           f"feature.{i}.proj.0.weight" in sd))
            i += 1
        head = sd[f"feature.{i}.weight"]
        cls = sd[f"feature.{i + 4}.weight"]
    except KeyError as e:
        raise UnknownCheckpoint(f"outdoorsceneseg: incomplete state dict (missing {e})") from None
    stages: list[list[tuple[int, int, bool]]] = []
    for blk in blocks:
        if not stages or blk[2] or blk[0] != stages[-1][-1][0]:
            stages.append([])
        stages[-1].append(blk)
    if len(stages) != 4 or head.ndim != 4 or cls.ndim != 4:
        raise UnknownCheckpoint(f"outdoorsceneseg: expected 4 bottleneck stages, found {len(stages)}")
    return dict(stem=stem, stage_blocks=tuple(len(s) for s in stages),
                stage_mid=tuple(s[0][0] for s in stages), stage_out=tuple(s[0][1] for s in stages),
                stage_stride=STAGE_STRIDE, stage_dilation=STAGE_DILATION,
                head_mid=int(head.shape[0]), num_classes=int(cls.shape[0]), in_nc=in_nc)


def from_state_dict(sd: StateDict) -> tuple[nn.Module, ModelSpec]:
    cfg = config_from_state_dict(sd)
    net = OutdoorSceneSeg(**cfg)
    names = CLASS_NAMES if cfg["num_classes"] == len(CLASS_NAMES) else tuple(f"class{i}" for i in range(cfg["num_classes"]))
    spec = ModelSpec(arch="outdoorsceneseg", variant="outdoorsceneseg", scale=0, input_range=255.0,
                     channel_order="BGR", mean=BGR_MEAN, extra_inputs=(), output="probabilities",
                     size_multiple=8, hyperparams={**cfg, "class_names": names, "output_stride": 8})
    return net, spec


ARCHITECTURES = (
    Architecture(name="outdoorsceneseg", detect=detect, from_state_dict=from_state_dict),
)

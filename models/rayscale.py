"""rayscale: the project's own compact, fast super-resolution network (the shipped default).

Why it exists: no published SR weights can be downloaded here, and the default model must run at
>= 4 frames/s on a 640x360 input at x2 on a 2-core CPU (bf16 + channels_last), where an FSRCNN-size
net runs ~15 fps and a reduced RDN ~2.4 fps. The design sits in between and is EDSR-baseline
(Lim et al. 2017, Fig. 3) shrunk to a few residual blocks, with two cheap-model tricks:

- all convolutions run at LR resolution; upsampling is a sub-pixel conv (ESPCN, Shi et al. 2016):
  one x2 or x3 pixel-shuffle stage, or two / three x2 stages for x4 / x8 (conv C->4C, shuffle,
  ReLU; x8 is for 16x16 faces: models/weights/README.md);
- a global residual over a bicubic upsample of the input, so the net only learns the missing
  high frequencies (VDSR's insight) and starts from bicubic quality -- important for short
  CPU trainings.

    x -> feat (3x3, 3->C) -> blocks: n x [3x3, ReLU, 3x3, + skip] -> fuse (3x3) + feat
      -> upsampler (pixel-shuffle stages) -> to_rgb (3x3, C->3) + bicubic(x)

Input and output are RGB in [0, 1] (no mean). Every hyper-parameter (C, n, scale) is read off the
tensor shapes / key presence. The shipped weights are C=32, n=3 (69k params at x2): by MAC count
(~69k per LR pixel) the largest config expected to clear ~5 fps idle; measured at x2 on 640x360,
bf16 + channels_last, 2 threads on the shared 2-core VM: 4.5 fps best, 3.3-3.7 median; the three
residual blocks are ~70% of the time (C=24 n=4 or C=32 n=2 would be ~1.4x faster). Quality and
training commands: models/weights/README.md (Set5 x2 36.99 dB after 40 CPU-minutes on T91).
"""
from __future__ import annotations

import re

import torch
import torch.nn.functional as F
from torch import nn

from .spec import Architecture, ModelSpec, StateDict, UnknownCheckpoint

NAME = "rayscale"
_PREFIXES = ("feat.", "blocks.", "fuse.", "upsampler.", "to_rgb.")


def _cubic(t: float, a: float = -0.75) -> float:
    t = abs(t)
    if t <= 1:
        return (a + 2) * t ** 3 - (a + 3) * t ** 2 + 1
    if t < 2:
        return a * t ** 3 - 5 * a * t ** 2 + 8 * a * t - 4 * a
    return 0.0


def bicubic_phase_weights(scale: int) -> torch.Tensor:
    """(scale*scale, 1, 5, 5) filters: output phase (dy, dx) of `F.interpolate(mode="bicubic",
    align_corners=False)` as a 5x5 correlation centred on the LR pixel (taps at offsets -2..2)."""
    taps = torch.zeros(scale, 5, dtype=torch.float64)
    for o in range(scale):
        u = (o + 0.5) / scale - 0.5           # source position relative to the LR pixel
        f = int(torch.floor(torch.tensor(u)))
        t = u - f
        for j, w in zip(range(f - 1, f + 3), (_cubic(t + 1), _cubic(t), _cubic(1 - t), _cubic(2 - t))):
            taps[o, j + 2] += w
    k = taps[:, None, :, None] * taps[None, :, None, :]          # (dy, dx, 5, 5)
    return k.reshape(scale * scale, 1, 5, 5).float()


class BicubicUp(nn.Module):
    """Bicubic upsampling (same values as F.interpolate bicubic, align_corners=False, edge clamp)
    as a fixed grouped conv + pixel shuffle: ~8x faster than F.interpolate on this CPU (0.3 s per
    640x360 frame would otherwise cost more than the whole network). Not in the state dict."""

    def __init__(self, scale: int, channels: int = 3):
        super().__init__()
        self.channels = channels
        self.register_buffer("weight", bicubic_phase_weights(scale).repeat(channels, 1, 1, 1), persistent=False)
        self.shuffle = nn.PixelShuffle(scale)

    def forward(self, x):
        x = F.pad(x, (2, 2, 2, 2), mode="replicate")
        return self.shuffle(F.conv2d(x, self.weight.to(x.dtype), groups=self.channels))


class ResBlock(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x):
        return x + self.conv2(F.relu(self.conv1(x)))


class Rayscale(nn.Module):
    def __init__(self, channels: int = 32, n_blocks: int = 4, scale: int = 2):
        super().__init__()
        if scale not in (2, 3, 4, 8):
            raise ValueError("rayscale supports x2, x3, x4 and x8")
        self.scale = scale
        c = channels
        self.feat = nn.Conv2d(3, c, 3, padding=1)
        self.blocks = nn.Sequential(*[ResBlock(c) for _ in range(n_blocks)])
        self.fuse = nn.Conv2d(c, c, 3, padding=1)
        # x4 / x8: one / two intermediate x2 stages at C channels; the last stage is folded into to_rgb
        stages = []
        for _ in range({4: 1, 8: 2}.get(scale, 0)):
            stages += [nn.Conv2d(c, 4 * c, 3, padding=1), nn.PixelShuffle(2), nn.ReLU(inplace=True)]
        self.upsampler = nn.Sequential(*stages)
        last = 2 if scale in (4, 8) else scale
        self.to_rgb = nn.Sequential(nn.Conv2d(c, 3 * last * last, 3, padding=1), nn.PixelShuffle(last))
        self.base = BicubicUp(scale)
        # start exactly at bicubic: a random last layer would add noise worth ~15 dB of PSNR loss
        nn.init.zeros_(self.to_rgb[0].weight)
        nn.init.zeros_(self.to_rgb[0].bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        base = self.base(x)
        f = self.feat(x)
        y = self.fuse(self.blocks(f)) + f
        return self.to_rgb(self.upsampler(y)) + base


def _spec(channels: int, n_blocks: int, scale: int) -> ModelSpec:
    return ModelSpec(arch=NAME, variant=f"rayscale-c{channels}b{n_blocks}", scale=scale, input_range=1.0,
                     channel_order="RGB", mean=None, output="image",
                     hyperparams={"channels": channels, "n_blocks": n_blocks})


def detect(sd: StateDict) -> bool:
    keys = list(sd)
    if not keys or not all(k.startswith(_PREFIXES) for k in keys):
        return False
    return all(k in sd for k in ("feat.weight", "fuse.weight", "to_rgb.0.weight"))


def from_state_dict(sd: StateDict) -> tuple[nn.Module, ModelSpec]:
    if not detect(sd):
        raise UnknownCheckpoint("not a rayscale state dict")
    w = sd["feat.weight"]
    if w.ndim != 4 or w.shape[1] != 3:
        raise UnknownCheckpoint(f"rayscale: feat.weight has shape {tuple(w.shape)}, expected (C, 3, 3, 3)")
    c = int(w.shape[0])
    idx = {int(m.group(1)) for k in sd if (m := re.match(r"blocks\.(\d+)\.", k))}
    n_blocks = max(idx) + 1 if idx else 0
    out = int(sd["to_rgb.0.weight"].shape[0])
    n_up = sum(1 for k in sd if re.match(r"upsampler\.\d+\.weight$", k))   # x2 stages before to_rgb
    last = {12: 2, 27: 3}.get(out)
    if last is None or (n_up and last != 2) or n_up > 2:
        raise UnknownCheckpoint(f"rayscale: to_rgb has {out} outputs after {n_up} x2 stages; expected "
                                "12 (x2/x4/x8) or 27 (x3)")
    scale = last * 2 ** n_up
    return Rayscale(c, n_blocks, scale), _spec(c, n_blocks, scale)


def build(channels: int = 32, n_blocks: int = 4, scale: int = 2) -> tuple[nn.Module, ModelSpec]:
    """A fresh (randomly initialised) network, e.g. for training from scratch."""
    return Rayscale(channels, n_blocks, scale), _spec(channels, n_blocks, scale)


ARCHITECTURES = (Architecture(NAME, detect, from_state_dict, scales=(2, 3, 4, 8)),)

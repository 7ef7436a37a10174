"""SFTGAN x4 conditioned on the `segmentation` column, and the two-stage route that feeds it.

Conventions of `xinntao/CVPR18-SFTGAN pytorch_test/test_sftgan.py`: the LR image enters as RGB in
[0, 1], the condition is the segmentation network's softmax output at HR size (4h x 4w, fed as is:
CondNet's 4x4 stride-4 conv brings it to LR size), and the output is clamped to [0, 1] and rounded.
Both released generators (`SFTGAN_torch.pth`, `SFTGAN_noBN_OST_bg.pth`) load; `models.load` reads
the variant off the checkpoint's keys.

Wiring (the engine): `sftgan_stages(weights, seg_weights, device, precision, tile, compact)` gives
the two stages in order; for `--save-segmentation`, add `segmap_colour.SegmentationLegend` after
the segmenter and save its column with `segmap_colour.write_png`.

Tiling: the LR image and the map travel together (the map folded onto the LR grid with
`pixel_unshuffle`, an exact permutation), so `operators.tiling.tiled` cuts both at the same place.
"""
from __future__ import annotations

import functools

import numpy as np
import torch
import torch.nn.functional as F

import models
from models import UnknownCheckpoint

from .base import Batch, Operator
from .segment import SEG_OVERLAP, Segmenter, check_precision, frames_to_tensor
from .tiling import tiled
from .upscale import resolve_device

# Overlap (LR pixels) for tiled SFTGAN: 34 3x3 convs at LR size plus the HR branch reach 36 LR px
# each side (checked in tests/test_sftgan_route.py), so at 36 tiled = untiled for any weights.
# Measured with random full-size weights on OST_159 (tile 16): within 1/255 from 24 (SFT_Net) and
# 8 (SFT_Net_torch), identical at 36; 36 costs 16% more than 24 with 256-px tiles.
SFT_OVERLAP = 36


class SFTGANUpscaler(Operator):
    """frames (N,h,w,3) + segmentation (N,8,4h,4w) -> frames (N,4h,4w,3), same dtype."""

    reads = ("frames", "segmentation")
    writes = ("frames",)

    def __init__(self, weights: str, device: str | None = "auto", precision: str = "fp32", tile: int = 0,
                 tile_overlap: int = SFT_OVERLAP):
        self.device = resolve_device(device)
        self.dtype = check_precision(precision, self.device)
        net, spec = models.load("sftgan", weights=weights)
        self.spec, self.variant, self.scale = spec, spec.variant, spec.scale
        self.classes = int(spec.hyperparams["seg_nc"])
        self.net = net.to(self.device, self.dtype).eval()
        self.tile, self.tile_overlap = max(0, int(tile or 0)), int(tile_overlap)

    def __call__(self, batch: Batch) -> Batch:
        frames, seg = batch["frames"], batch["segmentation"]
        n, h, w = frames.shape[:3]
        s = self.scale
        if seg.shape != (n, self.classes, h * s, w * s):
            raise ValueError(f"sftgan: segmentation of shape {tuple(seg.shape)} does not fit frames "
                             f"{tuple(frames.shape)} (needs {(n, self.classes, h * s, w * s)})")
        if n == 0:
            up = np.zeros((0, h * s, w * s, 3), frames.dtype)
        else:
            step = n if self.device.type == "cuda" else 1
            up = np.concatenate([self._frames(frames[i:i + step], seg[i:i + step]) for i in range(0, n, step)])
        out = dict(batch)
        out["frames"] = up
        return out

    @torch.inference_mode()
    def _frames(self, frames: np.ndarray, seg: np.ndarray) -> np.ndarray:
        peak = 255.0 if frames.dtype == np.uint8 else 65535.0
        x = frames_to_tensor(frames, self.device)
        p = torch.from_numpy(np.ascontiguousarray(seg)).to(self.device).float()
        packed = torch.cat([x, F.pixel_unshuffle(p, self.scale)], 1)
        del p
        y = tiled(self._forward, packed, self.scale, self.tile, self.tile_overlap)
        y = (y.clamp(0, 1) * peak).round()
        return y.permute(0, 2, 3, 1).to("cpu", torch.float32).numpy().astype(frames.dtype)

    def _forward(self, packed: torch.Tensor) -> torch.Tensor:
        img = packed[:, :3].to(self.dtype)
        seg = F.pixel_shuffle(packed[:, 3:], self.scale).to(self.dtype)
        return self.net((img, seg)).float()


def sftgan_stages(weights: str, seg_weights: str, device: str | None = "auto", precision: str = "fp32",
                  tile: int = 0, compact: bool = False) -> list[tuple[str, functools.partial, tuple, tuple]]:
    """The route as engine stages: [(name, picklable factory, reads, writes)], segmentation first.

    Both checkpoints are checked here (one-line `CheckpointError`/`UnknownCheckpoint` naming the
    file), so a wrong file fails before any actor starts. `compact=True` when the stages do not
    share a process (maps cross the object store as float16)."""
    det = models.detect(weights)
    if det.arch != "sftgan":
        raise UnknownCheckpoint(f"{weights}: --weights is a {det.arch} checkpoint, not an SFTGAN generator")
    sdet = models.detect(seg_weights)
    if sdet.arch != "outdoorsceneseg":
        raise UnknownCheckpoint(f"{seg_weights}: --seg-weights is a {sdet.arch} checkpoint, not OutdoorSceneSeg")
    seg = functools.partial(Segmenter, str(seg_weights), scale=det.scale, device=device, precision=precision,
                            tile=tile, tile_overlap=SEG_OVERLAP, compact=compact)
    sft = functools.partial(SFTGANUpscaler, str(weights), device=device, precision=precision, tile=tile,
                            tile_overlap=SFT_OVERLAP)
    return [("segment", seg, Segmenter.reads, Segmenter.writes),
            ("sftgan", sft, SFTGANUpscaler.reads, SFTGANUpscaler.writes)]

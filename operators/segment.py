"""OutdoorSceneSeg class probabilities for SFTGAN, computed the way the authors' test script does.

`xinntao/CVPR18-SFTGAN pytorch_test/test_segmentation.py` feeds the network the bicubic-upsampled LR
(MATLAB imresize x4 of the /255 image), in BGR on the 0-255 scale minus the ImageNet BGR means: the
network was trained on such "_bic" images, so the frame is upsampled x4 with `models.imresize`
(not OpenCV/torch bicubic) before segmentation. The authors modcrop to a multiple of 8; frames of
any size are padded (replicate) to the network's multiple of 8 and the maps cropped back.

The maps are stored at the size SFTGAN's condition network reads (scale x the frame), float32, or
float16 with `compact=True` for runs where they cross processes (half the bytes; see the tests for
the effect on SFTGAN's output).
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

import models
from models.imresize import imresize

from .base import Batch, Operator
from .tiling import tiled
from .upscale import PRECISIONS, resolve_device

# Overlap (LR pixels) for tiled segmentation: the receptive field of the published net (stem,
# 3/4/23/3 dilated bottlenecks, head, deconv) reaches 525 HR px each side, 132 LR px at x4, plus
# 2 LR px of bicubic support: at 136 tiled = untiled for any weights (tests/test_sftgan_route.py
# checks the field). With random full-depth weights on OST_159 (float64, 64-px tiles) the maps
# agree within 1/255 from an overlap of 88 (80: 6.7e-3, 64: 0.24 apart); trained weights may
# reach further than random ones, hence the bound (1.4x the work of 88 with 256-px tiles).
SEG_OVERLAP = 136


def check_precision(precision: str, device: torch.device) -> torch.dtype:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}")
    if precision == "fp16" and device.type == "cpu":
        raise ValueError("fp16 needs a GPU; use bf16 or fp32 on CPU")
    return PRECISIONS[precision]


def frames_to_tensor(frames: np.ndarray, device: torch.device) -> torch.Tensor:
    """uint8/uint16 (N,H,W,3) RGB -> float32 (N,3,H,W) in [0, 1]."""
    peak = 255.0 if frames.dtype == np.uint8 else 65535.0
    if not (frames.flags.c_contiguous and frames.flags.writeable):   # views, read-only Arrow buffers
        frames = np.array(frames, order="C")
    t = torch.from_numpy(frames).to(device)
    return t.permute(0, 3, 1, 2).float() / peak


class Segmenter(Operator):
    """Adds `segmentation`: (N, C, scale*H, scale*W) class probabilities (sum 1 over axis 1)."""

    reads = ("frames",)
    writes = ("segmentation",)

    def __init__(self, weights: str, scale: int = 4, device: str | None = "auto", precision: str = "fp32",
                 tile: int = 0, tile_overlap: int = SEG_OVERLAP, compact: bool = False):
        self.device = resolve_device(device)
        self.dtype = check_precision(precision, self.device)
        net, spec = models.load("outdoorsceneseg", weights=weights)
        self.spec, self.up, self.compact = spec, int(scale), bool(compact)
        self.class_names = tuple(spec.hyperparams["class_names"])
        self.net = net.to(self.device, self.dtype).eval()
        self.mean = torch.tensor(spec.mean, device=self.device).view(1, -1, 1, 1)
        # Tiles must start on the network's stride grid (8 HR px) or their maps shift phase: in LR
        # pixels that is a multiple of 8 / gcd(8, scale) (2 at x4) for tile sizes and overlaps.
        m = spec.size_multiple
        self.align = m // math.gcd(m, self.up)
        ceil = lambda v: -(-int(v) // self.align) * self.align  # noqa: E731
        self.tile, self.tile_overlap = (ceil(tile) if tile and tile > 0 else 0), ceil(tile_overlap)

    def __call__(self, batch: Batch) -> Batch:
        frames = batch["frames"]
        n, h, w = frames.shape[:3]
        dtype = np.float16 if self.compact else np.float32
        if n == 0:
            probs = np.zeros((0, len(self.class_names), h * self.up, w * self.up), dtype)
        else:
            # On CPU one frame at a time (activations stay on the heap); a GPU takes the batch.
            step = n if self.device.type == "cuda" else 1
            tdtype = torch.float16 if self.compact else torch.float32
            probs = np.concatenate([self.probabilities(frames[i:i + step]).to("cpu", tdtype).numpy()
                                    for i in range(0, n, step)])
        out = dict(batch)
        out["segmentation"] = probs
        return out

    @torch.inference_mode()
    def probabilities(self, frames: np.ndarray) -> torch.Tensor:
        """float32 (N, C, scale*H, scale*W) on the operator's device."""
        x = frames_to_tensor(frames, self.device)
        return tiled(self._forward, x, self.up, self.tile, self.tile_overlap, self.align)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        """LR RGB [0, 1] (N,3,h,w) -> probabilities (N,C,scale*h,scale*w), float32."""
        spec = self.spec
        hr = imresize(x, self.up)                          # MATLAB bicubic, like the authors
        if spec.channel_order == "BGR":
            hr = hr.flip(1)
        hr = hr * spec.input_range - self.mean
        h, w = hr.shape[-2:]
        m = spec.size_multiple
        ph, pw = (-h) % m, (-w) % m
        if ph or pw:
            hr = F.pad(hr, (0, pw, 0, ph), mode="replicate")
        logits = self.net.deconv(self.net.feature(hr.to(self.dtype)))
        # softmax in float32 (the network's own last layer) so half-precision runs still sum to 1
        return torch.softmax(logits.float(), dim=1)[..., :h, :w]

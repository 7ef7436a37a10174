"""Face SR on the aligned crops only, batched across the frames of a batch.

The face model is any image-to-image upscaler `models.load` knows (the shipped rayscale-face
models, FSRNet, Super-FAN, a checkpoint file), run through operators.upscale.Upscaler on a stack
of the batch's crops, so it gets the same value range, channel order and precision handling as
the background model. Two models that need no weights exist for tests and for checking the
route: `identity` (bicubic, the face left as the plain upscale would have it) and `marker` (a
constant colour, to see where faces are pasted)."""
from __future__ import annotations

import cv2
import numpy as np

from ..base import Batch, Operator
from ..upscale import Upscaler

MARKER_RGB = (255, 0, 255)


class FaceSR(Operator):
    """faces_crops (N,K,s,s,3) -> faces_restored (N,K,s*scale,s*scale,3)."""

    reads = ("faces_crops", "faces_count")
    writes = ("faces_restored",)

    def __init__(self, model: str = "identity", weights: str | None = None, scale: int | None = None,
                 device: str | None = "auto", precision: str = "fp32", batch_size: int = 64):
        self.model, self.batch_size = model, int(batch_size)
        if model in ("identity", "marker"):
            if not scale:
                raise ValueError(f"face model {model} needs a scale")
            self.upscaler, self.face_scale = None, int(scale)
            return
        self.upscaler = Upscaler(model, weights=weights, scale=scale, device=device, precision=precision)
        self.device = str(self.upscaler.device)
        self.face_scale = self.upscaler.scale

    @property
    def spec(self):
        return None if self.upscaler is None else self.upscaler.spec

    def restore(self, crops: np.ndarray) -> np.ndarray:
        """(M,s,s,3) crops -> (M,s*scale,s*scale,3), same dtype."""
        m, s = len(crops), crops.shape[1] * self.face_scale
        if self.model == "identity":
            return np.stack([cv2.resize(c, (s, s), interpolation=cv2.INTER_CUBIC) for c in crops]) if m else \
                np.zeros((0, s, s, 3), crops.dtype)
        if self.model == "marker":
            peak = 255 if crops.dtype == np.uint8 else 65535
            out = np.empty((m, s, s, 3), crops.dtype)
            out[...] = np.array(MARKER_RGB, np.float64) / 255 * peak
            return out
        parts = [self.upscaler({"frames": crops[i:i + self.batch_size]})["frames"] for i in range(0, m, self.batch_size)]
        return np.concatenate(parts) if parts else np.zeros((0, s, s, 3), crops.dtype)

    def __call__(self, batch: Batch) -> Batch:
        crops, count = batch["faces_crops"], batch["faces_count"]
        n, k, h, w = crops.shape[:4]
        valid = np.arange(k)[None, :] < count[:, None]
        if "faces_affine" in batch:            # all-zero map: a face align left to the background
            valid &= np.abs(batch["faces_affine"]).reshape(n, k, 6).max(-1, initial=0) > 0   # K may be 0
        restored = np.zeros((n, k, h * self.face_scale, w * self.face_scale, 3), crops.dtype)
        if valid.any():
            restored[valid] = self.restore(crops[valid])
        out = dict(batch)
        out["faces_restored"] = restored
        return out

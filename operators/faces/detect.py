"""Face detection on the low-resolution frame with YuNet (cv2.FaceDetectorYN).

Detection runs on the LR frame, before the background upscale: faces are found where they are
smallest, which is what YuNet has to cope with anyway, at a fraction of the cost of the HR frame.

Threshold 0.7 (measured on ../shared/data/faces, full-size photos): the 21 true faces of the
group and single-face photos score 0.90-0.95 (0.81-0.94 for FSRNet's 16x16-information Helen
faces); the only false positives at 0.5 were a raised finger (0.63) and a stair post (0.69).
The tracker's confirmation over frames removes most of what slips through on video.

Small frames are upsampled (bicubic, integer factor) until the long side reaches `upsample_to`
(1280, at most x4) before detection; boxes and landmarks are mapped back to LR pixels. Measured
(a real face pasted into frames, one CPU thread): at native size YuNet misses faces under 12 px
and scores 12 px faces 0.61-0.66 (below the threshold); with the frame doubled it finds 8 px
faces at 0.89-0.90 and 12 px ones at 0.92-0.93. The 22 faces of the seven group photos, each
photo fitted into a 640x360 frame at full, 1/2, 1/4 and 1/8 size: found 22, 21, 18, 7 at native
size and 22, 22, 21, 18 doubled (the misses at 1/8 are faces 2.5-5 px wide), with no false
detection either way. The price: a 640x360 frame takes ~4x the time (116 -> 476 ms on the busy
shared CPU; 32 -> 130 ms on an idle core), still small beside the background upscale of it."""
from __future__ import annotations

from importlib import resources
from pathlib import Path

import cv2
import numpy as np

from pipeline.errors import InputError

from ..base import Batch, Operator

DEFAULT_MODEL = "face_detection_yunet_2023mar.onnx"


def default_model_path() -> Path:
    """The YuNet file shipped in the package data (operators/faces/yunet/)."""
    return Path(str(resources.files(__package__).joinpath("yunet", DEFAULT_MODEL)))


def empty_faces(n: int, k: int = 0) -> Batch:
    """Face columns for n frames with room for k faces each, all empty."""
    return {"faces_count": np.zeros(n, np.int32), "faces_box": np.zeros((n, k, 4), np.float32),
            "faces_landmarks": np.zeros((n, k, 5, 2), np.float32), "faces_score": np.zeros((n, k), np.float32)}


def pack_faces(per_frame: list[np.ndarray]) -> Batch:
    """Rows of YuNet output (x, y, w, h, 10 landmark coordinates, score) per frame -> padded
    face columns."""
    n, k = len(per_frame), max((len(d) for d in per_frame), default=0)
    out = empty_faces(n, k)
    for i, d in enumerate(per_frame):
        m = len(d)
        out["faces_count"][i] = m
        if m:
            out["faces_box"][i, :m] = np.stack([d[:, 0], d[:, 1], d[:, 0] + d[:, 2], d[:, 1] + d[:, 3]], 1)
            out["faces_landmarks"][i, :m] = d[:, 4:14].reshape(m, 5, 2)
            out["faces_score"][i, :m] = d[:, 14]
    return out


class FaceDetector(Operator):
    """Boxes, 5 landmarks and scores per frame, in LR pixels, highest score first."""

    reads = ("frames",)
    writes = ("faces_count", "faces_box", "faces_landmarks", "faces_score")

    def __init__(self, model_path: str | None = None, threshold: float = 0.7, min_size: float = 0.0,
                 top_k: int = 50, nms: float = 0.3, upsample_to: int = 1280, max_upsample: int = 4):
        path = Path(model_path) if model_path else default_model_path()
        if not path.is_file():
            raise InputError(f"{path}: face detector model not found")
        if not 0.0 < threshold < 1.0:
            raise ValueError(f"face threshold must be between 0 and 1, not {threshold}")
        try:
            self.net = cv2.FaceDetectorYN.create(str(path), "", (320, 320), float(threshold), float(nms), int(top_k))
        except cv2.error:
            raise InputError(f"{path}: not a face detector ONNX model that cv2.FaceDetectorYN can load") from None
        try:        # OpenCV's DNN threads follow the actor's torch thread count (its CPU share)
            import torch
            cv2.setNumThreads(torch.get_num_threads())
        except ImportError:
            pass
        self.path, self.threshold, self.min_size, self.top_k = path, threshold, float(min_size), int(top_k)
        self.upsample_to, self.max_upsample = int(upsample_to), int(max_upsample)
        self._size = None

    def upsample_factor(self, h: int, w: int) -> int:
        """Integer factor that brings the long side up to about `upsample_to` (1: none)."""
        return int(max(1, min(self.max_upsample, self.upsample_to // max(h, w, 1))))

    def detect(self, frame: np.ndarray) -> np.ndarray:
        """One RGB frame (uint8 or uint16) -> YuNet rows (M,15) in the frame's pixels."""
        if frame.dtype != np.uint8:
            frame = (frame >> 8).astype(np.uint8) if frame.dtype == np.uint16 else np.clip(frame, 0, 255).astype(np.uint8)
        h, w = frame.shape[:2]
        f = self.upsample_factor(h, w)
        bgr = np.ascontiguousarray(frame[..., ::-1])
        if f > 1:
            bgr = cv2.resize(bgr, (w * f, h * f), interpolation=cv2.INTER_CUBIC)
        size = (bgr.shape[1], bgr.shape[0])
        if size != self._size:
            self.net.setInputSize(size)
            self._size = size
        _, d = self.net.detect(bgr)
        if d is None or not len(d):
            return np.zeros((0, 15), np.float32)
        d = d.astype(np.float32)
        d[:, :14] /= f
        keep = np.minimum(d[:, 2], d[:, 3]) >= self.min_size
        d = d[keep]
        return d[np.argsort(-d[:, 14], kind="stable")][: self.top_k]

    def __call__(self, batch: Batch) -> Batch:
        out = dict(batch)
        out.update(pack_faces([self.detect(f) for f in batch["frames"]]))
        return out

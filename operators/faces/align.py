"""Alignment: each face mapped by a similarity transform onto the face model's canonical 5-point
template and cropped from the LR frame at the model's input size.

Only these crops travel to the face-SR pool. Templates are measured, not copied: the median YuNet
landmarks over 400 images of each training set, mirrored to be symmetric, so a face crop is framed
the way the face model saw its training faces:

* `utkface` (../shared/data/faces_train/utkface, 200x200 aligned faces; the rayscale-face models):
  eyes at (0.305, 0.291) / (0.695, 0.291), nose (0.5, 0.499), mouth (0.335, 0.685) / (0.665, 0.685).
* `celeba` (FSRNet's CelebA 128x128 crops; FSRNet, Super-FAN): eyes (0.365, 0.367), nose
  (0.5, 0.521), mouth (0.384, 0.641).

The fit is least squares over all five points (estimateAffinePartial2D with a threshold that
keeps every point an inlier, then its Levenberg-Marquardt refinement); a face whose landmarks
give no fit falls back to its box. Faces larger than the crop are sampled at an integer multiple
of the crop size and reduced with INTER_AREA, so downscaled crops do not alias.

Native crops: a face that is nearly upright (tilt <= `native_tilt`, 15 deg) at a zoom the face
models were trained on (`native_zoom`, 0.7-2.5: neither too large for the crop nor lost in it) is
cut at the frame's own pixels, shifted by whole pixels to the template's centre, instead of being
resampled onto the template. Why: resampling a 16 px face is a low-pass filter the face model never
saw in training (its faces are at random places and zooms, upright), and it cost 1.1 dB in the
frame (benchmarks/face_paste_quality.py: 24.98 -> 26.09 dB on 100 CelebA faces of 16 px, same
weights); the native crop's detail also pastes back with no resampling, and since the shift is
the one paste uses, a face moving by a pixel between frames moves its detail with it (no jitter).
Tilted faces and large ones still get the full similarity.

Faces too large for the face model are left to the background upscale: when the crop would shrink
the face below `min_zoom` (default 0.7, the smallest zoom the face models were trained at: e.g.
wider than ~16 LR px for a 16 px crop) the face keeps its detection but gets a zero map and a zero
crop, and face SR and paste skip it. A x4 face model fed a 40 px face cut down to 12 px would paste
a blurrier face than the background upscale of the original 40 px; measured in the frame on
held-out CelebA/Helen faces (benchmarks/face_paste_quality.py --whole), 208 of the 210 faces
shrunk by 0.5-0.7 lost against the plain `rayscale-x4` upscale (up to 5 dB), 2 gained 0.17-0.28 dB.

Beside each crop goes the LR patch under it (its bounding rectangle plus `LR_MARGIN` pixels, for
the bicubic's support): paste adds only the face model's detail to the bicubic upscale of that
patch, which needs no resampling (operators/faces/paste.py). It is the LR frame's only other
passenger: ~24x24 px for an upright 16 px crop at zoom 1."""
from __future__ import annotations

import math

import cv2
import numpy as np

from ..base import Batch, Operator

TEMPLATES = {
    "utkface": np.array([[0.305, 0.291], [0.695, 0.291], [0.5, 0.499], [0.335, 0.685], [0.665, 0.685]], np.float32),
    "celeba": np.array([[0.365, 0.367], [0.635, 0.367], [0.5, 0.521], [0.384, 0.641], [0.616, 0.641]], np.float32),
}


def template_for(model: str) -> str:
    """The template a face model was trained on: FSRNet and Super-FAN use CelebA's framing."""
    return "celeba" if any(k in str(model).lower() for k in ("fsrnet", "superfan", "celeba")) else "utkface"


def similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray | None:
    """2x3 similarity (rotation, uniform scale, translation) taking points src to dst."""
    m, _ = cv2.estimateAffinePartial2D(src.astype(np.float32), dst.astype(np.float32), method=cv2.RANSAC,
                                       ransacReprojThreshold=1e6, refineIters=20)
    return m


def box_similarity(box: np.ndarray, template: np.ndarray, size: int) -> np.ndarray:
    """Fallback: scale and shift so the box's width and centre match the template's eye/mouth span."""
    x0, y0, x1, y1 = box
    span = (template[1, 0] - template[0, 0]) * size / 0.55      # eye distance: ~0.55 of a YuNet box width
    s = span / max(x1 - x0, 1e-3)
    cx, cy = template[:, 0].mean() * size, template[:, 1].mean() * size
    return np.array([[s, 0, cx - s * (x0 + x1) / 2], [0, s, cy - s * (y0 + y1) / 2]], np.float64)


def warp_crop(frame: np.ndarray, m: np.ndarray, size: int) -> np.ndarray:
    """The size x size crop of `frame` under the 2x3 map m (frame -> crop), antialiased."""
    zoom = math.sqrt(abs(np.linalg.det(m[:, :2])))
    k = max(1, math.ceil(1.0 / zoom - 1e-6)) if zoom < 1 else 1
    if k == 1:
        return cv2.warpAffine(frame, m, (size, size), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REPLICATE)
    # sample at k x the crop size (pixel centres: x_k = k (x + 0.5) - 0.5), then area-average down
    mk = m * k
    mk[:, 2] += (k - 1) / 2
    big = cv2.warpAffine(frame, mk, (size * k, size * k), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    return cv2.resize(big, (size, size), interpolation=cv2.INTER_AREA)


LR_MARGIN = 3


def lr_rect(m: np.ndarray, size: int, shape: tuple[int, int]) -> tuple[int, int, int, int]:
    """x0, y0, x1, y1 of the LR pixels the crop (under map m: frame -> crop) covers, grown by
    LR_MARGIN and clipped to the frame."""
    inv = cv2.invertAffineTransform(np.asarray(m, np.float64))
    corners = np.array([[-0.5, -0.5, 1], [size - 0.5, -0.5, 1], [-0.5, size - 0.5, 1], [size - 0.5, size - 0.5, 1]])
    xy = corners @ inv.T
    h, w = shape
    x0 = min(max(int(np.floor(xy[:, 0].min())) - LR_MARGIN, 0), w)
    y0 = min(max(int(np.floor(xy[:, 1].min())) - LR_MARGIN, 0), h)
    x1 = max(min(int(np.ceil(xy[:, 0].max())) + 1 + LR_MARGIN, w), x0)
    y1 = max(min(int(np.ceil(xy[:, 1].max())) + 1 + LR_MARGIN, h), y0)
    return x0, y0, x1, y1


class FaceAlign(Operator):
    """Crops (N,K,s,s,3) of the LR frames and the maps LR frame -> crop (N,K,2,3); an all-zero
    map marks a face that is not to be restored. faces_lr (N,K,P,P,3) holds the LR patch under
    each crop at its top-left corner, faces_lr_rect (N,K,4) its x0, y0, x1, y1 in the frame (P: the
    largest patch side of the batch, rounded up to 4)."""

    reads = ("frames", "faces_count", "faces_landmarks", "faces_box")
    writes = ("faces_crops", "faces_affine", "faces_lr", "faces_lr_rect")

    def __init__(self, crop_size: int = 16, template: str | np.ndarray = "utkface", min_zoom: float = 0.7,
                 native_zoom: tuple[float, float] = (0.7, 2.5), native_tilt: float = 15.0):
        if isinstance(template, str):
            if template not in TEMPLATES:
                raise ValueError(f"unknown face template {template!r} (known: {', '.join(TEMPLATES)})")
            template = TEMPLATES[template]
        self.size, self.min_zoom = int(crop_size), float(min_zoom)
        self.native_zoom, self.native_tilt = tuple(float(z) for z in native_zoom), float(native_tilt)
        self.template = np.asarray(template, np.float32).reshape(5, 2)

    def affine(self, landmarks: np.ndarray, box: np.ndarray) -> np.ndarray:
        m = similarity(landmarks, self.template * self.size)
        return box_similarity(box, self.template, self.size) if m is None or not np.isfinite(m).all() else m

    def native(self, m: np.ndarray, landmarks: np.ndarray) -> np.ndarray | None:
        """The whole-pixel shift that stands in for the similarity m, or None if the face is too
        tilted or too large to be cut at native resolution."""
        zoom = math.sqrt(abs(np.linalg.det(m[:, :2])))
        tilt = math.degrees(math.atan2(m[1, 0], m[0, 0]))
        if not self.native_zoom[0] <= zoom <= self.native_zoom[1] or abs(tilt) > self.native_tilt:
            return None
        t = np.round(self.template.mean(0) * self.size - landmarks.mean(0))
        return np.array([[1, 0, t[0]], [0, 1, t[1]]], np.float64)

    def __call__(self, batch: Batch) -> Batch:
        frames, count = batch["frames"], batch["faces_count"]
        n, k = len(frames), batch["faces_landmarks"].shape[1]
        crops = np.zeros((n, k, self.size, self.size, 3), frames.dtype)
        affine = np.zeros((n, k, 2, 3), np.float32)
        rect = np.zeros((n, k, 4), np.int32)
        for i in range(n):
            for j in range(int(count[i])):
                landmarks = batch["faces_landmarks"][i, j]
                m = self.affine(landmarks, batch["faces_box"][i, j])
                if math.sqrt(abs(np.linalg.det(m[:, :2]))) < self.min_zoom:
                    continue                      # too large for the face model: zero map, skipped
                native = self.native(m, landmarks)
                m = m if native is None else native
                affine[i, j] = m
                crops[i, j] = warp_crop(frames[i], m, self.size)
                rect[i, j] = lr_rect(affine[i, j], self.size, frames.shape[1:3])
        side = int(max((rect[..., 2:] - rect[..., :2]).max(initial=0), 0))
        side = -(-side // 4) * 4
        patches = np.zeros((n, k, side, side) + frames.shape[3:], frames.dtype)
        for i, j in zip(*np.nonzero((rect[..., 2:] > rect[..., :2]).all(-1))):
            x0, y0, x1, y1 = rect[i, j]
            patches[i, j, :y1 - y0, :x1 - x0] = frames[i, y0:y1, x0:x1]
        out = dict(batch)
        out["faces_crops"], out["faces_affine"] = crops, affine
        out["faces_lr"], out["faces_lr_rect"] = patches, rect
        return out

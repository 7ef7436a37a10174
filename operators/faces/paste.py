"""Paste restored faces back into the already-upscaled background frame.

Only the face model's detail is pasted: the restored crop minus the bicubic upscale of its own LR
crop, warped into the HR frame by the crop's alignment map (scaled from LR to HR pixels: pixel
centres x_hr = s (x_lr + 0.5) - 0.5, the convention of cv2.resize and of the background upscalers),
then added to the bicubic upscale of the LR patch under the face, which align carries and which
needs no warp. Why: warping the whole restored face back resamples it twice (LR -> crop -> HR),
which blurs edges by up to 4/255 on real photos even when the face model does nothing; warped
detail is zero where the model adds none, so a face model that returns the bicubic upscale leaves
the frame exactly as a bicubic background has it, and a real one changes only what it restores.

The face is blended through a feathered mask: a square inset 10% from the crop's edges, blurred
with sigma 4% of its size (weight 1 from 18% to 82% of the crop, which holds the whole face; 0 at
the crop's border, so no edge of the crop shows). Before blending the face is colour-matched to the
background under the same mask in CIELAB: mean lightness, and mean and spread of the two chroma
axes (a face model may sharpen, so the spread of lightness is left alone); a model with a colour
cast or a brightness shift leaves no seam.

A pasted face must be founded on the input at least as well as the plain upscale: the face is
kept only when the frame with it, reduced back to LR pixels (area mean), misses the LR pixels under
the face by no more than `consistency` times what the background alone misses them by (mean
squared error, weighted by the paste's mask); else the background upscale is left as it was. Why:
there is no ground truth at run time, and a face model fed a face outside what it learnt (shrunk
into its crop, or a detection that is no face) makes a face that no longer reduces to the input;
measured on held-out CelebA/Helen faces in the frame (benchmarks/face_paste_quality.py --whole)
faces that lose more than 0.35 dB against the background miss the input by 2.5-16x its misfit,
faces that gain mostly by under 1.9x (benchmarks/README.md, "Face route quality ... per face")."""
from __future__ import annotations

from functools import lru_cache

import cv2
import numpy as np

from ..base import Batch, Operator

CONSISTENCY = 2.0     # measured misfit ratios: faces that gain mostly < 1.9, faces that lose > 0.35 dB 2.5-16
# misfit a face may have whatever the background's: the rounding of 8-bit pixels (half a level),
# so a background that reduces to the input exactly does not make every face fail the test
MISFIT_FLOOR = (0.5 / 255) ** 2


def hr_map(affine: np.ndarray, background_scale: float, face_scale: float) -> np.ndarray:
    """2x3 map from HR background pixels to restored-crop pixels, given the map LR -> crop."""
    a, t = affine[:, :2].astype(np.float64), affine[:, 2].astype(np.float64)
    d = np.full(2, 0.5 / background_scale - 0.5)
    lin = face_scale / background_scale * a
    off = face_scale * (a @ d + t) + (face_scale - 1) / 2
    return np.concatenate([lin, off[:, None]], 1)


@lru_cache(maxsize=8)
def feather_mask(size: int) -> np.ndarray:
    """(size, size) float32 weights: 1 in the middle, ~0 at the border."""
    m = np.zeros((size, size), np.float32)
    i = int(round(0.10 * size))
    m[i:size - i, i:size - i] = 1
    m = cv2.GaussianBlur(m, (0, 0), 0.04 * size)
    return np.clip((m - 0.01) / 0.99, 0, 1)


def color_match(face: np.ndarray, bg: np.ndarray, w: np.ndarray) -> np.ndarray:
    """face, bg: float32 RGB [0,1] (h,w,3); w: weights. Face colours moved to the background's
    statistics under w, in Lab."""
    fl, bl = cv2.cvtColor(face, cv2.COLOR_RGB2Lab), cv2.cvtColor(bg, cv2.COLOR_RGB2Lab)
    ws = w.sum()
    if ws < 1e-3:
        return face
    wv = w[..., None] / ws
    mf, mb = (fl * wv).sum((0, 1)), (bl * wv).sum((0, 1))
    sf = np.sqrt(((fl - mf) ** 2 * wv).sum((0, 1)))
    sb = np.sqrt(((bl - mb) ** 2 * wv).sum((0, 1)))
    ratio = np.where(sf > 1e-3, np.clip(sb / np.maximum(sf, 1e-3), 0.5, 2.0), 1.0)
    ratio[0] = 1.0
    out = (fl - mf) * ratio + mb
    return np.clip(cv2.cvtColor(out.astype(np.float32), cv2.COLOR_Lab2RGB), 0, 1)


def misfit(hr: np.ndarray, wts: np.ndarray, lr: np.ndarray, at: tuple[int, int], s: int) -> float:
    """Mean squared difference between hr reduced s times (area mean) and the LR pixels it covers,
    weighted by wts reduced alike. hr, wts: an HR region whose top-left corner is `at` HR pixels
    right of and below lr's; only the LR pixels hr covers whole count."""
    ox, oy = -(-at[0] // s), -(-at[1] // s)                # first LR pixel wholly inside the region
    nx, ny = (at[0] + hr.shape[1]) // s - ox, (at[1] + hr.shape[0]) // s - oy
    if nx <= 0 or ny <= 0:
        return 0.0
    hx, hy = ox * s - at[0], oy * s - at[1]

    def reduce(a):
        return cv2.resize(np.ascontiguousarray(a[hy:hy + ny * s, hx:hx + nx * s]), (nx, ny),
                          interpolation=cv2.INTER_AREA)
    w = reduce(wts)
    err = ((reduce(hr) - lr[oy:oy + ny, ox:ox + nx]) ** 2).mean(-1)
    return float((w * err).sum() / max(float(w.sum()), 1e-6))


class FacePaste(Operator):
    """frames (HR background) + faces_restored + faces_affine -> frames with faces pasted."""

    reads = ("frames", "faces_count", "faces_restored", "faces_affine", "faces_crops", "faces_lr", "faces_lr_rect")
    writes = ("frames", "faces_restored", "faces_crops", "faces_pasted")

    def __init__(self, background_scale: int, color: str = "lab", keep_crops: bool = False, inplace: bool = False,
                 consistency: float | None = CONSISTENCY):
        """inplace: paste into the incoming frames array when it is writeable (it was made by the
        background stage in the same actor and nothing else holds it) instead of copying it; the
        copy of a batch of HR frames costs more than pasting its faces (measured on the shared CPU:
        54 ms of the 80 ms per 2560x1440 frame with 8 faces).
        consistency: the largest ratio of the face's misfit to the LR input over the background's
        (see the module's docstring); None pastes every face (the `marker` model, tests of geometry)."""
        if color not in ("lab", "none"):
            raise ValueError("face colour matching must be 'lab' or 'none'")
        self.background_scale, self.color, self.keep_crops = int(background_scale), color, keep_crops
        self.inplace = inplace
        self.consistency = consistency

    def paste(self, frame: np.ndarray, restored: np.ndarray, crop: np.ndarray, affine: np.ndarray,
              lr: np.ndarray, rect: np.ndarray) -> bool:
        """Blend one restored crop into frame (in place); False when the face was left out (it
        fits the input worse than the background). affine: LR frame -> crop; lr: the LR patch under
        the crop at its top-left corner; rect: its x0, y0, x1, y1 in the LR frame."""
        s, peak = self.background_scale, (255.0 if frame.dtype == np.uint8 else 65535.0)
        # the same cv2 bicubic for the crop and the patch (and the `identity` face model): integer
        # results, so a model that adds nothing gives a detail of exactly zero
        bic = cv2.resize(crop, restored.shape[1::-1], interpolation=cv2.INTER_CUBIC)
        detail = (restored.astype(np.float32) - bic.astype(np.float32)) / peak
        face_scale = restored.shape[0] / crop.shape[0]
        if face_scale > s:           # e.g. a x4 face model in a x2 job: reduce the detail unaliased first
            detail = cv2.resize(detail, (crop.shape[1] * s, crop.shape[0] * s), interpolation=cv2.INTER_AREA)
            face_scale = s
        m_hr = hr_map(affine, s, face_scale)
        size = detail.shape[0]
        inv = cv2.invertAffineTransform(m_hr)
        corners = np.array([[-0.5, -0.5, 1], [size - 0.5, -0.5, 1], [-0.5, size - 0.5, 1], [size - 0.5, size - 0.5, 1]])
        xy = corners @ inv.T
        lx0, ly0, lx1, ly1 = (int(v) for v in rect)
        x0, y0 = max(int(np.floor(xy[:, 0].min())), lx0 * s), max(int(np.floor(xy[:, 1].min())), ly0 * s)
        x1 = min(int(np.ceil(xy[:, 0].max())) + 1, lx1 * s, frame.shape[1])
        y1 = min(int(np.ceil(xy[:, 1].max())) + 1, ly1 * s, frame.shape[0])
        if x1 <= x0 or y1 <= y0:
            return False
        m = m_hr.copy()
        m[:, 2] += m[:, :2] @ np.array([x0, y0], np.float64)
        flags = cv2.INTER_CUBIC | cv2.WARP_INVERSE_MAP
        detail = cv2.warpAffine(detail, m, (x1 - x0, y1 - y0), flags=flags, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        patch = np.ascontiguousarray(lr[:ly1 - ly0, :lx1 - lx0])
        base = cv2.resize(patch, ((lx1 - lx0) * s, (ly1 - ly0) * s), interpolation=cv2.INTER_CUBIC)
        base = base[y0 - ly0 * s:y1 - ly0 * s, x0 - lx0 * s:x1 - lx0 * s].astype(np.float32) / peak
        wts = cv2.warpAffine(feather_mask(size), m, (x1 - x0, y1 - y0), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                             borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        roi = frame[y0:y1, x0:x1]
        bg = roi.astype(np.float32) / peak
        face = np.clip(base + detail.reshape(base.shape), 0, 1)
        if self.color == "lab":
            face = color_match(face, bg, wts)
        blend = np.clip(np.round((bg + (face - bg) * wts[..., None]) * peak), 0, peak)
        if self.consistency is not None:
            inside, at = lr[:ly1 - ly0, :lx1 - lx0].astype(np.float32) / peak, (x0 - lx0 * s, y0 - ly0 * s)
            limit = self.consistency * misfit(bg, wts, inside, at, s) + MISFIT_FLOOR
            if misfit(blend / peak, wts, inside, at, s) > limit:
                return False
        roi[...] = blend.astype(frame.dtype)
        return True

    def __call__(self, batch: Batch) -> Batch:
        frames = batch["frames"]
        restored, affine, count = batch["faces_restored"], batch["faces_affine"], batch["faces_count"]
        pasted = np.zeros(affine.shape[:2], bool)
        if restored.shape[1] and affine.any():
            if not (self.inplace and frames.flags.writeable):
                frames = frames.copy()
            for i in range(len(frames)):
                for j in range(int(count[i])):
                    if not affine[i, j].any():      # left to the background upscale (FaceAlign.min_zoom)
                        continue
                    pasted[i, j] = self.paste(frames[i], restored[i, j], batch["faces_crops"][i, j], affine[i, j],
                                              batch["faces_lr"][i, j], batch["faces_lr_rect"][i, j])
        out = dict(batch)
        out["frames"], out["faces_pasted"] = frames, pasted
        if not self.keep_crops:          # consumed here: the crops need not travel to the sink
            out.pop("faces_restored", None)
            out.pop("faces_crops", None)
        out.pop("faces_lr", None)
        out.pop("faces_lr_rect", None)
        return out

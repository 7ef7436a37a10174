"""Colourised OutdoorSceneSeg class maps with a legend, for `--save-segmentation`.

Colours are the authors' look-up table (`pytorch_test/test_segmentation.py`, RGB) so maps compare
at a glance with their published figures; each legend entry also gives the class's share of the
pixels, which says more than the colours when classes are small."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from models.outdoorsceneseg import CLASS_NAMES

from .base import Batch, Operator

PALETTE = np.array([
    (153, 153, 153),   # background
    (0, 255, 255),     # sky
    (109, 158, 235),   # water
    (183, 225, 205),   # grass
    (153, 0, 255),     # mountain
    (17, 85, 204),     # building
    (106, 168, 79),    # plant
    (224, 102, 102),   # animal
], np.uint8)


def class_map(probs: np.ndarray) -> np.ndarray:
    """(C,H,W) or (N,C,H,W) probabilities -> uint8 class indices (H,W) / (N,H,W)."""
    return np.asarray(probs).argmax(axis=-3).astype(np.uint8)


def colourise(classes: np.ndarray) -> np.ndarray:
    """uint8 class indices (..., H, W) -> RGB uint8 (..., H, W, 3); unknown classes are white."""
    lut = np.full((256, 3), 255, np.uint8)
    lut[:len(PALETTE)] = PALETTE
    return lut[classes]


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:                      # Pillow < 10.1: bitmap font only
        return ImageFont.load_default()


def with_legend(classes: np.ndarray, names: tuple[str, ...] = CLASS_NAMES) -> np.ndarray:
    """The colourised map (H,W) above a legend: a swatch, the name and the pixel share per class.
    The canvas is widened when the map is narrower than one legend entry."""
    h, w = classes.shape
    colour = colourise(classes)
    share = np.bincount(classes.ravel(), minlength=len(names))[:len(names)] / max(1, classes.size)
    fs = int(np.clip(w // 48, 12, 40))
    font = _font(fs)
    pad, sw = fs // 2, fs
    labels = [f"{i} {n} {100 * s:.1f}%" for i, (n, s) in enumerate(zip(names, share))]
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    # sized for the widest share ("100.0%"): every frame of a size gets the same canvas
    text_w = max(int(np.ceil(probe.textlength(f"{i} {n} 100.0%", font=font))) for i, n in enumerate(names))
    cell_w, cell_h = pad + sw + pad + text_w + pad, fs + pad
    width = max(w, cell_w)
    cols = max(1, width // cell_w)
    rows = -(-len(labels) // cols)
    canvas = Image.new("RGB", (width, h + pad + rows * cell_h + pad), (255, 255, 255))
    canvas.paste(Image.fromarray(colour), (0, 0))
    draw = ImageDraw.Draw(canvas)
    for i, text in enumerate(labels):
        x0 = (i % cols) * cell_w + pad
        y0 = h + pad + (i // cols) * cell_h
        fill = tuple(int(c) for c in (PALETTE[i] if i < len(PALETTE) else (255, 255, 255)))
        draw.rectangle([x0, y0, x0 + sw - 1, y0 + sw - 1], fill=fill, outline=(0, 0, 0))
        draw.text((x0 + sw + pad, y0), text, fill=(0, 0, 0), font=font)
    return np.asarray(canvas)


def write_png(rgb: np.ndarray, path: str | os.PathLike) -> Path:
    """Write an RGB uint8 image as PNG under a temporary name, then rename: a killed job leaves no
    partial file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".png", dir=path.parent)
    os.close(fd)
    try:
        Image.fromarray(np.ascontiguousarray(rgb)).save(tmp, format="PNG")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def save_segmentation(probs: np.ndarray, path: str | os.PathLike,
                      names: tuple[str, ...] = CLASS_NAMES) -> Path:
    """One frame's (C,H,W) probabilities as a colour map with its legend, in a PNG."""
    return write_png(with_legend(class_map(probs), names), path)


class SegmentationLegend(Operator):
    """Adds `segmentation_legend`: uint8 (N, H', W', 3) colour maps with legends, for a sink that
    saves them (`--save-segmentation`). Put it right after the segmenter in the same fused stage:
    the legend images are 1/10 the bytes of float32 maps (3 uint8 vs 8 float32 per pixel), so when
    the engine drops `segmentation` after its last reader, only these cross to the sink."""

    reads = ("segmentation",)
    writes = ("segmentation_legend",)

    def __call__(self, batch: Batch) -> Batch:
        seg = batch["segmentation"]
        n, _, h, w = seg.shape
        if n:
            legend = np.stack([with_legend(class_map(p)) for p in seg])
        else:
            legend = np.zeros((0,) + with_legend(np.zeros((h, w), np.uint8)).shape, np.uint8)
        out = dict(batch)
        out["segmentation_legend"] = legend
        return out

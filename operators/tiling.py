"""Run an image network on tiles that fit in memory and stitch them without seams.

Each tile is processed with `overlap` pixels of real context on every side; only its centre
is kept, so a tile's border (where the network sees padding instead of image) never shows."""
from __future__ import annotations

from typing import Callable

import torch


def tiled(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, scale: int,
          tile: int, overlap: int = 16, multiple: int = 1) -> torch.Tensor:
    n, _, h, w = x.shape
    if tile <= 0 or (h <= tile and w <= tile):
        return fn(x)
    out = None
    for y0 in range(0, h, tile):
        for x0 in range(0, w, tile):
            y1, x1 = min(y0 + tile, h), min(x0 + tile, w)
            py0, px0 = max(0, y0 - overlap), max(0, x0 - overlap)
            py1, px1 = min(h, y1 + overlap), min(w, x1 + overlap)
            if multiple > 1:  # grow the context window to the size the network needs
                py1 = min(h, py0 + -(-(py1 - py0) // multiple) * multiple)
                px1 = min(w, px0 + -(-(px1 - px0) // multiple) * multiple)
            y = fn(x[:, :, py0:py1, px0:px1])
            if out is None:
                out = y.new_empty((n, y.shape[1], h * scale, w * scale))
            oy, ox = (y0 - py0) * scale, (x0 - px0) * scale
            out[:, :, y0 * scale:y1 * scale, x0 * scale:x1 * scale] = \
                y[:, :, oy:oy + (y1 - y0) * scale, ox:ox + (x1 - x0) * scale]
    return out

"""Helpers for tests that read media back: decoded frames, timestamps, packet bytes, PSNR."""
from __future__ import annotations

from fractions import Fraction

import av
import numpy as np

from pipeline.frames import to_rgb
from pipeline.probe import probe


def frames(path: str) -> np.ndarray:
    info = probe(path)
    with av.open(path) as c:
        return np.stack([to_rgb(f, info.bit_depth, info.colorspace, info.color_range) for f in c.decode(video=0)])


def times(path: str) -> list[Fraction]:
    """Presentation times of every decoded video frame, exact."""
    with av.open(path) as c:
        s = c.streams.video[0]
        return [f.pts * s.time_base for f in c.decode(s)]


def packets(path: str, kind: str) -> list[bytes]:
    with av.open(path) as c:
        streams = [s for s in c.streams if s.type == kind]
        if not streams:
            return []
        return [bytes(p) for p in c.demux(streams[0]) if p.size]


def packet_times(path: str, kind: str) -> list[Fraction]:
    with av.open(path) as c:
        s = [s for s in c.streams if s.type == kind][0]
        return [p.pts * s.time_base for p in c.demux(s) if p.size]


def psnr(a: np.ndarray, b: np.ndarray, peak: float = 255.0) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(peak ** 2 / mse)

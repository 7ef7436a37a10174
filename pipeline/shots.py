"""Shots of a video: a cheap scene-cut detector, and frame sampling inside a shot.

Per-model work that should not span a cut (ZSSR trains one net per shot) needs the shot list.
Frames are decoded once at 64 px wide (the decoder's scaler does the shrinking), each gets an HSV
histogram (hue 16 bins, saturation 8, value 16, each normalised), and a cut is placed before frame i
when half the L1 distance to frame i-1, averaged over the three histograms (0 = same, 1 = disjoint),
exceeds `threshold`. Histograms ignore where things are, so pans and moving objects inside a shot
stay well below a threshold that a change of scene passes; gradual fades are not detected (they
stay one shot, which is harmless for per-shot training).
"""
from __future__ import annotations

import av
import cv2
import numpy as np

from .frames import to_rgb
from .probe import VideoInfo, probe

BINS = (16, 8, 16)   # hue, saturation, value


def signature(rgb: np.ndarray) -> np.ndarray:
    """Concatenated normalised H/S/V histograms of a uint8 RGB frame."""
    hsv = cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2HSV)   # H in [0,180), S/V in [0,256)
    parts = []
    for c, (bins, top) in enumerate(zip(BINS, (180, 256, 256))):
        h = np.bincount((hsv[..., c].astype(np.int32) * bins // top).ravel(), minlength=bins)[:bins]
        parts.append(h / max(1, h.sum()))
    return np.concatenate(parts).astype(np.float32)


def distances(sigs: np.ndarray) -> np.ndarray:
    """d[i] = distance between frame i and i-1 (d[0] = 0), in [0, 1]."""
    if len(sigs) < 2:
        return np.zeros(len(sigs), np.float32)
    d = 0.5 * np.abs(np.diff(sigs, axis=0)).sum(axis=1) / len(BINS)
    return np.concatenate([[0.0], d]).astype(np.float32)


def frame_signatures(path: str, info: VideoInfo | None = None, width: int = 64) -> np.ndarray:
    """One signature per frame, in the order of `info.pts` (display order)."""
    info = info or probe(path)
    sigs = np.zeros((info.frame_count, sum(BINS)), np.float32)
    seen = np.zeros(info.frame_count, bool)
    height = max(2, int(round(info.height * width / info.width / 2)) * 2)
    with av.open(path) as c:
        vs = c.streams[info.stream_index]
        vs.thread_type = "AUTO"
        for packet in c.demux(vs):
            try:
                decoded = packet.decode()
            except av.error.FFmpegError:
                continue                      # the job reports corrupt data; here it is just skipped
            for f in decoded:
                if f.pts is None:
                    continue
                i = int(np.searchsorted(info.pts, f.pts))
                if i >= info.frame_count or info.pts[i] != f.pts or seen[i]:
                    continue
                small = f.reformat(width=width, height=height, format="rgb24").to_ndarray()
                sigs[i], seen[i] = signature(small), True
    for i in np.flatnonzero(~seen):           # undecodable frames copy their predecessor (no cut)
        sigs[i] = sigs[i - 1] if i else sigs[i]
    return sigs


def cuts_from_distances(d: np.ndarray, threshold: float = 0.3, min_shot: int = 4) -> list[int]:
    """First frames of every shot (always includes 0); shots shorter than `min_shot` are merged."""
    starts = [0]
    for i in np.flatnonzero(d > threshold):
        if i - starts[-1] >= min_shot:
            starts.append(int(i))
    return starts


def detect_shots(path: str, info: VideoInfo | None = None, threshold: float = 0.3, min_shot: int = 4,
                 width: int = 64) -> list[tuple[int, int]]:
    """[(first_frame, last_frame)] inclusive, global frame indices covering the whole video."""
    info = info or probe(path)
    if info.frame_count == 0:
        return []
    starts = cuts_from_distances(distances(frame_signatures(path, info, width)), threshold, min_shot)
    ends = [s - 1 for s in starts[1:]] + [info.frame_count - 1]
    return list(zip(starts, ends))


def sample_indices(first: int, last: int, n: int) -> list[int]:
    """n frame indices spread evenly over [first, last] (fewer when the shot is shorter)."""
    n = max(1, min(n, last - first + 1))
    return sorted({int(round(x)) for x in np.linspace(first, last, n + 2)[1:-1]}) if n < last - first + 1 \
        else list(range(first, last + 1))


def read_frames(info: VideoInfo, indices: list[int]) -> list[np.ndarray]:
    """Full-resolution RGB frames (uint8, or uint16 above 8 bits) at the given global indices."""
    want = {int(info.pts[i]): i for i in indices}
    got: dict[int, np.ndarray] = {}
    with av.open(info.path) as c:
        vs = c.streams[info.stream_index]
        for p in sorted(want):
            if want[p] in got:
                continue
            c.seek(p, stream=vs, backward=True, any_frame=False)
            for f in c.decode(vs):
                if f.pts in want and want[f.pts] not in got:
                    got[want[f.pts]] = to_rgb(f, info.bit_depth, info.colorspace, info.color_range)
                if f.pts is not None and f.pts >= p:
                    break
    return [got[i] for i in indices if i in got]

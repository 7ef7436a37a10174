"""Split a video into keyframe-aligned runs of frames, the unit of parallel work and of retry."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Segment:
    index: int
    start_pts: int            # first frame (a keyframe) of the run
    end_pts: int | None       # first frame of the next run; None = to the end
    first_frame: int          # global frame index of start_pts
    frame_count: int

    @property
    def name(self) -> str:
        return f"seg-{self.index:05d}"


def plan_segments(pts: np.ndarray, keyframe_pts: np.ndarray, min_frames: int = 48,
                  start_pts: int | None = None, end_pts: int | None = None) -> list[Segment]:
    """Runs of frames that start at a keyframe and hold at least `min_frames` frames (except the
    last). `start_pts`/`end_pts` select a time range: the first segment then starts at the
    keyframe before `start_pts` and its frames before `start_pts` are dropped by the decoder."""
    pts = np.asarray(pts, dtype=np.int64)
    lo = 0 if start_pts is None else int(np.searchsorted(pts, start_pts, "left"))
    hi = len(pts) if end_pts is None else int(np.searchsorted(pts, end_pts, "left"))
    if hi <= lo:
        return []
    keys = set(int(k) for k in keyframe_pts)
    cuts = [lo] + [i for i in range(lo + 1, hi) if int(pts[i]) in keys]
    segments: list[Segment] = []
    begin = cuts[0]
    for c in cuts[1:] + [hi]:
        if c - begin >= min_frames or c == hi:
            segments.append(Segment(len(segments), int(pts[begin]), int(pts[c]) if c < len(pts) else None,
                                    begin, c - begin))
            begin = c
    return segments

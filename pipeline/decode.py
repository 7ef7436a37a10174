"""Decode one segment of a video into frame batches (runs in a CPU worker)."""
from __future__ import annotations

import sys
import time
from typing import Iterator

import av
import numpy as np

from .frames import to_rgb
from .probe import VideoInfo
from .segments import Segment


def decode_segment(info: VideoInfo, seg: Segment, batch_size: int) -> Iterator[dict]:
    """Yield batches {frames, index, pts, segment, warnings, timings} in display order.

    Seeks to the segment's keyframe and decodes until every expected frame of the segment has
    appeared; frames the decoder cannot produce are reported, not invented."""
    wanted = info.pts[seg.first_frame: seg.first_frame + seg.frame_count]
    position = {int(p): seg.first_frame + i for i, p in enumerate(wanted)}
    seen: set[int] = set()
    warnings: list[str] = []
    frames, index, pts = [], [], []
    t0 = time.perf_counter()

    def flush():
        nonlocal frames, index, pts, warnings
        batch = {"frames": np.stack(frames), "index": np.asarray(index, dtype=np.int64),
                 "pts": np.asarray(pts, dtype=np.int64), "segment": seg.index,
                 "warnings": warnings, "timings": {"decode": time.perf_counter() - t0}}
        frames, index, pts, warnings = [], [], [], []
        return batch

    def warn(msg: str):
        line = f"{info.path}: {msg}"
        print(line, file=sys.stderr, flush=True)
        warnings.append(line)

    with av.open(info.path) as container:
        vs = container.streams[info.stream_index]
        vs.thread_type = "AUTO"
        container.seek(seg.start_pts, stream=vs, backward=True, any_frame=False)
        for packet in container.demux(vs):
            try:
                decoded = packet.decode()
            except av.error.FFmpegError as e:
                t = info.seconds(packet.pts) if packet.pts is not None else float("nan")
                warn(f"corrupt video data at {t:.3f}s skipped ({e.strerror or type(e).__name__})")
                continue
            for frame in decoded:
                p = frame.pts
                if p not in position or p in seen:
                    continue
                seen.add(p)
                if frame.is_corrupt:
                    warn(f"frame {position[p]} at {info.seconds(p):.3f}s is corrupt (decoded with concealment)")
                frames.append(to_rgb(frame, info.bit_depth, info.colorspace, info.color_range))
                index.append(position[p])
                pts.append(p)
                if len(frames) == batch_size:
                    yield flush()
                    t0 = time.perf_counter()  # time paused by back-pressure is not decode time
            if len(seen) == len(position):
                break
    missing = len(position) - len(seen)
    if missing:
        warn(f"{missing} frame(s) of segment {seg.index} could not be decoded and are missing from the output")
    if frames:
        yield flush()
    elif warnings:
        yield {"frames": np.zeros((0, info.height, info.width, 3), np.uint8 if info.bit_depth <= 8 else np.uint16),
               "index": np.zeros(0, np.int64), "pts": np.zeros(0, np.int64), "segment": seg.index,
               "warnings": warnings, "timings": {}}

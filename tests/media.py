"""Helpers for tests that read media back: decoded frames, timestamps, packet bytes, PSNR."""
from __future__ import annotations

from fractions import Fraction

import av
import cv2
import numpy as np

from pipeline.decode import decode_segment
from pipeline.encode import EncodeSettings, SegmentWriter, StreamParams
from pipeline.frames import to_rgb
from pipeline.mux import assemble
from pipeline.probe import probe
from pipeline.segments import plan_segments


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


def upscale_identity(src, tmp_path, min_frames, start=None, end=None, codec="libx264", ext="mp4",
                     report=None, scale=1, **encode):
    """Decode each planned segment, encode it to its own file, join them: the engine's path
    without Ray, with cv2 bicubic as the model when `scale` > 1. `report` (a dict) receives the
    warnings, stand-in frame indices and the writer's notes."""
    info = probe(src)
    warnings, repeated = [], []
    to_pts = (lambda t: None if t is None else int(Fraction(t) / info.time_base))
    segs = plan_segments(info.pts, info.keyframe_pts, min_frames, to_pts(start), to_pts(end))
    params = StreamParams(width=info.width * scale, height=info.height * scale, time_base=info.time_base,
                          rate=info.average_rate, pix_fmt=info.pix_fmt, colorspace=info.colorspace,
                          color_range=info.color_range, color_primaries=info.color_primaries,
                          color_trc=info.color_trc)
    paths = []
    for seg in segs:
        path = str(tmp_path / f"{seg.name}.seg")
        w = SegmentWriter(path, EncodeSettings(codec=codec, **encode), params)
        for batch in decode_segment(info, seg, 5):
            if scale > 1:
                batch["frames"] = np.stack([cv2.resize(f, None, fx=scale, fy=scale, interpolation=cv2.INTER_CUBIC)
                                            for f in batch["frames"]]).reshape(
                    (-1, info.height * scale, info.width * scale, 3))
            w.write(batch["frames"], batch["pts"], batch.get("alpha"))
            warnings += batch["warnings"]
            repeated += batch["index"][batch["repeated"]].tolist()
        notes = w.notes
        w.close()
        paths.append(path)
    out = str(tmp_path / f"out.{ext}")
    t0 = None if start is None else Fraction(int(info.pts[segs[0].first_frame])) * info.time_base
    t1 = None if end is None else Fraction(to_pts(end)) * info.time_base
    assemble(out, paths, info, start=t0, end=t1)
    if report is not None:
        report.update(warnings=warnings, repeated=repeated, notes=notes)
    return out, segs

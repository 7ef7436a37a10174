"""Helpers for tests that read media back: decoded frames, timestamps, packet bytes, PSNR."""
from __future__ import annotations

from fractions import Fraction

import av
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
                     report=None, **encode):
    """Decode each planned segment, encode it to its own file, join them: the engine's path
    without Ray or a model. `report` (a dict) receives the warnings and stand-in frame indices."""
    info = probe(src)
    warnings, repeated = [], []
    to_pts = (lambda t: None if t is None else int(Fraction(t) / info.time_base))
    segs = plan_segments(info.pts, info.keyframe_pts, min_frames, to_pts(start), to_pts(end))
    params = StreamParams(width=info.width, height=info.height, time_base=info.time_base,
                          rate=info.average_rate, pix_fmt=info.pix_fmt, colorspace=info.colorspace,
                          color_range=info.color_range, color_primaries=info.color_primaries,
                          color_trc=info.color_trc)
    paths = []
    for seg in segs:
        path = str(tmp_path / f"{seg.name}.seg")
        w = SegmentWriter(path, EncodeSettings(codec=codec, **encode), params)
        for batch in decode_segment(info, seg, 5):
            w.write(batch["frames"], batch["pts"])
            warnings += batch["warnings"]
            repeated += batch["index"][batch["repeated"]].tolist()
        w.close()
        paths.append(path)
    out = str(tmp_path / f"out.{ext}")
    t0 = None if start is None else Fraction(int(info.pts[segs[0].first_frame])) * info.time_base
    t1 = None if end is None else Fraction(to_pts(end)) * info.time_base
    assemble(out, paths, info, start=t0, end=t1)
    if report is not None:
        report.update(warnings=warnings, repeated=repeated)
    return out, segs

"""Encode one segment's upscaled frames into its own file (runs in a CPU worker).

Segments are written to MP4 files, which keep the stream time base we set, so every frame keeps its
source timestamp until the final mux; codecs MP4 cannot hold (FFV1) go to NUT, which also keeps
any time base exactly."""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from fractions import Fraction

import av
import numpy as np

from .frames import from_rgb

_QUALITY_OPTION = {"libx264": "crf", "libx265": "crf", "libsvtav1": "crf", "libaom-av1": "crf",
                   "libvpx-vp9": "crf", "h264_nvenc": "cq", "hevc_nvenc": "cq", "av1_nvenc": "cq"}
_QUIET = {"libx265": {"x265-params": "log-level=error"}, "libsvtav1": {"svtav1-params": "print-level=1"}}


@dataclass(frozen=True)
class EncodeSettings:
    codec: str = "libx264"
    crf: int | None = 18
    preset: str | None = None
    pix_fmt: str | None = None       # None: the source's pixel format
    options: dict = field(default_factory=dict)

    def codec_options(self) -> dict[str, str]:
        opts = dict(_QUIET.get(self.codec, {}))
        if self.crf is not None and self.codec in _QUALITY_OPTION:
            opts[_QUALITY_OPTION[self.codec]] = str(self.crf)
        if self.preset is not None:
            opts["preset"] = str(self.preset)
        opts.update({k: str(v) for k, v in self.options.items()})
        return opts


@dataclass(frozen=True)
class StreamParams:
    width: int
    height: int
    time_base: Fraction
    rate: Fraction | None
    pix_fmt: str
    colorspace: int
    color_range: int
    color_primaries: int
    color_trc: int


def mov_timescale(time_base: Fraction) -> int:
    """The track timescale the MP4/MOV muxer derives from a stream time base."""
    ts = Fraction(time_base).denominator
    while ts < 10000:
        ts *= 2
    return ts


def container_options(fmt: str, time_base: Fraction) -> dict[str, str]:
    """MP4/MOV write edit lists in the movie timescale (1/1000 s by default): a segment starting
    at 79079/30000 s would come back as 79050/30000. The track's own timescale keeps it exact."""
    if fmt in ("mp4", "mov", "m4v", "ipod", "3gp", "ismv"):
        return {"movie_timescale": str(mov_timescale(time_base))}
    return {}


def check_encoder(settings: EncodeSettings, params: StreamParams) -> str | None:
    """Why this encoder cannot run here (absent, no GPU for NVENC, bad pixel format), or None."""
    try:
        cc = av.CodecContext.create(settings.codec, "w")
    except (av.codec.codec.UnknownCodecError, ValueError):
        return f"encoder {settings.codec} is not available in this FFmpeg build"
    try:
        cc.width, cc.height, cc.pix_fmt = params.width, params.height, params.pix_fmt
        cc.time_base = params.time_base
        if params.rate:
            cc.framerate = params.rate
        cc.options = settings.codec_options()
        cc.open()
    except (av.error.FFmpegError, ValueError) as e:
        return f"encoder {settings.codec} cannot start ({getattr(e, 'strerror', None) or e})"
    return None


class SegmentWriter:
    def __init__(self, path: str, settings: EncodeSettings, params: StreamParams):
        self.path = path
        self.tmp = path + ".tmp"
        self.params = params
        self.frames = 0
        self.seconds = 0.0
        for fmt in ("mp4", "nut"):
            self.container = av.open(self.tmp, "w", format=fmt, options=container_options(fmt, params.time_base))
            try:
                s = self.container.add_stream(settings.codec, rate=params.rate, options=settings.codec_options())
                break
            except ValueError:
                self.container.close()
                if fmt == "nut":
                    raise
        s.width, s.height = params.width, params.height
        s.pix_fmt = params.pix_fmt
        s.time_base = params.time_base
        cc = s.codec_context
        cc.time_base = params.time_base
        cc.color_range, cc.colorspace = params.color_range, params.colorspace
        cc.color_primaries, cc.color_trc = params.color_primaries, params.color_trc
        self.stream = s

    def write(self, frames: np.ndarray, pts: np.ndarray) -> int:
        t0 = time.perf_counter()
        p = self.params
        for rgb, ts in zip(frames, pts):
            frame = from_rgb(rgb, p.pix_fmt, p.colorspace, p.color_range)
            frame.pts = int(ts)
            frame.time_base = p.time_base
            frame.color_range, frame.colorspace = p.color_range, p.colorspace
            frame.color_primaries, frame.color_trc = p.color_primaries, p.color_trc
            self.container.mux(self.stream.encode(frame))
        self.frames += len(frames)
        self.seconds += time.perf_counter() - t0
        return len(frames)

    def close(self) -> dict:
        t0 = time.perf_counter()
        self.container.mux(self.stream.encode(None))
        self.container.close()
        os.replace(self.tmp, self.path)
        self.seconds += time.perf_counter() - t0
        return {"frames": self.frames, "encode_seconds": self.seconds, "path": self.path}

    def abort(self):
        try:
            self.container.close()
        except Exception:
            pass
        if os.path.exists(self.tmp):
            os.remove(self.tmp)

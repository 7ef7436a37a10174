"""Encode one segment's upscaled frames into its own file (runs in a CPU worker).

Segments are written to MP4 files, which keep the stream time base we set, so every frame keeps its
source timestamp until the final mux; codecs MP4 cannot hold (FFV1) go to NUT, which also keeps
any time base exactly."""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field, replace
from fractions import Fraction

import av
import cv2
import numpy as np

from .frames import from_rgb, has_alpha

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


# Largest frame each encoder opens with (width, height); beyond it libx264 only says "Generic error"
SIZE_LIMITS = {"libx264": (16384, 16384), "libx264rgb": (16384, 16384), "libx265": (8192, 8192),
               "libsvtav1": (16384, 8704), "h264_nvenc": (4096, 4096), "hevc_nvenc": (8192, 8192),
               "av1_nvenc": (8192, 8192), "prores_ks": (8192, 8192), "mpeg4": (8192, 8192)}
_NOT_FRAME_FORMATS = ("cuda", "vaapi", "qsv", "videotoolbox", "d3d11", "d3d12", "dxva2", "vulkan", "drm",
                      "mediacodec", "opencl", "vdpau", "mmal", "bayer", "xyz", "x2rgb", "x2bgr", "ohcodec")


def check_size(codec: str, width: int, height: int) -> str | None:
    """Why `codec` cannot take width x height frames, or None: callable before any work starts."""
    limit = SIZE_LIMITS.get(codec)
    if limit and (width > limit[0] or height > limit[1]):
        return (f"encoder {codec} takes frames up to {limit[0]}x{limit[1]}; the output would be "
                f"{width}x{height} (use a smaller --scale, or --encoder ffv1 / libvpx-vp9)")
    return None


def _props(name: str) -> dict:
    f = av.VideoFormat(name)
    comps = f.components
    rgb = f.is_rgb or f.has_palette
    grey = len(comps) - (1 if any(c.is_alpha for c in comps) else 0) == 1 and not f.has_palette
    wdiv = 1 if rgb or grey else 1024 // max(1, f.chroma_width(1024))
    hdiv = 1 if rgb or grey else 1024 // max(1, f.chroma_height(1024))
    return {"bits": 8 if f.has_palette else max(c.bits for c in comps), "rgb": rgb, "grey": grey,
            "alpha": any(c.is_alpha for c in comps) or name == "pal8", "wdiv": wdiv, "hdiv": hdiv}


def encoder_formats(codec: str) -> list[str]:
    try:
        formats = av.codec.Codec(codec, "w").video_formats or []
    except (av.codec.codec.UnknownCodecError, ValueError):
        return []
    return [f.name for f in formats if not any(k in f.name for k in _NOT_FRAME_FORMATS)]


def choose_pix_fmt(codec: str, source: str, width: int, height: int) -> str:
    """The encodable format nearest to `source`: the source's own when the encoder takes it, else
    the one that loses least (alpha, bit depth, chroma resolution), 4:4:4 when the frame size is
    odd (4:2:0 needs even sizes), YUV 4:4:4 for RGB sources the encoder cannot take as RGB."""
    candidates = encoder_formats(codec)
    if not candidates:
        return source
    s = _props(source)

    def cost(name: str) -> float:
        c = _props(name)
        k = 0.0
        if (width % c["wdiv"]) or (height % c["hdiv"]):
            k += 1000
        if s["alpha"] and not c["alpha"]:
            k += 100
        if c["alpha"] and not s["alpha"]:
            k += 5
        if c["grey"] and not s["grey"]:
            k += 500
        if c["bits"] < s["bits"]:
            k += 40 * (s["bits"] - c["bits"])
        else:
            k += 2 * (c["bits"] - s["bits"])
        lost = (c["wdiv"] * c["hdiv"]) / (s["wdiv"] * s["hdiv"])
        k += 30 * np.log2(lost) if lost > 1 else 3 * np.log2(1 / lost)
        if c["rgb"] != s["rgb"]:
            k += 10
        if name.startswith("yuvj") != source.startswith("yuvj"):
            k += 1
        return k + (0 if name == source else 0.5)

    return min(candidates, key=lambda n: (cost(n), candidates.index(n)))


def output_params(settings: EncodeSettings, params: StreamParams) -> tuple[StreamParams, list[str]]:
    """The stream the encoder really gets, and one line per thing that differs from the source's
    (pixel format, alpha, matrix tags). An explicit settings.pix_fmt is taken as it is."""
    if settings.pix_fmt:
        return params, []
    chosen = choose_pix_fmt(settings.codec, params.pix_fmt, params.width, params.height)
    if chosen == params.pix_fmt:
        return params, []
    s, c = _props(params.pix_fmt), _props(chosen)
    why = []
    if s["alpha"] and not c["alpha"]:
        why.append(f"alpha dropped: {settings.codec} cannot store it")
    elif s["alpha"]:
        why.append("alpha kept")
    if c["wdiv"] * c["hdiv"] < s["wdiv"] * s["hdiv"] and (params.width % 2 or params.height % 2):
        why.append(f"odd size {params.width}x{params.height} cannot be chroma-subsampled")
    if s["rgb"] and not c["rgb"]:
        why.append("RGB stored as YUV with the BT.709 matrix")
    if c["bits"] < s["bits"]:
        why.append(f"{s['bits']}-bit source kept at {c['bits']} bits")
    note = (f"pixel format: {settings.codec} cannot encode {params.pix_fmt} at {params.width}x{params.height}; "
            f"writing {chosen}" + (f" ({'; '.join(why)})" if why else ""))
    changes = {"pix_fmt": chosen}
    if s["rgb"] and not c["rgb"]:
        changes.update(colorspace=1, color_range=1,
                       color_primaries=params.color_primaries if params.color_primaries not in (0, 2) else 1,
                       color_trc=params.color_trc if params.color_trc not in (0, 2) else 13)
    elif c["rgb"] and not s["rgb"]:
        changes.update(colorspace=0, color_range=2)
    return replace(params, **changes), [note]


def check_encoder(settings: EncodeSettings, params: StreamParams) -> str | None:
    """Why this encoder cannot run here (absent, no GPU for NVENC, frame too big, pixel format or
    size it cannot take), or None. Sources in formats the encoder lacks get the nearest one
    (output_params), so only an explicit --pix-fmt can be refused for its format."""
    try:
        cc = av.CodecContext.create(settings.codec, "w")
    except (av.codec.codec.UnknownCodecError, ValueError):
        return f"encoder {settings.codec} is not available in this FFmpeg build"
    problem = check_size(settings.codec, params.width, params.height)
    if problem:
        return problem
    params, _ = output_params(settings, params)
    try:
        cc.width, cc.height, cc.pix_fmt = params.width, params.height, params.pix_fmt
        cc.time_base = params.time_base
        if params.rate:
            cc.framerate = params.rate
        cc.options = settings.codec_options()
        cc.open()
    except (av.error.FFmpegError, ValueError) as e:
        reason = getattr(e, "strerror", None) or e
        try:
            p = _props(params.pix_fmt)
        except ValueError:
            return f"unknown pixel format {params.pix_fmt}"
        if (params.width % p["wdiv"]) or (params.height % p["hdiv"]):
            return (f"encoder {settings.codec} cannot encode {params.width}x{params.height} as {params.pix_fmt}: "
                    f"its chroma needs even sizes (use --pix-fmt yuv444p, or a size that divides)")
        if settings.pix_fmt and settings.pix_fmt not in encoder_formats(settings.codec):
            return (f"encoder {settings.codec} cannot take --pix-fmt {settings.pix_fmt} "
                    f"(it takes: {', '.join(encoder_formats(settings.codec))})")
        return f"encoder {settings.codec} cannot start at {params.width}x{params.height} {params.pix_fmt} ({reason})"
    return None


class SegmentWriter:
    def __init__(self, path: str, settings: EncodeSettings, params: StreamParams):
        self.path = path
        self.tmp = path + ".tmp"
        params, self.notes = output_params(settings, params)
        self.params = params
        self.keeps_alpha = has_alpha(params.pix_fmt)
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

    def write(self, frames: np.ndarray, pts: np.ndarray, alpha: np.ndarray | None = None) -> int:
        """`alpha` (N, h, w): the source's alpha column, at source size; it is resized to the
        frame size here and kept when the output format has an alpha plane."""
        t0 = time.perf_counter()
        p = self.params
        keep = alpha is not None and self.keeps_alpha
        for n, (rgb, ts) in enumerate(zip(frames, pts)):
            a = None
            if keep:
                a = alpha[n]
                if a.shape != rgb.shape[:2]:
                    peak = 255 if a.dtype == np.uint8 else 65535
                    a = np.clip(cv2.resize(a.astype(np.float32), (rgb.shape[1], rgb.shape[0]),
                                           interpolation=cv2.INTER_CUBIC), 0, peak).round().astype(a.dtype)
            frame = from_rgb(rgb, p.pix_fmt, p.colorspace, p.color_range, a)
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
        return {"frames": self.frames, "encode_seconds": self.seconds, "path": self.path,
                "pix_fmt": self.params.pix_fmt, "notes": list(self.notes)}

    def abort(self):
        try:
            self.container.close()
        except Exception:
            pass
        if os.path.exists(self.tmp):
            os.remove(self.tmp)

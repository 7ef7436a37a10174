"""Read what a video holds without decoding it all: streams, frame timestamps, keyframes.

The frame list comes from demuxing packets only (cheap), so segments can be planned exactly and
every decoded frame can be checked against it."""
from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from fractions import Fraction

import av
import numpy as np

from .errors import InputError, stat_input
from .frames import has_alpha

# demuxers of single pictures: one frame from them is a photo, not a clip
_IMAGE_FORMATS = {"image2", "gif", "webp", "apng", "ico", "tiff", "bmp", "jpegxl", "avif"}


@dataclass
class VideoInfo:
    path: str
    format_name: str
    stream_index: int
    codec: str
    width: int
    height: int
    pix_fmt: str
    bit_depth: int
    time_base: Fraction
    average_rate: Fraction | None
    pts: np.ndarray                 # int64, sorted presentation timestamps of every frame
    keyframe_pts: np.ndarray        # int64, sorted
    rotation: int = 0
    color_range: int = 0
    colorspace: int = 2
    color_primaries: int = 2
    color_trc: int = 2
    sample_aspect_ratio: Fraction | None = None
    other_streams: list[dict] = field(default_factory=list)   # audio / subtitle / data
    metadata: dict = field(default_factory=dict)
    end_pts: int | None = None      # when the last frame stops showing (its pts + duration)
    has_alpha: bool = False         # decode_segment then adds an `alpha` column
    promised_frames: int | None = None   # frames the container's index announces (MP4/MOV), if any
    incomplete_packets: int = 0     # packets cut short by the end of the file (left out of pts)
    read_error: str | None = None   # why reading stopped early, if it did
    notes: list[str] = field(default_factory=list)   # what the job leaves as it is: one line each

    @property
    def frame_count(self) -> int:
        return len(self.pts)

    @property
    def truncated(self) -> bool:
        """The file ends before the video does: fewer frames than the index promises, a packet
        cut short, or a read error before the end."""
        return bool((self.promised_frames and self.promised_frames > self.frame_count)
                    or self.incomplete_packets or self.read_error)

    def truncation_warning(self, decoded: int | None = None) -> str | None:
        """One line for the summary/manifest when truncated; `decoded`: frames really decoded
        (written frames minus stand-ins), when known."""
        if not self.truncated:
            return None
        promised = (f"the index promises {self.promised_frames} frames"
                    if self.promised_frames and self.promised_frames > self.frame_count
                    else "the video stream is cut short")
        got = f"{self.frame_count} are in the file"
        if decoded is not None:
            got += f", {decoded} decoded"
        why = f" (reading stopped: {self.read_error})" if self.read_error else ""
        return f"{self.path}: truncated: {promised}, {got}{why}; the output is incomplete"

    def seconds(self, pts) -> float:
        return float(pts * self.time_base)


# codecs that keep every pixel; anything else is lossy
_LOSSLESS_CODECS = {"ffv1", "huffyuv", "ffvhuff", "utvideo", "rawvideo", "png", "apng", "qtrle", "magicyuv",
                    "zlib", "tiff", "bmp", "r210", "v210", "v410", "ayuv", "y41p", "yuv4"}


def lossy(info: VideoInfo) -> bool:
    """Frames whose colour channels the codec smoothed: a lossy codec, or chroma stored at lower
    resolution than the luma (yuv420p, yuv422p, ...; an x265 lossless file in yuv420p counts)."""
    try:
        f = av.VideoFormat(info.pix_fmt)
        sub = f.chroma_width(64) < 64 or f.chroma_height(64) < 64
    except ValueError:
        sub = False
    return info.codec not in _LOSSLESS_CODECS or sub


def _fail(path, reason: str):
    raise InputError(f"{path}: {reason}")


def probe(path: str | os.PathLike) -> VideoInfo:
    path = str(path)
    st = stat_input(path)
    if stat.S_ISDIR(st.st_mode):
        _fail(path, "is a directory, not a video file")
    if st.st_size == 0:
        _fail(path, "empty file (0 bytes)")
    try:
        container = av.open(path)
    except av.error.FFmpegError as e:
        _fail(path, f"not a readable media file ({e.strerror or type(e).__name__})")
    with container:
        videos = [s for s in container.streams.video if not (s.disposition & av.stream.Disposition.attached_pic)]
        if not videos:
            kinds = sorted({s.type for s in container.streams}) or ["no streams"]
            _fail(path, f"no video stream (has: {', '.join(kinds)})")
        vs = videos[0]
        if vs.codec_context is None or vs.codec_context.codec is None:
            _fail(path, "unsupported video codec")
        pts, keys = [], []
        end = None
        short = 0
        read_error = None
        try:
            for packet in container.demux(vs):
                if packet.size == 0 or packet.pts is None:
                    continue
                if packet.is_corrupt:   # cut short by the end of the file: not a frame we have
                    short += 1
                    continue
                pts.append(packet.pts)
                if packet.duration:
                    end = max(end or 0, packet.pts + packet.duration)
                if packet.is_keyframe:
                    keys.append(packet.pts)
        except av.error.FFmpegError as e:
            if not pts:
                _fail(path, f"corrupt or truncated video ({e.strerror or type(e).__name__})")
            read_error = e.strerror or type(e).__name__
        if not pts:
            _fail(path, "no video frames (truncated or empty stream)")
        if len(pts) == 1 and (container.format.name in _IMAGE_FORMATS or container.format.name.endswith("_pipe")):
            _fail(path, f"a still image ({vs.codec_context.name}), not a video; upscale images with "
                        f"jobs/upscale_images.py")
        first = _first_frame(container, vs, path)
        bit_depth = max((c.bits for c in first.format.components), default=8)
        info = VideoInfo(
            path=path, format_name=container.format.name, stream_index=vs.index,
            codec=vs.codec_context.name, width=first.width, height=first.height,
            pix_fmt=first.format.name, bit_depth=bit_depth, time_base=vs.time_base,
            average_rate=vs.average_rate,
            pts=np.unique(np.asarray(pts, dtype=np.int64)),
            keyframe_pts=np.unique(np.asarray(keys or pts[:1], dtype=np.int64)),
            rotation=int(round(first.rotation or 0)),
            color_range=int(first.color_range), colorspace=int(first.colorspace),
            color_primaries=int(first.color_primaries), color_trc=int(first.color_trc),
            sample_aspect_ratio=vs.sample_aspect_ratio,
            other_streams=[{"index": s.index, "type": s.type, "codec": s.codec_context.name if s.codec_context else None}
                           for s in container.streams if s.type in ("audio", "subtitle")],
            metadata=dict(container.metadata),
            end_pts=end,
            has_alpha=has_alpha(first.format),
            promised_frames=int(vs.frames) if vs.frames and vs.frames > 0 else None,
            incomplete_packets=short, read_error=read_error,
            notes=_notes(path, videos, vs, first),
        )
    return info


def _notes(path: str, videos: list, vs, first) -> list[str]:
    """A second video stream is left out of the output, and interlaced frames are upscaled as
    they are (both fields woven into one picture): say so rather than do it silently."""
    notes = []
    if len(videos) > 1:
        others = ", ".join(f"#{s.index}" for s in videos if s is not vs)
        notes.append(f"{path}: {len(videos)} video streams: stream #{vs.index} is upscaled, {others} left out "
                     f"of the output")
    # field_order: 0 unknown, 1 progressive, 2-5 the interlaced orders (FFmpeg's AVFieldOrder)
    if first.interlaced_frame or vs.codec_context.field_order > 1:
        notes.append(f"{path}: interlaced video: frames are upscaled as they are (both fields woven), not "
                     f"deinterlaced; deinterlace first (e.g. ffmpeg -vf bwdif) for a clean result")
    return notes


def _first_frame(container, vs, path):
    """The first frame the decoder can give: damaged packets at the start are skipped (the
    decoder reports them per segment later), so only a stream with nothing decodable is refused."""
    container.seek(0, stream=vs) if vs.start_time is None else container.seek(vs.start_time, stream=vs)
    error = None
    try:
        for packet in container.demux(vs):
            try:
                for frame in packet.decode():
                    return frame
            except av.error.FFmpegError as e:
                error = error or e
    except av.error.FFmpegError as e:
        error = error or e
    if error is not None:
        _fail(path, f"video stream cannot be decoded ({error.strerror or type(error).__name__})")
    _fail(path, "video stream has no decodable frame (corrupt or truncated)")

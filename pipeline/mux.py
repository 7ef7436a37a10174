"""Join the encoded segments into the output and copy the source's other streams untouched.

Video packets are remuxed (no re-encode), audio and subtitle packets are copied bit-exactly, and
everything is interleaved by time so memory stays flat however long the video is."""
from __future__ import annotations

import heapq
from fractions import Fraction
from typing import Iterator

import av
import numpy as np

from .encode import container_options
from .errors import InputError
from .probe import VideoInfo

_SKIP_METADATA = {"encoder", "major_brand", "minor_version", "compatible_brands", "creation_time"}


def _packets(container, stream, out_stream, shift: Fraction, start: Fraction | None,
             end: Fraction | None, key: int) -> Iterator[tuple]:
    """(time, key, seq, packet) for one input stream, retimed by -shift (seconds)."""
    tb = stream.time_base
    off = int(round(shift / tb))
    seq = 0
    for packet in container.demux(stream):
        if packet.size == 0 or (packet.pts is None and packet.dts is None) or packet.is_corrupt:
            continue   # is_corrupt: cut short by the end of a truncated source
        t = (packet.pts if packet.pts is not None else packet.dts) * tb
        if (start is not None and t < start) or (end is not None and t >= end):
            continue
        if packet.pts is not None:
            packet.pts -= off
        if packet.dts is not None:
            packet.dts -= off
        packet.stream = out_stream
        seq += 1
        yield (float(((packet.dts if packet.dts is not None else packet.pts)) * tb), key, seq, packet)


def assemble(out_path: str, segment_paths: list[str], info: VideoInfo,
             start: Fraction | None = None, end: Fraction | None = None,
             copy_streams: bool = True) -> int:
    """Write `out_path`; return the number of video packets written."""
    shift = Fraction(0) if start is None else start
    sources = [av.open(p) for p in segment_paths]
    demuxers: list = []
    src = av.open(info.path) if copy_streams else None
    try:
        try:
            out = av.open(out_path, "w", options=container_options(_guess_format(out_path), info.time_base))
        except (av.error.FFmpegError, ValueError) as e:
            raise InputError(f"{out_path}: cannot write output ({getattr(e, 'strerror', None) or e})") from None
        with out:
            for k, v in info.metadata.items():
                if k.lower() not in _SKIP_METADATA:
                    out.metadata[k] = v
            first = sources[0].streams.video[0]
            try:
                ovs = out.add_stream_from_template(first)
            except av.codec.codec.UnknownCodecError:
                # the template names its decoder (AV1: libdav1d), which has no encoder side
                ovs = out.add_mux_stream(_canonical_name(first.codec_context.codec),
                                         width=first.width, height=first.height)
            ovs.time_base = info.time_base
            if info.rotation:
                ovs.set_display_rotation(info.rotation)
            copies = []
            if src is not None:
                for s in src.streams:
                    if s.type not in ("audio", "subtitle"):
                        continue
                    try:
                        os_ = out.add_stream_from_template(s)
                    except ValueError as e:
                        raise InputError(f"{out_path}: cannot carry {s.type} stream {s.index} "
                                         f"({s.codec_context.name}) in this container: {e}") from None
                    os_.metadata.update(s.metadata)
                    os_.disposition = s.disposition
                    copies.append((s, os_))
            iters = [_video_packets(sources, ovs, shift, info)]
            for key, (s, os_) in enumerate(copies, 1):
                # each stream gets its own demuxer so their packets can be merged by time
                c = av.open(info.path)
                demuxers.append(c)
                iters.append(_packets(c, c.streams[s.index], os_, shift, start, end, key))
            n = 0
            for _, key, _, packet in heapq.merge(*iters, key=lambda t: (t[0], t[1], t[2])):
                out.mux_one(packet)
                n += key == 0
        return n
    finally:
        for c in sources + demuxers:
            c.close()
        if src is not None:
            src.close()


def _guess_format(path: str) -> str:
    try:
        return av.format.ContainerFormat(path.rsplit(".", 1)[-1].lower(), "w").name
    except (ValueError, av.error.FFmpegError, IndexError):
        return ""


def _canonical_name(codec) -> str:
    """The codec's generic name (libdav1d -> av1), for a stream that is only muxed."""
    for name in ("av1", "h264", "hevc", "vp9", "ffv1", "prores", "mpeg4"):
        try:
            if av.codec.Codec(name, "r").id == codec.id:
                return name
        except av.codec.codec.UnknownCodecError:
            continue
    return codec.name


def _segment_pts(path: str, info: VideoInfo) -> list[int]:
    """Presentation times of a segment's packets in decode order, in the source's time base,
    each snapped to the source frame it came from (a container may round by a tick or so)."""
    with av.open(path) as c:
        return _snapped(c, info)


def _snapped(c, info: VideoInfo) -> list[int]:
    s = c.streams.video[0]
    scale = Fraction(s.time_base) / Fraction(info.time_base)
    src = info.pts
    out = []
    for packet in c.demux(s):
        if packet.size == 0 or packet.pts is None:
            continue
        t = packet.pts * scale
        p = int(round(t))
        i = int(np.searchsorted(src, p))
        best = min((j for j in (i - 1, i) if 0 <= j < len(src)), key=lambda j: abs(int(src[j]) - t), default=None)
        if best is not None:
            gap = min((int(src[k + 1]) - int(src[k]) for k in (best - 1, best) if 0 <= k < len(src) - 1), default=1)
            if abs(int(src[best]) - t) * 2 < gap:
                p = int(src[best])
        out.append(p)
    return out


def _video_packets(sources, out_stream, shift: Fraction, info: VideoInfo) -> Iterator[tuple]:
    """Every packet keeps its source frame's pts; dts are rebuilt for the joined stream.

    Each segment's encoder starts its own decode clock (B-frames push the first dts below the
    first pts), so joined dts would overlap. The k-th packet gets dts = (k-th presentation time) - D,
    with D the smallest delay that keeps every dts at or before its pts: increasing, and the gaps
    between dts are the real frame durations, so the container's average rate is the source's."""
    tb = Fraction(info.time_base)
    off = int(round(shift / tb))
    per_seg = [_segment_pts(c.name, info) for c in sources]
    order = np.asarray([p for pts in per_seg for p in pts], dtype=np.int64)
    shown = np.sort(order)
    delay = max(0, int((shown - order).max())) if len(order) else 0
    step = int(shown[1] - shown[0]) if len(shown) > 1 else 1
    src = info.pts

    def duration(p: int) -> int:
        i = int(np.searchsorted(src, p))
        if i + 1 < len(src) and int(src[i]) == p:
            return int(src[i + 1]) - p
        end = getattr(info, "end_pts", None)
        if end is not None and end > p:
            return int(end) - p
        j = int(np.searchsorted(shown, p))
        return int(shown[j] - shown[j - 1]) if 0 < j < len(shown) and shown[j] == p else step

    k = 0
    seq = 0
    for c, pts in zip(sources, per_seg):
        s = c.streams.video[0]
        n = 0
        for packet in c.demux(s):
            if packet.size == 0 or packet.pts is None:
                continue
            p = pts[n]
            n += 1
            dts = int(shown[k]) - delay
            k += 1
            packet.time_base = tb
            packet.pts, packet.dts = p - off, dts - off
            packet.duration = duration(p)
            packet.stream = out_stream
            seq += 1
            yield (float(packet.dts * tb), 0, seq, packet)

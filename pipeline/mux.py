"""Join the encoded segments into the output and copy the source's other streams untouched.

Video packets are remuxed (no re-encode), audio and subtitle packets are copied bit-exactly, and
everything is interleaved by time so memory stays flat however long the video is."""
from __future__ import annotations

import heapq
from fractions import Fraction
from typing import Iterator

import av

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
        if packet.size == 0 or (packet.pts is None and packet.dts is None):
            continue
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
            out = av.open(out_path, "w")
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
            iters = [_video_packets(sources, ovs, shift)]
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


def _canonical_name(codec) -> str:
    """The codec's generic name (libdav1d -> av1), for a stream that is only muxed."""
    for name in ("av1", "h264", "hevc", "vp9", "ffv1", "prores", "mpeg4"):
        try:
            if av.codec.Codec(name, "r").id == codec.id:
                return name
        except av.codec.codec.UnknownCodecError:
            continue
    return codec.name


def _video_packets(sources, out_stream, shift: Fraction) -> Iterator[tuple]:
    last_dts = None
    seq = 0
    for c in sources:
        s = c.streams.video[0]
        tb = s.time_base
        off = int(round(shift / tb))
        for packet in c.demux(s):
            if packet.size == 0:
                continue
            packet.pts -= off
            packet.dts = packet.pts if packet.dts is None else packet.dts - off  # NUT leaves dts of intra frames unset
            # each segment's encoder starts its own decode clock; keep dts strictly increasing
            # across the joins without touching presentation times
            if last_dts is not None and packet.dts <= last_dts:
                packet.dts = min(last_dts + 1, packet.pts)
            last_dts = packet.dts
            packet.stream = out_stream
            seq += 1
            yield (float(packet.dts * tb), 0, seq, packet)

"""Decode one segment of a video into frame batches (runs in a CPU worker).

Damaged input never fails a segment. Frames come out in presentation order whatever order a
confused decoder emits them in, and every source timestamp gets a frame: one the decoder cannot
produce is shown as the previous good frame (the next good one at the start of a segment; black
when nothing in the segment decodes), so the output keeps the source's timing, frame count and
audio sync. Each stand-in is reported with its frame numbers and times."""
from __future__ import annotations

import sys
import time
from typing import Iterator

import av
import numpy as np

from .frames import to_alpha, to_rgb
from .probe import VideoInfo
from .segments import Segment

# frames decoded past a missing one before it is given up as lost (bounds memory: at most this
# many frames wait for a late one)
REORDER_WINDOW = 8
_MAX_ERROR_LINES = 3


def _ranges(indices: list[int]) -> list[tuple[int, int]]:
    out: list[list[int]] = []
    for i in sorted(indices):
        if out and i == out[-1][1] + 1:
            out[-1][1] = i
        else:
            out.append([i, i])
    return [(a, b) for a, b in out]


def decode_segment(info: VideoInfo, seg: Segment, batch_size: int) -> Iterator[dict]:
    """Yield batches {frames, index, pts, repeated, concealed, [alpha], segment, warnings, timings}.

    `repeated` (bool, N): the row stands in for a frame that could not be decoded; `concealed`
    (bool, N): the decoder produced the frame but marked it corrupt. Both are columns in the sense
    of docs/batches.md, as is `alpha` (N, H, W), present when the source has an alpha channel;
    `segment`, `warnings` and `timings` travel beside the columns."""
    wanted = [int(p) for p in info.pts[seg.first_frame: seg.first_frame + seg.frame_count]]
    n = len(wanted)
    slot = {p: i for i, p in enumerate(wanted)}
    pending: dict[int, tuple] = {}            # slot -> (rgb, alpha) decoded, not yet passed on
    done = [False] * n
    state = {"next": 0, "last": None, "late": 0, "errors": 0}
    lost: list[int] = []
    warnings: list[str] = []
    frames, index, pts, repeated, concealed, alphas = [], [], [], [], [], []
    keep_alpha = bool(getattr(info, "has_alpha", False))
    corrupt: set[int] = set()
    t0 = time.perf_counter()
    dtype = np.uint8 if info.bit_depth <= 8 else np.uint16

    def warn(msg: str):
        line = f"{info.path}: {msg}"
        print(line, file=sys.stderr, flush=True)
        warnings.append(line)

    def flush():
        nonlocal frames, index, pts, warnings, repeated, concealed, alphas
        batch = {"frames": np.stack(frames), "index": np.asarray(index, dtype=np.int64),
                 "pts": np.asarray(pts, dtype=np.int64), "repeated": np.asarray(repeated, dtype=bool),
                 "concealed": np.asarray(concealed, dtype=bool), "segment": seg.index,
                 "warnings": warnings, "timings": {"decode": time.perf_counter() - t0}}
        if keep_alpha:
            batch["alpha"] = np.stack(alphas)
        frames, index, pts, warnings, repeated, concealed, alphas = [], [], [], [], [], [], []
        return batch

    def emit(i: int, img: tuple, stand_in: bool):
        frames.append(img[0])
        if keep_alpha:
            alphas.append(img[1])
        index.append(seg.first_frame + i)
        pts.append(wanted[i])
        done[i] = True
        repeated.append(stand_in)
        concealed.append(i in corrupt and not stand_in)
        if stand_in:
            lost.append(i)
        else:
            state["last"] = img

    def advance(final: bool):
        """Pass on every frame whose turn has come; give up on missing ones once enough later
        frames have arrived (or the stream has ended)."""
        out = []
        while state["next"] < n:
            i = state["next"]
            if i in pending:
                emit(i, pending.pop(i), False)
            elif final or len(pending) >= REORDER_WINDOW:
                stand_in = state["last"]
                if stand_in is None and pending:
                    stand_in = pending[min(pending)]
                if stand_in is None:
                    if not final:
                        break
                    stand_in = (np.zeros((info.height, info.width, 3), dtype),
                                np.zeros((info.height, info.width), dtype))
                emit(i, stand_in, True)
            else:
                break
            state["next"] += 1
            if len(frames) == batch_size:
                out.append(flush())
        return out

    with av.open(info.path) as container:
        vs = container.streams[info.stream_index]
        vs.thread_type = "AUTO"
        container.seek(seg.start_pts, stream=vs, backward=True, any_frame=False)
        cc = vs.codec_context

        def take(decoded):
            for frame in decoded:
                i = slot.get(frame.pts)
                if i is None or i in pending:
                    continue
                if done[i]:          # arrived after a stand-in took its place
                    state["late"] += 1
                    continue
                if frame.is_corrupt:
                    corrupt.add(i)
                    if len(corrupt) <= _MAX_ERROR_LINES:
                        warn(f"frame {seg.first_frame + i} at {info.seconds(frame.pts):.3f}s is corrupt "
                             f"(decoded with concealment)")
                pending[i] = (to_rgb(frame, info.bit_depth, info.colorspace, info.color_range),
                              to_alpha(frame, info.bit_depth) if keep_alpha else None)

        def corrupt_packet(e, t):
            state["errors"] += 1
            if state["errors"] <= _MAX_ERROR_LINES:
                where = f"at {info.seconds(t):.3f}s" if t is not None else \
                    f"after {info.seconds(wanted[min(state['next'], n - 1)]):.3f}s"
                warn(f"corrupt video data {where} skipped ({e.strerror or type(e).__name__})")

        def drain():
            """Frames still inside the decoder: an error while flushing leaves the rest there."""
            for _ in range(64):
                try:
                    decoded = cc.decode(None)
                except EOFError:
                    return
                except av.error.FFmpegError as e:
                    corrupt_packet(e, None)
                    continue
                if not decoded:
                    return
                take(decoded)

        packets = container.demux(vs)
        while state["next"] < n:
            try:
                packet = next(packets)
            except StopIteration:
                break
            except av.error.FFmpegError as e:
                warn(f"unreadable video data after {info.seconds(wanted[state['next']]):.3f}s; "
                     f"the rest of segment {seg.index} is not decoded ({e.strerror or type(e).__name__})")
                break
            if packet.is_corrupt and packet.size:
                continue             # cut short by the end of the file (probe left it out): feeding
                                     # it makes frame-threaded decoders drop the frames before it
            try:
                take(packet.decode())
            except av.error.FFmpegError as e:
                corrupt_packet(e, packet.pts if packet.pts is not None else packet.dts)
                if packet.size == 0:
                    drain()
            for batch in advance(False):
                yield batch
                t0 = time.perf_counter()  # time paused by back-pressure is not decode time
        if state["next"] < n:
            drain()
        for batch in advance(True):
            yield batch
            t0 = time.perf_counter()
    if state["errors"] > _MAX_ERROR_LINES:
        warn(f"{state['errors'] - _MAX_ERROR_LINES} more corrupt packet(s) in segment {seg.index} skipped")
    if len(corrupt) > _MAX_ERROR_LINES:
        warn(f"{len(corrupt) - _MAX_ERROR_LINES} more frame(s) of segment {seg.index} decoded with concealment")
    if lost:
        where = ", ".join(f"{seg.first_frame + a} ({info.seconds(wanted[a]):.3f}s)" if a == b else
                          f"{seg.first_frame + a}-{seg.first_frame + b} "
                          f"({info.seconds(wanted[a]):.3f}-{info.seconds(wanted[b]):.3f}s)"
                          for a, b in _ranges(lost))
        how = "black" if len(lost) == n else "a copy of the nearest good frame"
        warn(f"{len(lost)} frame(s) of segment {seg.index} could not be decoded, shown as {how} "
             f"to keep the timing: frame(s) {where}")
    if state["late"]:
        warn(f"{state['late']} frame(s) of segment {seg.index} came after their stand-in and were dropped")
    if frames or warnings:
        if not frames:
            empty = {"frames": np.zeros((0, info.height, info.width, 3), dtype),
                     "index": np.zeros(0, np.int64), "pts": np.zeros(0, np.int64),
                     "repeated": np.zeros(0, bool), "concealed": np.zeros(0, bool), "segment": seg.index,
                     "warnings": warnings, "timings": {}}
            if keep_alpha:
                empty["alpha"] = np.zeros((0, info.height, info.width), dtype)
            yield empty
        else:
            yield flush()

"""Segments encoded and joined by the real decode -> encode -> mux path (no Ray, no model): every
output frame keeps its source pts exactly, across segment joins, for CFR, VFR and clips that do
not start at 0; a CFR clip keeps its container's average rate."""
from fractions import Fraction

import av
import numpy as np
import pytest

from pipeline.synth import make_clip
from tests.media import upscale_identity


def source_times(path):
    """(pts, time base) of every packet, straight from the demuxer, sorted: the oracle."""
    with av.open(path) as c:
        s = c.streams.video[0]
        return sorted(p.pts * s.time_base for p in c.demux(s) if p.size)


def output_times(path):
    with av.open(path) as c:
        s = c.streams.video[0]
        return [f.pts * s.time_base for f in c.decode(s)], s.average_rate


def test_three_segments_at_30000_1001_keep_every_pts_and_the_rate(tmp_path):
    src = make_clip(str(tmp_path / "ntsc.mp4"), frames=72, width=64, height=48,
                    rate=Fraction(30000, 1001), gop=24, audio=False)
    out, segs = upscale_identity(src, tmp_path, 12)
    assert len(segs) >= 3
    got, rate = output_times(out)
    want = source_times(src)
    assert len(want) == 72 and got == want   # was: the 2nd and 3rd segments ~1 ms early
    with av.open(src) as c:
        assert rate == c.streams.video[0].average_rate == Fraction(30000, 1001)


def test_variable_frame_rate_keeps_every_pts(tmp_path):
    src = make_clip(str(tmp_path / "vfr.mp4"), frames=60, width=64, height=48, gop=15, vfr=True, audio=False)
    want = source_times(src)
    assert len(set(np.diff([float(t) for t in want]).round(3))) == 3   # really VFR
    out, segs = upscale_identity(src, tmp_path, 15)
    assert len(segs) >= 3
    got, rate = output_times(out)
    assert got == want
    # the average rate is frames over the shown duration (real frame durations, last one included)
    assert abs(float(rate) - 60 / (float(want[-1] - want[0]) + 0.08)) < 0.05


def test_clip_starting_late_keeps_its_offset(tmp_path):
    """A source whose first frame is at 7007/30000 s (as cut clips are): MP4 edit lists in the
    default 1/1000 movie timescale would move it."""
    src = make_clip(str(tmp_path / "late.mp4"), frames=48, width=64, height=48,
                    rate=Fraction(30000, 1001), gop=16, audio=False, first_pts=7)
    want = source_times(src)
    assert want[0] == Fraction(7007, 30000)
    out, _ = upscale_identity(src, tmp_path, 16)
    assert output_times(out)[0] == want


def test_time_range_starts_at_zero_and_keeps_spacing(tmp_path):
    src = make_clip(str(tmp_path / "r.mp4"), frames=60, width=64, height=48,
                    rate=Fraction(30000, 1001), gop=10, audio=False)
    want = source_times(src)
    out, _ = upscale_identity(src, tmp_path, 10, start=0.5, end=1.5)
    got, _ = output_times(out)
    first = next(t for t in want if t >= Fraction(1, 2))
    keys = [t for t in want if t < Fraction(3, 2)]
    # the first segment starts at the keyframe before --start; its frames before it are cut
    expected = [t - first for t in keys if t >= first]
    assert got == expected


@pytest.mark.parametrize("codec, ext", [("ffv1", "mkv"), ("libx264", "mov")])
def test_other_segment_and_output_containers(tmp_path, codec, ext):
    src = make_clip(str(tmp_path / "c.mp4"), frames=36, width=64, height=48,
                    rate=Fraction(24000, 1001), gop=12, audio=False)
    out, _ = upscale_identity(src, tmp_path, 12, codec=codec, ext=ext)
    got, _ = output_times(out)
    want = source_times(src)
    if ext == "mkv":   # Matroska stores milliseconds: each pts within half a millisecond
        assert len(got) == len(want) and max(abs(a - b) for a, b in zip(got, want)) <= Fraction(1, 2000)
    else:
        assert got == want

"""Inputs users bring that are not clean 4:2:0 H.264: damaged bytes inside the stream, truncated
files, RGB / RGBA / palette sources, odd and huge sizes, still images. Run through the real
decode -> encode -> mux path without Ray (tests.media.upscale_identity)."""
import re

import av
import numpy as np
import pytest

from pipeline.probe import probe
from pipeline.synth import make_clip
from tests.media import upscale_identity


LOSSLESS = {"crf": None, "options": {"qp": "0"}}   # x264 lossless: equal inputs decode equal


def decode_all(path):
    with av.open(path) as c:
        s = c.streams.video[0]
        return [(f.pts * s.time_base, f.to_ndarray(format="rgb24")) for f in c.decode(s)]


def video_packets(path):
    with av.open(path) as c:
        return [(p.pts, p.pos, p.size, p.is_keyframe) for p in c.demux(c.streams.video[0]) if p.size]


def damaged_copy(src, dst, ranges, garble=False):
    data = bytearray(open(src, "rb").read())
    rng = np.random.default_rng(5)
    for a, n in ranges:
        data[a:a + n] = rng.integers(0, 256, n, dtype=np.uint8).tobytes() if garble else bytes(n)
    open(dst, "wb").write(bytes(data))
    return dst


@pytest.fixture
def clean(tmp_path):
    return make_clip(str(tmp_path / "clean.mp4"), frames=60, width=160, height=96, gop=12)


def check_damaged_output(clean, damaged, tmp_path):
    report = {}
    out, segs = upscale_identity(damaged, tmp_path, 12, report=report, **LOSSLESS)
    src = decode_all(clean)
    got = decode_all(out)
    # every source frame is there, at its own time, in order
    assert [t for t, _ in got] == [t for t, _ in src]
    stand_ins = sorted(report["repeated"])
    assert stand_ins, report["warnings"]
    # the warning names how many and which frames
    lines = [w for w in report["warnings"] if "could not be decoded" in w]
    assert sum(int(re.search(r"(\d+) frame\(s\)", w).group(1)) for w in lines) == len(stand_ins)
    assert all(damaged in w for w in lines)
    named = set()
    for w in lines:
        for a, b in re.findall(r"(\d+)(?:-(\d+))? \(", w.split("frame(s) ")[-1]):
            named.update(range(int(a), int(b or a) + 1))
    assert named == set(stand_ins)
    # a stand-in repeats its neighbour exactly (lossless segments), not the lost picture
    for i in stand_ins:
        seg = next(s for s in segs if s.first_frame <= i < s.first_frame + s.frame_count)
        before = [k for k in range(seg.first_frame, i) if k not in stand_ins]   # within the segment
        j = before[-1] if before else next(k for k in range(i, len(got)) if k not in stand_ins)
        assert np.array_equal(got[i][1], got[j][1])
    # frames of untouched segments are the clean decode's (within the YUV->RGB->YUV rounding)
    first_bad = min(stand_ins)
    bad_seg = next(s for s in segs if s.first_frame <= first_bad < s.first_frame + s.frame_count)
    for k in range(bad_seg.first_frame):
        assert np.abs(got[k][1].astype(int) - src[k][1]).mean() < 1.5
    return report


def test_zeroed_keyframe_keeps_timing_and_reports_the_lost_frames(clean, tmp_path):
    keys = [p for p in video_packets(clean) if p[3]]
    k = keys[2]                                   # a keyframe in the middle
    damaged = damaged_copy(clean, str(tmp_path / "zeroed.mp4"), [(k[1], k[2])])
    check_damaged_output(clean, damaged, tmp_path)


def test_garbled_bytes_keep_timing_and_report_the_lost_frames(clean, tmp_path):
    pk = video_packets(clean)
    damaged = damaged_copy(clean, str(tmp_path / "garbled.mp4"), [(pk[30][1], 3000), (pk[45][1] + 20, 400)],
                           garble=True)
    check_damaged_output(clean, damaged, tmp_path)


def test_nothing_decodable_in_a_segment_gives_black_frames(clean, tmp_path):
    """Every packet of the first segment zeroed: no good frame to repeat, so black, and said."""
    pk = video_packets(clean)
    first = [(pos, size) for pts, pos, size, key in pk[:12]]
    damaged = damaged_copy(clean, str(tmp_path / "dead.mp4"), first)
    report = {}
    out, _ = upscale_identity(damaged, tmp_path, 12, report=report, **LOSSLESS)
    got = decode_all(out)
    assert [t for t, _ in got] == [t for t, _ in decode_all(clean)]
    assert any("shown as black" in w for w in report["warnings"])
    assert set(range(12)) <= set(report["repeated"])
    assert got[0][1].max() <= 2   # black (limited range round trip)

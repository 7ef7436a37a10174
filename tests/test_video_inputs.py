"""Inputs users bring that are not clean 4:2:0 H.264: damaged bytes inside the stream, truncated
files, RGB / RGBA / palette sources, odd and huge sizes, still images. Run through the real
decode -> encode -> mux path without Ray (tests.media.upscale_identity)."""
import re
from dataclasses import replace
from fractions import Fraction

import av
import numpy as np
import pytest

from pipeline.probe import probe
from pipeline.synth import make_clip, pattern
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


# ---- pixel formats (issue 11 item 7) ----

def alpha_pattern(i, w, h):
    y, x = np.mgrid[0:h, 0:w]
    return np.clip(x * 3 + y * 2 + 5 * i, 0, 255).astype(np.uint8)   # smooth, so resizing keeps it


def write_rgb_clip(path, codec, pix_fmt, frames=6, w=64, h=48, alpha=False, options=None):
    """A lossless RGB(A) clip of the synth pattern; returns the RGB(A) frames written."""
    truth = []
    with av.open(path, "w") as c:
        s = c.add_stream(codec, rate=25, options=options or {})
        s.width, s.height, s.pix_fmt = w, h, pix_fmt
        for i in range(frames):
            img = pattern(i, w, h)
            if alpha:
                img = np.concatenate([img, alpha_pattern(i, w, h)[..., None]], axis=2)
            truth.append(img)
            f = av.VideoFrame.from_ndarray(img, format="rgba" if alpha else "rgb24").reformat(format=pix_fmt)
            f.pts = i
            c.mux(s.encode(f))
        c.mux(s.encode(None))
    return np.stack(truth)


def decoded_rgba(path):
    """Output pixels through swscale (not pipeline.frames), with the stream's own tags."""
    acc = (av.video.reformatter.Interpolation.BICUBIC | av.video.reformatter.Interpolation.ACCURATE_RND
           | av.video.reformatter.Interpolation.FULL_CHR_H_INT | av.video.reformatter.Interpolation.FULL_CHR_H_INP)
    with av.open(path) as c:
        return np.stack([f.reformat(format="rgba", src_colorspace=f.colorspace, src_color_range=f.color_range,
                                    dst_color_range=2, interpolation=acc).to_ndarray()
                         for f in c.decode(video=0)])


LOSSLESS_444 = {"crf": None, "options": {"qp": "0"}}


@pytest.mark.parametrize("codec, pix_fmt, ext, opts", [
    ("png", "rgb24", "mov", None), ("qtrle", "rgb24", "mov", None),
    ("libx264rgb", "bgr0", "mp4", {"qp": "0"}), ("ffv1", "bgr0", "mkv", None)])
def test_rgb_sources_encode_as_yuv444_with_the_right_colours(tmp_path, codec, pix_fmt, ext, opts):
    src = str(tmp_path / f"rgb.{ext}")
    truth = write_rgb_clip(src, codec, pix_fmt, options=opts)
    report = {}
    out, _ = upscale_identity(src, tmp_path, 12, report=report, **LOSSLESS_444)
    assert probe(out).pix_fmt == "yuv444p"
    assert any("writing yuv444p" in n and "RGB stored as YUV with the BT.709 matrix" in n for n in report["notes"])
    got = decoded_rgba(out)[..., :3].astype(float)
    assert got.shape == truth.shape
    # only the 8-bit YUV rounding is left (a wrong matrix tag costs tens of codes)
    assert np.abs(got - truth).mean() < 0.7 and abs((got - truth).mean()) < 0.1
    with av.open(out) as c:
        cc = c.streams.video[0].codec_context
        assert (int(cc.colorspace), int(cc.color_range)) == (1, 1)


def test_rgba_keeps_alpha_where_the_encoder_can_and_says_when_it_is_dropped(tmp_path):
    src = str(tmp_path / "rgba.mov")
    truth = write_rgb_clip(src, "png", "rgba", alpha=True)
    assert probe(src).has_alpha
    report = {}
    out, _ = upscale_identity(src, tmp_path, 12, codec="ffv1", ext="mkv", report=report)
    assert av.VideoFormat(probe(out).pix_fmt).components[-1].is_alpha
    assert any("alpha kept" in n for n in report["notes"]) or not report["notes"]
    got = decoded_rgba(out)
    assert np.array_equal(got, truth)         # RGB and alpha, bit-exact through FFV1 RGBA
    report = {}
    (tmp_path / "x264").mkdir()
    out, _ = upscale_identity(src, tmp_path / "x264", 12, report=report)
    assert probe(out).pix_fmt == "yuv444p"
    assert any("alpha dropped: libx264 cannot store it" in n for n in report["notes"])


def test_scaled_alpha_follows_the_frame(tmp_path):
    src = str(tmp_path / "rgba.mov")
    truth = write_rgb_clip(src, "png", "rgba", alpha=True, w=32, h=24)
    out, _ = upscale_identity(src, tmp_path, 12, codec="ffv1", ext="mkv", scale=2)
    got = decoded_rgba(out)
    assert got.shape == (len(truth), 48, 64, 4)
    # each 2x2 block's mean alpha is the source pixel's (a smooth ramp, resized)
    blocks = got[..., 3].astype(float).reshape(len(truth), 24, 2, 32, 2).mean(axis=(2, 4))
    inner = (slice(None), slice(2, -2), slice(2, -2))
    assert np.abs(blocks[inner] - truth[..., 3][inner]).max() < 2
    assert np.abs(got[..., 3].astype(float) - 255).mean() > 50   # not made opaque


def test_palette_gif_encodes(tmp_path):
    from PIL import Image
    frames = [Image.fromarray(pattern(i, 64, 48)).convert("P", palette=Image.ADAPTIVE) for i in range(5)]
    src = str(tmp_path / "anim.gif")
    frames[0].save(src, save_all=True, append_images=frames[1:], duration=100, loop=0)
    truth = np.stack([np.asarray(f.convert("RGB")) for f in frames]).astype(float)
    report = {}
    out, _ = upscale_identity(src, tmp_path, 12, report=report, **LOSSLESS_444)
    assert probe(out).frame_count == 5 and probe(out).pix_fmt == "yuv444p"
    assert report["notes"]
    assert np.abs(decoded_rgba(out)[..., :3] - truth).mean() < 0.7


def test_odd_size_in_420_moves_to_444_with_a_note(tmp_path):
    src = make_clip(str(tmp_path / "odd.mkv"), frames=4, width=321, height=241, codec="ffv1", audio=False)
    assert probe(src).pix_fmt == "yuv420p"
    report = {}
    out, _ = upscale_identity(src, tmp_path, 12, ext="mp4", report=report, scale=3)
    info = probe(out)
    assert (info.width, info.height, info.pix_fmt) == (963, 723, "yuv444p") and info.frame_count == 4
    assert any("odd size 963x723" in n for n in report["notes"])


def test_size_beyond_the_encoder_limit_is_refused_before_any_frame():
    from pipeline.encode import EncodeSettings, StreamParams, check_encoder, check_size
    msg = check_size("libx264", 16386, 1200)
    assert "16384" in msg and "16386x1200" in msg and "\n" not in msg
    assert check_size("libx264", 16384, 16384) is None and check_size("ffv1", 40000, 40000) is None
    params = StreamParams(width=20000, height=800, time_base=Fraction(1, 25), rate=Fraction(25), pix_fmt="yuv420p",
                          colorspace=1, color_range=1, color_primaries=1, color_trc=1)
    assert "up to 16384x16384" in check_encoder(EncodeSettings(), params)
    assert "up to 8192x8192" in check_encoder(EncodeSettings(codec="libx265"), replace(params, width=9000))


def test_still_image_points_to_the_image_job(tmp_path):
    from PIL import Image
    from pipeline.errors import InputError
    for name in ("photo.jpg", "photo.png"):
        p = tmp_path / name
        Image.fromarray(pattern(0, 64, 48)).save(p)
        with pytest.raises(InputError) as e:
            probe(p)
        assert str(p) in str(e.value) and "jobs/upscale_images.py" in str(e.value) and "\n" not in str(e.value)
    one = make_clip(str(tmp_path / "one.mp4"), frames=1, audio=False)   # a one-frame video is still a video
    assert probe(one).frame_count == 1


# ---- truncated files (issue 11 item 6) ----

def faststart_clip(path, frames=44):
    with av.open(path, "w", options={"movflags": "faststart"}) as c:
        s = c.add_stream("libx264", rate=25, options={"g": "12", "crf": "18"})
        s.width, s.height, s.pix_fmt = 160, 96, "yuv420p"
        for i in range(frames):
            f = av.VideoFrame.from_ndarray(pattern(i, 160, 96), format="rgb24")
            f.pts = i
            c.mux(s.encode(f))
        c.mux(s.encode(None))
    return path


@pytest.mark.parametrize("keep", [0.3, 0.9])
def test_truncated_faststart_mp4_says_how_many_frames_are_missing(tmp_path, keep):
    full = faststart_clip(str(tmp_path / "full.mp4"))
    assert not probe(full).truncated and probe(full).truncation_warning() is None
    data = open(full, "rb").read()
    cut = tmp_path / f"cut{int(keep * 100)}.mp4"
    cut.write_bytes(data[: int(len(data) * keep)])
    info = probe(cut)
    assert info.promised_frames == 44 and info.truncated
    assert 0 < info.frame_count < 44
    report = {}
    (tmp_path / "w").mkdir()
    out, _ = upscale_identity(str(cut), tmp_path / "w", 12, report=report, **LOSSLESS)
    assert report["repeated"] == [] and not report["warnings"]   # every frame in the file decodes
    got = decode_all(out)
    clean = decode_all(full)
    assert len(got) == info.frame_count
    assert [t for t, _ in got] == [t for t, _ in clean[: len(got)]]
    for (_, a), (_, b) in zip(got, clean):   # they are the first frames of the clip
        assert np.abs(a.astype(int) - b).mean() < 1.5
    line = info.truncation_warning(decoded=len(got))
    assert line == (f"{cut}: truncated: the index promises 44 frames, {info.frame_count} are in the file, "
                    f"{len(got)} decoded; the output is incomplete")


# ---- what the job leaves as it is, said in one line (issue 24 item 10) ----

def pyav_clip(path, video_streams=1, interlaced=False, frames=4):
    """H.264 clip(s) written with PyAV; `interlaced` sets interlaced DCT and motion estimation,
    which makes x264 code (and flag) interlaced pictures."""
    with av.open(str(path), "w") as c:
        streams = []
        for _ in range(video_streams):
            s = c.add_stream("libx264", rate=25)
            s.width, s.height, s.pix_fmt = 64, 48, "yuv420p"
            if interlaced:
                s.codec_context.flags |= av.codec.context.Flags.interlaced_dct | av.codec.context.Flags.interlaced_me
            streams.append(s)
        for i in range(frames):
            for s in streams:
                f = av.VideoFrame.from_ndarray(pattern(i, 64, 48), format="rgb24")
                f.pts = i
                c.mux(s.encode(f))
        for s in streams:
            c.mux(s.encode(None))
    return str(path)


def summary_notes(src, tmp_path):
    """The `note:` lines the video job's summary prints for `src` (its sink, without Ray)."""
    from pipeline.engine import Summary
    from pipeline.segments import plan_segments
    from pipeline.video import VideoJob, VideoSink
    info = probe(src)
    segs = plan_segments(info.pts, info.keyframe_pts, 12, None, None)
    sink = VideoSink(VideoJob(src, str(tmp_path / "out.mkv"), []), info, segs, tmp_path / "parts")
    sink.on_write_start(2)
    summary = Summary(failed=["stop before the mux"])
    sink.on_write_complete({}, summary)
    return [line for line in summary.lines() if line.startswith("note: ")]


def test_second_video_stream_and_interlacing_are_noted(tmp_path):
    two = pyav_clip(tmp_path / "two.mkv", video_streams=2)
    laced = pyav_clip(tmp_path / "laced.mp4", interlaced=True)
    plain = pyav_clip(tmp_path / "plain.mp4")
    with av.open(two) as c:   # the clips are what they claim, read without probe
        assert len(c.streams.video) == 2
    with av.open(laced) as c, av.open(plain) as p:
        assert all(f.interlaced_frame for f in c.decode(video=0))
        assert not any(f.interlaced_frame for f in p.decode(video=0))
    assert summary_notes(plain, tmp_path) == []
    for src, words in ((two, ["2 video streams", "#0 is upscaled", "#1 left out"]), (laced, ["interlaced"])):
        notes = summary_notes(src, tmp_path)
        assert len(notes) == 1 and "\n" not in notes[0], notes
        assert all(w in notes[0] for w in [src, *words]), notes

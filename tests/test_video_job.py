"""End-to-end runs of jobs/upscale_video.py on an embedded Ray, on clips made here (and the real
clips in ../shared when present): frames, timestamps, streams, colour, errors."""
import os
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from jobs import upscale_video
from pipeline.probe import probe
from pipeline.synth import make_clip
from tests.conftest import shared_path
from tests.media import frames, packet_times, packets, psnr, times

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("local_ray")]


def run_job(*args) -> int:
    return upscale_video.main([str(a) for a in args] + ["--no-progress", "--segment-frames", "12"])


def bicubic_reference(src: str, scale: int) -> np.ndarray:
    return np.stack([cv2.resize(f, None, fx=scale, fy=scale, interpolation=cv2.INTER_CUBIC) for f in frames(src)])


def test_bicubic_keeps_every_frame_timestamp_and_audio_packet(tmp_path):
    src = make_clip(str(tmp_path / "in.mp4"), frames=40, gop=10)
    out = tmp_path / "out.mp4"
    assert run_job(src, out, "--model", "bicubic", "--scale", "2") == 0
    info = probe(str(out))
    assert (info.width, info.height) == (320, 192) and info.frame_count == 40
    assert times(str(out)) == times(src)
    assert packets(str(out), "audio") == packets(src, "audio")
    assert packet_times(str(out), "audio") == packet_times(src, "audio")
    assert psnr(frames(str(out)), bicubic_reference(src, 2)) > 33  # x264 CRF 18, 4:2:0
    assert not (tmp_path / "out.mp4.parts").exists()
    # near-lossless encode: what is left is the YUV 4:4:4 rounding, so the path itself is exact
    out444 = tmp_path / "out444.mkv"
    assert run_job(src, out444, "--model", "bicubic", "--scale", "2", "--encoder", "ffv1", "--pix-fmt", "yuv444p") == 0
    assert psnr(frames(str(out444)), bicubic_reference(src, 2)) > 45


def test_variable_frame_rate_timestamps_kept(tmp_path, monkeypatch):
    src = make_clip(str(tmp_path / "vfr.mp4"), frames=30, gop=8, vfr=True)
    ts = times(src)
    assert len(set(np.diff([float(t) for t in ts]).round(3))) == 3  # really VFR
    out = tmp_path / "vfr_out.mp4"
    work = tmp_path / "vfr_out.mp4.parts"
    seen = []
    monkeypatch.setattr(upscale_video, "end_ray", lambda: seen.append((work / "manifest").is_dir() and out.exists()))
    assert run_job(src, out, "--model", "lanczos", "--scale", "2") == 0
    assert times(str(out)) == ts
    # the work folder outlives Ray's shutdown (a kill there leaves a job --resume finishes), then goes
    assert seen == [True] and not work.exists()


def test_av1_output(tmp_path):
    src = make_clip(str(tmp_path / "in.mp4"), frames=16, gop=8)
    out = tmp_path / "av1.mp4"
    assert run_job(src, out, "--model", "bicubic", "--scale", "2", "--encoder", "libsvtav1", "--crf", "30") == 0
    info = probe(str(out))
    assert info.codec in ("av1", "libdav1d") and info.frame_count == 16
    assert times(str(out)) == times(src)
    assert packets(str(out), "audio") == packets(src, "audio")


def test_10bit_stays_10bit(tmp_path):
    src = make_clip(str(tmp_path / "ten.mkv"), frames=16, gop=8, pix_fmt="yuv420p10le")
    out = tmp_path / "ten_out.mkv"
    assert run_job(src, out, "--model", "bicubic", "--scale", "2", "--encoder", "libx265") == 0
    info = probe(str(out))
    assert info.pix_fmt == "yuv420p10le" and info.bit_depth == 10 and info.frame_count == 16
    up = frames(str(out))
    assert up.dtype == np.uint16
    assert len(np.unique(up[..., 1] >> 6 & 3)) > 1  # below-8-bit precision survived
    assert psnr(up, bicubic_reference(src, 2), peak=65535) > 33


def test_rotation_and_colour_tags_kept(tmp_path):
    src = make_clip(str(tmp_path / "rot.mp4"), frames=12, gop=6, rotation=90, color_range="full")
    out = tmp_path / "rot_out.mp4"
    assert run_job(src, out, "--model", "bicubic", "--scale", "2") == 0
    a, b = probe(src), probe(str(out))
    assert b.rotation == a.rotation == 90
    assert (b.color_range, b.colorspace, b.color_primaries, b.color_trc) == \
        (a.color_range, a.colorspace, a.color_primaries, a.color_trc)
    assert a.color_range == 2
    assert psnr(frames(str(out)), bicubic_reference(src, 2)) > 33


def test_subtitles_copied_bit_exactly(tmp_path):
    src = make_clip(str(tmp_path / "sub.mkv"), frames=30, gop=10, subtitles=[(0.1, 0.5, "first"), (0.7, 1.1, "second")])
    out = tmp_path / "sub_out.mkv"
    assert run_job(src, out, "--model", "bicubic", "--scale", "2") == 0
    assert packets(str(out), "subtitle") == packets(src, "subtitle") == [b"first", b"second"]
    assert packets(str(out), "audio") == packets(src, "audio")


def test_time_range(tmp_path):
    src = make_clip(str(tmp_path / "long.mp4"), frames=50, gop=10)  # 25 fps
    out = tmp_path / "cut.mp4"
    assert run_job(src, out, "--model", "bicubic", "--scale", "2", "--start", "0.5", "--end", "1.3") == 0
    ts = times(str(out))
    assert len(ts) == 20 and ts[0] == 0 and ts[-1] == Fraction(19, 25)
    up = frames(str(out))
    assert psnr(up, bicubic_reference(src, 2)[13:33]) > 33  # first frame at or after 0.5 s is frame 13
    audio = packet_times(str(out), "audio")
    assert audio and min(audio) >= -Fraction(1, 10) and max(audio) < Fraction(8, 10)


@pytest.mark.parametrize("make, reason", [
    (lambda p: None, "no such file"),
    (lambda p: p.write_bytes(b""), "empty file"),
    (lambda p: p.write_bytes(os.urandom(20000)), "not a readable media file"),
    (lambda p: p.write_text("hello\n" * 500), "not a readable media file"),
])
def test_bad_inputs_one_line_exit_2(tmp_path, capsys, make, reason):
    p = tmp_path / "bad.mp4"
    make(p)
    assert run_job(p, tmp_path / "o.mp4", "--model", "bicubic", "--scale", "2") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(p) in err[0] and reason in err[0]


def test_truncated_audio_only_unsupported_and_unwritable(tmp_path, capsys):
    good = make_clip(str(tmp_path / "good.mp4"), frames=24, gop=8)
    trunc = tmp_path / "trunc.mp4"
    trunc.write_bytes(Path(good).read_bytes()[: os.path.getsize(good) // 2])
    audio = tmp_path / "audio.m4a"
    with av.open(good) as i, av.open(str(audio), "w") as o:
        s = o.add_stream_from_template(i.streams.audio[0])
        for pk in i.demux(i.streams.audio[0]):
            if pk.size:
                pk.stream = s
                o.mux(pk)
    mkv = make_clip(str(tmp_path / "c.mkv"), frames=12, gop=6)
    unknown = tmp_path / "unknown.mkv"
    data = Path(mkv).read_bytes()
    assert b"V_MPEG4/ISO/AVC" in data
    unknown.write_bytes(data.replace(b"V_MPEG4/ISO/AVC", b"V_MPEG4/ISO/QQQ"))
    cases = [(trunc, tmp_path / "o1.mp4", "truncated"), (audio, tmp_path / "o2.mp4", "no video stream"),
             (unknown, tmp_path / "o3.mp4", "unsupported video codec"),
             (Path(good), tmp_path / "missing_dir" / "o.mp4", "does not exist"),
             (Path(good), tmp_path / "o.xyz", "unknown output container"),
             (Path(good), tmp_path / "o4.mp4", "encoder h264_nvenc cannot start", ["--encoder", "h264_nvenc"]),
             (Path(good), tmp_path / "o5.mp4", "encoder nosuchcodec is not available", ["--encoder", "nosuchcodec"])]
    for src, out, reason, *extra in cases:
        assert run_job(src, out, "--model", "bicubic", "--scale", "2", *(extra[0] if extra else [])) == 2, src
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1, err
        assert reason in err[0] and (str(src) in err[0] or str(out) in err[0]), err[0]


def test_corrupt_frame_in_the_middle_is_reported_and_job_goes_on(tmp_path, capsys):
    src = make_clip(str(tmp_path / "c.mkv"), frames=36, gop=12, audio=False)
    with av.open(src) as c:
        sizes = [(p.pos, p.size) for p in c.demux(video=0) if p.size]
    pos, size = sizes[18]
    data = bytearray(Path(src).read_bytes())
    data[pos + 8: pos + size - 8] = np.random.default_rng(1).integers(0, 256, size - 16, dtype=np.uint8).tobytes()
    bad = tmp_path / "corrupt.mkv"
    bad.write_bytes(bytes(data))  # one frame's payload garbled
    out = tmp_path / "o.mkv"
    assert run_job(bad, out, "--model", "bicubic", "--scale", "2") == 0
    printed = capsys.readouterr().out
    assert f"{bad}: corrupt video data at" in printed
    assert "could not be decoded, shown as a copy of the nearest good frame" in printed
    assert probe(str(out)).frame_count == 36  # the lost frame's time is kept (issue 11 item 5)


def test_real_clips_first_second(tmp_path):
    for name in ["face_recognition/short_hamilton_clip.mp4", "liveportrait/d18.mp4", "real-esrgan/onepiece_demo.mp4"]:
        src = str(shared_path("data", "video", name))
        out = tmp_path / (Path(name).stem + ".mp4")
        assert run_job(src, out, "--model", "bicubic", "--scale", "2", "--end", "1.0") == 0
        a, b = probe(src), probe(str(out))
        assert (b.width, b.height) == (2 * a.width, 2 * a.height)
        n_src = int(np.searchsorted(a.pts, int(Fraction(1) / a.time_base)))
        assert b.frame_count == n_src
        ta, tb = times(src)[:n_src], times(str(out))
        assert ta == tb  # without --start the source's own timestamps are kept (hamilton starts at 0.852 s)
        assert len(packets(str(out), "audio")) > 0

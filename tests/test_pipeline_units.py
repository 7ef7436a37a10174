"""Segment planning, manifests, tiling and the probe's refusals: no Ray needed."""
import numpy as np
import pytest
import torch

from pipeline.errors import InputError
from pipeline.manifest import Manifest
from pipeline.probe import probe
from pipeline.segments import plan_segments
from pipeline.synth import make_clip
from operators.tiling import tiled


def test_segments_start_at_keyframes_and_cover_every_frame():
    pts = np.arange(0, 100) * 512
    keys = pts[::12]
    segs = plan_segments(pts, keys, min_frames=20)
    assert sum(s.frame_count for s in segs) == 100
    assert all(s.start_pts in set(keys.tolist()) for s in segs)
    assert [s.first_frame for s in segs] == [0, 24, 48, 72, 96]
    for a, b in zip(segs, segs[1:]):
        assert a.end_pts == b.start_pts and a.first_frame + a.frame_count == b.first_frame
    assert segs[-1].end_pts is None


def test_segments_time_range():
    pts = np.arange(0, 100) * 10
    segs = plan_segments(pts, pts[::10], min_frames=10, start_pts=255, end_pts=605)
    assert segs[0].first_frame == 26
    assert sum(s.frame_count for s in segs) == 61 - 26
    assert plan_segments(pts, pts[::10], 10, start_pts=5000) == []


def test_manifest_is_append_only_and_latest_wins(tmp_path):
    m = Manifest(tmp_path / "m")
    m.append([{"item": "a", "status": "running"}, {"item": "b", "status": "running"}], durable=True)
    m.append([{"item": "a", "status": "done", "frames": 10}])  # done/failed rows are durable by default
    m.append([{"item": "b", "status": "failed", "error": "x: corrupt"}])
    latest = m.latest()
    assert latest["a"]["status"] == "done" and latest["a"]["frames"] == 10
    assert latest["b"]["status"] == "failed"
    assert len(list((tmp_path / "m").glob("part-*.parquet"))) == 3
    assert m.table().num_rows == 4


def test_tiled_equals_whole_for_a_local_operator():
    torch.manual_seed(0)
    conv = torch.nn.Sequential(torch.nn.Conv2d(3, 12, 3, padding=1), torch.nn.ReLU(),
                               torch.nn.Conv2d(12, 12, 3, padding=1), torch.nn.PixelShuffle(2))
    x = torch.rand(1, 3, 37, 53)
    with torch.no_grad():
        whole = conv(x)
        parts = tiled(conv, x, 2, tile=16, overlap=4)
    assert parts.shape == whole.shape == (1, 3, 74, 106)
    assert torch.allclose(parts, whole, atol=1e-6)


@pytest.mark.parametrize("content, reason", [
    (None, "no such file"), (b"", "empty file"), (b"this is not a video" * 100, "not a readable media file")])
def test_probe_refuses_bad_files_in_one_line(tmp_path, content, reason):
    p = tmp_path / "bad.mp4"
    if content is not None:
        p.write_bytes(content)
    with pytest.raises(InputError) as e:
        probe(p)
    msg = str(e.value)
    assert str(p) in msg and reason in msg and "\n" not in msg


def test_probe_reads_frames_keyframes_and_streams(tmp_path):
    p = make_clip(str(tmp_path / "c.mp4"), frames=30, gop=10)
    info = probe(p)
    assert info.frame_count == 30 and (info.width, info.height) == (160, 96)
    assert len(info.keyframe_pts) == 3 and info.bit_depth == 8
    assert [s["type"] for s in info.other_streams] == ["audio"]


def test_lossy_means_a_lossy_codec_or_subsampled_chroma(tmp_path):
    """What the video source's `lossy` column says (`--noise auto` then reads the noise on R, G, B)."""
    from pipeline.probe import lossy
    cases = {("libx264", "yuv420p"): True, ("ffv1", "yuv444p"): False, ("ffv1", "yuv420p"): True}
    for (codec, pix_fmt), want in cases.items():
        path = make_clip(str(tmp_path / f"{codec}_{pix_fmt}.mkv"), frames=2, width=32, height=32, codec=codec,
                         pix_fmt=pix_fmt, audio=False, bframes=0)
        info = probe(path)
        assert (info.codec, info.pix_fmt) == (codec.replace("lib", "").replace("x264", "h264"), pix_fmt)
        assert lossy(info) is want, (codec, pix_fmt)

"""Scene-cut detection on a synthetic clip of two different scenes, and frame sampling/reading."""
from fractions import Fraction

import av
import numpy as np

from pipeline.probe import probe
from pipeline.shots import detect_shots, distances, frame_signatures, read_frames, sample_indices
from pipeline.synth import pattern


def scene_b(i: int, w: int, h: int) -> np.ndarray:
    """A second scene: dark, blue-green, smoothly moving stripes (other colours than pattern())."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    g = 60 + 40 * np.sin((x + 2 * i) / 5.0)
    b = 90 + 50 * np.cos((y - i) / 8.0)
    return np.clip(np.stack([0 * x + 10, g, b], -1), 0, 255).astype(np.uint8)


def write_clip(path, frames, rate=25):
    out = av.open(str(path), "w")
    vs = out.add_stream("libx264", rate=Fraction(rate), options={"g": "10", "crf": "18"})
    vs.height, vs.width = frames[0].shape[:2]
    vs.pix_fmt = "yuv420p"
    for i, f in enumerate(frames):
        vf = av.VideoFrame.from_ndarray(f, format="rgb24")
        vf.pts = i
        out.mux(vs.encode(vf))
    out.mux(vs.encode(None))
    out.close()
    return str(path)


def test_cut_found_at_the_scene_change_and_not_inside(tmp_path):
    w, h, cut = 160, 96, 23
    frames = [pattern(i, w, h) for i in range(cut)] + [scene_b(i, w, h) for i in range(40 - cut)]
    path = write_clip(tmp_path / "two.mp4", frames)
    info = probe(path)
    assert detect_shots(path, info) == [(0, cut - 1), (cut, 39)]
    d = distances(frame_signatures(path, info))
    inside = np.delete(d, cut)
    assert d[cut] > 0.5 and inside.max() < 0.15, (d[cut], inside.max())


def test_one_smooth_scene_is_one_shot(tmp_path):
    path = write_clip(tmp_path / "one.mp4", [pattern(i, 128, 72) for i in range(30)])
    assert detect_shots(path) == [(0, 29)]


def test_sample_and_read_frames(tmp_path):
    assert sample_indices(0, 99, 3) == [25, 50, 74]
    assert sample_indices(10, 12, 5) == [10, 11, 12]
    assert sample_indices(7, 7, 4) == [7]
    frames = [pattern(i, 64, 48) for i in range(30)]
    path = write_clip(tmp_path / "r.mp4", frames)
    info = probe(path)
    got = read_frames(info, [3, 17, 29])
    assert len(got) == 3
    for i, g in zip([3, 17, 29], got):
        err = np.abs(g.astype(float) - frames[i]).mean()
        others = min(np.abs(g.astype(float) - frames[j]).mean() for j in range(30) if j != i)
        assert err < others, (i, err, others)

"""YUV <-> RGB against the matrix formulas of BT.601/709/2020 computed here (H.273 levels), for
8- and 10-bit, limited and full range, 4:4:4 and 4:2:0; round trips of pipeline.synth's pattern
must not drift; and a bicubic job's output must be as bright as its source.

Measured on this machine (one core, 1280x720): to_rgb 9 ms (4:2:0, 8-bit), from_rgb 8 ms;
swscale took 1 ms but truncated (about one code value darker per pass)."""
import av
import numpy as np
import pytest

from pipeline.frames import from_rgb, to_rgb
from pipeline.synth import make_clip, pattern

SPACES = {1: (0.2126, 0.0722), 5: (0.299, 0.114), 6: (0.299, 0.114), 9: (0.2627, 0.0593), 2: (0.299, 0.114)}


def levels(bits, full):
    if full:
        m = (1 << bits) - 1
        return 0, m, 1 << (bits - 1), m
    s = 1 << (bits - 8)
    return 16 * s, 219 * s, 128 * s, 224 * s


def formula_rgb(Y, U, V, bits, full, kr, kb):
    """RGB in 0..1 from code values (H.273 / BT.601 / BT.709 / BT.2020 equations)."""
    yo, ys, co, cs = levels(bits, full)
    y, pb, pr = (Y - yo) / ys, (U - co) / cs, (V - co) / cs
    r = y + 2 * (1 - kr) * pr
    b = y + 2 * (1 - kb) * pb
    g = (y - kr * r - kb * b) / (1 - kr - kb)
    return np.stack([r, g, b], -1)


def formula_yuv(rgb, bits, full, kr, kb):
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    y = kr * r + (1 - kr - kb) * g + kb * b
    pb, pr = (b - y) / (2 * (1 - kb)), (r - y) / (2 * (1 - kr))
    yo, ys, co, cs = levels(bits, full)
    return yo + ys * y, co + cs * pb, co + cs * pr


def yuv_frame(Y, U, V, fmt):
    """A PyAV frame holding exactly these planes."""
    f = av.VideoFrame(Y.shape[1], Y.shape[0], fmt)
    dt = np.dtype("<u2") if fmt.endswith("le") else np.dtype(np.uint8)
    for plane, a in zip(f.planes, (Y, U, V)):
        buf = np.frombuffer(plane, np.uint8)[: plane.line_size * a.shape[0]].view(dt)
        buf.reshape(a.shape[0], -1)[:, : a.shape[1]] = a
    return f


def planes(frame):
    dt = np.dtype("<u2") if frame.format.name.endswith("le") else np.dtype(np.uint8)
    return [np.frombuffer(p, np.uint8)[: p.line_size * p.height].view(dt).reshape(p.height, -1)[:, : p.width]
            .astype(np.float64) for p in frame.planes[:3]]


CASES = [(bits, full, space, sub) for bits in (8, 10) for full in (False, True) for space in (1, 6, 9)
         for sub in ("444", "420")] + [(8, False, 2, "420")]


@pytest.mark.parametrize("bits, full, space, sub", CASES)
def test_to_rgb_matches_the_matrix_formulas(bits, full, space, sub):
    rng = np.random.default_rng(bits * 100 + space)
    yo, ys, co, cs = levels(bits, full)
    fmt = f"yuv{sub}p" + ("10le" if bits == 10 else "")
    peak = 255 if bits == 8 else 65535
    errs = []
    # 4:4:4: any chroma per pixel; 4:2:0: one chroma per frame (64 frames), so the result cannot
    # depend on how chroma is interpolated
    for _ in range(1 if sub == "444" else 64):
        h, w = (48, 64) if sub == "444" else (8, 16)
        Y = rng.integers(yo, yo + ys + 1, (h, w))
        U, V = (rng.integers(co - cs // 3, co + cs // 3, (2, h, w)) if sub == "444" else
                np.full((2, h, w), rng.integers(co - cs // 3, co + cs // 3, (2, 1, 1))))
        sub_uv = (U, V) if sub == "444" else (U[::2, ::2], V[::2, ::2])
        out = to_rgb(yuv_frame(Y, *sub_uv, fmt), bits, space, 2 if full else 1)
        assert out.dtype == (np.uint8 if bits == 8 else np.uint16) and out.shape == (h, w, 3)
        exact = np.clip(formula_rgb(Y, U, V, bits, full, *SPACES[space]) * peak, 0, peak)
        errs.append((out.astype(np.float64) - exact).ravel())
    err = np.concatenate(errs)
    assert abs(err.mean()) < 0.1            # no bias (the old path was 0.5-1.2 codes darker)
    assert np.abs(err).max() <= 0.5 + (1e-3 if bits == 8 else 1e-2)  # rounded to nearest (float32)


@pytest.mark.parametrize("bits, full, space", [(b, f, s) for b in (8, 10) for f in (False, True) for s in (1, 6, 9)])
def test_from_rgb_matches_the_matrix_formulas(bits, full, space):
    rng = np.random.default_rng(7 + bits + space)
    h, w = 40, 56
    dt, peak = (np.uint8, 255) if bits == 8 else (np.uint16, 65535)
    fmt = "yuv444p" + ("10le" if bits == 10 else "")
    rgb = rng.integers(0, peak + 1, (h, w, 3)).astype(dt)
    got = planes(from_rgb(rgb, fmt, space, 2 if full else 1))
    top = (1 << bits) - 1
    for g, e in zip(got, formula_yuv(rgb / peak, bits, full, *SPACES[space])):
        e = np.clip(e, 0, top)
        assert np.abs(g - e).max() <= 0.5 + 1e-3 and abs((g - e).mean()) < 0.1
    # 4:2:0: grey pixels have no chroma whatever the filter, a flat colour keeps its chroma
    fmt420 = "yuv420p" + ("10le" if bits == 10 else "")
    grey = np.repeat(rng.integers(0, peak + 1, (h, w, 1)), 3, axis=2).astype(dt)
    Y, U, V = planes(from_rgb(grey, fmt420, space, 2 if full else 1))
    ey = formula_yuv(grey / peak, bits, full, *SPACES[space])[0]
    _, _, co, _ = levels(bits, full)
    assert np.abs(Y - ey).max() <= 0.5 + 1e-3 and (U == co).all() and (V == co).all()
    flat = np.empty((h, w, 3), dt)
    flat[:] = (peak * 0.8, peak * 0.3, peak * 0.55)
    _, U, V = planes(from_rgb(flat, fmt420, space, 2 if full else 1))
    _, eu, ev = formula_yuv(flat[:1, :1] / peak, bits, full, *SPACES[space])
    assert np.abs(U - eu[0, 0]).max() <= 0.5 + 1e-3 and np.abs(V - ev[0, 0]).max() <= 0.5 + 1e-3


@pytest.mark.parametrize("fmt, full, space", [("yuv420p", False, 1), ("yuv444p", False, 6), ("yuvj420p", True, 5),
                                               ("yuv420p10le", False, 9), ("yuv422p", True, 1)])
def test_ten_round_trips_of_the_synth_pattern_do_not_drift(fmt, full, space):
    """Mean luma (weights of the matrix, computed here) and, for 4:4:4, every channel stay put.
    In 4:2:x single channels may move a little at sharp colour edges: the blurred chroma there
    asks for values below 0, which no converter can give back (measured up to +0.4 in B)."""
    deep = fmt.endswith("10le")
    unit = 257.0 if deep else 1.0
    # the pattern squeezed into 32..224 so most of it is away from the gamut's edges
    src = np.stack([pattern(i, 96, 64) for i in range(3)]).astype(np.float64) * (192 / 255) + 32
    src = np.rint(src * unit).astype(np.uint16 if deep else np.uint8)
    kr, kb = SPACES[space]
    weights = np.array([kr, 1 - kr - kb, kb])
    x = src
    for n in range(10):
        x = np.stack([to_rgb(from_rgb(f, fmt, space, 2 if full else 1), 10 if deep else 8, space, 2 if full else 1)
                      for f in x])
        drift = (x.astype(np.float64) - src).reshape(-1, 3).mean(axis=0) / unit
        assert abs(drift @ weights) < 0.1, (n, drift)   # the old path: -1.0 per round trip
        if n == 0 or fmt == "yuv444p":
            assert np.abs(drift).max() < (0.1 if n == 0 else 0.2), (n, drift)
    if fmt == "yuv444p":  # no chroma filtering: only quantisation is left
        assert np.abs(x.astype(np.float64) - src).mean() < 0.6


def test_odd_sizes_convert_in_420(tmp_path):
    rgb = pattern(2, 33, 21)
    back = to_rgb(from_rgb(rgb, "yuv420p", 1, 1), 8, 1, 1)
    assert back.shape == rgb.shape
    assert abs((back.astype(float) - rgb).mean()) < 0.5


@pytest.mark.slow
def test_bicubic_job_output_is_as_bright_as_its_source(tmp_path, local_ray):
    """Mean luma (read from the Y plane, no RGB conversion) of source and x2 bicubic output."""
    from jobs import upscale_video
    src = make_clip(str(tmp_path / "in.mp4"), frames=8, width=128, height=96, gop=4, audio=False)
    out = tmp_path / "out.mp4"
    assert upscale_video.main([src, str(out), "--model", "bicubic", "--scale", "2", "--no-progress"]) == 0

    def mean_y(path):
        with av.open(path) as c:
            return np.mean([planes(f)[0].mean() for f in c.decode(video=0)])

    assert abs(mean_y(str(out)) - mean_y(src)) < 0.25   # was about -1 per pass

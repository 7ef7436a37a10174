"""The quality benchmark's metrics: PSNR/SSIM known values, and bicubic on Set5 x2 at the published level."""
import math

import numpy as np
import pytest

from benchmarks.quality import pairs, psnr, rgb2y, run, ssim, table
from tests.conftest import shared_path


def test_psnr_known_values():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (40, 50, 3)).astype(np.uint8)
    assert psnr(a, a) == math.inf
    b = a.astype(np.float64) + 5.0                     # constant error 5 -> 10 log10(255^2 / 25)
    assert psnr(a, b) == pytest.approx(10 * math.log10(255 ** 2 / 25))
    c = a.astype(np.float64).copy()
    c[0, :] += 100                                     # only the shaved border differs
    assert psnr(a, c, shave=1) == math.inf and psnr(a, c) < 40


def test_ssim_known_values():
    rng = np.random.default_rng(1)
    a = rng.uniform(0, 255, (64, 64))
    assert ssim(a, a) == pytest.approx(1.0, abs=1e-12)
    assert ssim(a, a + 10) == pytest.approx(ssim(a + 10, a))             # symmetric
    # a constant shift only changes the luminance term: mean of (2 mu (mu+d) + C1) / (mu^2 + (mu+d)^2 + C1)
    flat = np.full((32, 32), 100.0)
    c1 = (0.01 * 255) ** 2
    assert ssim(flat, flat + 20) == pytest.approx((2 * 100 * 120 + c1) / (100 ** 2 + 120 ** 2 + c1))
    assert ssim(a, np.roll(a, 1, axis=1)) < 0.2                            # white noise shifted 1 px


def test_rgb2y_matches_matlab():
    px = np.array([[[0, 0, 0], [255, 255, 255], [255, 0, 0], [0, 255, 0], [0, 0, 255]]], np.uint8)
    assert np.allclose(rgb2y(px), [[16, 235, 16 + 65.481, 16 + 128.553, 16 + 24.966]])


def test_bicubic_set5_x2_matches_published():
    shared_path("data", "Set5", "LR_bicubic", "X2")
    assert [n for n, *_ in pairs("Set5", 2)] == ["baby", "bird", "butterfly", "head", "woman"]
    res = run(["Set5"], [2], None, "1", 0, log=lambda m: None)
    p, s, n, _ = res[("Set5", 2)]["bicubic"]
    assert n == 5 and 33.6 <= p <= 33.7, p
    assert 0.928 <= s <= 0.932, s
    assert "| Set5 | x2 | 33.6" in table(res)


def test_bicubic_set14_x2_grey_image_on_grey_values():
    shared_path("data", "Set14", "LR_bicubic", "X2")
    res = run(["Set14"], [2], None, "1", 0, log=lambda m: None)
    assert 30.2 <= res[("Set14", 2)]["bicubic"][0] <= 30.26    # published 30.22-30.24; Y of grey 'bridge' would give 30.33

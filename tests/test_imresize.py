"""MATLAB-compatible imresize: known weights, layouts, and the benchmarks' MATLAB-made LR files."""
import numpy as np
import pytest
import torch

import models.imresize as imr
from models.imresize import contributions, imresize, kernel_shift

from conftest import shared_path


def _read_rgb(path):
    import cv2
    im = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert im is not None, path
    return np.ascontiguousarray(im[:, :, ::-1]) if im.ndim == 3 else im


def test_downscale_weights_are_matlabs():
    # MATLAB imresize(.., 0.5) bicubic with antialiasing: kernel 0.5*cubic(0.5 x) over 8 taps
    w, idx = contributions(32, 16, 0.5)
    row = w[8][np.argsort(idx[8])]
    expect = [-0.01171875, -0.03515625, 0.11328125, 0.43359375, 0.43359375, 0.11328125, -0.03515625, -0.01171875]
    np.testing.assert_allclose(row, expect, atol=1e-12)
    assert sorted(idx[8]) == list(range(13, 21))       # output 9 (1-based) sits at input 17.5


def test_upscale_reproduces_linear_ramps_and_mirrors_edges():
    x = np.arange(20, dtype=np.float64)[:, None] * np.ones((1, 4))
    y = imresize(x, (2, 1))
    assert y.shape == (40, 4)
    i = np.arange(40)
    np.testing.assert_allclose(y[4:-4, 0], (i[4:-4] + 1) / 2 - 0.75, atol=1e-12)   # u = x/2 + 0.25
    # symmetric padding: the first output pixel sees x[1], x[0], x[0], x[1] ...
    w, idx = contributions(20, 40, 2.0)
    assert idx[0].min() == 0 and 1 in idx[0]
    np.testing.assert_allclose(imresize(np.full((7, 9, 3), 0.3), 3.0), 0.3, atol=1e-12)


def test_numpy_torch_dense_and_gather_paths_agree(monkeypatch):
    rng = np.random.default_rng(0)
    cases = [((37, 53, 3), 0.5, None), ((37, 53, 3), (1.5, 2.0), None), ((40, 40, 3), None, (17, 91)),
             ((9, 9, 3), 2, (17, 19)), ((11, 13), 1 / 3, None)]
    for shape, sc, out in cases:
        x = rng.random(shape)
        a = imresize(x, sc, out)
        t = torch.from_numpy(x).movedim(-1, 0) if x.ndim == 3 else torch.from_numpy(x)
        at = imresize(t, sc, out)
        at = at.movedim(0, -1).numpy() if x.ndim == 3 else at.numpy()
        monkeypatch.setattr(imr, "_DENSE_MAX", 0)
        b = imresize(x, sc, out)
        monkeypatch.undo()
        np.testing.assert_allclose(a, at, atol=1e-12)
        np.testing.assert_allclose(a, b, atol=1e-12)
        if out is not None:
            assert a.shape[:2] == tuple(out)
    # scale and size together (ZSSR): a 9-px father, 5-px son, back to 9 px with the x2 mapping
    son = rng.random((5, 5, 3))
    assert imresize(son, 2.0, (9, 9)).shape == (9, 9, 3)
    # batched tensors keep leading dims; float32 stays float32
    bt = torch.rand(2, 3, 10, 12)
    o = imresize(bt, 2)
    assert o.shape == (2, 3, 20, 24) and o.dtype == torch.float32
    torch.testing.assert_close(o[1], imresize(bt[1], 2))


def test_uint8_rounds_per_pass_and_keeps_dtype():
    x = (np.random.default_rng(1).random((16, 10, 3)) * 255).astype(np.uint8)
    y = imresize(x, 0.5)
    assert y.dtype == np.uint8 and y.shape == (8, 5, 3)
    yt = imresize(torch.from_numpy(x).permute(2, 0, 1), 0.5)
    assert yt.dtype == torch.uint8
    np.testing.assert_array_equal(yt.permute(1, 2, 0).numpy(), y)
    f = imresize(x.astype(np.float64), 0.5)
    assert np.abs(f - y).max() <= 1.0


def test_numeric_kernel_torch_matches_scipy_and_delta_kernel_subsamples():
    rng = np.random.default_rng(2)
    x = rng.random((20, 22, 3))
    k = rng.random((7, 6))
    k /= k.sum()
    a = imresize(x, 0.5, kernel=k)
    b = imresize(torch.from_numpy(x).permute(2, 0, 1), 0.5, kernel=k).permute(1, 2, 0).numpy()
    assert a.shape == (10, 11, 3)
    np.testing.assert_allclose(a, b, atol=1e-12)
    delta = np.zeros((5, 5))
    delta[2, 2] = 1
    np.testing.assert_allclose(imresize(x, 0.5, kernel=delta), x[::2, ::2], atol=1e-12)
    with pytest.raises(ValueError):
        imresize(x, 2.0, kernel=delta)
    # kernel_shift: centre of mass to (size-1)/2 + 0.5*(s-1) (odd size)
    from scipy.ndimage import center_of_mass
    ks = kernel_shift(delta, 2)
    c = np.array(center_of_mass(ks)) - (np.array(ks.shape) - 1) / 2
    np.testing.assert_allclose(c, [0.5, 0.5], atol=1e-6)


@pytest.mark.shared
@pytest.mark.parametrize("scale", [2, 3, 4])
def test_matches_matlab_lr_files_of_set5(scale):
    """Set5 LR_bicubic are MATLAB imresize(HR, 1/s) outputs (uint8)."""
    names = ["baby", "bird", "butterfly", "head", "woman"]
    for name in names:
        hr = _read_rgb(shared_path("data", "Set5", "HR", f"{name}.png"))
        lr = _read_rgb(shared_path("data", "Set5", "LR_bicubic", f"X{scale}", f"{name}x{scale}.png"))
        h, w = lr.shape[:2]
        crop = np.ascontiguousarray(hr[:scale * h, :scale * w])
        out = imresize(crop, 1 / scale)
        assert out.shape == lr.shape and out.dtype == np.uint8
        d = np.abs(out.astype(np.int32) - lr)
        psnr = 10 * np.log10(255 ** 2 / np.mean(d.astype(np.float64) ** 2))
        assert psnr > 55, (name, psnr)
        assert (d == 0).mean() > 0.97, (name, (d == 0).mean())
        # float pipeline (what training uses): within one grey level almost everywhere
        f = imresize(crop.astype(np.float32) / 255, 1 / scale) * 255
        assert (np.abs(f - lr) <= 1).mean() > 0.98
        assert 10 * np.log10(255 ** 2 / np.mean((f - lr) ** 2)) > 50


@pytest.mark.shared
def test_kernel_example_is_reproduced_by_the_numeric_kernel_path():
    """ZSSR's kernel_example LR is BSD100 img_100 blurred with the stored kernel and subsampled x2."""
    from scipy.io import loadmat
    lr = _read_rgb(shared_path("data", "ZSSR", "kernel_example", "BSD100_100_lr_rand_ker_c_X2.png")) / 255.0
    k = loadmat(shared_path("data", "ZSSR", "kernel_example", "BSD100_100_lr_rand_ker_c_X2_0.mat"))["Kernel"]
    hr = _read_rgb(shared_path("data", "BSD100", "HR", "img_100.png")) / 255.0
    h, w = lr.shape[:2]
    out = imresize(hr[:2 * h, :2 * w], 0.5, kernel=kernel_shift(k, 2))
    psnr = 10 * np.log10(1 / np.mean((out - lr)[8:-8, 8:-8] ** 2))
    bic = 10 * np.log10(1 / np.mean((imresize(hr[:2 * h, :2 * w], 0.5) - lr)[8:-8, 8:-8] ** 2))
    assert psnr > 50 and bic < 30, (psnr, bic)

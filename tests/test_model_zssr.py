"""ZSSR: both key layouts, the untrained default net, and the per-image training procedure."""
import time

import numpy as np
import pytest
import torch

import models
from models import UnknownCheckpoint
from models.imresize import imresize
from models.zssr import (ZSSRConfig, ZSSRNet, _linfit_slope_std, _run_net, apply_zssr,
                         detect, from_state_dict, state_dict_from_tf, train_zssr, zssr_upscale)

from conftest import assert_close_to_golden, golden, shared_path

TINY = ZSSRConfig(crop_size=24, width=8, depth=3, run_test_every=5, back_projection_iters=2)


def _sd(**kw):
    return ZSSRNet(**kw).state_dict()


def _y(img):
    """MATLAB rgb2ycbcr Y (0-255 scale) of an RGB image in [0, 1]."""
    return 16 + 65.481 * img[..., 0] + 128.553 * img[..., 1] + 24.966 * img[..., 2]


def _psnr_y(a, b, shave):
    d = (_y(a.astype(np.float64)) - _y(b.astype(np.float64)))[shave:-shave, shave:-shave]
    return 10 * np.log10(255 ** 2 / np.mean(d ** 2))


def _read_rgb(path):
    import cv2
    return np.ascontiguousarray(cv2.imread(str(path))[:, :, ::-1]).astype(np.float32) / 255


def _shapes_image(h, w, seed=0, n=40):
    """Synthetic piecewise-constant picture: discs, boxes and bars with hard edges."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    img = np.ones((h, w, 3)) * rng.random(3)
    for _ in range(n):
        col = rng.random(3)
        cy, cx, r = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(3, 12)
        kind = rng.integers(3)
        if kind == 0:
            m = (yy - cy) ** 2 + (xx - cx) ** 2 < r * r
        elif kind == 1:
            m = (np.abs(yy - cy) < r) & (np.abs(xx - cx) < r * 0.6)
        else:
            th = rng.uniform(0, np.pi)
            m = np.abs((xx - cx) * np.cos(th) + (yy - cy) * np.sin(th)) < r / 4
        img[m] = col
    return img.astype(np.float32)


# ------------------------------------------------------------------------- network / registry

def test_golden_jacobgil():
    case = golden("zssr_jacobgil_rgb.pt")
    net, spec = models.build(case["state_dict"])
    assert (spec.arch, spec.variant, spec.output, spec.scale) == ("zssr", "zssr-jacobgil", "residual", 0)
    assert spec.hyperparams["bias"] and spec.hyperparams["width"] == 64 and spec.hyperparams["depth"] == 8
    with torch.no_grad():
        out = net(case["input"])
    assert_close_to_golden(out, case["output"], case["tolerance"])


@pytest.mark.parametrize("layout,bias", [("official", False), ("jacobgil", True), ("official", True),
                                         ("jacobgil", False)])
@pytest.mark.parametrize("cfg", [dict(), dict(channels=1, width=16, depth=4, kernel_size=5),
                                 dict(width=32, depth=2)])
def test_detect_build_and_shapes(tmp_path, layout, bias, cfg):
    ref = ZSSRNet(layout=layout, bias=bias, **cfg).reset_parameters_official()
    sd = ref.state_dict()
    assert detect(sd)
    p = tmp_path / "zssr.pth"
    torch.save(sd, p)
    d = models.detect(p)
    assert (d.arch, d.variant, d.scale) == ("zssr", f"zssr-{layout}", 0)
    net, spec = models.load(p)
    hp = spec.hyperparams
    assert (hp["layout"], hp["bias"], hp["channels"], hp["width"], hp["depth"], hp["kernel_size"]) == (
        layout, bias, cfg.get("channels", 3), cfg.get("width", 64), cfg.get("depth", 8), cfg.get("kernel_size", 3))
    c = cfg.get("channels", 3)
    assert spec.channel_order == ("RGB" if c == 3 else "Y") and spec.input_range == 1.0
    for h, w in [(17, 23), (8, 8), (1, 5)]:
        x = torch.rand(1, c, h, w)
        with torch.no_grad():
            out = net(x)
        assert out.shape == x.shape
        torch.testing.assert_close(out, ref(x).detach())


def test_default_untrained_net_and_init_statistics():
    net, spec = models.load("zssr", scale=2)
    assert (spec.arch, spec.variant, spec.scale, spec.output) == ("zssr", "zssr-official", 2, "residual")
    assert not net.training
    assert set(net.state_dict()) == {f"filter_{i}.weight" for i in range(8)}
    _, spec4 = models.load("zssr", scale=4)
    assert spec4.scale == 4
    w = net.filter_1.weight
    assert abs(w.std().item() - np.sqrt(0.1 / (9 * 64))) < 0.002 and abs(w.mean().item()) < 0.002
    x = torch.rand(1, 3, 13, 11)
    with torch.no_grad():
        assert net(x).shape == x.shape
    # seeded default nets are reproducible
    a, _ = models.zssr.default(2, seed=3)
    b, _ = models.zssr.default(2, seed=3)
    torch.testing.assert_close(a.filter_7.weight, b.filter_7.weight)


def test_state_dict_from_tf_layout():
    rng = np.random.default_rng(0)
    filters = [rng.standard_normal((3, 3, 3, 16)), rng.standard_normal((3, 3, 16, 16)),
               rng.standard_normal((3, 3, 16, 3))]
    sd = state_dict_from_tf(filters)
    net, spec = models.build(sd)
    assert spec.variant == "zssr-official" and spec.hyperparams["width"] == 16
    # TF conv2d 'SAME' (cross-correlation, HWIO) at one pixel == torch conv with OIHW
    x = torch.rand(1, 3, 5, 5)
    h = torch.relu((x[0, :, 1:4, 1:4].permute(1, 2, 0).double()[..., None]
                    * torch.from_numpy(filters[0])).sum((0, 1, 2)))
    with torch.no_grad():
        first = torch.relu(net.filter_0(x))[0, :, 2, 2]
    torch.testing.assert_close(first.double(), h, atol=1e-5, rtol=1e-5)


def test_jit_trace_matches_eager():
    net = ZSSRNet(layout="jacobgil", bias=True).reset_parameters_official().eval()
    x = torch.rand(1, 3, 19, 21)
    traced = torch.jit.trace(net, x)
    y = torch.rand(1, 3, 11, 9)
    torch.testing.assert_close(traced(y), net(y))


def test_bad_checkpoints_are_unknown():
    sd = _sd(layout="jacobgil", bias=True)
    missing = {k: v for k, v in sd.items() if k != "conv3.bias"}
    with pytest.raises(UnknownCheckpoint):
        models.build(missing)
    gap = {k: v for k, v in sd.items() if not k.startswith("conv3.")}
    with pytest.raises(UnknownCheckpoint):
        models.build(gap)
    wrong = dict(sd)
    wrong["conv2.weight"] = torch.zeros(64, 32, 3, 3)
    with pytest.raises(UnknownCheckpoint):
        models.build(wrong)
    wrong_bias = dict(sd)
    wrong_bias["conv7.bias"] = torch.zeros(4)
    with pytest.raises(UnknownCheckpoint):
        models.build(wrong_bias)
    extra = dict(sd)
    extra["head.weight"] = torch.zeros(3)
    assert not detect(extra)
    even = _sd(kernel_size=3)
    even["filter_0.weight"] = torch.zeros(64, 3, 4, 4)
    assert not detect(even)
    with pytest.raises(UnknownCheckpoint):
        from_state_dict(even)


# ----------------------------------------------------------------------------------- procedure

def test_linear_fit_matches_polyfit_with_the_authors_numpy_scaling():
    x = np.array([50, 100, 150, 200, 250], float)
    y = np.array([3.1, 2.9, 2.95, 2.7, 2.72]) * 1e-3
    slope, std = _linfit_slope_std(x, y)
    p, cov = np.polyfit(x, y, 1, cov=True)            # numpy>=1.16 divides by N-2, the authors' by N-4
    assert slope == pytest.approx(p[0], rel=1e-9)
    assert std == pytest.approx(np.sqrt(cov[0, 0] * (5 - 2) / (5 - 4)), rel=1e-9)


def test_zero_residual_net_gives_back_projected_bicubic_and_ensemble_undoes_turns():
    img = np.random.default_rng(0).random((13, 17, 3)).astype(np.float32)
    net = ZSSRNet(width=8, depth=3)
    for p in net.parameters():
        torch.nn.init.zeros_(p)
    bic = np.clip(imresize(img, 2), 0, 1)
    out = apply_zssr(net, img, 2, ensemble=True, back_projection_iters=0)
    assert out.shape == (26, 34, 3)
    np.testing.assert_allclose(out, bic, atol=1e-5)
    # back-projection: the result's downscale approaches the input
    bp = apply_zssr(net, img, 2, ensemble=False, back_projection_iters=10)
    err0 = np.abs(imresize(bic, 0.5) - img).mean()
    err = np.abs(imresize(bp, 0.5) - img).mean()
    assert err < 0.2 * err0


def test_self_ensemble_is_equivariant_to_turns_and_flips():
    img = np.random.default_rng(1).random((12, 15, 3)).astype(np.float32)
    net = ZSSRNet(width=8, depth=3).reset_parameters_official(init_variance=2.0,
                                                              generator=torch.Generator().manual_seed(0))
    a = apply_zssr(net, img, 2, back_projection_iters=2)
    b = apply_zssr(net, np.ascontiguousarray(np.rot90(img)), 2, back_projection_iters=2)
    np.testing.assert_allclose(np.rot90(a), b, atol=1e-5)
    c = apply_zssr(net, np.ascontiguousarray(img[:, ::-1]), 2, back_projection_iters=2)
    np.testing.assert_allclose(a[:, ::-1], c, atol=1e-5)
    single = apply_zssr(net, img, 2, ensemble=False, back_projection_iters=0)
    assert np.abs(single - a).max() > 1e-3            # the ensemble really changes the result


def test_tiled_inference_is_exact():
    net = ZSSRNet(width=8, depth=4).reset_parameters_official()
    x = torch.rand(1, 3, 37, 45)
    with torch.no_grad():
        whole = _run_net(net, x, torch.float32, False, None)
        tiled = _run_net(net, x, torch.float32, True, 16)
    torch.testing.assert_close(tiled, whole, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("scale,shape", [(2, (14, 11)), (3, (9, 13)), ((1.5, 2.0), (10, 12))])
def test_upscale_shapes(scale, shape):
    img = np.random.default_rng(0).random(shape + (3,)).astype(np.float32)
    st = {}
    out = zssr_upscale(img, scale, max_iters=3, config=TINY, stats=st)
    sy, sx = (scale, scale) if np.isscalar(scale) else scale
    assert out.shape == (int(np.ceil(shape[0] * sy)), int(np.ceil(shape[1] * sx)), 3)
    assert out.dtype == np.float32 and out.min() >= 0 and out.max() <= 1
    assert st["iterations"][-1] == 3


def test_gradual_x4_trains_through_x2():
    img = np.random.default_rng(0).random((12, 10, 3)).astype(np.float32)
    st = {}
    out = zssr_upscale(img, 4, max_iters=4, config=TINY, stats=st)
    assert out.shape == (48, 40, 3)
    assert st["scale_steps"] == [(2.0, 2.0), (4.0, 4.0)] and st["iterations"] == [4, 4]
    with pytest.raises(ValueError):
        zssr_upscale(img, 4, scale_steps=[2, 3], max_iters=1, config=TINY)


def test_given_kernel_and_real_configs():
    img = np.random.default_rng(0).random((16, 14, 3)).astype(np.float32)
    yy, xx = np.mgrid[-4:5, -4:5]
    k = np.exp(-(xx ** 2 + yy ** 2 * 0.5) / 3.0)
    k /= k.sum()
    st = {}
    out = zssr_upscale(img, 2, kernel=k, max_iters=3, config=ZSSRConfig.given_kernel(crop_size=16, width=8,
                                                                                       depth=3), stats=st)
    assert out.shape == (32, 28, 3) and st["iterations"] == [3]
    real = ZSSRConfig.real()
    assert (real.noise_std, real.back_projection_iters, real.output_flip, real.allow_rotation) == (0.0125, 0, False,
                                                                                                  False)
    out = zssr_upscale(img, 2, kernel=k, max_iters=2, config=ZSSRConfig.real(crop_size=16, width=8, depth=3))
    assert out.shape == (32, 28, 3)
    with pytest.raises(ValueError):
        zssr_upscale(img, 4, kernel=k, scale_steps=[2, 4], max_iters=1, config=TINY)


def test_learning_rate_policy_decays_and_stops():
    """With the policy's constants shrunk, a flat reconstruction error divides lr by 10 until < min lr."""
    img = np.random.default_rng(0).random((16, 16, 3)).astype(np.float32)
    cfg = ZSSRConfig(crop_size=16, width=4, depth=2, run_test_every=1, learning_rate_policy_check_every=3,
                     min_iters=2, learning_rate_slope_range=5, max_iters=200)
    st = {}
    train_zssr([img], 2, config=cfg, stats=st)
    assert len(st["lr_changes"][0]) == 3 and st["final_lr"][0] < cfg.min_learning_rate
    assert st["iterations"][0] < 200
    gaps = np.diff([0] + st["lr_changes"][0])
    assert (gaps > cfg.min_iters).all()


def test_time_budget_stops_training():
    img = np.random.default_rng(0).random((40, 40, 3)).astype(np.float32)
    st = {}
    t = time.perf_counter()
    train_zssr([img], 2, max_seconds=0.5, config=ZSSRConfig(crop_size=32, width=8, depth=3), stats=st)
    assert time.perf_counter() - t < 5 and 0 < st["iterations"][0] < 3000


def test_train_on_several_frames_then_apply():
    rng = np.random.default_rng(0)
    frames = [rng.random((14, 18, 3)).astype(np.float32) for _ in range(3)]
    st = {}
    net = train_zssr(frames, 2, max_iters=5, config=TINY, stats=st)
    assert not net.training and st["iterations"] == [5]
    out = apply_zssr(net, frames[1], 2, ensemble=False, back_projection_iters=0)
    assert out.shape == (28, 36, 3)
    with pytest.raises(ValueError):
        train_zssr([], 2)


def test_bf16_channels_last_on_cpu_runs_and_stays_close():
    img = np.random.default_rng(0).random((16, 16, 3)).astype(np.float32)
    net = train_zssr([img], 2, max_iters=3, config=TINY, dtype=torch.bfloat16, channels_last=True)
    assert all(p.dtype == torch.float32 for p in net.parameters())   # bf16 autocast, fp32 master weights
    a = apply_zssr(net, img, 2, dtype=torch.bfloat16, back_projection_iters=0)
    b = apply_zssr(net, img, 2, dtype=torch.float32, channels_last=False, back_projection_iters=0)
    assert np.isfinite(a).all() and np.abs(a - b).max() < 0.03


def test_learns_more_than_bicubic_on_a_synthetic_picture():
    """No ../shared needed: hard-edged synthetic picture, x2, 150 iterations on 48-px crops."""
    hr = _shapes_image(96, 96)
    lr = np.clip(imresize(hr, 0.5), 0, 1).astype(np.float32)
    bic = np.clip(imresize(lr, 2), 0, 1)
    zero = ZSSRNet()
    for p in zero.parameters():
        torch.nn.init.zeros_(p)
    bp_only = apply_zssr(zero, lr, 2)                 # ensemble + back-projection without learning
    sr = zssr_upscale(lr, 2, max_iters=150, config=ZSSRConfig(crop_size=48))
    p_bic, p_bp, p_sr = (_psnr_y(x, hr, 2) for x in (bic, bp_only, sr))
    assert p_sr > p_bic + 1.0 and p_sr > p_bp + 0.15, (p_bic, p_bp, p_sr)


@pytest.mark.shared
def test_beats_bicubic_on_the_authors_example():
    """bsd_001.png (LR, = BSD100 img_001 x2 bicubic) vs bsd_001_gt.png, Y-PSNR with a 2-px shave."""
    lr = _read_rgb(shared_path("data", "ZSSR", "example_with_gt", "bsd_001.png"))
    gt = _read_rgb(shared_path("data", "ZSSR", "example_with_gt", "bsd_001_gt.png"))
    bic = np.clip(imresize(lr, 2), 0, 1)
    sr = zssr_upscale(lr, 2, max_iters=150)
    assert sr.shape == gt.shape
    p_bic, p_sr = _psnr_y(bic, gt, 2), _psnr_y(sr, gt, 2)
    assert p_sr > p_bic + 0.6, (p_bic, p_sr)

"""Training: a tiny run learns, checkpoint/resume continues exactly, export round-trips through
models.load, the CLI works, and the shipped rayscale weights beat bicubic."""
import math

import numpy as np
import pytest
import torch

import models
from conftest import shared_path
from models import rayscale
from models.imresize import imresize
from models.training import PatchSampler, Trainer, psnr_y, srmd_lr
from pipeline.train import TrainConfig, read_rgb, train


def synthetic(seed: int, size: int = 96) -> torch.Tensor:
    """Sharp-edged test card (rectangles + stripes): what bicubic blurs and a net can learn to restore."""
    g = np.random.default_rng(seed)
    im = np.full((size, size, 3), g.uniform(0.2, 0.8, 3))
    for _ in range(12):
        y0, x0 = g.integers(0, size - 8, 2)
        h, w = g.integers(6, size // 2, 2)
        im[y0:y0 + h, x0:x0 + w] = g.uniform(0, 1, 3)
    yy, xx = np.mgrid[:size, :size]
    period = g.integers(5, 9)
    stripes = ((xx + yy) // period) % 2 == 0
    im[stripes & (yy > size // 2)] *= 0.5
    return torch.from_numpy(im.transpose(2, 0, 1).copy()).float()


def write_folder(path, seeds):
    import cv2
    path.mkdir(parents=True, exist_ok=True)
    for s in seeds:
        a = (synthetic(s).permute(1, 2, 0).numpy()[:, :, ::-1] * 255).round().astype(np.uint8)
        cv2.imwrite(str(path / f"img{s:02d}.png"), a)
    return path


def test_tiny_training_lowers_loss_and_raises_psnr():
    torch.manual_seed(0)
    net, spec = rayscale.build(channels=12, n_blocks=1, scale=2)
    sampler = PatchSampler([synthetic(s) for s in range(4)], scale=2, patch=16, batch=8, seed=1)
    tr = Trainer(net, spec, total_steps=150, lr=3e-3, schedule="constant")
    held = synthetic(99)
    pair = [(imresize(held, 0.5).clamp(0, 1), held)]
    fixed = next(iter(PatchSampler([synthetic(s) for s in (50, 51)], scale=2, patch=16, batch=8, seed=2)))

    def fixed_loss():
        return torch.nn.functional.l1_loss(tr.upscale(fixed[0]), fixed[1]).item()

    before, loss0 = tr.evaluate(pair), fixed_loss()
    it = iter(sampler)
    for _ in range(150):
        tr.train_step(*next(it))
    after, loss1 = tr.evaluate(pair), fixed_loss()
    assert loss1 < 0.95 * loss0, (loss0, loss1)
    assert after > before + 0.5, (before, after)


def test_sampler_shapes_augmentation_and_srmd():
    ims = [synthetic(0), synthetic(1)[:, :70, :90]]
    s = PatchSampler(ims, scale=2, patch=12, batch=5, seed=0)
    lr, hr = next(iter(s))
    assert lr.shape == (5, 3, 12, 12) and hr.shape == (5, 3, 24, 24)
    # aligned: the LR patch is the (whole-image) MATLAB downscale of its HR patch, away from the borders
    assert (imresize(hr, 0.5).clamp(0, 1)[..., 3:-3, 3:-3] - lr[..., 3:-3, 3:-3]).abs().max() < 1e-4
    st = s.state_dict()
    a = next(iter(s))
    s.load_state_dict(st)
    b = next(iter(s))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    sr = PatchSampler(ims, scale=2, patch=12, batch=3, degradation="srmd", seed=0)
    lr2, hr2 = next(iter(sr))
    assert lr2.shape == (3, 3, 12, 12) and hr2.shape == (3, 3, 24, 24)
    g = torch.Generator().manual_seed(0)
    noisy = srmd_lr(hr2[0], 2, g, noise_range_255=(10, 10))
    assert (noisy - imresize(hr2[0], 0.5)).std() > 0.02   # blurred and noisy, not plain bicubic


def _cfg(tmp_path, **kw):
    base = dict(train_dir=str(write_folder(tmp_path / "train", range(4))), scale=2, arch="rayscale",
                build_kwargs={"channels": 8, "n_blocks": 1}, val_dir=str(write_folder(tmp_path / "val", [99])),
                steps=6, patch=12, batch=4, lr=2e-3, schedule="constant", val_every=3, log_every=0)
    base.update(kw)
    return TrainConfig(**base)


def test_checkpoint_resume_continues_from_same_step(tmp_path):
    full = train(_cfg(tmp_path, steps=6), log=lambda s: None)
    ck = tmp_path / "run.pt"
    first = train(_cfg(tmp_path, steps=3, ckpt=str(ck), ckpt_every=3), log=lambda s: None)
    assert first["step"] == 3
    st = torch.load(ck, weights_only=True)
    assert st["step"] == 3 and "optimizer" in st and "sampler" in st and "torch_rng" in st
    logs = []
    resumed = train(_cfg(tmp_path, steps=6, ckpt=str(ck), resume=str(ck)), log=logs.append)
    assert any("at step 3" in m for m in logs)
    assert resumed["step"] == 6 and len(resumed["loss"]) == 3
    a = full["trainer"].net.state_dict()
    b = resumed["trainer"].net.state_dict()
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-6), k
    assert torch.load(ck, weights_only=True)["step"] == 6


def test_export_round_trips_through_models_load(tmp_path):
    out = tmp_path / "w.safetensors"
    h = train(_cfg(tmp_path, steps=4, export=str(out), amp=False), log=lambda s: None)
    net, spec = models.load(out)
    assert (spec.arch, spec.scale, spec.hyperparams["channels"]) == ("rayscale", 2, 8)
    x = read_rgb(tmp_path / "val" / "img99.png")[None, :, :40, :40]
    ref = h["trainer"].upscale(x)
    with torch.no_grad():
        y = net(x).clamp(0, 1)
    assert torch.allclose(y, ref, atol=1e-5)
    from safetensors import safe_open
    with safe_open(str(out), "pt") as f:
        assert f.metadata()["arch"] == "rayscale"


def test_cli_init_other_scale_and_bad_input(tmp_path, capsys):
    from jobs.train import main
    train_dir = write_folder(tmp_path / "train", range(3))
    x2 = tmp_path / "x2.safetensors"
    assert main(["--train", str(train_dir), "--arch", "rayscale", "--scale", "2", "--channels", "8",
                 "--blocks", "2", "--steps", "2", "--patch", "12", "--batch", "2", "--export", str(x2)]) == 0
    x4 = tmp_path / "x4.safetensors"
    assert main(["--train", str(train_dir), "--init", str(x2), "--scale", "4", "--steps", "2", "--patch", "8",
                 "--batch", "2", "--export", str(x4)]) == 0
    n2, s2 = models.load(x2)
    n4, s4 = models.load(x4)
    assert s4.scale == 4 and s4.hyperparams == s2.hyperparams
    assert "took" in capsys.readouterr().out
    srmd = tmp_path / "srmd.pt"
    assert main(["--train", str(train_dir), "--arch", "rayscale", "--scale", "2", "--channels", "4", "--blocks", "1",
                 "--steps", "2", "--patch", "10", "--batch", "2", "--degradation", "srmd", "--ckpt", str(srmd)]) == 0
    assert torch.load(srmd, weights_only=True)["step"] == 2
    assert main(["--train", str(tmp_path / "nope"), "--arch", "rayscale", "--scale", "2"]) == 2
    assert main(["--train", str(train_dir), "--arch", "srmd", "--scale", "2"]) == 2


def _set_psnr(name: str, scale: int, bench: str = "Set5"):
    hr_dir = shared_path("data", bench, "HR")
    lr_dir = shared_path("data", bench, "LR_bicubic", f"X{scale}")
    net, spec = models.load(name)
    assert spec.scale == scale and spec.input_range == 1.0 and spec.output == "image"
    ours, bic = [], []
    for hp in sorted(hr_dir.glob("*.png")):
        hr = read_rgb(hp)
        lr = read_rgb(lr_dir / f"{hp.stem}x{scale}.png")
        hr = hr[:, : lr.shape[1] * scale, : lr.shape[2] * scale]
        with torch.no_grad():
            sr = net(lr[None])[0]
        ours.append(psnr_y(sr, hr, scale))
        bic.append(psnr_y(imresize(lr, float(scale)), hr, scale))
    return float(np.mean(ours)), float(np.mean(bic))


@pytest.mark.parametrize("scale,margin,floor", [(2, 2.5, 36.5), (4, 1.8, 30.5)])
def test_shipped_weights_beat_bicubic_on_set5(scale, margin, floor):
    """Shipped: x2 36.99 dB, x4 30.99 dB (bicubic 33.68 / 28.43); the issue's target is x2 >= 36.5."""
    name = f"rayscale-x{scale}"
    if name not in models.shipped_weights():
        pytest.fail(f"{name} is not shipped")
    ours, bic = _set_psnr(name, scale)
    assert math.isfinite(ours)
    assert ours > bic + margin and ours >= floor, (ours, bic)


def test_shipped_x2_beats_bicubic_without_shared():
    net, _ = models.load("rayscale-x2")
    hr = synthetic(7, 128)
    lr = imresize(hr, 0.5).clamp(0, 1)
    with torch.no_grad():
        sr = net(lr[None])[0]
    assert psnr_y(sr, hr, 2) > psnr_y(imresize(lr, 2.0), hr, 2) + 0.5


def test_arch_training_loss_hook_is_used(monkeypatch):
    calls = []

    def loss(net, lr, hr):
        calls.append((lr.shape, hr.shape))
        return net(lr).sub(hr).pow(2).mean(), {"note": 1.0}     # (loss, logs) like dsrn's

    monkeypatch.setattr(rayscale, "training_loss", loss, raising=False)
    net, spec = rayscale.build(channels=4, n_blocks=1, scale=2)
    tr = Trainer(net, spec, total_steps=2, amp=False)
    v = tr.train_step(torch.rand(2, 3, 8, 8), torch.rand(2, 3, 16, 16))
    assert calls == [((2, 3, 8, 8), (2, 3, 16, 16))] and v > 0 and tr.step == 1

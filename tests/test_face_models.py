"""Face SR: the shipped face models load by name at their scale and beat bicubic (and the general
rayscale-x4) on FSRNet's CelebA test pairs; the face degradation reproduces the authors' LR_8x files;
landmark heatmaps follow crops and flips; FSRNet and Super-FAN train through the same Trainer/job."""
import math

import numpy as np
import pytest
import torch

import models
from conftest import shared_path
from models.imresize import imresize
from models.training import Trainer, psnr_y
from pipeline.face_data import (FLIP_ORDER, FaceSampler, build_fsrnet, build_superfan, degrade,
                                heatmaps, yunet_model)

CELEBA = ("data", "faces_eval", "celeba_fsrnet")


def read(path) -> torch.Tensor:
    import cv2
    a = cv2.imread(str(path), cv2.IMREAD_COLOR)[:, :, ::-1].copy()
    return torch.from_numpy(a).permute(2, 0, 1).float() / 255


def celeba(n: int):
    d = shared_path(*CELEBA)
    names = sorted(p.name for p in (d / "HR").glob("*.jpg"))[:n]
    return [(read(d / "HR" / k), read(d / "LR_8x" / k)) for k in names]


# ---------------------------------------------------------------------------------------- shipped models
@pytest.mark.parametrize("name,scale", [("rayscale-face-x4", 4), ("rayscale-face-x8", 8)])
def test_face_model_loads_by_name_and_upscales(name, scale):
    from operators.upscale import Upscaler
    assert name in models.shipped_weights()
    net, spec = models.load(name)
    assert (spec.arch, spec.scale) == ("rayscale", scale)
    op = Upscaler(name, device="cpu", precision="fp32")
    crop = np.random.default_rng(0).integers(0, 256, (2, 16, 16, 3), dtype=np.uint8)
    out = op({"frames": crop, "index": np.arange(2)})["frames"]
    assert out.shape == (2, 16 * scale, 16 * scale, 3) and out.dtype == np.uint8


_NETS: dict = {}


def _sr(name, lr):
    if name not in _NETS:
        _NETS[name] = models.load(name)[0]
    with torch.inference_mode():
        return _NETS[name](lr[None])[0].clamp(0, 1)


def test_face_x8_beats_bicubic_on_celeba():
    pairs = celeba(8)
    gain = []
    for hr, lr8_file in pairs:
        sr = _sr("rayscale-face-x8", degrade(hr, 8))
        gain.append(psnr_y(sr, hr, 8) - psnr_y(lr8_file, hr, 8))   # vs the authors' bicubic input
    assert np.mean(gain) > 1.5, gain                  # measured +2.1 dB on these 8 (500: +1.8)


def test_face_x4_beats_bicubic_and_general_model_on_celeba():
    """The issue's target: >= 0.5 dB over the general rayscale-x4 at x4 (16 -> 64); 500 pairs in
    benchmarks/README.md: +0.63 dB."""
    pairs = celeba(32)
    face, general, bic = [], [], []
    for hr, _ in pairs:
        hr64 = imresize(hr, 0.5).clamp(0, 1)
        lr = degrade(hr64, 4)
        face.append(psnr_y(_sr("rayscale-face-x4", lr), hr64, 4))
        general.append(psnr_y(_sr("rayscale-x4", lr), hr64, 4))
        bic.append(psnr_y(imresize(lr, 4).clamp(0, 1), hr64, 4))
    assert np.mean(face) > np.mean(bic) + 2.0, (np.mean(face), np.mean(bic))          # measured +2.44
    assert np.mean(face) > np.mean(general) + 0.5, (np.mean(face), np.mean(general))  # measured +0.71


# ---------------------------------------------------------------------------------------- data
def test_degradation_reproduces_fsrnet_lr8x_files():
    for hr, lr8_file in celeba(5):
        again = imresize(degrade(hr, 8), 8).clamp(0, 1)
        assert psnr_y(again, lr8_file, 0) > 38.0      # the rest is the files' JPEG noise


def test_heatmap_peaks_at_the_point():
    pts = torch.tensor([[[10.0, 20.0], [40.0, 6.0], [0.0, 0.0], [63.0, 63.0], [float("nan"), 1.0]]])
    hm = heatmaps(pts, 32, 64)                        # half resolution: pixel centre (x + .5) / 2 - .5
    assert hm.shape == (1, 5, 32, 32)
    for k, (x, y) in enumerate([(4.75, 9.75), (19.75, 2.75), (-0.25, -0.25), (31.25, 31.25)]):
        iy, ix = divmod(int(hm[0, k].argmax()), 32)
        assert (abs(ix - x) <= 0.75, abs(iy - y) <= 0.75) == (True, True), (k, ix, iy)
    assert hm[0, 4].abs().sum() == 0                  # no landmark -> empty map


def test_sampler_landmarks_follow_zoom_crop_and_flip():
    """Coloured dots drawn at the 5 points of a synthetic face must sit under the heatmap peaks of
    every sample, whatever zoom, crop, padding or flip was drawn."""
    import cv2
    S = 160
    pts = np.array([[0.3, 0.35], [0.7, 0.35], [0.5, 0.55], [0.35, 0.75], [0.65, 0.75]], np.float32)
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (0, 255, 255)]
    img = np.full((S, S, 3), 90, np.uint8)
    for (x, y), c in zip(pts * S - 0.5, colours):
        cv2.circle(img, (int(round(x)), int(round(y))), 6, c, -1)
    s = FaceSampler(img[None], scale=4, patch=16, batch=12, zoom=(0.8, 2.0), seed=3, points=pts[None])
    lr, hr, extra = next(iter(s))
    assert lr.shape == (12, 3, 16, 16) and hr.shape == (12, 3, 64, 64)
    hm = extra["landmarks"]
    assert hm.shape == (12, 5, 32, 32)
    flips = set()
    for b in range(12):
        seen = []
        for k in range(5):
            if hm[b, k].max() < 0.5:                  # point cropped out of the window
                continue
            iy, ix = divmod(int(hm[b, k].argmax()), 32)
            colour = (hr[b, :, 2 * iy:2 * iy + 2, 2 * ix:2 * ix + 2].mean((1, 2)) * 255).round()
            near = [j for j, c in enumerate(colours) if torch.allclose(colour, torch.tensor(c, dtype=torch.float32), atol=40)]
            assert near, (b, k, colour)
            seen.append((k, near[0]))
        # unflipped: point k lies on dot k; flipped: on the mirrored partner's dot (left/right swapped)
        flipped = all(j == FLIP_ORDER[k] for k, j in seen)
        assert flipped or all(j == k for k, j in seen), (b, seen)
        flips.add(flipped and any(k != FLIP_ORDER[k] for k, _ in seen))
        if hm[b, 0].max() > 0.5 and hm[b, 1].max() > 0.5:   # the subject's right eye stays image-left
            assert int(hm[b, 0].argmax()) % 32 < int(hm[b, 1].argmax()) % 32
    assert flips == {True, False}                     # both cases were drawn


# ---------------------------------------------------------------------------------------- face archs
def _trains(net, spec, batch, steps=4):
    tr = Trainer(net, spec, total_steps=steps, lr=1e-3, schedule="constant", amp=False)
    losses = [tr.train_step(*batch[:2], **(batch[2] if len(batch) > 2 else {})) for _ in range(steps)]
    assert all(math.isfinite(v) for v in losses)
    return losses


def test_fsrnet_trains_with_landmark_prior():
    torch.manual_seed(0)
    net, spec = build_fsrnet(channels=8, n_blocks=1, coarse_blocks=1, decoder_blocks=1, prior_stem=8,
                             prior_width=8, prior_blocks=1, stacks=1, hourglass_depth=2)
    assert spec.arch == "fsrnet" and spec.scale == 8 and spec.hyperparams["parsing"] == 0
    hr = torch.rand(1, 3, 128, 128)
    pts = torch.tensor([[[40.0, 50], [88, 50], [64, 70], [45, 95], [83, 95]]])
    batch = (degrade(hr, 8), hr, {"landmarks": heatmaps(pts, 64, 128)})
    assert net.forward_all(batch[0])["landmarks"][0].shape == (1, 5, 64, 64)
    losses = _trains(net, spec, batch)
    assert losses[-1] < losses[0], losses


def test_superfan_trains():
    torch.manual_seed(0)
    net, spec = build_superfan(scale=4, channels=16, n_blocks=2)
    assert spec.arch == "superfan" and spec.scale == 4
    hr = torch.rand(2, 3, 64, 64)
    losses = _trains(net, spec, (degrade(hr, 4), hr))
    assert net(torch.rand(1, 3, 16, 16)).shape == (1, 3, 64, 64)
    assert losses[-1] < losses[0], losses


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["fsrnet", "superfan"])
def test_train_job_face_archs(tmp_path, monkeypatch, arch):
    """jobs/train.py --arch fsrnet|superfan --faces: a few steps on a folder of faces (landmarks by
    YuNet for FSRNet, cached), checkpoint and export that models.load reads back."""
    import cv2
    try:
        yunet_model()
    except FileNotFoundError as e:
        pytest.skip(str(e))
    monkeypatch.setenv("RAYSCALE_CACHE", str(tmp_path / "cache"))
    import pipeline.face_data as fd
    monkeypatch.setattr(fd, "CACHE_DIR", tmp_path / "cache")
    src = shared_path("data", "faces_train", "utkface")
    d = tmp_path / "faces"
    d.mkdir()
    for p in sorted(src.iterdir())[:6]:
        cv2.imwrite(str(d / (p.stem.replace(" ", "_") + ".png")), cv2.imread(str(p)))
    from jobs.train import main
    scale = 8 if arch == "fsrnet" else 4
    out = tmp_path / f"{arch}.safetensors"
    rc = main(["--train", str(d), "--faces", "--arch", arch, "--scale", str(scale), "--patch", "16",
               "--batch", "2", "--steps", "3", "--channels", "16", "--blocks", "1", "--val-holdout", "1",
               "--val-every", "3", "--ckpt", str(tmp_path / "c.pt"), "--export", str(out), "--threads", "1",
               "--no-amp"])
    assert rc == 0
    if arch == "fsrnet":
        assert list((tmp_path / "cache").glob("yunet5-*.npz"))
    net, spec = models.load(str(out))
    assert (spec.arch, spec.scale) == (arch, scale)

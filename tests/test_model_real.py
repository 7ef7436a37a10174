"""The real-world defaults (rayscale-real-x2/-x4, fine-tuned on pipeline/degrade.py's degradations)
against bicubic on held-out images degraded by the fixed evaluation pipeline (Gaussian blur,
MATLAB bicubic, AWGN 10/255, JPEG 75), and the degradation pipeline's own contract."""
import numpy as np
import pytest
import torch

import models
from models.training import psnr_y
from pipeline.degrade import fixed_lr, real_lr

MARGIN_DB = {2: 0.5, 4: 0.8}       # rayscale-real-xS over bicubic on the degraded image, PSNR-Y


def _hr(name: str) -> torch.Tensor:
    import cv2
    from tests.conftest import shared_path
    a = cv2.imread(str(shared_path("data", "Set14", "HR", name)))[:, :, ::-1].copy()
    return torch.from_numpy(a).permute(2, 0, 1).float() / 255


def test_real_lr_shapes_range_and_reproducibility():
    hr = torch.rand(3, 96, 80, generator=torch.Generator().manual_seed(0))
    outs = []
    for _ in range(2):
        g = torch.Generator().manual_seed(7)
        outs.append([real_lr(hr, 2, g) for _ in range(12)])     # 12 draws: codec, JPEG, noise paths
    for a, b in zip(*outs):
        assert a.shape == (3, 48, 40) and a.dtype == torch.float32
        assert float(a.min()) >= 0 and float(a.max()) <= 1
        assert torch.equal(a, b)
    assert real_lr(hr, 4, torch.Generator().manual_seed(1)).shape == (3, 24, 20)


def test_video_codec_step_is_lossy_but_close():
    from pipeline.degrade import encode_video_frame
    y, x = np.mgrid[0:48, 0:64]
    img = np.stack([(x * 4) % 256, (y * 5) % 256, ((x + y) * 3) % 256], -1).astype(np.uint8)
    for codec in ("libx264", "libx265"):
        out = encode_video_frame(img, codec, crf=30)
        assert out.shape == img.shape and out.dtype == np.uint8
        err = np.abs(out.astype(int) - img).mean()
        assert 0 < err < 25, (codec, err)


@pytest.mark.parametrize("scale", [2, 4])
def test_real_default_beats_bicubic_on_a_degraded_image(scale):
    name = f"rayscale-real-x{scale}"
    if name not in models.shipped_weights():
        pytest.skip(f"{name} is not shipped")
    from models.imresize import imresize
    from operators.upscale import Upscaler
    hr = _hr("zebra.png")
    h, w = (hr.shape[1] // scale) * scale, (hr.shape[2] // scale) * scale
    hr = hr[:, :h, :w]
    lr = fixed_lr(hr, scale)
    lr8 = (lr.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    op = Upscaler(name, device="cpu")
    sr = torch.from_numpy(op({"frames": lr8[None], "index": np.zeros(1, np.int64)})["frames"][0]).permute(2, 0, 1).float() / 255
    bic = imresize(torch.from_numpy(lr8).permute(2, 0, 1).float() / 255, scale).clamp(0, 1)
    p_sr, p_bic = psnr_y(sr, hr, scale), psnr_y(bic, hr, scale)
    assert p_sr >= p_bic + MARGIN_DB[scale], (p_sr, p_bic)


def test_real_x2_stays_within_1db_of_rayscale_x2_on_clean_set5():
    """No over-/under-processing of clean (bicubic-only) input: Set5 x2 mean PSNR-Y."""
    if "rayscale-real-x2" not in models.shipped_weights():
        pytest.skip("rayscale-real-x2 is not shipped")
    import cv2
    from operators.upscale import Upscaler
    from tests.conftest import shared_path
    hr_dir = shared_path("data", "Set5", "HR")
    ops = {n: Upscaler(n, device="cpu") for n in ("rayscale-x2", "rayscale-real-x2")}
    vals = {n: [] for n in ops}
    for hp in sorted(hr_dir.glob("*.png")):
        lr = cv2.imread(str(hr_dir.parent / "LR_bicubic" / "X2" / f"{hp.stem}x2.png"))[:, :, ::-1].copy()
        hr = torch.from_numpy(cv2.imread(str(hp))[:, :, ::-1].copy()).permute(2, 0, 1).float() / 255
        for n, op in ops.items():
            sr = op({"frames": lr[None], "index": np.zeros(1, np.int64)})["frames"][0]
            sr = torch.from_numpy(sr).permute(2, 0, 1).float() / 255
            vals[n].append(psnr_y(sr, hr[:, : sr.shape[1], : sr.shape[2]], 2))
    assert np.mean(vals["rayscale-real-x2"]) >= np.mean(vals["rayscale-x2"]) - 1.0, vals

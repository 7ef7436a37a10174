"""--model zssr end to end: shots found, one net trained per shot (Ray tasks), every frame upscaled
by its shot's net; on a clip panned over a real image (Set14 'zebra', LR = MATLAB bicubic x1/2 of the
HR crops, stored losslessly) the output beats bicubic against the HR crops."""
from fractions import Fraction

import av
import cv2
import numpy as np
import pytest
import torch

from jobs import upscale_video
from models.imresize import imresize
from models.zssr import ZSSRNet
from operators.zssr import ZSSRUpscaler, parse_budget
from pipeline.synth import pattern
from tests.conftest import SHARED
from tests.media import frames, psnr

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("local_ray")]
W, H, N = 240, 160, 6          # HR frame size, frames


def write_lossless(path, rgb_frames):
    out = av.open(str(path), "w")
    vs = out.add_stream("ffv1", rate=Fraction(25))
    vs.height, vs.width = rgb_frames[0].shape[:2]
    vs.pix_fmt = "bgr0"
    vs.time_base = vs.codec_context.time_base = Fraction(1, 25)
    for i, f in enumerate(rgb_frames):
        vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")
        vf.pts = i
        out.mux(vs.encode(vf.reformat(format="bgr0")))
    out.mux(vs.encode(None))
    out.close()
    return str(path)


def hr_frames():
    """HR ground truth: a window panned 3 px per frame over a real image (None without ../shared)."""
    p = SHARED / "data" / "Set14" / "HR" / "zebra.png"
    if not p.is_file():
        return None
    img = cv2.cvtColor(cv2.imread(str(p), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    return [img[100:100 + H, 150 + 3 * i:150 + 3 * i + W] for i in range(N)]


def test_parse_budget():
    assert parse_budget("500") == (500, None)
    assert parse_budget("30s") == (None, 30.0)
    assert parse_budget(" 2.5S ") == (None, 2.5)
    for bad in ("", "abc", "0", "-3", "s", "10m"):
        with pytest.raises(ValueError):
            parse_budget(bad)


def test_operator_routes_frames_to_their_shot_net():
    torch.manual_seed(0)
    zero = {k: torch.zeros_like(v) for k, v in ZSSRNet().state_dict().items()}
    bright = {k: v.clone() for k, v in zero.items()}
    bright["filter_7.weight"][:, :, 1, 1] = 0          # residual = bias-free conv of ReLU(...): zero
    op = ZSSRUpscaler(2, [(0, 4), (5, 9)], [zero, {"state_dict": bright}], back_projection_iters=0)
    assert [op.shot_of(i) for i in (0, 4, 5, 9, 12)] == [0, 0, 1, 1, 1]
    f = np.stack([pattern(i, 24, 16) for i in range(3)])
    out = op({"frames": f, "index": np.array([3, 4, 6]), "pts": np.array([3, 4, 6])})
    assert out["frames"].shape == (3, 32, 48, 3) and out["frames"].dtype == np.uint8
    # a zero net leaves MATLAB bicubic
    ref = np.clip(np.round(imresize(f[0].astype(np.float32) / 255, 2) * 255), 0, 255)
    assert np.abs(out["frames"][0].astype(float) - ref).max() <= 1
    assert set(out) == {"frames", "index", "pts"}         # columns only: the engine times stages


def test_zssr_video_job(tmp_path):
    hr = hr_frames()
    if hr is not None:
        lr = [imresize(h, 0.5) for h in hr]                # uint8 in, rounded like MATLAB
    else:
        lr = [pattern(i, W // 2, H // 2) for i in range(N)]
    src = write_lossless(tmp_path / "lr.mkv", lr)
    out = str(tmp_path / "sr.mkv")
    rc = upscale_video.main([src, out, "--model", "zssr", "--scale", "2", "--budget", "150",
                             "--zssr-frames-per-shot", "2", "--encoder", "ffv1", "--batch-size", "3",
                             "--segment-frames", "3", "--no-progress"])
    assert rc == 0
    sr = frames(out)
    assert sr.shape == (N, H, W, 3)
    if hr is None:
        pytest.skip("PSNR part needs ../shared (Set14/HR/zebra.png)")
    lr_dec = frames(src)
    assert np.array_equal(lr_dec, np.stack(lr))               # the source really is lossless
    b = 2
    crop = (slice(None), slice(b, -b), slice(b, -b))
    gt = np.stack(hr)[crop]
    bic = np.stack([np.clip(np.round(imresize(f.astype(np.float64), 2)), 0, 255) for f in lr_dec])[crop]
    p_sr, p_bic = psnr(sr[crop], gt), psnr(bic, gt)
    print(f"zssr video: {p_sr:.2f} dB, bicubic {p_bic:.2f} dB")
    assert p_sr > p_bic + 0.3, (p_sr, p_bic)

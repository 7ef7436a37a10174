"""pipeline.metrics against hand-computed values, an independent SSIM (scipy, written from Wang et
al.'s formula) and the per-image bicubic PSNRs the SRCNN paper publishes for Set5 x2."""
import math

import numpy as np
import pytest
from scipy.signal import convolve2d

from pipeline.imageio import read_image
from pipeline.metrics import is_grey, item_metrics, psnr, quality, rgb2y, ssim, y_metrics
from tests.conftest import shared_path


def ssim_reference(x, y, peak=255.0):
    """ssim_index.m: 11x11 Gaussian (sigma 1.5) normalised to sum 1, filter2 'valid', mean of the map."""
    r = np.arange(11) - 5
    w = np.exp(-(r[:, None] ** 2 + r[None, :] ** 2) / (2 * 1.5 ** 2))
    w /= w.sum()
    c1, c2 = (0.01 * peak) ** 2, (0.03 * peak) ** 2
    f = lambda t: convolve2d(t, w[::-1, ::-1], mode="valid")   # noqa: E731 - filter2 is correlation
    mx, my = f(x), f(y)
    sxx, syy, sxy = f(x * x) - mx ** 2, f(y * y) - my ** 2, f(x * y) - mx * my
    return float((((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx ** 2 + my ** 2 + c1) * (sxx + syy + c2))).mean())


def test_constant_shift_psnr_on_y_by_hand():
    rng = np.random.default_rng(0)
    a = rng.integers(10, 240, (48, 40, 3)).astype(np.uint8)
    b = a + np.uint8(5)                              # every channel +5 -> Y + 5 * 219 / 255
    dy = 5 * (65.481 + 128.553 + 24.966) / 255
    p, s = y_metrics(b, a, scale=2)
    assert p == pytest.approx(10 * math.log10(255 ** 2 / dy ** 2), abs=1e-9)
    assert item_metrics(b, a, 2, grey=False)[0] == pytest.approx(p)


def test_ssim_self_is_one_and_matches_reference_formula():
    rng = np.random.default_rng(1)
    x = rng.uniform(0, 255, (60, 70))
    assert ssim(x, x) == pytest.approx(1.0, abs=1e-12)
    y = np.clip(x + rng.normal(0, 20, x.shape), 0, 255)
    assert ssim(x, y) == pytest.approx(ssim_reference(x, y), abs=1e-9)
    # a real photo against its blurred self
    photo = rgb2y(read_image(shared_path("data", "Set14", "HR", "baboon.png")).rgb)[:120, :120]
    blurred = convolve2d(photo, np.ones((3, 3)) / 9, mode="same", boundary="symm")
    assert ssim(photo, blurred, shave=4) == pytest.approx(ssim_reference(photo[4:-4, 4:-4], blurred[4:-4, 4:-4]),
                                                          abs=1e-9)


def test_shave_drops_borders():
    a = np.zeros((20, 20))
    b = a.copy()
    b[:3] = 50
    assert psnr(a, b, shave=3) == math.inf and psnr(a, b, shave=2) < 30


def test_16bit_on_the_8bit_scale_and_reference_crop():
    rng = np.random.default_rng(2)
    hr = rng.integers(0, 256, (50, 44, 3)).astype(np.uint8)
    sr = np.clip(hr.astype(int) + rng.integers(-3, 4, hr.shape), 0, 255).astype(np.uint8)
    p8 = item_metrics(sr, hr, 2)
    p16 = item_metrics(sr.astype(np.uint16) * 257, hr.astype(np.uint16) * 257, 2)
    assert p16 == pytest.approx(p8)
    big = np.concatenate([hr, np.zeros((3, 44, 3), np.uint8)])          # HR not a multiple of the scale
    assert item_metrics(sr, big, 2) == pytest.approx(p8)


def test_grey_reference_compared_on_grey_values():
    rng = np.random.default_rng(3)
    g = rng.integers(0, 256, (40, 40)).astype(np.uint8)
    hr = np.repeat(g[..., None], 3, 2)
    sr = np.repeat(np.clip(g.astype(int) + 2, 0, 255).astype(np.uint8)[..., None], 3, 2)
    assert is_grey(hr) and not is_grey(np.dstack([g, g, g // 2]))
    assert item_metrics(sr, hr, 2)[0] == pytest.approx(10 * math.log10(255 ** 2 / psnr_mse(sr[..., 0], g, 2)))


def psnr_mse(a, b, s):
    return float(np.mean((a[s:-s, s:-s].astype(float) - b[s:-s, s:-s]) ** 2))


def test_bicubic_baseline_matches_srcnn_table_set5_x2():
    """SRCNN (TPAMI 2016) Table: bicubic x2 baby 37.07, bird 36.81, butterfly 27.43, head 34.86, woman 32.14."""
    published = {"baby": 37.07, "bird": 36.81, "butterfly": 27.43, "head": 34.86, "woman": 32.14}
    for name, want in published.items():
        lr = read_image(shared_path("data", "Set5", "LR_bicubic", "X2", f"{name}x2.png")).rgb
        hr = read_image(shared_path("data", "Set5", "HR", f"{name}.png")).rgb
        q = quality(hr[: 2 * lr.shape[0], : 2 * lr.shape[1]], hr, 2, lr)
        assert q["psnr"] == math.inf and q["ssim"] == pytest.approx(1.0)
        assert q["psnr_bicubic"] == pytest.approx(want, abs=0.03), name
        assert 0.85 < q["ssim_bicubic"] < 0.98


# ------------------------------------------------------------------------------ report

def test_report_files_from_set5(tmp_path, capsys):
    """A run on Set5 x2 with bicubic as the 'model' and a slightly worse baseline, plus one failure."""
    import json

    from PIL import Image

    from pipeline.metrics import bicubic
    from pipeline.report import detail_window, pick_items, write_report
    rows, crops = [], {}
    for name in ("baby", "bird", "butterfly", "head", "woman"):
        lr = read_image(shared_path("data", "Set5", "LR_bicubic", "X2", f"{name}x2.png")).rgb
        hr = read_image(shared_path("data", "Set5", "HR", f"{name}.png")).rgb
        up = bicubic(lr, 2)
        worse = np.clip(up.astype(int) + 4, 0, 255).astype(np.uint8)
        p, s = item_metrics(up, hr, 2)
        pb, sb = item_metrics(worse, hr, 2)
        rows.append({"item": f"Set5/{name}.png", "status": "done", "psnr": p, "ssim": s,
                     "psnr_bicubic": pb, "ssim_bicubic": sb, "seconds": 0.5})
        crops[f"Set5/{name}.png"] = (worse, up, hr[: up.shape[0], : up.shape[1]])
    rows.append({"item": "Set5/bad.png", "status": "failed", "error": "Set5/bad.png: empty file (0 bytes)"})
    assert [it for _, it in pick_items(rows, 1)] == ["Set5/butterfly.png", "Set5/baby.png"]
    out = write_report(tmp_path, rows, crops=crops, n_crops=2, wall_seconds=2.0)
    assert set(out["paths"]) == {"report.txt", "report.json", "quality.png", "crops.png"}
    j = json.loads((tmp_path / "report.json").read_text())
    assert j["summary"]["by_status"] == {"done": 5, "failed": 1}
    assert j["summary"]["psnr"] == pytest.approx(np.mean([r["psnr"] for r in rows[:5]]))
    assert 33.6 < j["summary"]["psnr"] < 33.7                       # Set5 x2 bicubic, published 33.66
    assert j["summary"]["items_per_second"] == pytest.approx(2.5)
    txt = (tmp_path / "report.txt").read_text()
    assert txt.splitlines()[2].startswith("Set5/butterfly.png")     # worst first
    assert "failed: Set5/bad.png: empty file (0 bytes)" in txt
    assert "Set5/bad.png" in capsys.readouterr().out
    q, c = Image.open(tmp_path / "quality.png"), Image.open(tmp_path / "crops.png")
    assert q.format == c.format == "PNG" and q.size[0] > 300 and c.size[1] > c.size[0]   # 4 rows of 3 crops
    # the detail window lands on the textured square of a flat image
    img = np.full((200, 200), 128, np.uint8)
    img[120:160, 30:70] = np.random.default_rng(0).integers(0, 256, (40, 40))
    y, x = detail_window(img, 40)
    assert abs(y - 120) <= 2 and abs(x - 30) <= 2


def test_report_without_metrics_and_infinite_psnr(tmp_path):
    import json

    from pipeline.report import write_report
    rows = [{"item": "a.jpg", "status": "done", "seconds": 1.0},
            {"item": "b.jpg", "status": "done", "psnr": math.inf, "ssim": 1.0, "seconds": 1.0}]
    out = write_report(tmp_path, rows, echo=False)
    assert "crops.png" not in out["paths"]
    j = json.loads((tmp_path / "report.json").read_text())
    assert j["items"][1]["psnr"] == "inf" and j["summary"]["by_status"] == {"done": 2}
    assert write_report(tmp_path / "none", rows[:1], echo=False)["paths"].keys() == {"report.txt", "report.json"}


def test_report_crops_from_a_loader_given_the_row(tmp_path):
    from pipeline.report import write_report
    rng = np.random.default_rng(4)
    ref = rng.integers(0, 256, (64, 64, 3)).astype(np.uint8)
    seen = []

    def load(row):
        seen.append(row["item"])
        if row["item"] == "broken.png":
            raise FileNotFoundError("output gone")
        return ref, ref, ref

    rows = [{"item": n, "status": "done", "psnr": p, "ssim": 0.9, "output": f"/out/{n}"}
            for n, p in (("a.png", 30.0), ("broken.png", 20.0), ("c.png", 40.0))]
    with pytest.warns(UserWarning, match="broken.png left out"):
        out = write_report(tmp_path, rows, crops=load, n_crops=1, echo=False)
    assert seen == ["broken.png", "c.png"] and "crops.png" in out["paths"]

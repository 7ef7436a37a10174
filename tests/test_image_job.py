"""jobs/upscale_images.py and jobs/upscale_dataset.py end to end on an embedded Ray: real photos
from ../shared and files made here (EXIF orientation, alpha, 16 bits, grayscale, bad inputs)."""
import os
import shutil
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from jobs import upscale_dataset, upscale_images
from pipeline.manifest import Manifest
from tests.conftest import shared_path

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("local_ray")]


def run(*args, job=upscale_images):
    return job.main([str(a) for a in args] + ["--no-progress"])


def bomb_png(path: Path, w=30000, h=30000):
    """A tiny PNG whose header claims w x h pixels."""
    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b""))


def make_archive(root: Path) -> dict:
    """A small archive: a grey PNG, an RGBA PNG, a 16-bit PNG, a JPEG with EXIF orientation 6,
    and bad files. Returns what each good file should become."""
    (root / "a" / "b").mkdir(parents=True)
    rng = np.random.default_rng(0)
    grey = rng.integers(0, 255, (20, 30), np.uint8)
    Image.fromarray(grey, "L").save(root / "grey.png")
    rgba = rng.integers(0, 255, (16, 24, 4), np.uint8)
    rgba[..., 3] = 0
    rgba[4:12, 6:18, 3] = 255
    Image.fromarray(rgba, "RGBA").save(root / "a" / "alpha.png")
    deep = (rng.integers(0, 65535, (12, 14, 3))).astype(np.uint16)
    cv2.imwrite(str(root / "a" / "b" / "deep.png"), deep[..., ::-1])
    # orientation 6 = the camera was turned: stored 40 wide x 20 high, shown 20 wide x 40 high
    stored = np.zeros((20, 40, 3), np.uint8)
    stored[:, :20] = (255, 0, 0)                # left half red as stored
    exif = Image.Exif()
    exif[0x0112] = 6
    exif[0x010F] = "rayscale-test-camera"
    Image.fromarray(stored).save(root / "a" / "turned.jpg", exif=exif.tobytes(), quality=95)
    (root / "text.png").write_text("not an image at all")
    (root / "zero.jpg").write_bytes(b"")
    (root / "one.png").write_bytes(b"")
    Image.fromarray(np.zeros((1, 1, 3), np.uint8)).save(root / "one.png")
    bomb_png(root / "bomb.png")
    data = (root / "a" / "turned.jpg").read_bytes()
    (root / "cut.jpg").write_bytes(data[: len(data) // 2])
    return {"grey.png": grey, "a/alpha.png": rgba, "a/b/deep.png": deep, "a/turned.jpg": None}


def test_archive_kept_metadata_bad_inputs_and_rerun(tmp_path, capsys):
    src, dst = tmp_path / "src", tmp_path / "dst"
    good = make_archive(src)
    assert run(src, dst, "--model", "bicubic", "--scale", "2") == 1      # some items failed
    err = capsys.readouterr().err
    for name, reason in [("text.png", "not an image"), ("zero.jpg", "empty"), ("one.png", "too small"),
                         ("bomb.png", "decompression bomb"), ("cut.jpg", "truncated")]:
        line = next((x for x in err.splitlines() if name in x and x.startswith("error:")), None)
        assert line and reason in line.lower(), (name, err)
    g = Image.open(dst / "grey.png")
    assert g.mode == "L" and g.size == (60, 40)
    assert np.abs(np.asarray(g).astype(int) - cv2.resize(good["grey.png"], None, fx=2, fy=2,
                                                        interpolation=cv2.INTER_CUBIC)).max() <= 1
    a = Image.open(dst / "a" / "alpha.png")
    assert a.mode == "RGBA" and a.size == (48, 32)
    al = np.asarray(a)[..., 3]
    assert al[14:18, 18:30].min() == 255 and al[:4].max() == 0          # inside/outside the opaque box
    d = cv2.imread(str(dst / "a" / "b" / "deep.png"), cv2.IMREAD_UNCHANGED)
    assert d.dtype == np.uint16 and d.shape == (24, 28, 3)
    ref = cv2.resize(good["a/b/deep.png"], None, fx=2, fy=2, interpolation=cv2.INTER_CUBIC)
    assert np.abs(d[..., ::-1].astype(int) - ref.astype(int)).mean() < 2    # 16-bit values, not 8-bit ones
    t = Image.open(dst / "a" / "turned.jpg")
    assert t.size == (40, 80)                                           # shown upright, x2
    assert t.getexif().get(0x0112, 1) == 1 and t.getexif().get(0x010F) == "rayscale-test-camera"
    px = np.asarray(t.convert("RGB")).astype(int)
    assert px[5, 20, 0] > 200 and px[75, 20, 0] < 60                    # red on top after turning 90 cw
    # manifest: one row state per file, failures with their reasons
    latest = Manifest(dst / ".rayscale" / "manifest").latest()
    status = {k: r["status"] for k, r in latest.items()}
    assert status == {"grey.png": "done", "a/alpha.png": "done", "a/b/deep.png": "done", "a/turned.jpg": "done",
                      "text.png": "failed", "zero.jpg": "failed", "one.png": "failed", "bomb.png": "failed",
                      "cut.jpg": "failed"}
    assert all(latest[k]["hash"] for k in good)
    assert not [p for p in dst.rglob("*") if p.name.startswith(".") and p.suffix == ".tmp"]
    # rerun: nothing done is rewritten
    mtimes = {k: os.path.getmtime(dst / k) for k in good}
    assert run(src, dst, "--model", "bicubic", "--scale", "2") == 1
    assert {k: os.path.getmtime(dst / k) for k in good} == mtimes
    out = capsys.readouterr().out
    assert "(4 reused, 5 failed)" in out


def test_output_that_is_its_input_is_refused(tmp_path, capsys):
    src = tmp_path / "s"
    src.mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(src / "x.png")
    assert run(src, src, "--model", "bicubic", "--scale", "2", "--overwrite") == 2
    assert "replace its input" in capsys.readouterr().err
    assert np.asarray(Image.open(src / "x.png")).shape == (8, 8, 3)


def test_dataset_runs_diff_the_tree_and_measure_quality(tmp_path, capsys):
    hr = shared_path("data", "Set5", "HR")
    src, dst = tmp_path / "hr", tmp_path / "out"
    src.mkdir()
    for n in ("bird.png", "butterfly.png"):
        shutil.copy(hr / n, src / n)
    assert run(src, dst, "--downscale", "2", "--model", "rayscale-x2", job=upscale_dataset) == 0
    state = Manifest(dst / ".rayscale" / "manifest").latest()
    for n in ("bird.png", "butterfly.png"):
        r = state[n]
        assert r["status"] == "done"
        assert r["psnr"] > r["psnr_bicubic"] + 1.0, r             # the shipped model beats bicubic
    # published bicubic x2 (SRCNN table): bird 36.81 dB, butterfly 27.43 dB
    assert abs(state["bird.png"]["psnr_bicubic"] - 36.81) < 0.1
    report = next((dst / ".rayscale" / "reports").iterdir())
    assert (report / "run.json").is_file() and (report / "quality.png").is_file()
    capsys.readouterr()
    # second run: one new file, one changed file; the unchanged one is not touched
    shutil.copy(hr / "head.png", src / "head.png")
    img = np.asarray(Image.open(src / "bird.png")).copy()
    img[0, 0] = 255 - img[0, 0]
    Image.fromarray(img).save(src / "bird.png")
    before = os.path.getmtime(dst / "butterfly.png")
    assert run(src, dst, "--downscale", "2", "--model", "rayscale-x2", job=upscale_dataset) == 0
    out = capsys.readouterr().out
    assert "2 to process (new 1, changed 1" in out
    assert os.path.getmtime(dst / "butterfly.png") == before

"""The face and SFTGAN routes through the jobs, on the engine: faces.parquet and its counts, the
no-face note, fused and unfused SFTGAN giving the same pixels, segmentation maps saved."""
import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from jobs import restore_faces, upscale_images
from pipeline import annotations
from tests.conftest import shared_path

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("local_ray")]


def test_faces_table_counts_and_the_no_face_note(tmp_path, capsys):
    src = tmp_path / "src"
    src.mkdir()
    group = Image.open(shared_path("data", "faces", "codeformer", "whole_imgs", "00.jpg")).convert("RGB")
    # a half-size copy: faces of 16-21 px wide (YuNet's boxes), three the size the x4 face model is for
    group.resize((group.width // 2, group.height // 2), Image.BICUBIC).save(src / "small_group.png")
    Image.open(shared_path("data", "Set5", "HR", "butterfly.png")).save(src / "butterfly.png")
    dst = tmp_path / "out"
    assert restore_faces.main([str(src), str(dst), "--scale", "2", "--face-model", "rayscale-x4", "--gallery",
                               "--no-progress"]) == 0
    out = capsys.readouterr().out
    t = pq.read_table(dst / "faces.parquet")
    per_source = {s: n for s, n in zip(*np.unique(t["source"].to_numpy(zero_copy_only=False), return_counts=True))}
    assert per_source == {str(src / "small_group.png"): 4}          # four people in codeformer 00, none on the butterfly
    assert set(t.column_names) >= {"source", "frame", "track", "box", "landmarks", "score", "face_model"}
    # the 19 px face would be shrunk into the 16 px crop below zoom 0.7: left to the background
    assert sorted(t["background"].to_pylist(), key=str) == [None, None, None, annotations.TOO_LARGE]
    assert sum(t["restored"].to_pylist()) == 3 and (dst / "faces_gallery.png").is_file()
    assert "4 face(s)" in out
    assert Image.open(dst / "small_group.png").size == (group.width // 2 * 2, group.height // 2 * 2)
    # a folder without faces: the plain upscale, and the summary says so
    src2, dst2 = tmp_path / "nofaces", tmp_path / "out2"
    src2.mkdir()
    Image.open(shared_path("data", "Set5", "HR", "butterfly.png")).save(src2 / "butterfly.png")
    assert upscale_images.main([str(src2), str(dst2), "--faces", "--scale", "2", "--face-model", "rayscale-x4",
                                "--no-progress"]) == 0
    assert "no face found" in capsys.readouterr().out
    assert pq.read_table(dst2 / "faces.parquet").num_rows == 0


def test_faces_note_says_why_none_was_restored_and_no_part_is_left(tmp_path, capsys):
    """Issue 24: `--faces` on an ordinary photo (faces 33-42 px, too large for the face model)
    restored nothing and `--gallery` wrote nothing without saying why; the faces parts stayed in
    DST/.rayscale/faces/ after the job. Now one line says how many faces and why none was restored,
    and the finished job leaves no part there (the rerun after a kill: tests/test_face_annotations.py)."""
    src, dst = tmp_path / "src", tmp_path / "out"
    src.mkdir()
    group = Image.open(shared_path("data", "faces", "codeformer", "whole_imgs", "00.jpg"))
    group.convert("RGB").save(src / "group.png")
    assert upscale_images.main([str(src), str(dst), "--faces", "--model", "bicubic", "--scale", "2", "--gallery",
                                "--no-progress"]) == 0
    line = [x for x in capsys.readouterr().out.splitlines() if "face(s) found" in x]
    assert len(line) == 1 and "4 face(s) found" in line[0] and "0 restored" in line[0]
    assert "4 too large" in line[0] and "no gallery written" in line[0]
    assert not (dst / "faces_gallery.png").exists() and pq.read_table(dst / "faces.parquet").num_rows == 4
    left = [p.name for p in (dst / ".rayscale" / "faces").iterdir()]
    assert not [n for n in left if n.endswith((".faces.parquet", ".gallery.npy", ".tmp"))], left


def test_sftgan_route_fused_and_unfused_agree_and_maps_are_saved(tmp_path):
    from tests.test_sftgan_route import seg_random_sd, sft_small_sd
    from models.sftgan import VARIANT_PYTORCH
    torch.save(seg_random_sd(), tmp_path / "seg.pth")
    torch.save(sft_small_sd(VARIANT_PYTORCH), tmp_path / "sft.pth")
    src = tmp_path / "src"
    src.mkdir()
    hr = Image.open(shared_path("data", "outdoor", "OST", "OST_013.png")).convert("RGB")
    hr.crop((0, 0, 96, 64)).save(src / "ost.png")
    outs = {}
    for fuse in (True, False):
        dst = tmp_path / f"out_{fuse}"
        args = [str(src), str(dst), "--model", "sftgan", "--weights", str(tmp_path / "sft.pth"),
                "--seg-weights", str(tmp_path / "seg.pth"), "--no-progress",
                "--save-segmentation", str(tmp_path / f"seg_{fuse}")]
        assert upscale_images.main(args + ([] if fuse else ["--no-fuse"])) == 0
        outs[fuse] = np.asarray(Image.open(dst / "ost.png")).astype(int)
        legend = Image.open(tmp_path / f"seg_{fuse}" / "ost.png")
        assert legend.width >= 96 * 4                                  # the map at the output size, plus the legend
    assert outs[True].shape == (256, 384, 3)
    assert np.abs(outs[True] - outs[False]).max() <= 1                 # unfused maps travel as float16


def test_sftgan_route_on_video_keeps_timestamps_and_audio(tmp_path):
    from jobs import upscale_video
    from models.sftgan import VARIANT_TORCH
    from pipeline.probe import probe
    from pipeline.synth import make_clip
    from tests.media import packets, times
    from tests.test_sftgan_route import seg_random_sd, sft_small_sd
    torch.save(seg_random_sd(), tmp_path / "seg.pth")
    torch.save(sft_small_sd(VARIANT_TORCH), tmp_path / "sft.pth")
    src = make_clip(str(tmp_path / "in.mp4"), frames=12, width=48, height=32, gop=6)
    out = tmp_path / "out.mp4"
    assert upscale_video.main([src, str(out), "--model", "sftgan", "--weights", str(tmp_path / "sft.pth"),
                               "--seg-weights", str(tmp_path / "seg.pth"), "--segment-frames", "6",
                               "--no-progress"]) == 0
    info = probe(str(out))
    assert (info.width, info.height) == (192, 128) and info.frame_count == 12
    assert times(str(out)) == times(src)
    assert packets(str(out), "audio") == packets(src, "audio")


def test_estimated_degradation_is_printed_and_kept_in_the_manifest(tmp_path, capsys):
    import models
    from pipeline.manifest import Manifest
    try:
        models.load("srmd", scale=2)
    except Exception as e:  # noqa: BLE001
        pytest.skip(f"the authors' SRMD weights are not installed ({e})")
    src = tmp_path / "src"
    src.mkdir()
    rng = np.random.default_rng(0)
    hr = np.asarray(Image.open(shared_path("data", "Set5", "HR", "butterfly.png")).convert("RGB")).astype(float)
    noisy = np.clip(hr[::2, ::2] + rng.normal(0, 10, hr[::2, ::2].shape), 0, 255).astype(np.uint8)
    Image.fromarray(noisy).save(src / "noisy.png")
    Image.fromarray(hr[::2, ::2].astype(np.uint8)).save(src / "clean.png")     # same group, its own estimate
    assert upscale_images.main([str(src), str(tmp_path / "out"), "--model", "srmd", "--scale", "2",
                                "--noise", "auto", "--blur", "auto", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "estimated degradation" in out
    latest = Manifest(tmp_path / "out" / ".rayscale" / "manifest").latest()
    assert "estimated degradation" in latest["noisy.png"]["notes"]

    def applied(name):          # the row's own degradation column
        d = json.loads(latest[name]["degradation"])
        return d["blur_sigma"], d["noise"]
    blur, level = applied("noisy.png")
    assert 6 < level < 14, latest["noisy.png"]["notes"]        # 10/255 was added
    assert 0.2 <= blur <= 0.9, latest["noisy.png"]["notes"]    # every other pixel, no blur: SRMD's narrowest
    assert applied("clean.png")[1] < 3, latest["clean.png"]["notes"]


def test_noise_of_jpeg_files_is_read_on_rgb_and_of_png_files_on_the_opponent_channels(tmp_path):
    """The image source marks JPEG rows `lossy` (4:2:0: the codec smoothed the colour channels, the
    luma kept its noise): `--noise auto` reads those on R, G, B, and a PNG on the opponent channels."""
    import cv2
    from models.srmd import SRMD
    from operators.estimate import noise_sigma, opponent_noise
    from pipeline.manifest import Manifest
    torch.manual_seed(0)
    torch.save(SRMD(in_nc=19, nc=4, nb=3, scale=2).state_dict(), tmp_path / "srmd_tiny.pth")
    rng = np.random.default_rng(0)
    tex = cv2.GaussianBlur(rng.standard_normal((96, 96)), (0, 0), 0.8) * 120
    img = np.clip(np.round(120 + tex[:, :, None] + 8 * rng.standard_normal((96, 96, 3))), 0, 255).astype(np.uint8)
    src = tmp_path / "src"
    src.mkdir()
    Image.fromarray(img).save(src / "a.png")
    Image.fromarray(img).save(src / "b.jpg", quality=90)        # Pillow's default: 4:2:0
    jpeg = np.asarray(Image.open(src / "b.jpg").convert("RGB"))
    assert opponent_noise(jpeg) < 0.6 * noise_sigma(jpeg)       # the colour channels lost the noise
    assert upscale_images.main([str(src), str(tmp_path / "out"), "--model", "srmd", "--scale", "2",
                                "--weights", str(tmp_path / "srmd_tiny.pth"), "--blur", "1.0", "--noise", "auto",
                                "--no-progress"]) == 0
    latest = Manifest(tmp_path / "out" / ".rayscale" / "manifest").latest()

    def applied(name):
        return json.loads(latest[name]["degradation"])["noise"]
    assert applied("b.jpg") == pytest.approx(noise_sigma(jpeg), abs=0.06)         # two decimals in the column
    assert applied("a.png") == pytest.approx(opponent_noise(img), abs=0.06) and 7 < applied("a.png") < 9

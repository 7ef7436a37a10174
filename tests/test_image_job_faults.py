"""The image job under faults: writes killed mid-file, a full disk, damaged metadata (an 8 MiB ICC
profile, a corrupt EXIF block) and a DST that is its SRC. Oracles read the disk directly: file
bytes, PNG chunks parsed here, Parquet rows read with pyarrow."""
import errno
import os
import struct
import subprocess
import sys
import time
import warnings
import zlib
from pathlib import Path

import cv2
import numpy as np
import pyarrow.dataset as ds
import pytest
from PIL import Image, ImageCms

from jobs import upscale_dataset, upscale_images
from pipeline.imageio import is_partial_write, read_image, write_image
from pipeline.manifest import Manifest

ROOT = Path(__file__).resolve().parents[1]


def run(*args, job=upscale_images):
    return job.main([str(a) for a in args] + ["--no-progress"])


def noise_png(path: Path, h=24, w=32, seed=0) -> np.ndarray:
    rgb = np.random.default_rng(seed).integers(0, 256, (h, w, 3), np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb).save(path)
    return rgb


def killed_write(folder: Path, name: str) -> Path:
    """The temporary file a write_image SIGKILLed before its rename leaves (the real writer, in a
    process that kills itself at the fsync). Returns it."""
    code = ("import os, signal, sys, numpy as np; from pipeline import imageio\n"
            "os.fsync = lambda fd: os.kill(os.getpid(), signal.SIGKILL)\n"
            "imageio.write_image(sys.argv[1], np.zeros((8, 8, 3), np.uint8))\n")
    before = set(os.listdir(folder)) if folder.exists() else set()
    p = subprocess.run([sys.executable, "-c", code, str(folder / name)], cwd=ROOT,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert p.returncode == -9
    [left] = set(os.listdir(folder)) - before
    return folder / left


@pytest.fixture
def small_disk(tmp_path):
    """A 256 KiB tmpfs (root only; skipped elsewhere), unmounted lazily after the test."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mnt)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)])     # lazy: a Ray worker may still hold a file there


# ------------------------------------------------------------------------------- 5: partial writes

def test_a_killed_write_leaves_a_name_of_the_pattern(tmp_path):
    left = killed_write(tmp_path, "photo.jpg")
    assert left.name.startswith(".photo.jpg.") and left.name.endswith(".tmp")
    assert is_partial_write(left.name)
    for other in (".notes.txt.abcd1234.tmp", "photo.jpg.abcd1234.tmp", ".photo.jpg.tmp", ".photo.jpg.ABCD1234.tmp",
                  ".photo.jpg.abcd1234.tmp.bak"):
        assert not is_partial_write(other), other


# ------------------------------------------------------------------------------- 6: full disk

def test_disk_full_names_the_folder_and_leaves_no_temporary(small_disk):
    with pytest.raises(OSError) as e:
        write_image(small_disk / "a.png", np.random.default_rng(0).integers(0, 256, (400, 400, 3), np.uint8))
    assert e.value.errno == errno.ENOSPC and e.value.filename == str(small_disk / "a.png")
    assert os.listdir(small_disk) == []


# ------------------------------------------------------------------------------- 8: metadata

def big_icc(size=8 << 20) -> bytes:
    """An sRGB profile grown to `size` bytes (incompressible padding, the header's size updated)."""
    icc = bytearray(ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes())
    icc += np.random.default_rng(1).integers(0, 256, size - len(icc), np.uint8).tobytes()
    icc[0:4] = struct.pack(">I", len(icc))
    return bytes(icc)


def png_iccp(path: Path) -> bytes | None:
    """The profile in a PNG's iCCP chunk, parsed here (Pillow itself refuses large ones)."""
    data = path.read_bytes()
    pos = 8
    while pos < len(data):
        n, kind = struct.unpack(">I4s", data[pos:pos + 8])
        if kind == b"iCCP":
            body = data[pos + 8:pos + 8 + n]
            return zlib.decompress(body[body.index(b"\0") + 2:])
        pos += 12 + n
    return None


def corrupt_exif(orientation=6, bad_tags=6) -> bytes:
    """A little-endian EXIF block: a good orientation tag and `bad_tags` tags whose data lie past
    its end (Pillow warns once per such tag)."""
    entries = [struct.pack("<HHIHH", 0x0112, 3, 1, orientation, 0)]
    entries += [struct.pack("<HHII", 0x010E + k, 4, 1000, 0x7FFF0000) for k in range(bad_tags)]
    ifd = struct.pack("<H", len(entries)) + b"".join(entries) + struct.pack("<I", 0)
    return b"Exif\x00\x00II*\x00" + struct.pack("<I", 8) + ifd


def test_png_with_an_8_mib_icc_profile_is_read_and_the_profile_kept(tmp_path):
    icc = big_icc()
    Image.fromarray(np.full((8, 12, 3), 90, np.uint8)).save(tmp_path / "in.png", icc_profile=icc)
    pic = read_image(tmp_path / "in.png")
    assert pic.icc == icc
    write_image(tmp_path / "out.png", pic.rgb, picture=pic)
    assert png_iccp(tmp_path / "out.png") == icc
    write_image(tmp_path / "out.jpg", pic.rgb, picture=pic)
    assert Image.open(tmp_path / "out.jpg").info["icc_profile"] == icc     # JPEG: Pillow has no limit there


@pytest.mark.parametrize("ext", ["jpg", "png"])      # parsed by Pillow at open (JPEG) and on demand (PNG)
def test_corrupt_exif_dropped_with_one_note_naming_the_file(tmp_path, ext):
    stored = np.zeros((8, 16, 3), np.uint8)
    stored[:, :8] = 255
    p = tmp_path / f"in.{ext}"
    Image.fromarray(stored).save(p, exif=corrupt_exif(orientation=6))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pic = read_image(p)
    assert [str(w.message) for w in caught] == []                 # nothing raw reaches stderr
    assert pic.exif is None and len(pic.notes) == 1, pic.notes
    assert pic.notes[0].startswith(f"{p}: EXIF corrupt"), pic.notes
    assert pic.rgb.shape[:2] == (16, 8) and pic.rgb[:8].min() > 200     # the readable orientation applied
    write_image(tmp_path / f"out.{ext}", pic.rgb, picture=pic)
    data = (tmp_path / f"out.{ext}").read_bytes()
    assert b"Exif\x00\x00" not in data and b"eXIf" not in data


# ------------------------------------------------------------------------------- 9: DST is SRC

@pytest.fixture
def no_ray(monkeypatch):
    """Any attempt to start Ray fails the test: these refusals must come before it."""
    def refuse(args):
        raise AssertionError("Ray was started")
    monkeypatch.setattr(upscale_images, "connect_ray", refuse)
    monkeypatch.setattr(upscale_dataset, "connect_ray", refuse)


def tree(root: Path) -> dict:
    return {str(p.relative_to(root)): p.read_bytes() if p.is_file() and not p.is_symlink() else None
            for p in sorted(root.rglob("*"))}


@pytest.mark.usefixtures("no_ray")
def test_dst_that_is_src_is_refused_before_ray_and_nothing_written(tmp_path, capsys):
    src = tmp_path / "photos"
    noise_png(src / "a.png")
    noise_png(src / "sub" / "b.png", seed=1)
    os.symlink(src, tmp_path / "link")
    os.symlink(".", src / "self")                 # a folder inside SRC that is SRC
    before = tree(src)
    cases = [(src, src, upscale_images), (src, tmp_path / "link", upscale_images),
             (src, src / "self", upscale_images), (src, src, upscale_dataset),
             (src / "a.png", src, upscale_images), (src / "a.png", src, upscale_dataset)]  # one image into its own folder
    for s, d, job in cases:
        t0 = time.perf_counter()
        rc = run(s, d, "--model", "bicubic", "--scale", "2", job=job)
        seconds = time.perf_counter() - t0
        err = capsys.readouterr().err
        assert rc == 2, (s, d, err)
        assert len(err.strip().splitlines()) == 1 and str(d) in err, (s, d, err)
        assert seconds < 10, (s, d, seconds)          # 0-2 s (the first, imports); Ray takes 15-35 s to start here
        assert tree(src) == before, (s, d)        # no .rayscale, nothing else
    # a DST inside SRC that is a folder of its own stays allowed (the listing leaves it out)
    assert run(src, src / "out", "--model", "bicubic", "--scale", "2", "--dry-run") == 0
    assert "a.png" in capsys.readouterr().out and not (src / "out").exists()


# ------------------------------------------------------------------------------- jobs on Ray

@pytest.mark.slow
@pytest.mark.usefixtures("local_ray")
def test_partial_writes_removed_and_metadata_faults(tmp_path, capsys):
    """5: a killed run's temporary files are removed by the next run, nothing else is; 8: an 8 MiB
    ICC profile in a PNG is kept byte for byte, a corrupt EXIF block is dropped with one line and
    a manifest note naming the file, and the orientation it still holds is applied."""
    src, dst, outside = tmp_path / "src", tmp_path / "dst", tmp_path / "outside"
    noise_png(src / "a.png")
    noise_png(src / "sub" / "b.png", seed=1)
    icc = big_icc()
    Image.fromarray(np.full((8, 12, 3), 90, np.uint8)).save(src / "icc.png", icc_profile=icc)
    stored = np.zeros((8, 16, 3), np.uint8)
    stored[:, :8] = 255                                # left half white as stored
    Image.fromarray(stored).save(src / "exif.jpg", exif=corrupt_exif(orientation=6), quality=95)

    ours = [killed_write(dst, "a.png"), killed_write(dst / "sub", "b.png")]
    other_job = dst / "other"
    (other_job / ".rayscale").mkdir(parents=True)
    outside.mkdir()
    os.symlink(outside, dst / "link")
    not_ours = [dst / ".notes.txt.abcd1234.tmp", dst / "a.png.abcd1234.tmp", dst / ".a.png.tmp",
                dst / ".a.png.ABCD1234.tmp", other_job / ".x.png.abcd1234.tmp", outside / ".x.png.abcd1234.tmp"]
    for k, p in enumerate(not_ours):
        p.write_bytes(b"not ours %d" % k)

    assert run(src, dst, "--model", "bicubic", "--scale", "2") == 0
    cap = capsys.readouterr()
    text = cap.out + cap.err
    assert not any(p.exists() for p in ours), ours
    assert [p.read_bytes() for p in not_ours] == [b"not ours %d" % k for k in range(len(not_ours))]
    assert "removed 2 partial file(s)" in text, text

    assert png_iccp(dst / "icc.png") == icc
    assert "UserWarning" not in text and "TiffImagePlugin" not in text, text
    exif_lines = [x for x in text.splitlines() if "EXIF" in x]
    assert len(exif_lines) == 1 and str(src / "exif.jpg") in exif_lines[0], text
    out = dst / "exif.jpg"
    assert b"Exif\x00\x00" not in out.read_bytes()     # dropped: no APP1 EXIF in the output
    shown = np.asarray(Image.open(out))
    assert shown.shape[:2] == (32, 16)                  # orientation 6 applied: 16x8 stored -> 8x16 shown, x2
    assert shown[:8, :, 0].mean() > 200 and shown[-8:, :, 0].mean() < 50    # white half now on top
    note = Manifest(dst / ".rayscale" / "manifest").latest()["exif.jpg"]["notes"]
    assert note and "EXIF corrupt" in note and str(src / "exif.jpg") in note, note


def manifest_rows(dst: Path) -> list[dict]:
    return ds.dataset(str(dst / ".rayscale" / "manifest"), format="parquet").to_table(
        columns=["item", "status", "error", "attempts"]).to_pylist()


@pytest.mark.slow
@pytest.mark.usefixtures("local_ray")
def test_full_disk_stops_with_one_line_and_leaves_the_rest_pending(tmp_path, small_disk, capsys):
    """6: DST on a 640 KiB filesystem that holds two or three of the 200 KB outputs: one 'no space
    left on DIR' line, exit 1, no failed row for a good image (the images cut short go back to
    pending, with no attempt used), the bad file's own reason kept; once there is room, a rerun
    writes every good image."""
    subprocess.run(["mount", "-o", "remount,size=640k", str(small_disk)], check=True)
    src, dst = tmp_path / "src", small_disk / "out"
    (src).mkdir()
    (src / "a_bad.png").write_text("not an image at all")
    good = {f"p{k:02d}.png": noise_png(src / f"p{k:02d}.png", 128, 128, seed=k) for k in range(8)}
    assert run(src, dst, "--model", "bicubic", "--scale", "2", "--group-size", "2") == 1
    cap = capsys.readouterr()
    err = cap.err
    full = [x for x in err.splitlines() if "no space left on" in x]
    assert len(full) == 1 and str(dst) in full[0], err
    assert "Traceback" not in err and "failed:" not in cap.out, (cap.out, err)
    rows = manifest_rows(dst)
    failed = [r for r in rows if r["status"] == "failed"]
    assert [r["item"] for r in failed] == ["a_bad.png"] and "not an image" in failed[0]["error"], failed
    pending = [r for r in rows if r["status"] == "pending"]
    assert pending and all(r["attempts"] == 0 for r in pending), rows     # the images the disk cut short
    latest = Manifest(dst / ".rayscale" / "manifest").latest()
    done = {k for k, r in latest.items() if r["status"] == "done"}
    assert 0 < len(done) < len(good), latest                 # the disk filled part way
    assert not [p for p in dst.rglob("*") if is_partial_write(p.name)]

    subprocess.run(["mount", "-o", "remount,size=16m", str(small_disk)], check=True)
    assert run(src, dst, "--model", "bicubic", "--scale", "2", "--group-size", "2") == 1    # the bad file
    latest = Manifest(dst / ".rayscale" / "manifest").latest()
    assert latest["a_bad.png"]["status"] == "failed" and "not an image" in latest["a_bad.png"]["error"]
    for name, rgb in good.items():
        assert latest[name]["status"] == "done", name
        want = cv2.resize(rgb, None, fx=2, fy=2, interpolation=cv2.INTER_CUBIC)
        assert np.abs(np.asarray(Image.open(dst / name)).astype(int) - want).max() <= 1, name

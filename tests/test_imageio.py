"""pipeline.imageio: EXIF orientations against the spec table, metadata and bit depth round trips,
atomic writes, and one clear refusal per kind of bad input. Files are made here with Pillow/cv2
(or taken from ../shared); expected pixels come from the EXIF spec, cv2 or the arrays written."""
import io
import os
import resource
import struct
import warnings
import zlib

import cv2
import numpy as np
import pytest
from PIL import Image, ImageCms, ImageFile, JpegImagePlugin

from pipeline import imageio
from pipeline.errors import InputError
from pipeline.imageio import ImageError, Picture, read_image, upscale_alpha, write_image
from tests.conftest import shared_path

MAKE = 0x010F


def srgb_icc() -> bytes:
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def exif_with(orientation=None, make="RayscaleCam") -> Image.Exif:
    ex = Image.Exif()
    ex[MAKE] = make
    if orientation is not None:
        ex[imageio.ORIENTATION] = orientation
    return ex


# ------------------------------------------------------------------------------ EXIF orientation

def display_from_stored(s: np.ndarray, o: int) -> np.ndarray:
    """The EXIF spec's table (where row 0 / column 0 of the stored image go), pixel by pixel."""
    h, w = s.shape[:2]
    out = np.zeros(((w, h) if o >= 5 else (h, w)) + s.shape[2:], s.dtype)
    for i in range(h):
        for j in range(w):
            r, c = {1: (i, j), 2: (i, w - 1 - j), 3: (h - 1 - i, w - 1 - j), 4: (h - 1 - i, j),
                    5: (j, i), 6: (j, h - 1 - i), 7: (w - 1 - j, h - 1 - i), 8: (w - 1 - j, i)}[o]
            out[r, c] = s[i, j]
    return out


STORED = np.stack([np.arange(20).reshape(4, 5) * 12,                   # every pixel distinct,
                   np.arange(20)[::-1].reshape(4, 5) * 7,              # no symmetry
                   np.tile([0, 255, 9, 77, 130], (4, 1))], -1).astype(np.uint8)


@pytest.mark.parametrize("o", range(1, 9))
def test_exif_orientation_png_exact(tmp_path, o):
    p = tmp_path / f"o{o}.png"
    Image.fromarray(STORED).save(p, exif=exif_with(o))
    pic = read_image(p)
    want = display_from_stored(STORED, o)
    assert np.array_equal(pic.rgb, want)
    assert pic.size == (want.shape[1], want.shape[0])
    ex = Image.Exif()
    ex.load(pic.exif)
    assert ex[imageio.ORIENTATION] == 1 and ex[MAKE] == "RayscaleCam"
    # written back: displayed the same way by any viewer (orientation 1), EXIF carried
    out = tmp_path / f"out{o}.jpg"
    write_image(out, pic.rgb, picture=pic, quality=100, subsampling=0)
    back = Image.open(out)
    assert back.getexif()[imageio.ORIENTATION] == 1 and back.getexif()[MAKE] == "RayscaleCam"
    assert np.abs(np.asarray(back).astype(int) - want).max() <= 12


@pytest.mark.parametrize("o", [3, 6, 8])
def test_exif_orientation_jpeg_blocks(tmp_path, o):
    """The usual case, a camera JPEG: 16x16 blocks so that JPEG's loss stays inside each block."""
    big = np.kron(STORED, np.ones((16, 16, 1), np.uint8))
    p = tmp_path / f"o{o}.jpg"
    Image.fromarray(big).save(p, exif=exif_with(o), quality=100, subsampling=0)
    pic = read_image(p)
    want = display_from_stored(STORED, o)
    centres = pic.rgb[8::16, 8::16]
    assert centres.shape == want.shape
    assert np.abs(centres.astype(int) - want).max() <= 3


# ------------------------------------------------------------------------------ metadata and modes

@pytest.mark.parametrize("ext", ["jpg", "png", "webp", "tif"])
def test_icc_kept_byte_for_byte(tmp_path, ext):
    icc = srgb_icc()
    rgb = np.random.default_rng(0).integers(0, 256, (24, 32, 3)).astype(np.uint8)
    src = tmp_path / f"in.{ext}"
    Image.fromarray(rgb).save(src, icc_profile=icc)
    pic = read_image(src)
    assert pic.icc == icc
    out = tmp_path / f"out.{ext}"
    write_image(out, pic.rgb, picture=pic)
    assert Image.open(out).info["icc_profile"] == icc
    assert read_image(out).icc == icc


@pytest.mark.parametrize("ext", ["png", "webp", "tif"])
def test_rgba_alpha_kept(tmp_path, ext):
    rng = np.random.default_rng(1)
    rgba = rng.integers(0, 256, (20, 30, 4)).astype(np.uint8)
    src = tmp_path / f"in.{ext}"
    Image.fromarray(rgba, "RGBA").save(src, **({"lossless": True} if ext == "webp" else {}))
    pic = read_image(src)
    assert pic.mode == "RGBA"
    if ext != "webp":          # lossless WebP drops the colour of fully transparent pixels
        assert np.array_equal(pic.rgb, rgba[..., :3])
    assert np.array_equal(pic.alpha, rgba[..., 3])
    out = tmp_path / f"out.{ext}"
    write_image(out, pic.rgb, pic.alpha, picture=pic, **({"lossless": True} if ext == "webp" else {}))
    back = np.asarray(Image.open(out))
    assert back.shape == (20, 30, 4) and np.array_equal(back[..., 3], rgba[..., 3])


def test_alpha_flattened_with_warning(tmp_path):
    rgb = np.zeros((4, 4, 3), np.uint8)
    rgb[..., 0] = 200
    alpha = np.zeros((4, 4), np.uint8)
    alpha[:, 2:] = 255
    for ext in ("jpg", "bmp"):
        with pytest.warns(UserWarning, match="holds no alpha"):
            write_image(tmp_path / f"f.{ext}", rgb, alpha)
    back = np.asarray(Image.open(tmp_path / "f.bmp"))
    assert (back[:, :2] == 255).all()                                  # transparent -> white background
    assert (back[:, 2:] == [200, 0, 0]).all()                          # opaque -> the colour


def test_palette_with_transparency_becomes_rgba(tmp_path):
    im = Image.new("P", (8, 6))
    im.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    px = np.zeros((6, 8), np.uint8)
    px[:, 4:] = 1
    im = Image.fromarray(px, "P")
    im.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    im.info["transparency"] = 0
    im.save(tmp_path / "p.png", transparency=0)
    pic = read_image(tmp_path / "p.png")
    assert pic.mode == "P" and pic.alpha is not None
    assert (pic.alpha[:, :4] == 0).all() and (pic.alpha[:, 4:] == 255).all()
    assert (pic.rgb[:, 4:] == [0, 0, 255]).all()


@pytest.mark.parametrize("ext", ["png", "jpg", "tif", "bmp"])
def test_grayscale_stays_grayscale(tmp_path, ext):
    g = (np.arange(16 * 24).reshape(16, 24) % 251).astype(np.uint8)
    src = tmp_path / f"g.{ext}"
    Image.fromarray(g, "L").save(src)
    pic = read_image(src)
    assert pic.grayscale and pic.rgb.shape == (16, 24, 3)
    assert np.array_equal(pic.rgb[..., 0], pic.rgb[..., 1]) and np.array_equal(pic.rgb[..., 0], pic.rgb[..., 2])
    out = tmp_path / f"out.{ext}"
    write_image(out, pic.rgb, picture=pic)
    back = Image.open(out)
    assert back.mode == "L"
    if ext != "jpg":
        assert np.array_equal(np.asarray(back), g)
    # WebP has no grayscale: Pillow writes equal channels
    write_image(tmp_path / "out.webp", pic.rgb, picture=pic, lossless=True)
    a = np.asarray(Image.open(tmp_path / "out.webp"))
    assert np.array_equal(a[..., 0], pic.rgb[..., 0]) and np.array_equal(a[..., 1], pic.rgb[..., 0])


@pytest.mark.parametrize("ext", ["png", "tif"])
def test_16bit_rgb_stays_16bit(tmp_path, ext):
    rng = np.random.default_rng(2)
    rgb = rng.integers(0, 65536, (12, 18, 3)).astype(np.uint16)
    src = tmp_path / f"in.{ext}"
    assert cv2.imwrite(str(src), rgb[..., ::-1])
    pic = read_image(src)
    assert pic.rgb.dtype == np.uint16 and pic.mode == "RGB;16"
    assert np.array_equal(pic.rgb, rgb)                          # Pillow alone would give 8 bits
    out = tmp_path / f"out.{ext}"
    write_image(out, pic.rgb, picture=pic)
    back = cv2.imread(str(out), cv2.IMREAD_UNCHANGED)
    assert back.dtype == np.uint16 and np.array_equal(back[..., ::-1], rgb)


@pytest.mark.parametrize("ext", ["png", "tif"])
def test_16bit_gray_stays_16bit_gray(tmp_path, ext):
    g = (np.arange(10 * 14).reshape(10, 14) * 467).astype(np.uint16)
    src = tmp_path / f"in.{ext}"
    Image.fromarray(g).save(src)
    pic = read_image(src)
    assert pic.rgb.dtype == np.uint16 and pic.grayscale and np.array_equal(pic.rgb[..., 1], g)
    out = tmp_path / f"out.{ext}"
    write_image(out, pic.rgb, picture=pic)
    back = Image.open(out)
    assert back.mode.startswith("I;16") and np.array_equal(np.asarray(back), g)


def test_16bit_rgba_png_alpha_and_metadata(tmp_path):
    """cv2 writes the 16-bit RGBA PNG; the iCCP and eXIf chunks are added back and Pillow reads them."""
    rng = np.random.default_rng(3)
    bgra = rng.integers(0, 65536, (9, 11, 4)).astype(np.uint16)
    assert cv2.imwrite(str(tmp_path / "in.png"), bgra)
    pic = read_image(tmp_path / "in.png")
    assert pic.mode == "RGBA;16" and np.array_equal(pic.alpha, bgra[..., 3])
    pic.icc, pic.exif = srgb_icc(), exif_with(6).tobytes()
    write_image(tmp_path / "out.png", pic.rgb, pic.alpha, picture=pic)
    back = Image.open(tmp_path / "out.png")
    assert back.info["icc_profile"] == pic.icc
    assert back.getexif()[MAKE] == "RayscaleCam" and back.getexif()[imageio.ORIENTATION] == 1
    arr = cv2.imread(str(tmp_path / "out.png"), cv2.IMREAD_UNCHANGED)
    assert arr.dtype == np.uint16 and np.array_equal(arr, bgra)


def test_16bit_to_8bit_format_warns_and_rounds(tmp_path):
    rgb = np.full((4, 4, 3), 257 * 100 + 128, np.uint16)
    with pytest.warns(UserWarning, match="16-bit values rounded to 8"):
        write_image(tmp_path / "x.bmp", rgb)
    assert (np.asarray(Image.open(tmp_path / "x.bmp")) == 100).all()


def test_cmyk_jpeg_round_trip(tmp_path):
    cmyk = np.zeros((8, 16, 4), np.uint8)
    cmyk[:, :8] = (10, 200, 30, 0)
    cmyk[:, 8:] = (0, 0, 255, 0)
    Image.fromarray(cmyk, "CMYK").save(tmp_path / "c.jpg", quality=100)
    pic = read_image(tmp_path / "c.jpg")
    assert pic.mode == "CMYK" and pic.cmyk_conversion == "naive"          # no profile embedded
    # Pillow's naive CMYK->RGB with K=0 is R = 255 - C, G = 255 - M, B = 255 - Y
    assert np.abs(pic.rgb[4, 2].astype(int) - [245, 55, 225]).max() <= 3
    assert np.abs(pic.rgb[4, 12].astype(int) - [255, 255, 0]).max() <= 3
    write_image(tmp_path / "o.jpg", pic.rgb, picture=pic, quality=100)
    back = Image.open(tmp_path / "o.jpg")
    assert back.mode == "CMYK"
    assert np.abs(np.asarray(back)[4, 2].astype(int) - [10, 200, 30, 0]).max() <= 3
    write_image(tmp_path / "o.tif", pic.rgb, picture=pic)
    assert Image.open(tmp_path / "o.tif").mode == "CMYK"
    with pytest.warns(UserWarning, match="holds no CMYK"):
        write_image(tmp_path / "o.png", pic.rgb, picture=pic)
    assert Image.open(tmp_path / "o.png").mode == "RGB"


def test_cmyk_with_unusable_profile_falls_back_to_naive(tmp_path):
    """An RGB profile embedded in a CMYK file cannot convert it: said in the notes, naive used."""
    Image.new("CMYK", (8, 8), (0, 255, 0, 0)).save(tmp_path / "c.jpg", icc_profile=srgb_icc())
    pic = read_image(tmp_path / "c.jpg")
    assert pic.cmyk_conversion == "naive" and any("ICC" in n for n in pic.notes)
    assert np.abs(pic.rgb[0, 0].astype(int) - [255, 0, 255]).max() <= 3


def test_write_options_quality_and_subsampling(tmp_path):
    photo = cv2.GaussianBlur(np.random.default_rng(4).integers(0, 256, (96, 96, 3)).astype(np.uint8), (5, 5), 0)
    write_image(tmp_path / "q95.jpg", photo)
    write_image(tmp_path / "q40.jpg", photo, quality=40, subsampling=0)
    assert os.path.getsize(tmp_path / "q40.jpg") < os.path.getsize(tmp_path / "q95.jpg")
    assert JpegImagePlugin.get_sampling(Image.open(tmp_path / "q40.jpg")) == 0          # 4:4:4
    write_image(tmp_path / "l.webp", photo, lossless=True)
    assert np.array_equal(np.asarray(Image.open(tmp_path / "l.webp")), photo)
    write_image(tmp_path / "forced.img", photo, format="png")
    assert Image.open(tmp_path / "forced.img").format == "PNG"
    with pytest.raises(InputError, match="cannot write format"):
        write_image(tmp_path / "x.gif", photo)


def test_write_is_atomic(tmp_path, monkeypatch):
    rgb = np.zeros((8, 8, 3), np.uint8)
    dst = tmp_path / "sub" / "dir" / "a.png"
    write_image(dst, rgb)                                  # parent folders made (mirrored trees)
    before = dst.read_bytes()

    def killed(*a):
        raise KeyboardInterrupt

    monkeypatch.setattr(imageio.os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        write_image(dst, rgb + 255)
    assert dst.read_bytes() == before                      # the old file, whole
    assert os.listdir(dst.parent) == ["a.png"]             # no temporary left behind


def test_upscale_alpha():
    a = np.zeros((16, 16), np.uint8)
    a[:, 8:] = 255
    up = upscale_alpha(a, 4)
    assert up.shape == (64, 64) and up.dtype == np.uint8
    assert (up[:, :28] == 0).all() and (up[:, 36:] == 255).all()         # flat regions stay exact
    assert np.all(np.diff(up[0].astype(int)) >= 0)                         # a monotone edge, clipped
    assert upscale_alpha(a, 2, size=(33, 31)).shape == (31, 33)
    a16 = a.astype(np.uint16) * 257
    assert upscale_alpha(a16, 2).max() == 65535


# ------------------------------------------------------------------------------ real photos

def test_real_photos_match_cv2(tmp_path):
    """cv2 (libjpeg/libpng, EXIF orientation applied by IMREAD_COLOR) decodes the same pixels."""
    files = [shared_path("data", "Set14", "HR", "bridge.png"), shared_path("data", "Set14", "HR", "baboon.png"),
             shared_path("data", "outdoor", "OST", "OST_009.png"),
             shared_path("data", "faces", "face_recognition", "obama-240p.jpg"),
             shared_path("data", "outdoor", "SunHays80", "coast_sun_adeamqputqgbqvcq.jpg")]
    for f in files:
        pic = read_image(f)
        ref = cv2.cvtColor(cv2.imread(str(f), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        assert pic.rgb.shape == ref.shape, f
        tol = 0 if f.suffix == ".png" else 2                   # two JPEG decoders: IDCT rounding
        assert np.abs(pic.rgb.astype(int) - ref).max() <= tol, f
        if f.name == "bridge.png":
            assert pic.grayscale
        out = tmp_path / (f.stem + f.suffix)
        write_image(out, pic.rgb, pic.alpha, picture=pic)
        back = read_image(out)
        assert back.mode == pic.mode and back.rgb.shape == pic.rgb.shape
        if f.suffix == ".png":
            assert np.array_equal(back.rgb, pic.rgb)


# ------------------------------------------------------------------------------ bad input

def png_bytes(w, h) -> bytes:
    """A PNG whose IHDR claims w x h, with one tiny IDAT: a decompression bomb's header."""
    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b""))


def refused(path, kind, **kw) -> str:
    with pytest.raises(ImageError) as e:
        read_image(path, **kw)
    msg = str(e.value)
    assert e.value.kind == kind, msg
    assert "\n" not in msg and msg.startswith(str(path)), msg
    assert isinstance(e.value, InputError)
    return msg


def test_decompression_bomb_refused_before_allocation(tmp_path, monkeypatch):
    p = tmp_path / "bomb.png"
    p.write_bytes(png_bytes(30000, 30000))
    assert p.stat().st_size < 200

    def no_decode(self, *a, **k):
        raise AssertionError("pixels decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decode)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    msg = refused(p, "too_large")
    assert "30000x30000" in msg or "900000000" in msg
    # an RGB 30000x30000 would be 2.7 GB; the peak resident size of the process must not move by 50 MB
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0 < 50 * 1024
    # within Pillow's warning band (1x-2x its limit): our own limit decides, no warning escapes
    p2 = tmp_path / "big.png"
    p2.write_bytes(png_bytes(10000, 10000))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert "10000x10000" in refused(p2, "too_large")


def test_max_pixels_parameter(tmp_path):
    Image.new("RGB", (100, 60)).save(tmp_path / "a.png")
    assert "100x60" in refused(tmp_path / "a.png", "too_large", max_pixels=5000)
    assert read_image(tmp_path / "a.png", max_pixels=6000).size == (100, 60)


def test_truncated_files_refused(tmp_path):
    rgb = cv2.GaussianBlur(np.random.default_rng(5).integers(0, 256, (128, 128, 3)).astype(np.uint8), (3, 3), 0)
    for ext in ("jpg", "png", "webp", "tif"):
        whole = tmp_path / f"whole.{ext}"
        Image.fromarray(rgb).save(whole)
        data = whole.read_bytes()
        cut = tmp_path / f"cut.{ext}"
        cut.write_bytes(data[: len(data) * 2 // 3])
        assert ImageFile.LOAD_TRUNCATED_IMAGES is False
        msg = refused(cut, "truncated")
        assert "truncated" in msg or "corrupt" in msg


def test_truncated_real_jpeg(tmp_path):
    src = shared_path("data", "faces", "face_recognition", "obama-240p.jpg").read_bytes()
    (tmp_path / "t.jpg").write_bytes(src[: len(src) // 2])
    assert "truncated" in refused(tmp_path / "t.jpg", "truncated")


def test_bad_inputs_one_line_each(tmp_path):
    (tmp_path / "zero.png").write_bytes(b"")
    assert "0 bytes" in refused(tmp_path / "zero.png", "empty")
    refused(tmp_path / "absent.jpg", "missing")
    (tmp_path / "text.png").write_text("hello, this is not a picture\n")
    assert "not an image" in refused(tmp_path / "text.png", "not_image")
    Image.new("RGB", (1, 1)).save(tmp_path / "one.png")
    assert "1x1" in refused(tmp_path / "one.png", "too_small")
    Image.new("RGB", (8, 8)).save(tmp_path / "eight.png")
    assert ">= 16" in refused(tmp_path / "eight.png", "too_small", min_size=16)
    Image.new("RGB", (8, 8)).save(tmp_path / "anim.gif")
    assert "unsupported format GIF" in refused(tmp_path / "anim.gif", "unsupported")
    Image.new("RGB", (8, 8)).save(tmp_path / "ico.png", format="ICO")    # an icon named .png
    assert "unsupported format ICO" in refused(tmp_path / "ico.png", "unsupported")
    (tmp_path / "folder.png").mkdir()
    refused(tmp_path / "folder.png", "unsupported")


def test_unreadable_file(tmp_path, monkeypatch):
    p = tmp_path / "secret.png"
    Image.new("RGB", (8, 8)).save(p)
    if os.geteuid() != 0:
        p.chmod(0)
        assert "permission denied" in refused(p, "unreadable")
        return
    # root reads any file: the permission error is what open() raises for anyone else

    def denied(*a, **k):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(imageio, "open", denied, raising=False)
    assert "permission denied" in refused(p, "unreadable")


def test_picture_dataclass_defaults():
    pic = Picture(rgb=np.zeros((2, 2, 3), np.uint8), alpha=None, mode="L", format="PNG", size=(2, 2))
    assert pic.grayscale and pic.exif is None and pic.notes == []


def test_symlinks_and_multi_page(tmp_path):
    os.symlink("loop.png", tmp_path / "loop.png")
    assert "symlink loop" in refused(tmp_path / "loop.png", "unreadable")
    os.symlink("gone.png", tmp_path / "dangling.png")
    assert "broken symlink" in refused(tmp_path / "dangling.png", "missing")
    pages = [Image.new("RGB", (6, 4), c) for c in ((255, 0, 0), (0, 255, 0))]
    pages[0].save(tmp_path / "two.tif", save_all=True, append_images=pages[1:])
    pic = read_image(tmp_path / "two.tif")
    assert (pic.rgb == [255, 0, 0]).all() and any("2 frames" in n for n in pic.notes)
    meta = pic.without_pixels()
    assert meta.rgb is None and meta.mode == "RGB" and pic.rgb is not None


def test_real_photo_icc_and_exif_carried(tmp_path):
    src = shared_path("data", "faces", "face_recognition", "obama_and_biden.jpg")     # embeds a 3144-byte profile
    icc = Image.open(src).info["icc_profile"]
    pic = read_image(src)
    assert pic.icc == icc
    for ext in ("jpg", "png", "webp", "tif"):
        write_image(tmp_path / f"o.{ext}", pic.rgb[:64, :80], picture=pic)       # metadata only: a corner will do
        assert Image.open(tmp_path / f"o.{ext}").info.get("icc_profile") == icc, ext
        assert Image.open(tmp_path / f"o.{ext}").getexif().get(0x8298) == "2008 AFP", ext      # Copyright
        assert read_image(tmp_path / f"o.{ext}").exif is not None, ext
    cam = shared_path("data", "faces", "codeformer", "whole_imgs", "00.jpg")           # EXIF, orientation 1
    pic = read_image(cam)
    src_exif = Image.open(cam).getexif()
    write_image(tmp_path / "cam.jpg", pic.rgb, picture=pic)
    out_exif = Image.open(tmp_path / "cam.jpg").getexif()
    assert dict(out_exif) == dict(src_exif)


def test_16bit_grey_alpha_png(tmp_path):
    """Grey+alpha 16-bit (PNG colour type 4, big-endian samples), made byte by byte: Pillow has no
    such mode (it gives 8-bit RGBA); the reader must give the 16-bit values written."""
    h, w = 5, 7
    g = (np.arange(h * w).reshape(h, w) * 1000).astype(">u2")
    a = (65535 - np.arange(h * w).reshape(h, w) * 999).astype(">u2")
    raw = b"".join(b"\x00" + np.stack([g[i], a[i]], 1).astype(">u2").tobytes() for i in range(h))
    p = tmp_path / "la16.png"
    p.write_bytes(b"\x89PNG\r\n\x1a\n" + imageio._png_chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 4, 0, 0, 0))
                  + imageio._png_chunk(b"IDAT", zlib.compress(raw)) + imageio._png_chunk(b"IEND", b""))
    pic = read_image(p)
    assert pic.mode == "LA;16" and pic.grayscale and pic.rgb.dtype == np.uint16
    assert np.array_equal(pic.rgb[..., 1], g) and np.array_equal(pic.alpha, a)
    with pytest.warns(UserWarning, match="16-bit RGBA"):
        write_image(tmp_path / "o.png", pic.rgb, pic.alpha, picture=pic)
    back = read_image(tmp_path / "o.png")
    assert back.rgb.dtype == np.uint16 and np.array_equal(back.rgb[..., 0], g) and np.array_equal(back.alpha, a)

"""Image files in and out for the photo-archive and dataset jobs: Pillow for the container and its
metadata (EXIF, ICC, modes), numpy arrays for the models, cv2 where Pillow has no 16-bit RGB.

What the models see is always RGB (H,W,3), uint8 or uint16 (full 0-65535 scale); what the file was
(`Picture.mode`, ICC, EXIF) travels beside it so the writer can give back grayscale, CMYK, 16 bits
and alpha. Every refusal is one `ImageError` line naming the file and the reason, raised before the
pixels are allocated where the header already tells (missing, empty, not an image, bomb, too small).

Losses, said once here: a palette (P) image comes back as RGB(A) (an upscaled image has more colours
than a palette holds); bilevel ("1") comes back as 8-bit grayscale; 16-bit RGB TIFF is written by
cv2, which keeps no ICC/EXIF (a warning says so); 16-bit RGB PNG is written by cv2 and gets its
iCCP/eXIf chunks added back here; BMP keeps neither ICC nor EXIF nor alpha.
"""
from __future__ import annotations

import dataclasses
import errno
import io
import os
import re
import struct
import tempfile
import warnings
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageCms, ImageFile, PngImagePlugin, UnidentifiedImageError

from pipeline.errors import InputError

# Pillow's own default; above it a file is a decompression bomb unless the caller raises the limit.
DEFAULT_MAX_PIXELS = 89_478_485
MIN_SIZE = 2                       # a 1x1 image cannot be upscaled by any of the models
# Pillow stops a PNG's compressed chunks at 1 MiB (a guard against text bombs), which also refuses
# the iCCP of a valid file whose profile is larger (print/device-link profiles are several MiB; a
# JPEG carries up to ~16 MiB in its APP2 markers). Raised to this for every compressed chunk; the
# total of text chunks stays capped by Pillow's MAX_TEXT_MEMORY (64 MiB).
MAX_PNG_CHUNK = 64 << 20
FORMATS = ("JPEG", "PNG", "WEBP", "TIFF", "BMP")
EXTENSIONS = {".jpg": "JPEG", ".jpeg": "JPEG", ".jpe": "JPEG", ".png": "PNG", ".webp": "WEBP",
              ".tif": "TIFF", ".tiff": "TIFF", ".bmp": "BMP"}
LOSSY_FORMATS = ("JPEG", "WEBP")
GRAY_MODES = ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "LA;16")
_ALPHA_FORMATS = ("PNG", "WEBP", "TIFF")
_DEEP_FORMATS = ("PNG", "TIFF")     # hold 16 bits per channel
_CMYK_FORMATS = ("JPEG", "TIFF")
ORIENTATION = 0x0112
_EXIF_IFD, _GPS_IFD = 0x8769, 0x8825
# Descriptive IFD0 tags a TIFF source may carry over as EXIF; its structural tags (size, strips,
# compression) describe the source file and would be wrong in the output.
_TIFF_EXIF_TAGS = (0x010E, 0x010F, 0x0110, 0x0131, 0x0132, 0x013B, 0x8298, ORIENTATION, _EXIF_IFD, _GPS_IFD)


class ImageError(InputError):
    """An image that cannot be read: `kind` is a short code for the manifest (missing, empty,
    unreadable, not_image, unsupported, truncated, too_small, too_large)."""

    def __init__(self, path, kind: str, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path, self.kind, self.reason = str(path), kind, reason


@dataclass
class Picture:
    """Decoded pixels plus what the writer needs to give the file back in its own terms."""
    rgb: np.ndarray                     # (H,W,3) uint8 or uint16, orientation applied
    alpha: np.ndarray | None            # (H,W) same dtype, or None
    mode: str                           # source mode: "RGB", "RGBA", "L", "I;16", "CMYK", "P", "RGB;16", ...
    format: str                         # "JPEG", "PNG", "WEBP", "TIFF", "BMP"
    size: tuple[int, int]               # (width, height) after orientation
    exif: bytes | None = None           # EXIF with orientation reset to 1
    icc: bytes | None = None
    path: str = ""
    cmyk_conversion: str | None = None  # "icc" (LittleCMS through the embedded profile) or "naive" (Pillow)
    notes: list[str] = field(default_factory=list)

    @property
    def grayscale(self) -> bool:
        return self.mode in GRAY_MODES

    @property
    def lossy(self) -> bool:
        """Decoded from a lossy codec, which smoothed the colour channels (WebP counts: Pillow does
        not say whether a file is its lossless kind)."""
        return self.format in LOSSY_FORMATS

    def without_pixels(self) -> "Picture":
        """The metadata alone (rgb/alpha None): what the sink needs beside the batch to write the
        file back (`write_image(..., picture=p.without_pixels())`), small enough to ship anywhere."""
        return dataclasses.replace(self, rgb=None, alpha=None)


def image_format(path) -> str | None:
    """Format named by the extension (case-insensitive), or None."""
    return EXTENSIONS.get(Path(path).suffix.lower())


# ----------------------------------------------------------------------------------------- reading

def read_image(path, max_pixels: int = DEFAULT_MAX_PIXELS, min_size: int = MIN_SIZE) -> Picture:
    """Decode one file fully (truncation shows only when every row is decoded) into a Picture.

    `max_pixels` is checked on the header's size, before any pixel is allocated; `min_size` is the
    smallest side accepted (pass the model's `size_multiple` when it is larger than 2)."""
    path = Path(path)
    if ImageFile.LOAD_TRUNCATED_IMAGES:      # someone turned it on: truncated files would pass as grey rows
        raise RuntimeError("PIL.ImageFile.LOAD_TRUNCATED_IMAGES is True; rayscale needs it False")
    try:
        st = path.stat()
    except FileNotFoundError:
        if path.is_symlink():
            raise ImageError(path, "missing", "broken symlink (target missing)") from None
        raise ImageError(path, "missing", "missing (no such file)") from None
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise ImageError(path, "unreadable", "symlink loop") from None
        raise ImageError(path, "unreadable", f"unreadable ({e.strerror or e})") from None
    if not path.is_file():
        raise ImageError(path, "unsupported", "not a regular file")
    if st.st_size == 0:
        raise ImageError(path, "empty", "empty file (0 bytes)")
    try:
        fh = open(path, "rb")
    except PermissionError:
        raise ImageError(path, "unreadable", "unreadable (permission denied)") from None
    except OSError as e:
        raise ImageError(path, "unreadable", f"unreadable ({e.strerror or e})") from None
    with fh:
        if max_pixels > (Image.MAX_IMAGE_PIXELS or 0):
            # Pillow raises DecompressionBombError above 2x its own limit; rayscale's limit rules
            # (process-wide: the limit only ever goes up, and we check every file ourselves).
            Image.MAX_IMAGE_PIXELS = max_pixels
        PngImagePlugin.MAX_TEXT_CHUNK = max(PngImagePlugin.MAX_TEXT_CHUNK, MAX_PNG_CHUNK)
        try:
            with warnings.catch_warnings(record=True) as opened:     # JPEG/TIFF parse their EXIF here
                warnings.simplefilter("always")
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                im = Image.open(fh)
        except Image.DecompressionBombError as e:
            raise ImageError(path, "too_large", f"decompression bomb refused before decoding ({e})") from None
        except UnidentifiedImageError:
            raise ImageError(path, "not_image", "not an image (no known image format in its content)") from None
        except (OSError, SyntaxError, ValueError, struct.error, EOFError) as e:
            if "MAX_TEXT_CHUNK" in str(e):
                raise ImageError(path, "too_large", f"a PNG chunk (ICC profile or text) decompresses to more "
                                                    f"than {MAX_PNG_CHUNK >> 20} MiB") from None
            raise ImageError(path, "truncated", f"corrupt image header ({_short(e)})") from None
        with im:
            fmt = im.format
            if fmt == "MPO":          # multi-picture JPEG (phones): the first picture is a JPEG
                fmt = "JPEG"
            if fmt not in FORMATS:
                raise ImageError(path, "unsupported",
                                 f"unsupported format {fmt} (rayscale reads {', '.join(FORMATS)})")
            w, h = im.size
            if w * h > max_pixels:
                raise ImageError(path, "too_large",
                                 f"decompression bomb refused before decoding: header says {w}x{h} "
                                 f"({w * h / 1e6:.1f} MP > limit {max_pixels / 1e6:.1f} MP)")
            if min(w, h) < min_size:
                raise ImageError(path, "too_small", f"too small: {w}x{h} (each side must be >= {min_size})")
            raw = _rawmode_safe(im)                 # read before load(), which clears im.tile
            deep = raw if im.mode in ("RGB", "RGBA", "LA") and "16" in raw else ""
            try:
                im.load()
            except (OSError, SyntaxError, ValueError, struct.error, EOFError, zlib.error) as e:
                raise ImageError(path, "truncated", f"truncated or corrupt {fmt} data ({_short(e)})") from None
            except MemoryError:
                raise ImageError(path, "too_large", f"out of memory decoding {w}x{h}") from None
            return _to_picture(path, im, fmt, deep, opened)


def _short(e: BaseException) -> str:
    return (str(e).splitlines() or [type(e).__name__])[0][:200]


def _rawmode(im) -> str:
    if not im.tile:
        return ""
    args = im.tile[0].args if hasattr(im.tile[0], "args") else im.tile[0][3]
    return args if isinstance(args, str) else (args[0] if args and isinstance(args[0], str) else "")


def _to_picture(path: Path, im: Image.Image, fmt: str, deep_raw: str, opened: list) -> Picture:
    """`opened`: the warnings Pillow gave while opening the file."""
    icc = im.info.get("icc_profile") or None
    exif_bytes, orientation, notes = _read_exif(path, im, fmt, opened)
    frames = getattr(im, "n_frames", 1) or 1
    if frames > 1:
        notes.append(f"{frames} frames/pages: the first only")
    mode = im.mode
    cmyk = None
    alpha = None
    if deep_raw:
        rgb, alpha, mode = _decode_deep(path, im, fmt, deep_raw, notes)
    elif mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        g = np.asarray(im)
        if g.dtype != np.uint16:           # 32-bit integer grayscale: keep what 16 bits hold
            notes.append(f"{mode} values clipped to 0-65535")
            g = np.clip(g, 0, 65535).astype(np.uint16)
        rgb = np.repeat(g[..., None], 3, 2)
    elif mode in ("1", "L", "LA", "La"):
        if mode == "1":
            notes.append("bilevel image read as 8-bit grayscale")
        g = im.convert("LA") if mode in ("LA", "La") else im.convert("L")
        a = np.asarray(g)
        if a.ndim == 3:
            alpha = np.ascontiguousarray(a[..., 1])
            a = a[..., 0]
        rgb = np.repeat(a[..., None], 3, 2)
    elif mode == "CMYK":
        if icc:
            try:
                src = ImageCms.ImageCmsProfile(io.BytesIO(icc))
                rgb_im = ImageCms.profileToProfile(im, src, ImageCms.createProfile("sRGB"), outputMode="RGB")
                cmyk = "icc"
            except (ImageCms.PyCMSError, OSError, ValueError) as e:
                notes.append(f"CMYK ICC profile unusable ({_short(e)}); naive conversion")
                rgb_im, cmyk = im.convert("RGB"), "naive"
        else:
            rgb_im, cmyk = im.convert("RGB"), "naive"
        rgb = np.asarray(rgb_im)
    elif mode in ("RGB", "RGBA", "RGBa", "RGBX", "P", "PA", "YCbCr", "LAB", "HSV"):
        has_alpha = mode in ("RGBA", "RGBa", "PA") or (mode == "P" and "transparency" in im.info)
        if mode in ("LAB", "HSV", "YCbCr"):
            notes.append(f"{mode} converted to RGB")
        a = np.asarray(im.convert("RGBA" if has_alpha else "RGB"))
        if has_alpha:
            alpha = np.ascontiguousarray(a[..., 3])
            a = a[..., :3]
        rgb = a
    else:
        raise ImageError(path, "unsupported", f"unsupported pixel mode {mode}")

    rgb = orient(np.ascontiguousarray(rgb), orientation)
    if alpha is not None:
        alpha = orient(np.ascontiguousarray(alpha), orientation)
    h, w = rgb.shape[:2]
    return Picture(rgb=rgb, alpha=alpha, mode=mode, format=fmt, size=(w, h), exif=exif_bytes, icc=icc,
                   path=str(path), cmyk_conversion=cmyk, notes=notes)


def _read_exif(path: Path, im: Image.Image, fmt: str, opened: list) -> tuple[bytes | None, int, list[str]]:
    """The EXIF to carry over (orientation reset to 1), the orientation to apply, and notes. A
    corrupt block makes Pillow's IFD parser warn once per bad tag without naming the file (raw
    lines on the job's stderr), at open (JPEG, TIFF) or here: it is dropped whole (what survives
    of it is not trustworthy) with one note that names the file; its orientation, when readable,
    is still applied (the output has none). Pillow's other warnings at open become notes."""
    notes = [f"{path}: {_short(w.message)}" for w in opened if not _from_ifd_parser(w)]
    caught = [w for w in opened if _from_ifd_parser(w)]
    with warnings.catch_warnings(record=True) as later:
        warnings.simplefilter("always")
        try:
            exif = im.getexif()
            orientation = int(exif.get(ORIENTATION, 1) or 1)
            data = _reset_orientation(exif, fmt) if len(exif) else None
        except Exception as e:     # noqa: BLE001 - a malformed EXIF block must not cost the picture
            return None, 1, notes + [f"{path}: EXIF unreadable ({_short(e)}); dropped, orientation not applied"]
    caught += later
    if caught:
        return None, orientation, notes + [f"{path}: EXIF corrupt ({_short(caught[0].message)}); dropped"]
    return data, orientation, notes


def _from_ifd_parser(w: warnings.WarningMessage) -> bool:
    return os.path.basename(w.filename) == "TiffImagePlugin.py"


def _decode_deep(path: Path, im: Image.Image, fmt: str, raw: str, notes: list):
    """16-bit RGB(A)/LA: Pillow decodes them to 8 bits (the high byte), cv2 keeps 16. The two
    decoders are checked against each other (cv2's high bytes must be Pillow's pixels, which also
    catches a byte order mix-up); when they disagree Pillow's 8 bits are used, with a note."""
    ref8 = np.asarray(im)                                   # (H,W,3|4) uint8, grey replicated for LA
    arr = cv2.imdecode(np.fromfile(str(path), np.uint8), cv2.IMREAD_UNCHANGED)
    gray = raw.startswith("LA") or raw.startswith("I")
    if arr is not None and arr.dtype == np.uint16 and arr.ndim == 3 and arr.shape[:2] == ref8.shape[:2]:
        arr = np.concatenate([arr[..., 2::-1], arr[..., 3:]], 2)                  # BGR(A) -> RGB(A)
        for cand in (arr, arr.byteswap()):
            if cand.shape[2] == ref8.shape[2] and np.array_equal((cand >> 8).astype(np.uint8), ref8):
                alpha = np.ascontiguousarray(cand[..., 3]) if cand.shape[2] == 4 else None
                mode = "LA;16" if gray else ("RGBA;16" if alpha is not None else "RGB;16")
                return np.ascontiguousarray(cand[..., :3]), alpha, mode
    notes.append(f"16-bit {fmt} ({raw}) read as 8 bits: cv2 could not decode it the way Pillow does")
    alpha = np.ascontiguousarray(ref8[..., 3]) if ref8.shape[2] == 4 else None
    return np.ascontiguousarray(ref8[..., :3]), alpha, ("LA" if gray else im.mode)


def _rawmode_safe(im) -> str:
    try:
        return _rawmode(im)
    except (AttributeError, IndexError, TypeError):
        return ""


def _reset_orientation(exif: Image.Exif, fmt: str) -> bytes | None:
    if fmt == "TIFF":   # a TIFF's IFD0 is its own structure: keep only the descriptive tags
        keep = Image.Exif()
        for tag in _TIFF_EXIF_TAGS:
            if tag in (_EXIF_IFD, _GPS_IFD):
                ifd = exif.get_ifd(tag)
                if ifd:
                    keep[tag] = ifd
            elif tag in exif:
                keep[tag] = exif[tag]
        exif = keep
        if not len(exif):
            return None
    if ORIENTATION in exif:
        exif[ORIENTATION] = 1
    try:
        return exif.tobytes()
    except Exception:     # noqa: BLE001 - a malformed maker note must not fail the image
        return None


def orient(a: np.ndarray, orientation: int) -> np.ndarray:
    """Pixels as displayed for an EXIF orientation (1-8) of stored pixels `a` (H,W[,C])."""
    t = {1: lambda x: x,
         2: lambda x: x[:, ::-1],
         3: lambda x: x[::-1, ::-1],
         4: lambda x: x[::-1],
         5: lambda x: x.swapaxes(0, 1),
         6: lambda x: np.rot90(x, -1),
         7: lambda x: np.rot90(x, 2).swapaxes(0, 1),
         8: lambda x: np.rot90(x, 1)}.get(orientation, lambda x: x)
    return np.ascontiguousarray(t(a))


# ----------------------------------------------------------------------------------------- writing

def upscale_alpha(alpha: np.ndarray, scale: float, size: tuple[int, int] | None = None) -> np.ndarray:
    """Alpha planes are masks (mostly flat with edges): a network trained on photographs would
    invent texture in them, while bicubic keeps edges smooth and exact at 0 and full scale.
    Bicubic overshoots at edges, so the result is clipped to the dtype's range (cv2 saturates
    uint8/uint16). `size` = (width, height) of the upscaled RGB, to match it exactly."""
    h, w = alpha.shape[:2]
    dsize = size or (int(round(w * scale)), int(round(h * scale)))
    out = cv2.resize(alpha, dsize, interpolation=cv2.INTER_CUBIC)
    if out.dtype.kind == "f":
        out = np.clip(out, 0, 1)
    return out


def write_image(path, rgb: np.ndarray, alpha: np.ndarray | None = None, picture: Picture | None = None,
                format: str | None = None, quality: int | None = None, background=(255, 255, 255),
                **opts) -> Path:
    """Write `rgb` (H,W,3 uint8/uint16) as the source `picture` was (grayscale, CMYK, 16 bits, ICC,
    EXIF with orientation 1), in the format of the extension or `format`. The bytes are encoded in
    memory, written to a hidden temporary name in the same folder, fsync'd and renamed over `path`,
    so a killed job leaves the old file or the new one, never half of one.

    `quality`: JPEG/WebP quality; other `opts` go to Pillow's save (e.g. subsampling=0,
    lossless=True, compress_level=1). Returns the path written. Warns (one line) when the format
    cannot hold what the source had: alpha (flattened onto `background`), 16 bits, CMYK, ICC."""
    path = Path(path)
    fmt = (format or image_format(path) or "").upper()
    fmt = {"JPG": "JPEG", "TIF": "TIFF"}.get(fmt, fmt)
    if fmt not in FORMATS:
        raise InputError(f"{path}: cannot write format {fmt or path.suffix or '?'} (rayscale writes {', '.join(FORMATS)})")
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"write_image: rgb must be (H,W,3) uint8/uint16, got {rgb.shape} {rgb.dtype}")
    pic = picture
    gray = bool(pic and pic.grayscale)
    name = path.name
    if alpha is not None and fmt not in _ALPHA_FORMATS:
        warnings.warn(f"{name}: {fmt} holds no alpha; flattened onto {tuple(background)}")
        rgb = _flatten(rgb, alpha, background)
        alpha = None
    if alpha is not None and alpha.dtype != rgb.dtype:
        alpha = _to_dtype(alpha, rgb.dtype)
    if rgb.dtype == np.uint16 and fmt not in _DEEP_FORMATS:
        warnings.warn(f"{name}: {fmt} holds 8 bits per channel; 16-bit values rounded to 8")
        rgb = _to_dtype(rgb, np.uint8)
        alpha = None if alpha is None else _to_dtype(alpha, np.uint8)
    cmyk = bool(pic and pic.mode == "CMYK")
    if cmyk and fmt not in _CMYK_FORMATS:
        warnings.warn(f"{name}: {fmt} holds no CMYK; written as RGB")
        cmyk = False
    icc = pic.icc if pic else None
    exif = _exif_for_output(pic.exif, rgb.shape[1], rgb.shape[0]) if pic and pic.exif else None
    if pic and pic.mode == "CMYK" and not cmyk:
        icc = None                       # the CMYK profile does not describe RGB pixels (sRGB assumed)
    if icc and not gray and _icc_space(icc) == "GRAY":
        icc = None
    if fmt == "BMP" and icc:
        warnings.warn(f"{name}: BMP holds no ICC profile; dropped")

    if rgb.dtype == np.uint16 and gray and alpha is not None:
        warnings.warn(f"{name}: 16-bit grey with alpha has no Pillow mode; written as 16-bit RGBA")
        gray = False
    if rgb.dtype == np.uint16 and not gray:
        data = _encode_deep_rgb(name, fmt, rgb, alpha, icc, exif)
    else:
        data = _encode_pillow(fmt, rgb, alpha, gray, cmyk, pic, icc, exif, quality, opts)
    _atomic_write(path, data)
    return path


def _to_dtype(a: np.ndarray, dtype) -> np.ndarray:
    if a.dtype == dtype:
        return a
    if dtype == np.uint8:      # 65535 -> 255: divide by 257, rounded
        return ((a.astype(np.uint32) + 128) // 257).astype(np.uint8)
    return a.astype(np.uint16) * 257


def _flatten(rgb, alpha, background):
    peak = 65535.0 if rgb.dtype == np.uint16 else 255.0
    apeak = 65535.0 if alpha.dtype == np.uint16 else 255.0
    a = alpha.astype(np.float32)[..., None] / apeak
    bg = np.asarray(background, np.float32) * (peak / 255.0)
    out = rgb.astype(np.float32) * a + bg * (1 - a)
    return np.clip(np.round(out), 0, peak).astype(rgb.dtype)


def _icc_space(icc: bytes) -> str:
    return icc[16:20].decode("ascii", "replace").strip() if len(icc) >= 20 else ""


def _exif_for_output(exif: bytes, w: int, h: int) -> bytes | None:
    """The source EXIF with orientation 1 and the pixel dimensions of the output."""
    try:
        ex = Image.Exif()
        ex.load(exif)
        if ORIENTATION in ex:
            ex[ORIENTATION] = 1
        if _EXIF_IFD in ex:
            sub = ex.get_ifd(_EXIF_IFD)
            if 0xA002 in sub:
                sub[0xA002] = w
            if 0xA003 in sub:
                sub[0xA003] = h
        return ex.tobytes()
    except Exception:    # noqa: BLE001 - keep the source bytes rather than fail the write
        return exif


def _encode_pillow(fmt, rgb, alpha, gray, cmyk, pic, icc, exif, quality, opts) -> bytes:
    if gray:
        # the model sees 3 equal channels and gives back nearly equal ones: their mean is the grey
        g = np.round(rgb.astype(np.float32).mean(-1))
        if rgb.dtype == np.uint16:
            im = Image.fromarray(np.clip(g, 0, 65535).astype(np.uint16))          # mode I;16
        else:
            im = Image.fromarray(np.clip(g, 0, 255).astype(np.uint8))             # mode L
            if alpha is not None:
                im = Image.merge("LA", (im, Image.fromarray(alpha)))
    else:
        im = Image.fromarray(rgb)
        if alpha is not None:
            im = Image.merge("RGBA", (*im.split(), Image.fromarray(alpha)))
        if cmyk:
            if icc and pic.cmyk_conversion == "icc":
                im = ImageCms.profileToProfile(im, ImageCms.createProfile("sRGB"), ImageCms.ImageCmsProfile(io.BytesIO(icc)),
                                           outputMode="CMYK")
            else:
                im = im.convert("CMYK")
    kw = {}
    if icc and fmt != "BMP":
        kw["icc_profile"] = icc
    if exif and fmt == "TIFF":
        exif = _tiff_exif(exif)          # Pillow/libtiff write IFD0 tags; sub-IFD pointers break the save
    if exif and fmt != "BMP":
        kw["exif"] = exif
    if quality is not None and fmt in ("JPEG", "WEBP"):
        kw["quality"] = int(quality)
    elif fmt == "JPEG":
        kw["quality"] = 95
    if fmt == "TIFF":
        kw.setdefault("compression", "tiff_deflate")
    kw.update(opts)
    buf = io.BytesIO()
    try:
        im.save(buf, fmt, **kw)
    except (ValueError, RuntimeError, OSError) as e:
        # JPEG's APP1 holds 64 kB; libtiff refuses some EXIF values: the pixels matter more
        if "exif" in kw:
            warnings.warn(f"EXIF not writable in {fmt} ({_short(e)}); dropped")
            kw.pop("exif")
            buf = io.BytesIO()
            im.save(buf, fmt, **kw)
        else:
            raise
    return buf.getvalue()


def _tiff_exif(exif: bytes) -> bytes | None:
    try:
        ex = Image.Exif()
        ex.load(exif)
        keep = Image.Exif()
        for tag, v in ex.items():
            if tag not in (_EXIF_IFD, _GPS_IFD, 0x8825, 0xA005):
                keep[tag] = v
        return keep.tobytes() if len(keep) else None
    except Exception:    # noqa: BLE001
        return None


def _encode_deep_rgb(name, fmt, rgb, alpha, icc, exif) -> bytes:
    """16-bit RGB(A): Pillow has no such mode, cv2 writes it. PNG gets its iCCP and eXIf chunks
    added after IHDR; cv2's TIFF writer keeps no metadata, said in a warning."""
    bgr = rgb[..., ::-1]
    if alpha is not None:
        bgr = np.concatenate([bgr, alpha[..., None]], 2)
    ok, enc = cv2.imencode(".png" if fmt == "PNG" else ".tiff", np.ascontiguousarray(bgr))
    if not ok:
        raise OSError(f"{name}: cv2 could not encode 16-bit {fmt}")
    data = enc.tobytes()
    if fmt == "PNG":
        return _png_add_chunks(data, icc, exif)
    if icc or exif:
        warnings.warn(f"{name}: 16-bit RGB TIFF is written by cv2, which keeps no ICC/EXIF; dropped")
    return data


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


def _png_add_chunks(png: bytes, icc: bytes | None, exif: bytes | None) -> bytes:
    """Insert iCCP (profile name, 0, method 0, zlib data) and eXIf (TIFF bytes without the JPEG
    'Exif\\0\\0' prefix) after IHDR, where the PNG spec wants them (before PLTE/IDAT)."""
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and png[12:16] == b"IHDR"
    end = 8 + 12 + struct.unpack(">I", png[8:12])[0]
    extra = b""
    if icc:
        extra += _png_chunk(b"iCCP", b"ICC profile\x00\x00" + zlib.compress(icc))
    if exif:
        extra += _png_chunk(b"eXIf", exif[6:] if exif.startswith(b"Exif\x00\x00") else exif)
    return png[:end] + extra + png[end:]


# _atomic_write's temporary names: ".NAME." + mkstemp's 8 random characters + ".tmp"
_TMP_SUFFIX = ".tmp"
_TMP_NAME = re.compile(r"\.(?P<name>.+)\.[a-z0-9_]{8}" + re.escape(_TMP_SUFFIX))


def is_partial_write(name: str) -> bool:
    """`name` is one of _atomic_write's temporary files for an image (left by a killed write)."""
    m = _TMP_NAME.fullmatch(name)
    return bool(m) and image_format(m["name"]) is not None


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=_TMP_SUFFIX, dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(e, OSError) and e.errno == errno.ENOSPC and not e.filename:
            # write() names no file: name it, so the job can say which disk is full
            raise OSError(e.errno, e.strerror, str(path)) from None
        raise
    try:                                   # the rename itself survives a power cut
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass

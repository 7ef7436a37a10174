"""What an image job reads: SRC as a folder (walked recursively), one image, a text list of paths
or a Parquet file with a `path` column, turned into sorted `SourceFile`s with the identity the
manifest keys on (path, size, mtime; the content hash on demand) and `rel`, the path under DST
that mirrors the source tree.

Problems found while listing (a symlink loop, a broken link, a folder or file that cannot be read,
a listed path that is gone, an image format rayscale does not read) are entries with `error` set,
not exceptions: the job records each as a failed item and goes on with the rest."""
from __future__ import annotations

import errno
import hashlib
import os
import stat
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from pipeline.errors import InputError
from pipeline.imageio import EXTENSIONS

LIST_SUFFIXES = (".txt", ".lst", ".list")
# Image formats people keep beside their JPEGs that rayscale does not read: listed as failed items
# (so a run reports them) rather than skipped in silence like .txt or .xmp sidecars.
OTHER_IMAGE_SUFFIXES = {".gif": "GIF", ".heic": "HEIC", ".heif": "HEIF", ".avif": "AVIF", ".jxl": "JPEG XL",
                        ".jp2": "JPEG 2000", ".psd": "PSD", ".ico": "ICO", ".tga": "TGA", ".ppm": "PPM",
                        ".pgm": "PGM", ".dng": "DNG", ".cr2": "CR2", ".nef": "NEF", ".arw": "ARW", ".raw": "RAW",
                        ".svg": "SVG", ".eps": "EPS", ".pcx": "PCX", ".xcf": "XCF"}
_FORMAT_SUFFIX = {"JPEG": ".jpg", "PNG": ".png", "WEBP": ".webp", "TIFF": ".tif", "BMP": ".bmp"}


@dataclass(frozen=True)
class SourceFile:
    path: str                   # absolute path as found (symlinks not resolved: the user's name)
    rel: str                    # POSIX path relative to the listing root, the place under DST
    size: int = -1
    mtime: float = 0.0
    error: str | None = None    # one line naming the file and the reason; None for a readable entry
    hash: str | None = None     # content hash, only when a job asked for one (--verify-content)

    @property
    def ok(self) -> bool:
        return self.error is None


def is_image_name(name) -> bool:
    return Path(name).suffix.lower() in EXTENSIONS


def list_sources(src, exclude=()) -> list[SourceFile]:
    """Every image under `src`, sorted by `rel`, with the listing's problems as error entries.

    `exclude`: paths not to descend into (DST when it lies inside SRC). Hidden names (".x") are
    skipped: they hold rayscale's own state and temporary files, and editors' caches."""
    src = Path(src)
    try:
        st = src.stat()
    except FileNotFoundError:
        raise InputError(f"{src}: no such file or folder") from None
    except OSError as e:
        raise InputError(f"{src}: {_reason(e)}") from None
    if stat.S_ISDIR(st.st_mode):
        skip = {os.path.realpath(p) for p in exclude}
        out: list[SourceFile] = []
        _walk(src.absolute(), PurePosixPath(), skip, set(), out)
        return sorted(out, key=lambda f: f.rel)
    suffix = src.suffix.lower()
    if suffix in LIST_SUFFIXES:
        return _from_paths(_read_text_list(src), src.parent)
    if suffix == ".parquet":
        return _from_paths(_read_parquet_list(src), src.parent)
    return [_entry(src.absolute(), src.name)]


def _reason(e: OSError) -> str:
    if e.errno == errno.ELOOP:
        return "symlink loop"
    if isinstance(e, PermissionError):
        return "unreadable (permission denied)"
    if isinstance(e, FileNotFoundError):
        return "missing (no such file)"
    return f"unreadable ({e.strerror or e})"


def _entry(path: Path, rel: str) -> SourceFile:
    """A file's identity, or its problem as an error entry."""
    suffix = path.suffix.lower()
    try:
        st = path.stat()
    except OSError as e:
        if isinstance(e, FileNotFoundError) and path.is_symlink():
            return SourceFile(str(path), rel, error=f"{path}: broken symlink (target missing)")
        return SourceFile(str(path), rel, error=f"{path}: {_reason(e)}")
    if not stat.S_ISREG(st.st_mode):
        return SourceFile(str(path), rel, st.st_size, st.st_mtime, error=f"{path}: not a regular file")
    err = None
    if suffix in OTHER_IMAGE_SUFFIXES:
        err = f"{path}: unsupported format {OTHER_IMAGE_SUFFIXES[suffix]} (rayscale reads JPEG, PNG, WebP, TIFF, BMP)"
    elif st.st_size == 0:
        err = f"{path}: empty file (0 bytes)"
    elif not os.access(path, os.R_OK):
        err = f"{path}: unreadable (permission denied)"
    return SourceFile(str(path), rel, st.st_size, st.st_mtime, error=err)


def _walk(d: Path, rel: PurePosixPath, skip: set, ancestors: set, out: list) -> None:
    """Depth-first, following symlinked folders; a folder that is its own ancestor is a loop."""
    try:
        dst = d.stat()
    except OSError as e:
        out.append(SourceFile(str(d), str(rel), error=f"{d}: {_reason(e)}"))
        return
    key = (dst.st_dev, dst.st_ino)
    if key in ancestors:
        out.append(SourceFile(str(d), str(rel), error=f"{d}: symlink loop (leads back to a folder above it)"))
        return
    try:
        with os.scandir(d) as it:
            entries = sorted(it, key=lambda e: e.name)
    except OSError as e:
        out.append(SourceFile(str(d), str(rel) if str(rel) != "." else "", error=f"{d}: folder {_reason(e)}"))
        return
    ancestors = ancestors | {key}
    for e in entries:
        if e.name.startswith("."):
            continue
        p = d / e.name
        r = rel / e.name
        try:
            is_dir = e.is_dir()                       # follows symlinks
        except OSError:
            is_dir = False
        if is_dir:
            if os.path.realpath(p) in skip:
                continue
            _walk(p, r, skip, ancestors, out)
            continue
        suffix = Path(e.name).suffix.lower()
        if suffix in EXTENSIONS or suffix in OTHER_IMAGE_SUFFIXES:
            out.append(_entry(p, str(r)))
        elif e.is_symlink() and not os.path.exists(p):
            try:
                os.stat(p)
            except OSError as err:                   # a link loop or a dangling link with no suffix
                if err.errno == errno.ELOOP:
                    out.append(SourceFile(str(p), str(r), error=f"{p}: symlink loop"))


def _read_text_list(path: Path) -> list[str]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: cannot read the list of paths ({e})") from None
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            out.append(line)
    return out


def _read_parquet_list(path: Path) -> list[str]:
    import pyarrow.parquet as pq
    try:
        schema = pq.read_schema(path)
    except Exception as e:     # noqa: BLE001 - pyarrow raises several types for a bad file
        raise InputError(f"{path}: not a readable Parquet file ({str(e).splitlines()[0]})") from None
    if "path" not in schema.names:
        raise InputError(f"{path}: Parquet list has no 'path' column (columns: {', '.join(schema.names)})")
    col = pq.read_table(path, columns=["path"]).column("path").to_pylist()
    return [p for p in col if p]


def _from_paths(paths: list[str], base: Path) -> list[SourceFile]:
    """Listed paths (relative ones to the list's folder), deduplicated; `rel` is relative to the
    deepest folder holding them all, so the mirrored tree never climbs out of DST."""
    seen, absolute = set(), []
    for p in paths:
        a = Path(os.path.normpath(base / p)).absolute()
        if a not in seen:
            seen.add(a)
            absolute.append(a)
    if not absolute:
        return []
    root = Path(os.path.commonpath([str(a.parent) for a in absolute]))
    return sorted((_entry(a, a.relative_to(root).as_posix()) for a in absolute), key=lambda f: f.rel)


def content_hash(path, chunk: int = 1 << 20) -> str:
    """blake2b (128-bit digest, hex) of the file's bytes, read in chunks: identity that survives a
    touch or a copy, and tells a changed file whose size and mtime happen to match."""
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        while True:
            b = f.read(chunk)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


def output_path(dst, rel: str, format: str | None = None) -> Path:
    """Where the output of `rel` goes under `dst`: the same relative path, with the extension of
    `format` when one is forced (the source's own extension is kept when it already names it)."""
    out = Path(dst) / rel
    if format:
        fmt = format.upper()
        fmt = {"JPG": "JPEG", "TIF": "TIFF"}.get(fmt, fmt)
        if fmt not in _FORMAT_SUFFIX:
            raise InputError(f"output format {format}: rayscale writes {', '.join(_FORMAT_SUFFIX)}")
        if EXTENSIONS.get(out.suffix.lower()) != fmt:
            out = out.with_suffix(_FORMAT_SUFFIX[fmt])
    return out


def output_paths(dst, files, format: str | None = None) -> dict[str, Path]:
    """{rel: output path} for every entry; where a forced format makes two names collide
    (a.jpg and a.png -> a.png), the later ones keep their source extension: a.jpg -> a.jpg.png."""
    out, taken = {}, set()
    for f in files:
        rel = f.rel if isinstance(f, SourceFile) else str(f)
        p = output_path(dst, rel, format)
        if p in taken:
            p = Path(dst) / (rel + output_path("", "x", format).suffix)
        taken.add(p)
        out[rel] = p
    return out

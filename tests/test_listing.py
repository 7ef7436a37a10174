"""pipeline.listing: folders, single files, text and Parquet lists; loops and unreadable folders
as error entries; hashing; output paths that mirror the tree."""
import hashlib
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipeline import listing
from pipeline.errors import InputError
from pipeline.listing import SourceFile, content_hash, list_sources, output_path, output_paths
from tests.conftest import shared_path


def img(p, size=(4, 4)):
    p.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (1, 2, 3)).save(p, format={".jpg": "JPEG", ".jpeg": "JPEG"}.get(p.suffix.lower(), None))
    return p


@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "src"
    img(root / "b.png")
    img(root / "A.JPG")
    img(root / "sub" / "deep" / "c.webp")
    img(root / "sub" / "d.TIFF")
    img(root / "e.bmp")
    (root / "notes.txt").write_text("not an image")
    (root / "sidecar.xmp").write_text("<x/>")
    img(root / ".rayscale" / "hidden.png")          # state / temporaries: never listed
    return root


def test_folder_walked_sorted_case_insensitive(tree):
    files = list_sources(tree)
    assert [f.rel for f in files] == ["A.JPG", "b.png", "e.bmp", "sub/d.TIFF", "sub/deep/c.webp"]
    assert all(f.ok for f in files)
    b = next(f for f in files if f.rel == "b.png")
    st = os.stat(tree / "b.png")
    assert (b.size, b.mtime, b.path) == (st.st_size, st.st_mtime, str(tree / "b.png"))


def test_exclude_destination_inside_source(tree):
    img(tree / "out" / "b.png")
    assert "out/b.png" in [f.rel for f in list_sources(tree)]
    assert "out/b.png" not in [f.rel for f in list_sources(tree, exclude=[tree / "out"])]


def test_single_file(tree):
    [f] = list_sources(tree / "sub" / "d.TIFF")
    assert f.rel == "d.TIFF" and f.ok and f.size > 0


def test_text_list_with_comments_relative_and_absolute(tree, tmp_path):
    lst = tmp_path / "list.txt"
    lst.write_text("# photos to redo\n\nsrc/b.png\n  src/sub/deep/c.webp  \n"
                   f"{tree / 'sub' / 'd.TIFF'}\nsrc/b.png\nsrc/gone.jpg  # not a comment: part of the name\n"
                   "src/gone.jpg\n")
    files = list_sources(lst)
    assert [f.rel for f in files] == ["b.png", "gone.jpg", "gone.jpg  # not a comment: part of the name",
                                      "sub/d.TIFF", "sub/deep/c.webp"]
    gone = [f for f in files if not f.ok]
    assert len(gone) == 2 and all("missing" in f.error for f in gone)


def test_parquet_list(tree, tmp_path):
    pq.write_table(pa.table({"path": [str(tree / "e.bmp"), str(tree / "sub" / "d.TIFF")], "label": [1, 2]}),
                   tmp_path / "items.parquet")
    assert [f.rel for f in list_sources(tmp_path / "items.parquet")] == ["e.bmp", "sub/d.TIFF"]
    pq.write_table(pa.table({"file": ["x"]}), tmp_path / "bad.parquet")
    with pytest.raises(InputError, match="no 'path' column"):
        list_sources(tmp_path / "bad.parquet")


def test_missing_source_is_one_line_error(tmp_path):
    with pytest.raises(InputError, match="no such file or folder"):
        list_sources(tmp_path / "nope")


def test_symlink_loops_and_broken_links_are_error_entries(tree):
    os.symlink(tree, tree / "sub" / "loop")                 # folder loop back to the root
    os.symlink("self.png", tree / "self.png")               # a link to itself
    os.symlink("nowhere.jpg", tree / "dangling.jpg")
    img(tree.parent / "elsewhere" / "x.png")
    os.symlink(tree.parent / "elsewhere", tree / "linked")  # a linked folder that is no loop: followed
    files = {f.rel: f for f in list_sources(tree)}
    assert "symlink loop" in files["sub/loop"].error
    assert "symlink loop" in files["self.png"].error
    assert "broken symlink" in files["dangling.jpg"].error
    assert files["linked/x.png"].ok
    assert files["b.png"].ok and len([f for f in files.values() if f.ok]) == 6


def test_unreadable_folder_is_reported_not_fatal(tree, monkeypatch):
    real = os.scandir
    bad = str(tree / "sub" / "deep")

    def scandir(p):
        if str(p) == bad:
            raise PermissionError(13, "Permission denied", bad)
        return real(p)

    if os.geteuid() != 0:
        os.chmod(bad, 0)
    else:                      # root reads every folder: make scandir answer as it would for a user
        monkeypatch.setattr(listing.os, "scandir", scandir)
    try:
        files = list_sources(tree)
    finally:
        os.chmod(bad, 0o755)
    errs = [f for f in files if not f.ok]
    assert len(errs) == 1 and "permission denied" in errs[0].error and errs[0].rel == "sub/deep"
    assert [f.rel for f in files if f.ok] == ["A.JPG", "b.png", "e.bmp", "sub/d.TIFF"]


def test_unsupported_and_empty_files_are_listed_as_errors(tree):
    Image.new("RGB", (4, 4)).save(tree / "anim.gif")
    (tree / "zero.jpg").write_bytes(b"")
    files = {f.rel: f for f in list_sources(tree)}
    assert "unsupported format GIF" in files["anim.gif"].error
    assert files["zero.jpg"].error == f"{tree / 'zero.jpg'}: empty file (0 bytes)"


def test_content_hash_streams_blake2b(tmp_path):
    p = tmp_path / "x.bin"
    data = os.urandom(3 * 1024 * 1024 + 17)
    p.write_bytes(data)
    assert content_hash(p, chunk=65536) == hashlib.blake2b(data, digest_size=16).hexdigest()
    q = tmp_path / "y.bin"
    q.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    assert content_hash(q) != content_hash(p)


def test_output_paths(tmp_path):
    assert output_path(tmp_path, "a/b.JPG") == tmp_path / "a" / "b.JPG"
    assert output_path(tmp_path, "a/b.JPG", "jpeg") == tmp_path / "a" / "b.JPG"     # already names it
    assert output_path(tmp_path, "a/b.jpeg", "png") == tmp_path / "a" / "b.png"
    assert output_path(tmp_path, "x.bmp", "tiff") == tmp_path / "x.tif"
    with pytest.raises(InputError, match="output format gif"):
        output_path(tmp_path, "x.png", "gif")
    files = [SourceFile("/s/a.jpg", "a.jpg"), SourceFile("/s/a.png", "a.png")]
    outs = output_paths(tmp_path, files, "png")
    assert outs == {"a.jpg": tmp_path / "a.png", "a.png": tmp_path / "a.png.png"}


def test_real_photo_folders():
    faces = shared_path("data", "faces")
    files = list_sources(faces)
    assert len(files) == 40 and all(f.ok for f in files)
    assert files[0].rel == "codeformer/whole_imgs/00.jpg"
    assert sum(f.rel.endswith(".png") for f in files) == sum(1 for _ in faces.rglob("*.png"))

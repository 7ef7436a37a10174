"""The scheduled dataset job across runs: a replaced source is redone (never served its old
output), an edit that keeps size and mtime is found by --verify-content, a deleted source is
reported and --delete-missing removes its output, damaged manifest parts are set aside and their
items redone, and SIGKILLs of the whole job use up no --max-attempts. Oracles: the pixel values
of constant-colour images and the bytes of the outputs on disk."""
import argparse
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from jobs import upscale_dataset
from pipeline import cli
from pipeline.engine import done_entries
from pipeline.manifest import Manifest

ROOT = Path(__file__).resolve().parents[1]


def job(src, dst, *flags) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(ROOT / "jobs" / "upscale_dataset.py"), str(src), str(dst),
                             "--model", "bicubic", "--scale", "2", "--group-size", "4", "--no-progress", *flags],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)


def run(capsys, src, dst, *flags) -> tuple[int, str, str]:
    """The job in this process, on the suite's Ray (a Ray start per run would cost ~15 s)."""
    capsys.readouterr()
    rc = upscale_dataset.main([str(src), str(dst), "--model", "bicubic", "--scale", "2", "--group-size", "4",
                               "--no-progress", *flags])
    out, err = capsys.readouterr()
    return rc, out, err


def solid(path: Path, value: int, shape=(24, 32)) -> None:
    Image.fromarray(np.full((*shape, 3), value, np.uint8)).save(path)


def value_of(path: Path) -> tuple[tuple, set]:
    """(shape, the set of pixel values) of an output, read with Pillow."""
    a = np.asarray(Image.open(path).convert("RGB"))
    return a.shape[:2], set(np.unique(a).tolist())


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def visible_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))


def test_done_entries_reuse_only_rows_of_the_source_as_it_is_now(tmp_path):
    out = tmp_path / "a.png"
    out.write_bytes(b"x")
    m = Manifest(tmp_path / "m")
    m.append([{"item": k, "status": "done", "settings": "S", "output": str(out), "size": 10, "mtime": 5.0,
               "hash": "h-" + k} for k in ("same", "resized", "touched", "recontent", "gone", "nohash")])
    now = {"same": (10, 5.0, None), "resized": (11, 5.0, None), "touched": (10, 6.0, None),
           "recontent": (10, 5.0, "h-other"), "nohash": (10, 5.0, None)}
    assert set(done_entries(m, "S", now)) == {"same", "nohash"}
    assert set(done_entries(m, "S", {**now, "same": (10, 5.0, "h-same")})) == {"same", "nohash"}
    assert len(done_entries(m, "S")) == 6          # a source without identities (video: in the settings)


def test_deleted_sources_unfinished_marked_skipped_and_only_outputs_under_dst_removed(tmp_path, capsys):
    dst, outside = tmp_path / "dst", tmp_path / "outside.png"
    dst.mkdir()
    (dst / "a.png").write_bytes(b"a")
    outside.write_bytes(b"o")
    m = Manifest(dst / ".rayscale" / "manifest")
    m.append([{"item": "a.png", "status": "done", "settings": "S", "output": str(dst / "a.png")},
              {"item": "b.png", "status": "done", "settings": "S", "output": str(outside)},
              {"item": "c.png", "status": "running", "settings": "S"},
              {"item": "d.png", "status": "failed", "settings": "S", "error": "d.png: broken"}])
    nothing = pa.table({"item": pa.array([], pa.string()), "path": pa.array([], pa.string()),
                        "size": pa.array([], pa.int64()), "mtime": pa.array([], pa.float64())})
    args = argparse.Namespace(dst=str(dst), delete_missing=True, dry_run=False)
    gone = upscale_dataset.settle_deleted(args, m, m.diff(nothing, "S").deleted)
    assert gone == {"kept": ["b.png"], "removed": ["a.png"], "unfinished": ["c.png", "d.png"]}
    assert not (dst / "a.png").exists() and outside.read_bytes() == b"o"     # outside DST: never removed
    latest = Manifest(m.root, create=False).latest()
    assert {k: r["status"] for k, r in latest.items()} == {"a.png": "skipped", "b.png": "done",
                                                          "c.png": "skipped", "d.png": "skipped"}
    assert cli.main(["manifest", "show", str(dst), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"skipped": 3, "done": 1}   # nothing left pending/running


@pytest.mark.slow
@pytest.mark.usefixtures("local_ray")
def test_replaced_edited_and_deleted_sources_and_damaged_parts(tmp_path, capsys):
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    for i in range(12):
        solid(src / f"{i:03d}.png", i * 10)
    solid(src / "edit.bmp", 50)        # BMP: the edit below keeps its size exactly
    solid(src / "gone.png", 77)
    rc, out, err = run(capsys, src, dst)
    assert rc == 0, err[-3000:]
    before = {n: sha(dst / n) for n in visible_files(dst)}
    assert len(before) == 14
    mtime_before = {n: os.stat(dst / n).st_mtime_ns for n in before}

    solid(src / "003.png", 200, (24, 40))                     # replaced: another size
    st = os.stat(src / "edit.bmp")
    solid(src / "edit.bmp", 99)                               # edited, then `cp -p`-style times
    os.utime(src / "edit.bmp", ns=(st.st_atime_ns, st.st_mtime_ns))
    assert os.stat(src / "edit.bmp").st_size == st.st_size
    (src / "gone.png").unlink()
    rc, out, err = run(capsys, src, dst, "--dry-run")       # reports, changes nothing
    assert rc == 0 and '"changed": 1' in out and '"deleted": 1' in out, out
    assert "source deleted, output kept: 1 (gone.png); --delete-missing removes them" in out
    mdir = dst / ".rayscale" / "manifest"
    damaged = damage_group_parts(mdir)

    rc, out, err = run(capsys, src, dst, "--verify-content", "--delete-missing")
    assert rc == 0, out[-3000:] + err[-3000:]
    assert value_of(dst / "003.png") == ((48, 80), {200})     # redone, not the old output
    assert value_of(dst / "edit.bmp") == ((48, 64), {99})      # same size and mtime, new content: redone
    # hashed: what still has a done row whose size and mtime match (000-002, edit.bmp)
    assert "changes found by size+mtime, content hash on 4 file(s)" in out
    assert "source deleted, output removed: 1 (gone.png)" in out and not (dst / "gone.png").exists()
    lines = [line for line in err.splitlines() if "is damaged" in line]
    assert len(lines) == 3 and all(any(name in line for line in lines) for name in damaged), err[-3000:]
    assert sorted(p.name for p in mdir.iterdir() if p.name.startswith(".damaged-")) == \
        sorted(f".damaged-{n}" for n in damaged)
    for n in [f"{i:03d}.png" for i in range(4, 12)]:          # rows lost, outputs redone byte for byte
        assert sha(dst / n) == before[n], n
    for n in ("000.png", "001.png", "002.png"):               # untouched items are not rewritten
        assert os.stat(dst / n).st_mtime_ns == mtime_before[n]
    for i in range(12):
        assert value_of(dst / f"{i:03d}.png")[1] == {200 if i == 3 else i * 10}
    assert visible_files(dst) == sorted([f"{i:03d}.png" for i in range(12)] + ["edit.bmp"])
    m = Manifest(mdir, create=False)
    assert (m.latest()["gone.png"]["status"], m.latest()["gone.png"]["notes"]) == \
        ("skipped", "source deleted; output removed")
    names = sorted(p.name for p in src.iterdir())
    listing = pa.table({"item": names, "path": [str(src / n) for n in names],
                        "size": [os.stat(src / n).st_size for n in names],
                        "mtime": [os.stat(src / n).st_mtime for n in names]})
    assert m.diff(listing, m.latest()["000.png"]["settings"]).counts["deleted"] == 0   # not reported again


def damage_group_parts(mdir: Path) -> list[str]:
    """Damage three parts: the done rows of images 004-007 (random bytes), the running and done
    rows of 008-011 (cut in half, emptied): those items lose every row."""
    parts = {}
    for p in sorted(mdir.glob("part-*.parquet")):
        t = pq.read_table(p, columns=["item", "status"])
        parts[(frozenset(t["item"].to_pylist()), t["status"][0].as_py())] = p
    g1 = frozenset(f"{i:03d}.png" for i in range(4, 8))
    g2 = frozenset(f"{i:03d}.png" for i in range(8, 12))
    victims = [(parts[(g1, "done")], lambda b: np.random.default_rng(3).bytes(len(b))),
               (parts[(g2, "running")], lambda b: b[:len(b) // 2]),
               (parts[(g2, "done")], lambda b: b"")]
    for p, how in victims:
        p.write_bytes(how(p.read_bytes()))
    return [p.name for p, _ in victims]


@pytest.mark.slow
@pytest.mark.usefixtures("local_ray")
def test_sigkills_use_up_no_attempt_and_given_up_items_are_reported(tmp_path, capsys):
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    n = 240
    for i in range(n):
        solid(src / f"{i:03d}.png", i, (48, 64))
    (src / "!bad.png").write_text("not an image")     # sorts first: fails in the first group
    expected = [f"{i:03d}.png" for i in range(n)]
    for kill in range(2):     # --max-attempts 1: one counted kill would give up images; two: kills do not add up
        before = len(visible_files(dst)) if dst.is_dir() else 0
        p = job(src, dst, "--max-attempts", "1")
        deadline = time.time() + 400
        while time.time() < deadline and p.poll() is None:
            if dst.is_dir() and len(visible_files(dst)) >= before + 4:   # some progress, not all
                break
            time.sleep(0.1)
        assert p.poll() is None, f"run {kill} ended before it was killed: " + p.communicate()[1][-2000:]
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()
    written = len(visible_files(dst))
    assert 12 <= written < n
    running = [r["item"] for r in Manifest(dst / ".rayscale" / "manifest", create=False).latest().values()
               if r["status"] == "running"]
    assert running, "no image was in flight at the last kill"

    rc, out, err = run(capsys, src, dst, "--max-attempts", "1")     # in-process: no Ray start to wait for
    assert rc == 1, out[-2000:] + err[-2000:]                           # exit 1 says an image was given up
    assert "1 image(s) given up after failing 1 time(s)" in err and "rayscale manifest retry" in err, err[-2000:]
    assert visible_files(dst) == expected                 # every image written, none given up by a kill
    for i in range(0, n, 7):
        assert value_of(dst / f"{i:03d}.png") == ((96, 128), {i})
    capsys.readouterr()
    assert cli.main(["manifest", "failed", str(dst)]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert [line.split("\t")[:2] for line in listed] == [["!bad.png", "1"]]
    assert cli.main(["manifest", "retry", str(dst)]) == 0
    assert "1 items marked pending" in capsys.readouterr().out

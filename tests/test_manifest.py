"""The job manifest: buffered, crash-safe appends; compaction; the diff a scheduled run starts
from; readers (pyarrow.dataset, Ray Data); the `rayscale manifest` console script."""
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as ds
import pytest

from pipeline import cli
from pipeline.manifest import Manifest, _resume_rows, _write_part

ROOT = Path(__file__).resolve().parents[1]


def rows_on_disk(d) -> dict:
    """item -> status, as a separate reader sees it (never this writer's buffer)."""
    return {r["item"]: r["status"] for r in Manifest(d, create=False).state().to_pylist()}


def test_buffered_rows_reach_disk_on_flush_on_threshold_and_durable_append(tmp_path):
    d = tmp_path / "m"
    m = Manifest(d, flush_rows=5, flush_seconds=3600)
    m.append([{"item": "a", "status": "running"}, {"item": "b", "status": "running"}])
    assert m.parts() == [] and rows_on_disk(d) == {}
    assert {r["item"]: r["status"] for r in m.state().to_pylist()} == {"a": "running", "b": "running"}
    m.flush()
    assert len(m.parts()) == 1 and rows_on_disk(d) == {"a": "running", "b": "running"}

    m.append([{"item": "c", "status": "running"}])
    m.append([{"item": "a", "status": "done", "output": "a.png"}], durable=True)
    assert len(m.parts()) == 2 and rows_on_disk(d) == {"a": "done", "b": "running", "c": "running"}
    m.append([{"item": "b", "status": "failed", "error": "b.jpg: truncated"}])  # durable by default
    assert rows_on_disk(d)["b"] == "failed"
    m.append([{"item": "c", "status": "done"}], durable=False)                  # the caller decides
    assert rows_on_disk(d)["c"] == "running"
    for i in range(4):                                                         # 5th buffered row
        assert len(m.parts()) == 3
        m.append([{"item": f"x{i}", "status": "pending"}])
    assert len(m.parts()) == 4 and rows_on_disk(d)["c"] == "done"

    with Manifest(d, flush_seconds=3600) as m2:
        m2.append([{"item": "y", "status": "pending"}])
        assert "y" not in rows_on_disk(d)
    assert rows_on_disk(d)["y"] == "pending"
    m3 = Manifest(d, flush_seconds=0.2)
    m3.append([{"item": "z", "status": "pending"}])
    time.sleep(0.3)
    m3.append([{"item": "z2", "status": "pending"}])                            # the buffer is old
    assert {"z", "z2"} <= set(rows_on_disk(d))


def test_rows_map_video_names_ignore_unknown_keys_and_refuse_unknown_status(tmp_path):
    m = Manifest(tmp_path / "m")
    m.append([{"item": "seg-00001", "kind": "segment", "status": "done", "source": "/v/in.mp4",
               "source_size": 123, "source_mtime": 4.5, "settings": "s1", "frames": 6, "seconds": 0.5,
               "stages": {"decode": "done", "sr": "done"}, "psnr": 31.5, "whatever": object()}])
    r = m.latest()["seg-00001"]
    assert (r["path"], r["size"], r["mtime"], r["frames"], r["psnr"]) == ("/v/in.mp4", 123, 4.5, 6, 31.5)
    assert r["stages"] == '{"decode": "done", "sr": "done"}' and r["ssim"] != r["ssim"]  # NaN when none
    with pytest.raises(ValueError, match="finished"):
        m.append([{"item": "x", "status": "finished"}])


EXITER = textwrap.dedent("""
    import shutil, sys
    sys.path.insert(0, {root!r})
    from pipeline.manifest import Manifest
    m = Manifest(sys.argv[1], flush_seconds=3600)
    m.append([{{"item": "a", "status": "running"}}])
    if sys.argv[2] == "rmdir":
        shutil.rmtree(sys.argv[1])
    if sys.argv[2] == "ctrl-c":
        raise KeyboardInterrupt
""")


@pytest.mark.parametrize("how", ["exit", "ctrl-c", "rmdir"])
def test_buffered_rows_reach_disk_at_exit_unless_the_dir_is_gone(tmp_path, how):
    d = tmp_path / "m"
    res = subprocess.run([sys.executable, "-c", EXITER.format(root=str(ROOT)), str(d), how],
                         capture_output=True, text=True)
    assert res.returncode == (-signal.SIGINT if how == "ctrl-c" else 0), res.stderr
    if how == "rmdir":
        assert not d.exists()       # a job that removed its work dir does not get it back
    else:
        assert rows_on_disk(d) == {"a": "running"}


CRASHER = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, {root!r})
    from pipeline.manifest import Manifest
    m = Manifest({d!r}, flush_rows=10**6, flush_seconds=3600)
    for i in range(10**6):
        m.append([{{"item": f"i{{i:05d}}", "status": "running", "attempts": 1}}])   # buffered
        m.append([{{"item": f"i{{i:05d}}", "status": "done", "attempts": 1}}])      # durable
        print(i, flush=True)
        m.append([{{"item": f"i{{i:05d}}-note", "status": "pending"}}])             # buffered
""")


def test_sigkill_loses_no_durable_row(tmp_path):
    d = tmp_path / "m"
    proc = subprocess.Popen([sys.executable, "-c", CRASHER.format(root=str(ROOT), d=str(d))],
                            stdout=subprocess.PIPE, text=True)
    acked = []
    for line in proc.stdout:
        acked.append(int(line))
        if len(acked) >= 40:
            break
    proc.send_signal(signal.SIGKILL)   # mid-append: no flush, no atexit
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    state = rows_on_disk(d)
    assert all(state[f"i{i:05d}"] == "done" for i in acked)
    assert ds.dataset(str(d)).to_table().num_rows == Manifest(d, create=False).table().num_rows


def history(m: Manifest):
    m.append([{"item": "a", "status": "running", "attempts": 1}, {"item": "b", "status": "running", "attempts": 1}])
    m.append([{"item": "a", "status": "failed", "attempts": 1, "error": "a.jpg: truncated JPEG"}])
    m.append([{"item": "b", "status": "done", "attempts": 1, "output": "b.png"}])
    m.append([{"item": "a", "status": "running", "attempts": 2}], durable=True)   # then killed
    m.append([{"item": "c", "status": "pending"}], durable=True)
    m.append([{"item": "c", "status": "done", "attempts": 1}])


def summary(m: Manifest) -> dict:
    st = m.state(last_error=True)
    return {r["item"]: (r["status"], r["attempts"], r["last_error"], r["seq"]) for r in st.to_pylist()}


def test_compaction_keeps_the_latest_state_and_what_resume_needs(tmp_path):
    m = Manifest(tmp_path / "m")
    history(m)
    before = summary(m)
    assert before["a"] == ("running", 2, "a.jpg: truncated JPEG", before["a"][3])
    rows, parts = m.table().num_rows, len(m.parts())
    assert parts == 5 and m.compact() == parts
    assert len(m.parts()) == 1
    assert summary(m) == before
    assert m.table().num_rows == 4 < rows      # latest of a, b, c + a's last failure
    assert summary(Manifest(tmp_path / "m", create=False)) == before


def test_a_crash_during_compaction_is_safe(tmp_path):
    d = tmp_path / "m"
    m = Manifest(d)
    history(m)
    before = summary(m)
    old = m.parts()
    # killed after writing the merged part, before deleting any old part ...
    _write_part(m.fs, m.root, True, _resume_rows(m.table()), tag="-c")
    assert len(m.parts()) == len(old) + 1 and summary(Manifest(d, create=False)) == before
    # ... or half-way through the deletes, with a temporary file left over from another write
    for p in old[: len(old) // 2]:
        os.remove(p.path)
    dead = d / ".part-0-dead.parquet.tmp"
    dead.write_bytes(b"PAR1 half a file")
    os.utime(dead, (time.time() - 7200,) * 2)
    assert summary(Manifest(d, create=False)) == before
    assert ds.dataset(str(d)).to_table().num_rows == Manifest(d, create=False).table().num_rows
    # the next compaction converges
    m.compact()
    assert len(m.parts()) == 1 and summary(Manifest(d, create=False)) == before
    assert not dead.exists()    # a killed writer's temporary, cleared once it is old


def test_automatic_compaction_bounds_the_part_count(tmp_path):
    m = Manifest(tmp_path / "m", compact_parts=8)
    for i in range(60):
        m.append([{"item": f"i{i % 7}", "status": "done", "attempts": i}])   # one part each
    assert len(m.parts()) <= 9
    st = {r["item"]: r["attempts"] for r in m.state().to_pylist()}
    assert st == {f"i{k}": max(i for i in range(60) if i % 7 == k) for k in range(7)}


def test_object_store_filesystem_without_rename(tmp_path):
    from pyarrow.fs import _MockFileSystem
    fs = _MockFileSystem()
    m = Manifest("bucket/job/.rayscale/manifest", filesystem=fs)
    history(m)
    before = summary(m)
    names = [p.base_name for p in m.parts()]
    assert names and all(n.startswith("part-") and n.endswith(".parquet") for n in names)
    m.compact()
    assert len(m.parts()) == 1 and summary(m) == before
    u = Manifest(f"file://{tmp_path}/u")     # URIs go through pyarrow.fs.FileSystem.from_uri
    history(u)
    assert summary(Manifest(tmp_path / "u", create=False)) == summary(u)


def listing_of(folder: Path, with_hash=None) -> pa.Table:
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    t = pa.table({"rel": [p.relative_to(folder).as_posix() for p in files], "path": [str(p) for p in files],
                  "size": [p.stat().st_size for p in files], "mtime": [p.stat().st_mtime for p in files]})
    if with_hash is not None:
        t = t.append_column("hash", pa.array([with_hash.get(p.name) for p in files], pa.string()))
    return t


def test_diff_finds_new_changed_failed_and_exhausted(tmp_path):
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    for name in "abcdefgh":
        (src / ("sub" if name in "cd" else "") / f"{name}.jpg").write_bytes(name.encode() * 10)
    m = Manifest(tmp_path / "m")
    first = m.diff(listing_of(src), "S", max_attempts=3)
    assert first.counts == {"new": 8, "changed": 0, "settings": 0, "retry": 0, "unchanged": 0,
                            "exhausted": 0, "deleted": 0, "todo": 8}
    assert first.todo["item"].to_pylist() == ["a.jpg", "b.jpg", "e.jpg", "f.jpg", "g.jpg", "h.jpg",
                                              "sub/c.jpg", "sub/d.jpg"]
    rows = {r["item"]: r for r in first.todo.to_pylist()}
    outcome = {"a.jpg": ("done", 1), "b.jpg": ("done", 1), "sub/c.jpg": ("failed", 1), "sub/d.jpg": ("failed", 3),
               "e.jpg": ("done", 1), "f.jpg": ("done", 1), "g.jpg": ("running", 3), "h.jpg": ("done", 1)}
    m.append([{**rows[k], "status": s, "attempts": n, "settings": "S",
               "error": f"{k}: broken" if s == "failed" else None} for k, (s, n) in outcome.items()])
    m.append([{**rows["h.jpg"], "status": "done", "settings": "OLD"}])

    (src / "b.jpg").write_bytes(b"changed, and longer")        # changed
    os.utime(src / "e.jpg", (1, 1))                             # touched only: changed by mtime
    (src / "f.jpg").unlink()                                    # deleted
    (src / "new.jpg").write_bytes(b"new")                       # new
    d = m.diff(listing_of(src), "S", max_attempts=3)
    # g.jpg was left running by a killed job: that used up no attempt, whatever its row says
    assert d.counts == {"new": 1, "changed": 2, "settings": 1, "retry": 2, "unchanged": 1,
                        "exhausted": 1, "deleted": 1, "todo": 6}
    todo = {r["item"]: (r["reason"], r["attempts"], r["error"]) for r in d.todo.to_pylist()}
    assert todo == {"b.jpg": ("changed", 0, None), "e.jpg": ("changed", 0, None),
                    "h.jpg": ("settings", 0, None), "new.jpg": ("new", 0, None),
                    "sub/c.jpg": ("failed", 1, "sub/c.jpg: broken"), "g.jpg": ("running", 3, None)}
    assert d.deleted.to_pylist() == [{"item": "f.jpg", "status": "done", "output": None}]
    assert m.diff(listing_of(src), "S", max_attempts=4).counts["retry"] == 3   # d and g get one more

    # with content hashes, a touched file with the same content is unchanged, new content is not
    hashes = {"a.jpg": "ha", "e.jpg": "he"}
    m.append([{**rows["a.jpg"], "status": "done", "settings": "S", "hash": "ha-old"},
              {**rows["e.jpg"], "status": "done", "settings": "S", "hash": "he"}])
    d = m.diff(listing_of(src, hashes), "S", max_attempts=3)
    todo = {r["item"]: r["reason"] for r in d.todo.to_pylist()}
    assert todo["a.jpg"] == "changed" and "e.jpg" not in todo


def test_pyarrow_dataset_reads_the_manifest(tmp_path):
    m = Manifest(tmp_path / "m")
    history(m)
    t = ds.dataset(str(tmp_path / "m"), format="parquet").to_table()
    assert t.num_rows == 7 and set(t.column_names) >= {"item", "status", "path", "error", "attempts", "psnr"}
    assert sorted(t.filter(ds.field("status") == "failed")["item"].to_pylist()) == ["a"]


@pytest.mark.slow
def test_ray_data_reads_the_manifest(tmp_path, local_ray):
    pytest.importorskip("pandas", reason="Ray Data needs pandas (ray[data])")
    import ray
    m = Manifest(tmp_path / "m")
    history(m)
    rows = ray.data.read_parquet(str(tmp_path / "m")).take_all()
    assert len(rows) == 7
    assert sorted((r["item"], r["status"]) for r in rows if r["status"] == "done") == [("b", "done"), ("c", "done")]


def test_cli_show_failed_and_retry(tmp_path, capsys):
    dst = tmp_path / "out"
    m = Manifest(dst / ".rayscale" / "manifest", run_id="run-1")
    m.append([{"item": f"ok{i}.jpg", "status": "done", "attempts": 1, "settings": "S", "size": 1, "mtime": 1.0,
               "path": f"/src/ok{i}.jpg"} for i in range(3)])
    m.append([{"item": "bad.png", "status": "failed", "attempts": 3, "settings": "S", "size": 9, "mtime": 2.0,
               "path": "/src/bad.png", "error": "/src/bad.png: not an image (text named .png)"},
              {"item": "slow.jpg", "status": "running", "attempts": 1}])
    assert cli.main(["manifest", "show", str(dst)]) == 0
    out = capsys.readouterr().out
    assert "5 items" in out and "done 3" in out and "failed 1" in out and "running 1" in out
    assert "last run run-1" in out and "3 done, 1 failed" in out and "not an image" in out

    assert cli.main(["manifest", "failed", str(dst / ".rayscale" / "manifest")]) == 0
    assert capsys.readouterr().out.splitlines() == ["bad.png\t3\t/src/bad.png: not an image (text named .png)"]

    listing = pa.table({"rel": ["bad.png"], "path": ["/src/bad.png"], "size": [9], "mtime": [2.0]})
    assert Manifest(m.root).diff(listing, "S", 3).counts["exhausted"] == 1
    assert cli.main(["manifest", "retry", str(dst)]) == 0
    assert "1 items marked pending" in capsys.readouterr().out
    row = Manifest(m.root, create=False).latest()["bad.png"]
    assert (row["status"], row["attempts"], row["path"], row["settings"]) == ("pending", 0, "/src/bad.png", "S")
    d = Manifest(m.root).diff(listing, "S", 3)
    assert d.todo.to_pylist()[0]["reason"] == "pending" and d.counts["todo"] == 1

    assert cli.main(["manifest", "retry", str(dst), "ok0.jpg"]) == 0
    assert Manifest(m.root, create=False).latest()["ok0.jpg"]["status"] == "pending"
    capsys.readouterr()
    assert cli.main(["manifest", "retry", str(dst), "nope.jpg"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no such item in the manifest: nope.jpg" in err


def test_cli_refuses_a_missing_or_empty_manifest_in_one_line(tmp_path):
    res = subprocess.run([sys.executable, "-m", "pipeline.cli", "manifest", "show", str(tmp_path / "nope")],
                         capture_output=True, text=True, cwd=ROOT)
    assert res.returncode == 2 and res.stderr.count("\n") == 1 and "no such file or directory" in res.stderr
    res = subprocess.run([sys.executable, "-m", "pipeline.cli", "manifest", "failed", str(tmp_path)],
                         capture_output=True, text=True, cwd=ROOT)
    assert res.returncode == 2 and res.stderr.count("\n") == 1 and "no manifest here" in res.stderr
    (tmp_path / "part-1.parquet").write_bytes(b"not parquet")     # damaged: set aside, named, not fatal
    res = subprocess.run([sys.executable, "-m", "pipeline.cli", "manifest", "show", str(tmp_path)],
                         capture_output=True, text=True, cwd=ROOT)
    assert res.returncode == 0 and res.stderr.count("\n") == 1, res.stderr
    assert "part-1.parquet is damaged" in res.stderr and "0 items" in res.stdout
    assert sorted(os.listdir(tmp_path)) == [".damaged-part-1.parquet"]


def test_a_deleted_source_marked_skipped_is_not_reported_again_and_counts_as_new_when_back(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for name in "abc":
        (src / f"{name}.jpg").write_bytes(name.encode() * 10)
    m = Manifest(tmp_path / "m")
    rows = {r["item"]: r for r in m.diff(listing_of(src), "S").todo.to_pylist()}
    m.append([{**rows["a.jpg"], "status": "done", "settings": "S", "output": "/out/a.jpg"},
              {**rows["b.jpg"], "status": "pending", "settings": "S"},
              {**rows["c.jpg"], "status": "done", "settings": "S"}])
    (src / "a.jpg").unlink()
    (src / "b.jpg").unlink()
    d = m.diff(listing_of(src), "S")
    assert d.deleted.to_pylist() == [{"item": "a.jpg", "status": "done", "output": "/out/a.jpg"},
                                     {"item": "b.jpg", "status": "pending", "output": None}]
    m.append([{"item": k, "status": "skipped", "notes": "source deleted"} for k in ("a.jpg", "b.jpg")])
    d = m.diff(listing_of(src), "S")
    assert d.counts["deleted"] == 0 and d.deleted.num_rows == 0
    (src / "b.jpg").write_bytes(b"b" * 10)                  # the same file is back: processed again
    assert m.diff(listing_of(src), "S").todo.select(["item", "reason"]).to_pylist() == [
        {"item": "b.jpg", "reason": "new"}]


def part_damages():
    import numpy as np
    return {"empty": lambda b: b"", "truncated": lambda b: b[:len(b) // 2],
            "random bytes": lambda b: np.random.default_rng(7).bytes(len(b))}


@pytest.mark.parametrize("damage", list(part_damages()))
def test_a_damaged_part_is_set_aside_named_and_the_rest_read(tmp_path, damage):
    m = Manifest(tmp_path / "m")
    for k in range(3):
        m.append([{"item": f"i{k}-{j}", "status": "done", "settings": "S"} for j in range(4)], durable=True)
    parts = [p.path for p in m.parts()]
    assert len(parts) == 3
    victim = Path(parts[1])
    victim.write_bytes(part_damages()[damage](victim.read_bytes()))
    lines = []
    r = Manifest(tmp_path / "m", create=False, log=lines.append)
    state = {row["item"]: row["status"] for row in r.state().to_pylist()}
    assert state == {f"i{k}-{j}": "done" for k in (0, 2) for j in range(4)}   # what the other parts hold
    assert len(lines) == 1 and victim.name in lines[0] and "damaged" in lines[0], lines
    assert not victim.exists() and (victim.parent / f".damaged-{victim.name}").is_file()
    assert r.damaged_parts() == [f".damaged-{victim.name}"]
    # every later reader, writer, compaction and pyarrow.dataset goes on without it, silently
    assert r.diff(pa.table({"item": ["i1-0"], "path": ["x"], "size": [1], "mtime": [1.0]}), "S").counts["new"] == 1
    r.append([{"item": "i1-0", "status": "done", "settings": "S"}], durable=True)
    assert r.compact() == 3 and len(r.parts()) == 1
    assert ds.dataset(str(tmp_path / "m"), format="parquet").to_table().num_rows == 9
    assert len(Manifest(tmp_path / "m", create=False).latest()) == 9 and len(lines) == 1

"""SIGKILL of the whole image job while it works, then a rerun: every good image written exactly
once, no partial file, and the manifest agrees with the files on disk."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.manifest import Manifest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def job(src, dst):
    return subprocess.Popen([sys.executable, str(ROOT / "jobs" / "upscale_images.py"), str(src), str(dst),
                             "--model", "bicubic", "--scale", "2", "--group-size", "4", "--no-progress"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)


def test_sigkill_then_rerun_writes_every_image_once(tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    n = 240
    for i in range(n):
        Image.fromarray(np.full((24, 32, 3), i, np.uint8)).save(src / f"{i:03d}.png")
    (src / "bad.png").write_text("no")
    mdir = dst / ".rayscale" / "manifest"
    p = job(src, dst)
    deadline = time.time() + 400
    done_before = 0
    while time.time() < deadline and p.poll() is None:   # kill once some, not all, images are done
        if mdir.is_dir():
            done_before = sum(1 for r in Manifest(mdir, create=False).latest().values() if r["status"] == "done")
            if done_before >= 8:
                break
        time.sleep(0.2)
    assert p.poll() is None, "the job finished before it could be killed: " + p.communicate()[0][-2000:]
    os.killpg(p.pid, signal.SIGKILL)
    p.wait()
    done_at_kill = {k for k, r in Manifest(mdir, create=False).latest().items() if r["status"] == "done"}
    assert 8 <= len(done_at_kill) < n
    mtimes = {k: os.path.getmtime(dst / k) for k in done_at_kill}
    p = job(src, dst)
    out = p.communicate(timeout=600)[0]
    assert p.returncode == 1, out[-3000:]                 # bad.png failed, the rest written
    assert f"({len(done_at_kill)} reused, 1 failed)" in out, out[-3000:]
    assert {k: os.path.getmtime(dst / k) for k in done_at_kill} == mtimes   # finished work untouched
    files = sorted(p.name for p in dst.iterdir() if p.is_file())
    assert files == [f"{i:03d}.png" for i in range(n)]     # no partial or temporary file
    for i in range(0, n, 7):
        a = np.asarray(Image.open(dst / f"{i:03d}.png"))
        assert a.shape == (48, 64, 3) and (a == i).all()
    latest = Manifest(mdir, create=False).latest()
    assert {k for k, r in latest.items() if r["status"] == "done"} == {f"{i:03d}.png" for i in range(n)}
    assert latest["bad.png"]["status"] == "failed"
    for k, r in latest.items():
        if r["status"] == "done":
            assert Path(r["output"]).is_file()

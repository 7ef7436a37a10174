"""The same job script, unchanged, under `ray job submit --working-dir .` against a Ray head started
here (its own temp dir and ports, so no other test's Ray is touched), and with --address."""
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline.probe import probe
from pipeline.synth import make_clip
from tests.conftest import ROOT

pytestmark = pytest.mark.slow
RAY = str(Path(sys.executable).with_name("ray"))


@pytest.fixture
def head(tmp_path):
    if not os.path.exists(RAY):
        pytest.skip("the `ray` CLI is not installed beside this Python")
    env = dict(os.environ, RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0",
               PATH=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]))  # venv active
    env.pop("RAY_ADDRESS", None)
    temp = Path("/tmp") / f"rs{os.getpid()}"  # short: Ray's socket paths must fit in 107 bytes
    proc = subprocess.Popen([RAY, "start", "--head", "--block", "--num-cpus", "2", "--port", "6391",
                             "--dashboard-host", "127.0.0.1", "--dashboard-port", "8291",
                             "--temp-dir", str(temp), "--disable-usage-stats"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 90
        while time.time() < deadline:
            r = subprocess.run([RAY, "job", "list", "--address", "http://127.0.0.1:8291"], env=env,
                               capture_output=True, text=True)
            if r.returncode == 0:
                break
            time.sleep(1)
        else:
            pytest.fail("ray head did not come up")
        yield env
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        shutil.rmtree(temp, ignore_errors=True)


def test_job_submit_and_address(head, tmp_path):
    src = make_clip(str(tmp_path / "in.mp4"), frames=20, gop=10)
    out = tmp_path / "out.mp4"
    r = subprocess.run([RAY, "job", "submit", "--address", "http://127.0.0.1:8291", "--working-dir", ".",
                        "--runtime-env-json", '{"excludes": [".venv", ".git", "*.parts", ".pytest_cache"]}',
                        "--", "python", "jobs/upscale_video.py", src, str(out), "--model", "bicubic",
                        "--scale", "2", "--no-progress"],
                       env=head, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "succeeded" in r.stdout + r.stderr
    info = probe(str(out))
    assert info.frame_count == 20 and (info.width, info.height) == (320, 192)

    out2 = tmp_path / "out2.mp4"
    r = subprocess.run([sys.executable, str(ROOT / "jobs" / "upscale_video.py"), src, str(out2), "--model",
                        "bicubic", "--scale", "2", "--no-progress", "--address", "127.0.0.1:6391"],
                       env=head, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert probe(str(out2)).frame_count == 20

"""The README's "On a Ray cluster" commands, verbatim, as a new user runs them from the checkout:
activate the venv, start a head, `ray job submit` with absolute paths, a driver with --address,
`ray stop`. They run in private network, PID and mount namespaces (only loopback; `ray stop` sees
only this head; a private /tmp/ray and out/), so the default ports and folders of the commands
touch no other Ray on this machine."""
import os
import re
import shutil
import subprocess

import pytest

from pipeline.probe import probe
from pipeline.synth import make_clip
from tests.conftest import ROOT

pytestmark = pytest.mark.slow


def readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("## On a Ray cluster", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"\n\n((?:    \S.*\n)+)", section).group(1)
    return [line[4:] for line in block.splitlines()]


def test_readme_cluster_commands_verbatim(tmp_path):
    unshare = shutil.which("unshare")
    if unshare is None or subprocess.run([unshare, "--mount", "--net", "--pid", "--fork", "--mount-proc", "true"],
                                         capture_output=True).returncode != 0:
        pytest.skip("needs Linux namespaces (unshare --mount --net --pid) to start a head on Ray's default "
                    "ports and run `ray stop` without touching another Ray on this machine")
    commands = readme_commands()
    assert any(c.startswith("ray job submit") for c in commands) and commands[-1] == "ray stop"
    out = tmp_path / "out"
    out.mkdir()
    make_clip(str(out / "sample.mp4"), frames=24, width=160, height=96, gop=8)  # the README's sample, smaller
    (ROOT / "out").mkdir(exist_ok=True)  # mount point for the private out/ (ignored by git)
    script = tmp_path / "readme.sh"
    # and, before `ray stop`, the mistake the README warns of: relative paths under `ray job submit`
    relative = ("! ray job submit --working-dir . -- python jobs/upscale_video.py out/sample.mp4 out/rel.mp4 "
                "--scale 2 --no-progress > out/relative.log 2>&1")
    script.write_text("set -ex\n" + "\n".join(commands[:-1] + [relative, commands[-1]]) + "\n")
    sandbox = (f"ip link set lo up && mount -t tmpfs tmpfs /tmp/ray && mount --bind {out} {ROOT / 'out'} && "
               f"cd {ROOT} && bash {script}")
    # a fresh shell: no venv on PATH, no Ray settings; the README's lines must bring what they need
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": os.environ.get("HOME", "/root"), "LANG": "C.UTF-8",
           "TMPDIR": os.environ.get("TMPDIR", "/tmp")}
    os.makedirs("/tmp/ray", exist_ok=True)
    r = subprocess.run([unshare, "--mount", "--net", "--pid", "--fork", "--mount-proc", "bash", "-c", sandbox],
                       env=env, capture_output=True, text=True, timeout=900)
    log = r.stdout[-4000:] + r.stderr[-4000:]
    assert r.returncode == 0, log
    assert "succeeded" in r.stdout + r.stderr, log
    # one line (ray job submit may echo the job's log twice), naming the first relative path
    refusal = sorted({line for line in (out / "relative.log").read_text().splitlines() if line.startswith("error:")})
    assert len(refusal) == 1 and "out/sample.mp4" in refusal[0] and "absolute path" in refusal[0], refusal
    assert not (out / "rel.mp4").exists()
    for name in ["sample_x2_job.mp4", "sample_x2_node.mp4"]:  # written where the submitter asked
        info = probe(str(out / name))
        assert info.frame_count == 24 and (info.width, info.height) == (320, 192), name

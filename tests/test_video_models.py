"""The video job with a real network (a reduced RDN in the official EDSR-PyTorch key layout, random
weights): actor count does not change the output, a killed actor costs nothing, Ctrl-C + --resume
reuses finished segments, tiles stitch without seams, and bad model choices are refused."""
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from jobs import upscale_video
from models.rdn import RDN
from operators.upscale import Upscaler
from pipeline.manifest import Manifest
from pipeline.probe import probe
from pipeline.synth import make_clip, pattern
from tests.conftest import ROOT, golden
from tests.media import frames, times

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("local_ray")]


@pytest.fixture(scope="module")
def rdn_x2(tmp_path_factory):
    torch.manual_seed(0)
    net = RDN(scale=2, G0=16, D=3, C=3, G=8)
    with torch.no_grad():  # small random weights around a nearest-neighbour path: real content out
        for p in net.parameters():
            p.mul_(0.1)
        for c in range(3):
            net.SFENet1.weight[c, c, 1, 1] += 1
            net.UPNet[2].weight[c, c, 1, 1] += 1
            for i in range(4):
                net.UPNet[0].weight[c * 4 + i, c, 1, 1] += 1
    path = tmp_path_factory.mktemp("w") / "rdn_x2_reduced.pth"
    torch.save({"module." + k: v for k, v in net.state_dict().items()}, path)  # as DataParallel saves
    return path


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return make_clip(str(tmp_path_factory.mktemp("c") / "clip.mp4"), frames=36, width=96, height=64, gop=6)


@pytest.fixture(scope="module")
def clean_run(clip, rdn_x2, tmp_path_factory):
    out = tmp_path_factory.mktemp("o") / "clean.mkv"
    assert run_job(clip, out, "--weights", rdn_x2, "--actors", "1") == 0
    return out


def run_job(src, out, *args) -> int:
    """Lossless FFV1 so that equal outputs mean equal frames: libx264's own multi-threaded
    decisions differ from run to run (seen here), which would hide what the pipeline did."""
    return upscale_video.main([str(src), str(out), "--model", "rdn", "--scale", "2", "--no-progress",
                               "--segment-frames", "6", "--batch-size", "3", "--threads", "1",
                               "--encoder", "ffv1", *map(str, args)])


def test_rdn_job_output(clean_run, clip):
    info = probe(str(clean_run))
    assert (info.width, info.height) == (192, 128) and info.frame_count == 36
    # MP4 -> Matroska: Matroska cannot store the AAC priming packet's negative time, so the muxer
    # shifts every stream by the same 1024/44100 s; frame spacing is untouched
    t_out, t_in = times(str(clean_run)), times(clip)
    assert [b - a for a, b in zip(t_in, t_out)] == [t_out[0] - t_in[0]] * len(t_in)
    assert abs(t_out[0] - t_in[0]) <= 0.024
    assert frames(str(clean_run)).std() > 5  # real content, not a flat clipped image


def test_two_actors_give_the_same_output(clean_run, clip, rdn_x2, tmp_path):
    out = tmp_path / "two.mkv"
    assert run_job(clip, out, "--weights", rdn_x2, "--actors", "2") == 0
    assert np.array_equal(frames(str(out)), frames(str(clean_run)))


def _operator_pids() -> list[int]:
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                cmd = (d / "cmdline").read_bytes()
            except OSError:
                continue
            if cmd.startswith(b"ray::OperatorActor.process"):
                pids.append(int(d.name))
    return pids


def test_killed_actor_is_restarted_and_output_is_identical(clean_run, clip, rdn_x2, tmp_path):
    killed = []

    def killer():
        deadline = time.time() + 60
        while time.time() < deadline and not killed:
            for pid in _operator_pids():
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
                break
            time.sleep(0.01)

    t = threading.Thread(target=killer)
    t.start()
    out = tmp_path / "killed.mkv"
    assert run_job(clip, out, "--weights", rdn_x2) == 0
    t.join()
    assert killed, "no busy operator actor was found to kill"
    assert np.array_equal(frames(str(out)), frames(str(clean_run)))


class SlowFromFrame12(Upscaler):
    """The Upscaler, but 2 s per batch from frame 12 on: an interrupted run cannot finish before
    the test interrupts it, however loaded the machine (its output is the Upscaler's)."""

    def __call__(self, batch):
        if int(np.min(batch["index"])) >= 12:
            time.sleep(2.0)
        return super().__call__(batch)


def test_ctrl_c_then_resume_reuses_finished_segments(clip, clean_run, rdn_x2, tmp_path):
    out = tmp_path / "resumed.mkv"
    args = [clip, str(out), "--model", "rdn", "--weights", str(rdn_x2), "--scale", "2", "--no-progress",
            "--segment-frames", "6", "--batch-size", "1", "--num-cpus", "2", "--threads", "1", "--encoder", "ffv1"]
    # Ctrl-C as from a shell: a child inherits an ignored SIGINT from its parent, so set the default back
    slow = ("import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
            "import operators.upscale as u, tests.test_video_models as t; u.Upscaler = t.SlowFromFrame12; "
            "from jobs.upscale_video import main; sys.exit(main(sys.argv[1:]))")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    proc = subprocess.Popen([sys.executable, "-c", slow, *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, cwd=ROOT, env=env)
    manifest_dir = Path(str(out) + ".parts") / "manifest"
    deadline = time.time() + 600  # Ray start-up on a loaded machine; segments 2-5 take 24 x 2 s more
    while time.time() < deadline and proc.poll() is None:
        if manifest_dir.exists():
            rows = Manifest(manifest_dir).latest()
            if sum(r["status"] == "done" for r in rows.values()) >= 2:
                break
        time.sleep(0.1)
    assert proc.poll() is None, "the job ended before it could be interrupted: " + proc.communicate()[0][-2000:]
    proc.send_signal(signal.SIGINT)
    log = proc.communicate(timeout=300)[0]
    assert proc.returncode == 130, f"(the suite's SIGINT handler: {signal.getsignal(signal.SIGINT)})\n{log}"
    assert "--resume" in log and not out.exists()
    finished = {k for k, r in Manifest(manifest_dir).latest().items() if r["status"] == "done"}
    assert 2 <= len(finished) < 6, finished
    res = subprocess.run([sys.executable, str(ROOT / "jobs" / "upscale_video.py"), *args, "--resume"],
                         capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    reused = int(res.stdout.split("segments: ")[1].split("(")[1].split(" reused")[0])
    assert reused == len(finished), res.stdout
    assert np.array_equal(frames(str(out)), frames(str(clean_run)))


def test_tiled_rdn_matches_whole_frame(rdn_x2):
    frame = pattern(3, 70, 45)[None]
    whole = Upscaler("rdn", weights=str(rdn_x2), scale=2, device="cpu")({"frames": frame})["frames"]
    tiled = Upscaler("rdn", weights=str(rdn_x2), scale=2, device="cpu", tile=24, tile_overlap=16)({"frames": frame})["frames"]
    assert tiled.shape == whole.shape == (1, 90, 140, 3)
    assert np.abs(tiled.astype(int) - whole.astype(int)).max() <= 1


def test_operator_applies_the_spec_range(rdn_x2):
    import models
    net, spec = models.load(str(rdn_x2))
    assert spec.input_range == 255.0
    frame = pattern(1, 20, 16)[None]
    out = Upscaler(str(rdn_x2), device="cpu")({"frames": frame})["frames"]
    with torch.no_grad():
        ref = net(torch.from_numpy(frame).permute(0, 3, 1, 2).float()).clamp(0, 255).round()
    assert np.array_equal(out, ref.permute(0, 2, 3, 1).numpy().astype(np.uint8))


def test_model_refusals(clip, rdn_x2, tmp_path, capsys):
    cases = [(["--model", "rdn"], "needs --weights"),
             (["--model", "rdn", "--weights", str(rdn_x2), "--scale", "4"], "x2, not x4"),
             (["--model", str(tmp_path / "nope.pth")], "nope.pth")]
    for args, reason in cases:
        code = upscale_video.main([clip, str(tmp_path / "o.mp4"), "--no-progress", *args])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and reason in err[0], (args, err)


def test_srmd_operator_binds_the_degradation_map(tmp_path):
    from models.srmd import SRMD, gaussian_kernel, srmd_input
    torch.manual_seed(0)
    net = SRMD(in_nc=19, nc=16, nb=4, scale=2)
    path = tmp_path / "srmd_x2.pth"
    torch.save(net.state_dict(), path)
    frame = pattern(2, 24, 20)[None]
    op = Upscaler("srmd", weights=str(path), scale=2, device="cpu", degradation={"sigma": 1.2, "noise": 10})
    out = op({"frames": frame})["frames"]
    x = torch.from_numpy(frame).permute(0, 3, 1, 2).float() / 255
    with torch.no_grad():
        ref = net(srmd_input(x, gaussian_kernel(sigma=1.2), 10.0))
    ref = (ref.clamp(0, 1) * 255).round().permute(0, 2, 3, 1).numpy().astype(np.uint8)
    assert out.shape == (1, 40, 48, 3) and np.abs(out.astype(int) - ref.astype(int)).max() <= 1
    other = Upscaler("srmd", weights=str(path), scale=2, device="cpu", degradation={"sigma": 3.0, "noise": 40})
    assert not np.array_equal(other({"frames": frame})["frames"], out)


def test_residual_dbpn_adds_its_own_bicubic(tmp_path):
    import models
    from models.dbpn import bicubic_upscale
    path = tmp_path / "dbpn_res.pth"
    torch.save(golden("dbpn_res_mr64_3_x2_reduced.pt")["state_dict"], path)
    net, spec = models.load(str(path))
    assert spec.output == "residual"
    frame = pattern(4, 14, 12)[None]
    out = Upscaler(str(path), device="cpu")({"frames": frame})["frames"]
    x = torch.from_numpy(frame).permute(0, 3, 1, 2).float() / 255
    with torch.no_grad():
        ref = (net(x) + bicubic_upscale(x, 2)).clamp(0, 1) * 255
    ref = ref.round().permute(0, 2, 3, 1).numpy().astype(np.uint8)
    assert np.abs(out.astype(int) - ref.astype(int)).max() <= 1

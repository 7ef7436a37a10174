"""Guards of the job scripts that need no Ray: refusals before Ray starts (one line, exit 2, nothing
left behind), the output never replacing the input, the per-output job lock, damaged checkpoints,
exported file modes; and (slow) an embedded Ray that must not outlive a SIGKILLed driver."""
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import av
import pytest
import torch

from jobs import upscale_video
from models import CheckpointError, read_state_dict, shipped_weights
from pipeline.lock import JobLock, LockHeld
from pipeline.synth import make_clip
from tests.conftest import ROOT


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return make_clip(str(tmp_path_factory.mktemp("guards") / "in.mp4"), frames=12, gop=6)


def refuse(capsys, *args) -> str:
    """Run the video job, expect a refusal: exit 2 and exactly one line on stderr, which is returned."""
    code = upscale_video.main([str(a) for a in args] + ["--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, (code, err)
    return err[0]


def listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_refusals_before_ray_leave_nothing_behind(clip, tmp_path, capsys):
    import ray
    started = ray.is_initialized()
    out = tmp_path / "o.mp4"
    cases = [
        ([tmp_path / "missing.mp4", out, "--model", "bicubic", "--scale", "2"], ["missing.mp4", "no such file"]),
        ([clip, out, "--model", "bicubic"], ["bicubic", "--scale"]),
        ([clip, tmp_path / "nodir" / "o.mp4", "--model", "bicubic", "--scale", "2"], ["nodir", "does not exist"]),
        ([clip, out, "--model", "rdn", "--weights", tmp_path / "w.pth", "--scale", "2"], ["w.pth", "no such file"]),
        ([clip, out, "--model", "rdn"], ["needs --weights"]),
        ([clip, out, "--model", "rayscale-x2", "--scale", "4"], ["x2, not x4"]),
    ]
    t0 = time.perf_counter()
    for args, words in cases:
        line = refuse(capsys, *args)
        assert all(w in line for w in words), line
    assert time.perf_counter() - t0 < 60
    assert listing(tmp_path) == []  # no OUT.parts/, no lock file, no partial output
    assert ray.is_initialized() == started  # refused before Ray was started


def test_symlink_loop_and_broken_symlink_are_named(clip, tmp_path, capsys):
    """os.path.exists is False for a loop, a dangling link and a missing file alike: each input
    says which (the video job, and the image job's single-file SRC), and nothing is written."""
    from jobs import upscale_images
    (tmp_path / "a.mp4").symlink_to(tmp_path / "b.mp4")
    (tmp_path / "b.mp4").symlink_to(tmp_path / "a.mp4")
    (tmp_path / "gone.png").symlink_to(tmp_path / "nothing.png")
    before = listing(tmp_path)
    cases = [(tmp_path / "a.mp4", "symlink loop"), (tmp_path / "gone.png", "broken symlink (target missing)"),
             (tmp_path / "missing.mp4", "no such file")]
    for src, why in cases:
        assert refuse(capsys, src, tmp_path / "o.mp4", "--model", "bicubic", "--scale", "2") == f"error: {src}: {why}"
        code = upscale_images.main([str(src), str(tmp_path / "out"), "--model", "bicubic", "--scale", "2"])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and err[0].startswith(f"error: {src}: {why}"), err
    assert listing(tmp_path) == before


def test_unknown_model_lists_what_can_upscale(clip, tmp_path, capsys):
    line = refuse(capsys, clip, tmp_path / "o.mp4", "--model", "nosuchnet")
    names = line.split("models that upscale:")[1].replace("(", ",").replace(")", ",").split(",")
    names = {n.strip() for n in names}
    assert {"bicubic", "lanczos", "rayscale-x2", "rayscale-x4", "rdn", "dbpn", "srmd", "zssr"} <= names
    # segmentation, face alignment and text-to-image networks do not upscale
    assert not names & {"outdoorsceneseg", "fan", "attngan", "attngan-text", "attngan-image"}
    line = refuse(capsys, clip, tmp_path / "o.mp4", "--model", "outdoorsceneseg", "--scale", "2")
    assert "not an upscaling model" in line


def test_output_never_replaces_the_input(clip, tmp_path, capsys):
    data = Path(clip).read_bytes()
    hard = tmp_path / "hard.mp4"
    os.link(clip, hard)
    sym = tmp_path / "sym.mp4"
    sym.symlink_to(clip)
    for out in [clip, hard, sym, Path(os.path.relpath(clip))]:
        line = refuse(capsys, clip, out, "--model", "bicubic", "--scale", "2", "--overwrite")
        assert "is the input file" in line and str(out) in line
    line = refuse(capsys, sym, hard, "--model", "bicubic", "--scale", "2", "--overwrite")
    assert "is the input file" in line
    assert Path(clip).read_bytes() == data
    other = tmp_path / "existing.mp4"
    other.write_bytes(b"keep me")
    line = refuse(capsys, clip, other, "--model", "bicubic", "--scale", "2")
    assert "already exists" in line and "--overwrite" in line
    assert other.read_bytes() == b"keep me"
    assert listing(tmp_path) == ["existing.mp4", "hard.mp4", "sym.mp4"]


def test_under_ray_job_relative_paths_and_ray_client_are_refused(clip, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", "{}")  # what `ray job submit` sets for its entrypoint
    line = refuse(capsys, clip, "out.mp4", "--model", "bicubic", "--scale", "2")
    assert "out.mp4" in line and "absolute path" in line
    line = refuse(capsys, os.path.relpath(clip), tmp_path / "o.mp4", "--model", "bicubic", "--scale", "2")
    assert "absolute path" in line
    monkeypatch.delenv("RAY_JOB_CONFIG_JSON_ENV_VAR")
    import ray
    if ray.is_initialized():
        pytest.skip("a Ray of this test session is running: the address would not be looked at")
    line = refuse(capsys, clip, tmp_path / "o.mp4", "--model", "bicubic", "--scale", "2",
                  "--address", "ray://127.0.0.1:10001")
    assert "ray://127.0.0.1:10001" in line and "ray job submit" in line
    assert not ray.is_initialized() and listing(tmp_path) == []


def _holder(lock_path: Path, record: dict | None = None) -> subprocess.Popen:
    """Another process that takes the lock (through JobLock, or by hand with a given record) and waits."""
    if record is None:
        code = ("import sys, time; from pipeline.lock import JobLock; JobLock(sys.argv[1]).acquire(); "
                "print('held', flush=True); time.sleep(600)")
        arg = str(lock_path)
    else:
        code = ("import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT); "
                "fcntl.flock(fd, fcntl.LOCK_EX); os.write(fd, sys.argv[2].encode()); print('held', flush=True); "
                "time.sleep(600)")
        arg = str(lock_path.with_name(lock_path.name + ".lock"))
    p = subprocess.Popen([sys.executable, "-c", code, arg] + ([json.dumps(record)] if record else []),
                         cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "held"
    return p


def test_second_job_on_the_same_output_is_refused(clip, tmp_path, capsys):
    out = tmp_path / "o.mp4"
    holder = _holder(Path(str(out) + ".parts"))
    try:
        line = refuse(capsys, clip, out, "--model", "bicubic", "--scale", "2")
        assert f"{out}.parts" in line and f"pid {holder.pid}" in line and "in use" in line
        assert not out.exists() and not Path(str(out) + ".parts").exists()
    finally:
        holder.kill()
        holder.wait()
    # the holder was killed: its lock is taken over, then released (and its file removed)
    with JobLock(tmp_path / "o.mp4.parts") as lock:
        assert json.loads(Path(lock.lock_path).read_text())["pid"] == os.getpid()
    assert listing(tmp_path) == []


def test_lock_refuses_a_live_holder_and_takes_over_a_dead_ones(tmp_path):
    target = tmp_path / "work"
    with JobLock(target):
        with pytest.raises(LockHeld, match=f"pid {os.getpid()}"):
            JobLock(target).acquire()
    # flock still held (a descriptor that outlived its job) but the recorded holder is gone: stale
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    leaked = _holder(target, {"pid": dead.pid, "host": socket.gethostname(), "started": None, "since": 0})
    try:
        with JobLock(target) as lock:
            assert json.loads(lock.lock_path.read_text())["pid"] == os.getpid()
            with pytest.raises(LockHeld):
                JobLock(target).acquire()
    finally:
        leaked.kill()
        leaked.wait()
    # a live holder on this host is respected
    live = _holder(target, {"pid": os.getpid(), "host": socket.gethostname(), "started": None, "since": 0})
    try:
        with pytest.raises(LockHeld, match=f"{target}: in use"):
            JobLock(target).acquire()
    finally:
        live.kill()
        live.wait()


def _damaged(tmp_path, how: str) -> Path:
    from safetensors.torch import load_file, save_file
    src = shipped_weights()["rayscale-x2"]
    sd = load_file(str(src))
    key = sorted(sd)[len(sd) // 2]
    path = tmp_path / f"{how}.safetensors"
    if how == "truncated":
        data = src.read_bytes()
        path.write_bytes(data[: len(data) - 1000])
        return path
    sd[key] = sd[key].clone()
    sd[key].view(-1)[3] = float("nan") if how == "nan" else float("-inf")
    save_file(sd, str(path))
    path.with_suffix(".key").write_text(key)
    return path


@pytest.mark.parametrize("how", ["nan", "inf"])
def test_non_finite_checkpoints_are_refused_at_load(tmp_path, how):
    path = _damaged(tmp_path, how)
    key = path.with_suffix(".key").read_text()
    with pytest.raises(CheckpointError) as e:
        read_state_dict(path)
    assert str(path) in str(e.value) and repr(key) in str(e.value) and "NaN or Inf" in str(e.value)
    pt = tmp_path / f"{how}.pth"
    from safetensors.torch import load_file
    torch.save({"params": load_file(str(path))}, pt)  # wrapped .pth: the same refusal
    with pytest.raises(CheckpointError, match="NaN or Inf"):
        read_state_dict(pt)


def test_damaged_weights_one_line_exit_2(clip, tmp_path, capsys):
    for how, words in [("nan", ["NaN or Inf"]), ("truncated", ["truncated"])]:
        path = _damaged(tmp_path, how)
        line = refuse(capsys, clip, tmp_path / "o.mp4", "--model", "rayscale", "--weights", path, "--scale", "2")
        assert str(path) in line and all(w in line for w in words), line
        line = refuse(capsys, clip, tmp_path / "o.mp4", "--model", path)
        assert str(path) in line
    assert not (tmp_path / "o.mp4.parts").exists()


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_exported_safetensors_follow_the_umask(tmp_path, umask):
    from models.convert import main
    old = os.umask(umask)
    try:
        assert main([str(shipped_weights()["rayscale-x2"]), str(tmp_path / "w.safetensors")]) == 0
        ref = tmp_path / "plain"
        ref.write_bytes(b"")  # a file created the ordinary way under the same umask
    finally:
        os.umask(old)
    mode = (tmp_path / "w.safetensors").stat().st_mode & 0o777
    assert mode == ref.stat().st_mode & 0o777 == 0o666 & ~umask


def _processes() -> dict[int, tuple[int, int, str]]:
    """pid -> (parent pid, start time in clock ticks, command line), read from /proc."""
    table = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_bytes().rsplit(b")", 1)[1].split()
                cmd = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except (OSError, IndexError):
                continue
            if stat[0] != b"Z":
                table[int(entry)] = (int(stat[1]), int(stat[19]), cmd)
    return table


def _descendants(pid: int, table) -> dict[int, tuple[int, int, str]]:
    out, todo = {}, [pid]
    while todo:
        parent = todo.pop()
        for p, row in table.items():
            if row[0] == parent and p not in out:
                out[p] = row
                todo.append(p)
    return out


def _ray_pids_of(raylet: int) -> set[int]:
    """Every process started for the Ray node of that raylet (workers and agents carry its pid)."""
    found = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                env = Path(f"/proc/{entry}/environ").read_bytes().split(b"\0")
            except OSError:
                continue
            if f"RAY_RAYLET_PID={raylet}".encode() in env:
                found.add(int(entry))
    return found


@pytest.mark.slow
def test_embedded_ray_ends_with_a_killed_driver(tmp_path):
    """SIGKILL of the job's own process (not its group): within seconds no process of its Ray node
    (servers, agents, workers, the busy model actor) runs and its session folder is gone."""
    src = make_clip(str(tmp_path / "long.mp4"), frames=240, gop=6)
    cmd = [sys.executable, str(ROOT / "jobs" / "upscale_video.py"), src, str(tmp_path / "o.mkv"), "--model",
           "bicubic", "--scale", "2", "--no-progress", "--segment-frames", "6", "--batch-size", "1",
           "--encoder", "ffv1", "--num-cpus", "2"]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline, tree, raylet = time.time() + 240, {}, None
        while time.time() < deadline and proc.poll() is None:
            tree = _descendants(proc.pid, _processes())
            raylet = next((p for p, row in tree.items() if row[0] == proc.pid and "raylet" in row[2].split(" ")[0]), None)
            if raylet and any(row[0] == raylet and "OperatorActor" in row[2] for row in tree.values()):
                break
            time.sleep(0.5)
        else:
            pytest.fail("the job ended or never started its model actor")
        node = _ray_pids_of(raylet)
        sessions = list(Path("/tmp/ray").glob(f"session_*_{proc.pid}"))
        assert len(sessions) == 1 and node
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    survivors = []
    for _ in range(40):
        table = _processes()
        survivors = [(p, row[2]) for p, row in tree.items() if p in table and table[p][1] == row[1]]
        survivors += [(p, "") for p in _ray_pids_of(raylet) if p in table]
        if not survivors and not sessions[0].exists():
            break
        time.sleep(0.5)
    assert not survivors, survivors
    assert not sessions[0].exists()


def _ray_noise(text: str) -> list[str]:
    """What an embedded Ray must not put on the user's terminal."""
    marks = ("\x1b[", "(raylet)", "Token authentication", "RAY_AUTH_MODE", "Unhandled error", "Traceback",
             "SIGTERM received", "logging.cc")
    return [m for m in marks if m in text]


def _sha_and_mtime(path: Path) -> tuple[str, int]:
    import hashlib
    return hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_mtime_ns


def _frame_hashes(path) -> list[str]:
    import hashlib
    with av.open(str(path)) as c:
        return [hashlib.sha256(f.to_ndarray(format="rgb24").tobytes()).hexdigest() for f in c.decode(video=0)]


@pytest.mark.slow
def test_sigterm_stops_like_ctrl_c_and_resume_finishes(tmp_path):
    """SIGTERM once segments are finished: exit 143 and one line on stderr (Ray's handler aborted
    with a crash dump, exit -6); `--resume` then reuses the finished segment files as they are
    (same bytes, not rewritten) and the output has every source frame, counted with PyAV. Both
    runs keep the embedded Ray quiet: no token-auth banner, no (raylet) lines, no colour codes. A
    third `--resume` over the written OUT and its kept work folder finishes without --overwrite."""
    from pipeline.manifest import Manifest
    src = make_clip(str(tmp_path / "in.mp4"), frames=48, gop=6)
    out = tmp_path / "o.mkv"
    parts = Path(str(out) + ".parts")
    args = [src, str(out), "--model", "bicubic", "--scale", "2", "--no-progress", "--segment-frames", "6",
            "--batch-size", "1", "--num-cpus", "2", "--encoder", "ffv1", "--keep-work"]
    # 2 s a batch from frame 12 on (tests.test_video_models): the job cannot end before the signal
    slow = ("import sys, operators.upscale as u, tests.test_video_models as t; u.Upscaler = t.SlowFromFrame12; "
            "from jobs.upscale_video import main; sys.exit(main(sys.argv[1:]))")
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    proc = subprocess.Popen([sys.executable, "-c", slow, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=tmp_path, env=env)
    done: list[str] = []
    deadline = time.time() + 300   # Ray start-up on a loaded machine
    while time.time() < deadline and proc.poll() is None and len(done) < 2:
        if (parts / "manifest").exists():
            done = [k for k, r in Manifest(parts / "manifest").latest().items() if r["status"] == "done"]
        time.sleep(0.2)
    assert proc.poll() is None and len(done) >= 2, "the job ended or finished no segment: " + proc.communicate()[1][-2000:]
    kept = {name: _sha_and_mtime(parts / f"{name}.seg") for name in done}
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=300)
    lines = stderr.strip().splitlines()
    assert proc.returncode == 143, (proc.returncode, stderr[-3000:])
    assert len(lines) == 1 and src in lines[0] and "--resume" in lines[0], stderr[-3000:]
    assert not _ray_noise(stdout + stderr), stdout + stderr
    assert not out.exists()

    res = subprocess.run([sys.executable, str(ROOT / "jobs" / "upscale_video.py"), *args, "--resume"],
                         capture_output=True, text=True, cwd=tmp_path, env=env, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert not _ray_noise(res.stdout + res.stderr), res.stdout + res.stderr
    assert {name: _sha_and_mtime(parts / f"{name}.seg") for name in done} == kept   # reused, not redone
    with av.open(src) as a, av.open(str(out)) as b:
        assert sum(1 for _ in b.decode(video=0)) == sum(1 for _ in a.decode(video=0)) == 48

    # OUT written and the work folder still there (--keep-work here; a kill between the output's
    # rename and the clean-up leaves the same): --resume finishes the job without --overwrite,
    # from the kept segments, to the same frames
    frames = _frame_hashes(out)
    res = subprocess.run([sys.executable, str(ROOT / "jobs" / "upscale_video.py"), *args[:-1], "--resume"],
                         capture_output=True, text=True, cwd=tmp_path, env=env, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert _frame_hashes(out) == frames and not parts.exists()

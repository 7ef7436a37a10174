"""What every job script shares: Ray connection flags, the default model, argument and file checks
made before Ray starts (a refusal costs no Ray start-up and leaves nothing behind), one-line errors."""
from __future__ import annotations

import functools
import logging
import logging.handlers
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHECKPOINT_SUFFIXES = (".pth", ".pt", ".pkl", ".ckpt", ".bin", ".safetensors", ".mat", ".t7", ".param")


class RayUnavailable(RuntimeError):
    """Ray could not be started or reached: one line, exit 1."""


def add_ray_args(ap) -> None:
    g = ap.add_argument_group("ray")
    g.add_argument("--address", default=None,
                   help="Ray cluster (GCS) address, e.g. head-node:6379, from a node of the cluster (default: "
                        "RAY_ADDRESS when set, as under `ray job submit`, else a private embedded Ray that ends "
                        "with this job). Ray Client addresses (ray://) cannot carry this job's streaming "
                        "generators: use `ray job submit` from elsewhere")
    g.add_argument("--num-cpus", type=int, default=None, help="CPUs for an embedded local Ray")


def under_ray_job() -> bool:
    """True inside the entrypoint of `ray job submit` (its supervisor sets this variable; RAY_JOB_ID
    is stripped from submitted jobs' environments)."""
    return "RAY_JOB_CONFIG_JSON_ENV_VAR" in os.environ


def ray_address(args) -> str | None:
    from pipeline.errors import InputError
    address = getattr(args, "address", None) or os.environ.get("RAY_ADDRESS") or None
    if address and address.startswith("ray://"):
        raise InputError(f"{address}: Ray Client (ray://) cannot carry this job's streaming generators; run it "
                         f"with `ray job submit --address http://HEAD:8265 ...`, or from a cluster node with "
                         f"--address HEAD:6379")
    return address


def connect_ray(args) -> None:
    """Join the cluster named by --address / RAY_ADDRESS, else start a private Ray for this job only:
    address="local" never attaches to another Ray already running on the host, and a watchdog
    process ends that Ray (and removes its session folder) when this process ends, however it ends."""
    import ray
    if ray.is_initialized():
        return
    address = ray_address(args)
    env = {"env_vars": {"PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}}
    if address and not under_ray_job():
        # a driver outside `ray job submit`: ship this checkout to the cluster's workers
        env = {"working_dir": str(ROOT), "excludes": [".venv", ".git", "*.parts", "__pycache__", "out"]}
    kwargs = dict(address=address, runtime_env=env, log_to_driver=True)
    reaper = held = None
    if not address:
        # a private Ray says nothing the user did not cause: its workers' output stays in its logs
        # (the jobs report their warnings and failures themselves, in the summary)
        kwargs.update(address="local", num_cpus=args.num_cpus or max(2, os.cpu_count() or 1),
                      include_dashboard=False, configure_logging=False, log_to_driver=False)
        os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
        held = _hold_ray_log()
        reaper = _start_reaper()
    try:
        ray.init(**kwargs)
    except Exception as e:  # noqa: BLE001  (any start-up failure: one line, not Ray's traceback)
        text = str(e).strip().splitlines()
        where = f"Ray at {address}" if address else "an embedded Ray"
        raise RayUnavailable(f"cannot start or reach {where}: {text[0] if text else type(e).__name__}") from None
    finally:
        if held is not None:
            logging.getLogger("ray._private").removeHandler(held)
    _stop_on_sigterm()
    if held is not None:
        _quiet_embedded_ray(ray, held)
        _OWN_RAY.append(True)
    if reaper is not None:
        _tell_reaper(reaper)


_OWN_RAY: list[bool] = []    # this job started the Ray it runs on (the embedded, private one)


def end_ray() -> None:
    """Stop the embedded Ray now rather than at exit (seconds of shutdown), so that what a job
    removes after it (a finished video's work folder) is removed only once nothing is left to kill.
    A Ray the job joined (a cluster, the test suite's) is left running."""
    if _OWN_RAY:
        import ray
        ray.shutdown()
        _OWN_RAY.clear()


# ------------------------------------------------------------------- stopping and quiet

_STOPPED_BY: list[int] = []   # the signal that stopped the job, when one did


def _stop(signum, frame):
    """The jobs' Ctrl-C path (KeyboardInterrupt) for another signal; the exit code remembers which."""
    _STOPPED_BY.append(signum)
    raise KeyboardInterrupt


def _stop_on_sigterm() -> None:
    """SIGTERM stops the job as Ctrl-C does (finished work kept, one line). Called after
    ray.init: Ray's core worker takes SIGTERM over there with a handler that prints a stack dump
    and aborts (exit -6)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _stop)


def interrupted_code(code: int) -> int:
    """The jobs answer an interrupt with 130 (Ctrl-C's code); a SIGTERM's is 143 (128 + 15)."""
    return 128 + _STOPPED_BY[0] if code == 130 and _STOPPED_BY else code


def _hold_ray_log() -> logging.handlers.MemoryHandler:
    """Ray's own Python log lines (its token-authentication banner during ray.init, notices of
    unhandled task errors at shutdown) leave the terminal: held here until the embedded Ray's
    log folder exists, then written there (_quiet_embedded_ray)."""
    held = logging.handlers.MemoryHandler(capacity=1, flushLevel=logging.CRITICAL + 1)  # no target yet: keeps all
    # ray.init(configure_logging=False) empties the "ray" logger's handlers (its lines would then
    # reach the terminal through logging's last resort), not those of "ray._private", where the
    # banner is logged: held there while ray.init runs
    logging.getLogger("ray._private").addHandler(held)
    return held


def _quiet_embedded_ray(ray, held: logging.handlers.MemoryHandler) -> None:
    """Once the embedded Ray runs: its Python log lines go to its session's log folder, and its
    notices stay off the terminal."""
    logging.getLogger("ray").addHandler(held)
    try:
        logs = Path(ray._private.worker._global_node.get_session_dir_path()) / "logs"
        target = logging.FileHandler(logs / f"rayscale-driver-{os.getpid()}.log")
        target.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    except (AttributeError, OSError):
        target = logging.NullHandler()   # no folder: Ray's lines are dropped, never shown
    held.setTarget(target)
    held.flush()
    # the driver's error listener prints Ray's notices (task retries, dead workers) as coloured
    # "(raylet)" lines on stdout; the raylet's own logs hold them too. This is the switch Ray's
    # debugger uses to mute worker output on the driver.
    if hasattr(ray._private.worker, "_worker_logs_enabled"):
        ray._private.worker._worker_logs_enabled = False


# ------------------------------------------------------------------- the embedded Ray's watchdog

_REAPER = None  # the Popen, kept for the life of the driver: its stdin is the driver's lifeline


def _start_reaper():
    """A small process in its own session (so a kill of the job's process group spares it) that
    waits for EOF on a pipe from the driver, then kills what is left of the driver's Ray."""
    global _REAPER
    code = f"import sys; sys.path.insert(0, {str(ROOT)!r}); from jobs.common import _reaper_main; _reaper_main()"
    try:
        _REAPER = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    except OSError:
        _REAPER = None
    return _REAPER


def _tell_reaper(proc) -> None:
    try:
        import ray
        lines = f"node {ray.get_runtime_context().get_node_id()}\n"
        node = ray._private.worker._global_node
        lines += f"session {node.get_session_dir_path()}\n"
        raylet = node.all_processes.get("raylet") or []
        if raylet:
            lines += f"raylet {raylet[0].process.pid}\n"
        proc.stdin.write(lines.encode())
        proc.stdin.flush()
    except Exception:  # noqa: BLE001  (no watchdog is better than no job)
        pass


def _proc_table() -> dict[int, tuple[int, int]]:
    """pid -> (parent pid, start time in clock ticks) of every process, from /proc."""
    table = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", "rb") as f:
                    fields = f.read().rsplit(b")", 1)[1].split()
                table[int(entry)] = (int(fields[1]), int(fields[19]))
            except (OSError, IndexError, ValueError):
                continue
    return table


def _descendants(root: int, table: dict[int, tuple[int, int]]) -> dict[int, int]:
    """pid -> start time of every descendant of root."""
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    out, todo = {}, [root]
    while todo:
        for pid in children.get(todo.pop(), ()):
            if pid not in out:
                out[pid] = table[pid][1]
                todo.append(pid)
    return out


def _ray_processes(node_id: str | None, session: str | None, raylet: str | None,
                   known: dict[int, int]) -> list[int]:
    """What is left of the driver's Ray: the descendants seen while it ran (Ray's agents keep only
    a title in their command line, and a long title overwrites their environment), workers that
    carry RAY_NODE_ID / RAY_RAYLET_PID in their environment, servers that name the session."""
    me, found = os.getpid(), []
    table = _proc_table()
    for pid, (ppid, start) in table.items():
        if pid == me:
            continue
        if known.get(pid) == start:
            found.append(pid)
            continue
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                environ = f.read().split(b"\0")
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmdline = f.read()
        except OSError:
            continue
        if (node_id and f"RAY_NODE_ID={node_id}".encode() in environ) or \
                (session and session.encode() in cmdline) or \
                (raylet and f"RAY_RAYLET_PID={raylet}".encode() in environ and not _has_live_raylet(ppid)):
            found.append(pid)
    return found


def _has_live_raylet(ppid: int) -> bool:
    """Our raylet is dead, so its workers are orphans; a process whose parent is a running raylet
    belongs to another Ray that reused the pid."""
    try:
        with open(f"/proc/{ppid}/comm", "rb") as f:
            return f.read().strip() == b"raylet"
    except OSError:
        return False


def _reaper_main() -> None:
    import select
    import shutil
    for s in (signal.SIGINT, signal.SIGHUP, signal.SIGTERM):
        signal.signal(s, signal.SIG_IGN)
    driver, started, me = os.getppid(), time.time(), os.getpid()
    told: dict[str, str] = {}
    known: dict[int, int] = {}
    buf, fd = b"", sys.stdin.fileno()
    while True:  # until EOF: the driver has ended; meanwhile note its descendants once a second
        ready, _, _ = select.select([fd], [], [], 1.0)
        if ready:
            chunk = os.read(fd, 4096)
            if not chunk:
                break
            buf += chunk
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                key, _, value = line.decode(errors="replace").strip().partition(" ")
                told[key] = value
        known.update(_descendants(driver, _proc_table()))
        known.pop(me, None)
    node_id, session, raylet = told.get("node"), told.get("session"), told.get("raylet")
    if not session:  # killed inside ray.init: its session folder is named after the driver's pid
        temp = Path(os.environ.get("RAY_TMPDIR", "/tmp")) / "ray"
        mine = [p for p in temp.glob(f"session_*_{driver}") if p.stat().st_mtime >= started - 1]
        session = str(mine[0]) if len(mine) == 1 else None
    if not node_id and not session and not known:
        return
    time.sleep(1.0)  # a normal exit: Ray's own shutdown is already under way
    for _ in range(10):
        pids = _ray_processes(node_id, session, raylet, known)
        if not pids:
            break
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        time.sleep(0.5)
    if session and Path(session).name.startswith("session_"):
        shutil.rmtree(session, ignore_errors=True)
        latest = Path(session).with_name("session_latest")
        try:
            if latest.is_symlink() and os.path.realpath(latest) == os.path.realpath(session):
                latest.unlink()
        except OSError:
            pass


# ------------------------------------------------------------------- checks before Ray starts

def check_job_paths(**paths) -> None:
    """Under `ray job submit` the job runs in Ray's copy of the working dir, so a relative path
    would read from (or write into) that temporary copy: refuse it."""
    from pipeline.errors import InputError
    if not under_ray_job():
        return
    for name, path in paths.items():
        if path and not os.path.isabs(path):
            raise InputError(f"{path}: relative {name} path under `ray job submit` (the job runs in a temporary "
                             f"copy of the working dir); pass an absolute path, e.g. \"$PWD/{path}\"")


def validate_input(path: str) -> None:
    import stat
    from pipeline.errors import InputError, stat_input
    st = stat_input(path)
    if stat.S_ISDIR(st.st_mode):
        raise InputError(f"{path}: is a directory, not a file")
    if not os.access(path, os.R_OK):
        raise InputError(f"{path}: not readable (permission denied)")
    if st.st_size == 0:
        raise InputError(f"{path}: empty file")


def validate_output(path: str, inputs: str | list[str] = (), overwrite: bool = False, kind: str = "output") -> None:
    """The output's folder exists and is writable, the output is none of the inputs (also through
    symlinks and hard links: same device and inode), and an existing output needs `overwrite`."""
    from pipeline.errors import InputError
    from pipeline.paths import check_writable
    p = Path(path)
    check_writable(path, kind)
    if p.exists() or p.is_symlink():
        for src in [inputs] if isinstance(inputs, str) else inputs:
            try:
                same = os.path.samefile(src, path)
            except OSError:
                same = False
            if same:
                raise InputError(f"{path}: the {kind} is the input file {src} (same file); choose another {kind} path")
        if not overwrite:
            raise InputError(f"{path}: already exists; pass --overwrite to replace it")


def looks_like_path(model: str) -> bool:
    """A --model value meant as a checkpoint file rather than a name."""
    return os.sep in model or model.lower().endswith(CHECKPOINT_SUFFIXES)


def upscaling_models() -> list[str]:
    """What --model accepts for upscaling: interpolators, shipped weights, upscaling architectures
    (those with published scales, or a default that needs no weights)."""
    import models
    shipped = sorted(models.shipped_weights())
    archs = sorted(name for name, a in models.architectures().items() if a.scales or a.default)
    return ["bicubic", "lanczos", *shipped, *archs]


def validate_model(model: str, weights: str | None = None, scale: int | None = None, **operator_kwargs) -> None:
    """Everything about --model/--weights/--scale that can be known on the driver: names, files,
    and the checkpoint itself (read, checked for NaN/Inf, built, scale matched) by building the
    operator once on the CPU."""
    import models
    from models import CheckpointError
    from operators.upscale import INTERPOLATORS, Upscaler
    from pipeline.errors import InputError
    if weights is not None and not Path(weights).is_file():
        raise CheckpointError(f"{weights}: no such file" if not Path(weights).exists()
                              else f"{weights}: not a file")
    if scale is not None and scale < 1:
        raise InputError(f"--scale {scale}: must be a positive integer")
    if model in INTERPOLATORS:
        if not scale:
            raise InputError(f"--model {model} needs --scale (e.g. --scale 2)")
        return
    archs = models.architectures()
    shipped = models.shipped_weights()
    is_file = Path(model).is_file()
    if model not in shipped and model not in archs and not is_file:
        if looks_like_path(model):
            raise CheckpointError(f"{model}: no such file")
        raise InputError(f"unknown model {model!r}; models that upscale: {', '.join(upscaling_models())} "
                         f"(architectures need --weights CHECKPOINT)")
    if model in archs and not is_file:
        a = archs[model]
        if not (a.scales or a.default):
            raise InputError(f"--model {model}: not an upscaling model; models that upscale: "
                             f"{', '.join(upscaling_models())}")
        if weights is None and a.default is None:
            raise InputError(f"--model {model} needs --weights (a checkpoint file); models that need none: "
                             f"{', '.join(['bicubic', 'lanczos', *sorted(shipped)] + sorted(n for n in archs if archs[n].default))}")
        if weights is None and model == "zssr":
            return  # trained on the video itself: nothing to read
        # others without weights load by name (the authors' SRMD from the [srmd] extra): built
        # below, so a missing extra is one line here rather than inside an actor
    try:
        Upscaler(model, weights=weights, scale=scale, device="cpu", **{"precision": "fp32", **operator_kwargs})
    except (CheckpointError, models.UnknownCheckpoint):
        raise
    except ValueError as e:
        raise InputError(f"--model {model}: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None


def default_model(scale: int | None) -> str:
    """The shipped model for the scale. A scale none ships is refused (before Ray), not quietly
    run as bicubic: the user asked for a model's upscale and would get an interpolation."""
    import models
    from pipeline.errors import InputError
    shipped = models.shipped_weights()
    name = f"rayscale-x{scale or 2}"
    if name in shipped:
        return name
    has = sorted(int(n.removeprefix("rayscale-x")) for n in shipped if n.removeprefix("rayscale-x").isdigit())
    raise InputError(f"--scale {scale}: the default model rayscale-xS has {', '.join(f'x{s}' for s in has)} only; "
                     f"pass --model for x{scale} (bicubic, lanczos, srmd, or a checkpoint trained for x{scale})")


def exit_on_input_error(main):
    """Bad input -> one line naming the file and the reason on stderr, exit code 2; Ray that
    cannot start -> one line, exit code 1."""
    @functools.wraps(main)
    def wrapper(*a, **kw):
        from models import CheckpointError, UnknownCheckpoint
        from pipeline.engine import DiskFull
        from pipeline.errors import InputError
        try:
            return interrupted_code(main(*a, **kw))
        except KeyboardInterrupt:   # outside the jobs' own handlers: nothing started is lost
            print("interrupted", file=sys.stderr)
            return interrupted_code(130)
        except (InputError, CheckpointError, UnknownCheckpoint) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        except DiskFull as e:
            print(f"error: {e}; finished work is kept: free space and rerun", file=sys.stderr)
            return 1
        except RayUnavailable as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        except OSError as e:
            from pipeline.engine import disk_full
            full = disk_full(e)
            if full is None:
                raise
            print(f"error: {full}; finished work is kept: free space and rerun", file=sys.stderr)
            return 1
        except Exception as e:  # noqa: BLE001
            if not type(e).__module__.startswith("ray."):
                raise
            # Ray itself failed (a raylet or the GCS killed): one line; what finished is in the
            # manifest for --resume / the next run
            text = [x for x in str(getattr(e, "cause", None) or e).strip().splitlines() if x.strip()]
            print(f"error: Ray failed ({type(e).__name__}: {text[-1] if text else 'no message'}); finished "
                  f"work is kept: rerun (with --resume for a video) to go on", file=sys.stderr)
            return 1
    return wrapper

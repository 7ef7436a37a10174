"""One job at a time per work folder (or manifest, or output): an exclusive lock beside it.

    with JobLock(work_dir):      # refused with one line while another live job holds it
        ...

The lock is `fcntl.flock` on `<path>.lock`, a file beside the locked path (so removing and
recreating the folder itself cannot drop the lock), holding the holder's pid, host and process
start time for the message. The kernel releases a flock when its holder dies, so a lock left by a
killed job is simply taken over; a lock file whose recorded holder on this host is gone while the
flock is still held (a descriptor leaked into a surviving child) is replaced as stale."""
from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from pathlib import Path

from .errors import InputError


class LockHeld(InputError):
    """Another live job holds the lock: the message names the path and the holder."""


def _start_time(pid: int) -> float | None:
    """The process's start time (seconds since boot, from /proc), to tell a reused pid apart."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        return int(fields[19]) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def _alive(pid: int, started: float | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    now = _start_time(pid)
    return started is None or now is None or abs(now - started) < 1.0


class JobLock:
    def __init__(self, path: str | os.PathLike, what: str = "job"):
        self.path = Path(path)
        self.lock_path = self.path.with_name(self.path.name + ".lock")
        self.what = what
        self.fd: int | None = None

    def acquire(self) -> "JobLock":
        for _ in range(20):
            fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = self._read(fd)
                os.close(fd)
                if self._stale(holder):
                    self._unlink_if_same(holder)
                    continue
                raise LockHeld(self._message(holder)) from None
            except OSError as e:
                os.close(fd)
                raise InputError(f"{self.path}: cannot lock {self.lock_path} ({e.strerror})") from None
            # the file may have been unlinked (released or taken over) between open and flock
            try:
                same = os.fstat(fd).st_ino == os.stat(self.lock_path).st_ino
            except FileNotFoundError:
                same = False
            if not same:
                os.close(fd)
                continue
            info = {"pid": os.getpid(), "host": socket.gethostname(), "started": _start_time(os.getpid()),
                    "since": time.time()}
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(info).encode(), 0)
            self.fd = fd
            return self
        raise InputError(f"{self.path}: could not lock {self.lock_path} (it keeps changing)")

    def release(self) -> None:
        if self.fd is None:
            return
        try:
            os.unlink(self.lock_path)  # while still holding it: a waiter then sees a new inode
        except FileNotFoundError:
            pass
        os.close(self.fd)
        self.fd = None

    def __enter__(self) -> "JobLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

    @staticmethod
    def _read(fd: int) -> dict:
        try:
            return json.loads(os.pread(fd, 4096, 0) or b"{}")
        except (OSError, ValueError):
            return {}

    def _stale(self, holder: dict) -> bool:
        """Held, but the recorded holder is a process of this host that no longer runs."""
        pid = holder.get("pid")
        if not isinstance(pid, int) or holder.get("host") != socket.gethostname():
            return False
        return not _alive(pid, holder.get("started"))

    def _unlink_if_same(self, holder: dict) -> None:
        try:
            with open(self.lock_path, "rb") as f:
                if json.loads(f.read() or b"{}") == holder:
                    os.unlink(self.lock_path)
        except (OSError, ValueError):
            pass

    def _message(self, holder: dict) -> str:
        pid, host = holder.get("pid", "?"), holder.get("host", "?")
        since = holder.get("since")
        when = time.strftime(" since %H:%M:%S", time.localtime(since)) if isinstance(since, (int, float)) else ""
        return (f"{self.path}: in use by another {self.what} (pid {pid} on {host}{when}); "
                f"wait for it to finish or stop it")

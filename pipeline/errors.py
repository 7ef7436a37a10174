"""One-line errors about inputs, and their reasons in words."""
import errno
import os


class InputError(Exception):
    """A bad input or output item: the message is one line naming the file and the reason."""


def stat_input(path, missing: str = "no such file") -> os.stat_result:
    """os.stat of an input, refused in one line naming the real reason: a symlink loop and a
    dangling symlink are not "no such file" (os.path.exists says False for all three)."""
    try:
        return os.stat(path)
    except OSError as e:
        raise InputError(f"{path}: {_stat_reason(path, e, missing)}") from None


def _stat_reason(path, e: OSError, missing: str) -> str:
    if e.errno == errno.ELOOP:
        return "symlink loop"
    if isinstance(e, FileNotFoundError):
        return "broken symlink (target missing)" if os.path.islink(path) else missing
    if isinstance(e, PermissionError):
        return "not readable (permission denied)"
    return e.strerror or type(e).__name__

"""Checks on an output path that every job makes before any work (one line each)."""
from __future__ import annotations

import os
from pathlib import Path

from .errors import InputError


def check_writable(path: str | os.PathLike, kind: str = "output") -> None:
    """`path` can be created: not a folder, its folder exists and is writable."""
    p = Path(path)
    if p.is_dir():
        raise InputError(f"{path}: {kind} path is a directory")
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.is_dir():
        raise InputError(f"{path}: {kind} folder {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise InputError(f"{path}: {kind} folder {parent} is not writable")

"""Read a checkpoint file into a plain state dict, whatever wrapper the authors saved it in."""
from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path

import torch


WRAPPER_KEYS = ("params_ema", "params", "state_dict", "model", "net", "generator", "netG")


class CheckpointError(ValueError):
    """The file cannot be read as a checkpoint (missing, truncated, unsafe, not a state dict)."""


def unwrap(obj) -> dict[str, torch.Tensor]:
    """Peel 'params'/'state_dict'/'model' wrappers and DataParallel's 'module.' prefix."""
    while isinstance(obj, dict) and not _is_state_dict(obj):
        inner = next((obj[k] for k in WRAPPER_KEYS if k in obj and isinstance(obj[k], dict)), None)
        if inner is None:
            raise CheckpointError("no state dict inside (top-level keys: %s)" % ", ".join(list(map(str, obj))[:8]))
        obj = inner
    if not isinstance(obj, dict) or not obj:
        raise CheckpointError("not a state dict (got %s)" % type(obj).__name__)
    sd = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    return sd


def _is_state_dict(obj: dict) -> bool:
    return bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The file's state dict, refused (CheckpointError, one line naming the file) when it cannot be
    read or holds NaN/Inf values: such a network writes garbage without any error of its own."""
    path = Path(path)
    sd = _read(path)
    bad = first_non_finite(sd)
    if bad is not None:
        raise CheckpointError(f"{path}: tensor {bad!r} holds NaN or Inf values; the checkpoint is damaged")
    return sd


def first_non_finite(sd: dict[str, torch.Tensor]) -> str | None:
    for k, v in sd.items():
        if v.is_floating_point() or v.is_complex():
            if not bool(torch.isfinite(v).all()):
                return k
    return None


def _read(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: empty file")
    suffix = path.suffix.lower()
    try:
        if suffix == ".safetensors":
            from safetensors import SafetensorError
            from safetensors.torch import load_file
            try:
                return dict(load_file(str(path)))
            except SafetensorError as e:
                raise CheckpointError(f"{path}: unreadable or truncated safetensors file: "
                                      f"{str(e).splitlines()[0] if str(e) else 'invalid'}") from None
        if suffix == ".mat":
            from .srmd import state_dict_from_matconvnet
            return state_dict_from_matconvnet(path)
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except CheckpointError:
        raise
    except pickle.UnpicklingError as e:
        raise CheckpointError(f"{path}: refused to unpickle (weights_only=True): {str(e).splitlines()[0]}") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: unreadable or truncated checkpoint: {str(e).splitlines()[0]}") from None
    try:
        return unwrap(obj)
    except CheckpointError as e:
        raise CheckpointError(f"{path}: {e}") from None

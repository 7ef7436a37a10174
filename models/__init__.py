"""The model zoo: pure PyTorch architectures, loaders for the authors' checkpoints, a registry.

    net, spec = models.load("path/to/RDN_x2.pth")        # detect the architecture from the keys
    net, spec = models.load("srmd", weights="srmd_x4.pth")
    models.detect("DBPN_x4.pth")                          # -> Detected(arch, variant, scale)
"""
from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from .checkpoint import CheckpointError
from .checkpoint import read_state_dict as _read_checkpoint
from .spec import Architecture, ModelSpec, StateDict, UnknownCheckpoint

# One module per architecture family; order = detection priority (most specific first).
_ARCH_MODULES = ("srmd", "rdn", "dbpn", "sftgan", "outdoorsceneseg", "fsrnet", "superfan",
                 "dsrn", "attngan", "zssr", "rayscale")
WEIGHTS_DIR = Path(__file__).with_name("weights")

__all__ = ["load", "detect", "architectures", "ModelSpec", "Detected", "CheckpointError",
           "UnknownCheckpoint", "read_state_dict", "shipped_weights"]


@dataclass(frozen=True)
class Detected:
    arch: str
    variant: str
    scale: int


def architectures() -> dict[str, Architecture]:
    out: dict[str, Architecture] = {}
    for name in _ARCH_MODULES:
        try:
            mod = importlib.import_module(f".{name}", __name__)
        except ModuleNotFoundError as e:
            if e.name == f"{__name__}.{name}":
                continue  # family not written yet
            raise
        for arch in getattr(mod, "ARCHITECTURES", ()):
            out[arch.name] = arch
    return out


def shipped_weights() -> dict[str, Path]:
    """Weights that ship inside the package, by name (e.g. 'rayscale-x2')."""
    return {p.stem: p for p in sorted(WEIGHTS_DIR.glob("*.safetensors"))}


def read_state_dict(path: str | os.PathLike) -> dict:
    """A state dict from any file the zoo reads: .pth/.pt/.safetensors/.mat (models/checkpoint.py)
    or an ncnn model (`x.param` or `x.bin` with its `x.param` beside it; models/ncnn.py)."""
    p = Path(path)
    if p.suffix.lower() == ".param" or (p.suffix.lower() == ".bin" and p.with_suffix(".param").is_file()):
        from .ncnn import state_dict_from_ncnn
        return state_dict_from_ncnn(p)
    return _read_checkpoint(path)


def _find_arch(sd: StateDict, only: str | None = None) -> Architecture:
    archs = architectures()
    if only is not None:
        if only not in archs:
            raise UnknownCheckpoint(f"unknown architecture {only!r} (known: {', '.join(sorted(archs))})")
        if not archs[only].detect(sd):
            other = next((a.name for a in archs.values() if a.detect(sd)), None)
            hint = f"; it looks like {other}" if other else ""
            raise UnknownCheckpoint(f"checkpoint does not match architecture {only!r}{hint}")
        return archs[only]
    for arch in archs.values():
        if arch.detect(sd):
            return arch
    sample = ", ".join(list(sd)[:4])
    raise UnknownCheckpoint(f"no known architecture has these keys (first: {sample})")


def build(sd: StateDict, arch: str | None = None) -> tuple[nn.Module, ModelSpec]:
    """Build the network the state dict describes and load it with strict=True."""
    a = _find_arch(sd, arch)
    net, spec = a.from_state_dict(sd)
    try:
        net.load_state_dict(sd, strict=True)
    except RuntimeError as e:
        raise UnknownCheckpoint(f"{a.name}: state dict does not fit: {str(e).splitlines()[0]}") from None
    return net.eval(), spec


def detect(path: str | os.PathLike) -> Detected:
    sd = read_state_dict(path)
    try:
        _, spec = _find_arch(sd).from_state_dict(sd)
    except UnknownCheckpoint as e:
        raise UnknownCheckpoint(f"{path}: {e}") from None
    return Detected(spec.arch, spec.variant, spec.scale)


def load(name_or_path: str | os.PathLike, weights: str | os.PathLike | None = None,
         scale: int | None = None) -> tuple[nn.Module, ModelSpec]:
    """Return (eval-mode network, spec).

    `name_or_path` is a checkpoint file, a shipped weight name ('rayscale-x2'), or an
    architecture name; an architecture name needs `weights` unless it has a working default
    (ZSSR). `scale` is checked against the checkpoint's when given.
    """
    name = str(name_or_path)
    shipped = shipped_weights()
    arch_name: str | None = None
    if weights is None and name in shipped:
        weights = shipped[name]
    elif weights is None and Path(name).is_file():
        weights = name
    else:
        arch_name = name
    if arch_name == "srmdnf" and weights is not None:   # a name for the authors' weights; files are "srmd"
        arch_name = "srmd"
    if weights is None:
        archs = architectures()
        if arch_name not in archs:
            raise UnknownCheckpoint(f"unknown model {arch_name!r} (known: {', '.join(sorted(archs) + sorted(shipped))})")
        if archs[arch_name].default is None:
            raise UnknownCheckpoint(f"model {arch_name!r} needs --weights (a checkpoint file); "
                                    f"models that need none: {', '.join(sorted(shipped) + [a for a in archs if archs[a].default])}")
        net, spec = archs[arch_name].default(scale=scale)
        return net.eval(), spec
    sd = read_state_dict(weights)
    try:
        net, spec = build(sd, arch_name)
    except UnknownCheckpoint as e:
        raise UnknownCheckpoint(f"{weights}: {e}") from None
    if scale is not None and spec.scale not in (0, scale):
        raise UnknownCheckpoint(f"{weights}: this checkpoint upscales x{spec.scale}, not x{scale}")
    return net, spec

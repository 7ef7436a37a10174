"""Write any checkpoint the zoo can load as a clean .safetensors file (plain state dict, official
key names, no pickle), after checking that it loads strictly into its architecture.

    rayscale-convert SRMDx4.mat srmd_x4.safetensors
    rayscale-convert srmd_x3.param srmd_x3.safetensors     # ncnn pair (.bin beside it), fp16 -> fp32
    python -m models.convert DBPN_x4.pth dbpn_x4.safetensors [--arch dbpn]
"""
from __future__ import annotations

import argparse
import os
import sys

from safetensors.torch import save_file

from . import build, read_state_dict
from .checkpoint import CheckpointError
from .spec import UnknownCheckpoint


def convert(src: str, dst: str, arch: str | None = None) -> dict[str, str]:
    sd = read_state_dict(src)
    net, spec = build(sd, arch)
    clean = {k: v.detach().contiguous().clone() for k, v in net.state_dict().items()}
    meta = {"arch": spec.arch, "variant": spec.variant, "scale": str(spec.scale), "source": str(src)}
    save_file(clean, dst, metadata=meta)
    apply_umask(dst)
    return meta


def apply_umask(path: str) -> None:
    """safetensors writes 0600 (a private temp file renamed): give the file the mode any new file
    gets under the user's umask, like `cp` would."""
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(path, 0o666 & ~mask)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("src")
    ap.add_argument("dst")
    ap.add_argument("--arch", default=None, help="architecture name when detection is ambiguous (e.g. fsrgan)")
    a = ap.parse_args(argv)
    if not a.dst.endswith(".safetensors"):
        print(f"error: {a.dst}: output must end in .safetensors", file=sys.stderr)
        return 2
    try:
        meta = convert(a.src, a.dst, a.arch)
    except (CheckpointError, UnknownCheckpoint) as e:
        print(f"error: {a.src}: {e}" if a.src not in str(e) else f"error: {e}", file=sys.stderr)
        return 2
    print(f"{a.dst}: {meta['arch']} ({meta['variant']}) x{meta['scale']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""What every job script shares: Ray connection flags, the default model, one-line errors."""
from __future__ import annotations

import functools
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def add_ray_args(ap) -> None:
    g = ap.add_argument_group("ray")
    g.add_argument("--address", default=None,
                   help="Ray cluster address (default: RAY_ADDRESS when set, e.g. under `ray job submit`, "
                        "else an embedded local Ray)")
    g.add_argument("--num-cpus", type=int, default=None, help="CPUs for an embedded local Ray")


def connect_ray(args) -> None:
    import ray
    if ray.is_initialized():
        return
    address = args.address or os.environ.get("RAY_ADDRESS")
    env = {"env_vars": {"PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}}
    if address and not os.environ.get("RAY_JOB_ID") and args.address:
        # a driver outside `ray job submit`: ship this checkout to the cluster's workers
        env = {"working_dir": str(ROOT), "excludes": [".venv", ".git", "*.parts", "__pycache__"]}
    kwargs = dict(address=address, runtime_env=env, log_to_driver=True, include_dashboard=False)
    if not address:
        kwargs.update(num_cpus=args.num_cpus or max(2, os.cpu_count() or 1), configure_logging=False)
        os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    else:
        kwargs.pop("include_dashboard")
    ray.init(**kwargs)


def default_model(scale: int | None) -> str:
    """The shipped model for the scale; bicubic (announced) while none ships."""
    import models
    shipped = models.shipped_weights()
    name = f"rayscale-x{scale or 2}"
    if name in shipped:
        return name
    print(f"note: no shipped model for x{scale or 2}; using bicubic (pass --model)", file=sys.stderr)
    return "bicubic"


def exit_on_input_error(main):
    """Bad input -> one line naming the file and the reason on stderr, exit code 2."""
    @functools.wraps(main)
    def wrapper(*a, **kw):
        from models import CheckpointError, UnknownCheckpoint
        from pipeline.errors import InputError
        try:
            return main(*a, **kw)
        except (InputError, CheckpointError, UnknownCheckpoint) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    return wrapper

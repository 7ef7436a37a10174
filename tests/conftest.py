import os
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("RAYSCALE_SHARED", ROOT.parent / "shared"))

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def shared_path(*parts: str) -> Path:
    """A path under ../shared, read in place; skips the test when it is not there."""
    p = SHARED.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"needs ../shared data: {p} is absent")
    return p


def golden(name: str) -> dict:
    return torch.load(shared_path("golden", name), map_location="cpu", weights_only=True)


def assert_close_to_golden(out, ref, tol):
    """Compare tensors / lists / dicts of tensors with the golden tolerance."""
    if isinstance(ref, dict):
        for k in ref:
            assert_close_to_golden(out[k], ref[k], tol)
    elif isinstance(ref, (list, tuple)):
        assert len(out) == len(ref)
        for o, r in zip(out, ref):
            assert_close_to_golden(o, r, tol)
    else:
        assert out.shape == ref.shape, (out.shape, ref.shape)
        err = (out.float() - ref.float()).abs().max().item()
        assert torch.allclose(out.float(), ref.float(), rtol=tol["rtol"], atol=tol["atol"]), f"max abs err {err}"


@pytest.fixture(scope="session")
def local_ray():
    """One embedded Ray for the tests that run jobs in-process (the job scripts reuse it)."""
    import ray
    session = None
    if not ray.is_initialized():
        # "local": a Ray of its own; without it ray.init joins any other Ray running on the host
        ray.init(address="local", num_cpus=2, include_dashboard=False, configure_logging=False,
                 log_to_driver=False, runtime_env={"env_vars": {"PYTHONPATH": str(ROOT)}})
        session = ray._private.worker._global_node.get_session_dir_path()
    yield
    if session:  # Ray keeps every session's folder; the suite's own need not pile up in /tmp/ray
        import shutil
        ray.shutdown()
        shutil.rmtree(session, ignore_errors=True)

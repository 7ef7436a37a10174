"""ZSSR training for the video job: one net per shot, trained in a Ray task on a few of its frames
(operators/zssr.py applies them; it knows nothing of Ray or PyAV)."""
from __future__ import annotations

import functools

from models.zssr import train_zssr


def train_shot(info, first: int, last: int, scale: int, frames: int = 3, max_iters: int | None = None,
               max_seconds: float | None = None, device: str = "cpu", seed: int = 0) -> dict:
    """Train one net on `frames` frames spread over the shot; {'state_dict', 'iterations', 'seconds', 'frames'}."""
    from pipeline.shots import read_frames, sample_indices
    idx = sample_indices(first, last, frames)
    imgs = read_frames(info, idx)
    if not imgs:
        raise RuntimeError(f"{info.path}: no frame of shot {first}-{last} could be decoded for ZSSR training")
    st: dict = {}
    net = train_zssr(imgs, scale, max_iters=max_iters, max_seconds=max_seconds, device=device, seed=seed,
                     stats=st)
    sd = {k: v.detach().to("cpu").contiguous() for k, v in net.state_dict().items()}
    return {"state_dict": sd, "iterations": st.get("iterations"), "seconds": st.get("seconds"), "frames": idx}


def launch_training(info, shots: list[tuple[int, int]], scale: int, frames: int = 3,
                    max_iters: int | None = None, max_seconds: float | None = None,
                    device: str = "cpu", num_gpus: float = 0) -> list:
    """One Ray task per shot (num_cpus=1); returns, in shot order, a picklable fetch of each
    task's result for ZSSRUpscaler (the object ref travels inside it)."""
    import ray
    task = ray.remote(num_cpus=1, num_gpus=num_gpus, max_retries=2)(train_shot)
    refs = [task.remote(info, a, b, scale, frames, max_iters, max_seconds, device, seed=k)
            for k, (a, b) in enumerate(shots)]
    return [functools.partial(ray.get, r) for r in refs]

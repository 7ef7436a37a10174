"""ZSSR for video: one net trained per shot on a few of its frames, applied to every frame of the shot.

The job trains one net per shot before streaming (pipeline/zssr_shots.py: one Ray task per shot)
and builds the stage with `functools.partial(ZSSRUpscaler, scale, shots, nets, ...)`, where each
net is a state dict or a zero-argument callable that returns one (a fetch of the training task's
result, waiting for it): the factory pickles, an actor that is restarted rebuilds the same
operator, and this module knows nothing of Ray. The actor fetches a shot's net the first time a
frame of that shot arrives, so inference of early shots overlaps the training of later ones.

Test-time default is cheap (no 8-way self-ensemble, 2 back-projection steps): the ensemble costs 8
forward passes per frame for a few tenths of a dB; `ensemble=True, back_projection_iters=10` is the
paper's still-image setting.
"""
from __future__ import annotations

import bisect

import numpy as np
import torch

from models.zssr import apply_zssr, from_state_dict


def parse_budget(text: str | int | float) -> tuple[int | None, float | None]:
    """'500' -> 500 iterations (per scale step); '30s' -> 30 seconds of training per shot."""
    s = str(text).strip().lower()
    try:
        if s.endswith("s"):
            sec = float(s[:-1])
            if sec > 0:
                return None, sec
        else:
            it = int(s)
            if it > 0:
                return it, None
    except ValueError:
        pass
    raise ValueError(f"budget {text!r}: give iterations (e.g. 500) or seconds with an s suffix (e.g. 30s)")


class ZSSRUpscaler:
    """Batch operator: each frame goes through the net of its shot (looked up by the batch's `index`)."""

    def __init__(self, scale: int, shots: list[tuple[int, int]], nets: list, ensemble: bool = False,
                 back_projection_iters: int = 2, device: str = "cpu", tile: int | None = 512):
        if len(shots) != len(nets) or not shots:
            raise ValueError("ZSSRUpscaler needs one net (state dict or object ref) per shot")
        self.spec_scale = int(scale)
        self.shots = [tuple(map(int, s)) for s in shots]
        self.firsts = [s[0] for s in self.shots]
        self.nets = list(nets)
        self.ensemble, self.bp_iters, self.tile = ensemble, int(back_projection_iters), tile
        self.device = torch.device(device)
        self._loaded: dict[int, torch.nn.Module] = {}

    @property
    def scale(self) -> int:
        return self.spec_scale

    def shot_of(self, index: int) -> int:
        return max(0, bisect.bisect_right(self.firsts, int(index)) - 1)

    def _net(self, k: int) -> torch.nn.Module:
        if k not in self._loaded:
            item = self.nets[k]
            if callable(item):                      # the training task's result, when it is ready
                item = item()
            sd = item.get("state_dict", item)
            net, _ = from_state_dict(sd)
            net.load_state_dict(sd, strict=True)
            self._loaded[k] = net.to(self.device).eval()
        return self._loaded[k]

    def __call__(self, batch: dict) -> dict:
        for k in {self.shot_of(i) for i in batch["index"]}:   # waits for training still running
            self._net(k)
        frames = batch["frames"]
        s = self.scale
        up = np.zeros((len(frames), frames.shape[1] * s, frames.shape[2] * s, frames.shape[3]), frames.dtype)
        peak = 255.0 if frames.dtype == np.uint8 else 65535.0
        for j, (f, i) in enumerate(zip(frames, batch["index"])):
            out = apply_zssr(self._net(self.shot_of(i)), f, s, ensemble=self.ensemble,
                             back_projection_iters=self.bp_iters, device=self.device, tile=self.tile)
            up[j] = np.clip(np.round(out * peak), 0, peak).astype(frames.dtype)
        out = dict(batch)
        out["frames"] = up
        return out

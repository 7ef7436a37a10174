"""Ray workers of the stage graph: decode tasks, operator actor pools, segment writers.

Batches travel between them as object refs; the driver only routes refs and counts frames."""
from __future__ import annotations

from collections import deque
from typing import Callable

import ray

from .decode import decode_segment
from .encode import EncodeSettings, SegmentWriter, StreamParams


# glibc returns big freed blocks to the OS, so every large activation costs fresh page faults
# (~40% of a CPU model's time here); keep blocks up to the 32 MiB maximum on the heap instead.
OPERATOR_ENV = {"MALLOC_MMAP_THRESHOLD_": str(32 << 20), "MALLOC_TRIM_THRESHOLD_": str(256 << 20)}


@ray.remote(num_cpus=0)
def decode_task(info, seg, batch_size):
    yield from decode_segment(info, seg, batch_size)


@ray.remote
class OperatorActor:
    """Owns one operator (and its model) for the actor's lifetime."""

    def __init__(self, factory: Callable, threads: int | None = None):
        import torch
        if threads:
            torch.set_num_threads(threads)
        self.error = None
        try:
            self.op = factory()
        except Exception as e:  # reported by describe(): a one-line reason, not a traceback
            self.op, self.error = None, str(e).splitlines()[0] if str(e) else type(e).__name__

    def describe(self) -> dict:
        if self.error:
            return {"error": self.error}
        return {"scale": self.op.scale, "device": str(getattr(self.op, "device", "cpu"))}

    def process(self, batch: dict) -> dict:
        return self.op(batch)


class ActorPool:
    """Routes each batch to the operator actor with the fewest batches outstanding."""

    def __init__(self, actors: list):
        self.actors = actors
        self.outstanding = {i: deque() for i in range(len(actors))}

    def submit(self, batch_ref):
        for q in self.outstanding.values():
            while q:
                done, _ = ray.wait([q[0]], timeout=0)
                if not done:
                    break
                q.popleft()
        i = min(self.outstanding, key=lambda k: len(self.outstanding[k]))
        ref = self.actors[i].process.remote(batch_ref)
        self.outstanding[i].append(ref)
        return ref


@ray.remote(num_cpus=0)
class WriterActor:
    """Encodes segments one after another; one actor per concurrently open segment."""

    def __init__(self):
        self.writer = None
        self.warnings: list[str] = []
        self.timings: dict[str, float] = {}

    def open(self, path: str, settings: EncodeSettings, params: StreamParams) -> None:
        if self.writer is not None:
            self.writer.abort()
        self.writer = SegmentWriter(path, settings, params)
        self.warnings, self.timings = [], {}

    def write(self, batch: dict) -> dict:
        n = self.writer.write(batch["frames"], batch["pts"])
        return {"frames": n, "warnings": list(batch.get("warnings", ())),
                "timings": dict(batch.get("timings", {}))}

    def close(self) -> dict:
        result = self.writer.close()
        self.writer = None
        return result

    def abort(self) -> None:
        if self.writer is not None:
            self.writer.abort()
            self.writer = None

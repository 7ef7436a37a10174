"""Small operators, a source and a sink for engine tests: known arithmetic, so a test can compute
the expected output without the engine."""
from __future__ import annotations

import functools

import numpy as np

from operators.base import Operator, concat
from pipeline import engine


class AddOne(Operator):
    """frames + 1 (uint8, saturating), and records which process ran it."""
    reads, writes = ("frames",), ("frames", "pid")

    def __call__(self, batch):
        import os
        out = dict(batch)
        out["frames"] = np.minimum(batch["frames"].astype(np.int16) + 1, 255).astype(np.uint8)
        out["pid"] = np.full(len(batch["frames"]), os.getpid(), np.int64)
        return out


class Double(Operator):
    """Nearest-neighbour x2: the scale the sink must learn from the pools."""
    scale = 2
    reads, writes = ("frames",), ("frames",)

    def __call__(self, batch):
        out = dict(batch)
        out["frames"] = batch["frames"].repeat(2, axis=1).repeat(2, axis=2)
        return out


class Mark(Operator):
    """Writes a `mark` annotation: the frame's mean value."""
    reads, writes = ("frames",), ("mark",)

    def __call__(self, batch):
        out = dict(batch)
        out["mark"] = batch["frames"].reshape(len(batch["frames"]), -1).mean(1).astype(np.float32)
        return out


class NeedsMark(Operator):
    reads, writes = ("frames", "mark"), ("seen_mark",)

    def __call__(self, batch):
        out = dict(batch)
        out["seen_mark"] = batch["mark"].copy()
        return out


class HoldAll(Operator):
    """Stateful: holds every row of an item back and releases them at flush, with the item's row
    count in `held` (so a test sees that one actor saw the whole item, in order)."""
    stateful = True
    reads, writes = ("frames",), ("held",)

    def __init__(self):
        self.rows = []

    def __call__(self, batch):
        self.rows.append(batch)
        return {k: v[:0] for k, v in batch.items()} | {"held": np.zeros(0, np.int64)}

    def flush(self):
        if not self.rows:
            return None
        out = concat(self.rows)
        self.rows = []
        out["held"] = np.full(len(out["index"]), len(out["index"]), np.int64)
        return out


def _read(item, batch):
    n, start = item.payload
    for a in range(0, n, batch):
        idx = np.arange(start + a, start + min(n, a + batch), dtype=np.int64)
        frames = np.stack([np.full((4, 6, 3), i % 200, np.uint8) for i in idx])
        yield {"columns": {"frames": frames, "index": idx, "pts": idx * 10}, "meta": {"units": len(idx)}}


class CountSource(engine.Source):
    """`items` items of `n` frames each; frame i is filled with i % 200."""
    unit, item_name = "frame", "item"

    def __init__(self, items=3, n=10, batch=3):
        self.items, self.n, self.batch = items, n, batch

    def plan(self, done):
        return [engine.Item(f"it{k}", [engine.Entry(f"it{k}", "toy", units=self.n)], (self.n, k * self.n))
                for k in range(self.items) if f"it{k}" not in done]

    def reader(self):
        return functools.partial(_read, batch=self.batch)

    def total_units(self):
        return self.items * self.n


class _Collect(engine.ItemWriter):
    def __init__(self, key, directory):
        self.key, self.dir, self.parts = key, directory, []

    def write(self, columns, meta):
        if columns and len(columns.get("index", ())):
            self.parts.append(columns)
        return len(columns.get("index", ())) if columns else 0

    def close(self):
        import os
        import pickle
        import ray
        out = concat(self.parts) if self.parts else {}
        path = os.path.join(self.dir, f"{self.key}.pkl")
        with open(path, "wb") as f:
            pickle.dump({"columns": out, "node": ray.get_runtime_context().get_node_id()}, f)
        return {self.key: {"output": path, "frames": len(out.get("index", ()))}}


class CollectSink(engine.Sink):
    """Pickles each item's rows (and the writer's node id) into `directory`."""

    def __init__(self, directory):
        self.dir, self.scale = str(directory), None

    def on_write_start(self, scale):
        self.scale = scale

    def open(self, item):
        return _Collect(item.key, self.dir)


def load(directory, key):
    import pickle
    with open(f"{directory}/{key}.pkl", "rb") as f:
        return pickle.load(f)


class DieUnlessShrunk(Operator):
    """Kills its own process (as the kernel's out-of-memory killer would) on frames of item 1
    until the engine's retry asks it to shrink its tiles."""
    reads, writes = ("frames",), ("frames",)

    def __init__(self):
        self.level = 0

    def shrink(self, level):
        self.level = level

    def __call__(self, batch):
        import os
        import signal
        if self.level == 0 and len(batch["index"]) and 10 <= int(batch["index"][0]) < 20:
            os.kill(os.getpid(), signal.SIGKILL)
        return dict(batch)


class _DieOnce(_Collect):
    """A writer whose process dies (as under Ray's memory monitor) at its first write of item
    it1, once: a marker file says it already happened."""

    def write(self, columns, meta):
        import os
        import signal
        marker = os.path.join(self.dir, "writer-died")
        if self.key == "it1" and not os.path.exists(marker):
            open(marker, "w").close()
            os.kill(os.getpid(), signal.SIGKILL)
        return super().write(columns, meta)


class DyingWriterSink(CollectSink):
    def open(self, item):
        return _DieOnce(item.key, self.dir)


class KillOnce(Operator):
    """SIGKILLs its own process (as Ray's memory monitor would) at the first batch holding frame
    `at`, once: the marker file outlives the restarted actor."""
    reads, writes = ("frames",), ()

    def __init__(self, marker: str, at: int):
        self.marker, self.at = marker, at

    def __call__(self, batch):
        import os
        import signal
        if self.at in batch["index"].tolist() and not os.path.exists(self.marker):
            open(self.marker, "w").close()
            os.kill(os.getpid(), signal.SIGKILL)
        return batch


class _RefuseIt1(_Collect):
    """A writer that refuses to finalise item it1 every time (as the video sink refuses a short
    segment)."""

    def close(self):
        if self.key == "it1":
            raise engine.Redo("3 of the 10 planned rows reached the writer")
        return super().close()


class RefusingSink(CollectSink):
    def open(self, item):
        return _RefuseIt1(item.key, self.dir)

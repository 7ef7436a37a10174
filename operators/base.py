"""The operator protocol every stage follows (docs/batches.md is the full contract).

An operator maps a batch (a dict of equal-length numpy columns) to a batch. It is built inside a
stage's actor by a picklable factory, owns its model, and knows nothing of Ray, PyAV or files."""
from __future__ import annotations

from typing import ClassVar

import numpy as np

Batch = dict[str, np.ndarray]


class Operator:
    """Base class with the protocol's defaults; subclasses override what differs."""

    scale: int = 1                                # output frame size / input size
    reads: ClassVar[tuple[str, ...]] = ("frames",)
    writes: ClassVar[tuple[str, ...]] = ()
    stateful: ClassVar[bool] = False              # holds rows across the batches of one item
    device = "cpu"

    def __call__(self, batch: Batch) -> Batch:
        raise NotImplementedError

    def flush(self) -> Batch | None:
        """End of an item: the rows a stateful operator held back (None: nothing)."""
        return None


class RowWarning(UserWarning):
    """A warning about one row of the batch, `index` being that row's `index` value: the stage
    runner files it under the row's manifest entry (an image file), so it is not copied onto the
    other files of the group, or, where rows are not entries (a video's frames), names the frame."""

    def __init__(self, message: str, index: int):
        super().__init__(message)
        self.index = int(index)


def rows(batch: Batch) -> int:
    """Number of rows of a batch (its columns are equal-length)."""
    return len(next(iter(batch.values()))) if batch else 0


def take(batch: Batch, sel) -> Batch:
    """The rows `sel` (indices or a boolean mask) of every column."""
    return {k: v[sel] for k, v in batch.items()}


def _pad(c: np.ndarray, shape: tuple, fill) -> np.ndarray:
    out = np.full((len(c),) + shape, fill, c.dtype)
    out[(slice(None),) + tuple(slice(0, d) for d in c.shape[1:])] = c
    return out


def concat(batches: list[Batch]) -> Batch:
    """Rows of several batches with the same columns, in order. Per-face columns (N,K,...) with
    different K (or patch sides) are padded with zeros (-1 for `faces_track`) to the largest."""
    batches = [b for b in batches if b and rows(b)]
    if not batches:
        return {}
    out = {}
    for k in batches[0]:
        cols = [b[k] for b in batches]
        if cols[0].ndim >= 2 and k.startswith("faces_"):
            shape = tuple(max(c.shape[d] for c in cols) for d in range(1, cols[0].ndim))
            fill = -1 if k == "faces_track" else 0
            cols = [c if c.shape[1:] == shape else _pad(c, shape, fill) for c in cols]
        out[k] = np.concatenate(cols)
    return out

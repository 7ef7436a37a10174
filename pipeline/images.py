"""Photo archives on the engine: ImageSource reads groups of files into batches, ImageSink writes
one output file per input (the source tree mirrored under DST).

An item is a group of files (the unit of scheduling); each file is its own manifest entry (the
unit of resume and failure), so one bad file fails alone. Files of different sizes are never
padded into one array: a group is read into one batch per (size, depth, alpha) shape, so no
network ever sees padding it would smear into the picture."""
from __future__ import annotations

import functools
import os
import time
import warnings
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from . import engine
from .engine import Entry, Item
from .errors import InputError
from .annotations import AnnotationOptions, AnnotationWriter, finalize
from .imageio import DEFAULT_MAX_PIXELS, ImageError, Picture, read_image, upscale_alpha, write_image
from .listing import SourceFile, content_hash


@dataclass(frozen=True)
class ReadOptions:
    batch_size: int = 4
    max_pixels: int = DEFAULT_MAX_PIXELS
    min_size: int = 2
    reference_dir: str | None = None     # HR references under the same relative paths
    downscale: int | None = None         # dataset mode: the file is the HR; LR made by MATLAB imresize
    keep_lr: bool = False                # carry the LR frames (column `lr`) for the bicubic baseline


def _meta_only(pic: Picture) -> Picture:
    return replace(pic, rgb=np.zeros((0, 0, 3), pic.rgb.dtype), alpha=None)


def _reference(opts: ReadOptions, rel: str, path: str) -> np.ndarray | None:
    if not opts.reference_dir:
        return None
    ref_path = Path(opts.reference_dir) / rel
    if not ref_path.is_file():
        raise ImageError(path, "no_reference", f"no reference image {ref_path}")
    return read_image(ref_path, opts.max_pixels).rgb


def read_group(item: Item, opts: ReadOptions):
    """Runs in a read task: decode each file of the group; yield one envelope per shape run."""
    failed: dict[str, str] = {}
    good: list[tuple[int, Picture, np.ndarray | None, str]] = []
    t0 = time.perf_counter()
    for pos, (rel, path, error, _out) in enumerate(item.payload):
        try:
            if error:
                raise InputError(error)
            pic = read_image(path, opts.max_pixels, opts.min_size)
            ref = _reference(opts, rel, path)
            if opts.downscale:
                from models.imresize import imresize
                s = opts.downscale
                h, w = (pic.rgb.shape[0] // s) * s, (pic.rgb.shape[1] // s) * s
                if h < s * opts.min_size or w < s * opts.min_size:
                    raise ImageError(path, "too_small", f"too small to downscale x{s} ({pic.rgb.shape[1]}x{pic.rgb.shape[0]})")
                ref = pic.rgb[:h, :w]
                lr = imresize(ref, 1.0 / s)
                alpha = None if pic.alpha is None else pic.alpha[:h, :w][::s, ::s]
                pic = replace(pic, rgb=np.ascontiguousarray(lr), alpha=alpha)
            good.append((pos, pic, ref, content_hash(path)))
        except InputError as e:
            failed[rel] = str(e).splitlines()[0]
    decode = time.perf_counter() - t0
    runs: dict[tuple, list] = {}
    for g in good:
        pic, ref = g[1], g[2]
        key = (pic.rgb.shape, pic.rgb.dtype.str, pic.alpha is not None, None if ref is None else ref.shape)
        runs.setdefault(key, []).append(g)
    first = True
    for run in runs.values():
        for i in range(0, len(run), opts.batch_size):
            chunk = run[i:i + opts.batch_size]
            cols = {"frames": np.stack([c[1].rgb for c in chunk]),
                    "index": np.asarray([c[0] for c in chunk], np.int64),
                    "pts": np.zeros(len(chunk), np.int64),
                    "shot_start": np.ones(len(chunk), bool),     # every file is its own shot
                    "lossy": np.asarray([c[1].lossy for c in chunk], bool)}
            if chunk[0][1].alpha is not None:
                cols["alpha"] = np.stack([c[1].alpha for c in chunk])
            if chunk[0][2] is not None:
                cols["reference"] = np.stack([c[2] for c in chunk])
                if opts.keep_lr:
                    cols["lr"] = cols["frames"].copy()
            meta = {"item": item.key, "units": len(chunk), "timings": {"read": decode if first else 0.0},
                    "pictures": {c[0]: _meta_only(c[1]) for c in chunk},
                    "hashes": {c[0]: c[3] for c in chunk},
                    # each file's notes are its own; a stage's warning about a row goes to its file
                    "entries": {c[0]: item.payload[c[0]][0] for c in chunk},
                    "entry_warnings": {item.payload[c[0]][0]: list(c[1].notes) for c in chunk if c[1].notes}}
            if first:
                meta["failed"] = failed
                first = False
            yield {"columns": cols, "meta": meta}
    if first:       # every file of the group failed
        yield {"columns": {}, "meta": {"item": item.key, "units": len(failed), "failed": failed}}


class ImageSource(engine.Source):
    unit, item_name = "image", "group"

    def __init__(self, files: list[SourceFile], outputs: dict[str, str], opts: ReadOptions, group_size: int = 8,
                 name: str = "images", attempts: dict[str, int] | None = None):
        self.files, self.outputs, self.opts, self.group_size, self.name = files, outputs, opts, group_size, name
        self.attempts = attempts or {}
        self.columns = ("frames", "index", "pts", "shot_start", "lossy", "alpha") + (
            ("reference",) if opts.reference_dir or opts.downscale else ()) + (("lr",) if opts.keep_lr else ())

    def entry(self, f: SourceFile) -> Entry:
        return Entry(f.rel, "image", path=f.path, size=f.size, mtime=f.mtime, hash=f.hash,
                     attempts=self.attempts.get(f.rel, 0))

    def identities(self) -> dict[str, tuple]:
        return {f.rel: (f.size, f.mtime, f.hash) for f in self.files}

    def plan(self, done: set[str]) -> list[Item]:
        todo = [f for f in self.files if f.rel not in done]
        items = []
        for k in range(0, len(todo), self.group_size):
            group = todo[k:k + self.group_size]
            items.append(Item(f"group-{k // self.group_size:06d}:{group[0].rel}", [self.entry(f) for f in group],
                              [(f.rel, f.path, f.error, str(self.outputs[f.rel])) for f in group]))
        return items

    def reader(self):
        return functools.partial(read_group, opts=self.opts)

    def total_units(self) -> int:
        return len(self.files)


@dataclass(frozen=True)
class WriteOptions:
    format: str | None = None             # None: each file keeps its own format
    quality: int | None = None            # JPEG/WebP quality
    options: tuple = ()                   # extra Pillow save options, as (key, value) pairs


class _GroupWriter(engine.ItemWriter):
    def __init__(self, item: Item, opts: WriteOptions, scale: int, annotations: AnnotationOptions | None):
        self.item, self.opts, self.scale = item, opts, scale
        self.rels = [p[0] for p in item.payload]
        self.paths = [p[1] for p in item.payload]
        self.outputs = {p[0]: p[3] for p in item.payload}
        self.results: dict[str, dict] = {}
        self.ann = AnnotationWriter(annotations, item.key, frame_numbers=False) if annotations else None

    def write(self, columns, meta) -> int:
        if not columns or not len(columns.get("frames", ())):
            return 0
        from .metrics import quality
        pics, hashes = meta.get("pictures", {}), meta.get("hashes", {})
        if self.ann:
            pos = columns["index"].tolist()
            self.ann.add(columns, [self.paths[p] for p in pos], [os.path.splitext(self.rels[p])[0] for p in pos])
        for i, pos in enumerate(columns["index"].tolist()):
            rel = self.rels[pos]
            pic = pics[pos]
            rgb = columns["frames"][i]
            alpha = columns.get("alpha")
            a = None if alpha is None else upscale_alpha(alpha[i], self.scale, (rgb.shape[1], rgb.shape[0]))
            out = self.outputs[rel]
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                write_image(out, rgb, a, pic, format=self.opts.format, quality=self.opts.quality,
                            **dict(self.opts.options))
            res = {"output": out, "frames": 1, "hash": hashes.get(pos)}
            if "lossy" in columns:           # the job's note on lossy sources counts these
                res["lossy"] = bool(columns["lossy"][i])
            if "reference" in columns:
                lr = columns["lr"][i] if "lr" in columns else None
                res.update(quality(rgb, columns["reference"][i], self.scale, lr))
            if "degradation" in columns:     # what SRMD was given for this image (--blur/--noise auto)
                blur, noise = (round(float(v), 2) for v in columns["degradation"][i])
                res["degradation"] = {"blur_sigma": blur, "noise": noise}
            notes = [str(w.message) for w in caught]
            if notes:
                res["warnings"] = notes
            self.results[rel] = res
        return len(columns["frames"])

    def close(self) -> dict:
        if self.ann:
            self.ann.close()
        return self.results


class ImageSink(engine.Sink):
    """Writes each output to a temporary name and renames it (pipeline.imageio.write_image)."""

    def __init__(self, opts: WriteOptions, annotations: AnnotationOptions | None = None):
        self.opts, self.scale, self.annotations = opts, 1, annotations
        self.reads = ("frames", "index", "alpha", "reference", "lr", "degradation") + (
            annotations.reads if annotations else ())

    def on_write_start(self, scale: int) -> None:
        self.scale = scale

    def open(self, item: Item) -> engine.ItemWriter:
        return _GroupWriter(item, self.opts, self.scale, self.annotations)

    def on_write_complete(self, results: dict, summary) -> None:
        if self.annotations:
            finalize(self.annotations, summary)

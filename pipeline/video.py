"""The video job: one Source/Sink pair on the engine (pipeline/engine.py).

    VideoSource: keyframe-aligned segments, each decoded by PyAV in a read task
    VideoSink:   one encoded file per segment (a writer actor on the driver's node), then
                 concat + the source's audio/subtitles muxed untouched (on_write_complete)

Finished segments are recorded in the manifest so `resume` reuses them."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import time
import dataclasses
import functools
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from . import engine
from .decode import decode_segment
from .encode import EncodeSettings, SegmentWriter, StreamParams, check_encoder, output_params
from .engine import Entry, Item, StageSpec, Summary  # noqa: F401  (the video job's public names)
from .annotations import AnnotationOptions, AnnotationWriter, finalize
from .errors import InputError
from .manifest import Manifest
from .paths import check_writable
from .mux import assemble
from .probe import VideoInfo, lossy, probe
from .segments import Segment, plan_segments


@dataclass
class VideoJob:
    input: str
    output: str
    stages: list[StageSpec]
    encode: EncodeSettings = field(default_factory=EncodeSettings)
    batch_size: int = 4
    segment_frames: int = 48
    start: float | None = None
    end: float | None = None
    resume: bool = False
    keep_work: bool = False
    max_inflight: int | None = None
    progress: bool = True
    fuse: bool = True
    annotations: AnnotationOptions | None = None    # faces table, gallery, segmentation maps


def work_dir(output: str) -> Path:
    p = Path(output)
    return p.with_name(p.name + ".parts")


def check_output(path: str) -> None:
    p = Path(path)
    check_writable(path)
    try:
        av.format.ContainerFormat(_format_for(path), "w")
    except (ValueError, av.error.FFmpegError):
        raise InputError(f"{path}: unknown output container '{p.suffix}' (use .mp4, .mkv, .mov, ...)") from None


def _format_for(path: str) -> str:
    ext = Path(path).suffix.lower().lstrip(".")
    return {"mkv": "matroska", "mka": "matroska", "m4v": "mp4", "ts": "mpegts"}.get(ext, ext or "mp4")


def _settings_hash(job: VideoJob, info: VideoInfo, segs: list[Segment]) -> str:
    st = os.stat(job.input)
    key = {"input": os.path.abspath(job.input), "size": st.st_size, "mtime": st.st_mtime,
           "stages": [s.identity for s in job.stages], "encode": asdict(job.encode),
           "segments": [(s.start_pts, s.end_pts, s.frame_count) for s in segs]}
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _to_pts(seconds: float | None, info: VideoInfo) -> int | None:
    return None if seconds is None else int(Fraction(seconds).limit_denominator(10**6) / info.time_base)


def run(job: VideoJob, log=print) -> Summary:
    check_output(job.output)
    info = probe(job.input)
    segs = plan_segments(info.pts, info.keyframe_pts, job.segment_frames,
                         _to_pts(job.start, info), _to_pts(job.end, info))
    if not segs:
        raise InputError(f"{job.input}: no frames in the selected time range")
    settings = _settings_hash(job, info, segs)
    wdir = work_dir(job.output)
    if wdir.exists() and not job.resume:
        shutil.rmtree(wdir)
    wdir.mkdir(parents=True, exist_ok=True)
    manifest = Manifest(wdir / "manifest")
    source = VideoSource(info, segs, job.batch_size)
    sink = VideoSink(job, info, segs, wdir)
    ejob = engine.Job(source, job.stages, sink, manifest=manifest, settings=settings,
                      batch_size=job.batch_size, max_inflight=job.max_inflight, progress=job.progress,
                      fuse=job.fuse, log=log)
    try:
        return engine.run(ejob)
    except KeyboardInterrupt:
        finished = sum(1 for r in manifest.latest().values() if r["status"] == "done" and r["settings"] == settings)
        print(f"{job.input}: interrupted; {finished} of {len(segs)} segments finished and kept in {wdir} "
              f"(rerun with --resume to reuse them)", file=sys.stderr)
        raise


def _read_segment(item: Item, batch_size: int):
    """Runs in a read task: decode one segment into envelopes (global frame indices)."""
    info, seg, first = item.payload
    for b in decode_segment(info, seg, batch_size):
        columns = {k: v for k, v in b.items() if k not in ("segment", "warnings", "timings")}
        columns["index"] = b["index"] + first
        columns["lossy"] = np.full(len(b["pts"]), lossy(info), bool)
        yield {"columns": columns, "meta": {"item": item.key, "warnings": list(b.get("warnings", ())),
                                            "timings": dict(b.get("timings", {})), "units": len(b["pts"])}}


class VideoSource(engine.Source):
    """Keyframe-aligned segments. Each read task gets its segment's frame list only (not the whole
    film's: a 2-hour film's pts pickled into every task cost ~5 GB)."""
    unit, item_name = "frame", "segment"

    def __init__(self, info: VideoInfo, segs: list[Segment], batch_size: int):
        self.info, self.segs, self.batch_size = info, segs, batch_size
        self.name = Path(info.path).name
        st = os.stat(info.path)
        self._identity = dict(path=os.path.abspath(info.path), size=st.st_size, mtime=st.st_mtime)

    def plan(self, done: set[str]) -> list[Item]:
        items = []
        for seg in self.segs:
            if seg.name in done:
                continue
            a = seg.first_frame
            slim = dataclasses.replace(self.info, pts=self.info.pts[a:a + seg.frame_count].copy(),
                                       keyframe_pts=self.info.keyframe_pts[:0])
            entry = Entry(seg.name, "segment", units=seg.frame_count, **self._identity)
            items.append(Item(seg.name, [entry], (slim, dataclasses.replace(seg, first_frame=0), a)))
        return items

    def reader(self):
        return functools.partial(_read_segment, batch_size=self.batch_size)

    def total_units(self) -> int:
        return sum(s.frame_count for s in self.segs)


class _SegmentFile(engine.ItemWriter):
    """One segment's file. It takes exactly the frames the source planned, in order: a worker that
    lost or reordered rows (a stateful stage restarted mid-segment) makes the engine redo the
    segment instead of finalising a shortened or shuffled one (or the muxer failing on it)."""

    def __init__(self, name: str, path: str, settings: EncodeSettings, params: StreamParams,
                 annotations: AnnotationOptions | None, source: str, planned: np.ndarray):
        self.name, self.path, self.source = name, path, source
        self.planned = np.asarray(planned, np.int64)
        self.w = SegmentWriter(path, settings, params)
        self.ann = AnnotationWriter(annotations, name) if annotations else None
        self.repeated = 0
        self.written = 0

    def _check(self, pts: np.ndarray) -> None:
        """Before muxing: the next frames must carry the next planned timestamps."""
        want = self.planned[self.written:self.written + len(pts)]
        wrong = np.flatnonzero(want != pts[:len(want)])
        at = int(wrong[0]) if len(wrong) else len(want)
        if at < len(pts):
            planned = int(want[at]) if at < len(want) else "no frame"
            raise engine.Redo(f"frame {self.written + at} of the {len(self.planned)} planned has pts {int(pts[at])} "
                              f"where the source has {planned}")

    def write(self, columns, meta) -> int:
        if "frames" not in columns or not len(columns["frames"]):
            return 0
        self._check(np.asarray(columns["pts"], np.int64))
        self.written += len(columns["pts"])
        if self.ann:
            self.ann.add(columns, [self.source] * len(columns["frames"]))
        if "repeated" in columns:      # frames the decoder could not produce, shown as a neighbour
            self.repeated += int(np.count_nonzero(columns["repeated"]))
        return self.w.write(columns["frames"], columns["pts"], columns.get("alpha"))

    def close(self) -> dict:
        if self.written != len(self.planned):
            raise engine.Redo(f"{self.written} of the {len(self.planned)} planned frames reached the writer")
        r = self.w.close()
        out = {"output": self.path, "frames": r["frames"], "repeated": self.repeated}
        if self.ann:
            out["faces"] = self.ann.close()
        return {self.name: out}

    def abort(self) -> None:
        self.w.abort()


class VideoSink(engine.Sink):
    """Segment files in OUTPUT.parts/, then one output with the source's other streams."""

    def __init__(self, job: VideoJob, info: VideoInfo, segs: list[Segment], wdir: Path):
        self.job, self.segs, self.wdir = job, segs, wdir
        self._info = info                       # driver side only (see __getstate__)
        self.encode, self.params = job.encode, None
        self.annotations, self.source = job.annotations, os.path.abspath(info.path)
        self.reads = ("frames", "index", "pts", "alpha", "repeated") + (job.annotations.reads if job.annotations else ())
        self.notes: list[str] = []

    def __getstate__(self):
        # writer actors need the encoder settings, not the film's frame list
        state = dict(self.__dict__)
        state["_info"], state["segs"] = None, []
        return state

    def on_write_start(self, scale: int) -> None:
        info = self._info
        self.params = StreamParams(width=info.width * scale, height=info.height * scale,
                                   time_base=info.time_base, rate=info.average_rate,
                                   pix_fmt=self.encode.pix_fmt or info.pix_fmt, colorspace=info.colorspace,
                                   color_range=info.color_range, color_primaries=info.color_primaries,
                                   color_trc=info.color_trc)
        problem = check_encoder(self.encode, self.params)
        if problem:
            raise InputError(f"{self.job.output}: {problem}")
        # what the source holds that is not upscaled, and what the encoder gets that differs
        self.notes = info.notes + output_params(self.encode, self.params)[1]

    def open(self, item: Item) -> engine.ItemWriter:
        return _SegmentFile(item.key, str(self.wdir / f"{item.key}.seg"), self.encode, self.params,
                            self.annotations, self.source, planned=item.payload[0].pts)

    def on_write_complete(self, results: dict, summary: Summary) -> None:
        summary.notes.extend(self.notes)
        if summary.failed:
            return
        job, info, segs = self.job, self._info, self.segs
        repeated = sum(int(results[s.name].get("repeated") or 0) for s in segs)
        if info.truncated:
            summary.incomplete.append(info.truncation_warning(summary.frames - repeated))
        paths = [results[s.name]["output"] for s in segs]
        t0 = time.perf_counter()
        start = None if job.start is None else Fraction(int(info.pts[segs[0].first_frame])) * info.time_base
        end = None if job.end is None else Fraction(_to_pts(job.end, info)) * info.time_base
        tmp_out = str(Path(job.output).with_name(".tmp-" + Path(job.output).name))
        try:
            written = assemble(tmp_out, paths, info, start=start, end=end)
            os.replace(tmp_out, job.output)
        finally:
            if os.path.exists(tmp_out):
                os.remove(tmp_out)
        summary.stage_seconds["mux"] = time.perf_counter() - t0
        if written != summary.frames:
            summary.warnings.append(f"{job.output}: {written} video frames muxed, {summary.frames} expected")
        if self.annotations:
            finalize(self.annotations, summary)
        if not job.keep_work:
            shutil.rmtree(self.wdir, ignore_errors=True)

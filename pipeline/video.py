"""The video job: probe, plan segments, stream batches through the stage graph, mux.

    decode(segment) -> operator pool(s) -> segment writer -> ... -> assemble(segments + audio/subs)

The driver holds object refs only; in-flight batches are bounded so memory does not grow with
the length of the video; finished segments are recorded in the manifest so `resume` reuses them."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Callable

import av
import ray
from tqdm import tqdm

from .encode import EncodeSettings, StreamParams, check_encoder
from .errors import InputError
from .manifest import Manifest
from .mux import assemble
from .probe import VideoInfo, probe
from .segments import Segment, plan_segments
from .stages import OPERATOR_ENV, ActorPool, OperatorActor, WriterActor, decode_task


@dataclass
class StageSpec:
    """One operator stage: how to build its operator, and its actor pool."""
    name: str
    factory: Callable            # picklable, builds the operator inside the actor
    actors: int = 1
    gpus_per_actor: float = 0
    cpus_per_actor: float = 1
    threads: int | None = None   # torch threads per actor on CPU
    identity: str = ""           # what determines its output (for resume)


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


@dataclass
class Summary:
    frames: int = 0
    segments: int = 0
    reused_segments: int = 0
    seconds: float = 0.0
    stage_seconds: dict = field(default_factory=dict)
    warnings: list = field(default_factory=list)
    failed: list = field(default_factory=list)
    first_write: float | None = None    # perf_counter of the first / last written batch
    last_write: float | None = None
    frames_after_first: int = 0

    @property
    def steady_fps(self) -> float:
        """Frames/s between the first and the last written batch: start-up and the final mux left out."""
        span = (self.last_write or 0) - (self.first_write or 0)
        return self.frames_after_first / span if span > 0 else 0.0

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds else 0.0

    def lines(self) -> list[str]:
        out = [f"frames: {self.frames}  segments: {self.segments} ({self.reused_segments} reused)  "
               f"wall: {self.seconds:.1f}s  {self.fps:.2f} frames/s  (steady {self.steady_fps:.2f} frames/s)"]
        if self.stage_seconds:
            out.append("time per stage (worker-seconds): " + ", ".join(
                f"{k} {v:.1f}s" for k, v in sorted(self.stage_seconds.items())))
        out += [f"warning: {w}" for w in self.warnings]
        out += [f"failed: {f}" for f in self.failed]
        return out


def work_dir(output: str) -> Path:
    p = Path(output)
    return p.with_name(p.name + ".parts")


def check_output(path: str) -> None:
    p = Path(path)
    if p.is_dir():
        raise InputError(f"{path}: output path is a directory")
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.is_dir():
        raise InputError(f"{path}: output folder {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise InputError(f"{path}: output folder {parent} is not writable")
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
    t_start = time.perf_counter()
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
    done = {item: row for item, row in manifest.latest().items()
            if row["status"] == "done" and row["settings"] == settings and row["output"]
            and Path(row["output"]).is_file()}
    summary = Summary(segments=len(segs))
    todo = [s for s in segs if s.name not in done]
    summary.reused_segments = len(segs) - len(todo)
    summary.frames = sum(int(done[s.name]["frames"]) for s in segs if s.name in done)

    pools, scale = _start_pools(job, info)
    params = StreamParams(width=info.width * scale, height=info.height * scale,
                          time_base=info.time_base, rate=info.average_rate,
                          pix_fmt=job.encode.pix_fmt or info.pix_fmt, colorspace=info.colorspace,
                          color_range=info.color_range, color_primaries=info.color_primaries,
                          color_trc=info.color_trc)
    problem = check_encoder(job.encode, params)
    if problem:
        raise InputError(f"{job.output}: {problem}")
    ident = {"source": job.input, "source_size": os.path.getsize(job.input),
             "source_mtime": os.path.getmtime(job.input), "settings": settings, "kind": "segment"}
    total = sum(s.frame_count for s in segs)
    bar = tqdm(total=total, initial=summary.frames, unit="frame", disable=not job.progress,
               dynamic_ncols=True, desc=Path(job.input).name)
    try:
        _stream(job, info, todo, pools, params, wdir, manifest, ident, summary, bar)
    except KeyboardInterrupt:
        bar.close()
        finished = sum(1 for r in manifest.latest().values() if r["status"] == "done" and r["settings"] == settings)
        log(f"{job.input}: interrupted; {finished} of {len(segs)} segments finished and kept in {wdir} "
            f"(rerun with --resume to reuse them)")
        raise
    bar.close()
    if summary.failed:
        return summary
    paths = [str(wdir / f"{s.name}.seg") for s in segs]
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
    if not job.keep_work:
        shutil.rmtree(wdir, ignore_errors=True)
    summary.seconds = time.perf_counter() - t_start
    return summary


def _start_pools(job: VideoJob, info: VideoInfo) -> tuple[list[ActorPool], int]:
    pools, scale = [], 1
    for stage in job.stages:
        actors = [OperatorActor.options(num_cpus=stage.cpus_per_actor, num_gpus=stage.gpus_per_actor,
                                        max_restarts=-1, max_task_retries=-1,
                                        runtime_env={"env_vars": OPERATOR_ENV}).remote(stage.factory, stage.threads)
                  for _ in range(stage.actors)]
        desc = ray.get([a.describe.remote() for a in actors])
        err = next((d["error"] for d in desc if "error" in d), None)
        if err:
            for a in actors:
                ray.kill(a)
            raise InputError(f"{stage.name}: {err}")
        scale *= desc[0]["scale"]
        pools.append(ActorPool(actors))
    return pools, scale


class _SegmentState:
    def __init__(self, seg: Segment, writer, gen, path: str):
        self.seg, self.writer, self.gen, self.path = seg, writer, gen, path
        self.acks: set = set()
        self.decoded = False
        self.frames = 0
        self.error: str | None = None
        self.t0 = time.perf_counter()


def _stream(job, info, todo, pools, params, wdir, manifest, ident, summary, bar):
    max_active = max(2, len(pools[0].actors) + 1) if pools else 2
    max_inflight = job.max_inflight or 2 * sum(len(p.actors) for p in pools) + 2
    free_writers = deque(WriterActor.remote() for _ in range(min(max_active, len(todo))))
    pending = deque(todo)
    active: dict[int, _SegmentState] = {}
    ack_owner: dict = {}

    def open_segment(seg):
        writer = free_writers.popleft()
        path = str(wdir / f"{seg.name}.seg")
        ray.get(writer.open.remote(path, job.encode, params))
        gen = decode_task.options(_generator_backpressure_num_objects=2).remote(info, seg, job.batch_size)
        active[seg.index] = _SegmentState(seg, writer, gen, path)
        manifest.append([{**ident, "item": seg.name, "status": "running", "output": path}])

    def finish(st: _SegmentState):
        del active[st.seg.index]
        if st.error is None:
            try:
                result = ray.get(st.writer.close.remote())
            except ray.exceptions.RayError as e:
                st.error = _one_line(e)
        if st.error is not None:
            ray.get(st.writer.abort.remote())
            summary.failed.append(f"{info.path}: segment {st.seg.index}: {st.error}")
            manifest.append([{**ident, "item": st.seg.name, "status": "failed", "error": st.error}])
        else:
            summary.stage_seconds["encode"] = summary.stage_seconds.get("encode", 0) + result["encode_seconds"]
            manifest.append([{**ident, "item": st.seg.name, "status": "done", "output": st.path,
                              "frames": st.frames, "seconds": time.perf_counter() - st.t0}])
        free_writers.append(st.writer)

    def on_ack(ack):
        st = ack_owner.pop(ack)
        st.acks.discard(ack)
        try:
            r = ray.get(ack)
        except ray.exceptions.RayError as e:
            st.error = st.error or _one_line(e)
            return
        st.frames += r["frames"]
        summary.frames += r["frames"]
        now = time.perf_counter()
        if summary.first_write is None:
            summary.first_write = now
        else:
            summary.frames_after_first += r["frames"]
        summary.last_write = now
        bar.update(r["frames"])
        summary.warnings.extend(r["warnings"])
        for k, v in r["timings"].items():
            summary.stage_seconds[k] = summary.stage_seconds.get(k, 0) + v

    def on_batch(st: _SegmentState):
        try:
            ref = next(st.gen)
        except StopIteration:
            st.decoded = True
            return
        for pool in pools:
            ref = pool.submit(ref)
        ack = st.writer.write.remote(ref)
        st.acks.add(ack)
        ack_owner[ack] = st

    while pending or active:
        while pending and len(active) < max_active and free_writers:
            open_segment(pending.popleft())
        for st in list(active.values()):
            if st.decoded and not st.acks:
                finish(st)
        if not active:
            continue
        # block until something happens: a decoded batch (while the in-flight budget allows)
        # or a written one; no polling, so the model actors keep the cores
        gens = {st.gen: st for st in active.values() if not st.decoded} if len(ack_owner) < max_inflight else {}
        waitables = list(gens) + list(ack_owner)
        ready, _ = ray.wait(waitables, num_returns=1, timeout=None)
        for item in ready:
            if item in gens:
                on_batch(gens[item])
            else:
                on_ack(item)
        if ack_owner:  # collect every other finished write at once
            done, _ = ray.wait(list(ack_owner), num_returns=len(ack_owner), timeout=0)
            for ack in done:
                on_ack(ack)


def _one_line(e: Exception) -> str:
    cause = getattr(e, "cause", None) or e
    text = str(cause).strip().splitlines()
    return text[-1] if text else type(cause).__name__

"""A stateful stage's actor killed mid-item (what Ray's memory monitor does to the face chain):
the item is redone from its first batch, never shortened or shuffled; the video sink refuses to
finalise a segment whose frames differ from what the source planned."""
import functools
import os
from fractions import Fraction

import av
import numpy as np
import pytest

from pipeline import engine
from pipeline.probe import probe
from tests import engine_toys as toys
from tests.conftest import shared_path


def face_clip(path: str, n: int = 40, size: int = 160, gop: int = 20) -> str:
    """The first n frames of the LivePortrait talking head (a real face, ~18 px wide here), a
    keyframe every `gop` frames, 30 fps."""
    src = shared_path("data", "video", "liveportrait", "d18.mp4")
    tb = Fraction(1, 30)
    with av.open(str(src)) as inp, av.open(path, "w") as out:
        vs = out.add_stream("libx264", rate=30, options={"g": str(gop), "keyint_min": str(gop), "sc_threshold": "0",
                                                         "crf": "18"})
        vs.width = vs.height = size
        vs.pix_fmt, vs.time_base, vs.codec_context.time_base = "yuv420p", tb, tb
        for k, f in enumerate(inp.decode(video=0)):
            if k == n:
                break
            g = f.reformat(size, size, "yuv420p")
            g.pts, g.time_base = k, tb
            out.mux(vs.encode(g))
        out.mux(vs.encode(None))
    return path


def frame_times(path: str) -> list[Fraction]:
    """Every decoded frame's presentation time, read with PyAV (not through the job)."""
    with av.open(path) as c:
        s = c.streams.video[0]
        return [f.pts * s.time_base for f in c.decode(s)]


# ───────────────────────────── without Ray ─────────────────────────────

def test_a_restarted_stateful_actor_refuses_the_rest_of_an_item():
    order = engine._ItemOrder()
    assert [order.admit({"item": "a", "seq": s}) for s in range(3)] == [False] * 3
    assert order.admit({"item": "a", "seq": 3, "released": True}, flush=True) is False
    # restarted (fresh state) while item b was at batch 2: Ray's in-place retry of batch 2 is refused
    fresh = engine._ItemOrder()
    with pytest.raises(engine.Redo, match="expected the first batch of an item, got batch 2 of b"):
        fresh.admit({"item": "b", "seq": 2})
    # batches out of order (Ray resubmits a dead actor's batches in any order)
    order.admit({"item": "c", "seq": 0})
    with pytest.raises(engine.Redo, match="expected batch 1 of c, got batch 2 of c"):
        order.admit({"item": "c", "seq": 2})
    # the redo of c begins while c's abandoned state is held: it must be dropped first
    assert order.admit({"item": "c", "seq": 0}) is True
    assert engine.one_line(engine.Redo("x")).startswith("retry: ")


def test_chain_drop_state_forgets_an_abandoned_items_rows():
    chain = engine._Chain([toys.HoldAll(), toys.AddOne()])
    idx = np.arange(3, dtype=np.int64)
    chain({"frames": np.zeros((3, 2, 2, 3), np.uint8), "index": idx, "pts": idx}, {}, ["hold", "add"])
    chain.drop_state()
    assert chain.flush({}, ["hold", "add"]) == {}


def _segment_writer(tmp_path):
    """The video sink's writer for the second segment of a clip, opened as the engine opens it."""
    from pipeline.encode import EncodeSettings
    from pipeline.segments import plan_segments
    from pipeline.synth import make_clip
    from pipeline.video import VideoJob, VideoSink, VideoSource
    src = make_clip(str(tmp_path / "in.mp4"), frames=24, gop=12, vfr=True, audio=False)
    info = probe(src)
    segs = plan_segments(info.pts, info.keyframe_pts, 12)
    sink = VideoSink(VideoJob(src, str(tmp_path / "out.mp4"), [], encode=EncodeSettings("ffv1")), info, segs, tmp_path)
    sink.on_write_start(1)
    item = VideoSource(info, segs, 4).plan(set())[1]
    planned = info.pts[segs[1].first_frame:segs[1].first_frame + segs[1].frame_count]
    frames = np.zeros((len(planned), info.height, info.width, 3), np.uint8)
    return sink.open(item), planned, frames, tmp_path / f"{item.key}.seg"


def test_video_sink_refuses_a_short_segment_and_one_out_of_order(tmp_path):
    w, pts, frames, seg = _segment_writer(tmp_path)
    w.write({"frames": frames[:4], "pts": pts[:4]}, {})
    with pytest.raises(engine.Redo, match=r"frame 4 of the 12 planned has pts"):   # five frames lost (a restarted tracker)
        w.write({"frames": frames[9:], "pts": pts[9:]}, {})
    w.abort()
    w, pts, frames, seg = _segment_writer(tmp_path)
    w.write({"frames": frames[:7], "pts": pts[:7]}, {})        # the last five never came
    with pytest.raises(engine.Redo, match=r"7 of the 12 planned frames reached the writer"):
        w.close()
    w.abort()
    assert not seg.exists() and not os.path.exists(f"{seg}.tmp")
    w, pts, frames, seg = _segment_writer(tmp_path)
    with pytest.raises(engine.Redo, match=r"frame 0 of the 12 planned has pts"):
        w.write({"frames": frames[:4], "pts": pts[[1, 0, 2, 3]]}, {})   # shuffled: refused before the muxer
    w.abort()
    # the planned frames, in order: finalised, every pts on disk (read with PyAV) as planned
    w, pts, frames, seg = _segment_writer(tmp_path)
    for a in range(0, len(pts), 4):
        w.write({"frames": frames[a:a + 4], "pts": pts[a:a + 4]}, {})
    assert w.close()[seg.stem]["frames"] == len(pts)
    with av.open(str(seg)) as c:
        assert [f.pts for f in c.decode(video=0)] == pts.tolist()


# ───────────────────────────── the kill, through the video job ─────────────────────────────

@pytest.mark.slow
@pytest.mark.usefixtures("local_ray")
def test_an_item_refused_on_every_attempt_is_reported_not_written(tmp_path):
    """A writer that refuses an item (Redo) makes the engine redo it; when every attempt is
    refused, the item is reported as failed with the reason and nothing of it is kept."""
    said = []
    job = engine.Job(toys.CountSource(items=3, n=10, batch=5), [], toys.RefusingSink(tmp_path),
                     item_retries=1, progress=False, log=said.append)
    summary = engine.run(job)
    assert said == ["it1: 3 of the 10 planned rows reached the writer; retrying (1 of 1)"]
    assert summary.failed == ["it1: 3 of the 10 planned rows reached the writer"]
    assert not (tmp_path / "it1.pkl").exists()
    for k in (0, 2):
        assert toys.load(tmp_path, f"it{k}")["columns"]["index"].tolist() == list(range(k * 10, k * 10 + 10))


@pytest.mark.slow
@pytest.mark.usefixtures("local_ray")
def test_face_chain_actor_killed_mid_segment_redoes_the_segment(tmp_path, monkeypatch, capsys):
    """Before the fix: Ray retried the killed batch in place on a restarted actor with an empty
    tracker: 5 frames lost with exit 0, or the resubmitted batches shuffled and the muxer failed
    ("seg.tmp returned 22")."""
    from jobs import upscale_video
    src = face_clip(str(tmp_path / "in.mp4"))
    out = tmp_path / "out.mp4"
    marker = tmp_path / "killed"
    build = upscale_video.build_stages

    def with_killer(args, model):
        stages = build(args, model)
        at = next(i for i, s in enumerate(stages) if s.name == "face_track") + 1
        killer = engine.StageSpec("kill_once", functools.partial(toys.KillOnce, str(marker), 29),
                                  actors=stages[at - 1].actors, threads=stages[at - 1].threads)
        return stages[:at] + [killer] + stages[at:]          # fused into the tracker's actor

    monkeypatch.setattr(upscale_video, "build_stages", with_killer)
    rc = upscale_video.main([src, str(out), "--faces", "--model", "bicubic", "--scale", "4", "--no-progress",
                             "--segment-frames", "20"])
    said = "".join(capsys.readouterr())
    assert marker.exists(), f"the actor was never killed: the test reproduced nothing ({said})"
    assert rc == 0, said
    got, want = frame_times(str(out)), frame_times(src)
    assert len(want) == 40 and len(got) == 40, f"{len(got)} of {len(want)} frames written"
    assert got == want                                        # each frame at its source time, in order
    assert "seg-00001" in said and "retrying (1 of" in said  # redone through the engine's item retry

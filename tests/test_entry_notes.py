"""Notes belong to the entry they are about (issue 24, items 7 and 11): a file's read notes and its
`--noise auto` estimate go to its own manifest row and name it, not onto every file of its group;
the manifest has the `degradation` column; a scale no shipped model has is refused before Ray; lossy
sources through a bicubic-trained model get one note per job. Manifest rows are read with pyarrow
directly, not through pipeline.manifest."""
import json
import re

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from jobs import upscale_images
from operators.base import RowWarning
from tests.test_estimate import _tiny_srmd


def _latest_rows(dst) -> dict[str, dict]:
    """item -> its newest manifest row, from the Parquet parts."""
    t = pq.read_table(dst / ".rayscale" / "manifest").to_pylist()
    return {r["item"]: r for r in sorted(t, key=lambda r: r["seq"])}


def _flat(sigma: float, seed: int, size: int = 96) -> np.ndarray:
    """Mid-grey plus Gaussian noise of a known level: an estimate has only the noise to read."""
    rng = np.random.default_rng(seed)
    return np.clip(np.round(128 + sigma * rng.standard_normal((size, size, 3))), 0, 255).astype(np.uint8)


# ───────────────────────── fast: the routing of a row's warning, and the refusals ─────────────────────────

def test_a_row_warning_goes_to_its_entry_and_an_unmapped_one_names_its_frame():
    from pipeline.engine import file_warnings
    meta = {"entries": {0: "a.png", 1: "b.png"}, "warnings": [], "entry_warnings": {"a.png": ["read note"]}}
    file_warnings(meta, [RowWarning("estimate b", 1), UserWarning("item-wide")])
    assert meta["entry_warnings"] == {"a.png": ["read note"], "b.png": ["estimate b"]}
    assert meta["warnings"] == ["item-wide"]
    video = {"warnings": ["repeated frame 7"]}          # a segment: rows are frames, not entries
    file_warnings(video, [RowWarning("estimate", 120)])
    assert video["warnings"] == ["repeated frame 7", "frame 120: estimate"] and "entry_warnings" not in video


def test_each_estimate_is_a_warning_about_its_shots_first_row(tmp_path):
    import warnings
    from operators.upscale import Upscaler
    up = Upscaler("srmd", weights=str(_tiny_srmd(tmp_path)), device="cpu",
                  degradation={"sigma": 1.0, "noise": "auto"})
    frames = np.stack([_flat(2, 0), _flat(12, 1), _flat(12, 1)])
    batch = {"frames": frames, "index": np.array([5, 9, 10]), "shot_start": np.array([True, True, False]),
             "lossy": np.zeros(3, bool)}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = up(batch)
    assert [(type(w.message), w.message.index) for w in caught] == [(RowWarning, 5), (RowWarning, 9)]
    assert abs(out["degradation"][0, 1] - 2) < 1 and abs(out["degradation"][1, 1] - 12) < 1.5


def test_a_scale_no_shipped_model_has_is_refused_before_ray(tmp_path, capsys, monkeypatch):
    """`--scale 3` used to run bicubic x3 with exit 0; an explicit model without x3 is refused too."""
    def no_ray(*a, **k):
        raise AssertionError("Ray was started for a refused job")
    monkeypatch.setattr(upscale_images, "connect_ray", no_ray)
    src = tmp_path / "src"
    src.mkdir()
    Image.fromarray(_flat(4, 0, 16)).save(src / "a.png")
    assert upscale_images.main([str(src), str(tmp_path / "out"), "--scale", "3", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--scale 3" in err[0] and "rayscale-xS has x2, x4 only" in err[0], err
    assert upscale_images.main([str(src), str(tmp_path / "out"), "--model", "rayscale-x2", "--scale", "3",
                                "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "rayscale-x2" in err[0] and "x2, not x3" in err[0], err
    assert not (tmp_path / "out" / ".rayscale").exists()


def test_the_lossy_note_is_for_bicubic_trained_shipped_models_only():
    from jobs.stages import lossy_note
    results = {"a.jpg": {"lossy": True}, "b.png": {"lossy": False}, "old.jpg": {"output": "x"}}  # old: reused
    assert lossy_note("rayscale-x2", results).startswith("1 of 2 source(s) lossy")
    assert "--model rayscale-real-x2" in lossy_note("rayscale-x2", results)
    assert lossy_note("rayscale-real-x2", results) is None and lossy_note("bicubic", results) is None
    assert lossy_note("rayscale-x4", {"b.png": {"lossy": False}}) is None
    # a video names itself and its codec instead of counting files
    video = lossy_note("rayscale-x2", {"v.mp4": {"lossy": True}}, what="v.mp4: lossy source (h264, yuv420p)")
    assert video.startswith("v.mp4: lossy source (h264, yuv420p): rayscale-x2 ") and "rayscale-real-x2" in video


def test_manifest_parts_without_the_degradation_column_still_read(tmp_path):
    from pipeline.manifest import SCHEMA, Manifest
    old = pa.schema([f for f in SCHEMA if f.name != "degradation"])
    row = {"item": "a.png", "kind": "image", "status": "done", "seq": 1, "run": "r", "notes": "n"}
    (tmp_path / "m").mkdir()
    pq.write_table(pa.Table.from_pylist([row], schema=old), tmp_path / "m" / "part-00000000000000000001-old.parquet")
    m = Manifest(tmp_path / "m")
    m.append([{"item": "b.png", "kind": "image", "status": "done", "degradation": {"blur_sigma": 1.0, "noise": 2.5}}])
    m.flush()
    latest = m.latest()
    assert latest["a.png"]["degradation"] is None and latest["a.png"]["notes"] == "n"
    assert json.loads(latest["b.png"]["degradation"]) == {"blur_sigma": 1.0, "noise": 2.5}


# ───────────────────────── slow: whole image jobs ─────────────────────────

@pytest.mark.slow
@pytest.mark.usefixtures("local_ray")
def test_a_files_read_note_stays_on_its_row_and_lossy_sources_get_one_note(tmp_path, capsys):
    """A 3-page TIFF in a group of four: its note named it and was copied onto the three other rows."""
    src, dst = tmp_path / "src", tmp_path / "out"
    src.mkdir()
    pages = [Image.fromarray(_flat(4, k, 24)) for k in range(3)]
    pages[0].save(src / "multi.tif", save_all=True, append_images=pages[1:])
    assert Image.open(src / "multi.tif").n_frames == 3
    Image.fromarray(_flat(4, 5, 24)).save(src / "a.jpg", quality=90)
    Image.fromarray(_flat(4, 6, 24)).save(src / "b.png")
    Image.fromarray(_flat(4, 7, 24)).save(src / "c.jpg", quality=90)
    assert upscale_images.main([str(src), str(dst), "--scale", "2", "--no-progress"]) == 0   # rayscale-x2
    out = capsys.readouterr().out
    rows = _latest_rows(dst)
    assert {k: r["status"] for k, r in rows.items()} == dict.fromkeys(["a.jpg", "b.png", "c.jpg", "multi.tif"], "done")
    assert rows["multi.tif"]["notes"] == f"{src / 'multi.tif'}: 3 frames/pages: the first only"
    assert [rows[k]["notes"] for k in ("a.jpg", "b.png", "c.jpg")] == [None, None, None]
    assert [ln for ln in out.splitlines() if "frames/pages" in ln] == \
        [f"warning: {src / 'multi.tif'}: 3 frames/pages: the first only"]
    lossy = [ln for ln in out.splitlines() if "lossy" in ln]
    assert len(lossy) == 1 and lossy[0].startswith("note: 2 of 4 source(s) lossy") and "rayscale-real-x2" in lossy[0]


@pytest.mark.slow
@pytest.mark.usefixtures("local_ray")
def test_each_images_estimate_is_on_its_own_row_names_it_and_fills_the_degradation_column(tmp_path, capsys):
    """Three files of one group, noise 2, 6 and 12: each row had all three estimate lines, none named."""
    src, dst = tmp_path / "src", tmp_path / "out"
    src.mkdir()
    levels = {"n02.png": 2, "n06.png": 6, "n12.png": 12}
    for k, (name, sigma) in enumerate(levels.items()):
        Image.fromarray(_flat(sigma, k)).save(src / name)
    assert upscale_images.main([str(src), str(dst), "--model", "srmd", "--weights", str(_tiny_srmd(tmp_path)),
                                "--scale", "2", "--blur", "1.0", "--noise", "auto", "--no-progress"]) == 0
    out = capsys.readouterr().out
    rows = _latest_rows(dst)
    printed = [ln for ln in out.splitlines() if "estimated degradation" in ln]
    assert len(printed) == 3
    for name, sigma in levels.items():
        applied = json.loads(rows[name]["degradation"])
        assert applied["blur_sigma"] == 1.0 and abs(applied["noise"] - sigma) < 1, (name, applied)
        lines = rows[name]["notes"].splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"{src / name}: srmd x2: estimated degradation: noise "), lines
        assert float(re.search(r"noise ([0-9.]+)/255", lines[0]).group(1)) == pytest.approx(applied["noise"], abs=0.06)
        assert sum(ln.startswith(f"warning: {src / name}: ") for ln in printed) == 1


@pytest.mark.slow
@pytest.mark.usefixtures("local_ray")
def test_a_videos_estimate_names_the_frame_its_shot_starts_at(tmp_path, capsys):
    from jobs import upscale_video
    from pipeline.synth import make_clip
    clip = make_clip(str(tmp_path / "in.mp4"), frames=8, width=96, height=64, gop=4, audio=False)
    assert upscale_video.main([clip, str(tmp_path / "out.mkv"), "--model", "srmd", "--scale", "2", "--weights",
                               str(_tiny_srmd(tmp_path)), "--blur", "1.0", "--noise", "auto",
                               "--segment-frames", "4", "--encoder", "ffv1", "--no-progress"]) == 0
    lines = [ln for ln in capsys.readouterr().out.splitlines() if "estimated degradation" in ln]
    named = [re.match(r"warning: frame (\d+): srmd x2: estimated degradation: noise ", ln) for ln in lines]
    assert lines and all(named) and {int(m.group(1)) for m in named} <= set(range(8)), lines

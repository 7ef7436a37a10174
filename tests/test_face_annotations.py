"""The faces table and gallery a face job keeps: parts joined at the end of a job, none left
behind, a killed run's leftovers cleared by the rerun, and the one-line summary of the faces."""
from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from pipeline.annotations import TOO_LARGE, AnnotationOptions, AnnotationWriter, finalize


def faces(n: int, restored: bool = True) -> dict:
    """Batch columns of one image with n faces (tracks 0..n-1); `restored` False: too large."""
    return {"index": np.zeros(1, np.int64), "faces_count": np.array([n], np.int32),
            "faces_box": np.ones((1, n, 4), np.float32), "faces_landmarks": np.ones((1, n, 5, 2), np.float32),
            "faces_score": np.full((1, n), 0.9, np.float32), "faces_track": np.arange(n)[None],
            "faces_affine": np.full((1, n, 2, 3), 1.0 if restored else 0.0, np.float32),
            "faces_pasted": np.full((1, n), restored), "faces_crops": np.full((1, n, 16, 16, 3), 80, np.uint8),
            "faces_restored": np.full((1, n, 64, 64, 3), 160, np.uint8)}


def save(opts: AnnotationOptions, key: str, source: str, columns: dict) -> None:
    """What one item's writer does in a job: add its rows, save its parts."""
    w = AnnotationWriter(opts, key, frame_numbers=False)
    w.add(columns, [source])
    w.close()


def parts_left(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith((".faces.parquet", ".gallery.npy", ".tmp")))


def test_a_finished_job_leaves_no_part_and_a_rerun_clears_a_killed_ones(tmp_path):
    parts = tmp_path / ".rayscale" / "faces"
    opts = AnnotationOptions(faces_table=str(tmp_path / "faces.parquet"), parts=str(parts), face_model="m",
                             gallery=str(tmp_path / "gallery.png"))
    save(opts, "a", "/src/a.png", faces(2))
    assert finalize(opts) == 2 and parts_left(parts) == []          # before: a.faces.parquet, a.gallery.npy stayed
    # a killed run: b finished (its parts saved), a was redone with 1 face, a writer died mid-save
    save(opts, "b", "/src/b.png", faces(3))
    save(opts, "a", "/src/a.png", faces(1))
    save(opts, "e", "/src/e.png", faces(0))
    (parts / ".c.faces.parquet.4242.tmp").write_bytes(b"PAR1 cut short")
    summary = SimpleNamespace(notes=[])
    assert finalize(opts, summary) == 4 and parts_left(parts) == []
    t = pq.read_table(tmp_path / "faces.parquet")
    assert sorted(t["source"].to_pylist()) == ["/src/a.png", "/src/b.png", "/src/b.png", "/src/b.png"]
    # the gallery: a's one face and b's three, 4 tiles of 96 px in one row (a's old two tiles gone)
    assert Image.open(tmp_path / "gallery.png").height == 96 + 12
    assert summary.notes[0].startswith("4 face(s) found in 4 track(s), 4 restored by m; table: ")
    # e, redone with its face gone (an edited photo): its earlier face is not kept
    save(opts, "e", "/src/e.png", faces(2))
    finalize(opts)
    save(opts, "e", "/src/e.png", faces(0))
    assert finalize(opts) == 4 and "/src/e.png" not in pq.read_table(tmp_path / "faces.parquet")["source"].to_pylist()
    assert Image.open(tmp_path / "gallery.png").height == 96 + 12          # nor its two tiles


def test_the_note_says_why_no_face_was_restored(tmp_path):
    opts = AnnotationOptions(faces_table=str(tmp_path / "faces.parquet"), parts=str(tmp_path / "parts"),
                             face_model="m", gallery=str(tmp_path / "gallery.png"))
    save(opts, "a", "/src/a.png", faces(3, restored=False))
    summary = SimpleNamespace(notes=[])
    finalize(opts, summary)
    assert summary.notes[0].startswith("3 face(s) found in 3 track(s), 0 restored by m; 3 too large for it")
    assert "no gallery written" in summary.notes[0] and not (tmp_path / "gallery.png").exists()
    assert pq.read_table(tmp_path / "faces.parquet")["background"].to_pylist() == [TOO_LARGE] * 3


def test_a_part_of_an_older_release_joins_with_a_null_reason(tmp_path):
    """Parts saved before the `background` column existed (a job resumed across the upgrade)."""
    parts = tmp_path / "parts"
    opts = AnnotationOptions(faces_table=str(tmp_path / "faces.parquet"), parts=str(parts), face_model="m")
    save(opts, "new", "/src/new.png", faces(1, restored=False))
    old = pq.read_table(parts / "new.faces.parquet").drop_columns(["background"]).replace_schema_metadata(None)
    pq.write_table(old.set_column(0, "source", pa.array(["/src/old.png"])), parts / "old.faces.parquet")
    assert finalize(opts) == 2
    t = pq.read_table(tmp_path / "faces.parquet")
    assert t["source"].to_pylist() == ["/src/new.png", "/src/old.png"]
    assert t["background"].to_pylist() == [TOO_LARGE, None]

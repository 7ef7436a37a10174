"""What a sink keeps of the batch annotations besides the pixels: the faces table (faces.parquet),
the face gallery (before/after crops per track) and the colourised segmentation maps.

Each writer actor saves its item's share as a part in a parts folder (atomic, named by the item),
so a resumed job keeps what finished items found; the driver joins the parts at the end, keeping
for each source file the rows of its newest part (an image redone in a later run). The join is
kept in the parts folder as one file per kind (`joined.parquet`, `joined.gallery.npz`: the
faces of every item finished so far, for the next run to add to) and the parts it took in are
then deleted, with any temporary file a killed writer left: a finished job leaves no part behind."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

FACE_COLUMNS = ("faces_count", "faces_box", "faces_landmarks", "faces_score", "faces_track", "faces_affine",
                "faces_pasted")
FACE_SCHEMA = pa.schema([
    ("source", pa.string()), ("frame", pa.int64()), ("pts", pa.int64()), ("track", pa.int64()),
    ("box", pa.list_(pa.float32(), 4)), ("landmarks", pa.list_(pa.float32(), 10)), ("score", pa.float32()),
    ("face_model", pa.string()), ("restored", pa.bool_()),
    # why a face kept the background upscale (null when restored): TOO_LARGE or MISFIT
    ("background", pa.string()),
])
TOO_LARGE = "too large for the face model"
MISFIT = "restored face fitted the input worse than the plain upscale"
JOINED, JOINED_GALLERY = "joined.parquet", "joined.gallery.npz"
SOURCES_KEY = b"rayscale.sources"          # a part's metadata: the files its item covered


@dataclass(frozen=True)
class AnnotationOptions:
    faces_table: str | None = None          # where faces.parquet goes
    parts: str | None = None                 # folder for the per-item parts
    face_model: str = ""
    gallery: str | None = None               # contact sheet PNG path
    segmentation_dir: str | None = None      # --save-segmentation DIR

    @property
    def reads(self) -> tuple[str, ...]:
        cols: tuple[str, ...] = ()
        if self.faces_table or self.gallery:
            cols += FACE_COLUMNS
        if self.gallery:
            cols += ("faces_crops", "faces_restored")
        if self.segmentation_dir:
            cols += ("segmentation_legend",)
        return cols


class AnnotationWriter:
    """Per item, inside a writer actor: collects face rows and gallery tiles, saves legends."""

    def __init__(self, opts: AnnotationOptions, key: str, frame_numbers: bool = True):
        """frame_numbers: rows carry the batch's `index` as the frame (video); else 0 (images)."""
        self.opts, self.key = opts, key.replace("/", "_").replace(":", "_")
        self.frame_numbers = frame_numbers
        self.tables: list[pa.Table] = []
        self.best: dict[int, tuple[float, np.ndarray]] = {}     # track -> (score, tile)
        self.sources: set[str] = set()      # every file the item covered, faces or not

    def add(self, columns: dict, sources: list[str], names: list[str] | None = None) -> None:
        """`sources[i]`: the file row i came from; `names[i]`: a file-name stem for its legend."""
        o = self.opts
        self.sources.update(sources)
        if (o.faces_table or o.gallery) and "faces_count" in columns:
            self._faces(columns, sources)
        if o.segmentation_dir and "segmentation_legend" in columns:
            from operators.segmap_colour import write_png
            for i, img in enumerate(columns["segmentation_legend"]):
                stem = names[i] if names else f"frame_{int(columns['index'][i]):07d}"
                path = Path(o.segmentation_dir) / f"{stem}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                write_png(img, path)

    def _faces(self, c: dict, sources: list[str]) -> None:
        rows = {k: [] for k in FACE_SCHEMA.names}
        counts = c["faces_count"]
        for i, n in enumerate(counts.tolist()):
            for k in range(int(n)):
                track = int(c["faces_track"][i, k]) if "faces_track" in c else -1
                rows["source"].append(sources[i])
                rows["frame"].append(int(c["index"][i]) if self.frame_numbers else 0)
                rows["pts"].append(int(c["pts"][i]) if "pts" in c else 0)
                rows["track"].append(track)
                rows["box"].append(c["faces_box"][i, k].astype(np.float32).tolist())
                rows["landmarks"].append(c["faces_landmarks"][i, k].astype(np.float32).reshape(-1).tolist())
                score = float(c["faces_score"][i, k])
                rows["score"].append(score)
                rows["face_model"].append(self.opts.face_model)
                reason = kept_background(c, i, k)
                restored = reason is None
                rows["restored"].append(restored)
                rows["background"].append(reason)
                if restored and self.opts.gallery and "faces_restored" in c and "faces_crops" in c:
                    key = hash((sources[i], track)) if track < 0 else track
                    if key not in self.best or score > self.best[key][0]:
                        self.best[key] = (score, _tile(c["faces_crops"][i, k], c["faces_restored"][i, k]))
        if rows["source"]:
            self.tables.append(pa.table(rows, schema=FACE_SCHEMA))

    def close(self) -> int:
        """Save this item's parts; returns the number of faces."""
        o = self.opts
        faces = sum(t.num_rows for t in self.tables)
        if o.parts and (o.faces_table or o.gallery):
            parts = Path(o.parts)
            parts.mkdir(parents=True, exist_ok=True)
            table = pa.concat_tables(self.tables) if self.tables else FACE_SCHEMA.empty_table()
            # a file redone with no face must still replace the rows an earlier run joined for it
            table = table.replace_schema_metadata({SOURCES_KEY: json.dumps(sorted(self.sources))})
            _atomic(parts / f"{self.key}.faces.parquet", lambda p: pq.write_table(table, p))
            if o.gallery:      # even with no tile: it replaces what an earlier run joined for this item
                ranked = sorted(self.best.values(), key=lambda v: -v[0])
                tiles = np.stack([t for _, t in ranked]) if ranked else np.zeros((0,) + TILE_SHAPE, np.uint8)
                def save(p):
                    with open(p, "wb") as f:      # a file object: np.save would append ".npy" to a name
                        np.save(f, tiles, allow_pickle=False)
                _atomic(parts / f"{self.key}.gallery.npy", save)
        return faces


def kept_background(c: dict, i: int, k: int) -> str | None:
    """Why face k of row i kept the background upscale, or None when the face model's is pasted."""
    if "faces_affine" in c and not np.abs(c["faces_affine"][i, k]).max() > 0:
        return TOO_LARGE                     # a zero map: align left it to the background
    if "faces_pasted" in c and not c["faces_pasted"][i, k]:
        return MISFIT
    return None


TILE = 96
TILE_SHAPE = (TILE, 2 * TILE + 4, 3)


def _tile(crop: np.ndarray, restored: np.ndarray, side: int = TILE) -> np.ndarray:
    """Before (the LR crop, enlarged by pixel repetition so it looks as the model saw it) beside after."""
    import cv2
    def fit(a):
        a = a if a.dtype == np.uint8 else (a >> 8).astype(np.uint8)
        return cv2.resize(a, (side, side), interpolation=cv2.INTER_NEAREST if a.shape[0] < side else cv2.INTER_AREA)
    return np.concatenate([fit(crop), np.full((side, 4, 3), 255, np.uint8), fit(restored)], 1)


def _atomic(path: Path, write) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    write(tmp)
    os.replace(tmp, path)


def finalize(opts: AnnotationOptions, summary=None) -> int | None:
    """Join the parts into faces.parquet and the gallery, fold them into the joined files and
    delete them; returns the number of faces (None when the job kept no faces table)."""
    if not opts.parts or not (opts.faces_table or opts.gallery):
        return None
    parts = Path(opts.parts)
    parts.mkdir(parents=True, exist_ok=True)
    for leftover in parts.glob(".*.tmp"):        # a writer killed mid-save (all writers are done now)
        leftover.unlink(missing_ok=True)
    files = sorted(parts.glob("*.faces.parquet"), key=lambda p: p.stat().st_mtime)
    table = _join_tables(parts / JOINED, files)
    galleries = sorted(parts.glob("*.gallery.npy"))
    keys, tiles = _join_galleries(parts / JOINED_GALLERY, galleries)
    _atomic(parts / JOINED, lambda p: pq.write_table(table, p))
    if len(tiles):                               # also when this run has no --gallery: keep what was made
        _atomic(parts / JOINED_GALLERY, lambda p: _save_npz(p, keys, tiles))
    for p in files + galleries:                  # folded into the joined files above
        p.unlink(missing_ok=True)
    table = table.sort_by([("source", "ascending"), ("frame", "ascending"), ("track", "ascending")])
    if opts.faces_table:
        _atomic(Path(opts.faces_table), lambda p: pq.write_table(table, p))
    if opts.gallery and len(tiles):
        from PIL import Image
        _atomic(Path(opts.gallery), lambda p: Image.fromarray(_sheet(list(tiles))).save(p, format="PNG"))
    if summary is not None:
        summary.notes.append(faces_note(table, opts, gallery=bool(len(tiles))))
    return table.num_rows


def faces_note(table: pa.Table, opts: AnnotationOptions, gallery: bool) -> str:
    """One line: faces found, restored, and why the others kept the plain upscale."""
    if not table.num_rows:
        return "no face found: the output is the plain upscale" + ("; no gallery written" if opts.gallery else "")
    tracks = len(set(zip(table["source"].to_pylist(), table["track"].to_pylist())))
    restored = sum(table["restored"].to_pylist())
    why = table["background"].to_pylist() if "background" in table.column_names else []
    large, misfit = why.count(TOO_LARGE), why.count(MISFIT)
    line = f"{table.num_rows} face(s) found in {tracks} track(s), {restored} restored by {opts.face_model}"
    if large:
        line += (f"; {large} too large for it (it restores faces up to ~18 px wide in the input: "
                 f"larger ones are sharp enough for the plain upscale)")
    if misfit:
        line += f"; {misfit} kept the plain upscale (the restored face fitted the input worse)"
    if opts.gallery and not gallery:
        line += "; no gallery written: no face restored"
    return line + (f"; table: {opts.faces_table}" if opts.faces_table else "")


def _join_tables(joined: Path, files: list[Path]) -> pa.Table:
    """The rows of the joined file and the parts, newest first: for each source, those of the
    newest file that has it (an image redone in a later run)."""
    tables, seen = [], set()
    for p in list(reversed(files)) + ([joined] if joined.is_file() else []):
        t = pq.read_table(p)
        if "background" not in t.column_names:        # a part of an older release
            t = t.append_column("background", pa.nulls(t.num_rows, pa.string()))
        sources = t["source"].to_pylist()
        tables.append(t.filter(pa.array([s not in seen for s in sources], pa.bool_())) if t.num_rows else t)
        seen |= set(sources) | set(json.loads((t.schema.metadata or {}).get(SOURCES_KEY, b"[]")))
    tables = [t.select(FACE_SCHEMA.names).cast(FACE_SCHEMA) for t in tables]
    return pa.concat_tables(tables) if tables else FACE_SCHEMA.empty_table()


def _join_galleries(joined: Path, files: list[Path]) -> tuple[np.ndarray, np.ndarray]:
    """(item keys, tiles) of the joined gallery with each part's item's tiles replaced by the part's."""
    keys, tiles = [], []
    fresh = {p.name[:-len(".gallery.npy")]: np.load(p, allow_pickle=False) for p in files}
    if joined.is_file():
        with np.load(joined, allow_pickle=False) as z:
            keep = [k not in fresh for k in z["keys"].tolist()]
            keys, tiles = z["keys"][keep].tolist(), list(z["tiles"][keep])
    for key, arr in fresh.items():
        keys += [key] * len(arr)
        tiles += list(arr)
    return np.array(keys, dtype=str), (np.stack(tiles) if tiles else np.zeros((0,) + TILE_SHAPE, np.uint8))


def _save_npz(path: Path, keys: np.ndarray, tiles: np.ndarray) -> None:
    with open(path, "wb") as f:      # a file object: np.savez would append ".npz" to a name
        np.savez(f, keys=keys, tiles=tiles)


def _sheet(tiles: list[np.ndarray], columns: int = 4) -> np.ndarray:
    h, w = tiles[0].shape[:2]
    rows = -(-len(tiles) // columns)
    sheet = np.full((rows * (h + 6) + 6, columns * (w + 6) + 6, 3), 255, np.uint8)
    for k, t in enumerate(tiles):
        r, c = divmod(k, columns)
        sheet[6 + r * (h + 6): 6 + r * (h + 6) + h, 6 + c * (w + 6): 6 + c * (w + 6) + w] = t
    return sheet

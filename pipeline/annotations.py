"""What a sink keeps of the batch annotations besides the pixels: the faces table (faces.parquet),
the face gallery (before/after crops per track) and the colourised segmentation maps.

Each writer actor saves its item's share as a part in a parts folder (atomic, named by the item),
so a resumed job keeps what finished items found; the driver joins the parts at the end, keeping
for each source file the rows of its newest part (an image redone in a later run)."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

FACE_COLUMNS = ("faces_count", "faces_box", "faces_landmarks", "faces_score", "faces_track", "faces_affine")
FACE_SCHEMA = pa.schema([
    ("source", pa.string()), ("frame", pa.int64()), ("pts", pa.int64()), ("track", pa.int64()),
    ("box", pa.list_(pa.float32(), 4)), ("landmarks", pa.list_(pa.float32(), 10)), ("score", pa.float32()),
    ("face_model", pa.string()), ("restored", pa.bool_()),
])


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

    def add(self, columns: dict, sources: list[str], names: list[str] | None = None) -> None:
        """`sources[i]`: the file row i came from; `names[i]`: a file-name stem for its legend."""
        o = self.opts
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
                # faces too large for the face model keep the background upscale (zero transform)
                restored = bool(np.abs(c["faces_affine"][i, k]).max() > 0) if "faces_affine" in c else True
                rows["restored"].append(restored)
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
            _atomic(parts / f"{self.key}.faces.parquet", lambda p: pq.write_table(table, p))
            if self.best:
                tiles = np.stack([t for _, t in sorted(self.best.values(), key=lambda v: -v[0])])
                def save(p):
                    with open(p, "wb") as f:      # a file object: np.save would append ".npy" to a name
                        np.save(f, tiles, allow_pickle=False)
                _atomic(parts / f"{self.key}.gallery.npy", save)
        return faces


def _tile(crop: np.ndarray, restored: np.ndarray, side: int = 96) -> np.ndarray:
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
    """Join the parts into faces.parquet and the gallery; returns the number of faces (None when
    the job kept no faces table)."""
    if not opts.parts or not (opts.faces_table or opts.gallery):
        return None
    parts = Path(opts.parts)
    files = sorted(parts.glob("*.faces.parquet"), key=lambda p: p.stat().st_mtime) if parts.is_dir() else []
    tables, seen = [], set()
    for p in reversed(files):               # newest first: an image redone later wins
        t = pq.read_table(p)
        if t.num_rows:
            keep = [s not in seen for s in t["source"].to_pylist()]
            t = t.filter(pa.array(keep))
        tables.append(t)
        seen |= set(pq.read_table(p, columns=["source"])["source"].to_pylist())
    table = pa.concat_tables(tables) if tables else FACE_SCHEMA.empty_table()
    table = table.sort_by([("source", "ascending"), ("frame", "ascending"), ("track", "ascending")])
    if opts.faces_table:
        _atomic(Path(opts.faces_table), lambda p: pq.write_table(table, p))
    if opts.gallery:
        tiles = [np.load(p) for p in sorted(parts.glob("*.gallery.npy"))]
        tiles = [t for arr in tiles for t in arr]
        if tiles:
            from PIL import Image
            _atomic(Path(opts.gallery), lambda p: Image.fromarray(_sheet(tiles)).save(p, format="PNG"))
    if summary is not None:
        tracks = len(set(zip(table["source"].to_pylist(), table["track"].to_pylist()))) if table.num_rows else 0
        restored = sum(table["restored"].to_pylist()) if table.num_rows else 0
        if table.num_rows:
            summary.notes.append(f"{table.num_rows} face(s) in {tracks} track(s), {restored} restored by the face "
                                 f"model (the others too large for it: background upscale); table: {opts.faces_table}")
        else:
            summary.notes.append("no face found: the output is the plain upscale")
    return table.num_rows


def _sheet(tiles: list[np.ndarray], columns: int = 4) -> np.ndarray:
    h, w = tiles[0].shape[:2]
    rows = -(-len(tiles) // columns)
    sheet = np.full((rows * (h + 6) + 6, columns * (w + 6) + 6, 3), 255, np.uint8)
    for k, t in enumerate(tiles):
        r, c = divmod(k, columns)
        sheet[6 + r * (h + 6): 6 + r * (h + 6) + h, 6 + c * (w + 6): 6 + c * (w + 6) + w] = t
    return sheet

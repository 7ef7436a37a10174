"""Face-SR training data: aligned face folders (UTKFace 200x200 "aligned & cropped", or any folder of
aligned square faces), face-crop degradations, and 5-point landmark heatmaps for FSRNet's prior.

Why a sampler of its own: generic SR trains on random patches of large images with the 8 dihedral
transforms; a face model must see whole, upright faces (a face prior is the point), so the only flip
is horizontal (with left/right landmarks swapped), and the face is shown at a random zoom so that one
model covers the spread of face sizes in aligned crops (UTKFace faces fill more of the frame than
FSRNet's CelebA crops: eye distance ~0.40 vs ~0.30 of the side).

Degradation (checked against FSRNet's own CelebA pairs, ../shared/data/faces_eval/celeba_fsrnet:
MATLAB `imresize` bicubic down x8 then up x8 of the HR reproduces their LR_8x files to 42.4 dB,
JPEG noise; OpenCV area/cubic 36.8 / 24.2 dB): LR = MATLAB bicubic `imresize(hr, 1/scale)` of the
whole HR crop, quantised to 8 bits like a stored LR image.

Landmarks: UTKFace ships none, so YuNet (cv2.FaceDetectorYN) finds 5 points (eyes, nose tip, mouth
corners) on the 200x200 originals once; they are cached (.npz) beside the user's cache dir.
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch

from models.imresize import imresize

YUNET_FILES = (Path(__file__).resolve().parents[1] / "operators" / "faces" / "yunet" / "face_detection_yunet_2023mar.onnx",
               Path(__file__).resolve().parents[2] / "shared" / "models" / "yunet" / "face_detection_yunet_2023mar.onnx")
FLIP_ORDER = (1, 0, 2, 4, 3)      # YuNet order: right eye, left eye, nose tip, right/left mouth corner
CACHE_DIR = Path(os.environ.get("RAYSCALE_CACHE", Path.home() / ".cache" / "rayscale"))


# ------------------------------------------------------------------------------------------ loading
def face_files(folder: str | os.PathLike, limit: int = 0) -> list[Path]:
    from pipeline.train import list_images
    files = list_images(folder)
    return files[:limit] if limit else files


def load_faces(files: Sequence[Path], size: int) -> np.ndarray:
    """(N, size, size, 3) uint8 RGB: each (square) face resized to `size` (OpenCV area when shrinking).
    Non-square images are centre-cropped to a square first."""
    import cv2
    out = np.empty((len(files), size, size, 3), np.uint8)
    for i, f in enumerate(files):
        a = cv2.imread(str(f), cv2.IMREAD_COLOR)
        if a is None:
            raise ValueError(f"{f}: unreadable image")
        h, w = a.shape[:2]
        s = min(h, w)
        a = a[(h - s) // 2:(h - s) // 2 + s, (w - s) // 2:(w - s) // 2 + s]
        if s != size:
            a = cv2.resize(a, (size, size), interpolation=cv2.INTER_AREA if s > size else cv2.INTER_CUBIC)
        out[i] = a[:, :, ::-1]
    return out


def degrade(hr: torch.Tensor, scale: int) -> torch.Tensor:
    """FSRNet's degradation: MATLAB bicubic down by `scale`, 8-bit quantised. hr (..., 3, H, W) [0,1]."""
    return (imresize(hr, 1.0 / scale).clamp(0, 1) * 255).round() / 255


# ------------------------------------------------------------------------------------------ landmarks
def yunet_model(path: str | os.PathLike | None = None) -> Path:
    for p in ([Path(path)] if path else list(YUNET_FILES)):
        if p.is_file():
            return p
    raise FileNotFoundError(f"YuNet model not found ({', '.join(map(str, YUNET_FILES))})")


def detect_points(files: Sequence[Path], model: str | os.PathLike | None = None,
                  threshold: float = 0.6) -> np.ndarray:
    """(N, 5, 2) float32 landmarks of the most confident face as fractions of the image side
    ((x + 0.5) / w, pixel centres at +0.5); NaN where none is found."""
    import cv2
    det = None
    pts = np.full((len(files), 5, 2), np.nan, np.float32)
    for i, f in enumerate(files):
        a = cv2.imread(str(f), cv2.IMREAD_COLOR)
        if a is None:
            raise ValueError(f"{f}: unreadable image")
        h, w = a.shape[:2]
        if det is None:
            det = cv2.FaceDetectorYN.create(str(yunet_model(model)), "", (w, h), threshold, 0.3, 50)
        det.setInputSize((w, h))
        _, faces = det.detect(a)
        if faces is not None and len(faces):
            best = faces[np.argmax(faces[:, -1])]
            pts[i] = (best[4:14].reshape(5, 2) + 0.5) / np.array([w, h], np.float32)   # fraction of the side
    return pts


def cached_points(files: Sequence[Path], model: str | os.PathLike | None = None,
                  log=print) -> np.ndarray:
    """`detect_points`, cached per folder and file list."""
    import hashlib
    key = hashlib.sha1("\n".join(str(f) for f in files).encode()).hexdigest()[:12]
    cache = CACHE_DIR / f"yunet5-{Path(files[0]).parent.name}-{len(files)}-{key}.npz"
    if cache.is_file():
        return np.load(cache)["points"]
    log(f"landmarks: YuNet on {len(files)} faces (cached in {cache})")
    pts = detect_points(files, model)
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(".tmp.npz")
    np.savez_compressed(tmp, points=pts)
    os.replace(tmp, cache)
    return pts


def heatmaps(points: torch.Tensor, size: int, hr_size: int, sigma: float = 1.5) -> torch.Tensor:
    """(N, 5, size, size) Gaussian heatmaps (peak 1) of (N, 5, 2) HR-pixel points; NaN points -> 0."""
    f = size / hr_size
    p = (points + 0.5) * f - 0.5                                     # pixel centres at the map's scale
    g = torch.arange(size, dtype=torch.float32)
    dx = (g.view(1, 1, 1, -1) - p[..., 0, None, None]) ** 2
    dy = (g.view(1, 1, -1, 1) - p[..., 1, None, None]) ** 2
    hm = torch.exp(-(dx + dy) / (2 * sigma ** 2))
    return torch.nan_to_num(hm, nan=0.0)


# ------------------------------------------------------------------------------------------ sampling
class FaceSampler:
    """Random (LR, HR[, {"landmarks": heatmaps}]) batches of whole faces.

    `faces`: (N, S, S, 3) uint8. Each sample: the face resized to L = hr * z (z log-uniform in
    `zoom`), then an hr x hr window: a random crop when L >= hr, else the face at a random place on a
    reflect-padded canvas; horizontal flip with p = 0.5; LR by `degrade`. `points`: (N, 5, 2) as
    fractions of the side -> heatmaps at half the HR size (FSRNet's prior resolution).
    """

    def __init__(self, faces: np.ndarray, scale: int, patch: int, batch: int,
                 zoom: tuple[float, float] = (1.0, 1.0), seed: int = 0, points: np.ndarray | None = None):
        if len(faces) == 0:
            raise ValueError("no training faces")
        self.faces, self.scale, self.patch, self.batch = faces, scale, patch, batch
        self.hr = patch * scale
        self.zoom = (float(zoom[0]), float(zoom[1]))
        self.points = points
        self.gen = torch.Generator().manual_seed(seed)

    def _rand(self) -> float:
        return float(torch.rand((), generator=self.gen, dtype=torch.float64))

    def _one(self) -> tuple[np.ndarray, np.ndarray | None]:
        import cv2
        hr = self.hr
        i = int(torch.randint(len(self.faces), (1,), generator=self.gen))
        lo, hi = math.log(self.zoom[0]), math.log(self.zoom[1])
        L = max(8, int(round(hr * math.exp(lo + (hi - lo) * self._rand()))))
        src = self.faces[i]
        S = src.shape[0]
        img = src if L == S else cv2.resize(src, (L, L), interpolation=cv2.INTER_AREA if L < S else cv2.INTER_CUBIC)
        if L >= hr:
            y = int(round((L - hr) * self._rand()))
            x = int(round((L - hr) * self._rand()))
            img, off = img[y:y + hr, x:x + hr], (-x, -y)
        else:
            t = int(round((hr - L) * self._rand()))
            l = int(round((hr - L) * self._rand()))
            img = cv2.copyMakeBorder(img, t, hr - L - t, l, hr - L - l, cv2.BORDER_REFLECT_101)
            off = (l, t)
        pts = None
        if self.points is not None:
            pts = self.points[i] * L - 0.5 + np.array(off, np.float32)       # pixel-centre coords in the crop
        if self._rand() < 0.5:
            img = img[:, ::-1]
            if pts is not None:
                pts = pts[list(FLIP_ORDER)].copy()
                pts[:, 0] = hr - 1 - pts[:, 0]
        return np.ascontiguousarray(img), pts

    def __iter__(self) -> Iterator[tuple]:
        while True:
            items = [self._one() for _ in range(self.batch)]
            hr = torch.from_numpy(np.stack([a for a, _ in items])).permute(0, 3, 1, 2).float() / 255
            lr = degrade(hr, self.scale)
            if self.points is None:
                yield lr, hr
            else:
                pts = torch.from_numpy(np.stack([p for _, p in items]).astype(np.float32))
                yield lr, hr, {"landmarks": heatmaps(pts, self.hr // 2, self.hr)}

    def state_dict(self) -> dict:
        return {"gen": self.gen.get_state()}

    def load_state_dict(self, st: dict) -> None:
        self.gen.set_state(st["gen"])


def val_pairs(faces: np.ndarray, scale: int, hr_size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(LR, HR) of held-back faces: the whole face at hr_size (area), LR by `degrade`."""
    import cv2
    out = []
    for a in faces:
        if a.shape[0] != hr_size:
            a = cv2.resize(a, (hr_size, hr_size), interpolation=cv2.INTER_AREA)
        hr = torch.from_numpy(np.ascontiguousarray(a)).permute(2, 0, 1).float() / 255
        out.append((degrade(hr, scale), hr))
    return out


def face_training_data(cfg, spec, log=print):
    """The face branch of pipeline.train.train: (sampler, val pairs, train files, val files)."""
    files = face_files(cfg.train_dir, cfg.face_limit)
    val_files: list[Path] = []
    if cfg.val_holdout:
        files, val_files = files[:-cfg.val_holdout], files[-cfg.val_holdout:]
    if not files:
        raise ValueError("no training faces left after --val-holdout")
    hr = cfg.patch * cfg.scale
    store = min(256, int(math.ceil(hr * max(1.0, cfg.face_zoom[1]))))
    faces = load_faces(files, store)
    points = None
    if spec.arch in NEEDS_LANDMARKS:
        points = cached_points(files, log=log)
        log(f"landmarks: {int(np.isfinite(points[:, 0, 0]).sum())}/{len(files)} faces with 5 points")
    sampler = FaceSampler(faces, cfg.scale, cfg.patch, cfg.batch, cfg.face_zoom, cfg.seed, points)
    vp = val_pairs(load_faces(val_files, hr), cfg.scale, hr) if val_files else []
    return sampler, vp, files, val_files


# ------------------------------------------------------------------------------------------ face archs
NEEDS_LANDMARKS = ("fsrnet", "fsrgan")


def build_fsrnet(scale: int = 8, channels: int = 64, n_blocks: int = 12, **kw):
    """FSRNet with the prior reduced to what exists here: 5 landmark heatmaps (YuNet points), no
    parsing maps (parsing=0: the parsing heads and their share of the prior loss are dropped)."""
    from models import fsrnet
    if scale != fsrnet.SCALE:
        raise ValueError(f"fsrnet is x{fsrnet.SCALE} only (--scale {scale})")
    net = fsrnet.FSRNet(coarse_width=channels, encoder_width=channels, decoder_width=channels,
                        encoder_blocks=n_blocks, landmarks=5, parsing=0, **kw)
    _, spec = fsrnet.ARCHITECTURES[0].from_state_dict(net.state_dict())
    return net, spec


def build_superfan(scale: int = 4, channels: int = 64, n_blocks: int = 12, **kw):
    """Super-FAN's generator (stages n/3/2 for x4, n/3/2/2 for x8), trained on the pixel loss: its
    heatmap loss needs a trained FAN, and none exists here (no 2DFAN-4 weights can be downloaded)."""
    from models import superfan
    n_up = {2: 1, 4: 2, 8: 3}.get(scale)
    if n_up is None:
        raise ValueError(f"superfan supports x2, x4, x8 (--scale {scale})")
    blocks = (n_blocks, 3, 2, 2)[:n_up + 1]
    net = superfan.SuperFANGenerator(width=channels, blocks=blocks, **kw)
    arch = next(a for a in superfan.ARCHITECTURES if a.name == "superfan")
    _, spec = arch.from_state_dict(net.state_dict())
    return net, spec


FACE_BUILDERS = {"fsrnet": build_fsrnet, "superfan": build_superfan}

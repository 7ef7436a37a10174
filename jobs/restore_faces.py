"""Restore faces: the face route (detect on the input, track, align, face SR, paste back into the
upscaled frame) on a video, an image or a folder of images.

    python jobs/restore_faces.py footage.mp4 footage_x4.mp4             # + footage_x4.mp4.faces.parquet
    python jobs/restore_faces.py photos/ restored/ --gallery            # + restored/faces.parquet, faces_gallery.png

The same as `upscale_video.py IN OUT --faces` / `upscale_images.py IN OUT --faces`, with the face
route's defaults: x4 background (rayscale-x4) and the rayscale-face-x4 face model. Every option of
those jobs is accepted and passed on."""
from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

VIDEO_SUFFIXES = {".mp4", ".mkv", ".mov", ".avi", ".webm", ".m4v", ".ts", ".mpg", ".mpeg", ".wmv", ".flv"}


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    src = Path(argv[0]) if argv and not argv[0].startswith("-") else None   # IN OUT [options]
    extra = ["--faces"]
    if "--scale" not in argv and "--model" not in argv:
        extra += ["--scale", "4"]
    if src is not None and src.suffix.lower() in VIDEO_SUFFIXES:
        from jobs import upscale_video
        return upscale_video.main(argv + extra)
    from jobs import upscale_images
    return upscale_images.main(argv + extra)


if __name__ == "__main__":
    sys.exit(main())

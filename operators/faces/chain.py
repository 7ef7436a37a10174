"""The face route as a list of stages for the engine: detect -> track -> align -> background
upscale -> face SR -> paste.

Detection, tracking and alignment run first, on the LR frames as the source delivers them; the
background upscale comes after them and replaces `frames` with the HR frames that paste writes
into. So no LR copy of the frames is carried (no `lr_frames` column): the only thing cut from the
LR frame that travels on is the small crop of each face (16x16x3 bytes for a x4 face model).
Stages on the same device fuse (docs/batches.md): detect, track and align share one CPU actor;
the background model and the face model keep their own pools, actor counts and devices.

The factories are functools.partial objects of the operator classes: picklable, and the model is
loaded only when the stage's actor calls them."""
from __future__ import annotations

from functools import partial
from typing import Callable

from .align import FaceAlign, template_for
from .detect import FaceDetector
from .paste import CONSISTENCY, FacePaste
from .sr import FaceSR
from .track import FaceTracker

Factory = Callable[[], object]


def face_stages(face_model: str, face_weights: str | None = None, threshold: float = 0.7, min_size: float = 0.0,
                detector_path: str | None = None, *, background: tuple[str, Factory], background_scale: int,
                face_scale: int | None = None, crop_size: int = 16, template: str | None = None, min_zoom: float = 0.7,
                still: bool = False, device: str = "auto", precision: str = "fp32",
                keep_crops: bool = False, upsample_to: int = 1280) -> list[tuple[str, Factory]]:
    """Stages of the face route, in order, with the background stage (name, factory) in its place.

    face_model: a name or path `models.load` takes, or `identity`/`marker` (they need face_scale).
    crop_size: the face model's LR input side (16 for the x4 rayscale-face model, FSRNet and
    Super-FAN). template: alignment template ('utkface' or 'celeba'; default from the model name).
    min_zoom: faces the crop would shrink below this factor are left to the background upscale.
    still: images (every detection is its own track, no frame held back) instead of video.
    keep_crops: leave faces_crops / faces_restored in the batch after paste (for a gallery).
    The `marker` model pastes every face (it shows where faces go); the others only faces that fit
    the input no worse than the background (operators/faces/paste.py).
    upsample_to: small frames are upsampled for detection up to this long side (0: never; see
    operators/faces/detect.py for what it finds and costs)."""
    tracker = (partial(FaceTracker, min_track_length=1, max_gap=0, smooth=0, link=False) if still
               else partial(FaceTracker))
    return [
        ("face_detect", partial(FaceDetector, model_path=detector_path, threshold=threshold, min_size=min_size,
                                 upsample_to=upsample_to)),
        ("face_track", tracker),
        ("face_align", partial(FaceAlign, crop_size=crop_size, template=template or template_for(face_model),
                                min_zoom=min_zoom)),
        background,
        ("face_sr", partial(FaceSR, model=face_model, weights=face_weights, scale=face_scale, device=device,
                            precision=precision)),
        ("face_paste", partial(FacePaste, background_scale=background_scale, keep_crops=keep_crops,
                               consistency=None if face_model == "marker" else CONSISTENCY)),
    ]

"""The model and compute flags every job shares, and the stage chain they build: the background
upscale, then the optional face route (--faces) or the SFTGAN route (--model sftgan)."""
from __future__ import annotations

import functools
import os


def add_model_args(ap) -> None:
    ap.add_argument("--model", default=None,
                    help="bicubic, lanczos, a shipped model (rayscale-x2, rayscale-x4, ...), an architecture "
                         "name with --weights, a checkpoint path, or sftgan (with --weights and --seg-weights); "
                         "default: the shipped model for --scale")
    ap.add_argument("--weights", default=None, help="checkpoint file for --model")
    ap.add_argument("--scale", type=int, default=None, help="upscaling factor (default: the model's)")
    g = ap.add_argument_group("SRMD degradation (models that take one)")
    g.add_argument("--blur", type=lambda v: v if v == "auto" else float(v), default=None,
                   help="isotropic Gaussian blur sigma of the source, or auto: estimated per image or video shot (default: none)")
    g.add_argument("--blur-l2", type=float, default=None, help="anisotropic blur: second eigenvalue (--blur-l1 first)")
    g.add_argument("--blur-l1", type=float, default=None, help="anisotropic blur: first eigenvalue")
    g.add_argument("--blur-theta", type=float, default=None, help="anisotropic blur: angle in radians")
    g.add_argument("--noise", type=lambda v: v if v == "auto" else float(v), default=None,
                   help="noise level of the source on the 0-255 scale (SRMD), or auto: estimated per image or video shot")
    g = ap.add_argument_group("SFTGAN (--model sftgan)")
    g.add_argument("--seg-weights", default=None, help="OutdoorSceneSeg checkpoint that feeds SFTGAN")
    g.add_argument("--save-segmentation", default=None, metavar="DIR",
                   help="write colourised class maps (with a legend) of each image/frame here")
    g = ap.add_argument_group("faces (--faces: detect on the input, restore with a face model, paste back)")
    g.add_argument("--faces", action="store_true", help="restore faces with the face route")
    g.add_argument("--face-model", default="rayscale-face-x4", help="face SR model name or checkpoint")
    g.add_argument("--face-weights", default=None, help="checkpoint for --face-model when it is an architecture")
    g.add_argument("--face-threshold", type=float, default=0.7, help="detector score threshold")
    g.add_argument("--face-min-size", type=int, default=8, help="smallest face (pixels of the input) to restore")
    g.add_argument("--face-detector", default=None, help="another YuNet ONNX file")
    g.add_argument("--face-actors", type=int, default=1, help="face-SR actors")
    g.add_argument("--gallery", action="store_true",
                   help="also write before/after crops of each face track as a contact sheet PNG")


def add_compute_args(ap) -> None:
    g = ap.add_argument_group("compute")
    g.add_argument("--batch-size", type=int, default=4, help="frames (images of one size) per batch")
    g.add_argument("--tile", type=int, default=0, help="process in tiles of this many input pixels (0: whole)")
    g.add_argument("--tile-overlap", type=int, default=16, help="context pixels around each tile")
    g.add_argument("--actors", type=int, default=1, help="model actors (one model copy each)")
    g.add_argument("--gpus-per-actor", type=float, default=None, help="GPUs per model actor (default: 1 if Ray sees GPUs)")
    g.add_argument("--threads", type=int, default=None, help="torch threads per CPU actor (default: cores / actors)")
    g.add_argument("--precision", choices=("fp32", "fp16", "bf16"), default="fp32",
                   help="fp16/bf16 on GPU; bf16 also on CPU")
    g.add_argument("--no-fuse", action="store_true",
                   help="run each stage in its own actor pool (default: consecutive stages on one device share an actor)")


def file_identity(path: str | None) -> str:
    if not path:
        return ""
    st = os.stat(path)
    return f"{os.path.abspath(path)}:{st.st_size}:{st.st_mtime}"


def _placement(args, model: str):
    import ray
    from operators.upscale import INTERPOLATORS
    gpus = args.gpus_per_actor
    if gpus is None:
        gpus = 1 if ray.cluster_resources().get("GPU", 0) >= 1 and model not in INTERPOLATORS else 0
    threads = args.threads or (None if gpus else max(1, (os.cpu_count() or 1) // max(1, args.actors)))
    return gpus, threads


def degradation_of(args) -> dict:
    return {"sigma": getattr(args, "blur", None), "l1": getattr(args, "blur_l1", None),
            "l2": getattr(args, "blur_l2", None), "theta": getattr(args, "blur_theta", None),
            "noise": getattr(args, "noise", None)}


def build_stages(args, model: str, still: bool = False) -> list:
    """The stage chain for the flags (call after Ray is connected). `still`: images, not video
    (the face tracker then treats every detection as its own track)."""
    from pipeline.engine import StageSpec
    gpus, threads = _placement(args, model)
    device = "cuda" if gpus else "cpu"
    if model == "sftgan":
        return _sftgan_stages(args, device, gpus, threads)
    from operators.upscale import Upscaler
    degradation = degradation_of(args)
    factory = functools.partial(Upscaler, model, weights=args.weights, scale=args.scale, device=device,
                                precision=args.precision, tile=args.tile, tile_overlap=args.tile_overlap,
                                degradation=degradation)
    identity = (f"upscale:{model}:{file_identity(args.weights)}:{args.scale}:{args.precision}:{args.tile}:"
                f"{args.tile_overlap}:{sorted(degradation.items())}")
    upscale = StageSpec("upscale", factory, actors=args.actors, gpus_per_actor=gpus, threads=threads,
                        identity=identity)
    if getattr(args, "faces", False):
        return _face_stages(args, upscale, model, device, gpus, threads, still)
    return [upscale]


def model_scale(model: str, weights: str | None, scale: int | None) -> int:
    """The background model's scale, known on the driver without building it."""
    import models
    from operators.upscale import INTERPOLATORS
    if model in INTERPOLATORS or model == "zssr":
        return int(scale or 2)
    path = weights or models.shipped_weights().get(model)
    if path is None and model in models.architectures():      # by name, e.g. the authors' SRMD
        return int(models.load(model, scale=scale)[1].scale)
    return int(models.detect(path or model).scale)


def lossy_note(model: str, results: dict, what: str | None = None) -> str | None:
    """One line per job when lossy sources (JPEG, WebP, a lossy or 4:2:0 video) went through a
    bicubic-trained shipped model (`rayscale-xS`): trained on clean downscales, it sharpens a
    codec's blocks into grids, and `rayscale-real-xS` was trained on such input. `results`: this
    run's entries; `what` names the lossy sources instead of counting them (a video)."""
    import models
    real = model.replace("rayscale-x", "rayscale-real-x", 1)
    if not model.startswith("rayscale-x") or real not in models.shipped_weights():
        return None
    ran = [r for r in results.values() if "lossy" in r]      # reused entries carry no codec flag
    lossy = sum(bool(r["lossy"]) for r in ran)
    if not lossy:
        return None
    what = what or f"{lossy} of {len(ran)} source(s) lossy (JPEG/WebP)"
    return (f"{what}: {model} is trained on clean bicubic downscales "
            f"and sharpens their compression blocks into grids; --model {real} is trained for such input")


def _face_stages(args, upscale, model: str, device: str, gpus: float, threads, still: bool) -> list:
    """detect -> track -> align on the LR frames, the background upscale, face SR in its own pool
    (its own actor count and device), paste back."""
    from operators.faces.chain import face_stages
    from pipeline.engine import StageSpec
    built = face_stages(face_model=args.face_model, face_weights=args.face_weights,
                        threshold=args.face_threshold, min_size=args.face_min_size,
                        detector_path=args.face_detector, background=(upscale.name, upscale.factory),
                        background_scale=model_scale(model, args.weights, args.scale), still=still,
                        device=device, precision=args.precision, keep_crops=bool(getattr(args, "gallery", False)))
    from operators.faces.paste import CONSISTENCY
    ident = (f"faces:{args.face_model}:{file_identity(args.face_weights)}:{args.face_threshold}:"
             f"{args.face_min_size}:{file_identity(args.face_detector)}:{still}:fit{CONSISTENCY}")
    out = []
    for name, factory in built:
        if name == upscale.name:
            out.append(upscale)
        elif name == "face_sr":
            out.append(StageSpec(name, factory, actors=args.face_actors, gpus_per_actor=gpus, threads=threads,
                                 identity=ident))
        else:   # light CPU work: shares the pool shape of its neighbours so it fuses with them
            out.append(StageSpec(name, factory, actors=args.actors, threads=threads, identity=ident))
    return out


def _sftgan_stages(args, device: str, gpus: float, threads) -> list:
    from operators.sftgan import sftgan_stages
    from pipeline.engine import StageSpec
    built = sftgan_stages(args.weights, args.seg_weights, device=device, precision=args.precision,
                          tile=args.tile, compact=bool(getattr(args, "no_fuse", False)))
    ident = f"sftgan:{file_identity(args.weights)}:{file_identity(args.seg_weights)}:{args.precision}:{args.tile}"
    if getattr(args, "save_segmentation", None):
        from operators.segmap_colour import SegmentationLegend
        at = next(i for i, b in enumerate(built) if b[0] == "segment") + 1
        built = built[:at] + [("segmentation_legend", functools.partial(SegmentationLegend),
                               ("segmentation",), ("segmentation_legend",))] + built[at:]
    stages = []
    for name, factory, reads, writes in built:
        stages.append(StageSpec(name, factory, actors=args.actors, gpus_per_actor=gpus, threads=threads,
                                identity=ident, reads=tuple(reads), writes=tuple(writes)))
    return stages


def annotation_options(args, faces_table: str, parts: str, gallery: str):
    """What the sink keeps besides pixels, from the flags (None when nothing)."""
    from pipeline.annotations import AnnotationOptions
    faces = bool(getattr(args, "faces", False))
    seg = getattr(args, "save_segmentation", None)
    if not faces and not seg:
        return None
    return AnnotationOptions(faces_table=faces_table if faces else None, parts=parts,
                             face_model=args.face_model if faces else "",
                             gallery=gallery if faces and getattr(args, "gallery", False) else None,
                             segmentation_dir=os.path.abspath(seg) if seg else None)

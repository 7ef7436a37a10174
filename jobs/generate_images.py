"""Generate one PNG per caption line with AttnGAN (256x256 with the published 3-branch generators),
optionally upscaled by an SR model.

    python -m jobs.generate_images CAPTIONS.txt OUTDIR --generator bird_AttnGAN2.pth \\
        --text-encoder text_encoder200.pth --vocab vocab.json [--seed 100] \\
        [--upscale MODEL --weights W --scale S]

Each non-empty line of CAPTIONS.txt is one caption; its image is OUTDIR/NNNN.png, NNNN = the line
number (from 1). Same --seed, same files: noise (z, then eps) is drawn per caption in file order from
one seeded generator. Words are tokenised like the authors' dataset code (lower case, \\w+ runs).

The vocabulary is the `wordtoix` table of the authors' captions.pickle (birds / coco), saved as
JSON ({word: index}) or text (one word per line, line number from 0 = index, line 0 '<end>').
captions.pickle is a pickle, so it is never opened here; export it once, in a Python you trust
with that file:

    python -c "import pickle, json; x = pickle.load(open('captions.pickle', 'rb')); \\
               json.dump(x[3], open('vocab.json', 'w'))"

(x = [train_captions, test_captions, ixtoword, wordtoix]; a Python 2 pickle may need
pickle.load(f, encoding='latin1').)  Exit status 2 with a one-line reason for bad inputs.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

if not __package__:  # run as a file path: make the project importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

import models  # noqa: E402
from models import attngan  # noqa: E402


class InputError(Exception):
    """A bad input: the message names the file and the reason."""


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="generate_images", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("captions", type=Path, help="text file, one caption per line")
    p.add_argument("outdir", type=Path, help="folder for the PNGs (created if missing)")
    p.add_argument("--generator", type=Path, required=True, help="AttnGAN G_NET state dict (.pth)")
    p.add_argument("--text-encoder", type=Path, required=True, help="DAMSM RNN_ENCODER state dict (.pth)")
    p.add_argument("--vocab", type=Path, required=True, help="wordtoix as .json or .txt (see above)")
    p.add_argument("--seed", type=int, default=100, help="noise seed (default 100, as the authors' eval)")
    p.add_argument("--skip-unknown", action="store_true",
                   help="drop words missing from the vocabulary (the authors' gen_example does) "
                        "instead of failing")
    p.add_argument("--device", default="cpu")
    p.add_argument("--upscale", metavar="MODEL", help="SR model (name or checkpoint) applied to the images")
    p.add_argument("--weights", type=Path, help="checkpoint for --upscale")
    p.add_argument("--scale", type=int, help="scale for --upscale")
    return p.parse_args(argv)


def read_captions(path: Path, vocab: dict[str, int], skip_unknown: bool):
    """(line numbers, token lists) for the non-empty lines."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: cannot read ({e.__class__.__name__}: {e})") from None
    numbers, tokens = [], []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        words = attngan.tokenize(line)
        unknown = [w for w in words if w not in vocab]
        if unknown and not skip_unknown:
            raise InputError(f"{path}:{n}: words not in the vocabulary: {', '.join(sorted(set(unknown)))}")
        words = [w for w in words if w in vocab]
        if not words:
            raise InputError(f"{path}:{n}: no known words in caption {line.strip()!r}")
        numbers.append(n)
        tokens.append(words)
    if not numbers:
        raise InputError(f"{path}: no captions (empty file)")
    return numbers, tokens


def load_net(path: Path, arch: str):
    try:
        return models.load(arch, weights=path)
    except (models.CheckpointError, models.UnknownCheckpoint) as e:
        msg = str(e)
        raise InputError(msg if str(path) in msg else f"{path}: {msg}") from None


def run(args) -> list[Path]:
    for label, path in (("captions", args.captions), ("generator", args.generator),
                        ("text encoder", args.text_encoder), ("vocab", args.vocab)):
        if not path.is_file():
            raise InputError(f"{path}: {label} file not found")
    try:
        vocab = attngan.load_vocab(args.vocab)
    except (ValueError, OSError, UnicodeDecodeError) as e:
        raise InputError(f"{args.vocab}: bad vocabulary: {e}") from None
    numbers, tokens = read_captions(args.captions, vocab, args.skip_unknown)

    gnet, gspec = load_net(args.generator, "attngan")
    tenc, tspec = load_net(args.text_encoder, "attngan-text")
    if tspec.hyperparams["nhidden"] != gspec.hyperparams["EMBEDDING_DIM"]:
        raise InputError(f"{args.text_encoder}: text features have {tspec.hyperparams['nhidden']} channels, "
                         f"the generator expects {gspec.hyperparams['EMBEDDING_DIM']}")
    if max(vocab.values()) >= tspec.hyperparams["ntoken"]:
        raise InputError(f"{args.vocab}: indices go up to {max(vocab.values())}, the text encoder "
                         f"knows {tspec.hyperparams['ntoken']} words (vocabulary of another dataset?)")

    captions, cap_lens = attngan.encode_captions(tokens, vocab)
    gen = torch.Generator().manual_seed(args.seed)
    frames = attngan.generate(gnet.to(args.device), tenc.to(args.device), captions, cap_lens, gen,
                              device=args.device)
    if args.upscale:
        frames = upscale(frames, numbers, args)
    return write_pngs(frames, numbers, args.outdir)


def upscale(frames: np.ndarray, numbers: list[int], args) -> np.ndarray:
    try:
        from operators.upscale import Upscaler
    except ImportError as e:
        raise InputError(f"--upscale needs operators.upscale, which cannot be imported: {e}") from None
    try:
        up = Upscaler(args.upscale, weights=args.weights, scale=args.scale, device=args.device)
    except (ValueError, OSError) as e:  # CheckpointError / UnknownCheckpoint are ValueErrors
        raise InputError(f"{args.weights or args.upscale}: {e}") from None
    out = up({"frames": frames, "index": np.asarray(numbers, dtype=np.int64)})
    return np.asarray(out["frames"])


def write_pngs(frames: np.ndarray, numbers: list[int], outdir: Path) -> list[Path]:
    import cv2

    try:
        outdir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputError(f"{outdir}: cannot create output folder ({e.strerror})") from None
    paths = []
    for n, frame in zip(numbers, frames):
        path = outdir / f"{n:04d}.png"
        if not cv2.imwrite(str(path), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR)):
            raise InputError(f"{path}: could not write PNG")
        paths.append(path)
    return paths


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        paths = run(args)
    except InputError as e:
        print(f"generate_images: error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {len(paths)} image(s) to {args.outdir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

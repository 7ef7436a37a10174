"""Make small test clips without any network: a moving pattern with a sine tone, and the
awkward cases users bring (variable frame rate, 10-bit, rotation, subtitles)."""
from __future__ import annotations

import argparse
import os
import tempfile
from fractions import Fraction

import av
import numpy as np

from .encode import container_options


def pattern(i: int, width: int, height: int) -> np.ndarray:
    """A frame with texture and motion, so compression and upscaling both have work to do."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    r = 128 + 100 * np.sin((x + 3 * i) / 7.0) * np.cos(y / 11.0)
    g = 128 + 100 * np.sin((x - 2 * i) / 13.0 + y / 9.0)
    b = (x * 255 / max(1, width - 1) + 4 * i) % 256
    img = np.stack([r, g, b], axis=-1)
    s = max(8, min(width, height) // 4)
    x0 = (5 * i) % max(1, width - s)
    y0 = (3 * i) % max(1, height - s)
    img[y0:y0 + s, x0:x0 + s] = (240, 40, 30)
    return np.clip(img, 0, 255).astype(np.uint8)


def make_clip(path: str, frames: int = 48, width: int = 160, height: int = 96,
              rate: Fraction = Fraction(25), codec: str = "libx264", pix_fmt: str = "yuv420p",
              gop: int = 12, audio: bool = True, vfr: bool = False, rotation: int = 0,
              subtitles: list[tuple[float, float, str]] | None = None, bframes: int = 2,
              color_range: str | None = None, first_pts: int = 0) -> str:
    """Write a clip and return its path. With `vfr`, frame durations alternate 1x/2x/3x;
    `first_pts` (in the stream time base) makes the video start later than 0, as cut clips do."""
    srt = None
    if subtitles:
        fd, srt = tempfile.mkstemp(suffix=".srt")
        with os.fdopen(fd, "w") as f:
            for n, (a, b, text) in enumerate(subtitles, 1):
                f.write(f"{n}\n{_srt_time(a)} --> {_srt_time(b)}\n{text}\n\n")
    tb = Fraction(1, 1000) if vfr else 1 / rate
    out = av.open(path, "w", options=container_options(path.rsplit(".", 1)[-1].lower(), tb))
    opts = {"g": str(gop), "bf": str(bframes), "crf": "18"} if codec in ("libx264", "libx265") else {}
    if codec == "libx265":
        opts = {"x265-params": f"keyint={gop}:min-keyint={gop}:bframes={bframes}:log-level=error", "crf": "18"}
    vs = out.add_stream(codec, rate=rate, options=opts)
    vs.width, vs.height, vs.pix_fmt = width, height, pix_fmt
    vs.time_base = tb
    vs.codec_context.time_base = tb
    if color_range == "full":
        vs.codec_context.color_range = 2
    if rotation:
        vs.set_display_rotation(rotation)
    aus = None
    if audio:
        aus = out.add_stream("aac", rate=44100, layout="stereo")
    sub_in = sub_out = None
    if srt:
        sub_in = av.open(srt)
        sub_out = out.add_stream_from_template(sub_in.streams.subtitles[0])
    t = first_pts
    steps = [1, 2, 3]
    for i in range(frames):
        frame = av.VideoFrame.from_ndarray(pattern(i, width, height), format="rgb24")
        if pix_fmt != "yuv420p" or color_range:
            frame = frame.reformat(format=pix_fmt, dst_color_range=2 if color_range == "full" else 1)
        frame.pts = t
        frame.time_base = tb
        out.mux(vs.encode(frame))
        t += (steps[i % 3] * 40) if vfr else 1
    out.mux(vs.encode(None))
    if aus is not None:
        duration = float(t * tb)
        n = int(44100 * duration)
        samples = (0.3 * np.sin(2 * np.pi * 440 * np.arange(n) / 44100)).astype(np.float32)
        pos = 0
        while pos < n:
            chunk = samples[pos:pos + 1024]
            af = av.AudioFrame.from_ndarray(np.stack([chunk, chunk])[None].reshape(1, -1), format="flt", layout="stereo")
            af.sample_rate = 44100
            af.pts = pos
            out.mux(aus.encode(af))
            pos += 1024
        out.mux(aus.encode(None))
    if sub_in is not None:
        for packet in sub_in.demux(sub_in.streams.subtitles[0]):
            if packet.size:
                packet.stream = sub_out
                out.mux(packet)
        sub_in.close()
        os.remove(srt)
    out.close()
    return path


def _srt_time(s: float) -> str:
    ms = int(round(s * 1000))
    return f"{ms // 3600000:02d}:{ms // 60000 % 60:02d}:{ms // 1000 % 60:02d},{ms % 1000:03d}"


def main(argv=None):
    ap = argparse.ArgumentParser(description="Write a synthetic test clip (moving pattern + 440 Hz tone).")
    ap.add_argument("out")
    ap.add_argument("--frames", type=int, default=120)
    ap.add_argument("--size", default="640x360")
    ap.add_argument("--fps", default="30000/1001")
    a = ap.parse_args(argv)
    w, h = map(int, a.size.split("x"))
    make_clip(a.out, frames=a.frames, width=w, height=h, rate=Fraction(a.fps), gop=48)
    print(a.out)


if __name__ == "__main__":
    main()

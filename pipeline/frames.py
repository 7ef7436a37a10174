"""PyAV frames <-> batch arrays, keeping the source's colour matrix and range.

8-bit sources become uint8 RGB, deeper ones uint16 RGB (rgb48) so 10-bit detail survives."""
from __future__ import annotations

import av
import numpy as np
from av.video.reformatter import ColorRange

_SWS_SPACES = {1: "itu709", 5: "itu601", 6: "smpte170m", 7: "smpte240m", 9: "bt2020", 10: "bt2020", 4: "fcc"}


def rgb_format(bit_depth: int) -> str:
    return "rgb24" if bit_depth <= 8 else "rgb48le"


def sws_colorspace(colorspace: int) -> str | None:
    return _SWS_SPACES.get(int(colorspace))


def sws_range(color_range: int):
    return ColorRange.JPEG if int(color_range) == 2 else ColorRange.MPEG


def to_rgb(frame: av.VideoFrame, bit_depth: int, colorspace: int, color_range: int) -> np.ndarray:
    out = frame.reformat(format=rgb_format(bit_depth), src_colorspace=sws_colorspace(colorspace),
                         src_color_range=sws_range(color_range), dst_color_range=ColorRange.JPEG)
    return out.to_ndarray()


def from_rgb(rgb: np.ndarray, pix_fmt: str, colorspace: int, color_range: int) -> av.VideoFrame:
    fmt = "rgb24" if rgb.dtype == np.uint8 else "rgb48le"
    frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format=fmt)
    space = sws_colorspace(colorspace)
    out = frame.reformat(format=pix_fmt, src_colorspace=space, dst_colorspace=space,
                         src_color_range=ColorRange.JPEG, dst_color_range=sws_range(color_range))
    return out

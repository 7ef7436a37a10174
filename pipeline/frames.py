"""PyAV frames <-> batch arrays, keeping the source's colour matrix and range.

8-bit sources become uint8 RGB, deeper ones uint16 RGB (full 16-bit scale) so 10-bit detail
survives. The YUV<->RGB arithmetic is done here, in float32 with rounding to nearest, because
swscale's is not exact: its 4:2:0 path truncates (every pass about one code value darker), its
full-range chroma is half a code off and it scales 10-bit to 16-bit by shifting. Chroma is
upsampled linearly and downsampled with the matching filter, at the sample positions of the
format (H.264/HEVC/MPEG-2 "left" siting; centred for yuvj*), so repeated round trips do not drift.
Costs per 1280x720 frame on one core are in tests/test_colour.py's docstring."""
from __future__ import annotations

import av
import cv2
import numpy as np

# (Kr, Kb) per AVColorSpace; unspecified and unknown matrices are read as BT.601, like FFmpeg
_KR_KB = {1: (0.2126, 0.0722), 4: (0.30, 0.11), 5: (0.299, 0.114), 6: (0.299, 0.114),
          7: (0.212, 0.087), 9: (0.2627, 0.0593), 10: (0.2627, 0.0593)}
_DEFAULT_KR_KB = (0.299, 0.114)
_MATRIX_NAMES = {1: "BT.709", 4: "FCC", 5: "BT.601", 6: "BT.601", 7: "SMPTE-240M", 9: "BT.2020", 10: "BT.2020"}


def rgb_format(bit_depth: int) -> str:
    return "rgb24" if bit_depth <= 8 else "rgb48le"


def matrix_name(colorspace: int) -> str:
    return _MATRIX_NAMES.get(int(colorspace), "BT.601 (untagged)")


def kr_kb(colorspace: int) -> tuple[float, float]:
    return _KR_KB.get(int(colorspace), _DEFAULT_KR_KB)


def _levels(bits: int, full: bool) -> tuple[float, float, float, float]:
    """(luma offset, luma span, chroma centre, chroma span) in code values."""
    if full:
        m = float((1 << bits) - 1)
        return 0.0, m, float(1 << (bits - 1)), m
    s = float(1 << (bits - 8))
    return 16 * s, 219 * s, 128 * s, 224 * s


def _yuv_layout(fmt: av.VideoFormat):
    """(bits, chroma_w_div, chroma_h_div, has_alpha) for planar little-endian YUV, else None."""
    comps = fmt.components
    if (not fmt.is_planar or fmt.is_rgb or fmt.has_palette or fmt.is_big_endian or len(comps) < 3
            or [c.plane for c in comps[:3]] != [0, 1, 2]):
        return None
    bits = comps[0].bits
    if bits > 16 or any(c.bits != bits for c in comps[:3]):
        return None
    wdiv = (1 << 10) // max(1, fmt.chroma_width(1 << 10))
    hdiv = (1 << 10) // max(1, fmt.chroma_height(1 << 10))
    if wdiv not in (1, 2) or hdiv not in (1, 2):
        return None
    return bits, wdiv, hdiv, len(comps) > 3


def _full(name: str, color_range: int) -> bool:
    """Full range when tagged so, and always for the JPEG formats (yuvj*), whatever the tag says."""
    return int(color_range) == 2 or name.startswith("yuvj")


def _centred(name: str) -> bool:
    return name.startswith("yuvj")


def _plane_view(plane, dtype, width: int, height: int) -> np.ndarray:
    a = np.frombuffer(plane, np.uint8)[: plane.line_size * height].view(dtype)
    return a.reshape(height, plane.line_size // np.dtype(dtype).itemsize)[:, :width]


def _planar_name(bits: int, wdiv: int, hdiv: int) -> str:
    sub = {(2, 2): "420", (2, 1): "422", (1, 1): "444"}[(wdiv, hdiv)]
    return f"yuv{sub}p" + ("" if bits == 8 else f"{bits}le")


def _upsample(c: np.ndarray, w: int, h: int, wdiv: int, hdiv: int, cosited: bool) -> np.ndarray:
    """Linear chroma upsampling to (h, w). Chroma sample (i, j) sits at luma x = 2j when
    `cosited` (left siting), x = 2j + 0.5 otherwise, and y = 2i + 0.5 (4:2:0 is centred vertically)."""
    sx, sy = 1.0 / wdiv, 1.0 / hdiv
    ox = 0.0 if (cosited or wdiv == 1) else -0.25
    oy = -0.25 if hdiv == 2 else 0.0
    m = np.array([[sx, 0, ox], [0, sy, oy]], np.float32)   # destination pixel -> chroma sample
    return cv2.warpAffine(c, m, (w, h), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                          borderMode=cv2.BORDER_REPLICATE)


def _downsample(c: np.ndarray, wdiv: int, hdiv: int, cosited: bool) -> np.ndarray:
    """The matching filter: [1 2 1]/4 around even columns when cosited, else pair means; pair
    means vertically. Odd sizes repeat their last row/column."""
    h, w = c.shape
    if (w % 2 and wdiv == 2) or (h % 2 and hdiv == 2):
        c = cv2.copyMakeBorder(c, 0, h % 2 * (hdiv == 2), 0, w % 2 * (wdiv == 2), cv2.BORDER_REPLICATE)
    if wdiv == 2 and cosited:
        kx = np.array([0.25, 0.5, 0.25], np.float32)
        ky = np.array([0, 0.5, 0.5] if hdiv == 2 else [0, 1, 0], np.float32)
        f = cv2.sepFilter2D(c, cv2.CV_32F, kx, ky, borderType=cv2.BORDER_REPLICATE)  # correlation
        return np.ascontiguousarray(f[::hdiv, 0::2])
    return cv2.resize(c, (c.shape[1] // wdiv, c.shape[0] // hdiv), interpolation=cv2.INTER_AREA)


# for the lossless re-layouts and RGB<->RGB conversions left to swscale
_ACCURATE = (av.video.reformatter.Interpolation.BICUBIC | av.video.reformatter.Interpolation.ACCURATE_RND
             | av.video.reformatter.Interpolation.FULL_CHR_H_INT | av.video.reformatter.Interpolation.FULL_CHR_H_INP)


def has_alpha(fmt: av.VideoFormat | str) -> bool:
    fmt = av.VideoFormat(fmt) if isinstance(fmt, str) else fmt
    return fmt.has_palette or any(c.is_alpha for c in fmt.components)


def to_alpha(frame: av.VideoFrame, bit_depth: int) -> np.ndarray:
    """(H, W) alpha at the same scale as to_rgb's output (255 or 65535 = opaque)."""
    rgba = frame.reformat(format="rgba" if bit_depth <= 8 else "rgba64le").to_ndarray()
    return np.ascontiguousarray(rgba[..., 3])


def to_rgb(frame: av.VideoFrame, bit_depth: int, colorspace: int, color_range: int) -> np.ndarray:
    """(H, W, 3) RGB, uint8 for 8-bit sources, uint16 (0..65535) for deeper ones."""
    fmt = frame.format
    out_dtype, peak = (np.uint8, 255.0) if bit_depth <= 8 else (np.uint16, 65535.0)
    if fmt.is_rgb or fmt.has_palette:
        return frame.reformat(format=rgb_format(bit_depth)).to_ndarray()  # exact: no matrix involved
    layout = _yuv_layout(fmt)
    comps = fmt.components
    if layout is None and not any(c.is_chroma for c in comps):           # grey (alpha dropped)
        bits = comps[0].bits
        if fmt.name not in ("gray", f"gray{bits}le"):
            frame = frame.reformat(format="gray" if bits == 8 else f"gray{bits}le")
        y = _plane_view(frame.planes[0], np.uint8 if bits == 8 else "<u2", frame.width, frame.height)
        off, span, _, _ = _levels(bits, _full(fmt.name, color_range))
        g = np.rint(np.clip((y.astype(np.float32) - off) * (peak / span), 0, peak)).astype(out_dtype)
        return np.repeat(g[..., None], 3, axis=2)
    if layout is None:                       # semi-planar / packed / big-endian: lossless re-layout
        bits = min(16, max(8, comps[0].bits))
        wdiv = 2 if fmt.chroma_width(1024) < 1024 else 1
        hdiv = 2 if fmt.chroma_height(1024) < 1024 else 1
        if fmt.chroma_width(1024) < 512 or fmt.chroma_height(1024) < 512:  # 4:1:0 / 4:1:1
            wdiv = hdiv = 1
        name = _planar_name(bits, wdiv, hdiv)
        frame = frame.reformat(format=name, interpolation=_ACCURATE)
        fmt = frame.format
        layout = _yuv_layout(fmt)
    bits, wdiv, hdiv, _ = layout
    dt = np.uint8 if bits == 8 else "<u2"
    w, h = frame.width, frame.height
    cw, ch = -(-w // wdiv), -(-h // hdiv)
    y = _plane_view(frame.planes[0], dt, w, h).astype(np.float32)
    u = _plane_view(frame.planes[1], dt, cw, ch).astype(np.float32)
    v = _plane_view(frame.planes[2], dt, cw, ch).astype(np.float32)
    if wdiv > 1 or hdiv > 1:
        cosited = not _centred(fmt.name)
        u, v = _upsample(u, w, h, wdiv, hdiv, cosited), _upsample(v, w, h, wdiv, hdiv, cosited)
    kr, kb = kr_kb(colorspace)
    kg = 1.0 - kr - kb
    yo, ys, co, cs = _levels(bits, _full(fmt.name, color_range))
    fy, fc = peak / ys, peak / cs
    # rows: R, G, B of (Y, U, V, 1), already scaled to the output peak
    m = np.array([[fy, 0.0, 2 * (1 - kr) * fc],
                  [fy, -2 * kb * (1 - kb) / kg * fc, -2 * kr * (1 - kr) / kg * fc],
                  [fy, 2 * (1 - kb) * fc, 0.0]], np.float64)
    m = np.concatenate([m, -(m @ np.array([yo, co, co]))[:, None]], axis=1).astype(np.float32)
    out = cv2.transform(cv2.merge([y, u, v]), m)
    return cv2.add(out, 0.0, dtype=cv2.CV_8U if out_dtype == np.uint8 else cv2.CV_16U)  # round + saturate


def from_rgb(rgb: np.ndarray, pix_fmt: str, colorspace: int, color_range: int,
             alpha: np.ndarray | None = None) -> av.VideoFrame:
    """A frame in `pix_fmt` from (H, W, 3) uint8 or uint16 RGB, with the given matrix and range.
    `alpha` (H, W, same scale as rgb) fills the format's alpha plane; without it, opaque."""
    rgb = np.ascontiguousarray(rgb)
    peak = 255.0 if rgb.dtype == np.uint8 else 65535.0
    target = av.VideoFormat(pix_fmt)
    if target.is_rgb or target.has_palette:
        if alpha is not None and has_alpha(target):
            rgba = np.concatenate([rgb, alpha.astype(rgb.dtype)[..., None]], axis=2)
            src = av.VideoFrame.from_ndarray(rgba, format="rgba" if rgb.dtype == np.uint8 else "rgba64le")
        else:
            src = av.VideoFrame.from_ndarray(rgb, format="rgb24" if rgb.dtype == np.uint8 else "rgb48le")
        return src.reformat(format=pix_fmt, interpolation=_ACCURATE)
    h, w = rgb.shape[:2]
    layout = _yuv_layout(target)
    comps = target.components
    if layout is None and not any(c.is_chroma for c in comps):
        planar = None
        bits, wdiv, hdiv, layout_alpha = comps[0].bits, 1, 1, False
    elif layout is None:
        bits = min(16, max(8, comps[0].bits))
        wdiv = 2 if target.chroma_width(1024) < 1024 else 1
        hdiv = 2 if target.chroma_height(1024) < 1024 else 1
        if target.chroma_width(1024) < 512 or target.chroma_height(1024) < 512:
            wdiv = hdiv = 1
        planar, layout_alpha = _planar_name(bits, wdiv, hdiv), False
    else:
        planar = pix_fmt
        bits, wdiv, hdiv, layout_alpha = layout
    kr, kb = kr_kb(colorspace)
    kg = 1.0 - kr - kb
    yo, ys, co, cs = _levels(bits, _full(pix_fmt, color_range))
    top = float((1 << bits) - 1)
    # rows: Y, U, V code values from (R, G, B, 1) at the input peak
    m = np.array([[kr * ys, kg * ys, kb * ys, yo],
                  [-kr * cs / (2 * (1 - kb)), -kg * cs / (2 * (1 - kb)), cs / 2, co],
                  [cs / 2, -kg * cs / (2 * (1 - kr)), -kb * cs / (2 * (1 - kr)), co]], np.float64)
    m[:, :3] /= peak
    yuv = cv2.transform(rgb.astype(np.float32), m.astype(np.float32))
    cv_dt = cv2.CV_8U if bits == 8 else cv2.CV_16U
    dt = np.uint8 if bits == 8 else np.dtype("<u2")

    def quant(a):
        if bits not in (8, 16):
            a = np.minimum(a, top)
        return cv2.add(a, 0.0, dtype=cv_dt)   # round to nearest and saturate

    y, u, v = cv2.split(yuv)
    if planar is None:   # grey target
        frame = av.VideoFrame(w, h, "gray" if bits == 8 else f"gray{bits}le")
        _plane_view(frame.planes[0], dt, w, h)[:] = quant(y)
        return frame if frame.format.name == pix_fmt else frame.reformat(format=pix_fmt)
    if wdiv > 1 or hdiv > 1:
        cosited = not _centred(planar)
        u, v = _downsample(u, wdiv, hdiv, cosited), _downsample(v, wdiv, hdiv, cosited)
    frame = av.VideoFrame(w, h, planar)
    cw, ch = -(-w // wdiv), -(-h // hdiv)
    _plane_view(frame.planes[0], dt, w, h)[:] = quant(y)
    _plane_view(frame.planes[1], dt, cw, ch)[:] = quant(u)
    _plane_view(frame.planes[2], dt, cw, ch)[:] = quant(v)
    if layout_alpha:
        _plane_view(frame.planes[3], dt, w, h)[:] = (int(top) if alpha is None else
                                                     quant(alpha.astype(np.float32) * (top / peak)))
    if planar != pix_fmt:
        frame = frame.reformat(format=pix_fmt, interpolation=_ACCURATE)
    return frame

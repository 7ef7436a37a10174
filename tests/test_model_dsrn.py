"""DSRN (models/dsrn.py). No PyTorch reference exists; the conformance check is
tests/data/dsrn_tf_reference.npz, written by TensorFlow from the authors' edge graph with the TF
variable names we assume (see tests/data/make_dsrn_tf_reference.py)."""
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import models
from models import dsrn
from models.spec import UnknownCheckpoint

from conftest import SHARED

TF_REF = Path(__file__).with_name("data") / "dsrn_tf_reference.npz"


def _nchw(a):
    return torch.from_numpy(np.asarray(a)).permute(0, 3, 1, 2).contiguous()


def _tf_case(z, s):
    variables = {k.split(":", 1)[1]: z[k] for k in z.files if k.startswith(f"x{s}:") and "@" not in k}
    return variables, _nchw(z[f"x{s}:@input"]), _nchw(z[f"x{s}:@sr"]), _nchw(z[f"x{s}:@bicubic"])


def _random_sd(scale, hidden=8, seed=0):
    torch.manual_seed(seed)
    net = dsrn.DSRN(scale=scale, hidden=hidden)
    with torch.no_grad():  # non-trivial biases too
        for p in net.parameters():
            if p.dim() == 1:
                p.uniform_(-0.05, 0.05)
    return net.state_dict()


def _close(out, ref):
    atol = 1e-4 * max(1.0, ref.abs().max().item())
    err = (out - ref).abs().max().item()
    assert torch.allclose(out, ref, rtol=1e-4, atol=atol), f"max abs err {err}"
    return err


# ------------------------------------------------------------ TF reference (independent)

@pytest.mark.parametrize("scale", [2, 3, 4])
def test_tf_reference_through_converter(scale):
    z = np.load(TF_REF)
    variables, x, sr_ref, bic_ref = _tf_case(z, scale)
    net, spec = models.build(dsrn.state_dict_from_tf_checkpoint(variables))
    assert (spec.arch, spec.scale, spec.hyperparams["hidden"], spec.hyperparams["mid"]) == ("dsrn", scale, 8, 4)
    with torch.no_grad():
        sr = net(x)
    assert sr.shape == (1, 3, x.shape[2] * scale, x.shape[3] * scale)
    _close(dsrn.bicubic_tf1(x, scale), bic_ref)
    _close(sr, sr_ref)


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_bicubic_tf1_matches_tf_resize_bicubic(scale):
    z = np.load(TF_REF)
    x, ref = _nchw(z[f"bic{scale}:@input"]), _nchw(z[f"bic{scale}:@output"])
    _close(dsrn.bicubic_tf1(x, scale), ref)
    # PyTorch's half-pixel bicubic is a different image: the reason for upsampler="tf1"
    assert (F.interpolate(x, scale_factor=scale, mode="bicubic", align_corners=False) - ref).abs().max() > 0.05


def test_tf_reference_detects_wrong_unrolling():
    """The reference pins T and the step averaging: other step counts give other outputs."""
    z = np.load(TF_REF)
    variables, x, sr_ref, _ = _tf_case(z, 2)
    sd = dsrn.state_dict_from_tf_checkpoint(variables)
    for steps in (6, 8):
        net = dsrn.DSRN(scale=2, hidden=8, steps=steps)
        net.load_state_dict(sd)
        with torch.no_grad():
            assert (net(x) - sr_ref).abs().max() > 1e-2


# ------------------------------------------------------------ converter

def test_converter_roundtrip_with_lingvo_style_extras():
    sd = _random_sd(3)
    tf_vars = dsrn.tf_checkpoint_from_state_dict(sd, prefix="task/model/")
    assert tf_vars["task/model/RecurrentNet/up/kernel"].shape == (3, 3, 8, 8)           # (kh, kw, out, in)
    assert tf_vars["task/model/InputNet/in_0/kernel"].shape == (3, 3, 3, 4)            # HWIO
    extras = {}
    for name, a in tf_vars.items():
        extras[name + "/Adam"] = np.zeros_like(a)
        extras[name + "/ExponentialMovingAverage"] = np.ones_like(a)
    extras["global_step"] = np.array(5)
    # alternative placements we accept: OutputNet/out, RecurrentNet/s1s2/up, ':0' suffixes
    renamed = {}
    for name, a in tf_vars.items():
        name = name.replace("task/model/out/", "task/model/OutputNet/out/")
        name = name.replace("RecurrentNet/up/", "RecurrentNet/s1s2/up/")
        renamed[name + ":0"] = a
    x = torch.rand(1, 3, 5, 4)
    ref_net, _ = models.build(sd)
    for variables in (tf_vars, {**renamed, **extras}):
        net, spec = models.build(dsrn.state_dict_from_tf_checkpoint(variables))
        assert spec.scale == 3
        with torch.no_grad():
            assert torch.equal(net(x), ref_net(x))


def test_converter_rejects_missing_and_ambiguous():
    tf_vars = dsrn.tf_checkpoint_from_state_dict(_random_sd(2))
    missing = dict(tf_vars)
    del missing["RecurrentNet/s2s2/conv1/bias"]
    with pytest.raises(UnknownCheckpoint, match="s2s2.conv1.bias"):
        dsrn.state_dict_from_tf_checkpoint(missing)
    twice = dict(tf_vars)
    twice["OutputNet/out/kernel"] = tf_vars["out/kernel"]
    with pytest.raises(UnknownCheckpoint, match="several"):
        dsrn.state_dict_from_tf_checkpoint(twice)


# ------------------------------------------------------------ shapes, registry, detection

@pytest.mark.parametrize("scale", [2, 3, 4])
@pytest.mark.parametrize("size", [(6, 8), (5, 7), (7, 4)])
def test_shapes_every_scale_odd_sizes(scale, size):
    net, spec = models.build(_random_sd(scale))
    with torch.no_grad():
        y = net(torch.rand(1, 3, *size))
    assert y.shape == (1, 3, size[0] * scale, size[1] * scale)
    assert torch.isfinite(y).all()
    assert (spec.input_range, spec.channel_order, spec.output, spec.mean, spec.extra_inputs) == (1.0, "RGB", "image", None, ())
    assert spec.hyperparams["steps"] == 7 and spec.hyperparams["upsampler"] == "tf1"


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_published_size_detect_and_load_from_file(tmp_path, scale):
    sd = dsrn.DSRN(scale=scale).state_dict()           # hidden 128, in_0 -> 64: the released config
    path = tmp_path / f"dsrn_x{scale}.pth"
    torch.save({"state_dict": sd}, path)
    d = models.detect(path)
    assert (d.arch, d.variant, d.scale) == ("dsrn", "dsrn", scale)
    net, spec = models.load(path, scale=scale)
    assert spec.hyperparams["hidden"] == 128 and spec.hyperparams["mid"] == 64
    assert sum(p.numel() for p in net.parameters()) == sum(v.numel() for v in sd.values())
    with torch.no_grad():
        assert net(torch.rand(1, 3, 3, 5)).shape == (1, 3, 3 * scale, 5 * scale)
    with pytest.raises(UnknownCheckpoint):
        models.load(path, scale=scale + 1)


def test_reduced_and_enlarged_widths():
    for hidden, mid in ((4, 3), (12, 5), (16, 16)):
        net = dsrn.DSRN(scale=2, hidden=hidden, mid=mid)
        built, spec = models.build(net.state_dict())
        assert (spec.hyperparams["hidden"], spec.hyperparams["mid"]) == (hidden, mid)


def test_detect_rejects_foreign_layouts():
    sd = _random_sd(2)
    assert dsrn.detect(sd)
    assert not dsrn.detect({("module." + k): v for k, v in sd.items() if "up" in k})
    assert not dsrn.detect({**sd, "conv_first.weight": torch.zeros(1)})
    assert not dsrn.detect({k: v for k, v in sd.items() if k != "recurrent.up.weight"})


# ------------------------------------------------------------ bad checkpoints

def test_missing_key_is_unknown_checkpoint():
    sd = dict(_random_sd(2))
    del sd["recurrent.s2s2.conv2.weight"]
    with pytest.raises(UnknownCheckpoint):
        models.build(sd)


@pytest.mark.parametrize("key,shape", [("recurrent.s1s1.conv1.weight", (8, 8, 5, 5)),
                                       ("output_net.out.weight", (3, 7, 1, 1)),
                                       ("recurrent.up.weight", (8, 8, 2, 3)),
                                       ("input_net.in_1.bias", (9,))])
def test_wrong_shape_is_unknown_checkpoint(key, shape):
    sd = dict(_random_sd(2))
    sd[key] = torch.zeros(shape)
    with pytest.raises(UnknownCheckpoint):
        models.build(sd)


def test_extra_key_is_unknown_checkpoint():
    sd = dict(_random_sd(2))
    sd["recurrent.s1s2.conv1.weight"] = torch.zeros(8, 8, 3, 3)
    with pytest.raises(UnknownCheckpoint):
        models.build(sd)


# ------------------------------------------------------------ trace, upsampler option

@pytest.mark.parametrize("upsampler", ["tf1", "torch"])
def test_jit_trace_matches_eager(upsampler):
    net, _ = dsrn.from_state_dict(_random_sd(3), upsampler=upsampler)
    net.load_state_dict(_random_sd(3))
    net.eval()
    x = torch.rand(1, 3, 5, 6)
    with torch.no_grad():
        traced = torch.jit.trace(net, x)
        assert torch.allclose(traced(x), net(x), atol=1e-6, rtol=1e-6)


def test_torch_upsampler_is_interpolate_plus_same_residual():
    sd = _random_sd(2)
    a, b = dsrn.DSRN(2, hidden=8), dsrn.DSRN(2, hidden=8, upsampler="torch")
    a.load_state_dict(sd)
    b.load_state_dict(sd)
    x = torch.rand(1, 3, 6, 5)
    with torch.no_grad():
        base = F.interpolate(x, scale_factor=2, mode="bicubic", align_corners=False)
        assert torch.allclose(b(x), base + a.residual(x), atol=1e-6)
        assert torch.allclose(a(x), dsrn.bicubic_tf1(x, 2) + a.residual(x), atol=1e-6)


# ------------------------------------------------------------ training

def _training_pairs(scale, n=4, hr_size=24):
    hr_path = SHARED / "data" / "Set5" / "HR" / "butterfly.png"
    g = torch.Generator().manual_seed(0)
    if hr_path.exists():
        import cv2
        img = cv2.cvtColor(cv2.imread(str(hr_path)), cv2.COLOR_BGR2RGB).astype(np.float32) / 255.0
        hr = torch.from_numpy(img).permute(2, 0, 1)
        crops = []
        for _ in range(n):
            i = int(torch.randint(0, hr.shape[1] - hr_size, (1,), generator=g))
            j = int(torch.randint(0, hr.shape[2] - hr_size, (1,), generator=g))
            crops.append(hr[:, i:i + hr_size, j:j + hr_size])
        hr = torch.stack(crops)
    else:  # smooth synthetic images
        hr = F.interpolate(torch.rand(n, 3, 6, 6, generator=g), size=hr_size, mode="bicubic",
                           align_corners=False).clamp(0, 1)
    lr = F.interpolate(hr, scale_factor=1 / scale, mode="area")
    return lr, hr


def test_training_loss_decreases():
    torch.manual_seed(0)
    net = dsrn.DSRN(scale=2, hidden=8, steps=3)
    lr, hr = _training_pairs(2)
    # padding HR by 2 px is centre-cropped away, as train.py crop_center does
    loss0, logs0 = dsrn.training_loss(net, lr, F.pad(hr, (2, 2, 2, 2)))
    loss_plain, _ = dsrn.training_loss(net, lr, hr)
    assert torch.allclose(loss0, loss_plain)
    with torch.no_grad():
        assert torch.allclose(loss0, F.mse_loss(net(lr), hr), rtol=1e-4)
    assert set(logs0) >= {"loss", "psnr"}
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    for _ in range(15):
        opt.zero_grad()
        loss, _ = dsrn.training_loss(net, lr, hr)
        loss.backward()
        for p in net.parameters():   # the authors clip gradients by value to [-1, 1]
            p.grad.clamp_(-1, 1)
        opt.step()
    final, logs = dsrn.training_loss(net, lr, hr)
    assert final.item() < 0.7 * loss0.item(), (loss0.item(), final.item())
    with pytest.raises(ValueError):
        dsrn.training_loss(net, lr, hr[..., :-1, :])

import torch
import pytest

import models
from models import UnknownCheckpoint
from models.sftgan import VARIANT_PYTORCH, VARIANT_TORCH, SFTLayer, SFTNet, config_from_state_dict, detect
from tests.conftest import assert_close_to_golden, golden

GOLDEN = {"sftgan_sftnet_torch.pt": VARIANT_TORCH, "sftgan_sftnet.pt": VARIANT_PYTORCH}
VARIANTS = (VARIANT_TORCH, VARIANT_PYTORCH)
SMALL = dict(nf=8, num_blocks=2, cond_nf=4, sft_hidden=6, seg_nc=8, cond_hidden=10, cond_mid_layers=1)


def small_sd(variant, seed=0, **over):
    torch.manual_seed(seed)
    net = SFTNet(variant, **{**SMALL, **over})
    for p in net.parameters():   # non-trivial values so variants/paths differ measurably
        p.data.uniform_(-0.3, 0.3)
    return {k: v.clone() for k, v in net.state_dict().items()}


def inputs(h, w, scale=4, seg_nc=8, seed=1):
    g = torch.Generator().manual_seed(seed)
    img = torch.rand(1, 3, h, w, generator=g)
    seg = torch.softmax(torch.randn(1, seg_nc, h * scale, w * scale, generator=g), 1)
    return img, seg


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_golden(name):
    case = golden(name)
    net, spec = models.build(case["state_dict"])
    assert (spec.arch, spec.variant, spec.scale) == ("sftgan", GOLDEN[name], 4)
    assert spec.hyperparams["num_blocks"] == 16 and spec.hyperparams["nf"] == 64
    with torch.no_grad():
        out = net((case["input"]["img_lr"], case["input"]["seg_prob"]))
    assert_close_to_golden(out, case["output"], case["tolerance"])


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_golden_detect_from_file(name, tmp_path):
    p = tmp_path / "w.pth"
    torch.save(golden(name)["state_dict"], p)
    assert models.detect(p) == models.Detected("sftgan", GOLDEN[name], 4)


@pytest.mark.parametrize("variant", VARIANTS)
def test_spec(variant):
    _, spec = models.build(small_sd(variant))
    assert spec.input_range == 1.0 and spec.channel_order == "RGB" and spec.mean is None
    assert spec.extra_inputs == ("segmentation",) and spec.output == "image" and spec.scale == 4


@pytest.mark.parametrize("variant", VARIANTS)
def test_full_default_layout(variant):
    net = SFTNet(variant)
    sd = net.state_dict()
    assert len(sd) == 350
    idx = sorted(int(k.split(".")[1]) for k in sd if k.startswith("HR_branch") and k.endswith("weight"))
    assert idx == ([1, 4, 6, 8] if variant == VARIANT_TORCH else [0, 3, 6, 8])
    cfg = config_from_state_dict(sd)
    assert (cfg["variant"], cfg["num_blocks"], cfg["nf"], cfg["cond_nf"], cfg["cond_hidden"]) == (variant, 16, 64, 32, 128)
    assert models.build(sd)[1].scale == 4


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("hw", [(5, 7), (8, 8), (1, 3)])
def test_shapes_reduced(variant, hw):
    sd = small_sd(variant)
    net, spec = models.build(sd)
    assert spec.hyperparams["num_blocks"] == 2 and spec.hyperparams["nf"] == 8
    img, seg = inputs(*hw)
    with torch.no_grad():
        out = net((img, seg))
    assert out.shape == (1, 3, 4 * hw[0], 4 * hw[1])
    assert torch.isfinite(out).all()


def test_config_roundtrip_odd_widths():
    sd = small_sd(VARIANT_PYTORCH, nf=12, num_blocks=3, cond_nf=5, sft_hidden=7, seg_nc=6,
                  cond_hidden=9, cond_mid_layers=2)
    cfg = config_from_state_dict(sd)
    assert {k: cfg[k] for k in ("nf", "num_blocks", "cond_nf", "sft_hidden", "seg_nc", "cond_hidden",
                                "cond_mid_layers", "cond_kernel")} == dict(
        nf=12, num_blocks=3, cond_nf=5, sft_hidden=7, seg_nc=6, cond_hidden=9, cond_mid_layers=2, cond_kernel=4)
    net, _ = models.build(sd)
    img, seg = inputs(3, 4, seg_nc=6)
    assert net((img, seg)).shape == (1, 3, 12, 16)


def test_sft_layer_semantics():
    """Zeroed scale/shift convs: the PyTorch variant is the identity (fea * (0+1)), the paper
    variant yields zero (fea * 0), and the shift bias is added in both."""
    fea, cond = torch.randn(1, 4, 3, 3), torch.randn(1, 2, 3, 3)
    for plus_one, expect in ((True, fea), (False, torch.zeros_like(fea))):
        layer = SFTLayer(4, 2, 3, 0.1, plus_one)
        for conv in (layer.SFT_scale_conv1, layer.SFT_shift_conv1):
            conv.weight.data.zero_(), conv.bias.data.zero_()
        torch.testing.assert_close(layer(fea, cond), expect)
        layer.SFT_shift_conv1.bias.data.fill_(0.5)
        torch.testing.assert_close(layer(fea, cond), expect + 0.5)


def test_variants_compute_differently():
    """Same weights, other variant -> a different residual block output (not a silent alias)."""
    a, b = SFTNet(VARIANT_TORCH, **SMALL), SFTNet(VARIANT_PYTORCH, **SMALL)
    shared = {k: v for k, v in a.state_dict().items() if not k.startswith("HR_branch")}
    missing, unexpected = b.load_state_dict(shared, strict=False)
    assert not unexpected and all(k.startswith("HR_branch") for k in missing)
    img, seg = inputs(4, 4)
    with torch.no_grad():
        fa = a.conv0(img)
        ra = a.sft_branch[0](fa, a.CondNet(seg))
        rb = b.sft_branch[0](fa, b.CondNet(seg))
    assert (ra - rb).abs().max() > 1e-3


@pytest.mark.parametrize("variant", VARIANTS)
def test_load_and_detect_file(variant, tmp_path):
    sd = small_sd(variant)
    p = tmp_path / "sft.pth"
    torch.save({"params": sd}, p)
    assert models.detect(p) == models.Detected("sftgan", variant, 4)
    net, spec = models.load(str(p), scale=4)
    img, seg = inputs(3, 5)
    ref, _ = models.build(sd)
    with torch.no_grad():
        torch.testing.assert_close(net((img, seg)), ref((img, seg)))
    with pytest.raises(UnknownCheckpoint):
        models.load(str(p), scale=2)


@pytest.mark.parametrize("variant", VARIANTS)
def test_jit_trace(variant):
    net, _ = models.build(small_sd(variant))
    img, seg = inputs(4, 6)
    with torch.no_grad():
        traced = torch.jit.trace(net, ((img, seg),))
        img2, seg2 = inputs(4, 6, seed=5)
        torch.testing.assert_close(traced((img2, seg2)), net((img2, seg2)))


@pytest.mark.parametrize("variant", VARIANTS)
def test_bad_checkpoints(variant):
    sd = small_sd(variant)
    missing = dict(sd)
    del missing["sft_branch.1.conv1.bias"]
    with pytest.raises(UnknownCheckpoint):
        models.build(missing)
    wrong = dict(sd)
    wrong["sft_branch.0.conv0.weight"] = torch.zeros(8, 8, 5, 5)
    with pytest.raises(UnknownCheckpoint):
        models.build(wrong)
    no_final_sft = {k: v for k, v in sd.items() if not k.startswith("sft_branch.2.")}
    with pytest.raises(UnknownCheckpoint):
        models.build(no_final_sft)
    no_out = {k: v for k, v in sd.items() if not k.startswith("HR_branch.8.")}
    assert not detect(no_out)
    with pytest.raises(UnknownCheckpoint):
        models.build(no_out)


def test_pixelshuffle_width_mismatch():
    sd = small_sd(VARIANT_PYTORCH)
    sd["HR_branch.0.weight"] = torch.zeros(24, 8, 3, 3)   # 24/8 = 3: not a square factor
    sd["HR_branch.0.bias"] = torch.zeros(24)
    with pytest.raises(UnknownCheckpoint):
        models.build(sd)


def test_rejects_segmentation_layout():
    from models.outdoorsceneseg import OutdoorSceneSeg
    seg = OutdoorSceneSeg((4, 4, 8), (1, 1, 1, 1), (4, 4, 4, 4), (8, 12, 16, 20), head_mid=8)
    assert not detect(seg.state_dict())


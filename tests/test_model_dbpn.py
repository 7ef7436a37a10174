"""DBPN family: golden vectors, variant/scale detection, shapes at x2/x4/x8, tracing, bad checkpoints."""
import numpy as np
import pytest
import torch

import models
from models import dbpn
from models.dbpn import DBPN, bicubic_upscale
from models.spec import UnknownCheckpoint

from conftest import assert_close_to_golden, golden

GOLDEN = {
    "dbpn_x4_reduced.pt": ("dbpn", 4, "image", dict(base_filter=16, feat=32, stages=7, passes=0)),
    "dbpnll_x4_reduced.pt": ("dbpn-ll", 4, "image", dict(base_filter=12, feat=24, stages=10, passes=0)),
    "dbpn_res_mr64_3_x2_reduced.pt": ("dbpn-res-mr64-3", 2, "residual",
                                      dict(base_filter=16, feat=32, stages=7, passes=3)),
}
# variant name -> constructor arguments (tiny widths so that every scale runs in milliseconds)
VARIANTS = {
    "dbpn": dict(stages=7),
    "dbpn-ll": dict(stages=10),
    "dbpn-s": dict(stages=2),
    "dbpn-v2": dict(stages=12),
    "dbpn-t4": dict(stages=4),
    "dbpn-res-mr64-3": dict(stages=7, passes=3),
    "dbpn-resnet": dict(stages=7, res_blocks=2),
}


def _randomize(net, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in net.named_parameters():
            if name.endswith("act.weight"):
                p.copy_(torch.rand(p.shape, generator=g) * 0.3 + 0.05)
            elif p.dim() > 1:
                p.copy_(torch.randn(p.shape, generator=g) * 1.2 / p[0].numel() ** 0.5)
            else:
                p.copy_(torch.rand(p.shape, generator=g) * 0.1 - 0.05)
    return net.eval()


def _small(variant, scale, base_filter=4, feat=6):
    return _randomize(DBPN(scale, base_filter=base_filter, feat=feat, **VARIANTS[variant]))


@pytest.mark.shared
@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_golden(name):
    case = golden(name)
    variant, scale, output, hp = GOLDEN[name]
    net, spec = models.build(case["state_dict"])
    assert (spec.arch, spec.variant, spec.scale, spec.output) == ("dbpn", variant, scale, output)
    assert spec.input_range == 1.0 and spec.channel_order == "RGB" and spec.mean is None
    assert {k: spec.hyperparams[k] for k in hp} == hp
    # the config recorded by the generator maps onto the constructor
    c = case["config"]
    assert (c["base_filter"], c["feat"], c["scale_factor"]) == (hp["base_filter"], hp["feat"], scale)
    with torch.no_grad():
        out = net(case["input"])
    assert_close_to_golden(out, case["output"], case["tolerance"])


@pytest.mark.shared
@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_golden_module_prefixed_file(tmp_path, name):
    """The released files carry DataParallel's 'module.' prefix: they must load from a path."""
    case = golden(name)
    path = tmp_path / "DBPN_official_layout.pth"
    torch.save({"module." + k: v for k, v in case["state_dict"].items()}, path)
    variant, scale, _, _ = GOLDEN[name]
    assert models.detect(path) == models.Detected("dbpn", variant, scale)
    net, _ = models.load(path)
    with torch.no_grad():
        assert_close_to_golden(net(case["input"]), case["output"], case["tolerance"])


@pytest.mark.parametrize("variant", sorted(VARIANTS))
@pytest.mark.parametrize("scale", [2, 4, 8])
def test_variants_detect_load_shape(tmp_path, variant, scale):
    net = _small(variant, scale)
    path = tmp_path / f"{variant}_x{scale}.pth"
    torch.save({"module." + k: v for k, v in net.state_dict().items()}, path)
    assert models.detect(path) == models.Detected("dbpn", variant, scale)
    loaded, spec = models.load("dbpn", weights=path, scale=scale)
    assert spec.output == ("residual" if variant == "dbpn-res-mr64-3" else "image")
    assert spec.hyperparams["stages"] == VARIANTS[variant]["stages"]
    assert spec.hyperparams["passes"] == VARIANTS[variant].get("passes", 0)
    assert spec.hyperparams["res_blocks"] == VARIANTS[variant].get("res_blocks")
    x = torch.rand(1, 3, 5, 3)   # odd sizes
    with torch.no_grad():
        out, ref = loaded(x), net(x)
    assert out.shape == (1, 3, 5 * scale, 3 * scale)
    torch.testing.assert_close(out, ref, rtol=0, atol=0)


def test_widths_read_off_shapes():
    for kw in (dict(base_filter=5, feat=7, stages=3), dict(base_filter=3, feat=9, stages=7, passes=2),
               dict(base_filter=6, feat=4, stages=7, res_blocks=0, res_kernel=3)):
        net = DBPN(2, **kw)
        _, spec = models.build(net.state_dict())
        assert {k: spec.hyperparams[k] for k in net.hyperparams} == net.hyperparams
        assert ("residual_base" in spec.hyperparams) == bool(kw.get("passes"))
    # widths swap roles in dbpn_resnet (stem = base_filter, projections = feat)
    net = DBPN(2, base_filter=6, feat=4, stages=7, res_blocks=1)
    assert net.feat0.conv.out_channels == 6 and net.up1.up_conv1.deconv.in_channels == 4


@pytest.mark.parametrize("scale,params", [(2, 5.95e6), (4, 10.43e6), (8, 23.2e6)])
def test_published_dbpn_sizes(scale, params):
    """Full-size D-DBPN (64/256, T=7): parameter counts of the released files, and detection."""
    with torch.device("meta"):
        net = DBPN(scale)
        sd = net.state_dict()
    assert abs(sum(p.numel() for p in net.parameters()) - params) < 0.01e6
    assert dbpn.detect(sd)
    kernel = sd["up1.up_conv1.deconv.weight"].shape[-1]
    assert kernel == {2: 6, 4: 8, 8: 12}[scale]
    assert sd["output_conv.conv.weight"].shape == (3, 7 * 64, 3, 3)


def test_published_dbpnll_x8_size():
    with torch.device("meta"):
        net = DBPN(8, stages=10)
    assert abs(sum(p.numel() for p in net.parameters()) - 34.0e6) < 0.1e6
    assert net.variant == "dbpn-ll"


@pytest.mark.parametrize("variant,scale", [("dbpn", 4), ("dbpn-res-mr64-3", 2), ("dbpn-resnet", 8)])
def test_jit_trace_matches_eager(variant, scale):
    net = _small(variant, scale)
    with torch.no_grad():
        traced = torch.jit.trace(net, torch.rand(1, 3, 4, 5))
        y = torch.rand(1, 3, 6, 3)
        torch.testing.assert_close(traced(y), net(y))


def test_bf16_channels_last_stays_bf16():
    net = _small("dbpn", 2)
    x = torch.rand(1, 3, 6, 5)
    with torch.no_grad():
        ref = net(x)
        out = net.to(torch.bfloat16, memory_format=torch.channels_last)(
            x.to(torch.bfloat16, memory_format=torch.channels_last))
    assert out.dtype == torch.bfloat16
    assert ((out.float() - ref).abs().max() / ref.abs().max()).item() < 0.05


def test_bad_checkpoints():
    sd = _small("dbpn", 4).state_dict()

    missing = {k: v for k, v in sd.items() if k != "up3.conv.conv.weight"}
    with pytest.raises(UnknownCheckpoint):
        models.build(missing)

    wrong = dict(sd)
    wrong["down2.down_conv2.deconv.weight"] = torch.zeros(4, 4, 6, 6)
    with pytest.raises(UnknownCheckpoint):
        models.build(wrong)

    bad_kernel = dict(sd)   # 7x7 projections are no published scale
    bad_kernel["up1.up_conv1.deconv.weight"] = torch.zeros(4, 4, 7, 7)
    with pytest.raises(UnknownCheckpoint, match="kernel"):
        models.build(bad_kernel)

    gap = {k: v for k, v in sd.items() if not k.startswith("down3.")}
    with pytest.raises(UnknownCheckpoint, match="down"):
        models.build(gap)

    odd_out = dict(sd)   # output conv width not a multiple of base_filter
    odd_out["output_conv.conv.weight"] = torch.zeros(3, 7 * 4 + 1, 3, 3)
    with pytest.raises(UnknownCheckpoint, match="multiple"):
        models.build(odd_out)

    with pytest.raises(UnknownCheckpoint):   # asked for the wrong family by name
        models.build(sd, arch="rdn")


def test_detect_is_specific():
    from models.rdn import RDN
    assert dbpn.detect(_small("dbpn-s", 2).state_dict())
    assert not dbpn.detect(RDN(2, G0=4, D=1, C=1, G=4).state_dict())
    # the lighter EDSR-PyTorch ddbpn.py re-implementation uses another layout
    assert not dbpn.detect({"sub_mean.weight": torch.zeros(3, 3, 1, 1),
                            "initial.0.0.weight": torch.zeros(128, 3, 3, 3)})


# Pillow 13 ``Image.fromarray(_PIL_LR, "L").resize((8, 6), Image.BICUBIC)``, recorded once (the float
# bicubic path is 29 levels off on it; torch's uint8 path matched exactly, <= 2 levels allowed).
_PIL_LR = np.array([[12, 200, 37, 90], [255, 0, 128, 64], [77, 180, 220, 5]], dtype=np.uint8)
_PIL_X2 = np.array([[0, 37, 181, 194, 68, 30, 76, 98],
                    [52, 82, 145, 143, 74, 53, 77, 89],
                    [211, 178, 68, 34, 86, 101, 81, 70],
                    [231, 191, 63, 40, 131, 140, 72, 43],
                    [109, 120, 131, 160, 205, 167, 53, 10],
                    [51, 86, 163, 217, 240, 180, 44, 0]], dtype=np.uint8)


def test_bicubic_upscale():
    lr = torch.from_numpy(_PIL_LR).float()[None, None] / 255
    up = bicubic_upscale(lr, 2)
    assert up.shape == (1, 1, 6, 8) and up.dtype == torch.float32
    levels = up * 255
    torch.testing.assert_close(levels, levels.round(), rtol=0, atol=1e-3)   # on the 8-bit grid
    assert float(up.min()) >= 0 and float(up.max()) <= 1                     # clipped like PIL
    assert (levels - torch.from_numpy(_PIL_X2).float()).abs().max() <= 2
    smooth = torch.linspace(0.2, 0.8, 48).reshape(1, 1, 6, 8)
    torch.testing.assert_close(bicubic_upscale(smooth, 4), bicubic_upscale(smooth, 4, pil_exact=False),
                               rtol=0, atol=2.5 / 255)

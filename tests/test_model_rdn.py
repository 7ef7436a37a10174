"""RDN: golden vectors of both PyTorch ports, layout detection, shapes, tracing, bad checkpoints."""
import pytest
import torch

import models
from models import rdn
from models.rdn import RDN, RDNYjn870
from models.spec import UnknownCheckpoint

from conftest import assert_close_to_golden, golden

GOLDEN = {
    "rdn_edsr_x4_reduced.pt": ("rdn-edsr", 4, 255.0),
    "rdn_edsr_x3_reduced.pt": ("rdn-edsr", 3, 255.0),
    "rdn_yjn870_x2_reduced.pt": ("rdn-yjn870", 2, 1.0),
}

def _randomize(net, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            if p.dim() > 1:
                p.copy_(torch.randn(p.shape, generator=g) * 1.2 / p[0].numel() ** 0.5)
            else:
                p.copy_(torch.rand(p.shape, generator=g) * 0.1 - 0.05)
    return net.eval()


def _small(layout, scale, **kw):
    if layout == "edsr":
        cfg = dict(G0=8, D=3, C=2, G=6)
        cfg.update(kw)
        return _randomize(RDN(scale, **cfg))
    cfg = dict(num_features=8, growth_rate=8, num_blocks=3, num_layers=2)
    cfg.update(kw)
    return _randomize(RDNYjn870(scale, **cfg))


@pytest.mark.shared
@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_golden(name):
    case = golden(name)
    variant, scale, input_range = GOLDEN[name]
    net, spec = models.build(case["state_dict"])
    assert (spec.arch, spec.variant, spec.scale, spec.input_range) == ("rdn", variant, scale, input_range)
    assert spec.output == "image" and spec.channel_order == "RGB" and spec.mean is None
    with torch.no_grad():
        out = net(case["input"])
    assert_close_to_golden(out, case["output"], case["tolerance"])


@pytest.mark.shared
@pytest.mark.parametrize("name", ["rdn_edsr_x4_reduced.pt", "rdn_edsr_x3_reduced.pt"])
def test_golden_config_maps_to_constructor(name):
    """The plain constructor with the golden's EDSR config has exactly the official keys."""
    case = golden(name)
    c = case["config"]
    net = RDN(c["scale"], G0=c["G0"], D=c["D"], C=c["C"], G=c["G"], kernel_size=c["RDNkSize"],
              n_colors=c["n_colors"])
    net.load_state_dict(case["state_dict"], strict=True)
    assert list(net.state_dict()) == list(case["state_dict"])
    _, spec = models.build(case["state_dict"])
    assert spec.hyperparams == net.hyperparams


@pytest.mark.parametrize("layout,variant,input_range",
                         [("edsr", "rdn-edsr", 255.0), ("yjn", "rdn-yjn870", 1.0)])
@pytest.mark.parametrize("scale", [2, 3, 4])
def test_roundtrip_file_detect_load_shape(tmp_path, layout, variant, input_range, scale):
    net = _small(layout, scale)
    path = tmp_path / f"rdn_{layout}_x{scale}.pth"
    torch.save(net.state_dict(), path)
    assert models.detect(path) == models.Detected("rdn", variant, scale)
    for loaded, spec in (models.load(path), models.load("rdn", weights=path, scale=scale)):
        assert (spec.variant, spec.scale, spec.input_range) == (variant, scale, input_range)
        x = torch.rand(1, 3, 7, 5) * input_range   # odd sizes
        with torch.no_grad():
            out, ref = loaded(x), net(x)
        assert out.shape == (1, 3, 7 * scale, 5 * scale)
        torch.testing.assert_close(out, ref, rtol=0, atol=0)


def test_wrong_scale_request_refused(tmp_path):
    path = tmp_path / "x3.pth"
    torch.save(_small("edsr", 3).state_dict(), path)
    with pytest.raises(UnknownCheckpoint, match="x3"):
        models.load("rdn", weights=path, scale=4)


@pytest.mark.parametrize("cfg", [
    dict(G0=10, D=5, C=4, G=3, kernel_size=5, n_colors=3),           # odd widths, 5x5 RDNkSize
    dict(G0=4, D=1, C=1, G=4, kernel_size=3, n_colors=1),            # minimal, grey
    dict(G0=12, D=2, C=3, G=7, kernel_size=3, n_colors=3, rdb_kernel_size=5),
])
def test_edsr_hyperparams_read_off_shapes(cfg):
    net = RDN(3, **cfg)
    built, spec = models.build(net.state_dict())
    assert spec.hyperparams == net.hyperparams
    assert spec.channel_order == ("Y" if cfg["n_colors"] == 1 else "RGB")
    x = torch.rand(1, cfg["n_colors"], 6, 9)
    assert built(x).shape == (1, cfg["n_colors"], 18, 27)


def test_paper_config_detected_full_size():
    """The published config (G0 64, D 16, C 8, G 64) is what the default constructor builds."""
    for scale in (2, 3, 4):
        with torch.device("meta"):
            sd = RDN(scale).state_dict()
        net, spec = rdn.from_state_dict(sd)
        assert spec.scale == scale and spec.variant == "rdn-edsr"
        assert {k: spec.hyperparams[k] for k in ("G0", "D", "C", "G")} == dict(G0=64, D=16, C=8, G=64)
        assert {k: v.shape for k, v in net.state_dict().items()} == {k: v.shape for k, v in sd.items()}
    with torch.device("meta"):
        sd = RDNYjn870(4).state_dict()
    assert len(sd) == 2 * (2 + 16 * 9 + 2 + 2 + 1)  # sfe1/2, 16 x (8 layers + lff), gff, 2 upscale, output
    _, spec = rdn.from_state_dict(sd)
    assert (spec.variant, spec.scale, spec.hyperparams["D"], spec.hyperparams["C"]) == ("rdn-yjn870", 4, 16, 8)


def test_module_prefix_file_loads(tmp_path):
    net = _small("yjn", 2)
    path = tmp_path / "dp.pth"
    torch.save({"module." + k: v for k, v in net.state_dict().items()}, path)
    loaded, spec = models.load(path)
    assert spec.variant == "rdn-yjn870"
    x = torch.rand(1, 3, 5, 4)
    torch.testing.assert_close(loaded(x), net(x), rtol=0, atol=0)


@pytest.mark.parametrize("layout,scale", [("edsr", 4), ("yjn", 3)])
def test_jit_trace_matches_eager(layout, scale):
    net = _small(layout, scale)
    x = torch.rand(1, 3, 6, 5)
    with torch.no_grad():
        traced = torch.jit.trace(net, x)
        y = torch.rand(1, 3, 9, 7)  # a different size than traced with
        torch.testing.assert_close(traced(y), net(y))


def test_bf16_channels_last_stays_bf16():
    net = _small("edsr", 2)
    x = torch.rand(1, 3, 9, 8) * 255
    with torch.no_grad():
        ref = net(x)
        fast = net.to(torch.bfloat16, memory_format=torch.channels_last)
        out = fast(x.to(torch.bfloat16, memory_format=torch.channels_last))
    assert out.dtype == torch.bfloat16
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert ((out.float() - ref).abs().max() / ref.abs().max()).item() < 0.03


def _build(sd):
    return models.build(sd)


def test_bad_checkpoints():
    sd = _small("edsr", 2).state_dict()

    missing = {k: v for k, v in sd.items() if k != "RDBs.1.convs.1.conv.0.bias"}
    with pytest.raises(UnknownCheckpoint):
        _build(missing)

    wrong = dict(sd)
    wrong["SFENet2.weight"] = torch.zeros(8, 8, 5, 5)
    with pytest.raises(UnknownCheckpoint):
        _build(wrong)

    no_scale = dict(sd)   # upsampler widening by 5x5 = no PixelShuffle factor EDSR has
    no_scale["UPNet.0.weight"] = torch.zeros(6 * 25, 8, 3, 3)
    no_scale["UPNet.0.bias"] = torch.zeros(6 * 25)
    with pytest.raises(UnknownCheckpoint, match="scale"):
        _build(no_scale)

    flat = dict(sd)   # a 2-D tensor where the first conv belongs
    flat["SFENet1.weight"] = torch.zeros(8, 27)
    with pytest.raises(UnknownCheckpoint):
        _build(flat)

    gap = {k: v for k, v in sd.items() if not k.startswith("RDBs.1.")}
    with pytest.raises(UnknownCheckpoint, match="RDBs"):
        _build(gap)

    extra = dict(sd)
    extra["sub_mean.weight"] = torch.zeros(3, 3, 1, 1)
    with pytest.raises(UnknownCheckpoint):
        _build(extra)

    ysd = _small("yjn", 2).state_dict()
    ysd_bad = {k: v for k, v in ysd.items() if k != "output.weight"}
    with pytest.raises(UnknownCheckpoint):
        _build(ysd_bad)


def test_yjn870_needs_equal_widths():
    with pytest.raises(ValueError):
        RDNYjn870(2, num_features=8, growth_rate=4)
    sd = _small("yjn", 2).state_dict()
    # a checkpoint whose growth differs from G0 cannot be the yjn870 port
    sd = {k: (torch.zeros(4, *v.shape[1:]) if k == "rdbs.0.layers.0.conv.weight" else v) for k, v in sd.items()}
    with pytest.raises(UnknownCheckpoint, match="growth"):
        _build(sd)


def test_detect_is_specific():
    assert rdn.detect(_small("edsr", 2).state_dict())
    assert rdn.detect(_small("yjn", 4).state_dict())
    from models.dbpn import DBPN
    assert not rdn.detect(DBPN(2, base_filter=4, feat=8, stages=2).state_dict())
    assert not rdn.detect({"model.0.weight": torch.zeros(4, 3, 3, 3)})
    with pytest.raises(ValueError):
        RDN(8)

"""rayscale architecture: shape-read builder, detection, bicubic base, odd sizes, trace, bad checkpoints."""
import pytest
import torch
import torch.nn.functional as F

import models
from models import rayscale
from models.spec import UnknownCheckpoint


@pytest.mark.parametrize("scale", [2, 3, 4])
@pytest.mark.parametrize("c,n", [(8, 1), (12, 2)])
def test_build_from_shapes_and_odd_sizes(tmp_path, scale, c, n):
    net, _ = rayscale.build(channels=c, n_blocks=n, scale=scale)
    for p in net.parameters():
        torch.nn.init.normal_(p, std=0.05)
    sd = net.state_dict()
    net2, spec = models.build(sd)
    assert (spec.arch, spec.scale, spec.hyperparams["channels"], spec.hyperparams["n_blocks"]) == ("rayscale", scale, c, n)
    assert spec.input_range == 1.0 and spec.output == "image" and spec.mean is None
    x = torch.rand(1, 3, 7, 11)
    with torch.no_grad():
        y, y2 = net.eval()(x), net2(x)
    assert y.shape == (1, 3, 7 * scale, 11 * scale)
    assert torch.equal(y, y2)
    from safetensors.torch import save_file
    save_file(sd, str(tmp_path / "w.safetensors"))
    d = models.detect(tmp_path / "w.safetensors")
    assert (d.arch, d.scale, d.variant) == ("rayscale", scale, f"rayscale-c{c}b{n}")


def test_fresh_net_is_exactly_bicubic():
    """Zero-initialised last layer + the fixed-conv bicubic base == torch's bicubic upsampling."""
    for s in (2, 3, 4):
        net, _ = rayscale.build(channels=8, n_blocks=1, scale=s)
        x = torch.rand(2, 3, 9, 6)
        with torch.no_grad():
            ref = F.interpolate(x, scale_factor=s, mode="bicubic", align_corners=False)
            assert (net(x) - ref).abs().max() < 1e-5
            assert (net(x.to(memory_format=torch.channels_last)) - ref).abs().max() < 1e-5


def test_detect_rejects_other_layouts_and_bad_checkpoints():
    sd = rayscale.build(channels=8, n_blocks=2, scale=2)[0].state_dict()
    assert rayscale.detect(sd)
    assert not rayscale.detect({**sd, "head.weight": torch.zeros(1)})           # foreign key
    assert not rayscale.detect({"SFENet1.weight": torch.zeros(8, 3, 3, 3)})     # RDN-like
    missing = {k: v for k, v in sd.items() if k != "blocks.1.conv2.weight"}
    with pytest.raises(UnknownCheckpoint):
        models.build(missing)
    bad = dict(sd)
    bad["fuse.weight"] = torch.zeros(8, 8, 5, 5)
    with pytest.raises(UnknownCheckpoint):
        models.build(bad)
    bad = dict(sd)
    bad["to_rgb.0.weight"] = torch.zeros(5, 8, 3, 3)
    with pytest.raises(UnknownCheckpoint):
        models.build(bad)


def test_trace_matches_eager():
    net, _ = rayscale.build(channels=8, n_blocks=1, scale=4)
    for p in net.parameters():
        torch.nn.init.normal_(p, std=0.05)
    net.eval()
    x = torch.rand(1, 3, 10, 12)
    with torch.no_grad():
        tr = torch.jit.trace(net, x)
        assert torch.allclose(tr(x), net(x), atol=1e-6)

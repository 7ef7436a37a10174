import torch
import pytest

import models
from models import UnknownCheckpoint
from models.outdoorsceneseg import (BGR_MEAN, CLASS_NAMES, SEG_DEFAULT, OutdoorSceneSeg,
                                    config_from_state_dict, detect)
from tests.conftest import assert_close_to_golden, golden

SMALL = dict(stem=(4, 4, 8), stage_blocks=(1, 2, 1, 2), stage_mid=(4, 6, 6, 8),
             stage_out=(12, 16, 20, 24), head_mid=10, num_classes=5)


def small_sd(seed=0, **over):
    torch.manual_seed(seed)
    net = OutdoorSceneSeg(**{**SMALL, **over})
    for name, t in net.state_dict().items():
        if t.is_floating_point():
            t.uniform_(0.5, 1.5) if name.endswith("running_var") else t.uniform_(-0.4, 0.4)
    return dict(net.state_dict())


def test_class_names():
    assert CLASS_NAMES == ("background", "sky", "water", "grass", "mountain", "building", "plant", "animal")


def test_golden_reduced():
    case = golden("sftgan_outdoorsceneseg_reduced.pt")
    sd = case["state_dict"]
    cfg = config_from_state_dict(sd)
    for k, v in case["config"]["seg"].items():
        assert list(cfg[k]) == v if isinstance(v, list) else cfg[k] == v, k
    net, spec = models.build(sd)
    with torch.no_grad():
        pre = net.deconv(net.feature(case["input"]))
        out = net(case["input"])
    assert_close_to_golden(pre, case["extra"]["pre_softmax"], case["tolerance"])
    assert_close_to_golden(out, case["output"], case["tolerance"])


def test_golden_full_layout():
    """The default build reproduces the official 645-key manifest (built on the meta device: no
    52M-parameter allocation), and the config is read back from the manifest's shapes."""
    case = golden("sftgan_outdoorsceneseg_layout.pt")
    manifest = case["state_dict_shapes"]
    with torch.device("meta"):
        net = OutdoorSceneSeg()
    ours = net.state_dict()
    assert list(ours) == list(manifest)
    assert {k: list(v.shape) for k, v in ours.items()} == {k: list(v) for k, v in manifest.items()}
    assert {k: str(v.dtype) for k, v in ours.items()} == {k: str(v) for k, v in case["state_dict_dtypes"].items()}
    assert sum(v.numel() for v in ours.values()) == case["num_parameters_and_buffers"]
    meta_sd = {k: torch.empty(v, device="meta") for k, v in manifest.items()}
    cfg = config_from_state_dict(meta_sd)
    assert {k: list(cfg[k]) if isinstance(cfg[k], tuple) else cfg[k] for k in case["config"]["seg"]} == case["config"]["seg"]
    assert {k: cfg[k] for k in SEG_DEFAULT} == SEG_DEFAULT


def test_spec_and_config_roundtrip():
    net, spec = models.build(small_sd())
    assert (spec.arch, spec.scale, spec.channel_order, spec.input_range) == ("outdoorsceneseg", 0, "BGR", 255.0)
    assert spec.mean == BGR_MEAN == (103.939, 116.779, 123.68)
    assert spec.output == "probabilities" and spec.size_multiple == 8 and spec.extra_inputs == ()
    assert {k: spec.hyperparams[k] for k in SMALL} == SMALL


@pytest.mark.parametrize("hw", [(8, 8), (24, 40), (40, 16)])
def test_shapes(hw):
    net, _ = models.build(small_sd())
    x = torch.rand(1, 3, *hw) * 255 - torch.tensor(BGR_MEAN).view(1, 3, 1, 1)
    with torch.no_grad():
        out = net(x)
    assert out.shape == (1, 5, *hw)
    torch.testing.assert_close(out.sum(1), torch.ones(1, *hw))


def test_stage_split_without_projection_in_later_stage():
    """Stage 3 keeps stage 2's width (no projection) but changes mid width: still 4 stages."""
    cfg = dict(stem=(4, 4, 8), stage_blocks=(1, 1, 2, 1), stage_mid=(4, 6, 8, 10),
               stage_out=(12, 16, 16, 20), head_mid=6, num_classes=8)
    got = config_from_state_dict(OutdoorSceneSeg(**cfg).state_dict())
    assert {k: got[k] for k in cfg} == cfg


def test_missing_num_batches_tracked_plain_dict():
    """Old checkpoints lack BatchNorm num_batches_tracked; a plain dict (no _metadata) loads strictly."""
    sd = small_sd()
    old = {k: v for k, v in sd.items() if not k.endswith("num_batches_tracked")}
    assert len(old) < len(sd) and not hasattr(old, "_metadata")
    net, _ = models.build(old)
    ref, _ = models.build(sd)
    x = torch.randn(1, 3, 16, 16) * 50
    with torch.no_grad():
        torch.testing.assert_close(net(x), ref(x))


def test_missing_num_batches_tracked_from_file(tmp_path):
    """A file saved from state_dict() (an OrderedDict carrying version-2 _metadata) with the
    buffers deleted still loads: the checkpoint reader hands over a plain dict."""
    net = OutdoorSceneSeg(**SMALL)
    sd = net.state_dict()
    for k in [k for k in sd if k.endswith("num_batches_tracked")]:
        del sd[k]
    assert hasattr(sd, "_metadata")
    p = tmp_path / "segmentation_OST_bic.pth"
    torch.save(sd, p)
    loaded, spec = models.load(str(p))
    assert spec.arch == "outdoorsceneseg"
    assert models.detect(p) == models.Detected("outdoorsceneseg", "outdoorsceneseg", 0)


def test_jit_trace():
    net, _ = models.build(small_sd())
    x = torch.randn(1, 3, 16, 24) * 50
    with torch.no_grad():
        traced = torch.jit.trace(net, (x,))
        x2 = torch.randn(1, 3, 16, 24) * 50
        torch.testing.assert_close(traced(x2), net(x2))


def test_bad_checkpoints():
    sd = small_sd()
    for key in ("feature.11.res.3.weight", "feature.12.res.4.running_var", "deconv.weight", "feature.11.res.0.weight"):
        bad = {k: v for k, v in sd.items() if k != key}
        with pytest.raises(UnknownCheckpoint):
            models.build(bad)
    wrong = dict(sd)
    wrong["feature.11.res.3.weight"] = torch.zeros(6, 6, 5, 5)
    with pytest.raises(UnknownCheckpoint):
        models.build(wrong)
    wrong = dict(sd)
    wrong["deconv.weight"] = torch.zeros(5, 1, 8, 8)
    with pytest.raises(UnknownCheckpoint):
        models.build(wrong)
    # stage 4 with stage 3's widths cannot be told apart from stage 3 (no projection): refused
    merged = OutdoorSceneSeg(**{**SMALL, "stage_mid": (4, 6, 8, 8), "stage_out": (12, 16, 20, 20)})
    with pytest.raises(UnknownCheckpoint, match="4 bottleneck stages"):
        models.build(dict(merged.state_dict()))


def test_rejects_sftgan_layout():
    from models.sftgan import SFTNet
    assert not detect(SFTNet("sftgan", nf=8, num_blocks=1).state_dict())
    assert not detect(SFTNet("sftgan-torch", nf=8, num_blocks=1).state_dict())


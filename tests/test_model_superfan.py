"""Super-FAN generator and FAN (models/superfan.py). No official code, weights or golden vector exist;
the FAN follows the key layout of 1adrianb/face-alignment. Tests: registry round trips, shapes for every
configuration (odd sizes too), detection and cross-rejection, tracing, bad checkpoints, and that the
training entry point lowers the loss on a real face."""
import glob

import numpy as np
import pytest
import torch

import models
from models import fsrnet
from models import superfan as S
from models.spec import UnknownCheckpoint

from tests.conftest import shared_path
from tests.test_model_fsrnet import face_image, randomized

TINY_FAN = dict(stacks=2, depth=2, width=16, landmarks=5, stem=(8, 16, 12))


def gen(width=8, blocks=(1, 1, 1), **kw) -> S.SuperFANGenerator:
    return randomized(S.SuperFANGenerator(width, blocks, **kw))


def fan(**over) -> S.FAN:
    return randomized(S.FAN(**{**TINY_FAN, **over}), seed=1)


# ---------------------------------------------------------------- generator

@pytest.mark.parametrize("blocks,head,scale", [((1, 1, 1), 3, 4), ((2, 0, 1), 9, 4), ((1, 2), 3, 2),
                                               ((1, 1, 1, 1), 5, 8)])
@pytest.mark.parametrize("h,w", [(16, 16), (5, 7)])
def test_generator_shapes_after_registry_round_trip(blocks, head, scale, h, w):
    ref = gen(6, blocks, head_kernel=head)
    net, spec = models.build(ref.state_dict())
    assert type(net) is S.SuperFANGenerator
    assert (spec.arch, spec.variant, spec.scale) == ("superfan", "superfan", scale)
    assert spec.hyperparams["blocks"] == blocks and spec.hyperparams["head_kernel"] == head
    x = torch.rand(2, 3, h, w)
    with torch.no_grad():
        y = net(x)
        assert y.shape == (2, 3, scale * h, scale * w)
        assert torch.equal(y, ref(x))


def test_generator_paper_config_and_spec():
    sd = S.SuperFANGenerator().state_dict()
    assert S.superfan_hyperparams(sd) == {"width": 64, "blocks": (12, 3, 2), "head_kernel": 3}
    net, spec = models.build(sd)
    assert spec.scale == 4 and spec.input_range == 1.0 and spec.channel_order == "RGB"
    assert spec.mean is None and spec.output == "image" and spec.extra_inputs == ()
    with torch.no_grad():
        assert net(torch.rand(1, 3, 16, 16)).shape == (1, 3, 64, 64)


# ---------------------------------------------------------------- FAN

@pytest.mark.parametrize("over", [{}, {"stacks": 1, "depth": 1, "landmarks": 3}, {"stem_kernel": 3},
                                  {"pool": "avg"}])
@pytest.mark.parametrize("h,w", [(32, 32), (36, 44), (30, 26)])
def test_fan_shapes_after_registry_round_trip(over, h, w):
    ref = fan(**over)
    net, spec = models.build(ref.state_dict())
    net.pool = ref.pool                                     # pooling is not in the shapes
    for m in net.modules():
        if isinstance(m, S.FANHourGlass):
            m.pool = ref.pool
    hp = {**TINY_FAN, **over}
    assert (spec.arch, spec.variant, spec.scale) == ("fan", f"fan-{hp['stacks']}", 0)
    assert spec.output == "heatmaps"
    x = torch.rand(1, 3, h, w)
    with torch.no_grad():
        outs = net.forward_all(x)
        assert len(outs) == hp["stacks"]
        assert outs[-1].shape == (1, hp["landmarks"], h // 4, w // 4)
        assert torch.equal(net(x), ref(x))


def test_fan_pooling_matters():
    a, b = fan(), fan(pool="avg")
    b.load_state_dict(a.state_dict())
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        assert not torch.allclose(a(x), b(x))
    with pytest.raises(ValueError):
        S.FAN(**TINY_FAN, pool="median")


def test_fan_face_alignment_layout():
    """Full 2DFAN-4 configuration: key names of face-alignment's models.py and its ~24M parameters."""
    net = S.FAN()
    sd = net.state_dict()
    for k in ("conv1.bias", "conv2.downsample.0.running_mean", "conv2.downsample.2.weight", "m0.b1_4.bn1.weight",
              "m3.b2_plus_1.conv3.weight", "m3.b3_1.conv1.weight", "top_m_3.conv2.weight", "conv_last3.bias",
              "bn_end3.running_var", "l3.weight", "bl2.weight", "al2.weight"):
        assert k in sd, k
    assert "bl3.weight" not in sd and "conv4.downsample.2.weight" in sd and "m0.b1_4.downsample.0.weight" not in sd
    assert sd["conv2.conv1.weight"].shape == (64, 64, 3, 3) and sd["conv2.conv2.weight"].shape == (32, 64, 3, 3)
    assert sd["al0.weight"].shape == (256, 68, 1, 1)
    assert 23.5e6 < sum(p.numel() for p in net.parameters()) < 24.2e6
    assert S.fan_hyperparams(sd) == {"stacks": 4, "depth": 4, "width": 256, "landmarks": 68,
                                     "stem": (64, 128, 128), "stem_kernel": 7}
    # an old (pre-num_batches_tracked) state dict still loads strictly through the registry
    old = {k: v for k, v in sd.items() if not k.endswith("num_batches_tracked")}
    built, spec = models.build(old)
    assert spec.variant == "fan-4"


def test_heatmaps_to_points():
    hm = torch.zeros(1, 2, 8, 10)
    hm[0, 0, 3, 7] = 1
    hm[0, 1, 6, 1] = 2
    assert S.heatmaps_to_points(hm).tolist() == [[[7.0, 3.0], [1.0, 6.0]]]


# ---------------------------------------------------------------- detection

def test_detect_from_file(tmp_path):
    p = tmp_path / "g.pth"
    torch.save({"params": gen(4, (1, 1, 1)).state_dict()}, p)
    assert models.detect(p) == models.Detected("superfan", "superfan", 4)
    q = tmp_path / "fan.pth.tar"
    torch.save(fan().state_dict(), q)
    assert models.detect(q) == models.Detected("fan", "fan-2", 0)
    with pytest.raises(UnknownCheckpoint):
        models.load("fan", weights=p)
    with pytest.raises(UnknownCheckpoint):
        models.load(p, scale=8)


def test_cross_rejection():
    g, f, fs = gen().state_dict(), fan().state_dict(), fsrnet.FSRNet(**{
        "coarse_width": 4, "coarse_blocks": 1, "encoder_width": 4, "encoder_blocks": 1, "prior_stem": 4,
        "prior_width": 4, "prior_blocks": 1, "stacks": 1, "hourglass_depth": 1, "landmarks": 2,
        "parsing": 0, "decoder_width": 4, "decoder_blocks": 1}).state_dict()
    assert S.detect_superfan(g) and not S.detect_fan(g) and not fsrnet.detect(g)
    assert S.detect_fan(f) and not S.detect_superfan(f) and not fsrnet.detect(f)
    assert not S.detect_fan(fs) and not S.detect_superfan(fs)
    zssr_like = {f"conv{i}.weight": torch.zeros(8, 8, 3, 3) for i in range(8)}
    assert not S.detect_fan(zssr_like) and not S.detect_superfan(zssr_like)


def test_detect_rejects_golden_state_dicts():
    seen = 0
    for f in sorted(glob.glob(str(shared_path("golden")) + "/*.pt")):
        case = torch.load(f, map_location="cpu", weights_only=True)
        sd = case.get("state_dict") if isinstance(case, dict) else None
        if sd:
            seen += 1
            assert not S.detect_superfan(sd) and not S.detect_fan(sd), f
    assert seen


# ---------------------------------------------------------------- trace / bad checkpoints

def test_jit_trace_matches_eager():
    for net, x in ((gen(), torch.rand(1, 3, 7, 9)), (fan(), torch.rand(1, 3, 36, 28))):
        with torch.no_grad():
            traced = torch.jit.trace(net, x, check_trace=False)
            assert torch.allclose(traced(x), net(x), atol=1e-6)


def test_bad_checkpoints_raise_unknown_checkpoint():
    g = dict(gen().state_dict())
    f = dict(fan().state_dict())
    for sd, key in ((g, "stages.1.0.bn1.running_mean"), (f, "m1.b2_2.conv2.weight")):
        broken = dict(sd)
        del broken[key]
        with pytest.raises(UnknownCheckpoint):
            models.build(broken)
    wrong = dict(g)
    wrong["upsamplers.1.deconv.weight"] = torch.zeros(8, 8, 3, 3)
    with pytest.raises(UnknownCheckpoint):
        models.build(wrong)
    wrong = dict(f)
    wrong["l1.weight"] = torch.zeros(7, 16, 1, 1)                     # landmark count differs per stack
    with pytest.raises(UnknownCheckpoint):
        models.build(wrong)
    stray = dict(g)
    stray["stages.3.0.conv1.weight"] = g["stages.0.0.conv1.weight"]  # a stage without upsampler
    with pytest.raises(UnknownCheckpoint):
        models.build(stray)
    no_tail = {k: v for k, v in g.items() if not k.startswith("tail.")}
    with pytest.raises(UnknownCheckpoint):
        models.build(no_tail, "superfan")


# ---------------------------------------------------------------- training

def test_training_lowers_the_loss_on_a_face():
    torch.manual_seed(0)
    hr = face_image(64)
    net = S.SuperFANGenerator(8, (1, 1, 1))
    align = S.FAN(**{**TINY_FAN, "stacks": 1})
    net.train()
    align.eval()
    lr = S.make_lr(hr)
    assert lr.shape == (1, 3, 16, 16)
    with torch.no_grad():
        before, _ = S.training_loss(net, lr, hr, fan=align)
    logs = S.train(net, [{"hr": hr}], steps=10, lr=3e-3, fan=align)
    assert {"pixel", "heatmap", "loss"} <= set(logs[0])
    with torch.no_grad():
        after, _ = S.training_loss(net, lr, hr, fan=align)
    assert after < 0.7 * before, (before.item(), after.item())


def test_joint_fan_training_with_critic_and_ground_truth_heatmaps():
    torch.manual_seed(0)
    hr = face_image(32)
    net = S.SuperFANGenerator(4, (1, 1))
    align = S.FAN(**{**TINY_FAN, "stacks": 1, "depth": 1})
    critic = S.SuperFANCritic(width=4, layers=2)
    feat = torch.nn.Conv2d(3, 4, 3).requires_grad_(False)
    gt = torch.rand(1, 5, 4, 4)                                        # resized to the FAN output (8x8)
    f0 = [p.clone() for p in align.parameters()]
    logs = S.train(net, [{"hr": hr, "heatmaps": gt}], steps=2, fan=align, train_fan=True, critic=critic,
                   feature_net=feat, critic_steps=2)
    assert {"pixel", "heatmap", "perceptual", "adversarial", "critic"} <= set(logs[-1])
    assert all(np.isfinite(v) for log in logs for v in log.values())
    assert any(not torch.equal(a, b) for a, b in zip(f0, align.parameters()))   # FAN trained jointly
    assert torch.isfinite(S.critic_loss(critic, hr, net(S.make_lr(hr, 2))))

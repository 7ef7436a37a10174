"""FSRNet / FSRGAN (models/fsrnet.py). No golden vector exists (the authors released Torch7 .t7
models only), so these tests pin our own layout: round trips through the registry, shapes, detection,
tracing, bad checkpoints, the MATLAB-style pre-upsampling against the authors' own LR_8x files, and
that the training entry point lowers the paper's loss on a real face."""
import glob

import numpy as np
import pytest
import torch

import models
from models import fsrnet as M
from models.spec import UnknownCheckpoint

from tests.conftest import SHARED, shared_path

TINY = dict(coarse_width=8, coarse_blocks=1, encoder_width=8, encoder_blocks=2, prior_stem=6,
            prior_width=8, prior_blocks=1, stacks=2, hourglass_depth=2, landmarks=5, parsing=3,
            decoder_width=8, decoder_blocks=1)


def randomized(net: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Non-trivial values everywhere (BN statistics included) so loading mistakes show."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in net.state_dict().items():
            if not t.is_floating_point():
                continue
            if name.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
            elif t.dim() == 1 and name.endswith("weight"):             # BatchNorm scales
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
            else:
                fan_in = t[0].numel() if t.dim() > 1 else 1
                t.copy_(torch.randn(t.shape, generator=g) / max(fan_in, 1) ** 0.5 * (1 if t.dim() > 1 else 0.1))
    return net.eval()


def tiny(**over) -> M.FSRNet:
    return randomized(M.FSRNet(**{**TINY, **over}))


def face_image(size: int) -> torch.Tensor:
    """A real face (Helen, from the authors' repo) when ../shared is there, else a synthetic one."""
    files = sorted(glob.glob(str(SHARED / "data/faces/fsrnet_helen/HR/*.jpg")))
    if files:
        import cv2
        img = cv2.imread(files[0])[:, :, ::-1]
        img = cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA)
        return torch.from_numpy(img.copy()).permute(2, 0, 1)[None].float() / 255
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    face = ((xx / 0.7) ** 2 + (yy / 0.9) ** 2 < 1).float()
    eyes = (((xx.abs() - 0.3) ** 2 + (yy + 0.2) ** 2) < 0.01).float()
    return torch.stack([0.8 * face - 0.5 * eyes, 0.6 * face - 0.4 * eyes, 0.5 * face + 0.1 * yy])[None].clamp(0, 1)


# ---------------------------------------------------------------- pre-upsampling

@pytest.mark.parametrize("h,w", [(16, 16), (5, 7), (1, 3), (2, 9)])
def test_cubic_upsample_equals_matlab_matrix(h, w):
    x = torch.rand(2, 3, h, w, dtype=torch.float64)
    conv = M.cubic_upsample(x, 8, M._phase_taps(8).double())
    ref = M.matlab_resize(x, (8 * h, 8 * w))
    assert conv.shape == (2, 3, 8 * h, 8 * w)
    assert (conv - ref).abs().max() < 1e-12


def test_matlab_resize_agrees_with_project_imresize():
    imresize = pytest.importorskip("models.imresize").imresize
    x = torch.rand(3, 40, 24, dtype=torch.float64)
    for size in [(5, 3), (320, 192), (13, 50)]:
        assert torch.allclose(M.matlab_resize(x, size), imresize(x, output_shape=size), atol=1e-10)


def test_upsampling_reproduces_the_authors_lr8x_inputs():
    """The authors' Helen LR_8x files (16x16 faces upsampled to 128) are MATLAB bicubic down x8 + up x8:
    our in-module upsampling reproduces them up to JPEG noise, much closer than torch's bicubic."""
    import cv2
    hr_files = sorted(glob.glob(str(shared_path("data/faces/fsrnet_helen/HR")) + "/*.jpg"))[:4]
    assert hr_files
    net = M.FSRNet(**TINY)
    ours, torchs = [], []
    for f in hr_files:
        hr = torch.from_numpy(cv2.imread(f)[:, :, ::-1].copy()).permute(2, 0, 1)[None].double() / 255
        ref = torch.from_numpy(cv2.imread(f.replace("/HR/", "/LR_8x/"))[:, :, ::-1].copy()).permute(2, 0, 1)[None].double() / 255
        lr = M.matlab_resize(hr, (16, 16))
        up = net.upsample(lr.float()).double()
        alt = torch.nn.functional.interpolate(lr, scale_factor=8, mode="bicubic", align_corners=False)
        ours.append(((up - ref) ** 2).mean().sqrt().item() * 255)
        torchs.append(((alt - ref) ** 2).mean().sqrt().item() * 255)
    assert max(ours) < 2.5, ours            # measured 1.55-2.02 (JPEG q. of the stored files)
    assert np.mean(ours) < 0.8 * np.mean(torchs), (ours, torchs)


# ---------------------------------------------------------------- shapes / variants

@pytest.mark.parametrize("over", [
    {},                                              # landmarks + parsing, 2 stacks
    {"parsing": 0},                                  # landmark heatmaps only
    {"landmarks": 0, "stacks": 1},                   # parsing maps only, one stack
    {"hourglass_depth": 1, "prior_blocks": 2, "coarse_blocks": 0, "decoder_width": 5},
])
@pytest.mark.parametrize("h,w", [(16, 16), (5, 7), (3, 4)])
def test_shapes_after_registry_round_trip(over, h, w):
    ref = tiny(**over)
    net, spec = models.build(ref.state_dict())
    assert type(net) is M.FSRNet and spec.scale == 8
    x = torch.rand(1, 3, h, w)
    with torch.no_grad():
        y = net(x)
        assert y.shape == (1, 3, 8 * h, 8 * w)
        assert torch.equal(y, ref(x))                 # same computation as the module it came from
        out = net.forward_all(x)
    hp = {**TINY, **over}
    assert out["coarse"].shape == (1, 3, 8 * h, 8 * w)
    assert len(out["landmarks"]) == (hp["stacks"] if hp["landmarks"] else 0)
    assert len(out["parsing"]) == (hp["stacks"] if hp["parsing"] else 0)
    for m in out["landmarks"]:
        assert m.shape == (1, hp["landmarks"], 4 * h, 4 * w)
    for m in out["parsing"]:
        assert m.shape == (1, hp["parsing"], 4 * h, 4 * w)


def test_forward_upsampled_is_the_authors_convention():
    net = tiny()
    lr = torch.rand(1, 3, 6, 5)
    with torch.no_grad():
        assert torch.equal(net(lr), net.forward_upsampled(net.upsample(lr)))


def test_full_paper_config_is_read_back():
    net = M.FSRNet()
    sd = net.state_dict()
    hp = M.hyperparams_from_state_dict(sd)
    assert hp == dict(coarse_width=64, coarse_blocks=3, encoder_width=64, encoder_blocks=12, prior_stem=64,
                      prior_width=128, prior_blocks=3, stacks=2, hourglass_depth=4, landmarks=68, parsing=11,
                      decoder_width=64, decoder_blocks=3)
    built, spec = models.build(sd)
    assert (spec.arch, spec.variant, spec.scale) == ("fsrnet", "fsrnet", 8)
    assert spec.input_range == 1.0 and spec.channel_order == "RGB" and spec.mean is None
    assert spec.output == "image" and spec.extra_inputs == () and "input" in spec.hyperparams
    with torch.no_grad():
        assert built(torch.rand(1, 3, 16, 16)).shape == (1, 3, 128, 128)


# ---------------------------------------------------------------- detection

def test_detect_from_files_and_fsrgan_by_name(tmp_path):
    from safetensors.torch import save_file
    sd = tiny(stacks=1, landmarks=7, parsing=0).state_dict()
    p1 = tmp_path / "fsr.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in sd.items()}}, p1)
    p2 = tmp_path / "fsr.safetensors"
    save_file({k: v.contiguous() for k, v in sd.items()}, str(p2))
    for p in (p1, p2):
        assert models.detect(p) == models.Detected("fsrnet", "fsrnet", 8)
        net, spec = models.load(p)
        assert spec.variant == "fsrnet" and spec.hyperparams["landmarks"] == 7
        _, spec = models.load("fsrgan", weights=p)          # FSRGAN: same shapes, named by the user
        assert (spec.arch, spec.variant, spec.scale) == ("fsrnet", "fsrgan", 8)
    with pytest.raises(UnknownCheckpoint):
        models.load(p1, scale=4)


def test_detect_rejects_other_families():
    from models import superfan
    assert not M.detect(superfan.SuperFANGenerator(8, (1, 1)).state_dict())
    assert not M.detect(superfan.FAN(1, 1, 16, 4, (8, 16, 16)).state_dict())
    assert not M.detect({"conv0.weight": torch.zeros(64, 3, 3, 3)})
    assert not superfan.detect_superfan(tiny().state_dict())
    assert not superfan.detect_fan(tiny().state_dict())


# ---------------------------------------------------------------- trace / bad checkpoints

def test_jit_trace_matches_eager():
    net = tiny()
    x = torch.rand(1, 3, 8, 6)
    with torch.no_grad():
        traced = torch.jit.trace(net, x, check_trace=False)
        assert torch.allclose(traced(x), net(x), atol=1e-6)


def test_bad_checkpoints_raise_unknown_checkpoint():
    sd = dict(tiny().state_dict())
    missing = dict(sd)
    del missing["encoder.body.1.bn2.running_var"]
    with pytest.raises(UnknownCheckpoint):
        models.build(missing)
    wrong = dict(sd)
    wrong["decoder.up.weight"] = torch.zeros(8, 8, 3, 3)
    with pytest.raises(UnknownCheckpoint):
        models.build(wrong)
    gap = {k.replace("encoder.body.1.", "encoder.body.2."): v for k, v in sd.items()}
    with pytest.raises(UnknownCheckpoint):
        models.build(gap)
    inconsistent = dict(sd)
    inconsistent["decoder.head.weight"] = torch.zeros(8, 12, 3, 3)   # != encoder + prior widths
    with pytest.raises(UnknownCheckpoint):
        models.build(inconsistent)
    no_head = {k: v for k, v in sd.items() if "_heads." not in k and "merge_priors" not in k}
    with pytest.raises(UnknownCheckpoint):
        models.build(no_head, "fsrnet")


# ---------------------------------------------------------------- training

def _blobs(n: int, size: int) -> torch.Tensor:
    yy, xx = torch.meshgrid(torch.arange(size).float(), torch.arange(size).float(), indexing="ij")
    centres = torch.linspace(0.25, 0.75, n) * size
    return torch.stack([torch.exp(-((xx - c) ** 2 + (yy - size / 2) ** 2) / 4) for c in centres])[None]


def test_training_lowers_the_loss_on_a_face():
    torch.manual_seed(0)
    hr = face_image(32)
    net = M.FSRNet(**TINY)
    labels = (hr.mean(1) * 3).long().clamp(0, 2)                       # 3 pseudo parsing classes
    batch = {"hr": hr, "landmarks": _blobs(5, 16), "parsing": labels}
    net.train()
    with torch.no_grad():
        before, _ = M.training_loss(net, M.make_lr(hr), hr, landmarks=batch["landmarks"], parsing=labels)
    logs = M.train(net, [batch], steps=10, lr=2e-3)
    assert len(logs) == 10 and {"coarse", "sr", "prior", "loss"} <= set(logs[0])
    net.train()
    with torch.no_grad():
        after, _ = M.training_loss(net, M.make_lr(hr), hr, landmarks=batch["landmarks"], parsing=labels)
    assert after < 0.7 * before, (before.item(), after.item())


def test_fsrgan_terms_and_discriminator_step():
    torch.manual_seed(0)
    hr = face_image(32)
    net = M.FSRNet(**TINY)
    disc = M.FSRGANDiscriminator(width=4, layers=2)
    feat = torch.nn.Conv2d(3, 4, 3).requires_grad_(False)             # stand-in frozen feature net
    d0 = [p.clone() for p in disc.parameters()]
    logs = M.train(net, [{"hr": hr, "lr": M.make_lr(hr)}], steps=2, discriminator=disc, feature_net=feat)
    assert {"perceptual", "adversarial", "discriminator"} <= set(logs[-1])
    assert all(np.isfinite(v) for log in logs for v in log.values())
    assert any(not torch.equal(a, b) for a, b in zip(d0, disc.parameters()))
    up = net.upsample(M.make_lr(hr))
    assert disc(up, hr).shape[:2] == (1, 1)


def test_train_needs_reiterable_batches():
    net = M.FSRNet(**TINY)
    with pytest.raises(ValueError):
        M.train(net, [], steps=1)
    with pytest.raises(ValueError):
        M.train(net, iter([{"hr": face_image(16)}]), steps=2)     # one-shot iterator runs dry
    with pytest.raises(ValueError):                                # wrong LR size for x8
        M.training_loss(net, torch.rand(1, 3, 4, 4), torch.rand(1, 3, 16, 16))

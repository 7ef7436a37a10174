"""The SFTGAN route's operators (segmentation -> SFTGAN) on real outdoor photos (../shared/data/outdoor)
with official-layout checkpoints of random weights (reduced widths, as the model tests build them).

The oracle composes the two networks by hand, following the authors' test scripts
(`test_segmentation.py`, `test_sftgan.py`): numpy float64 MATLAB imresize x4 of the LR, BGR, x255,
minus the BGR means -> OutdoorSceneSeg -> (LR RGB [0, 1], probabilities) -> SFTGAN -> clamp, round.
"""
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from models import CheckpointError, UnknownCheckpoint
from models.imresize import imresize
from models.outdoorsceneseg import BGR_MEAN, CLASS_NAMES, OutdoorSceneSeg
from models.sftgan import VARIANT_PYTORCH, VARIANT_TORCH, SFTNet
from operators.segment import SEG_OVERLAP, Segmenter
from operators.segmap_colour import (PALETTE, SegmentationLegend, class_map, colourise, save_segmentation,
                                     with_legend)
from operators.sftgan import SFT_OVERLAP, SFTGANUpscaler, sftgan_stages
from tests.conftest import shared_path
from tests.test_model_sftgan import SMALL as SFT_SMALL
from tests.test_model_sftgan import small_sd as sft_small_sd

SEG_SMALL = dict(stem=(4, 4, 8), stage_blocks=(1, 1, 1, 1), stage_mid=(4, 6, 6, 8),
                 stage_out=(12, 16, 20, 24), head_mid=10, num_classes=8)
VARIANTS = (VARIANT_PYTORCH, VARIANT_TORCH)


def lr_photo(name: str, h: int, w: int, y: int = 0, x: int = 0) -> np.ndarray:
    """An LR frame made the authors' way: HR crop (4h x 4w) -> MATLAB bicubic x1/4 (uint8)."""
    hr = np.asarray(Image.open(shared_path("data", "outdoor", *name.split("/"))).convert("RGB"))
    return imresize(hr[y:y + 4 * h, x:x + 4 * w], 0.25)


def seg_random_sd(seed=0):
    """Official-layout OutdoorSceneSeg weights drawn like the golden files' (README: conv weights
    N(0, g/sqrt(fan_in)), BatchNorm around identity), so the maps depend on the picture."""
    g = torch.Generator().manual_seed(seed)
    net = OutdoorSceneSeg(**SEG_SMALL)
    for name, t in net.state_dict().items():
        if not t.is_floating_point():
            continue
        if t.ndim == 4:
            fan = t[0].numel() if not name.startswith("deconv") else t[0].numel() // 64
            t.normal_(0, 1.2 / fan ** 0.5, generator=g)
        elif name.endswith(("running_var", "weight")):
            t.uniform_(0.5, 1.5, generator=g)
        else:
            t.uniform_(-0.2, 0.2, generator=g)
    return dict(net.state_dict())


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    d = tmp_path_factory.mktemp("sftgan_route")
    seg_sd = seg_random_sd()
    torch.save(seg_sd, d / "segmentation_OST_bic.pth")
    paths = {"seg": str(d / "segmentation_OST_bic.pth"), "seg_sd": seg_sd}
    for v, fname in ((VARIANT_PYTORCH, "SFTGAN_noBN_OST_bg.pth"), (VARIANT_TORCH, "SFTGAN_torch.pth")):
        sd = sft_small_sd(v)
        torch.save(sd, d / fname)
        paths[v], paths[v + "_sd"] = str(d / fname), sd
    return paths


def by_hand(frames: np.ndarray, seg_sd: dict, sft_sd: dict, variant: str):
    """(probabilities float64 (N,8,4h,4w), SR uint8 (N,4h,4w,3)) from the bare networks."""
    seg_net = OutdoorSceneSeg(**SEG_SMALL)
    seg_net.load_state_dict(seg_sd)
    sft_net = SFTNet(variant, **SFT_SMALL)
    sft_net.load_state_dict(sft_sd)
    probs, srs = [], []
    with torch.no_grad():
        for f in frames:
            lr = f.astype(np.float64) / 255
            up = imresize(lr, 4)                              # numpy float64 path
            bgr = up[..., ::-1] * 255 - np.array(BGR_MEAN)
            p = seg_net.eval()(torch.from_numpy(bgr.transpose(2, 0, 1).copy()).float()[None])
            img = torch.from_numpy(lr.transpose(2, 0, 1).copy()).float()[None]
            sr = sft_net.eval()((img, p))
            probs.append(p[0].double().numpy())
            srs.append((sr[0].clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy())
    return np.stack(probs), np.stack(srs)


def run(ops, frames):
    batch = {"frames": frames, "index": np.arange(len(frames)), "pts": np.arange(len(frames)) * 1001}
    for op in ops:
        batch = op(batch)
    return batch


@pytest.mark.parametrize("variant", VARIANTS)
def test_route_equals_models_composed_by_hand(ckpts, variant):
    frames = np.stack([lr_photo("OST/OST_013.png", 16, 20, 200, 300), lr_photo("OST/OST_215.png", 16, 20, 100, 40)])
    stages = sftgan_stages(ckpts[variant], ckpts["seg"], device="cpu")
    ops = [factory() for _, factory, _, _ in stages]
    assert ops[1].variant == variant and ops[1].scale == 4
    out = run(ops, frames)
    probs, sr = by_hand(frames, ckpts["seg_sd"], ckpts[variant + "_sd"], variant)
    assert out["segmentation"].shape == (2, 8, 64, 80) and out["segmentation"].dtype == np.float32
    np.testing.assert_allclose(out["segmentation"], probs, atol=2e-4)   # float32 vs float64 resize
    assert out["frames"].shape == (2, 64, 80, 3) and out["frames"].dtype == np.uint8
    diff = np.abs(out["frames"].astype(int) - sr)
    assert diff.max() <= 1 and (diff == 0).mean() > 0.999
    np.testing.assert_array_equal(out["pts"], [0, 1001])            # other columns pass through
    assert sr.std() > 20                                            # a real picture, not a flat one
    # the two photos' maps differ: the condition is per frame
    assert np.abs(probs[0] - probs[1]).max() > 0.1


def test_segmentation_shapes_sums_and_padding(ckpts):
    """Odd sizes (4h, 4w not multiples of 8) are padded for the network and cropped back; uint16
    frames read on their own scale; maps sum to 1; compact maps are float16."""
    lr = lr_photo("SunHays80/coast_sun_adeamqputqgbqvcq.jpg", 13, 19)
    full = Segmenter(ckpts["seg"], device="cpu")
    out = full({"frames": lr[None]})
    p = out["segmentation"]
    assert p.shape == (1, 8, 52, 76) and p.dtype == np.float32
    np.testing.assert_allclose(p.sum(1), 1.0, atol=1e-5)
    assert p.min() >= 0
    # uint16 (the 8-bit values times 257) gives the same maps
    p16 = full({"frames": (lr.astype(np.uint16) * 257)[None]})["segmentation"]
    np.testing.assert_allclose(p16, p, atol=1e-5)
    compact = Segmenter(ckpts["seg"], device="cpu", compact=True)({"frames": lr[None]})["segmentation"]
    assert compact.dtype == np.float16 and compact.shape == p.shape
    np.testing.assert_allclose(compact.astype(np.float32).sum(1), 1.0, atol=2e-3)
    np.testing.assert_allclose(compact.astype(np.float32), p, atol=1e-3)
    view = lr[None, :, ::-1]                                        # a negative-stride view reads
    assert full({"frames": view})["segmentation"].shape == p.shape
    empty = full({"frames": np.zeros((0, 13, 19, 3), np.uint8)})["segmentation"]
    assert empty.shape == (0, 8, 52, 76)
    assert full.class_names == CLASS_NAMES


def test_tiled_equals_untiled(ckpts):
    """Real cuts: tiles narrower than the image even with their context. SFTGAN at its default
    overlap; the segmenter at an overlap that covers this small net's receptive field (~22 LR px;
    the default SEG_OVERLAP is for the published depth, see test_default_overlaps_cover_...).
    Odd tile/overlap values are rounded up onto the network's stride grid."""
    lr = lr_photo("SunHays80/pasture_sun_bbqhimmwjfjzmmrw.jpg", 20, 104, 200, 100)
    ref_seg = Segmenter(ckpts["seg"], device="cpu")({"frames": lr[None]})
    seg_op = Segmenter(ckpts["seg"], device="cpu", tile=15, tile_overlap=27)
    assert (seg_op.tile, seg_op.tile_overlap) == (16, 28)
    tiled_seg = seg_op({"frames": lr[None]})
    assert np.abs(tiled_seg["segmentation"] - ref_seg["segmentation"]).max() < 1 / 255
    sft = SFTGANUpscaler(ckpts[VARIANT_PYTORCH], device="cpu")
    sft_tiled = SFTGANUpscaler(ckpts[VARIANT_PYTORCH], device="cpu", tile=16)
    assert sft_tiled.tile_overlap == SFT_OVERLAP and 16 + 2 * SFT_OVERLAP < 104
    ref = sft(ref_seg)["frames"].astype(int)
    assert np.abs(sft_tiled(ref_seg)["frames"].astype(int) - ref).max() <= 1
    assert np.abs(sft_tiled(tiled_seg)["frames"].astype(int) - ref).max() <= 1   # whole route tiled


def positive(net):
    """Positive weights, BatchNorm as identity: with a positive input no ReLU is ever off, so the
    input gradient of one output pixel is non-zero over the whole receptive field."""
    for name, t in net.state_dict().items():
        if name.endswith(("running_mean", "bias")):
            t.zero_()
        elif name.endswith("running_var") or (name.endswith("weight") and t.ndim == 1):
            t.fill_(1.0)
        elif t.is_floating_point():                  # gain a little above 1 per layer
            t.uniform_(1.0, 1.5).div_(t[0].numel())
    return net.double().eval()     # float64: products of 40+ layer gains neither vanish nor overflow


def extent(fn, x, centre):
    """(left, right) reach, in input columns, of output column `centre` (input on the same grid)."""
    x = x.clone().requires_grad_()
    fn(x)[..., centre].sum().backward()
    cols = (x.grad.abs().flatten(0, -2).sum(0) > 0).nonzero().flatten()
    return cols.min().item(), cols.max().item()


def test_default_overlaps_cover_receptive_fields():
    """The default overlaps cover the published networks' receptive fields (so tiled = untiled for
    any weights): SFTGAN (LR reach, and the map's reach in LR pixels) and OutdoorSceneSeg (plus the
    2 LR px of the bicubic x4 before it) at the published depths (16 SFT blocks; 3/4/23/3 dilated
    bottlenecks); widths do not change the field, so they are cut to keep this fast."""
    torch.manual_seed(0)
    for v in VARIANTS:
        net = positive(SFTNet(v, nf=4, cond_nf=2, sft_hidden=2, cond_hidden=4))
        img, seg = torch.rand(1, 3, 2, 80).double(), torch.softmax(torch.randn(1, 8, 8, 320), 1).double()
        lo, hi = extent(lambda t: net((t, seg)), img, 4 * 40 + 1)
        assert 30 < max(40 - lo, hi - 40) <= SFT_OVERLAP, (v, lo, hi)
        lo, hi = extent(lambda t: net((img, t)), seg, 4 * 40 + 1)
        assert 30 < max(40 - lo // 4, hi // 4 - 40) <= SFT_OVERLAP, (v, lo, hi)
    net = positive(OutdoorSceneSeg(stem=(2, 2, 2), stage_mid=(2, 2, 2, 2), stage_out=(4, 6, 8, 10), head_mid=2))
    x = torch.rand(1, 3, 8, 1200).double()
    lo, hi = extent(lambda t: net.deconv(net.feature(t)), x, 600)
    radius_hr = max(600 - lo, hi - 600)
    assert radius_hr > 500                                    # the field really is that wide
    assert 4 * (SEG_OVERLAP - 2) >= radius_hr


@pytest.mark.parametrize("variant", VARIANTS)
def test_compact_fp16_maps(ckpts, variant):
    """Maps stored as float16 (unfused runs) change SFTGAN's output by at most 1 level (8-bit)."""
    lr = lr_photo("SunHays80/valley_sun_biwcvdiwnfimbtls.jpg", 24, 32, 300, 400)
    seg32 = Segmenter(ckpts["seg"], device="cpu")({"frames": lr[None]})
    seg16 = Segmenter(ckpts["seg"], device="cpu", compact=True)({"frames": lr[None]})
    sft = SFTGANUpscaler(ckpts[variant], device="cpu")
    a, b = sft(seg32)["frames"].astype(int), sft(seg16)["frames"].astype(int)
    assert np.abs(a - b).max() <= 1 and (a != b).mean() < 0.01


def test_builder_factories_pickle_and_check_files(ckpts, tmp_path):
    stages = sftgan_stages(ckpts[VARIANT_TORCH], ckpts["seg"], device="cpu", tile=64, compact=True)
    assert [(n, r, w) for n, _, r, w in stages] == [("segment", ("frames",), ("segmentation",)),
                                                    ("sftgan", ("frames", "segmentation"), ("frames",))]
    seg_op, sft_op = [pickle.loads(pickle.dumps(f))() for _, f, _, _ in stages]
    assert seg_op.compact and seg_op.tile == 64 and seg_op.up == 4 and sft_op.tile == 64
    with pytest.raises(UnknownCheckpoint, match="--weights is a outdoorsceneseg checkpoint"):
        sftgan_stages(ckpts["seg"], ckpts["seg"])
    with pytest.raises(UnknownCheckpoint, match="not OutdoorSceneSeg"):
        sftgan_stages(ckpts[VARIANT_TORCH], ckpts[VARIANT_PYTORCH])
    with pytest.raises(CheckpointError, match="no such file"):
        sftgan_stages(str(tmp_path / "nope.pth"), ckpts["seg"])


def test_sftgan_refuses_a_map_of_the_wrong_size(ckpts):
    sft = SFTGANUpscaler(ckpts[VARIANT_PYTORCH], device="cpu")
    frames = np.zeros((1, 8, 10, 3), np.uint8)
    with pytest.raises(ValueError, match="does not fit frames"):
        sft({"frames": frames, "segmentation": np.zeros((1, 8, 8, 10), np.float32)})


def test_precision_checked():
    with pytest.raises(ValueError, match="fp16 needs a GPU"):
        Segmenter("unused.pth", device="cpu", precision="fp16")


def test_colour_map_and_legend(tmp_path):
    probs = np.zeros((8, 40, 60), np.float32)
    probs[1, :20] = 1          # sky on top
    probs[3, 20:] = 1          # grass below
    probs[7, 30:, 50:] = 2     # an animal in the corner
    classes = class_map(probs)
    assert classes[0, 0] == 1 and classes[25, 0] == 3 and classes[35, 55] == 7
    col = colourise(classes)
    assert tuple(col[0, 0]) == (0, 255, 255) and tuple(col[25, 0]) == tuple(PALETTE[3]) == (183, 225, 205)
    img = with_legend(classes)
    assert img.shape[0] > 40 and img.shape[1] >= 60
    np.testing.assert_array_equal(img[:40, :60], col)                 # the map itself, unchanged
    legend = img[40:].reshape(-1, 3)
    for c in PALETTE:                                                 # a swatch per class
        assert (legend == c).all(1).any(), c
    p = save_segmentation(probs, tmp_path / "out" / "frame_000001.png")
    np.testing.assert_array_equal(np.asarray(Image.open(p).convert("RGB")), img)
    assert sorted(x.name for x in p.parent.iterdir()) == ["frame_000001.png"]
    # the operator: one legend image per frame, the same canvas whatever the shares
    other = np.zeros_like(probs)
    other[0] = 1
    out = SegmentationLegend()({"segmentation": np.stack([probs, other]), "pts": np.array([5, 6])})
    assert out["segmentation_legend"].shape == (2,) + img.shape and out["segmentation_legend"].dtype == np.uint8
    np.testing.assert_array_equal(out["segmentation_legend"][0], img)
    assert (out["segmentation_legend"][1][:40, :60] == PALETTE[0]).all()
    np.testing.assert_array_equal(out["pts"], [5, 6])

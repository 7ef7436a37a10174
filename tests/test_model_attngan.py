"""AttnGAN: G_NET / G_DCGAN, DAMSM text (RNN_ENCODER) and image (CNN_ENCODER) encoders, text helpers,
and the jobs/generate_images.py job."""
import json
import sys
import types

import numpy as np
import pytest
import torch

import models
from models import attngan
from models.spec import UnknownCheckpoint
from tests.conftest import SHARED, assert_close_to_golden, golden

REDUCED = dict(gf_dim=4, z_dim=10, condition_dim=8, r_num=2, embedding_dim=16, branch_num=3)


def _randomize(net: torch.nn.Module, seed=0):
    """Non-trivial BN statistics / weights so that layout mistakes show in the outputs."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in net.state_dict().items():
            if t.dtype.is_floating_point:
                if name.endswith("running_var"):
                    t.copy_(torch.rand(t.shape, generator=g) + 0.5)
                else:
                    t.copy_(torch.randn(t.shape, generator=g) * 0.3)
    return net.eval()


def _g_inputs(b=2, L=7, emb=16, z=10, c=8, lens=None, seed=1):
    g = torch.Generator().manual_seed(seed)
    lens = lens or [L] * b
    mask = torch.arange(L)[None, :] >= torch.tensor(lens)[:, None]
    return {"z_code": torch.randn(b, z, generator=g), "sent_emb": torch.randn(b, emb, generator=g),
            "word_embs": torch.randn(b, emb, L, generator=g), "mask": mask,
            "eps": torch.randn(b, c, generator=g)}


def _gnet(**kw):
    return _randomize(attngan.GNet(**{**REDUCED, **kw}))


def _tenc(ntoken=20, ninput=12, nhidden=16, **kw):
    return _randomize(attngan.TextEncoder(ntoken, ninput, nhidden, **kw), seed=3)


def _max_err(out, ref):
    if isinstance(ref, dict):
        return max(_max_err(out[k], ref[k]) for k in ref)
    if isinstance(ref, list):
        assert len(out) == len(ref)
        return max((_max_err(o, r) for o, r in zip(out, ref)), default=0.0)
    return (out - ref).abs().max().item()


# ---------------------------------------------------------------- golden vectors

def test_golden_gnet_reduced():
    case = golden("attngan_gnet_reduced.pt")
    net, spec = models.build(case["state_dict"])
    assert (spec.arch, spec.scale, spec.output) == ("attngan", 0, "dict")
    hp = spec.hyperparams
    assert {k: hp[k] for k in case["config"]} == case["config"]
    with torch.no_grad():
        out = net(case["input"])
    assert_close_to_golden(out, case["output"], case["tolerance"])
    assert _max_err(out, case["output"]) <= case["tolerance"]["atol"]


def test_golden_gnet_needs_the_authors_mask_layout():
    """The golden batch has two different masks: masking row b (the 'obvious' layout) is wrong."""
    case = golden("attngan_gnet_reduced.pt")
    net = attngan.GNet(**{k.lower(): v for k, v in case["config"].items()}, faithful_mask=False).eval()
    net.load_state_dict(case["state_dict"], strict=True)
    with torch.no_grad():
        out = net(case["input"])
    assert _max_err(out["fake_imgs"], case["output"]["fake_imgs"]) > 1e-2


def test_golden_rnn_encoder():
    case = golden("attngan_rnn_encoder.pt")
    net, spec = models.build(case["state_dict"])
    assert spec.arch == "attngan-text"
    assert (spec.hyperparams["ntoken"], spec.hyperparams["ninput"], spec.hyperparams["nhidden"]) == (64, 300, 256)
    with torch.no_grad():
        out = net(case["input"])
    assert_close_to_golden(out, case["output"], case["tolerance"])


def test_other_families_goldens_are_rejected():
    files = sorted(p for p in (SHARED / "golden").glob("*.pt") if not p.name.startswith("attngan"))
    if not files:
        pytest.skip("needs ../shared golden files")
    for p in files:
        sd = torch.load(p, map_location="cpu", weights_only=True).get("state_dict")
        if sd is None:
            continue
        for arch in attngan.ARCHITECTURES:
            assert not arch.detect(sd), (arch.name, p.name)


# ---------------------------------------------------------------- generator

@pytest.mark.parametrize("branch,dcgan", [(1, False), (2, False), (3, False), (3, True), (2, True)])
def test_gnet_variants_shapes_and_detection(branch, dcgan, tmp_path):
    net = _gnet(branch_num=branch, r_num=3, dcgan=dcgan)
    path = tmp_path / "g.pth"
    torch.save(net.state_dict(), path)
    det = models.detect(path)
    assert (det.arch, det.variant, det.scale) == ("attngan", "attndcgan" if dcgan else "attngan", 0)
    loaded, spec = models.load(path)
    hp = spec.hyperparams
    assert (hp["GF_DIM"], hp["Z_DIM"], hp["CONDITION_DIM"], hp["EMBEDDING_DIM"], hp["BRANCH_NUM"]) == (4, 10, 8, 16, branch)
    assert hp["R_NUM"] == (3 if branch > 1 else 0) and hp["B_DCGAN"] is dcgan
    assert hp["value_range"] == (-1.0, 1.0) and spec.input_range == 1.0
    x = _g_inputs(b=3, L=5, lens=[5, 3, 1])
    with torch.no_grad():
        out = loaded(x)
        ref = net(x)
    sizes = [64 * 2 ** i for i in range(branch)]
    assert [tuple(t.shape) for t in out["fake_imgs"]] == [(3, 3, s, s) for s in (sizes[-1:] if dcgan else sizes)]
    assert [tuple(t.shape) for t in out["att_maps"]] == [(3, 5, s, s) for s in sizes[:-1]]
    assert out["mu"].shape == out["logvar"].shape == (3, 8)
    assert all(t.abs().max() <= 1 for t in out["fake_imgs"])
    assert _max_err(out, ref) == 0


@pytest.mark.parametrize("gf,r,variant", [(32, 2, "attngan-birds"), (48, 3, "attngan-coco")])
def test_published_generator_configs_load(gf, r, variant):
    net = attngan.GNet(gf_dim=gf, z_dim=100, condition_dim=100, r_num=r, embedding_dim=256, branch_num=3)
    # the 2018 checkpoints predate num_batches_tracked; read_state_dict gives a plain dict
    sd = {k: v for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")}
    built, spec = models.build(sd)
    assert spec.variant == variant and spec.hyperparams["GF_DIM"] == gf and spec.hyperparams["R_NUM"] == r
    assert spec.hyperparams["image_size"] == 256
    n = sum(t.numel() for t in built.state_dict().values())
    assert n == sum(t.numel() for t in net.state_dict().values())


def test_attention_maps_ignore_padding_and_sum_to_one():
    net = _gnet()
    x = _g_inputs(b=1, L=6, lens=[4])
    with torch.no_grad():
        out = net(x)
    for att in out["att_maps"]:
        assert torch.all(att[:, 4:] == 0)
        assert torch.allclose(att.sum(1), torch.ones_like(att[:, 0]), atol=1e-5)


def test_mask_layout_matters_only_across_a_batch():
    faithful, fixed = _gnet(), _gnet(faithful_mask=False)
    x = _g_inputs(b=2, L=6, lens=[6, 3])
    with torch.no_grad():
        a, b = faithful(x)["fake_imgs"][-1], fixed(x)["fake_imgs"][-1]
        single = fixed({k: v[1:] for k, v in x.items()})["fake_imgs"][-1]
        single_faithful = faithful({k: v[1:] for k, v in x.items()})["fake_imgs"][-1]
    assert (a - b).abs().max() > 1e-3            # the authors' layout mixes the two masks
    assert torch.allclose(b[1:], single, atol=1e-5)  # row-b masking = the caption run alone
    assert torch.allclose(single, single_faithful, atol=1e-6)


def test_eps_from_generator_is_reproducible():
    net = _gnet()
    x = _g_inputs(b=2)
    del x["eps"]
    with torch.no_grad():
        a = net(x, generator=torch.Generator().manual_seed(5))
        b = net(x, generator=torch.Generator().manual_seed(5))
        c = net(x, generator=torch.Generator().manual_seed(6))
        eps = torch.randn(2, 8, generator=torch.Generator().manual_seed(5))
        d = net({**x, "eps": eps})
    assert _max_err(a, b) == 0 and _max_err(a, d) == 0
    assert (a["fake_imgs"][-1] - c["fake_imgs"][-1]).abs().max() > 1e-4
    assert torch.equal(a["mu"], c["mu"])  # only the sampled condition changes


def test_mask_longer_than_words_is_cut():
    net = _gnet()
    x = _g_inputs(b=1, L=5)
    longer = {**x, "mask": torch.cat([x["mask"], torch.ones(1, 3, dtype=torch.bool)], 1)}
    with torch.no_grad():
        assert _max_err(net(longer), net(x)) == 0


class _Flat(torch.nn.Module):
    """The tracer cannot type a dict holding both lists and tensors: flatten G's output."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        o = self.net(x)
        return tuple(o["fake_imgs"]) + tuple(o["att_maps"]) + (o["mu"], o["logvar"])


def test_gnet_trace_matches_eager():
    net = _Flat(_gnet())
    x = _g_inputs(b=2, L=5, lens=[5, 2])
    y = _g_inputs(b=3, L=4, lens=[4, 4, 1], seed=9)
    with torch.no_grad():
        traced = torch.jit.trace(net, (x,), check_trace=False)
        assert _max_err(list(traced(x)), list(net(x))) < 1e-6
        assert _max_err(list(traced(y)), list(net(y))) < 1e-6  # other batch / caption length


# ---------------------------------------------------------------- text encoder

def test_text_encoder_unsorted_and_implicit_lengths():
    net = _tenc()
    caps = torch.tensor([[3, 4, 0, 0], [5, 6, 7, 8], [9, 0, 0, 0]])
    lens = torch.tensor([2, 4, 1])
    with torch.no_grad():
        out = net({"captions": caps, "cap_lens": lens})
        order = torch.tensor([1, 0, 2])
        ref = net({"captions": caps[order], "cap_lens": lens[order]})
        implicit = net({"captions": caps})
    assert out["words_emb"].shape == (3, 16, 4) and out["sent_emb"].shape == (3, 16)
    assert torch.allclose(out["words_emb"][order], ref["words_emb"], atol=1e-6)
    assert torch.allclose(out["sent_emb"][order], ref["sent_emb"], atol=1e-6)
    assert _max_err(implicit, out) == 0
    assert torch.all(out["words_emb"][0, :, 2:] == 0)  # padded positions are zero
    # forward half of sent_emb = forward output at the last real word
    assert torch.allclose(out["sent_emb"][0, :8], out["words_emb"][0, :8, 1], atol=1e-6)
    # backward half = backward output at the first word
    assert torch.allclose(out["sent_emb"][0, 8:], out["words_emb"][0, 8:, 0], atol=1e-6)


@pytest.mark.parametrize("kw,variant", [({}, "rnn-encoder-lstm"), ({"rnn_type": "GRU"}, "rnn-encoder-gru"),
                                        ({"nlayers": 2}, "rnn-encoder-lstm"),
                                        ({"bidirectional": False}, "rnn-encoder-lstm")])
def test_text_encoder_variants_detected(kw, variant, tmp_path):
    net = _tenc(**kw)
    path = tmp_path / "t.pth"
    torch.save(net.state_dict(), path)
    det = models.detect(path)
    assert (det.arch, det.variant, det.scale) == ("attngan-text", variant, 0)
    loaded, spec = models.load(path)
    hp = spec.hyperparams
    assert (hp["ntoken"], hp["ninput"], hp["nhidden"]) == (20, 12, 16)
    assert hp["nlayers"] == kw.get("nlayers", 1) and hp["bidirectional"] == kw.get("bidirectional", True)
    x = {"captions": torch.tensor([[1, 2, 3], [4, 5, 0]]), "cap_lens": torch.tensor([3, 2])}
    with torch.no_grad():
        out = loaded(x)
        assert _max_err(out, net(x)) == 0
    assert out["sent_emb"].shape == (2, 16) and out["words_emb"].shape == (2, 16, 3)


def test_text_encoder_trace_matches_eager():
    net = _tenc()
    x = {"captions": torch.tensor([[1, 2, 3, 4], [5, 6, 0, 0]]), "cap_lens": torch.tensor([4, 2])}
    y = {"captions": torch.tensor([[7, 0, 0, 0], [5, 6, 2, 0]]), "cap_lens": torch.tensor([1, 3])}
    with torch.no_grad():
        traced = torch.jit.trace(net, (x,), strict=False, check_trace=False)
        assert _max_err(traced(x), net(x)) < 1e-6
        assert _max_err(traced(y), net(y)) < 1e-6


# ---------------------------------------------------------------- image encoder

def test_image_encoder_layout_detection_and_forward(tmp_path):
    net = attngan.ImageEncoder(nef=32).eval()
    sd = net.state_dict()
    # torchvision Inception-v3 has 27,161,264 parameters; minus fc (2,049,000) and AuxLogits
    # (3,326,696) leaves the 21,785,568 of the trunk CNN_ENCODER keeps.
    trunk = sum(p.numel() for k, p in net.named_parameters() if not k.startswith("emb_"))
    assert trunk == 21_785_568
    assert {"Mixed_5b.branch_pool.conv.weight", "Mixed_6e.branch7x7dbl_5.bn.running_var",
            "Mixed_7c.branch3x3dbl_3b.conv.weight", "emb_features.weight", "emb_cnn_code.bias"} <= set(sd)
    sd = {k: v for k, v in sd.items() if not k.endswith("num_batches_tracked")}  # 2018 layout
    path = tmp_path / "image_encoder200.pth"
    torch.save(sd, path)
    det = models.detect(path)
    assert (det.arch, det.variant, det.scale) == ("attngan-image", "cnn-encoder", 0)
    loaded, spec = models.load(path)
    assert spec.hyperparams["nef"] == 32 and spec.hyperparams["value_range"] == (-1.0, 1.0)
    x = torch.rand(1, 3, 37, 51) * 2 - 1
    with torch.no_grad():
        out = loaded(x)
        traced = torch.jit.trace(loaded, (x,), strict=False, check_trace=False)
        assert _max_err(traced(x), out) < 1e-5
    assert out["features"].shape == (1, 32, 17, 17) and out["cnn_code"].shape == (1, 32)


# ---------------------------------------------------------------- bad checkpoints, cross-detection

def test_bad_checkpoints_raise_unknown_checkpoint():
    g = _gnet().state_dict()
    t = _tenc().state_dict()
    missing = {k: v for k, v in g.items() if k != "h_net2.residual.0.block.3.weight"}
    with pytest.raises(UnknownCheckpoint):
        models.build(missing)
    wrong = dict(g, **{"h_net3.upsample.1.weight": torch.zeros(8, 8, 5, 5)})
    with pytest.raises(UnknownCheckpoint):
        models.build(wrong)
    with pytest.raises(UnknownCheckpoint):
        models.build(dict(g, **{"h_net1.fc.0.weight": torch.zeros(100, 18)}))
    with pytest.raises(UnknownCheckpoint):
        models.build({k: v for k, v in t.items() if k != "rnn.bias_hh_l0_reverse"})
    with pytest.raises(UnknownCheckpoint):
        models.build(dict(t, **{"rnn.weight_ih_l0": torch.zeros(64, 7)}))
    with pytest.raises(UnknownCheckpoint, match="looks like attngan-text"):
        models.build(t, "attngan")


def test_each_detect_matches_only_its_own_layout():
    layouts = {"attngan": _gnet().state_dict(), "attngan-text": _tenc().state_dict(),
               "attngan-image": attngan.ImageEncoder(8).state_dict()}
    archs = {a.name: a for a in attngan.ARCHITECTURES}
    for name, sd in layouts.items():
        assert [a for a in archs if archs[a].detect(sd)] == [name]
        assert [a.name for a in models.architectures().values() if a.detect(sd)] == [name]


# ---------------------------------------------------------------- text helpers

def test_tokenize_like_the_dataset_code():
    assert attngan.tokenize("A small-bird, with RED wings!\n") == ["a", "small", "bird", "with", "red", "wings"]
    assert attngan.tokenize("caf\u00e9 na\u00efve 2 birds") == ["caf", "nave", "2", "birds"]
    assert attngan.tokenize("\ufffd\ufffd...") == []


def test_load_vocab_formats(tmp_path):
    d = tmp_path / "v.json"
    d.write_text(json.dumps({"<end>": 0, "bird": 1, "red": 2}))
    assert attngan.load_vocab(d) == {"<end>": 0, "bird": 1, "red": 2}
    lst = tmp_path / "l.json"
    lst.write_text(json.dumps(["<end>", "bird", "red"]))
    assert attngan.load_vocab(lst) == {"<end>": 0, "bird": 1, "red": 2}
    txt = tmp_path / "v.txt"
    txt.write_text("<end>\nbird\nred\n")
    assert attngan.load_vocab(txt) == {"<end>": 0, "bird": 1, "red": 2}
    for bad in ({"bird": 0}, {"bird": 1, "red": 1}, {"bird": "1"}, [], "x"):
        d.write_text(json.dumps(bad))
        with pytest.raises(ValueError):
            attngan.load_vocab(d)
    d.write_text("{oops")
    with pytest.raises(ValueError, match="JSON"):
        attngan.load_vocab(d)
    caps, lens = attngan.encode_captions([["bird"], ["red", "bird", "red"]], {"bird": 1, "red": 2})
    assert caps.tolist() == [[1, 0, 0], [2, 1, 2]] and lens.tolist() == [1, 3]


# ---------------------------------------------------------------- the job

VOCAB = ["<end>", "a", "small", "bird", "with", "red", "wings", "yellow", "belly", "this", "is", "blue"]


@pytest.fixture
def job_files(tmp_path):
    g = tmp_path / "netG.pth"
    t = tmp_path / "text_encoder.pth"
    torch.save(_gnet().state_dict(), g)
    torch.save(_tenc(ntoken=len(VOCAB)).state_dict(), t)
    v = tmp_path / "vocab.json"
    v.write_text(json.dumps({w: i for i, w in enumerate(VOCAB)}))
    c = tmp_path / "captions.txt"
    c.write_text("A small bird with red wings.\n\nThis bird is blue, with a yellow belly\nred bird\n")
    return {"captions": c, "generator": g, "text": t, "vocab": v, "tmp": tmp_path}


def _run_job(f, out, *extra):
    from jobs import generate_images
    return generate_images.main([str(f["captions"]), str(out), "--generator", str(f["generator"]),
                                 "--text-encoder", str(f["text"]), "--vocab", str(f["vocab"]), *extra])


def _read(paths):
    import cv2
    return [cv2.imread(str(p), cv2.IMREAD_UNCHANGED) for p in paths]


def test_job_writes_deterministic_pngs(job_files):
    tmp = job_files["tmp"]
    assert _run_job(job_files, tmp / "a", "--seed", "7") == 0
    assert _run_job(job_files, tmp / "b", "--seed", "7") == 0
    assert _run_job(job_files, tmp / "c", "--seed", "8") == 0
    names = sorted(p.name for p in (tmp / "a").iterdir())
    assert names == ["0001.png", "0003.png", "0004.png"]  # line numbers; blank line 2 skipped
    a, b, c = (_read(sorted((tmp / d).iterdir())) for d in "abc")
    assert all(img.shape == (256, 256, 3) and img.dtype == np.uint8 for img in a)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert all(not np.array_equal(x, y) for x, y in zip(a, c))
    assert not np.array_equal(a[0], a[1])


def test_job_png_matches_the_generator_output(job_files):
    """The PNG is RGB (written BGR by cv2) of fake_imgs[-1] mapped [-1, 1] -> [0, 255]."""
    tmp = job_files["tmp"]
    job_files["captions"].write_text("red bird\n")
    assert _run_job(job_files, tmp / "o", "--seed", "3") == 0
    gen = torch.Generator().manual_seed(3)
    z, eps = torch.randn(1, 10, generator=gen), torch.randn(1, 8, generator=gen)
    gnet, _ = models.load(job_files["generator"])
    tenc, _ = models.load(job_files["text"])
    with torch.no_grad():
        txt = tenc({"captions": torch.tensor([[5, 3]])})
        img = gnet({"z_code": z, "sent_emb": txt["sent_emb"], "word_embs": txt["words_emb"], "eps": eps,
                    "mask": torch.zeros(1, 2, dtype=torch.bool)})["fake_imgs"][-1][0]
    ref = ((img + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()
    png = _read([tmp / "o" / "0001.png"])[0][:, :, ::-1]
    assert np.array_equal(png, ref)


def test_job_upscale_hands_batch_to_upscaler(job_files, monkeypatch):
    calls = {}

    class FakeUpscaler:
        def __init__(self, model, weights=None, scale=None, device="cpu", precision="fp32", tile=0):
            calls["init"] = (model, weights, scale, device)

        def __call__(self, batch):
            calls["batch"] = {k: (v.dtype, v.shape, v.tolist() if k == "index" else None) for k, v in batch.items()}
            return dict(batch, frames=batch["frames"].repeat(2, axis=1).repeat(2, axis=2))

    mod = types.ModuleType("operators.upscale")
    mod.Upscaler = FakeUpscaler
    monkeypatch.setitem(sys.modules, "operators.upscale", mod)
    out = job_files["tmp"] / "up"
    assert _run_job(job_files, out, "--upscale", "rdn", "--weights", "w.pth", "--scale", "2") == 0
    assert calls["init"][0] == "rdn" and str(calls["init"][1]) == "w.pth" and calls["init"][2:] == (2, "cpu")
    assert calls["batch"]["frames"][:2] == (np.uint8, (3, 256, 256, 3))
    assert calls["batch"]["index"][0] == np.int64 and calls["batch"]["index"][2] == [1, 3, 4]
    assert all(img.shape == (512, 512, 3) for img in _read(sorted(out.iterdir())))


@pytest.mark.parametrize("case,expect", [
    ("missing", "captions file not found"), ("empty", "no captions"),
    ("unknown", "words not in the vocabulary: dragon, purple"), ("bad_vocab", "bad vocabulary"),
    ("swapped", "looks like attngan-text"), ("small_vocab", "knows 12 words"),
])
def test_job_bad_inputs_exit_2_with_one_line(job_files, capsys, case, expect):
    f = dict(job_files)
    if case == "missing":
        f["captions"] = f["tmp"] / "nope.txt"
    elif case == "empty":
        f["captions"].write_text("\n  \n")
    elif case == "unknown":
        f["captions"].write_text("red bird\na purple dragon\n")
    elif case == "bad_vocab":
        f["vocab"].write_text("[1, 2]")
    elif case == "swapped":
        f["generator"] = f["text"]
    elif case == "small_vocab":
        f["vocab"].write_text(json.dumps({**{w: i for i, w in enumerate(VOCAB)}, "huge": 40}))
        f["captions"].write_text("red bird\n")
    assert _run_job(f, f["tmp"] / "out") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and expect in err
    culprit = {"missing": f["captions"], "empty": f["captions"], "unknown": f["captions"],
               "bad_vocab": f["vocab"], "swapped": f["generator"], "small_vocab": f["vocab"]}[case]
    assert str(culprit) in err
    if case == "unknown":
        assert ":2:" in err


def test_job_skip_unknown_drops_words(job_files):
    job_files["captions"].write_text("red bird\nred purple bird\n")
    out = job_files["tmp"] / "s"
    assert _run_job(job_files, out, "--skip-unknown", "--seed", "1") == 0
    assert len(list(out.iterdir())) == 2


def test_job_help_documents_vocab_export(capsys):
    from jobs import generate_images
    with pytest.raises(SystemExit) as e:
        generate_images.main(["--help"])
    assert e.value.code == 0
    assert "json.dump(x[3]" in capsys.readouterr().out


def test_job_upscale_with_the_real_operator(job_files):
    pytest.importorskip("operators.upscale")
    job_files["captions"].write_text("red bird\n")
    out = job_files["tmp"] / "bicubic"
    assert _run_job(job_files, out, "--upscale", "bicubic", "--scale", "2", "--seed", "4") == 0
    assert _run_job(job_files, job_files["tmp"] / "plain", "--seed", "4") == 0
    import cv2
    up, = _read([out / "0001.png"])
    plain, = _read([job_files["tmp"] / "plain" / "0001.png"])
    assert up.shape == (512, 512, 3)
    ref = cv2.resize(plain, None, fx=2, fy=2, interpolation=cv2.INTER_CUBIC)
    assert np.abs(up.astype(int) - ref.astype(int)).max() <= 1

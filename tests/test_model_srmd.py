"""SRMD / SRMDNF: KAIR key layout, golden vectors, degradation helpers, MatConvNet converter."""
import ast
import hashlib
import math

import numpy as np
import pytest
import scipy.io
import torch

import models
from models import srmd
from models.checkpoint import CheckpointError, read_state_dict
from models.spec import UnknownCheckpoint

from conftest import assert_close_to_golden, golden, shared_path

PCA_NPY_SHA256 = "7b6a79144f4cee75f0b17644bebadded48432e106bb1474d22204598623c6e4c"

def _kernel_from_desc(desc):
    d = ast.literal_eval(desc)                     # e.g. "('aniso', theta, l1, l2)"
    if d[0] == "fspecial":
        return srmd.gaussian_kernel(15, sigma=d[1])
    return srmd.gaussian_kernel(15, theta=d[1], l1=d[2], l2=d[3])


def _random_sd(variant="srmd", scale=2, nc=8, nb=4, seed=0):
    torch.manual_seed(seed)
    net = srmd.SRMD(in_nc=19 if variant == "srmd" else 18, nc=nc, nb=nb, scale=scale)
    for p in net.parameters():                     # non-trivial biases so ordering errors show
        torch.nn.init.uniform_(p, -0.3, 0.3)
    return net.state_dict()


# ----------------------------------------------------------------------------- golden
@pytest.mark.parametrize("name,variant,scale", [("srmd_x4.pt", "srmd", 4), ("srmdnf_x2_reduced.pt", "srmdnf", 2)])
def test_golden_forward_and_input(name, variant, scale):
    case = golden(name)
    net, spec = models.build(case["state_dict"])
    assert (spec.arch, spec.variant, spec.scale) == ("srmd", variant, scale)
    assert spec.extra_inputs == ("degradation",) and spec.input_range == 1.0 and spec.channel_order == "RGB"
    assert spec.hyperparams["nc"] == case["config"]["nc"] and spec.hyperparams["nb"] == case["config"]["nb"]
    with torch.no_grad():
        out = net(case["input"])
    assert_close_to_golden(out, case["output"], case["tolerance"])
    # the input the reference script built, rebuilt from the kernel description and the noise level
    e = case["extra"]
    kernel = _kernel_from_desc(e["kernel_desc"])
    np.testing.assert_allclose(kernel, e["kernel"].numpy(), rtol=0, atol=1e-12)
    nf = e["noise_level_255"] is None
    x = srmd.srmd_input(e["lr_rgb"], kernel, e["noise_level_255"], nf=nf)
    assert x.shape == case["input"].shape
    assert torch.allclose(x, case["input"], rtol=0, atol=1e-6)
    vec = srmd.degradation_vector(kernel, e["noise_level_255"], with_noise=not nf)
    assert torch.allclose(vec, e["degradation_vector"], rtol=0, atol=1e-6)


def test_golden_pca_matrix_and_vectors():
    case = golden("srmd_degradation_map.pt")
    p = srmd.load_pca()
    assert np.array_equal(p, case["pca_matrix"].numpy())
    for k, desc, expected in zip(case["kernels"], case["kernel_descs"], case["expected_pca_vectors"]):
        got = srmd.degradation_vector(k, with_noise=False, dtype=torch.float64)   # golden kernels are float64
        assert (got - expected).abs().max().item() < 1e-6, desc
        regenerated = _kernel_from_desc(desc)
        np.testing.assert_allclose(regenerated, k.numpy(), rtol=0, atol=1e-12, err_msg=desc)
        got2 = srmd.degradation_vector(regenerated, with_noise=False)
        assert (got2.double() - expected).abs().max().item() < 1e-6, desc
    # with noise: sigma/255 appended as the 16th value
    v = srmd.degradation_vector(case["kernels"][0], 25.0)
    assert v.shape == (16,) and abs(v[15].item() - 25.0 / 255.0) < 1e-7


def test_pca_asset_equals_kair_mat():
    mat = scipy.io.loadmat(str(shared_path("data", "KAIR_kernels", "srmd_pca_matlab.mat")))["P"]
    assert np.array_equal(srmd.load_pca(), mat.astype(np.float32))


def test_pca_asset_shipped():
    p = srmd.load_pca()
    assert p.shape == (15, 225) and p.dtype == np.float32 and not p.flags.writeable
    assert hashlib.sha256(srmd._PCA_FILE.read_bytes()).hexdigest() == PCA_NPY_SHA256
    assert PCA_NPY_SHA256 in (srmd._PCA_FILE.parent / "README.md").read_text()


def test_gaussian_kernels():
    iso = srmd.gaussian_kernel(15, sigma=1.6)
    assert iso.shape == (15, 15) and abs(iso.sum() - 1) < 1e-12 and np.allclose(iso, iso.T)
    # the isotropic case of the anisotropic formula (l = sigma^2) is the fspecial kernel
    np.testing.assert_allclose(srmd.gaussian_kernel(15, l1=1.6 ** 2, l2=1.6 ** 2), iso, atol=1e-15)
    # theta = 0, l1 > l2: wider along x (columns) than along y (rows); theta = pi/2 transposes it
    k0 = srmd.gaussian_kernel(15, theta=0.0, l1=6.0, l2=1.0)
    r = np.arange(15) - 7
    var_x, var_y = (k0.sum(0) * r ** 2).sum(), (k0.sum(1) * r ** 2).sum()
    assert var_x > 4 * var_y
    np.testing.assert_allclose(srmd.gaussian_kernel(15, theta=math.pi / 2, l1=6.0, l2=1.0), k0.T, atol=1e-12)
    # theta = pi/4: mass along the main diagonal (x = y), not the anti-diagonal
    k45 = srmd.gaussian_kernel(15, theta=math.pi / 4, l1=6.0, l2=0.5)
    assert k45[10, 10] > 50 * k45[10, 4]
    with pytest.raises(ValueError):
        srmd.gaussian_kernel(15)
    with pytest.raises(ValueError):
        srmd.gaussian_kernel(15, sigma=1.0, l1=2.0)


def test_bicubic_kernel_is_near_delta():
    k = srmd.bicubic_kernel()
    assert k.shape == (15, 15) and k[7, 7] > 0.9999 and abs(k.sum() - 1) < 1e-12
    delta = np.zeros((15, 15))
    delta[7, 7] = 1
    assert (srmd.degradation_vector(k, 0.0) - srmd.degradation_vector(delta, 0.0)).abs().max() < 1e-4


def test_degradation_vector_is_column_major():
    rng = np.random.default_rng(0)
    k = rng.random((15, 15))
    k /= k.sum()
    p = srmd.load_pca().astype(np.float64)
    v = srmd.degradation_vector(k, 10.0, dtype=torch.float64).numpy()
    np.testing.assert_allclose(v[:15], p @ k.T.reshape(-1), atol=1e-12)
    assert np.abs(v[:15] - p @ k.reshape(-1)).max() > 1e-3          # row-major would differ
    assert v[15] == pytest.approx(10.0 / 255.0)
    assert srmd.degradation_vector(k, with_noise=False).shape == (15,)
    # batched kernels and per-kernel noise levels
    kb = np.stack([k, k.T])
    vb = srmd.degradation_vector(kb, [5.0, 50.0])
    assert vb.shape == (2, 16)
    assert torch.allclose(vb[0], srmd.degradation_vector(k, 5.0))
    assert torch.allclose(vb[1], srmd.degradation_vector(k.T, 50.0))
    # a custom P, as a tensor
    pt = torch.from_numpy(p[:4])
    assert srmd.degradation_vector(k, 0.0, pca=pt).shape == (5,)
    with pytest.raises(ValueError):
        srmd.degradation_vector(np.ones((13, 13)) / 169, 0.0)
    with pytest.raises(ValueError):
        srmd.degradation_vector(k, None)


def test_degradation_map_and_input():
    v = torch.arange(16, dtype=torch.float32)
    m = srmd.degradation_map(v, 5, 7)
    assert m.shape == (1, 16, 5, 7) and torch.equal(m[0, :, 3, 6], v) and torch.equal(m[0, 4], torch.full((5, 7), 4.0))
    assert srmd.degradation_map(torch.zeros(2, 15), 3, 3).shape == (2, 15, 3, 3)
    lr = torch.rand(2, 3, 9, 11, dtype=torch.float64)
    k = srmd.gaussian_kernel(15, sigma=1.2)
    x = srmd.srmd_input(lr, k, 15.0)
    assert x.shape == (2, 19, 9, 11) and x.dtype == torch.float64
    assert torch.equal(x[:, :3], lr)
    vec = srmd.degradation_vector(k, 15.0, dtype=torch.float64)
    assert torch.allclose(x[1, 3:, 8, 10], vec) and torch.allclose(x[0, 3:, 0, 0], vec)
    xnf = srmd.srmd_input(lr.float(), k, nf=True)
    assert xnf.shape == (2, 18, 9, 11) and torch.allclose(xnf[0, 3:, 2, 2], vec[:15].float())
    with pytest.raises(ValueError):
        srmd.srmd_input(torch.rand(3, 9, 9), k, 0.0)
    with pytest.raises(ValueError):
        srmd.srmd_input(torch.rand(3, 3, 9, 9), np.stack([k, k]), 0.0)


def test_wrapper_module_matches_explicit_input():
    net, _ = models.build(_random_sd("srmd", scale=3))
    k = srmd.gaussian_kernel(15, theta=0.3, l1=4.0, l2=1.5)
    lr = torch.rand(2, 3, 7, 9)
    wrapped = srmd.SRMDWithDegradation(net, srmd.degradation_vector(k, 20.0))
    with torch.no_grad():
        a, b = wrapped(lr), net(srmd.srmd_input(lr, k, 20.0))
    assert a.shape == (2, 3, 21, 27) and torch.allclose(a, b, atol=1e-6)
    with pytest.raises(ValueError):
        srmd.SRMDWithDegradation(net, srmd.degradation_vector(k, with_noise=False))


# ----------------------------------------------------------------------------- layout / registry
def test_full_size_key_layout():
    for variant, in_nc in (("srmd", 19), ("srmdnf", 18)):
        for s in (2, 3, 4):
            sd = srmd.SRMD(in_nc=in_nc, nc=128, nb=12, scale=s).state_dict()
            assert list(sd) == [f"model.{i}.{t}" for i in range(0, 24, 2) for t in ("weight", "bias")]
            assert sd["model.22.weight"].shape == (3 * s * s, 128, 3, 3)
            _, spec = srmd.from_state_dict(sd)
            assert (spec.variant, spec.scale, spec.hyperparams["nb"], spec.hyperparams["nc"]) == (variant, s, 12, 128)


@pytest.mark.parametrize("variant", ["srmd", "srmdnf"])
@pytest.mark.parametrize("scale", [2, 3, 4])
def test_load_detect_and_shapes(tmp_path, variant, scale):
    sd = _random_sd(variant, scale, nc=8, nb=3 + scale)
    path = tmp_path / f"{variant}_x{scale}.pth"
    torch.save(sd, path)
    assert models.detect(path) == models.Detected("srmd", variant, scale)
    net, spec = models.load(path)
    assert spec.variant == variant and spec.scale == scale and spec.hyperparams["nb"] == 3 + scale
    net2, _ = models.load("srmd", weights=path, scale=scale)
    with pytest.raises(UnknownCheckpoint):
        models.load(path, scale=scale + 1)
    in_nc = 19 if variant == "srmd" else 18
    for h, w in ((7, 5), (10, 13), (1, 1)):
        x = torch.rand(1, in_nc, h, w)
        with torch.no_grad():
            y = net(x)
        assert y.shape == (1, 3, h * scale, w * scale)
        assert torch.equal(y, net2(x))
    with pytest.raises(ValueError):
        net(torch.rand(1, 3, 4, 4))


def test_detect_is_specific():
    sd = _random_sd("srmd", 2)
    assert srmd.detect(sd)
    bad_in = dict(sd, **{"model.0.weight": torch.zeros(8, 17, 3, 3)})              # 17 input channels
    bad_tail = dict(sd, **{"model.6.weight": torch.zeros(10, 8, 3, 3), "model.6.bias": torch.zeros(10)})
    extra = dict(sd, **{"model.1.weight": torch.zeros(8)})                          # odd index = ReLU
    gap = {k: v for k, v in sd.items() if not k.startswith("model.4.")}
    k5 = dict(sd, **{"model.2.weight": torch.zeros(8, 8, 5, 5)})
    other = dict(sd, **{"head.weight": torch.zeros(1)})
    for bad in (bad_in, bad_tail, extra, gap, k5, other):
        assert not srmd.detect(bad)


def test_bad_checkpoints_raise_unknown():
    sd = _random_sd("srmdnf", 3)
    missing = {k: v for k, v in sd.items() if k != "model.2.bias"}
    with pytest.raises(UnknownCheckpoint):
        models.build(missing)
    wrong = dict(sd, **{"model.2.weight": torch.zeros(8, 6, 3, 3)})
    with pytest.raises(UnknownCheckpoint):
        models.build(wrong)
    wrong_bias = dict(sd, **{"model.2.bias": torch.zeros(5)})
    with pytest.raises(UnknownCheckpoint):
        models.build(wrong_bias)


def test_jit_trace_matches_eager():
    net, _ = models.build(_random_sd("srmd", 3, nc=8, nb=4))
    x = torch.rand(1, 19, 6, 5)
    traced = torch.jit.trace(net, x)
    with torch.no_grad():
        assert torch.allclose(traced(x), net(x), atol=1e-6)
        x2 = torch.rand(2, 19, 9, 4)
        assert torch.allclose(traced(x2), net(x2), atol=1e-6)


# ----------------------------------------------------------------------------- MatConvNet
def _cell(items):
    c = np.empty((1, len(items)), dtype=object)
    for i, it in enumerate(items):
        c[0, i] = it
    return c


def _conv_layer(filt, bias, pad=1.0):
    return {"type": "conv", "name": "conv", "weights": _cell([filt.astype(np.float32), bias.reshape(-1, 1).astype(np.float32)]),
            "stride": 1.0, "pad": pad, "dilate": 1.0}


def _mcn_from_kair(sd, scale):
    """MatConvNet layers from a KAIR state dict, written from vl_nnSubP's definition:
    within each output colour, sub-pixel channel j holds pixel (row a = j mod s, col b = j div s),
    PixelShuffle's channel a*s + b holds the same pixel."""
    idx = sorted({int(k.split(".")[1]) for k in sd})
    layers = [{"type": "concat"}]
    for n, i in enumerate(idx):
        w = sd[f"model.{i}.weight"].numpy().transpose(2, 3, 1, 0)          # OIHW -> HWIO
        b = sd[f"model.{i}.bias"].numpy()
        if n == len(idx) - 1:
            s2 = scale * scale
            src = [c * s2 + (j % scale) * scale + j // scale for c in range(3) for j in range(s2)]
            w, b = w[..., src], b[src]
            layers += [_conv_layer(w, b), {"type": "SubP", "scale": float(scale)}]
        else:
            layers += [_conv_layer(w, b), {"type": "relu", "leak": 0.0}]
    return layers


def _mcn_forward(layers, img, degpar):
    """Literal NumPy transcription of cszn/SRMD vl_srmd_matlab + vl_nnSubP (H x W x C arrays)."""
    x = img.astype(np.float64)
    for l in layers:
        t = l["type"]
        if t == "concat":
            x = np.concatenate([x, np.broadcast_to(degpar, x.shape[:2] + degpar.shape)], axis=2)
        elif t == "conv":
            f, b = (np.asarray(a, np.float64) for a in l["weights"][0])
            kh, kw = f.shape[:2]
            xp = np.pad(x, ((1, 1), (1, 1), (0, 0)))
            y = np.zeros(x.shape[:2] + (f.shape[3],))
            for dy in range(kh):
                for dx in range(kw):
                    y += np.einsum("hwi,io->hwo", xp[dy:dy + x.shape[0], dx:dx + x.shape[1]], f[dy, dx])
            x = y + b.reshape(-1)
        elif t == "bnorm":
            g, beta, mom = (np.asarray(a, np.float64) for a in l["weights"][0])
            x = g.reshape(-1) * (x - mom[:, 0]) / mom[:, 1] + beta.reshape(-1)
        elif t == "relu":
            x = np.maximum(x, 0)
        elif t == "SubP":
            s = int(l["scale"])
            h, w, cin = x.shape
            y = np.zeros((h * s, w * s, cin // (s * s)))
            for co in range(cin // (s * s)):
                for i in range(1, s * s + 1):
                    a, bb = (i - 1) % s, (i - 1) // s           # MATLAB: mod(i-1,s)+1, floor((i-1)/s)+1
                    y[a::s, bb::s, co] = x[:, :, co * s * s + i - 1]
            x = y
    return x


def _torch_out(net, img, degpar):
    x = torch.cat([torch.from_numpy(img).permute(2, 0, 1)[None].float(),
                   srmd.degradation_map(torch.from_numpy(degpar).float(), *img.shape[:2])], 1)
    with torch.no_grad():
        return net(x)[0].permute(1, 2, 0).double().numpy()


@pytest.mark.parametrize("variant,scale", [("srmd", 2), ("srmdnf", 3), ("srmd", 4)])
def test_matconvnet_round_trip(tmp_path, variant, scale):
    sd = _random_sd(variant, scale, nc=6, nb=4, seed=scale)
    layers = _mcn_from_kair(sd, scale)
    p = srmd.load_pca()
    path = tmp_path / f"SRMDx{scale}.mat"
    scipy.io.savemat(str(path), {"net": {"layers": _cell(layers), "meta": {"P": p}}}, do_compression=True)

    got = srmd.state_dict_from_matconvnet(path)
    assert list(got) == list(sd)
    for k in sd:
        assert torch.equal(got[k], sd[k]), k
    assert np.array_equal(srmd.matconvnet_pca(path), p)
    assert models.detect(path) == models.Detected("srmd", variant, scale)

    # the converted net reproduces the MatConvNet computation (not only the tensors we wrote)
    net, _ = models.load(path)
    rng = np.random.default_rng(scale)
    img = rng.random((5, 4, 3))
    k = srmd.gaussian_kernel(15, theta=0.4, l1=3.0, l2=1.0)
    degpar = srmd.degradation_vector(k, 10.0, with_noise=variant == "srmd", dtype=torch.float64).numpy()
    ref = _mcn_forward(layers, img, degpar)
    out = _torch_out(net, img, degpar)
    assert out.shape == ref.shape == (5 * scale, 4 * scale, 3)
    np.testing.assert_allclose(out, ref, atol=1e-4)


def test_matconvnet_bnorm_folding_and_struct_file(tmp_path):
    rng = np.random.default_rng(7)
    s, nc = 2, 5
    layers = [{"type": "concat"},
              _conv_layer(rng.normal(0, 0.3, (3, 3, 19, nc)), rng.uniform(-0.1, 0.1, nc)),
              {"type": "relu", "leak": 0.0}]
    bn = {"type": "bnorm", "weights": _cell([rng.uniform(0.5, 1.5, (nc, 1)), rng.uniform(-0.2, 0.2, (nc, 1)),
                                             np.stack([rng.uniform(-0.2, 0.2, nc), rng.uniform(0.5, 1.5, nc)], 1)]),
          "epsilon": 1e-4}
    layers += [_conv_layer(rng.normal(0, 0.3, (3, 3, nc, nc)), np.zeros(nc)), bn, {"type": "relu", "leak": 0.0},
               _conv_layer(rng.normal(0, 0.3, (3, 3, nc, 3 * s * s)), rng.uniform(-0.1, 0.1, 3 * s * s)),
               {"type": "SubP", "scale": float(s)}, {"type": "loss"}]
    path = tmp_path / "struct.mat"
    scipy.io.savemat(str(path), {"layers": _cell(layers), "meta": {"P": srmd.load_pca()}})   # save -struct net
    sd = read_state_dict(path)
    net, spec = models.build(sd)
    assert spec.variant == "srmd" and spec.scale == 2 and spec.hyperparams["nb"] == 3
    img = rng.random((4, 6, 3))
    degpar = rng.random(16)
    np.testing.assert_allclose(_torch_out(net, img, degpar), _mcn_forward(layers, img, degpar), atol=1e-4)


def test_matconvnet_v73_hdf5(tmp_path):
    h5py = pytest.importorskip("h5py")
    sd = _random_sd("srmdnf", 2, nc=4, nb=3, seed=3)
    layers = _mcn_from_kair(sd, 2)
    path = tmp_path / "SRMDNFx2_v73.mat"
    with h5py.File(path, "w", userblock_size=512) as f:           # MATLAB v7.3 layout: arrays stored transposed
        refs = f.create_group("#refs#")
        counter = iter(range(10 ** 6))

        def put(value):
            name = f"r{next(counter)}"
            if isinstance(value, dict):
                g = refs.create_group(name)
                g.attrs["MATLAB_class"] = np.bytes_("struct")
                for k, v in value.items():
                    write(g, k, v)
                return g.ref
            write(refs, name, value)
            return refs[name].ref

        def write(parent, key, value):
            if isinstance(value, dict):
                g = parent.create_group(key)
                g.attrs["MATLAB_class"] = np.bytes_("struct")
                for k, v in value.items():
                    write(g, k, v)
            elif isinstance(value, str):
                d = parent.create_dataset(key, data=np.array([[ord(c)] for c in value], dtype=np.uint16))
                d.attrs["MATLAB_class"] = np.bytes_("char")
            elif isinstance(value, np.ndarray) and value.dtype == object:
                r = np.array([put(v) for v in value.reshape(-1, order="F")], dtype=h5py.ref_dtype)
                d = parent.create_dataset(key, data=r.reshape(value.shape[::-1]))
                d.attrs["MATLAB_class"] = np.bytes_("cell")
            else:
                a = np.atleast_2d(np.asarray(value))
                d = parent.create_dataset(key, data=a.T)
                d.attrs["MATLAB_class"] = np.bytes_("single" if a.dtype == np.float32 else "double")

        write(f, "net", {"layers": _cell(layers), "meta": {"P": srmd.load_pca()}})
    header = b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: Mon Jan  1 00:00:00 2018 HDF5 schema 1.00 ."
    with open(path, "r+b") as fh:
        fh.write(header.ljust(116, b" ") + b"\0" * 8 + b"\x00\x02" + b"IM")
    got = srmd.state_dict_from_matconvnet(path)
    for k in sd:
        assert torch.equal(got[k], sd[k]), k
    assert np.array_equal(srmd.matconvnet_pca(path), srmd.load_pca())


def test_matconvnet_rejects_other_nets(tmp_path):
    def save(name, mdict):
        p = tmp_path / name
        scipy.io.savemat(str(p), mdict)
        return p

    rng = np.random.default_rng(1)
    conv = _conv_layer(rng.normal(size=(3, 3, 19, 4)), np.zeros(4))
    tail = _conv_layer(rng.normal(size=(3, 3, 4, 12)), np.zeros(12))
    relu = {"type": "relu", "leak": 0.0}
    cases = {
        "plain.mat": {"P": srmd.load_pca()},                                               # no net
        "ffdnet.mat": {"net": {"layers": _cell([{"type": "SubP", "scale": 0.5}, conv, relu, tail,
                                                {"type": "SubP", "scale": 2.0}])}},        # down-shuffle
        "pad0.mat": {"net": {"layers": _cell([conv, relu, _conv_layer(rng.normal(size=(3, 3, 4, 12)),
                                                                       np.zeros(12), pad=0.0)])}},
        "leaky.mat": {"net": {"layers": _cell([conv, {"type": "relu", "leak": 0.1}, tail])}},
        "pool.mat": {"net": {"layers": _cell([conv, {"type": "pool"}, tail])}},
        "norelu.mat": {"net": {"layers": _cell([conv, tail])}},
        "scale3.mat": {"net": {"layers": _cell([conv, relu, tail, {"type": "SubP", "scale": 3.0}])}},
    }
    for name, mdict in cases.items():
        with pytest.raises(CheckpointError):
            read_state_dict(save(name, mdict))
    junk = tmp_path / "junk.mat"
    junk.write_bytes(b"not a mat file at all" * 10)
    with pytest.raises(CheckpointError):
        read_state_dict(junk)
    # a MatConvNet net without meta.P converts, and reports no P
    ok = save("nometa.mat", {"net": {"layers": _cell([{"type": "concat"}, conv, relu, tail,
                                                      {"type": "SubP", "scale": 2.0}])}})
    assert srmd.matconvnet_pca(ok) is None
    assert models.detect(ok) == models.Detected("srmd", "srmd", 2)

"""The registry over all families: detection of every golden case, the converter round trip,
refusal of bad checkpoints (truncated, wrong family, wrong scale, missing keys, code in a pickle)."""
import os
import pickle
from pathlib import Path

import pytest
import torch

import models
from models.convert import main as convert_main
from models.rdn import RDN
from tests.conftest import golden

GOLDEN_ARCH = {
    "srmd_x4.pt": ("srmd", 4), "srmdnf_x2_reduced.pt": ("srmd", 2), "dbpn_x4_reduced.pt": ("dbpn", 4),
    "dbpnll_x4_reduced.pt": ("dbpn", 4), "dbpn_res_mr64_3_x2_reduced.pt": ("dbpn", 2),
    "rdn_edsr_x4_reduced.pt": ("rdn", 4), "rdn_edsr_x3_reduced.pt": ("rdn", 3),
    "rdn_yjn870_x2_reduced.pt": ("rdn", 2), "sftgan_sftnet_torch.pt": ("sftgan", 4),
    "sftgan_sftnet.pt": ("sftgan", 4), "sftgan_outdoorsceneseg_reduced.pt": ("outdoorsceneseg", 0),
    "attngan_gnet_reduced.pt": ("attngan", 0), "attngan_rnn_encoder.pt": ("attngan-text", 0),
    "zssr_jacobgil_rgb.pt": ("zssr", None),
}


@pytest.mark.parametrize("name", sorted(GOLDEN_ARCH))
def test_every_golden_state_dict_is_detected_by_the_registry(name, tmp_path):
    case = golden(name)
    path = tmp_path / "ckpt.pth"
    torch.save(case["state_dict"], path)
    d = models.detect(path)
    arch, scale = GOLDEN_ARCH[name]
    assert d.arch == arch
    if scale is not None:
        assert d.scale == scale


@pytest.mark.parametrize("name", sorted(GOLDEN_ARCH))
def test_every_other_family_rejects_each_golden_state_dict(name):
    """Detection rules must not overlap: only the owning family claims an official layout."""
    sd = golden(name)["state_dict"]
    claimed = sorted(a.name for a in models.architectures().values() if a.detect(sd))
    assert claimed == [GOLDEN_ARCH[name][0]], claimed


def _rdn_file(tmp_path, scale=2) -> Path:
    torch.manual_seed(0)
    path = tmp_path / f"rdn_x{scale}.pth"
    torch.save({"params": RDN(scale=scale, G0=8, D=2, C=2, G=4).state_dict()}, path)
    return path


def test_converter_round_trip(tmp_path):
    src = _rdn_file(tmp_path)
    dst = tmp_path / "rdn.safetensors"
    assert convert_main([str(src), str(dst)]) == 0
    a, _ = models.load(str(src))
    b, spec = models.load(str(dst))
    assert spec.arch == "rdn" and spec.scale == 2
    x = torch.rand(1, 3, 9, 7) * 255
    with torch.no_grad():
        assert torch.equal(a(x), b(x))


def test_refusals(tmp_path):
    good = _rdn_file(tmp_path)
    trunc = tmp_path / "trunc.pth"
    trunc.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(models.CheckpointError, match="truncated"):
        models.load(str(trunc))
    with pytest.raises(models.UnknownCheckpoint, match="x2, not x4"):
        models.load("rdn", weights=str(good), scale=4)
    with pytest.raises(models.UnknownCheckpoint, match="does not match architecture 'dbpn'"):
        models.load("dbpn", weights=str(good))
    sd = torch.load(good, weights_only=True)["params"]
    sd.pop(next(k for k in sd if k.startswith("GFF.1")))
    missing = tmp_path / "missing.pth"
    torch.save(sd, missing)
    with pytest.raises(models.UnknownCheckpoint):
        models.load(str(missing))
    with pytest.raises(models.UnknownCheckpoint, match="needs --weights"):
        models.load("rdn")


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch /tmp/rayscale-pwned",))


def test_pickle_that_runs_code_is_refused(tmp_path):
    if os.path.exists("/tmp/rayscale-pwned"):
        os.remove("/tmp/rayscale-pwned")
    zipped, raw = tmp_path / "evil.pth", tmp_path / "evil_raw.pth"
    torch.save({"state_dict": _Evil()}, zipped)   # torch's zip format
    raw.write_bytes(pickle.dumps({"x": _Evil()}))  # a bare legacy pickle
    for path in (zipped, raw):
        with pytest.raises(models.CheckpointError, match="refused to unpickle"):
            models.load(str(path))
    assert not os.path.exists("/tmp/rayscale-pwned")

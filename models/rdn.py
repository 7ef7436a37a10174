"""RDN: "Residual Dense Network for Image Super-Resolution" (Zhang, Tian, Kong, Zhong, Fu, CVPR 2018).

Paper Fig. 2/3: shallow features F_-1 = SFE1(x) (3x3), F_0 = SFE2(F_-1) (3x3); D residual dense
blocks (RDB), each C x [3x3 conv(G0 + c*G -> G) + ReLU] with dense concatenation, a 1x1 local
feature fusion (G0 + C*G -> G0) and a local skip; global feature fusion = 1x1 conv over the
concatenated RDB outputs (RDB 1 first) then a 3x3 conv, plus the global skip F_-1; sub-pixel
upsampler (x2/x3 one conv + PixelShuffle, x4 two x2 stages) and a 3x3 conv to the image.
Official hyper-parameters (``RDN.lua`` / EDSR-PyTorch config "B"): G0=64, D=16, C=8, G=64, 3x3.

The official weights are Torch7 ``.t7`` files; the loadable PyTorch layouts are two ports, told
apart by their key names and both built here with the official key names (strict load):

* ``rdn-edsr`` -- EDSR-PyTorch ``src/model/rdn.py`` (the port the RDN README points to):
  ``SFENet1/2``, ``RDBs.{d}.convs.{c}.conv.0``, ``RDBs.{d}.LFF``, ``GFF.{0,1}``, ``UPNet.*``.
  RGB in [0, 255] (``rgb_range`` 255), no mean shift. Its upsampler runs at width G (not G0) and
  the RDB convs are always 3x3 whatever ``RDNkSize`` is (EDSR does not pass it down); both quirks
  are kept so that its checkpoints load. :class:`RDN` is also the from-scratch constructor.
* ``rdn-yjn870`` -- yjn870/RDN-pytorch ``models.py`` (publishes ``rdn_x2/x3/x4.pth``): ``sfe1/2``,
  ``rdbs.{d}.layers.{c}.conv``, ``rdbs.{d}.lff``, ``gff.*``, ``upscale.*``, ``output``.
  RGB in [0, 1]. Needs G0 == G (its first RDB adds G0 to G channels).

Nothing in the forward pins the dtype or memory format, so ``net.to(torch.bfloat16,
memory_format=torch.channels_last)`` runs the whole network in bf16 / NHWC.

Converting the Torch7 ``.t7`` models (``RDN_BIX2/3/4.t7``, ``RDN_BDX3.t7``, ``RDN_DNX3.t7``) is not
implemented: no ``.t7`` file can be fetched here to test against, and a converter that was never
run on the real file would be a guess. What one needs:

* reader: ``torchfile`` (PyPI, pure Python) loads the serialized ``nn.Sequential``; the models were
  trained with cudnn, so the convolutions may be ``cudnn.SpatialConvolution`` objects with
  ``torch.CudaTensor`` storage -- check that torchfile maps those, or ``cudnn.convert(model, nn)``
  and ``:float()`` the model in Torch7 first.
* order: a depth-first walk over ``.modules`` (``nn.Concat``/``ConcatTable`` children in order)
  meets the ``SpatialConvolution`` modules exactly in EDSR key order: SFE1, SFE2, then for
  d = 1..D the C dense convs and the 1x1 LFF (``RDN.lua`` builds the RDBs as a nested
  ``Sequential(RDB_d, Concat(Identity, ...))`` chain whose innermost unit is the D-th RDB, so the
  walk still visits RDB 1..D in order), GFF 1x1, GFF 3x3, the upsampler conv(s), the last conv:
  2 + D*(C+1) + 2 + (1 or 2) + 1 convolutions. Map them onto ``SFENet1``, ``SFENet2``,
  ``RDBs.{d}.convs.{c}.conv.0``, ``RDBs.{d}.LFF``, ``GFF.0``, ``GFF.1``, ``UPNet.{0[,2]}``,
  ``UPNet.{2|4}``.
* tensors: ``weight`` is (out, in, kh, kw) as in PyTorch (very old nn versions store it 2-D
  (out, in*kh*kw): reshape), ``bias`` (out). The Torch7 upsampler conv is G0 -> r*r*G0; equal to
  EDSR's G*r*r for the published G0 == G == 64. Torch7 ``nn.PixelShuffle`` uses the same channel
  order as PyTorch's.
* conventions: RGB, input multiplied by 255 (``-mulImg 255`` in ``TestRDN.lua``), no mean
  subtraction -- i.e. the ``rdn-edsr`` spec.
"""
from __future__ import annotations

import math
import re

import torch
from torch import nn

from .spec import Architecture, ModelSpec, StateDict, UnknownCheckpoint

VARIANT_EDSR = "rdn-edsr"
VARIANT_YJN870 = "rdn-yjn870"
SCALES = (2, 3, 4)


def _conv(cin: int, cout: int, k: int) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, k, padding=(k - 1) // 2)


# --------------------------------------------------------------------------- EDSR-PyTorch layout
class _DenseConv(nn.Module):
    """One dense layer: x -> cat(x, ReLU(conv(x))). ``conv`` is a Sequential (key ``conv.0``)."""

    def __init__(self, cin: int, growth: int, k: int = 3):
        super().__init__()
        self.conv = nn.Sequential(_conv(cin, growth, k), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat((x, self.conv(x)), 1)


class _RDB(nn.Module):
    def __init__(self, G0: int, G: int, C: int, k: int = 3):
        super().__init__()
        self.convs = nn.Sequential(*[_DenseConv(G0 + c * G, G, k) for c in range(C)])
        self.LFF = nn.Conv2d(G0 + C * G, G0, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.LFF(self.convs(x)) + x


class RDN(nn.Module):
    """RDN in the EDSR-PyTorch key layout; input RGB in [0, 255] (the port's convention).

    ``kernel_size`` is EDSR's ``RDNkSize`` (shallow features, GFF 3x3, upsampler); the RDB convs use
    ``rdb_kernel_size`` (EDSR hard-wires 3). Defaults are the paper's config.
    """

    def __init__(self, scale: int, G0: int = 64, D: int = 16, C: int = 8, G: int = 64,
                 kernel_size: int = 3, n_colors: int = 3, rdb_kernel_size: int = 3):
        super().__init__()
        if scale not in SCALES:
            raise ValueError(f"RDN scale must be one of {SCALES}, got {scale}")
        self.scale, self.D = scale, D
        k = kernel_size
        self.SFENet1 = _conv(n_colors, G0, k)
        self.SFENet2 = _conv(G0, G0, k)
        self.RDBs = nn.ModuleList([_RDB(G0, G, C, rdb_kernel_size) for _ in range(D)])
        self.GFF = nn.Sequential(nn.Conv2d(D * G0, G0, 1), _conv(G0, G0, k))
        if scale == 4:
            up = [_conv(G0, G * 4, k), nn.PixelShuffle(2), _conv(G, G * 4, k), nn.PixelShuffle(2)]
        else:
            up = [_conv(G0, G * scale * scale, k), nn.PixelShuffle(scale)]
        self.UPNet = nn.Sequential(*up, _conv(G, n_colors, k))
        self.hyperparams = dict(G0=G0, D=D, C=C, G=G, kernel_size=k, rdb_kernel_size=rdb_kernel_size,
                                n_colors=n_colors)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f1 = self.SFENet1(x)
        h = self.SFENet2(f1)
        outs = []
        for rdb in self.RDBs:
            h = rdb(h)
            outs.append(h)
        h = self.GFF(torch.cat(outs, 1)) + f1
        return self.UPNet(h)

    def spec(self) -> ModelSpec:
        return _spec(VARIANT_EDSR, self.scale, self.hyperparams)


# --------------------------------------------------------------------------- yjn870 layout
class _DenseLayerY(nn.Module):
    def __init__(self, cin: int, growth: int):
        super().__init__()
        self.conv = _conv(cin, growth, 3)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat((x, self.relu(self.conv(x))), 1)


class _RDBY(nn.Module):
    def __init__(self, cin: int, G: int, C: int):
        super().__init__()
        self.layers = nn.Sequential(*[_DenseLayerY(cin + G * c, G) for c in range(C)])
        self.lff = nn.Conv2d(cin + G * C, G, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.lff(self.layers(x))


class RDNYjn870(nn.Module):
    """RDN in the yjn870/RDN-pytorch key layout; input RGB in [0, 1]. Upsampler at width G0."""

    def __init__(self, scale: int, num_features: int = 64, growth_rate: int = 64, num_blocks: int = 16,
                 num_layers: int = 8, num_channels: int = 3):
        super().__init__()
        if scale not in SCALES:
            raise ValueError(f"RDN scale must be one of {SCALES}, got {scale}")
        if num_features != growth_rate:
            raise ValueError("the yjn870 layout needs num_features == growth_rate")
        G0, G = num_features, growth_rate
        self.scale = scale
        self.sfe1 = _conv(num_channels, G0, 3)
        self.sfe2 = _conv(G0, G0, 3)
        self.rdbs = nn.ModuleList([_RDBY(G0 if d == 0 else G, G, num_layers) for d in range(num_blocks)])
        self.gff = nn.Sequential(nn.Conv2d(G * num_blocks, G0, 1), _conv(G0, G0, 3))
        if scale == 3:
            up = [_conv(G0, G0 * 9, 3), nn.PixelShuffle(3)]
        else:
            up = []
            for _ in range(scale // 2):
                up += [_conv(G0, G0 * 4, 3), nn.PixelShuffle(2)]
        self.upscale = nn.Sequential(*up)
        self.output = _conv(G0, num_channels, 3)
        self.hyperparams = dict(G0=G0, D=num_blocks, C=num_layers, G=G, kernel_size=3, rdb_kernel_size=3,
                                n_colors=num_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f1 = self.sfe1(x)
        h = self.sfe2(f1)
        outs = []
        for rdb in self.rdbs:
            h = rdb(h)
            outs.append(h)
        h = self.gff(torch.cat(outs, 1)) + f1
        return self.output(self.upscale(h))

    def spec(self) -> ModelSpec:
        return _spec(VARIANT_YJN870, self.scale, self.hyperparams)


# --------------------------------------------------------------------------- registry glue
def _spec(variant: str, scale: int, hp: dict) -> ModelSpec:
    return ModelSpec(
        arch="rdn", variant=variant, scale=scale,
        input_range=255.0 if variant == VARIANT_EDSR else 1.0,
        channel_order="RGB" if hp["n_colors"] == 3 else "Y",
        mean=None, output="image", hyperparams=dict(hp))


def _indices(sd: StateDict, pattern: str) -> list[int]:
    rx = re.compile(pattern)
    return sorted({int(m.group(1)) for k in sd if (m := rx.fullmatch(k))})


def _count(sd: StateDict, pattern: str, what: str) -> int:
    idx = _indices(sd, pattern)
    if not idx or idx != list(range(len(idx))):
        raise UnknownCheckpoint(f"rdn: {what} are not numbered 0..n-1 (found {idx[:8]})")
    return len(idx)


def _shape(sd: StateDict, key: str) -> tuple[int, ...]:
    if key not in sd:
        raise UnknownCheckpoint(f"rdn: missing {key}")
    return tuple(sd[key].shape)


def _is_edsr(sd: StateDict) -> bool:
    return all(k in sd for k in ("SFENet1.weight", "SFENet2.weight", "RDBs.0.LFF.weight",
                                 "RDBs.0.convs.0.conv.0.weight", "GFF.0.weight", "UPNet.0.weight"))


def _is_yjn870(sd: StateDict) -> bool:
    return all(k in sd for k in ("sfe1.weight", "sfe2.weight", "rdbs.0.lff.weight",
                                 "rdbs.0.layers.0.conv.weight", "gff.0.weight", "upscale.0.weight",
                                 "output.weight"))


def detect(sd: StateDict) -> bool:
    return _is_edsr(sd) or _is_yjn870(sd)


def _edsr_from_state_dict(sd: StateDict) -> RDN:
    G0, n_colors, k, _ = _shape(sd, "SFENet1.weight")
    D = _count(sd, r"RDBs\.(\d+)\.LFF\.weight", "RDBs")
    C = _count(sd, r"RDBs\.0\.convs\.(\d+)\.conv\.0\.weight", "RDB convs")
    G, _, rk, _ = _shape(sd, "RDBs.0.convs.0.conv.0.weight")
    up0 = _shape(sd, "UPNet.0.weight")[0]
    if "UPNet.4.weight" in sd:
        scale = 4
    else:
        r2, rem = divmod(up0, _shape(sd, "UPNet.2.weight")[1])
        scale = math.isqrt(r2) if rem == 0 else 0
        if scale * scale != r2 or scale not in (2, 3):
            raise UnknownCheckpoint(f"rdn: upsampler widths {up0} / {G} give no scale 2/3/4")
    return RDN(scale, G0=G0, D=D, C=C, G=G, kernel_size=k, n_colors=n_colors, rdb_kernel_size=rk)


def _yjn870_from_state_dict(sd: StateDict) -> RDNYjn870:
    G0, n_ch = _shape(sd, "sfe1.weight")[:2]
    D = _count(sd, r"rdbs\.(\d+)\.lff\.weight", "rdbs")
    C = _count(sd, r"rdbs\.0\.layers\.(\d+)\.conv\.weight", "rdb layers")
    G = _shape(sd, "rdbs.0.layers.0.conv.weight")[0]
    if G != G0:
        raise UnknownCheckpoint(f"rdn: yjn870 layout needs num_features == growth_rate ({G0} != {G})")
    if "upscale.2.weight" in sd:
        scale = 4
    else:
        scale = {4: 2, 9: 3}.get(_shape(sd, "upscale.0.weight")[0] // G0, 0)
        if not scale or _shape(sd, "upscale.0.weight")[0] % G0:
            raise UnknownCheckpoint("rdn: yjn870 upscale.0 width gives no scale 2/3/4")
    return RDNYjn870(scale, num_features=G0, growth_rate=G, num_blocks=D, num_layers=C, num_channels=n_ch)


def from_state_dict(sd: StateDict) -> tuple[nn.Module, ModelSpec]:
    try:
        if _is_edsr(sd):
            net = _edsr_from_state_dict(sd)
        elif _is_yjn870(sd):
            net = _yjn870_from_state_dict(sd)
        else:
            raise UnknownCheckpoint("rdn: neither the EDSR-PyTorch nor the yjn870 key layout")
    except UnknownCheckpoint:
        raise
    except (ValueError, IndexError, TypeError, ZeroDivisionError) as e:  # e.g. a 2-D tensor where a conv is due
        raise UnknownCheckpoint(f"rdn: inconsistent shapes ({e})") from None
    return net, net.spec()


ARCHITECTURES = (
    Architecture(name="rdn", detect=detect, from_state_dict=from_state_dict, scales=SCALES),
)

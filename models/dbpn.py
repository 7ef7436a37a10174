"""DBPN: "Deep Back-Projection Networks for Super-Resolution" (Haris, Shakhnarovich, Ukita, CVPR 2018)
and the variants released with it in alterzero/DBPN-Pytorch.

Paper Fig. 3/4: features ``feat0`` (3x3 conv to ``feat``) and ``feat1`` (1x1 to ``base_filter``),
then T up-projection units and T-1 down-projection units alternating (up1, down1, up2, ...).
Up-projection: H0 = deconv(L), L0 = conv(H0), H1 = deconv(L0 - L), out = H0 + H1; the
down-projection mirrors it. From the second down unit on ("dense" DBPN) every unit first fuses
the concatenation of all earlier outputs of the opposite kind (newest first) with a 1x1 conv;
the output conv (3x3, no activation) reads all T HR maps, newest first. Every conv/deconv carries
a bias and a single-slope PReLU. The projection kernel/stride/padding is (6, 2, 2) for x2,
(8, 4, 2) for x4, (12, 8, 2) for x8, so the scale is read off the kernel size. Official
hyper-parameters: base_filter 64, feat 256.

Variants (all read off key presence and shapes, key names = the official module names):

* ``dbpn``             D-DBPN, T = 7 (``dbpn.py``; released ``DBPN_x2/x4/x8.pth``).
* ``dbpn-ll``          T = 10 (``dbpn_v1.py``; ``DBPNLL_x8.pth`` and ``PIRM2018_region1-3.pth``).
* ``dbpn-s``           T = 2, no dense units (``dbpns.py``; no released weights).
* ``dbpn-v2``          T = 12 (``dbpn_v2.py``; no released weights). Other T give ``dbpn-t{T}``.
* ``dbpn-res-mr64-3``  (``dbpn_iterative.py``; ``DBPN-RES-MR64-3_2x/4x/8x.pth``): the T = 7 body run
  ``passes`` = 3 times with shared weights, each pass starting from the previous pass's last LR map;
  the last HR map of every pass (oldest first) feeds the output conv. It predicts a RESIDUAL:
  the SR image is ``output + bicubic(LR)`` (``eval.py --residual``), where the authors' bicubic is
  PIL ``Image.BICUBIC`` on the 8-bit LR; :func:`bicubic_upscale` is the same kernel in torch.
* ``dbpn-resnet``      (``dbpn_resnet.py``; no released weights): a 3x3 stem to ``base_filter``,
  residual blocks of two 7x7 convs (``res_feat``), a 1x1 conv to ``feat`` and a T = 7 body at
  width ``feat``.

Conventions: RGB in [0, 1] (PIL + ToTensor), no mean subtraction; output nominally [0, 1], the
authors clamp when saving. Exception the keys cannot reveal: the PIRM2018 GAN models
(``eval_gan.py``) take ImageNet-normalised input (mean 0.485/0.456/0.406, std 0.229/0.224/0.225)
and their output must be de-normalised the same way; they load as ``dbpn-ll``.
The official files were saved from ``nn.DataParallel`` (``module.`` prefix, stripped by the
checkpoint reader). Output size is exactly scale x input for any input size.
"""
from __future__ import annotations

import re

import torch
import torch.nn.functional as F
from torch import nn

from .spec import Architecture, ModelSpec, StateDict, UnknownCheckpoint

SCALES = (2, 4, 8)
_PROJECTION = {2: (6, 2, 2), 4: (8, 4, 2), 8: (12, 8, 2)}   # scale -> kernel, stride, padding
_SCALE_OF_KERNEL = {k: s for s, (k, _, _) in _PROJECTION.items()}
_NAMED_DENSE = {2: "dbpn-s", 7: "dbpn", 10: "dbpn-ll", 12: "dbpn-v2"}
VARIANT_ITERATIVE = "dbpn-res-mr64-3"
VARIANT_RESNET = "dbpn-resnet"


class ConvBlock(nn.Module):
    """Conv2d (+ single-slope PReLU): keys ``conv.*`` and ``act.weight``."""

    def __init__(self, cin: int, cout: int, k: int, stride: int = 1, pad: int = 0, act: bool = True):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, stride, pad)
        self.act = nn.PReLU() if act else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv(x))


class DeconvBlock(nn.Module):
    """ConvTranspose2d + single-slope PReLU: keys ``deconv.*`` and ``act.weight``."""

    def __init__(self, cin: int, cout: int, k: int, stride: int, pad: int):
        super().__init__()
        self.deconv = nn.ConvTranspose2d(cin, cout, k, stride, pad)
        self.act = nn.PReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.deconv(x))


class UpProjection(nn.Module):
    """Up-projection unit; with ``n_inputs`` > 1 a 1x1 ``conv`` first fuses the concatenated maps."""

    def __init__(self, c: int, scale: int, n_inputs: int = 1):
        super().__init__()
        k, s, p = _PROJECTION[scale]
        if n_inputs > 1:
            self.conv = ConvBlock(c * n_inputs, c, 1)
        self.up_conv1 = DeconvBlock(c, c, k, s, p)
        self.up_conv2 = ConvBlock(c, c, k, s, p)
        self.up_conv3 = DeconvBlock(c, c, k, s, p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if hasattr(self, "conv"):
            x = self.conv(x)
        h0 = self.up_conv1(x)
        l0 = self.up_conv2(h0)
        return self.up_conv3(l0 - x) + h0


class DownProjection(nn.Module):
    def __init__(self, c: int, scale: int, n_inputs: int = 1):
        super().__init__()
        k, s, p = _PROJECTION[scale]
        if n_inputs > 1:
            self.conv = ConvBlock(c * n_inputs, c, 1)
        self.down_conv1 = ConvBlock(c, c, k, s, p)
        self.down_conv2 = DeconvBlock(c, c, k, s, p)
        self.down_conv3 = ConvBlock(c, c, k, s, p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if hasattr(self, "conv"):
            x = self.conv(x)
        l0 = self.down_conv1(x)
        h0 = self.down_conv2(l0)
        return self.down_conv3(h0 - x) + l0


class ResnetBlock(nn.Module):
    """``dbpn_resnet`` block: conv1 -> PReLU -> conv2, + input (one PReLU, key ``act``)."""

    def __init__(self, c: int, k: int = 7):
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, k, 1, k // 2)
        self.conv2 = nn.Conv2d(c, c, k, 1, k // 2)
        self.act = nn.PReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.act(self.conv1(x))) + x


def _cat_newest_first(maps: list[torch.Tensor]) -> torch.Tensor:
    return maps[0] if len(maps) == 1 else torch.cat(maps[::-1], 1)


class DBPN(nn.Module):
    """The DBPN family in the official key layout.

    ``stages`` = T (number of up-projection units). ``passes`` = 0 for the dense nets (output conv on
    all T HR maps); ``passes`` = K > 0 for the weight-shared recurrent net (``dbpn_iterative``).
    ``res_blocks`` = None for the plain stem; an int selects the ``dbpn_resnet`` stem, whose
    widths swap roles: 3x3 stem to ``base_filter``, projection units at ``feat``.
    """

    def __init__(self, scale: int = 4, base_filter: int = 64, feat: int = 256, stages: int = 7,
                 num_channels: int = 3, passes: int = 0, res_blocks: int | None = None,
                 res_kernel: int = 7):
        super().__init__()
        if scale not in _PROJECTION:
            raise ValueError(f"DBPN scale must be one of {SCALES}, got {scale}")
        if stages < 2:
            raise ValueError("DBPN needs at least 2 up-projection stages")
        self.scale, self.stages, self.passes = scale, stages, passes
        self.resnet = res_blocks is not None
        if self.resnet:
            stem, width = base_filter, feat
            self.feat0 = ConvBlock(num_channels, stem, 3, 1, 1)
            self.res_feat = nn.Sequential(*[ResnetBlock(stem, res_kernel) for _ in range(res_blocks)],
                                          ConvBlock(stem, stem, res_kernel, 1, res_kernel // 2))
            self.feat1 = ConvBlock(stem, width, 1)
        else:
            stem, width = feat, base_filter
            self.feat0 = ConvBlock(num_channels, stem, 3, 1, 1)
            self.feat1 = ConvBlock(stem, width, 1)
        for t in range(1, stages + 1):   # module names up1, down1, ... as in the official classes
            setattr(self, f"up{t}", UpProjection(width, scale, 1 if t <= 2 else t - 1))
            if t < stages:
                setattr(self, f"down{t}", DownProjection(width, scale, t))
        n_out = passes if passes else stages
        self.output_conv = ConvBlock(n_out * width, num_channels, 3, 1, 1, act=False)
        self.hyperparams = dict(base_filter=base_filter, feat=feat, stages=stages, passes=passes,
                                num_channels=num_channels, projection=_PROJECTION[scale],
                                res_blocks=res_blocks, res_kernel=res_kernel if self.resnet else None)

    def _body(self, l: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        hs = [self.up1(l)]
        ls: list[torch.Tensor] = []
        for t in range(1, self.stages):
            l = getattr(self, f"down{t}")(_cat_newest_first(hs))
            ls.append(l)
            hs.append(getattr(self, f"up{t + 1}")(_cat_newest_first(ls)))
        return hs, l

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.feat0(x)
        if self.resnet:
            x = self.res_feat(x) + x
        l = self.feat1(x)
        if not self.passes:
            hs, _ = self._body(l)
            return self.output_conv(_cat_newest_first(hs))
        last_h = []
        for _ in range(self.passes):
            hs, l = self._body(l)
            last_h.append(hs[-1])
        return self.output_conv(torch.cat(last_h, 1))   # oldest pass first, as dbpn_iterative

    @property
    def variant(self) -> str:
        if self.resnet:
            return VARIANT_RESNET
        if self.passes:
            return VARIANT_ITERATIVE if (self.stages, self.passes) == (7, 3) else \
                f"dbpn-iterative-t{self.stages}-k{self.passes}"
        return _NAMED_DENSE.get(self.stages, f"dbpn-t{self.stages}")

    def spec(self) -> ModelSpec:
        hp = dict(self.hyperparams)
        if self.passes:
            hp["residual_base"] = "PIL Image.BICUBIC upscale of the 8-bit RGB LR (see bicubic_upscale)"
        return ModelSpec(arch="dbpn", variant=self.variant, scale=self.scale, input_range=1.0,
                         channel_order="RGB" if self.hyperparams["num_channels"] == 3 else "Y",
                         mean=None, output="residual" if self.passes else "image", hyperparams=hp)


def bicubic_upscale(lr: torch.Tensor, scale: int, pil_exact: bool = True) -> torch.Tensor:
    """The base that ``dbpn-res-mr64-3``'s residual is added to (input/output in [0, 1]).

    The authors upscale the 8-bit LR with PIL ``Image.BICUBIC`` (a = -0.5, edge-renormalised
    weights, 8-bit rounding and clipping after the horizontal pass). With ``pil_exact`` the LR is
    rounded to 8 bits and torch's uint8 antialiased bicubic (modelled on PIL) is used: against
    Pillow on random-noise images it differed by at most 2 levels on < 0.3 % of the pixels
    (fixed-point rounding). The float path skips the intermediate rounding/clipping and is off
    by up to ~35 levels on the same noise (a few levels on natural images).
    """
    if not pil_exact:
        return F.interpolate(lr, scale_factor=scale, mode="bicubic", align_corners=False, antialias=True)
    u8 = torch.round(lr.clamp(0, 1) * 255).to(torch.uint8)
    up = F.interpolate(u8, scale_factor=scale, mode="bicubic", align_corners=False, antialias=True)
    return up.to(lr.dtype) / 255


# --------------------------------------------------------------------------- registry glue
_REQUIRED = ("feat0.conv.weight", "feat0.act.weight", "feat1.conv.weight", "up1.up_conv1.deconv.weight",
             "down1.down_conv1.conv.weight", "up2.up_conv1.deconv.weight", "output_conv.conv.weight")


def detect(sd: StateDict) -> bool:
    return all(k in sd for k in _REQUIRED)


def _indices(sd: StateDict, pattern: str) -> list[int]:
    rx = re.compile(pattern)
    return sorted({int(m.group(1)) for k in sd if (m := rx.fullmatch(k))})


def _from_state_dict(sd: StateDict) -> DBPN:
    stem, num_channels = sd["feat0.conv.weight"].shape[:2]
    width = sd["feat1.conv.weight"].shape[0]
    k = sd["up1.up_conv1.deconv.weight"].shape[-1]
    if k not in _SCALE_OF_KERNEL:
        raise UnknownCheckpoint(f"dbpn: projection kernel {k} is none of 6/8/12 (x2/x4/x8)")
    ups = _indices(sd, r"up(\d+)\.up_conv1\.deconv\.weight")
    downs = _indices(sd, r"down(\d+)\.down_conv1\.conv\.weight")
    T = len(ups)
    if ups != list(range(1, T + 1)) or downs != list(range(1, T)):
        raise UnknownCheckpoint(f"dbpn: projection units up{ups[:12]} / down{downs[:12]} are not up1..upT, down1..downT-1")
    n_out, rem = divmod(sd["output_conv.conv.weight"].shape[1], width)
    if rem:
        raise UnknownCheckpoint("dbpn: output_conv input is not a multiple of the projection width")
    res_idx = _indices(sd, r"res_feat\.(\d+)\.conv\.weight")
    if res_idx:   # dbpn_resnet: ResnetBlocks 0..n-1, then the closing ConvBlock at index n
        n_res = res_idx[-1]
        if n_out != T:
            raise UnknownCheckpoint(f"dbpn: dbpn_resnet output_conv reads {n_out} maps, not T = {T}")
        return DBPN(_SCALE_OF_KERNEL[k], base_filter=stem, feat=width, stages=T, num_channels=num_channels,
                    res_blocks=n_res,
                    res_kernel=sd[f"res_feat.{n_res}.conv.weight"].shape[-1])
    return DBPN(_SCALE_OF_KERNEL[k], base_filter=width, feat=stem, stages=T, num_channels=num_channels,
                passes=0 if n_out == T else n_out)


def from_state_dict(sd: StateDict) -> tuple[nn.Module, ModelSpec]:
    try:
        net = _from_state_dict(sd)
    except UnknownCheckpoint:
        raise
    except (KeyError, ValueError, IndexError, TypeError) as e:
        raise UnknownCheckpoint(f"dbpn: inconsistent checkpoint ({e})") from None
    return net, net.spec()


ARCHITECTURES = (
    Architecture(name="dbpn", detect=detect, from_state_dict=from_state_dict, scales=SCALES),
)

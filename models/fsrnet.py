"""FSRNet / FSRGAN: "FSRNet: End-to-End Learning Face Super-Resolution with Facial Priors" (Chen, Tai,
Liu, Shen, Yang, CVPR 2018, arXiv 1711.10703). 16x16 face -> 128x128 face (x8).

The authors released only Torch7 test code and four serialized nngraph models (``tyshiwo/FSRNet``:
``models/{CelebA,Helen}{,_GAN}_8x.t7``); there is no training code, no layer list and no PyTorch
layout. This module is therefore our own re-implementation from the paper's Fig. 2 and Sec. 3, with
our own descriptive key names. Structure (paper Fig. 2, Sec. 3.1/3.3):

* ``coarse``  coarse SR network: 3x3 conv, 3 residual blocks, 3x3 conv -> coarse HR image y_c.
* ``encoder`` fine SR encoder: 3x3 conv with stride 2 (128 -> 64), 12 residual blocks -> features f.
* ``prior``   prior estimation network: 7x7 conv with stride 2 (128 -> 64), 3 residual blocks, 2 stacked
  HourGlass blocks (Newell et al. 2016) with skip connections between symmetric layers; per stack,
  1x1 heads predict the landmark heatmaps and the parsing maps (the priors p) at 64x64.
* ``decoder`` fine SR decoder: concat(f, prior features), 3x3 conv -> 64 channels, 4x4 deconvolution
  (64 -> 128), 3 residual blocks, 3x3 conv -> the final SR image.

Loss (paper Eq. 1-4, weights here unverified): MSE(y_c, y) + alpha * MSE(y_hat, y) + beta * MSE(priors).
FSRGAN (Sec. 3.2) is the SAME generator trained with a conditional adversarial loss and a perceptual
loss added; the checkpoints are indistinguishable by shapes, so automatic detection reports
``fsrnet``; name the architecture ``fsrgan`` (``models.load("fsrgan", weights=...)``) to get
``spec.variant == "fsrgan"``. Nothing else differs.

Facts from the authors' files (verified): the released models take a 128x128 RGB image in [0, 1]
that is the 16x16 face bicubically upsampled x8 (``data/*_LR_8x``), and return a table whose
``nStack * 2``-th entry (nStack = 2) is the final image (``test_Helen_8x.lua``). Their LR_8x files
match MATLAB ``imresize`` bicubic (Keys a = -0.5, antialiased down, symmetric borders) down x8 then up
x8 to ~1.6/255 RMS (JPEG noise), clearly better than PyTorch/OpenCV bicubic (checked on 5 Helen
images). So ``forward(x)`` takes the 16x16 LR face and does that x8 MATLAB-style cubic upsampling
INSIDE the module (scale 8 from the caller's view); ``forward_upsampled`` takes an already
upsampled image (the authors' data).

Unverified against the paper text (our choices, read from shapes where they matter): residual
block = conv-BN-ReLU-conv-BN + identity in the SR branches; Newell's pre-activation bottleneck in the
prior branch; HourGlass depth 4 and Newell's inter-stack merge; the decoder consumes the last stack's
feature map (width 128) as "prior features"; no output activation (images in [0, 1]); 68 landmarks and
11 parsing classes as defaults (Helen provides 194 landmarks; the counts are read from shapes).

Converting the authors' ``.t7`` (not done, not verifiable here: no binary, no Torch7): read it with
``torchfile``; the nngraph ``gModule`` lists its nodes in ``forwardnodes`` (``node.data.module``).
Map ``(cudnn.)SpatialConvolution`` -> Conv2d (weight may be stored 2-D, reshape to (out, in, kH, kW);
dW/padW give stride/padding), ``SpatialFullConvolution`` -> ConvTranspose2d (weight already
(in, out, kH, kW); adjW -> output_padding), ``SpatialBatchNormalization`` -> BatchNorm2d (old files
may hold ``running_std`` = 1/sqrt(var + eps) instead of ``running_var``), ``CAddTable`` = residual
sums, ``JoinTable`` = concatenations (Lua 1-based dims), ``SpatialMaxPooling`` /
``SpatialUpSamplingNearest`` = hourglass pooling; the output table is (..., final SR at index
nStack*2). The converter must check the recovered topology against ``FSRNet`` (block counts, widths,
BN presence, head placement) and adapt the module where our unverified choices differ.
"""
from __future__ import annotations

import math
import re
from typing import Iterable, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .spec import Architecture, ModelSpec, StateDict, UnknownCheckpoint

SCALE = 8


# ----------------------------------------------------------------------------------------------
# MATLAB-style bicubic resampling (the authors' LR_8x inputs are made this way)
# ----------------------------------------------------------------------------------------------

def _keys_cubic(x: np.ndarray, a: float = -0.5) -> np.ndarray:
    ax = np.abs(x)
    return (((a + 2) * ax ** 3 - (a + 3) * ax ** 2 + 1) * (ax <= 1)
            + (a * ax ** 3 - 5 * a * ax ** 2 + 8 * a * ax - 4 * a) * ((ax > 1) & (ax <= 2)))


def matlab_cubic_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out x n_in) matrix of MATLAB ``imresize(..., 'bicubic')`` along one axis (antialiased when
    shrinking, symmetric borders, weights normalised to 1)."""
    scale = n_out / n_in
    width, kern = 4.0, _keys_cubic
    if scale < 1:
        width = width / scale
        kern = lambda t: scale * _keys_cubic(scale * t)  # noqa: E731
    u = np.arange(1, n_out + 1) / scale + 0.5 * (1 - 1 / scale)
    idx = np.floor(u - width / 2)[:, None] + np.arange(int(math.ceil(width)) + 2)[None, :]
    w = kern(u[:, None] - idx)
    w = w / w.sum(1, keepdims=True)
    mirror = np.concatenate([np.arange(n_in), np.arange(n_in)[::-1]])
    src = mirror[np.mod(idx - 1, 2 * n_in).astype(np.int64)]
    m = np.zeros((n_out, n_in))
    np.add.at(m, (np.repeat(np.arange(n_out), w.shape[1]), src.ravel()), w.ravel())
    return m


def matlab_resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """MATLAB-style bicubic resize of (..., H, W) to ``size`` (matrix form; for data preparation:
    HR -> LR training pairs. Not for tracing: the matrices are built from the input shape)."""
    mh = torch.from_numpy(matlab_cubic_matrix(x.shape[-2], size[0])).to(x)
    mw = torch.from_numpy(matlab_cubic_matrix(x.shape[-1], size[1])).to(x)
    return torch.einsum("ih,...hw,jw->...ij", mh, x, mw)


def _phase_taps(s: int) -> torch.Tensor:
    """(s, 5) Keys-cubic taps for integer upscaling by s: output k*s + r reads inputs k-2 .. k+2."""
    d = (np.arange(s) + 0.5) / s - 0.5
    return torch.from_numpy(_keys_cubic(d[:, None] - (np.arange(5)[None, :] - 2))).float()


def _upsample_last_dim(x: torch.Tensor, taps: torch.Tensor) -> torch.Tensor:
    s = taps.shape[0]
    n = x.shape[-1]
    if n >= 2:   # symmetric padding by 2 (MATLAB's index mirroring)
        x = torch.cat([x[..., 1:2], x[..., 0:1], x, x[..., -1:], x[..., -2:-1]], dim=-1)
    else:        # a single pixel: every tap reads it
        x = torch.cat([x] * 5, dim=-1)
    lead = x.shape[:-1]
    y = F.conv1d(x.reshape(-1, 1, n + 4), taps.to(x.dtype).unsqueeze(1))  # (M, s, n)
    return y.transpose(1, 2).reshape(*lead, n * s)


def cubic_upsample(x: torch.Tensor, s: int = SCALE, taps: torch.Tensor | None = None) -> torch.Tensor:
    """MATLAB ``imresize(x, s, 'bicubic')`` for an integer factor s, as shape-agnostic convolutions
    (so the module traces and runs on any size). Equals ``matlab_resize`` to float precision."""
    if taps is None:
        taps = _phase_taps(s).to(x.device)
    y = _upsample_last_dim(x, taps)
    return _upsample_last_dim(y.transpose(-1, -2), taps).transpose(-1, -2)


# ----------------------------------------------------------------------------------------------
# building blocks
# ----------------------------------------------------------------------------------------------

class ResBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN + identity (SR branches; unverified which variant the paper used)."""

    def __init__(self, ch: int):
        super().__init__()
        self.conv1 = nn.Conv2d(ch, ch, 3, 1, 1)
        self.bn1 = nn.BatchNorm2d(ch)
        self.conv2 = nn.Conv2d(ch, ch, 3, 1, 1)
        self.bn2 = nn.BatchNorm2d(ch)

    def forward(self, x):
        return x + self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))


class Bottleneck(nn.Module):
    """Newell et al.'s pre-activation residual module: BN-ReLU-1x1(c/2)-BN-ReLU-3x3-BN-ReLU-1x1(c)."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        mid = cout // 2
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, mid, 1)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv2 = nn.Conv2d(mid, mid, 3, 1, 1)
        self.bn3 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(mid, cout, 1)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else None

    def forward(self, x):
        y = self.conv1(F.relu(self.bn1(x)))
        y = self.conv2(F.relu(self.bn2(y)))
        y = self.conv3(F.relu(self.bn3(y)))
        return y + (x if self.skip is None else self.skip(x))


class HourGlass(nn.Module):
    """Recursive hourglass: at level k, ``skip[k]`` keeps the resolution, ``down[k]`` works after a 2x2
    max-pool, the inner level (or ``bottom``) follows, ``up[k]`` then nearest-upsampling back and a sum.
    Upsampling goes to the skip branch's size, so odd sizes work (identical to x2 for even sizes)."""

    def __init__(self, ch: int, depth: int):
        super().__init__()
        self.skip = nn.ModuleList(Bottleneck(ch, ch) for _ in range(depth))
        self.down = nn.ModuleList(Bottleneck(ch, ch) for _ in range(depth))
        self.up = nn.ModuleList(Bottleneck(ch, ch) for _ in range(depth))
        self.bottom = Bottleneck(ch, ch)

    def _level(self, k: int, x: torch.Tensor) -> torch.Tensor:
        hi = self.skip[k](x)
        lo = self.down[k](F.max_pool2d(x, 2, 2))
        lo = self._level(k + 1, lo) if k + 1 < len(self.skip) else self.bottom(lo)
        lo = self.up[k](lo)
        return hi + F.interpolate(lo, size=hi.shape[-2:], mode="nearest")

    def forward(self, x):
        return self._level(0, x)


class CoarseSR(nn.Module):
    """Paper Sec. 3.3: 3x3 conv, residual blocks, 3x3 conv to the coarse image."""

    def __init__(self, width: int = 64, blocks: int = 3):
        super().__init__()
        self.head = nn.Conv2d(3, width, 3, 1, 1)
        self.body = nn.Sequential(*(ResBlock(width) for _ in range(blocks)))
        self.tail = nn.Conv2d(width, 3, 3, 1, 1)

    def forward(self, x):
        return self.tail(self.body(F.relu(self.head(x))))


class FineEncoder(nn.Module):
    """Paper Sec. 3.3: 3x3 conv with stride 2 (to the prior resolution), residual blocks."""

    def __init__(self, width: int = 64, blocks: int = 12):
        super().__init__()
        self.head = nn.Conv2d(3, width, 3, 2, 1)
        self.body = nn.Sequential(*(ResBlock(width) for _ in range(blocks)))
        self.tail = nn.Conv2d(width, width, 3, 1, 1)

    def forward(self, x):
        return self.tail(self.body(F.relu(self.head(x))))


class PriorEstimation(nn.Module):
    """Paper Sec. 3.3: 7x7 conv stride 2, residual blocks, stacked HourGlass blocks; each stack predicts
    landmark heatmaps and parsing maps (intermediate supervision, Newell-style merge between stacks)."""

    def __init__(self, stem: int = 64, width: int = 128, blocks: int = 3, stacks: int = 2,
                 depth: int = 4, landmarks: int = 68, parsing: int = 11):
        super().__init__()
        self.head = nn.Conv2d(3, stem, 7, 2, 3)
        self.head_bn = nn.BatchNorm2d(stem)
        self.body = nn.Sequential(*(Bottleneck(stem if i == 0 else width, width) for i in range(blocks)))
        self.hourglasses = nn.ModuleList(HourGlass(width, depth) for _ in range(stacks))
        self.stack_res = nn.ModuleList(Bottleneck(width, width) for _ in range(stacks))
        self.stack_conv = nn.ModuleList(nn.Conv2d(width, width, 1) for _ in range(stacks))
        self.stack_bn = nn.ModuleList(nn.BatchNorm2d(width) for _ in range(stacks))
        self.landmark_heads = nn.ModuleList(nn.Conv2d(width, landmarks, 1) for _ in range(stacks)) \
            if landmarks else None
        self.parsing_heads = nn.ModuleList(nn.Conv2d(width, parsing, 1) for _ in range(stacks)) \
            if parsing else None
        self.merge_features = nn.ModuleList(nn.Conv2d(width, width, 1) for _ in range(stacks - 1))
        self.merge_priors = nn.ModuleList(nn.Conv2d(landmarks + parsing, width, 1)
                                          for _ in range(stacks - 1)) if landmarks + parsing else None
        self.landmarks, self.parsing, self.stacks = landmarks, parsing, stacks

    def forward(self, x):
        """-> (features of the last stack, [landmark heatmaps per stack], [parsing maps per stack])."""
        x = self.body(F.relu(self.head_bn(self.head(x))))
        lms: list[torch.Tensor] = []
        pms: list[torch.Tensor] = []
        feat = x
        for s in range(self.stacks):
            feat = self.stack_res[s](self.hourglasses[s](x))
            feat = F.relu(self.stack_bn[s](self.stack_conv[s](feat)))
            priors = []
            if self.landmark_heads is not None:
                lms.append(self.landmark_heads[s](feat))
                priors.append(lms[-1])
            if self.parsing_heads is not None:
                pms.append(self.parsing_heads[s](feat))
                priors.append(pms[-1])
            if s < self.stacks - 1:
                x = x + self.merge_features[s](feat)
                if self.merge_priors is not None:
                    x = x + self.merge_priors[s](torch.cat(priors, 1))
        return feat, lms, pms


class FineDecoder(nn.Module):
    """Paper Sec. 3.3: concat(f, p) -> 3x3 conv to 64, 4x4 deconvolution x2, residual blocks, 3x3 conv."""

    def __init__(self, cin: int = 192, width: int = 64, blocks: int = 3):
        super().__init__()
        self.head = nn.Conv2d(cin, width, 3, 1, 1)
        self.up = nn.ConvTranspose2d(width, width, 4, 2, 1)
        self.body = nn.Sequential(*(ResBlock(width) for _ in range(blocks)))
        self.tail = nn.Conv2d(width, 3, 3, 1, 1)

    def forward(self, x):
        return self.tail(self.body(F.relu(self.up(F.relu(self.head(x))))))


class FSRNet(nn.Module):
    """FSRNet generator. ``forward(lr)``: (N,3,h,w) RGB [0,1] LR face -> (N,3,8h,8w) SR face.

    Defaults are the paper's configuration as far as it could be read (see module docstring)."""

    def __init__(self, coarse_width: int = 64, coarse_blocks: int = 3, encoder_width: int = 64,
                 encoder_blocks: int = 12, prior_stem: int = 64, prior_width: int = 128,
                 prior_blocks: int = 3, stacks: int = 2, hourglass_depth: int = 4, landmarks: int = 68,
                 parsing: int = 11, decoder_width: int = 64, decoder_blocks: int = 3):
        super().__init__()
        self.coarse = CoarseSR(coarse_width, coarse_blocks)
        self.encoder = FineEncoder(encoder_width, encoder_blocks)
        self.prior = PriorEstimation(prior_stem, prior_width, prior_blocks, stacks, hourglass_depth,
                                     landmarks, parsing)
        self.decoder = FineDecoder(encoder_width + prior_width, decoder_width, decoder_blocks)
        self.register_buffer("upsample_taps", _phase_taps(SCALE), persistent=False)
        self.scale = SCALE

    def upsample(self, lr: torch.Tensor) -> torch.Tensor:
        """The x8 MATLAB-style bicubic pre-upsampling the authors applied to their inputs."""
        return cubic_upsample(lr, SCALE, self.upsample_taps)

    def forward_all(self, x: torch.Tensor, upsampled: bool = False) -> dict[str, object]:
        """All outputs (training/debugging): ``input`` (the upsampled LR), ``coarse`` (y_c),
        ``landmarks`` / ``parsing`` (lists, one map per stack, at half the HR size), ``sr``."""
        x_up = x if upsampled else self.upsample(x)
        coarse = self.coarse(x_up)
        f = self.encoder(coarse)
        p, lms, pms = self.prior(coarse)
        sr = self.decoder(torch.cat([f, p], 1))
        return {"input": x_up, "coarse": coarse, "landmarks": lms, "parsing": pms, "sr": sr}

    def forward_upsampled(self, x_up: torch.Tensor) -> torch.Tensor:
        """The authors' convention: input already bicubic-upsampled to the output size (even H, W)."""
        return self.forward_all(x_up, upsampled=True)["sr"]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_all(x)["sr"]


# ----------------------------------------------------------------------------------------------
# FSRGAN discriminator (paper Sec. 3.2: conditional GAN, D sees the input with the image)
# ----------------------------------------------------------------------------------------------

class FSRGANDiscriminator(nn.Module):
    """Small conditional PatchGAN-style discriminator on concat(upsampled LR, HR-or-SR) (6 channels).
    Our design (the paper's D architecture is not given in the files we could read): 4x4 stride-2
    convs with LeakyReLU 0.2, widths w, 2w, 4w, 8w, then a 3x3 conv to one logit map."""

    def __init__(self, width: int = 64, layers: int = 4):
        super().__init__()
        mods: list[nn.Module] = []
        cin = 6
        for i in range(layers):
            cout = width * 2 ** i
            mods += [nn.Conv2d(cin, cout, 4, 2, 1), nn.LeakyReLU(0.2)]
            cin = cout
        mods.append(nn.Conv2d(cin, 1, 3, 1, 1))
        self.body = nn.Sequential(*mods)

    def forward(self, x_up: torch.Tensor, img: torch.Tensor) -> torch.Tensor:
        return self.body(torch.cat([x_up, img], 1))


# ----------------------------------------------------------------------------------------------
# training entry points
# ----------------------------------------------------------------------------------------------

DEFAULT_WEIGHTS = {"coarse": 1.0, "sr": 1.0, "prior": 1.0, "perceptual": 0.01, "adversarial": 0.01}


def _prior_target(t: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Float maps (N,C,H,W) or a class-index map (N,H,W) -> float maps at the prediction's size."""
    if t.dim() == 3:   # parsing labels -> one-hot maps
        t = F.one_hot(t.long(), ref.shape[1]).permute(0, 3, 1, 2)
    t = t.to(ref.dtype)
    if t.shape[-2:] != ref.shape[-2:]:
        t = F.interpolate(t, size=ref.shape[-2:], mode="area")
    return t


def training_loss(net: FSRNet, lr: torch.Tensor, hr: torch.Tensor, *,
                  landmarks: torch.Tensor | None = None, parsing: torch.Tensor | None = None,
                  discriminator: FSRGANDiscriminator | None = None, feature_net=None,
                  weights: Mapping[str, float] | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """The paper's generator objective (Eq. 1-4 as read; constants unverified).

    ``lr``: the 16x16-style LR (h = H/8) or the authors' pre-upsampled image (same size as ``hr``).
    ``landmarks``: target heatmaps (N, L, H', W'); ``parsing``: target maps (N, P, H', W') or labels
    (N, H', W'); both are resized to the prior resolution. FSRNet = pixel terms + prior term;
    FSRGAN adds ``weights['perceptual'] * MSE(feature_net(sr), feature_net(hr))`` (the paper uses a
    pretrained VGG; pass any frozen feature extractor) and ``weights['adversarial']`` times the
    non-saturating conditional GAN loss when a ``discriminator`` is given.
    """
    w = {**DEFAULT_WEIGHTS, **(weights or {})}
    out = net.forward_all(lr, upsampled=lr.shape[-2:] == hr.shape[-2:])
    if out["sr"].shape != hr.shape:
        raise ValueError(f"SR output {tuple(out['sr'].shape)} does not match HR {tuple(hr.shape)}")
    logs: dict[str, float] = {}
    l_coarse = F.mse_loss(out["coarse"], hr)
    l_sr = F.mse_loss(out["sr"], hr)
    loss = w["coarse"] * l_coarse + w["sr"] * l_sr
    logs.update(coarse=l_coarse.item(), sr=l_sr.item())
    l_prior = hr.new_zeros(())
    for key, target in (("landmarks", landmarks), ("parsing", parsing)):
        if target is not None and out[key]:
            t = _prior_target(target, out[key][0])
            l_prior = l_prior + sum(F.mse_loss(p, t) for p in out[key])
    if landmarks is not None or parsing is not None:
        loss = loss + w["prior"] * l_prior
        logs["prior"] = l_prior.item()
    if feature_net is not None:
        l_perc = F.mse_loss(feature_net(out["sr"]), feature_net(hr).detach())
        loss = loss + w["perceptual"] * l_perc
        logs["perceptual"] = l_perc.item()
    if discriminator is not None:
        logits = discriminator(out["input"], out["sr"])
        l_adv = F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits))
        loss = loss + w["adversarial"] * l_adv
        logs["adversarial"] = l_adv.item()
    logs["loss"] = loss.item()
    return loss, logs


def discriminator_loss(discriminator: FSRGANDiscriminator, x_up: torch.Tensor, hr: torch.Tensor,
                       sr: torch.Tensor) -> torch.Tensor:
    """Conditional GAN discriminator loss: real pairs (x_up, hr) -> 1, fake pairs (x_up, sr) -> 0."""
    real = discriminator(x_up, hr)
    fake = discriminator(x_up, sr.detach())
    return (F.binary_cross_entropy_with_logits(real, torch.ones_like(real))
            + F.binary_cross_entropy_with_logits(fake, torch.zeros_like(fake)))


def make_lr(hr: torch.Tensor, scale: int = SCALE) -> torch.Tensor:
    """HR (N,3,H,W) -> LR (N,3,H/s,W/s) with MATLAB bicubic, the authors' degradation."""
    return matlab_resize(hr, (hr.shape[-2] // scale, hr.shape[-1] // scale)).clamp(0, 1)


def cycle_batches(batches: Iterable[Mapping[str, torch.Tensor]]):
    """Yield from ``batches`` again and again (a list, a DataLoader: anything re-iterable)."""
    while True:
        n = 0
        for b in batches:
            n += 1
            yield b
        if n == 0:
            raise ValueError("no training batches (a one-shot iterator cannot be cycled: pass a list "
                             "or a DataLoader)")


def train(net: FSRNet, batches: Iterable[Mapping[str, torch.Tensor]], steps: int, *,
          lr: float = 2.5e-4, discriminator: FSRGANDiscriminator | None = None, feature_net=None,
          weights: Mapping[str, float] | None = None, device: str | torch.device | None = None,
          optimizer: torch.optim.Optimizer | None = None) -> list[dict[str, float]]:
    """Minimal training loop (the hook a generic job calls). ``batches`` yields dicts with ``hr`` and
    optionally ``lr`` (made with ``make_lr`` when absent), ``landmarks``, ``parsing``; it is iterated
    again and again (pass something re-iterable) until ``steps`` updates are done. RMSprop at 2.5e-4
    as in the paper (unverified); with a discriminator (FSRGAN) D gets one Adam step per G step.
    Returns one log dict per step."""
    device = torch.device(device) if device is not None else next(net.parameters()).device
    net.to(device).train()
    opt = optimizer or torch.optim.RMSprop(net.parameters(), lr=lr)
    opt_d = None
    if discriminator is not None:
        discriminator.to(device).train()
        opt_d = torch.optim.Adam(discriminator.parameters(), lr=lr, betas=(0.5, 0.999))
    logs: list[dict[str, float]] = []
    for batch in cycle_batches(batches):
        if len(logs) >= steps:
            break
        hr = batch["hr"].to(device)
        lr_img = batch["lr"].to(device) if "lr" in batch else make_lr(hr)
        extra = {k: batch[k].to(device) for k in ("landmarks", "parsing") if k in batch}
        if discriminator is not None:
            with torch.no_grad():
                out = net.forward_all(lr_img, upsampled=lr_img.shape[-2:] == hr.shape[-2:])
            opt_d.zero_grad()
            d_loss = discriminator_loss(discriminator, out["input"], hr, out["sr"])
            d_loss.backward()
            opt_d.step()
        opt.zero_grad()
        loss, log = training_loss(net, lr_img, hr, discriminator=discriminator,
                                  feature_net=feature_net, weights=weights, **extra)
        loss.backward()
        opt.step()
        if discriminator is not None:
            log["discriminator"] = d_loss.item()
        logs.append(log)
    return logs


# ----------------------------------------------------------------------------------------------
# registry: detection and construction from a state dict
# ----------------------------------------------------------------------------------------------

_REQUIRED = ("coarse.head.weight", "coarse.tail.weight", "encoder.head.weight", "encoder.tail.weight",
             "prior.head.weight", "prior.hourglasses.0.bottom.conv1.weight", "prior.stack_conv.0.weight",
             "decoder.head.weight", "decoder.up.weight", "decoder.tail.weight")


def detect(sd: StateDict) -> bool:
    return all(k in sd for k in _REQUIRED) and any(k.startswith(("prior.landmark_heads.",
                                                                 "prior.parsing_heads.")) for k in sd)


def _count(sd: StateDict, pattern: str) -> int:
    rx = re.compile(pattern)
    found = {int(m.group(1)) for k in sd for m in [rx.match(k)] if m}
    n = len(found)
    if found != set(range(n)):
        raise UnknownCheckpoint(f"fsrnet: non-contiguous indices for {pattern!r}: {sorted(found)}")
    return n


def hyperparams_from_state_dict(sd: StateDict) -> dict[str, int]:
    """Every constructor argument of ``FSRNet``, read off tensor shapes and key indices."""
    try:
        lm = sd.get("prior.landmark_heads.0.weight")
        pm = sd.get("prior.parsing_heads.0.weight")
        hp = {
            "coarse_width": sd["coarse.head.weight"].shape[0],
            "coarse_blocks": _count(sd, r"coarse\.body\.(\d+)\.conv1\.weight$"),
            "encoder_width": sd["encoder.head.weight"].shape[0],
            "encoder_blocks": _count(sd, r"encoder\.body\.(\d+)\.conv1\.weight$"),
            "prior_stem": sd["prior.head.weight"].shape[0],
            "prior_width": sd["prior.stack_conv.0.weight"].shape[0],
            "prior_blocks": _count(sd, r"prior\.body\.(\d+)\.conv1\.weight$"),
            "stacks": _count(sd, r"prior\.hourglasses\.(\d+)\.bottom\.conv1\.weight$"),
            "hourglass_depth": _count(sd, r"prior\.hourglasses\.0\.skip\.(\d+)\.conv1\.weight$"),
            "landmarks": 0 if lm is None else lm.shape[0],
            "parsing": 0 if pm is None else pm.shape[0],
            "decoder_width": sd["decoder.head.weight"].shape[0],
            "decoder_blocks": _count(sd, r"decoder\.body\.(\d+)\.conv1\.weight$"),
        }
    except (KeyError, IndexError, AttributeError) as e:
        raise UnknownCheckpoint(f"fsrnet: incomplete state dict ({e})") from None
    if hp["prior_blocks"] < 1 or hp["hourglass_depth"] < 1 or hp["landmarks"] + hp["parsing"] == 0:
        raise UnknownCheckpoint("fsrnet: prior network needs >=1 residual block, depth >=1 and a head")
    return {k: int(v) for k, v in hp.items()}


def _spec(variant: str, hp: Mapping[str, int]) -> ModelSpec:
    return ModelSpec(
        arch="fsrnet", variant=variant, scale=SCALE, input_range=1.0, channel_order="RGB", mean=None,
        extra_inputs=(), output="image", size_multiple=1,
        hyperparams={**hp, "input": "LR face (N,3,h,w) RGB [0,1]; forward() upsamples x8 with "
                     "MATLAB-style bicubic inside the module (use forward_upsampled() for the authors' "
                     "pre-upsampled 128x128 inputs)",
                     "face_size": 16, "output_size": 128,
                     "priors": "forward_all(): landmark heatmaps / parsing maps at half the HR size"})


def _from_state_dict(variant: str):
    def build(sd: StateDict) -> tuple[nn.Module, ModelSpec]:
        if not detect(sd):
            raise UnknownCheckpoint("not an FSRNet state dict")
        hp = hyperparams_from_state_dict(sd)
        return FSRNet(**hp), _spec(variant, hp)
    return build


ARCHITECTURES = (
    Architecture(name="fsrnet", detect=detect, from_state_dict=_from_state_dict("fsrnet"), scales=(SCALE,)),
    # Same shapes; only reachable by name (models.load("fsrgan", weights=...)): detection order puts
    # "fsrnet" first because an adversarially trained checkpoint cannot be told apart.
    Architecture(name="fsrgan", detect=detect, from_state_dict=_from_state_dict("fsrgan"), scales=(SCALE,)),
)

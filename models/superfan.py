"""Super-FAN: "Super-FAN: Integrated facial landmark localization and super-resolution of real-world
low resolution faces in arbitrary poses with GANs" (Bulat & Tzimiropoulos, CVPR 2018).
16x16 face -> 64x64 face (x4), trained jointly with a face-alignment network through a heatmap loss.

No code or weights were released, so both networks here are our own re-implementation and register
as two architectures:

* ``superfan``: the generator (paper Fig. 2, Sec. 3-4). A residual network that does most of its
  work at the LR resolution and upsamples progressively: head conv, 12 residual blocks at 16x16,
  x2 upsampling, 3 blocks at 32x32, x2 upsampling, 2 blocks at 64x64, output conv. Our key layout:
  ``head``, ``stages.{s}.{b}`` (residual blocks), ``upsamplers.{s}`` (BN-ReLU-4x4 deconvolution
  stride 2), ``tail_bn`` + ``tail``. Width, blocks per stage and the number of x2 stages (hence the
  scale) are read from shapes. Unverified against the paper text: the block counts 12/3/2 (from our
  reading of Fig. 2), the residual block (conv-BN-ReLU-conv-BN + identity, as SRResNet), deconvolution
  upsampling, the 3x3 head, no output activation (RGB in [0, 1]).
* ``fan``: the Face Alignment Network (Bulat & Tzimiropoulos, ICCV 2017) used for the heatmap loss:
  stacked hourglasses of hierarchical, parallel, multi-scale ConvBlocks predicting 68 landmark
  heatmaps at 1/4 of the input size. It uses the key layout of the same author's public PyTorch
  package ``1adrianb/face-alignment`` (``face_alignment/models.py``: ``conv1``, ``bn1``,
  ``conv2..4``, ``m{i}.b1_{level}``/``b2_{level}``/``b2_plus_1``/``b3_{level}``, ``top_m_{i}``,
  ``conv_last{i}``, ``bn_end{i}``, ``l{i}``, ``bl{i}``, ``al{i}``), so its released 2DFAN-4 /
  3DFAN-4 ``.pth.tar`` state dicts should load (not verified: no file here; 24.0M parameters, as
  those ~95 MB files imply). Stacks, hourglass depth, widths and landmark count are read from shapes;
  the pooling kind is not (max in the code that loads the .pth.tar files, average in the package's
  later TorchScript models: ``FAN(pool="avg")``). Input RGB [0, 1], a 256x256 face crop in that
  package; output heatmaps (N, 68, H/4, W/4). In Super-FAN the FAN sees the SR/HR images
  (``fan_input_size`` resizes them, e.g. 64 -> 256 for the public weights).

Losses (paper Sec. 4, weights unverified): pixel MSE, a perceptual (feature) loss, the heatmap loss
``1/N sum_n sum_ij (M~_n(i,j) - M^_n(i,j))^2`` between FAN heatmaps of the SR image and of the HR
image (or ground-truth heatmaps, which also trains the FAN jointly), and a WGAN-GP adversarial term
(critic: small documented module ``SuperFANCritic``, our design).
"""
from __future__ import annotations

import re
from typing import Iterable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .fsrnet import cycle_batches, matlab_resize
from .spec import Architecture, ModelSpec, StateDict, UnknownCheckpoint

SCALE = 4


# ----------------------------------------------------------------------------------------------
# generator
# ----------------------------------------------------------------------------------------------

class ResBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN + identity."""

    def __init__(self, ch: int):
        super().__init__()
        self.conv1 = nn.Conv2d(ch, ch, 3, 1, 1)
        self.bn1 = nn.BatchNorm2d(ch)
        self.conv2 = nn.Conv2d(ch, ch, 3, 1, 1)
        self.bn2 = nn.BatchNorm2d(ch)

    def forward(self, x):
        return x + self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))


class Upsampler(nn.Module):
    """BN-ReLU-ConvTranspose(4x4, stride 2, pad 1): exactly doubles H and W (odd sizes too)."""

    def __init__(self, ch: int):
        super().__init__()
        self.bn = nn.BatchNorm2d(ch)
        self.deconv = nn.ConvTranspose2d(ch, ch, 4, 2, 1)

    def forward(self, x):
        return self.deconv(F.relu(self.bn(x)))


class SuperFANGenerator(nn.Module):
    """``forward(lr)``: (N,3,h,w) RGB [0,1] -> (N,3,s*h,s*w), s = 2 ** (len(blocks) - 1)."""

    def __init__(self, width: int = 64, blocks: Sequence[int] = (12, 3, 2), head_kernel: int = 3):
        super().__init__()
        self.head = nn.Conv2d(3, width, head_kernel, 1, head_kernel // 2)
        self.stages = nn.ModuleList(nn.Sequential(*(ResBlock(width) for _ in range(n))) for n in blocks)
        self.upsamplers = nn.ModuleList(Upsampler(width) for _ in range(len(blocks) - 1))
        self.tail_bn = nn.BatchNorm2d(width)
        self.tail = nn.Conv2d(width, 3, 3, 1, 1)
        self.scale = 2 ** (len(blocks) - 1)

    def forward(self, x):
        x = F.relu(self.head(x))
        for s, stage in enumerate(self.stages):
            x = stage(x)
            if s < len(self.upsamplers):
                x = self.upsamplers[s](x)
        return self.tail(F.relu(self.tail_bn(x)))


# ----------------------------------------------------------------------------------------------
# FAN (face-alignment key layout)
# ----------------------------------------------------------------------------------------------

class ConvBlock(nn.Module):
    """Hierarchical, parallel & multi-scale block: three pre-activated 3x3 convs of widths c/2, c/4,
    c/4 whose outputs are concatenated (c channels) and added to the (projected) input."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        c1, c2 = cout // 2, cout // 4
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, c1, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c1)
        self.conv2 = nn.Conv2d(c1, c2, 3, 1, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(c2)
        self.conv3 = nn.Conv2d(c2, c2, 3, 1, 1, bias=False)
        self.downsample = nn.Sequential(nn.BatchNorm2d(cin), nn.ReLU(),
                                        nn.Conv2d(cin, c1 + 2 * c2, 1, bias=False)) \
            if cin != c1 + 2 * c2 else None

    def forward(self, x):
        o1 = self.conv1(F.relu(self.bn1(x)))
        o2 = self.conv2(F.relu(self.bn2(o1)))
        o3 = self.conv3(F.relu(self.bn3(o2)))
        res = x if self.downsample is None else self.downsample(x)
        return torch.cat([o1, o2, o3], 1) + res


def _pool(x: torch.Tensor, kind: str) -> torch.Tensor:
    return F.avg_pool2d(x, 2, 2) if kind == "avg" else F.max_pool2d(x, 2, 2)


class FANHourGlass(nn.Module):
    """Hourglass with the face-alignment names: level L (depth..1) has ``b1_L`` (full-res branch),
    ``b2_L`` (after max-pool), ``b3_L`` (before upsampling); the innermost adds ``b2_plus_1``."""

    def __init__(self, depth: int, ch: int, pool: str = "max"):
        super().__init__()
        self.depth = depth
        self.pool = pool
        for level in range(depth, 0, -1):
            self.add_module(f"b1_{level}", ConvBlock(ch, ch))
            self.add_module(f"b2_{level}", ConvBlock(ch, ch))
            if level == 1:
                self.add_module("b2_plus_1", ConvBlock(ch, ch))
            self.add_module(f"b3_{level}", ConvBlock(ch, ch))

    def _level(self, level: int, x: torch.Tensor) -> torch.Tensor:
        up1 = self._modules[f"b1_{level}"](x)
        low = self._modules[f"b2_{level}"](_pool(x, self.pool))
        low = self._level(level - 1, low) if level > 1 else self._modules["b2_plus_1"](low)
        low = self._modules[f"b3_{level}"](low)
        return up1 + F.interpolate(low, size=up1.shape[-2:], mode="nearest")

    def forward(self, x):
        return self._level(self.depth, x)


class FAN(nn.Module):
    """``forward(face)``: (N,3,H,W) RGB [0,1] -> last stack's heatmaps (N, landmarks, H/4, W/4).

    ``pool``: "max" as in face-alignment's ``models.py`` (read at commit 0ff5261, the code that loads
    the ``.pth.tar`` weights); the later ``models/fan.py`` (commit 2e0f111), used with the
    TorchScript-packaged models, pools by averaging: pass ``pool="avg"`` for weights taken from those.
    Pooling leaves no trace in the shapes."""

    def __init__(self, stacks: int = 4, depth: int = 4, width: int = 256, landmarks: int = 68,
                 stem: Sequence[int] = (64, 128, 128), stem_kernel: int = 7, pool: str = "max"):
        super().__init__()
        if pool not in ("max", "avg"):
            raise ValueError(f"pool must be 'max' or 'avg', not {pool!r}")
        self.pool = pool
        s0, s1, s2 = stem
        self.conv1 = nn.Conv2d(3, s0, stem_kernel, 2, stem_kernel // 2)
        self.bn1 = nn.BatchNorm2d(s0)
        self.conv2 = ConvBlock(s0, s1)
        self.conv3 = ConvBlock(s1, s2)
        self.conv4 = ConvBlock(s2, width)
        self.stacks = stacks
        for i in range(stacks):
            self.add_module(f"m{i}", FANHourGlass(depth, width, pool))
            self.add_module(f"top_m_{i}", ConvBlock(width, width))
            self.add_module(f"conv_last{i}", nn.Conv2d(width, width, 1))
            self.add_module(f"bn_end{i}", nn.BatchNorm2d(width))
            self.add_module(f"l{i}", nn.Conv2d(width, landmarks, 1))
            if i < stacks - 1:
                self.add_module(f"bl{i}", nn.Conv2d(width, width, 1))
                self.add_module(f"al{i}", nn.Conv2d(landmarks, width, 1))

    def forward_all(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Heatmaps of every stack (intermediate supervision)."""
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.conv4(self.conv3(_pool(self.conv2(x), self.pool)))
        outs = []
        for i in range(self.stacks):
            ll = self._modules[f"top_m_{i}"](self._modules[f"m{i}"](x))
            ll = F.relu(self._modules[f"bn_end{i}"](self._modules[f"conv_last{i}"](ll)))
            outs.append(self._modules[f"l{i}"](ll))
            if i < self.stacks - 1:
                x = x + self._modules[f"bl{i}"](ll) + self._modules[f"al{i}"](outs[-1])
        return outs

    def forward(self, x):
        return self.forward_all(x)[-1]


def heatmaps_to_points(hm: torch.Tensor) -> torch.Tensor:
    """(N, L, h, w) heatmaps -> (N, L, 2) arg-max (x, y) in heatmap pixels (no sub-pixel refinement)."""
    n, l, h, w = hm.shape
    idx = hm.reshape(n, l, -1).argmax(-1)
    return torch.stack([idx % w, idx // w], -1).to(hm.dtype)


# ----------------------------------------------------------------------------------------------
# critic and training entry points
# ----------------------------------------------------------------------------------------------

class SuperFANCritic(nn.Module):
    """Small WGAN critic for 64x64 faces (our design; the paper's D is not reproduced): 3x3 conv, then
    4x4 stride-2 convs doubling the width, LeakyReLU 0.2, no normalisation (WGAN-GP), a 3x3 conv to one
    map averaged to a score per image."""

    def __init__(self, width: int = 64, layers: int = 3):
        super().__init__()
        mods: list[nn.Module] = [nn.Conv2d(3, width, 3, 1, 1), nn.LeakyReLU(0.2)]
        c = width
        for _ in range(layers):
            mods += [nn.Conv2d(c, 2 * c, 4, 2, 1), nn.LeakyReLU(0.2)]
            c *= 2
        mods.append(nn.Conv2d(c, 1, 3, 1, 1))
        self.body = nn.Sequential(*mods)

    def forward(self, x):
        return self.body(x).mean((1, 2, 3))


DEFAULT_WEIGHTS = {"pixel": 1.0, "perceptual": 1.0, "heatmap": 1.0, "adversarial": 1e-3}


def heatmap_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Paper's heatmap loss: squared error summed over pixels, averaged over landmarks and images."""
    if target.shape[-2:] != pred.shape[-2:]:
        target = F.interpolate(target, size=pred.shape[-2:], mode="bilinear", align_corners=False)
    return (pred - target).pow(2).sum((-2, -1)).mean()


def _fan_input(img: torch.Tensor, size: int | None) -> torch.Tensor:
    if size is None or img.shape[-2:] == (size, size):
        return img
    return F.interpolate(img, size=(size, size), mode="bilinear", align_corners=False)


def training_loss(net: SuperFANGenerator, lr: torch.Tensor, hr: torch.Tensor, *, fan: FAN | None = None,
                  heatmaps: torch.Tensor | None = None, feature_net=None,
                  critic: SuperFANCritic | None = None, weights: Mapping[str, float] | None = None,
                  fan_input_size: int | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """Generator objective ``alpha*pixel + beta*feature + gamma*heatmap + zeta*GAN`` (weights unverified).

    ``fan``: the alignment network; its heatmaps of the SR image are compared with ``heatmaps`` (ground
    truth, N x L x h x w, resized to the FAN output; also trains the FAN when its parameters are
    optimised) or, when absent, with the FAN's own heatmaps of ``hr`` (detached). ``fan_input_size``
    resizes both images first (e.g. 256 for the public 2DFAN-4 weights). ``feature_net``: any frozen
    feature extractor for the perceptual term. ``critic``: WGAN critic, generator term -E[critic(sr)].
    """
    w = {**DEFAULT_WEIGHTS, **(weights or {})}
    sr = net(lr)
    if sr.shape != hr.shape:
        raise ValueError(f"SR output {tuple(sr.shape)} does not match HR {tuple(hr.shape)}")
    l_pix = F.mse_loss(sr, hr)
    loss = w["pixel"] * l_pix
    logs = {"pixel": l_pix.item()}
    if fan is not None:
        preds = fan.forward_all(_fan_input(sr, fan_input_size))
        if heatmaps is None:
            with torch.no_grad():
                heatmaps = fan(_fan_input(hr, fan_input_size))
        l_hm = sum(heatmap_loss(p, heatmaps.to(p.dtype)) for p in preds) / len(preds)
        loss = loss + w["heatmap"] * l_hm
        logs["heatmap"] = l_hm.item()
    if feature_net is not None:
        l_feat = F.mse_loss(feature_net(sr), feature_net(hr).detach())
        loss = loss + w["perceptual"] * l_feat
        logs["perceptual"] = l_feat.item()
    if critic is not None:
        l_adv = -critic(sr).mean()
        loss = loss + w["adversarial"] * l_adv
        logs["adversarial"] = l_adv.item()
    logs["loss"] = loss.item()
    return loss, logs


def critic_loss(critic: SuperFANCritic, hr: torch.Tensor, sr: torch.Tensor, gp: float = 10.0) -> torch.Tensor:
    """WGAN-GP critic loss: E[c(sr)] - E[c(hr)] + gp * E[(||grad c(mix)|| - 1)^2]."""
    sr = sr.detach()
    eps = torch.rand(hr.shape[0], 1, 1, 1, device=hr.device, dtype=hr.dtype)
    mix = (eps * hr + (1 - eps) * sr).requires_grad_(True)
    grad, = torch.autograd.grad(critic(mix).sum(), mix, create_graph=True)
    penalty = (grad.flatten(1).norm(dim=1) - 1).pow(2).mean()
    return critic(sr).mean() - critic(hr).mean() + gp * penalty


def make_lr(hr: torch.Tensor, scale: int = SCALE) -> torch.Tensor:
    """HR -> LR by MATLAB-style bicubic (antialiased). The paper also trains on realistic
    degradations; plug your own ``lr`` into the batches for that."""
    return matlab_resize(hr, (hr.shape[-2] // scale, hr.shape[-1] // scale)).clamp(0, 1)


def train(net: SuperFANGenerator, batches: Iterable[Mapping[str, torch.Tensor]], steps: int, *,
          lr: float = 1e-4, fan: FAN | None = None, train_fan: bool = False, feature_net=None,
          critic: SuperFANCritic | None = None, critic_steps: int = 1,
          weights: Mapping[str, float] | None = None, fan_input_size: int | None = None,
          device: str | torch.device | None = None) -> list[dict[str, float]]:
    """Minimal training loop (the hook a generic job calls). ``batches`` yields dicts with ``hr`` and
    optionally ``lr`` (made with ``make_lr`` at the generator's scale when absent) and ``heatmaps``;
    it is iterated again and again (pass something re-iterable) until ``steps`` generator updates.
    Adam for every network; ``train_fan`` fine-tunes the FAN jointly (the paper's integrated
    training), otherwise it stays frozen in eval mode. Returns one log dict per step."""
    device = torch.device(device) if device is not None else next(net.parameters()).device
    net.to(device).train()
    params = list(net.parameters())
    if fan is not None:
        fan.to(device).train(train_fan)
        fan.requires_grad_(train_fan)
        if train_fan:
            params += list(fan.parameters())
    opt = torch.optim.Adam(params, lr=lr, betas=(0.5, 0.999))
    opt_c = None
    if critic is not None:
        critic.to(device).train()
        opt_c = torch.optim.Adam(critic.parameters(), lr=lr, betas=(0.5, 0.9))
    logs: list[dict[str, float]] = []
    for batch in cycle_batches(batches):
        if len(logs) >= steps:
            break
        hr = batch["hr"].to(device)
        lr_img = batch["lr"].to(device) if "lr" in batch else make_lr(hr, net.scale)
        hms = batch["heatmaps"].to(device) if "heatmaps" in batch else None
        c_loss = None
        if critic is not None:
            with torch.no_grad():
                sr = net(lr_img)
            for _ in range(critic_steps):
                opt_c.zero_grad()
                c_loss = critic_loss(critic, hr, sr)
                c_loss.backward()
                opt_c.step()
        opt.zero_grad()
        loss, log = training_loss(net, lr_img, hr, fan=fan, heatmaps=hms, feature_net=feature_net,
                                  critic=critic, weights=weights, fan_input_size=fan_input_size)
        loss.backward()
        opt.step()
        if c_loss is not None:
            log["critic"] = c_loss.item()
        logs.append(log)
    return logs


# ----------------------------------------------------------------------------------------------
# registry
# ----------------------------------------------------------------------------------------------

def _count(sd: StateDict, pattern: str, what: str) -> int:
    rx = re.compile(pattern)
    found = {int(m.group(1)) for k in sd for m in [rx.match(k)] if m}
    if found != set(range(len(found))):
        raise UnknownCheckpoint(f"{what}: non-contiguous indices for {pattern!r}: {sorted(found)}")
    return len(found)


_GEN_REQUIRED = ("head.weight", "upsamplers.0.deconv.weight", "upsamplers.0.bn.running_mean",
                 "tail_bn.running_mean", "tail.weight")


def detect_superfan(sd: StateDict) -> bool:
    return all(k in sd for k in _GEN_REQUIRED) and any(k.startswith("stages.") for k in sd)


def superfan_hyperparams(sd: StateDict) -> dict[str, object]:
    try:
        n_up = _count(sd, r"upsamplers\.(\d+)\.deconv\.weight$", "superfan")
        blocks = tuple(_count(sd, rf"stages\.{s}\.(\d+)\.conv1\.weight$", "superfan") for s in range(n_up + 1))
        head = sd["head.weight"]
        hp = {"width": int(head.shape[0]), "blocks": blocks, "head_kernel": int(head.shape[-1])}
    except (KeyError, IndexError, AttributeError) as e:
        raise UnknownCheckpoint(f"superfan: incomplete state dict ({e})") from None
    stray = sorted({int(k.split(".")[1]) for k in sd if re.match(r"stages\.\d+\.", k)} - set(range(n_up + 1)))
    if stray:
        raise UnknownCheckpoint(f"superfan: stages {stray} have no upsampler before them")
    return hp


def _superfan_from_state_dict(sd: StateDict) -> tuple[nn.Module, ModelSpec]:
    if not detect_superfan(sd):
        raise UnknownCheckpoint("not a Super-FAN generator state dict")
    hp = superfan_hyperparams(sd)
    net = SuperFANGenerator(**hp)
    spec = ModelSpec(arch="superfan", variant="superfan", scale=net.scale, input_range=1.0,
                     channel_order="RGB", mean=None, extra_inputs=(), output="image", size_multiple=1,
                     hyperparams={**hp, "face_size": 16, "output_size": 16 * net.scale,
                                  "input": "LR face (N,3,h,w) RGB [0,1], no pre-upsampling"})
    return net, spec


_FAN_REQUIRED = ("conv1.weight", "bn1.running_mean", "conv2.conv1.weight", "conv3.conv1.weight",
                 "conv4.conv1.weight", "m0.b1_1.conv1.weight", "m0.b2_plus_1.conv1.weight",
                 "top_m_0.conv1.weight", "conv_last0.weight", "bn_end0.running_mean", "l0.weight")


def detect_fan(sd: StateDict) -> bool:
    return all(k in sd for k in _FAN_REQUIRED)


def _block_out(sd: StateDict, prefix: str) -> int:
    return sum(int(sd[f"{prefix}.conv{i}.weight"].shape[0]) for i in (1, 2, 3))


def fan_hyperparams(sd: StateDict) -> dict[str, object]:
    try:
        stacks = _count(sd, r"m(\d+)\.b1_1\.conv1\.weight$", "fan")
        depth = len({int(m.group(1)) for k in sd for m in [re.match(r"m0\.b1_(\d+)\.conv1\.weight$", k)] if m})
        hp = {"stacks": stacks, "depth": depth, "width": _block_out(sd, "conv4"),
              "landmarks": int(sd["l0.weight"].shape[0]),
              "stem": (int(sd["conv1.weight"].shape[0]), _block_out(sd, "conv2"), _block_out(sd, "conv3")),
              "stem_kernel": int(sd["conv1.weight"].shape[-1])}
    except (KeyError, IndexError, AttributeError) as e:
        raise UnknownCheckpoint(f"fan: incomplete state dict ({e})") from None
    if stacks < 1 or depth < 1:
        raise UnknownCheckpoint("fan: no hourglass found")
    return hp


def _fan_from_state_dict(sd: StateDict) -> tuple[nn.Module, ModelSpec]:
    if not detect_fan(sd):
        raise UnknownCheckpoint("not a FAN state dict")
    hp = fan_hyperparams(sd)
    spec = ModelSpec(arch="fan", variant=f"fan-{hp['stacks']}", scale=0, input_range=1.0,
                     channel_order="RGB", mean=None, extra_inputs=(), output="heatmaps", size_multiple=1,
                     hyperparams={**hp, "input": "face crop RGB [0,1], 256x256 in face-alignment",
                                  "heatmap_stride": 4, "pool": "max (pass pool='avg' to FAN for "
                                  "weights from face-alignment's TorchScript models)",
                                  "note": "2D and 3D FAN-4 share shapes; forward_all() gives every stack"})
    return FAN(**hp), spec


ARCHITECTURES = (
    Architecture(name="superfan", detect=detect_superfan, from_state_dict=_superfan_from_state_dict,
                 scales=(SCALE,)),
    Architecture(name="fan", detect=detect_fan, from_state_dict=_fan_from_state_dict, scales=()),
)

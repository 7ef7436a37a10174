"""What an operator must know about a network so that it never guesses: scale, value range,
channel order, mean, and the extra inputs it takes."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Mapping

import torch
from torch import nn

StateDict = Mapping[str, torch.Tensor]


@dataclass(frozen=True)
class ModelSpec:
    arch: str                      # family, e.g. "rdn"
    variant: str                   # e.g. "rdn-edsr", "srmdnf", "dbpn-ll"
    scale: int                     # output size / input size (0 for non-SR nets)
    input_range: float = 1.0       # images enter as values in [0, input_range]
    channel_order: str = "RGB"     # "RGB" or "BGR"
    mean: tuple[float, ...] | None = None   # subtracted after scaling to input_range
    extra_inputs: tuple[str, ...] = ()      # e.g. ("degradation",), ("segmentation",)
    output: str = "image"          # "image" | "residual" (add bicubic LR) | "probabilities" | "dict"
    size_multiple: int = 1         # input H, W must be multiples of this
    hyperparams: Mapping[str, object] = field(default_factory=dict)


class UnknownCheckpoint(ValueError):
    """The file's keys and shapes match no architecture (or not the one asked for)."""


@dataclass(frozen=True)
class Architecture:
    """One family: a detect rule on the state dict, and a builder that reads hyper-parameters
    off tensor shapes (spandrel's convention)."""

    name: str
    detect: Callable[[StateDict], bool]
    from_state_dict: Callable[[StateDict], tuple[nn.Module, ModelSpec]]
    scales: tuple[int, ...] = ()              # scales the published configs exist for (() = any)
    default: Callable[..., tuple[nn.Module, ModelSpec]] | None = None  # usable without weights

"""Bias-free denoising networks: BF-CNN and bias-free UNet (the paper's architectures).

Both predict the noise residual ``r(y) ≈ σ z`` from ``y`` alone (blind: no σ input); the
denoiser is ``f(y) = y − r(y)``. No layer has an additive constant: convolutions have no
bias and the batch normalization divides by a standard deviation without subtracting a
mean or adding a shift (Mohan et al. 2020, used by Kadkhodaie et al. 2024, App. A). With
ReLU, average pooling and transposed convolutions, the network in eval mode is
positively homogeneous, ``r(a y) = a r(y)`` for ``a > 0``, hence ``f(y) = ∇f(y) y``
(SCIENCE.md §6): an adaptive linear map whose Jacobian the analysis code studies.

Layer pattern (both architectures): the first convolution is followed by ReLU, every
inner convolution by bias-free batch normalization and ReLU, the last convolution is
linear. Sizes of the paper (defaults of :class:`NetConfig`): a 21-layer BF-CNN with 64
channels (702,784 parameters) and a UNet with 3 levels of 64, 128, 256 channels and 512
in the middle, two convolutions per block (7,696,192 parameters; the paper says 7.6M).

Weights are initialized from an explicit ``torch.Generator`` (He-normal), the output
convolution at zero (the untrained network is the identity denoiser, as the zero-initialized
output layers of improved-diffusion); building a network never touches the global random
state.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from tbcore.validation import check_bool, check_choice, check_int

from .blind_shrink import BlindShrink

ARCHS = ("bfcnn", "unet")
PADDINGS = ("zeros", "circular")
BN_MOMENTUM = 0.1  # running σ ← (1 − m) running σ + m batch σ
BN_EPS = 1e-5  # added to the variance before the square root


@dataclass(frozen=True)
class NetConfig:
    """Architecture of a bias-free denoiser (defaults: the paper's sizes).

    Attributes
    ----------
    arch : {"bfcnn", "unet"}   BF-CNN (a plain stack of convolutions) or bias-free UNet.
    in_channels : int >= 1     image channels c (the output has as many).
    channels : int >= 1        width: BF-CNN feature maps; UNet level-0 width (level b has
                               ``channels·2^b``, the middle ``channels·2^blocks``).
    depth : int >= 2           BF-CNN: number of convolutional layers (ignored by the UNet).
    blocks : int >= 1          UNet: number of encoder (and decoder) levels (ignored by BF-CNN).
    convs_per_block : int >= 1 UNet: convolutions in each encoder, middle and decoder block.
    kernel : odd int >= 1      convolution kernel side (padding keeps the image size).
    global_mean : bool         UNet: add a linear map of the middle maps' spatial mean back
                               to every middle pixel (a receptive field of the whole image;
                               ignored by the BF-CNN).
    padding : {"zeros", "circular"}   how convolutions extend the maps beyond the border:
                               zeros (the paper's) or periodically (the torus: the MMSE
                               denoiser of a law invariant to cyclic shifts commutes with
                               them, which zero padding breaks at the border; see
                               :func:`net_config_for`). Both paddings are linear in the
                               maps they extend, so homogeneity holds; the UNet commutes
                               with shifts by multiples of 2^blocks when the sides are such
                               multiples.
    shrink : bool              wrap the network in :class:`~theorybench.blind_shrink.BlindShrink`
                               (for blind universal networks): a shrinkage toward μ̂ and a
                               scaled-down residual where the noise level read from the input
                               exceeds the data's scale; the residual form below it.
    """

    arch: str = "bfcnn"
    in_channels: int = 1
    channels: int = 64
    depth: int = 21
    blocks: int = 3
    convs_per_block: int = 2
    kernel: int = 3
    global_mean: bool = False
    padding: str = "zeros"
    shrink: bool = False

    def __post_init__(self) -> None:
        check_choice("arch", self.arch, ARCHS)
        check_choice("padding", self.padding, PADDINGS)
        check_bool("global_mean", self.global_mean)
        check_bool("shrink", self.shrink)
        for name, low in (("in_channels", 1), ("channels", 1), ("depth", 2), ("blocks", 1),
                          ("convs_per_block", 1), ("kernel", 1)):
            object.__setattr__(self, name, check_int(name, getattr(self, name), low=low))
        if self.kernel % 2 == 0:
            raise ValueError(f"kernel must be an odd integer >= 1, got {self.kernel}")

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of the fields (JSON- and ``weights_only``-safe)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> NetConfig:
        """Inverse of :meth:`to_dict`; unknown keys raise ValueError naming the valid ones."""
        return config_from_dict(cls, values)

    @classmethod
    def paper(cls, arch: str = "unet", in_channels: int = 1) -> NetConfig:
        """The paper's size of ``arch`` (the defaults, written out)."""
        return cls(arch=arch, in_channels=in_channels, channels=64, depth=21, blocks=3,
                   convs_per_block=2, kernel=3)


def net_config_for(net: dict[str, Any], dist) -> NetConfig:
    """The NetConfig of the fields ``net`` for images of ``dist`` (a Distribution): its
    channel count, and, unless ``net`` names a padding, circular padding when the family
    is periodic (``dist.periodic``: its law is invariant to cyclic shifts, like the
    Gaussian field's), zeros otherwise. The studies build every network through it.

    Measured on the default preset's Gaussian networks (32×32, 400 per-σ steps): the per-σ
    networks' excess over the Wiener filter falls from 0.57–9.3 % (zeros) to 0.28–5.1 %
    (circular) for 0.045 ≤ σ ≤ 0.94; with zero padding half of it sat in the 3-pixel border.
    """
    padding = "circular" if getattr(dist, "periodic", False) else "zeros"
    return NetConfig.from_dict({"padding": padding, **net, "in_channels": dist.shape[0]})


def config_from_dict(cls, values: dict[str, Any]):
    """Build the frozen dataclass ``cls`` from a dict, rejecting unknown keys."""
    if not isinstance(values, dict):
        raise ValueError(f"{cls.__name__}.from_dict needs a dict, got {type(values).__name__}")
    fields = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ValueError(f"{cls.__name__} has no field(s) {unknown}; valid fields: {fields}")
    return cls(**values)


class BFBatchNorm(nn.Module):
    """Bias-free batch normalization: ``x · γ / s`` per channel, no mean subtracted, no shift.

    ``s`` is the batch standard deviation over (batch, h, w) in training mode (and updates
    the running value), the running standard deviation in eval mode, where the layer is
    linear. ``γ`` (``gammas``, shape (1, C, 1, 1)) is learned.
    """

    def __init__(self, num_channels: int) -> None:
        super().__init__()
        self.gammas = nn.Parameter(torch.ones(1, num_channels, 1, 1))
        self.register_buffer("running_sd", torch.ones(1, num_channels, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:  # the statistics in float32 under a bfloat16 autocast too
            sd = torch.sqrt(x.float().var(dim=(0, 2, 3), keepdim=True, unbiased=False)
                            + BN_EPS)
            with torch.no_grad():
                self.running_sd.lerp_(sd, BN_MOMENTUM)
        else:
            sd = self.running_sd
        return x * (self.gammas / sd).to(x.dtype)  # one pass over x: γ/s is (1, C, 1, 1)

    def reset_parameters(self) -> None:
        with torch.no_grad():
            self.gammas.fill_(1.0)
            self.running_sd.fill_(1.0)


def _conv(c_in: int, c_out: int, kernel: int, padding: str) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, kernel, padding=kernel // 2, bias=False, padding_mode=padding)


def _inner(c_in: int, c_out: int, kernel: int, padding: str) -> list[nn.Module]:
    """conv → bias-free BN → ReLU."""
    return [_conv(c_in, c_out, kernel, padding), BFBatchNorm(c_out), nn.ReLU(inplace=True)]


class BFCNN(nn.Module):
    """Bias-free DnCNN-style stack: conv+ReLU, (depth − 2) × (conv+BF-BN+ReLU), conv.

    Input and output (n, c, h, w); the output is the predicted noise residual.
    """

    def __init__(self, cfg: NetConfig) -> None:
        super().__init__()
        c, k, w, pad = cfg.in_channels, cfg.kernel, cfg.channels, cfg.padding
        layers: list[nn.Module] = [_conv(c, w, k, pad), nn.ReLU(inplace=True)]
        for _ in range(cfg.depth - 2):
            layers += _inner(w, w, k, pad)
        layers.append(_conv(w, c, k, pad))
        self.layers = nn.Sequential(*layers)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return self.layers(y)


class BFUNet(nn.Module):
    """Bias-free UNet: ``blocks`` levels, 2×2 average pooling, 2×2 stride-2 transposed
    convolutions, skip connections by concatenation, no additive constant anywhere.

    Encoder level b (width ``C_b = channels·2^b``): ``convs_per_block`` convolutions, then
    pooling; middle: ``convs_per_block`` convolutions at ``2·C_{B−1}``; decoder level b:
    upsample to ``C_b``, concatenate the encoder's level-b maps, ``convs_per_block``
    convolutions (the first from ``2·C_b``); a final linear convolution to ``c`` channels.
    With ``global_mean``, the middle's output m (n, C, h', w') becomes m + W·mean_{h',w'}(m)
    (W a 1×1 convolution): the only path by which a pixel sees the whole image when the
    convolutions' receptive field is smaller (a linear map, so homogeneity holds).
    The first convolution is followed by ReLU without normalization. Inputs whose side is
    not a multiple of ``2^blocks`` are edge-replicated up to one and cropped back
    (replication is linear, so homogeneity holds).
    """

    def __init__(self, cfg: NetConfig) -> None:
        super().__init__()
        k, m, c, pad = cfg.kernel, cfg.convs_per_block, cfg.in_channels, cfg.padding
        width = [cfg.channels * 2**b for b in range(cfg.blocks + 1)]
        self.factor = 2**cfg.blocks
        self.encoder = nn.ModuleList()
        for b in range(cfg.blocks):
            c_in = c if b == 0 else width[b - 1]
            if b == 0:
                layers = [_conv(c_in, width[0], k, pad), nn.ReLU(inplace=True)]
            else:
                layers = _inner(c_in, width[b], k, pad)
            for _ in range(m - 1):
                layers += _inner(width[b], width[b], k, pad)
            self.encoder.append(nn.Sequential(*layers))
        mid = _inner(width[-2], width[-1], k, pad)
        for _ in range(m - 1):
            mid += _inner(width[-1], width[-1], k, pad)
        self.middle = nn.Sequential(*mid)
        # a 1×1 convolution pads nothing: its padding mode is immaterial
        self.global_mix = _conv(width[-1], width[-1], 1, "zeros") if cfg.global_mean else None
        self.upsample = nn.ModuleList()
        self.decoder = nn.ModuleList()
        for b in range(cfg.blocks):  # decoder[b] works at level b (applied from deep to 0)
            self.upsample.append(nn.ConvTranspose2d(width[b + 1], width[b], 2, stride=2,
                                                    bias=False))
            layers = _inner(2 * width[b], width[b], k, pad)
            for _ in range(m - 1):
                layers += _inner(width[b], width[b], k, pad)
            self.decoder.append(nn.Sequential(*layers))
        self.output = _conv(width[0], c, k, pad)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        h, w = y.shape[-2:]
        ph, pw = (-h) % self.factor, (-w) % self.factor
        x = F.pad(y, (0, pw, 0, ph), mode="replicate") if ph or pw else y
        skips = []
        for block in self.encoder:
            x = block(x)
            skips.append(x)
            x = F.avg_pool2d(x, 2)
        x = self.middle(x)
        if self.global_mix is not None:
            x = x + self.global_mix(x.mean(dim=(2, 3), keepdim=True))
        for b in reversed(range(len(self.decoder))):
            x = torch.cat([self.upsample[b](x), skips[b]], dim=1)
            x = self.decoder[b](x)
        x = self.output(x)
        return x[..., :h, :w] if ph or pw else x


def build_network(cfg: NetConfig, generator: torch.Generator | None = None,
                  device=None) -> nn.Module:
    """A freshly initialized bias-free network for ``cfg``.

    Parameters
    ----------
    cfg : NetConfig
    generator : torch.Generator (CPU) or None   draws the He-normal initial weights
        (``std = √(2/fan_in)``); None uses a generator seeded with 0. The global random
        state is not touched.
    device : torch device of the returned module (default CPU).

    Returns
    -------
    nn.Module mapping y (n, c, h, w) to the predicted noise residual (n, c, h, w), in
    training mode (with ``cfg.shrink``: a :class:`~theorybench.blind_shrink.BlindShrink`,
    uncalibrated, around the network).
    """
    if not isinstance(cfg, NetConfig):
        raise ValueError(f"cfg must be a NetConfig, got {type(cfg).__name__}")
    if generator is None:
        generator = torch.Generator().manual_seed(0)
    with torch.device("meta"):  # no storage and no draws from the global generator
        net = BFCNN(cfg) if cfg.arch == "bfcnn" else BFUNet(cfg)
        if cfg.shrink:
            net = BlindShrink(net)
    net = net.to_empty(device="cpu")
    init_weights(net, generator)
    return net.to(device) if device is not None else net


def init_weights(net: nn.Module, generator: torch.Generator) -> None:
    """He-normal convolution weights from ``generator``, the last convolution zero; γ = 1
    and running σ = 1."""
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, nn.ConvTranspose2d):
                # each output pixel of a k×k stride-k transposed conv sees c_in·k²/s² taps
                c_in, _, kh, kw = module.weight.shape
                fan_in = c_in * kh * kw / (module.stride[0] * module.stride[1])
                module.weight.normal_(0.0, math.sqrt(2.0 / fan_in), generator=generator)
            elif isinstance(module, nn.Conv2d):
                _, c_in, kh, kw = module.weight.shape
                module.weight.normal_(0.0, math.sqrt(2.0 / (c_in * kh * kw)), generator=generator)
            elif isinstance(module, (BFBatchNorm, BlindShrink)):
                module.reset_parameters()
    zero_output_layer(net)


def zero_output_layer(net: nn.Module) -> None:
    """Set the last (linear) convolution to 0: the network's residual is then 0."""
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    with torch.no_grad():
        convs[-1].weight.zero_()


def count_parameters(net: nn.Module) -> int:
    """Number of trainable values of ``net``."""
    return sum(p.numel() for p in net.parameters())


def forward_flops(cfg: NetConfig, h: int, w: int) -> int:
    """Floating-point operations of the convolutions of one forward pass on one h×w image.

    Counted analytically as ``2 · c_in · c_out · k² · (output pixels)`` per convolution
    (multiply + add), ``2 · c_in · c_out · 4 · (input pixels)`` per 2×2 transposed
    convolution; normalization, ReLU and pooling are not counted. A training step costs
    about three times this per image (backward ≈ 2 × forward).
    """
    c, k, m = cfg.in_channels, cfg.kernel, cfg.convs_per_block
    conv = 2 * k * k  # FLOPs per (input channel, output channel, output pixel)
    if cfg.arch == "bfcnn":
        wd = cfg.channels
        return conv * h * w * (c * wd + (cfg.depth - 2) * wd * wd + wd * c)
    f = 2**cfg.blocks
    h, w = h + (-h) % f, w + (-w) % f
    width = [cfg.channels * 2**b for b in range(cfg.blocks + 1)]
    total = 0
    for b in range(cfg.blocks):
        px = (h >> b) * (w >> b)
        c_in = c if b == 0 else width[b - 1]
        encoder = c_in * width[b] + (m - 1) * width[b] ** 2
        decoder = 2 * width[b] * width[b] + (m - 1) * width[b] ** 2
        total += conv * px * (encoder + decoder)
        total += 2 * 4 * width[b + 1] * width[b] * (px // 4)  # transposed conv into level b
    px = (h >> cfg.blocks) * (w >> cfg.blocks)
    total += conv * px * (width[-2] * width[-1] + (m - 1) * width[-1] ** 2)
    total += conv * h * w * width[0] * c
    if cfg.global_mean:
        total += 2 * width[-1] ** 2
    return total

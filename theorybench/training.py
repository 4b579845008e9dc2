"""``train``: fit a bias-free network to denoise a distribution, and the NetworkDenoiser.

The network ``r`` predicts the noise residual ``σ z`` of ``y = x + σ z``; the denoiser is
``f(y) = y − r(y − μ̂)``, where ``μ̂`` is the training data's mean image when
``center=True`` (a bias-free ``r`` is homogeneous, so ``f`` is homogeneous about ``μ̂``:
it can output the mean image at large σ, which a homogeneous map of ``y`` cannot) and 0
otherwise. Least squares learns the posterior mean, hence the score (SCIENCE.md §1–2).

Two modes (Kadkhodaie et al. 2024, App. A): ``per-sigma`` (one σ for every image) and
``universal`` (σ drawn per image; the blind network denoises a whole range). Two
objectives (:func:`draw_sigma`, :func:`objective_loss`):

* ``kl`` (SCIENCE.md §4c): ``ln σ ~ U[ln σ_min, ln σ_max]`` and the noise-prediction loss
  ``‖r/σ − z‖²/d = ‖f(y) − x‖²/(d σ²)``. Since ``dσ/σ = d ln σ``,
  ``d · ln(σ_max/σ_min) · E[loss] = ∫_{σ_min}^{σ_max} MSE(f, σ) σ⁻³ dσ`` (total MSE): the
  loss is the KL integral of :mod:`theorybench.kl` up to the θ-free ``∫ MMSE σ⁻³ dσ``, so
  training minimizes exactly what the report measures.
* ``balanced``: the same σ law, loss weight ``σ⁻² + σ_data⁻²`` instead of ``σ⁻²`` (the
  weight λ(σ) of Karras et al. 2022, EDM): equal to ``kl`` where σ ≪ σ_data, and a floor
  that keeps the large σ the sampler starts from in the loss (SCIENCE.md §4c: a network
  meant for sampling needs both ends). It bounds the KL integral from above.
* ``paper``: σ = σ_max · u², u ~ U(0, 1) (the paper's code) and the unweighted per-pixel
  loss ``‖r − σz‖²/d``; σ < 0.05 then carries < 0.5 % of the loss at the optimum.

A per-σ network may start from another network's weights (``init=``, e.g. the universal
network: a warm start along the σ ladder). During training the held-out MSE at
``monitor_sigmas`` is measured on fixed images and noise every ``monitor_every`` steps and
kept in the history; :func:`converged` flags a network whose held-out error still fell
by more than 5 % over its last 20 % of steps.

Data: fresh images every step for an endless distribution (step k uses images
``k·B … k·B + B − 1`` of the stream of ``TRAIN_DATA_SEED + seed``, a stream disjoint
from the small seeds used for evaluation), or a fixed training set drawn in seeded
minibatches (a fresh random permutation per epoch). Images, noise and σ are generated
``CHUNK_STEPS`` steps at a time to keep the per-step overhead low. All randomness comes
from explicit generators: on one machine the same seed gives the same weights.
"""

from __future__ import annotations

import dataclasses
import io
import math
import os
import pickle
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from tbcore.denoiser import sigma_column
from tbcore.seeding import block_generator
from tbcore.validation import check_choice, check_float, check_int, check_seed

from .cache import atomic_write_bytes
from .networks import BFBatchNorm, NetConfig, _from_dict, build_network, count_parameters

MODES = ("per-sigma", "universal")
OBJECTIVES = ("kl", "balanced", "paper")
SCHEDULES = ("cosine", "step", "constant")
CHUNK_STEPS = 16  # steps of data generated at once (part of the random stream's layout)
TRAIN_DATA_SEED = 2**41  # training images use seed TRAIN_DATA_SEED + seed
STREAM_INIT, STREAM_NOISE, STREAM_BATCHES = 11, 12, 13  # generator streams of one training
STREAM_MONITOR = 14  # noise of the held-out monitoring images
MONITOR_SEED = 2**42  # held-out monitoring images: a seed disjoint from training and tests
CENTER_IMAGES = 1024  # images averaged into the mean image μ̂ (endless distributions)
CONVERGENCE_DROP, CONVERGENCE_TAIL = 0.05, 0.2  # "not converged": > 5 % drop over the last 20 %
CHECKPOINT_FORMAT = "theorybench.network/1"


class TrainingDiverged(RuntimeError):
    """The training loss became NaN or infinite."""


@dataclass(frozen=True)
class TrainConfig:
    """How a network is trained.

    Attributes
    ----------
    mode : {"per-sigma", "universal"}   one noise level, or a σ drawn per image.
    objective : {"kl", "balanced", "paper"}   σ law and loss weight (module docstring):
                             ``kl``: ln σ uniform on [σ_min, σ_max], loss ‖r/σ − z‖²/d;
                             ``balanced``: the same σ law, weight σ⁻² + σ_data⁻²;
                             ``paper``: σ = σ_max·u², loss ‖r − σz‖²/d.
    sigma_data : float > 0   ``balanced``: the σ where the weight's floor takes over
                             (about the data's standard deviation).
    sigma : float > 0        per-sigma mode: the noise level (pixel units).
    sigma_min : float > 0    universal ``kl`` objective: the smallest noise level.
    sigma_max : float > 0    universal mode: the largest noise level (pixel units).
    center : bool            subtract the training data's mean image μ̂ before the network
                             and add it back after (f(y) = y − r(y − μ̂)).
    steps : int >= 1         optimizer steps.
    batch_size : int >= 1    images per step.
    lr : float > 0           Adam learning rate at step 0.
    schedule : {"cosine", "step", "constant"}   learning-rate decay: cosine to 0 over
                             ``steps``; step: ×0.1 at 50% and again at 75% of the steps.
    warmup : int >= 0        steps of linear warm-up from lr/warmup to lr (Adam's first
                             steps are otherwise large enough to stall the network).
    seed : int >= 0          initial weights, noise, σ draws, minibatches and data stream.
    monitor_sigmas : tuple of float   σ values of the held-out MSE tracked during training
                             (empty: none; per-sigma networks default to their own σ).
    monitor_every : int >= 0 steps between two held-out measurements (0: steps // 20).
    monitor_images : int >= 2   held-out images (and noises) of the monitor.
    """

    mode: str = "per-sigma"
    objective: str = "kl"
    sigma: float = 0.1
    sigma_min: float = 0.01
    sigma_max: float = 1.0
    center: bool = False
    sigma_data: float = 0.25
    steps: int = 2000
    batch_size: int = 64
    lr: float = 1e-3
    schedule: str = "cosine"
    warmup: int = 50
    seed: int = 0
    monitor_sigmas: tuple = ()
    monitor_every: int = 0
    monitor_images: int = 64

    def __post_init__(self) -> None:
        check_choice("mode", self.mode, MODES)
        check_choice("objective", self.objective, OBJECTIVES)
        check_choice("schedule", self.schedule, SCHEDULES)
        check_choice("center", self.center, (False, True))
        for name in ("sigma", "sigma_min", "sigma_max", "sigma_data", "lr"):
            value = check_float(name, getattr(self, name), low=0.0, low_open=True)
            object.__setattr__(self, name, value)
        if self.sigma_min >= self.sigma_max:
            raise ValueError(f"sigma_min must be < sigma_max, got {self.sigma_min} >= "
                             f"{self.sigma_max}")
        for name, low in (("steps", 1), ("batch_size", 1), ("warmup", 0),
                          ("monitor_every", 0), ("monitor_images", 2)):
            object.__setattr__(self, name, check_int(name, getattr(self, name), low=low))
        object.__setattr__(self, "seed", check_seed(self.seed))
        sigmas = tuple(check_float("monitor_sigmas", s, low=0.0, low_open=True)
                       for s in self.monitor_sigmas)
        if not sigmas and self.mode == "per-sigma":
            sigmas = (self.sigma,)
        object.__setattr__(self, "monitor_sigmas", sigmas)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of the fields (JSON- and ``weights_only``-safe)."""
        return {**dataclasses.asdict(self), "monitor_sigmas": list(self.monitor_sigmas)}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        """Inverse of :meth:`to_dict`; unknown keys raise ValueError naming the valid ones."""
        return _from_dict(cls, values)

    def lr_factor(self, step: int) -> float:
        """Multiplier of ``lr`` at optimizer step ``step`` (0-based): warm-up × decay."""
        ramp = min(1.0, (step + 1) / self.warmup) if self.warmup else 1.0
        if self.schedule == "cosine":
            return ramp * 0.5 * (1.0 + math.cos(math.pi * step / self.steps))
        if self.schedule == "step":
            return ramp * 0.1 ** ((step >= self.steps // 2) + (step >= (3 * self.steps) // 4))
        return ramp


def resolve_device(device) -> torch.device:
    """``None``/"auto" → CUDA if available, else CPU; anything else as torch.device."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda[:i]' or a torch.device, "
                         f"got {device!r}") from exc


class NetworkDenoiser:
    """A trained blind network as a Denoiser: ``f(y, σ) = y − r(y − μ̂)``.

    Attributes
    ----------
    kind : "network"
    net : nn.Module            the residual network r, in eval mode, parameters frozen.
    net_config : NetConfig
    train_config : TrainConfig or None
    center : tensor (c, h, w) or None   the mean image μ̂ subtracted before ``r`` (None: 0);
                               f is homogeneous about it: ``f(y) − μ̂ = ∇f(y) (y − μ̂)``.
    history : dict             ``step`` (last step of each chunk) and mean ``loss`` there;
                               ``monitor``: ``step``, ``sigma`` and ``mse`` (per pixel, one
                               list per σ) of the held-out images during training.
    meta : dict                what it was trained on (distribution, training-set size,
                               seconds, device).

    Calling it computes on the network's device and returns on ``y``'s device and dtype.
    It does not switch gradients off: under ``torch.no_grad()`` (as in ``mse_curve``) no
    graph is built, and with ``y.requires_grad`` the Jacobian ``∂f/∂y`` is available
    through autograd. Parameters never require gradients.
    """

    kind = "network"
    oracle = False

    def __init__(self, net: torch.nn.Module, net_config: NetConfig,
                 train_config: TrainConfig | None = None, history: dict | None = None,
                 meta: dict | None = None, center: torch.Tensor | None = None) -> None:
        if not isinstance(net_config, NetConfig):
            raise ValueError(f"net_config must be a NetConfig, got {type(net_config).__name__}")
        if train_config is not None and not isinstance(train_config, TrainConfig):
            raise ValueError(f"train_config must be a TrainConfig or None, "
                             f"got {type(train_config).__name__}")
        if center is not None and (not isinstance(center, torch.Tensor) or center.dim() != 3
                                   or center.shape[0] != net_config.in_channels):
            raise ValueError(f"center must be None or a tensor ({net_config.in_channels}, h, w)")
        self.net = net.eval().requires_grad_(False)
        self.net_config = net_config
        self.train_config = train_config
        self.center = None if center is None else center.detach().float()
        self.history = dict(history or {"step": [], "loss": []})
        self.meta = dict(meta or {})

    @property
    def description(self) -> str:
        mode = "untrained" if self.train_config is None else self.train_config.mode
        return (f"{self.net_config.arch} ({count_parameters(self.net):,} parameters, "
                f"{mode})")

    @property
    def device(self) -> torch.device:
        return next(self.net.parameters()).device

    def to(self, device) -> NetworkDenoiser:
        """Move the network (and the mean image) to ``device`` (in place); returns self."""
        self.net.to(resolve_device(device))
        if self.center is not None:
            self.center = self.center.to(resolve_device(device))
        return self

    def __call__(self, y: torch.Tensor, sigma) -> torch.Tensor:
        """``x̂ = y − r(y − μ̂)`` for y (n, c, h, w); σ (float or n values) is validated, unused."""
        if not isinstance(y, torch.Tensor) or y.dim() != 4 or \
                y.shape[1] != self.net_config.in_channels:
            shape = tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__
            raise ValueError(f"y must be a tensor (n, {self.net_config.in_channels}, h, w), "
                             f"got {shape}")
        sigma_column(sigma, y)  # the blind network ignores σ, but it must be valid
        if self.net.training:
            self.net.eval()
        param = next(self.net.parameters())
        y_net = y.to(device=param.device, dtype=param.dtype)
        x_hat = y_net - self.net(_centered(y_net, self.center))
        return x_hat.to(device=y.device, dtype=y.dtype)

    def __repr__(self) -> str:
        return f"NetworkDenoiser({self.description})"

    # -- checkpoints -------------------------------------------------------------------
    def save(self, path) -> None:
        """Write state dict, configs, history and meta to ``path`` (atomically)."""
        payload = {
            "format": CHECKPOINT_FORMAT,
            "net_config": self.net_config.to_dict(),
            "train_config": None if self.train_config is None else self.train_config.to_dict(),
            "history": self.history,
            "meta": self.meta,
            "center": None if self.center is None else self.center.cpu(),
            "state_dict": {k: v.detach().cpu() for k, v in self.net.state_dict().items()},
        }
        buffer = io.BytesIO()
        torch.save(payload, buffer)
        atomic_write_bytes(Path(os.fspath(path)), buffer.getvalue())

    @classmethod
    def load(cls, path, map_location=None) -> NetworkDenoiser:
        """Read a checkpoint written by :meth:`save` (``weights_only=True``).

        Raises ValueError when the file is not such a checkpoint or its configuration
        does not build a network whose state-dict keys and shapes match the stored ones.
        """
        try:
            payload = torch.load(os.fspath(path), map_location=map_location, weights_only=True)
        except (pickle.UnpicklingError, RuntimeError, EOFError) as exc:  # not a safe state dict
            raise ValueError(f"{path} is not a {CHECKPOINT_FORMAT} checkpoint loadable with "
                             f"weights_only=True ({type(exc).__name__})") from exc
        if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"{path} is not a {CHECKPOINT_FORMAT} checkpoint")
        net_config = NetConfig.from_dict(payload["net_config"])
        tc = payload.get("train_config")
        train_config = None if tc is None else TrainConfig.from_dict(tc)
        state = payload["state_dict"]
        device = next(iter(state.values())).device if state else torch.device("cpu")
        net = build_network(net_config, device=device)
        expected = {k: tuple(v.shape) for k, v in net.state_dict().items()}
        stored = {k: tuple(v.shape) for k, v in state.items()}
        if expected != stored:
            diff = sorted(set(expected.items()) ^ set(stored.items()))[:4]
            raise ValueError(f"{path}: stored weights do not fit the stored NetConfig "
                             f"{net_config} (first differences, key and shape: {diff})")
        net.load_state_dict(state)
        center = payload.get("center")
        return cls(net, net_config, train_config, payload.get("history"), payload.get("meta"),
                   center=None if center is None else center.to(device))


# -- training -------------------------------------------------------------------------
def _centered(y: torch.Tensor, center: torch.Tensor | None) -> torch.Tensor:
    """``y − μ̂`` (the network's input), or ``y`` without a mean image."""
    return y if center is None else y - center


def draw_sigma(cfg: TrainConfig, count: int, generator: torch.Generator,
               device) -> torch.Tensor:
    """Noise levels (count, 1, 1, 1) of one chunk of training images (pixel units).

    per-sigma: ``cfg.sigma``; universal ``kl``: ``ln σ ~ U[ln σ_min, ln σ_max]``
    (SCIENCE.md §4c); universal ``paper``: ``σ = σ_max u²``, ``u ~ U(0, 1)``.
    """
    if cfg.mode == "per-sigma":
        return torch.full((count, 1, 1, 1), cfg.sigma, device=device)
    u = torch.rand(count, 1, 1, 1, generator=generator, device=device)
    if cfg.objective == "paper":
        return cfg.sigma_max * u.square()
    return cfg.sigma_min * (cfg.sigma_max / cfg.sigma_min) ** u


def objective_loss(residual: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor,
                   objective: str, sigma_data: float = 0.25) -> torch.Tensor:
    """The training loss of one batch (a scalar).

    Parameters
    ----------
    residual : (n, c, h, w)   the network's prediction ``r = y − f(y)``.
    noise : (n, c, h, w)      the added noise ``σ z``.
    sigma : (n, 1, 1, 1)      each image's σ.
    objective : "kl" → mean of ``(r/σ − z)² = (f(y) − x)²/σ²`` (SCIENCE.md §4c: times
        ``d · ln(σ_max/σ_min)`` its expectation is ``∫ MSE σ⁻³ dσ``);
        "balanced" → mean of ``(r − σz)² (σ⁻² + σ_data⁻²)`` (EDM's weight λ(σ));
        "paper" → mean of ``(r − σz)²`` (per-pixel MSE, unweighted).
    """
    if objective == "kl":
        return torch.mean(((residual - noise) / sigma) ** 2)
    if objective == "balanced":
        return torch.mean((residual - noise) ** 2 * (sigma**-2 + sigma_data**-2))
    return torch.mean((residual - noise) ** 2)


def _fresh_images(dist, seed: int, chunk: int, device) -> Iterator[torch.Tensor]:
    """Chunks of ``chunk`` images, consecutive in the stream of ``TRAIN_DATA_SEED + seed``."""
    offset = 0
    while True:
        yield dist.sample(chunk, TRAIN_DATA_SEED + seed, offset=offset).to(device)
        offset += chunk


def _minibatch_images(images: torch.Tensor, seed: int, chunk: int) -> Iterator[torch.Tensor]:
    """Chunks of ``chunk`` images of a fixed set: epochs of seeded random permutations."""
    gen = block_generator(seed, 0, STREAM_BATCHES)
    order = torch.empty(0, dtype=torch.long)
    while True:
        while len(order) < chunk:
            order = torch.cat([order, torch.randperm(len(images), generator=gen)])
        index, order = order[:chunk], order[chunk:]
        yield images[index.to(images.device)]


def _meta_value(value):
    """A ``weights_only``-safe version of a distribution parameter."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return repr(value)


class _Monitor:
    """Held-out MSE at fixed σ on fixed images and noise, measured during training."""

    def __init__(self, dist, cfg: TrainConfig, device) -> None:
        self.sigmas = list(cfg.monitor_sigmas)
        self.every = cfg.monitor_every or max(1, cfg.steps // 20)
        n = cfg.monitor_images if dist.num_images is None else \
            min(cfg.monitor_images, dist.num_images)
        self.x = dist.sample(n, MONITOR_SEED).to(device) if self.sigmas else None
        if self.x is not None:
            gen = block_generator(cfg.seed, 0, STREAM_MONITOR)
            self.z = torch.randn(self.x.shape, generator=gen).to(device)
        self.record = {"step": [], "sigma": self.sigmas, "mse": [[] for _ in self.sigmas]}

    def due(self, step: int, last: int) -> bool:
        return bool(self.sigmas) and (step % self.every == 0 or step == last)

    @torch.no_grad()
    def measure(self, net: torch.nn.Module, center, step: int, frozen_norm: bool) -> None:
        net.eval()
        for i, s in enumerate(self.sigmas):
            y = self.x + s * self.z
            x_hat = y - net(_centered(y, center))
            self.record["mse"][i].append(float((x_hat - self.x).pow(2).mean()))
        self.record["step"].append(step)
        _train_mode(net, frozen_norm)


def _train_mode(net: torch.nn.Module, frozen_norm: bool) -> None:
    """Training mode; with ``frozen_norm`` the normalization layers keep their running
    statistics (a warm start then begins at exactly the initial network's function, and
    every step refines it, instead of switching to one σ's batch statistics)."""
    net.train()
    if frozen_norm:
        for module in net.modules():
            if isinstance(module, BFBatchNorm):
                module.eval()


def converged(monitor: dict, drop: float = CONVERGENCE_DROP,
              tail: float = CONVERGENCE_TAIL) -> bool | None:
    """False when the held-out error fell by more than ``drop`` over the last ``tail`` of
    the steps (the network was still improving: more steps would change its numbers).

    The error is ``mean_σ MSE(σ)/σ²`` over the monitored σ (the KL objective's weighting);
    the comparison is between the last measurement and the one nearest to the start of
    the tail. None when nothing was monitored.
    """
    steps = np.asarray(monitor.get("step", []), dtype=float)
    if len(steps) < 2:
        return None
    sig = np.asarray(monitor["sigma"], dtype=float)[:, None]
    error = (np.asarray(monitor["mse"], dtype=float) / sig**2).mean(0)
    start = int(np.argmin(np.abs(steps - steps[-1] * (1 - tail))))
    return bool(error[-1] >= (1 - drop) * error[start])


def mean_image(dist, train_images: torch.Tensor | None, seed: int) -> torch.Tensor:
    """μ̂ (c, h, w): the training set's mean, or that of ``CENTER_IMAGES`` training-stream
    images of an endless distribution."""
    if train_images is not None:
        return train_images.float().mean(0)
    return dist.sample(CENTER_IMAGES, TRAIN_DATA_SEED + seed).mean(0)


def train(dist, net_cfg: NetConfig, train_cfg: TrainConfig,
          train_images: torch.Tensor | None = None, device=None,
          progress: bool = False, init: NetworkDenoiser | None = None) -> NetworkDenoiser:
    """Train a bias-free network to denoise images of ``dist``.

    Parameters
    ----------
    dist : Distribution     image shape, fresh images when ``train_images`` is None (an
        endless distribution; a finite one must provide ``train_images()``), and held-out
        images for the monitor.
    net_cfg : NetConfig     its ``in_channels`` must equal the images' channels.
    train_cfg : TrainConfig
    train_images : tensor (N, c, h, w) or None   a fixed training set (finite values).
    device : "auto"/None (CUDA if available, else CPU), "cpu", "cuda", or a torch.device.
    progress : bool         show a tqdm bar.
    init : NetworkDenoiser or None   start from its weights (and its mean image) instead of
        a fresh initialization; its NetConfig must equal ``net_cfg``.

    Returns
    -------
    NetworkDenoiser on ``device`` in eval mode.

    Raises
    ------
    TrainingDiverged   if the loss becomes NaN or infinite (the message gives the step).
    ValueError         for inconsistent inputs.
    """
    if not isinstance(net_cfg, NetConfig) or not isinstance(train_cfg, TrainConfig):
        raise ValueError("train needs a NetConfig and a TrainConfig")
    if init is not None and (not isinstance(init, NetworkDenoiser) or
                             init.net_config != net_cfg):
        raise ValueError("init must be a NetworkDenoiser with the same NetConfig as net_cfg")
    device = resolve_device(device)
    shape = tuple(dist.shape)
    if train_images is None and dist.num_images is not None:
        if not hasattr(dist, "train_images"):
            raise ValueError(f"{dist.name} is a finite data set: pass train_images (N, c, h, w)")
        train_images = dist.train_images()
    if train_images is not None:
        if not isinstance(train_images, torch.Tensor) or train_images.dim() != 4 or \
                len(train_images) == 0:
            raise ValueError("train_images must be a non-empty tensor (N, c, h, w)")
        if not bool(torch.isfinite(train_images).all()):
            raise ValueError("train_images must hold finite values only")
        shape = tuple(train_images.shape[1:])
    if shape[0] != net_cfg.in_channels:
        raise ValueError(f"net_cfg.in_channels must equal the images' channels {shape[0]}, "
                         f"got {net_cfg.in_channels}")
    cfg, B = train_cfg, train_cfg.batch_size
    chunk = CHUNK_STEPS * B
    if train_images is None:
        images = _fresh_images(dist, cfg.seed, chunk, device)
    else:
        images = _minibatch_images(train_images.float().to(device), cfg.seed, chunk)

    net = build_network(net_cfg, block_generator(cfg.seed, 0, STREAM_INIT), device=device)
    if init is not None:
        net.load_state_dict(init.net.state_dict())
        center = None if init.center is None else init.center.to(device)
    else:
        center = mean_image(dist, train_images, cfg.seed).to(device) if cfg.center else None
    _train_mode(net, frozen_norm=init is not None)
    optimizer = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, cfg.lr_factor)
    noise_gen = block_generator(cfg.seed, 0, STREAM_NOISE, device)
    monitor = _Monitor(dist, cfg, device)
    history = {"step": [], "loss": []}
    losses = torch.zeros(CHUNK_STEPS, device=device)
    bar = tqdm(total=cfg.steps, disable=not progress, desc="train", leave=False)
    start_time = time.perf_counter()
    for first in range(0, cfg.steps, CHUNK_STEPS):
        count = min(CHUNK_STEPS, cfg.steps - first)
        x_all = next(images)
        z_all = torch.randn(x_all.shape, generator=noise_gen, device=device)
        sigma_all = draw_sigma(cfg, len(x_all), noise_gen, device)
        noise_all = sigma_all * z_all
        input_all = _centered(x_all + noise_all, center)  # y − μ̂, y = x + σ z
        for i in range(count):
            if monitor.due(first + i, cfg.steps):
                monitor.measure(net, center, first + i, init is not None)
            batch = slice(i * B, (i + 1) * B)
            loss = objective_loss(net(input_all[batch]), noise_all[batch], sigma_all[batch],
                                  cfg.objective, cfg.sigma_data)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            losses[i] = loss.detach()
        chunk_losses = losses[:count].cpu()  # one synchronization per chunk
        bad = (~torch.isfinite(chunk_losses)).nonzero()
        if len(bad):
            step = first + int(bad[0])
            bar.close()
            raise TrainingDiverged(f"training loss is {float(chunk_losses[bad[0]])} at step "
                                   f"{step} of {cfg.steps} (lr={cfg.lr}); lower lr or check "
                                   f"the data")
        history["step"].append(first + count - 1)
        history["loss"].append(float(chunk_losses.mean()))
        bar.update(count)
        bar.set_postfix(loss=f"{history['loss'][-1]:.3g}")
    bar.close()
    if monitor.due(cfg.steps, cfg.steps):
        monitor.measure(net, center, cfg.steps, init is not None)
    history["monitor"] = monitor.record
    meta = {
        "distribution": getattr(dist, "name", type(dist).__name__),
        "dist_params": {str(k): _meta_value(v) for k, v in getattr(dist, "params", {}).items()},
        "n_train": None if train_images is None else len(train_images),
        "seconds": time.perf_counter() - start_time,
        "device": str(device),
        "warm_start": init is not None,
    }
    return NetworkDenoiser(net, net_cfg, train_cfg, history, meta, center=center)

"""``train``: fit a bias-free network to denoise a distribution, and the NetworkDenoiser.

The network ``r`` predicts the noise residual; the loss is the per-pixel mean squared error
``‖r(y) − σ z‖² / d`` with ``y = x + σ z``, i.e. ``‖(y − r(y)) − x‖² / d`` (SCIENCE.md §1–2:
least squares learns the posterior mean, hence the score). Two modes (Kadkhodaie et al.
2024, App. A):

* ``per-sigma``: one σ for every image;
* ``universal``: σ = σ_max · u², u ~ U(0, 1) drawn per image (the paper's code, σ_max = 1);
  the blind network then denoises every σ in [0, σ_max].

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

import torch
from tqdm.auto import tqdm

from datasets_synth.base import block_generator, check_choice, check_float, check_int, check_seed

from .cache import atomic_write_bytes
from .denoisers.base import sigma_column
from .networks import NetConfig, _from_dict, build_network, count_parameters

MODES = ("per-sigma", "universal")
SCHEDULES = ("cosine", "step", "constant")
CHUNK_STEPS = 16  # steps of data generated at once (part of the random stream's layout)
TRAIN_DATA_SEED = 2**41  # training images use seed TRAIN_DATA_SEED + seed
STREAM_INIT, STREAM_NOISE, STREAM_BATCHES = 11, 12, 13  # generator streams of one training
CHECKPOINT_FORMAT = "theorybench.network/1"


class TrainingDiverged(RuntimeError):
    """The training loss became NaN or infinite."""


@dataclass(frozen=True)
class TrainConfig:
    """How a network is trained.

    Attributes
    ----------
    mode : {"per-sigma", "universal"}   one noise level, or σ = σ_max·u² per image.
    sigma : float > 0        per-sigma mode: the noise level (pixel units).
    sigma_max : float > 0    universal mode: the largest noise level (pixel units).
    steps : int >= 1         optimizer steps.
    batch_size : int >= 1    images per step.
    lr : float > 0           Adam learning rate at step 0.
    schedule : {"cosine", "step", "constant"}   learning-rate decay: cosine to 0 over
                             ``steps``; step: ×0.1 at 50% and again at 75% of the steps.
    warmup : int >= 0        steps of linear warm-up from lr/warmup to lr (Adam's first
                             steps are otherwise large enough to stall the network).
    seed : int >= 0          initial weights, noise, σ draws, minibatches and data stream.
    """

    mode: str = "per-sigma"
    sigma: float = 0.1
    sigma_max: float = 1.0
    steps: int = 2000
    batch_size: int = 64
    lr: float = 1e-3
    schedule: str = "cosine"
    warmup: int = 50
    seed: int = 0

    def __post_init__(self) -> None:
        check_choice("mode", self.mode, MODES)
        check_choice("schedule", self.schedule, SCHEDULES)
        for name in ("sigma", "sigma_max", "lr"):
            value = check_float(name, getattr(self, name), low=0.0, low_open=True)
            object.__setattr__(self, name, value)
        for name, low in (("steps", 1), ("batch_size", 1), ("warmup", 0)):
            object.__setattr__(self, name, check_int(name, getattr(self, name), low=low))
        object.__setattr__(self, "seed", check_seed(self.seed))

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of the fields (JSON- and ``weights_only``-safe)."""
        return dataclasses.asdict(self)

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


def _generator(seed: int, stream: int, device: torch.device) -> torch.Generator:
    """A generator on ``device`` seeded from (seed, stream)."""
    cpu = block_generator(seed, 0, stream)
    return torch.Generator(device=device).manual_seed(cpu.initial_seed())


class NetworkDenoiser:
    """A trained blind network as a Denoiser: ``f(y, σ) = y − r(y)``.

    Attributes
    ----------
    kind : "network"
    net : nn.Module            the residual network r, in eval mode, parameters frozen.
    net_config : NetConfig
    train_config : TrainConfig or None
    history : dict             ``step`` (last step of each chunk) and mean ``loss`` there.
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
                 meta: dict | None = None) -> None:
        if not isinstance(net_config, NetConfig):
            raise ValueError(f"net_config must be a NetConfig, got {type(net_config).__name__}")
        if train_config is not None and not isinstance(train_config, TrainConfig):
            raise ValueError(f"train_config must be a TrainConfig or None, "
                             f"got {type(train_config).__name__}")
        self.net = net.eval().requires_grad_(False)
        self.net_config = net_config
        self.train_config = train_config
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
        """Move the network to ``device`` (in place); returns self."""
        self.net.to(resolve_device(device))
        return self

    def __call__(self, y: torch.Tensor, sigma) -> torch.Tensor:
        """``x̂ = y − r(y)`` for y (n, c, h, w); σ (float or n values) is validated, unused."""
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
        x_hat = y_net - self.net(y_net)
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
        return cls(net, net_config, train_config, payload.get("history"), payload.get("meta"))


# -- training -------------------------------------------------------------------------
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


def train(dist, net_cfg: NetConfig, train_cfg: TrainConfig,
          train_images: torch.Tensor | None = None, device=None,
          progress: bool = False) -> NetworkDenoiser:
    """Train a bias-free network to denoise images of ``dist``.

    Parameters
    ----------
    dist : Distribution     image shape, and fresh images when ``train_images`` is None
        (an endless distribution; a finite one must provide ``train_images()``).
    net_cfg : NetConfig     its ``in_channels`` must equal the images' channels.
    train_cfg : TrainConfig
    train_images : tensor (N, c, h, w) or None   a fixed training set (finite values).
    device : "auto"/None (CUDA if available, else CPU), "cpu", "cuda", or a torch.device.
    progress : bool         show a tqdm bar.

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
    net.train()
    optimizer = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, cfg.lr_factor)
    noise_gen = _generator(cfg.seed, STREAM_NOISE, device)
    history = {"step": [], "loss": []}
    losses = torch.zeros(CHUNK_STEPS, device=device)
    bar = tqdm(total=cfg.steps, disable=not progress, desc="train", leave=False)
    start_time = time.perf_counter()
    for first in range(0, cfg.steps, CHUNK_STEPS):
        count = min(CHUNK_STEPS, cfg.steps - first)
        x_all = next(images)
        z_all = torch.randn(x_all.shape, generator=noise_gen, device=device)
        if cfg.mode == "universal":  # σ = σ_max u², u ~ U(0, 1) per image (paper's code)
            u = torch.rand(len(x_all), 1, 1, 1, generator=noise_gen, device=device)
            noise_all = cfg.sigma_max * u.square() * z_all
        else:
            noise_all = cfg.sigma * z_all
        y_all = x_all + noise_all  # y = x + σ z
        for i in range(count):
            batch = slice(i * B, (i + 1) * B)
            loss = torch.mean((net(y_all[batch]) - noise_all[batch]) ** 2)  # ‖r(y) − σz‖²/d
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
    meta = {
        "distribution": getattr(dist, "name", type(dist).__name__),
        "dist_params": {str(k): _meta_value(v) for k, v in getattr(dist, "params", {}).items()},
        "n_train": None if train_images is None else len(train_images),
        "seconds": time.perf_counter() - start_time,
        "device": str(device),
    }
    return NetworkDenoiser(net, net_cfg, train_cfg, history, meta)

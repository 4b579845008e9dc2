"""``NetworkDenoiser``: a trained blind network as a denoiser, and its checkpoints."""

from __future__ import annotations

import io
import os
import pickle
from pathlib import Path

import torch

from tbcore.denoiser import sigma_column
from tbcore.validation import check_float, resolve_device

from ..cache import atomic_write_bytes
from ..networks import NetConfig, build_network, count_parameters
from ..train_config import TrainConfig

CHECKPOINT_FORMAT = "theorybench.network/1"


def centered(y: torch.Tensor, center: torch.Tensor | None) -> torch.Tensor:
    """``y − μ̂`` (the network's input), or ``y`` without a mean image."""
    return y if center is None else y - center


def network_residual(net: torch.nn.Module, u: torch.Tensor, c_skip: float = 1.0,
                     c_out: float = 1.0) -> torch.Tensor:
    """``y − f(y) = (1 − c_skip) u + c_out r(u)`` for ``u = y − μ̂`` (n, c, h, w), where
    ``f(y) = μ̂ + c_skip u − c_out r(u)``; ``r(u)`` itself when c_skip = c_out = 1."""
    r = net(u)
    if c_skip == 1.0 and c_out == 1.0:
        return r
    return (1.0 - c_skip) * u + c_out * r


class NetworkDenoiser:
    """A trained network as a Denoiser: ``f(y, σ) = y − r(y − μ̂)``, or
    ``μ̂ + c_skip (y − μ̂) − c_out r(y − μ̂)`` for a per-σ network trained preconditioned
    (``TrainConfig.precondition``; the scalings are constants of the network, so f is
    blind to the σ it is called with and stays homogeneous about μ̂).

    Attributes
    ----------
    kind : "network"
    net : nn.Module            the residual network r, in eval mode, parameters frozen.
    net_config : NetConfig
    train_config : TrainConfig or None
    center : tensor (c, h, w) or None   the mean image μ̂ subtracted before ``r`` (None: 0);
                               f is homogeneous about it: ``f(y) − μ̂ = ∇f(y) (y − μ̂)``
                               (a ``NetConfig.shrink`` network: only where its noise
                               estimate is below θ, :mod:`theorybench.blind_shrink`).
    c_skip, c_out : float      the output scalings (1 and 1: the residual form).
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
                 meta: dict | None = None, center: torch.Tensor | None = None,
                 output_scales: tuple[float, float] = (1.0, 1.0)) -> None:
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
        if not isinstance(output_scales, (tuple, list)) or len(output_scales) != 2:
            raise ValueError(f"output_scales must be (c_skip, c_out), got {output_scales!r}")
        self.c_skip = check_float("c_skip", output_scales[0], low=0.0, high=1.0)
        self.c_out = check_float("c_out", output_scales[1], low=0.0, low_open=True)
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
        device = resolve_device(device)
        self.net.to(device)
        if self.center is not None:
            self.center = self.center.to(device)
        return self

    def __call__(self, y: torch.Tensor, sigma) -> torch.Tensor:
        """``x̂ = y − r(y − μ̂)`` (or its preconditioned form) for y (n, c, h, w); σ (float
        or n values) is validated, unused."""
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
        x_hat = y_net - network_residual(self.net, centered(y_net, self.center), self.c_skip,
                                         self.c_out)
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
            "output_scales": [self.c_skip, self.c_out],
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
                   center=None if center is None else center.to(device),
                   output_scales=tuple(payload.get("output_scales", (1.0, 1.0))))

"""``TrainConfig``: how a network is trained (mode, objective, σ range, optimizer, monitor).

The objectives and modes are derived in :mod:`theorybench.training`, which runs them.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from tbcore.validation import check_bool, check_choice, check_float, check_int, check_seed

from .networks import config_from_dict

MODES = ("per-sigma", "universal")
OBJECTIVES = ("kl", "balanced", "paper")
SCHEDULES = ("cosine", "step", "constant")
PRECONDITIONS = ("none", "edm", "auto")
PRECISIONS = ("fp32", "bf16")


@dataclass(frozen=True)
class TrainConfig:
    """How a network is trained.

    Attributes
    ----------
    mode : {"per-sigma", "universal"}   one noise level, or a σ drawn per image.
    objective : {"kl", "balanced", "paper"}   σ law and loss weight (:mod:`theorybench.training`):
                             ``kl``: ln σ uniform on [σ_min, σ_max], loss ‖r/σ − z‖²/d;
                             ``balanced``: the same σ law, weight σ⁻² + σ_data⁻²;
                             ``paper``: σ = σ_max·u², loss ‖r − σz‖²/d.
    sigma_data : float > 0   ``balanced``: the σ where the weight's floor takes over
                             (about the data's standard deviation); ``precondition``: σ_d.
    sigma : float > 0        per-sigma mode: the noise level (pixel units).
    sigma_min : float > 0    universal ``kl`` and ``balanced`` objectives: the smallest
                             noise level (checked below ``sigma_max`` in every mode).
    sigma_max : float > 0    universal mode: the largest noise level (pixel units).
    center : bool            subtract the training data's mean image μ̂ before the network
                             and add it back after (f(y) = y − r(y − μ̂)).
    precondition : {"none", "edm", "auto"}   per-sigma mode only. ``edm``: f(y) = μ̂ +
                             c_skip (y − μ̂) − c_out r(y − μ̂) with EDM's scalings
                             (:func:`edm_scales`) instead of f(y) = y − r(y − μ̂); a warm
                             start keeps the initial network's layers but zeroes its output
                             layer, so training starts at the scalar shrinkage
                             μ̂ + c_skip (y − μ̂). ``auto``: with a warm start, the form whose
                             starting point has the lower MSE on the first training images
                             at σ; from scratch, ``edm``.
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
    compile : bool           run the training steps through ``torch.compile`` (fused
                             kernels: 1.7–1.9× faster per step for the default preset's UNet
                             on one CPU thread; needs a C++ compiler on a CPU, Triton on a GPU).
                             The same function is minimized; rounding differs from eager
                             steps, so the weights differ slightly (the same seed and setting
                             give the same weights on one CPU machine; on a GPU, as eager
                             steps, to its kernels' determinism). The monitor, evaluation
                             and sampling run eagerly.
    precision : {"fp32", "bf16"}   the training forward's arithmetic: ``bf16`` runs it under
                             ``torch.autocast`` with bfloat16 (matrix units of recent CPUs
                             and GPUs: 2.2× faster per step for the default preset's UNet
                             on one thread of a CPU with AMX; slower where the hardware
                             lacks bfloat16); the parameters, the optimizer, the loss and
                             the network's use after training stay in float32.
    """

    mode: str = "per-sigma"
    objective: str = "kl"
    sigma: float = 0.1
    sigma_min: float = 0.01
    sigma_max: float = 1.0
    center: bool = False
    precondition: str = "none"
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
    compile: bool = False
    precision: str = "fp32"

    def __post_init__(self) -> None:
        check_choice("mode", self.mode, MODES)
        check_choice("objective", self.objective, OBJECTIVES)
        check_choice("schedule", self.schedule, SCHEDULES)
        check_bool("center", self.center)
        check_bool("compile", self.compile)
        check_choice("precondition", self.precondition, PRECONDITIONS)
        check_choice("precision", self.precision, PRECISIONS)
        if self.precondition != "none" and self.mode != "per-sigma":
            raise ValueError("precondition needs mode='per-sigma' (its scalings depend on σ, "
                             "which a blind universal network is not given)")
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
        return config_from_dict(cls, values)

    @property
    def monitor_interval(self) -> int:
        """Steps between two held-out measurements: ``monitor_every``, or steps // 20."""
        return self.monitor_every or max(1, self.steps // 20)

    def lr_factor(self, step: int) -> float:
        """Multiplier of ``lr`` at optimizer step ``step`` (0-based): warm-up × decay."""
        ramp = min(1.0, (step + 1) / self.warmup) if self.warmup else 1.0
        if self.schedule == "cosine":
            return ramp * 0.5 * (1.0 + math.cos(math.pi * step / self.steps))
        if self.schedule == "step":
            return ramp * 0.1 ** ((step >= self.steps // 2) + (step >= (3 * self.steps) // 4))
        return ramp


def edm_scales(sigma: float, sigma_data: float) -> tuple[float, float]:
    """``(c_skip, c_out)`` of EDM's preconditioning (Karras et al. 2022, Table 1) for
    f(y) = μ̂ + c_skip (y − μ̂) − c_out r(y − μ̂): ``c_skip = σ_d²/(σ² + σ_d²)``,
    ``c_out = σ σ_d/√(σ² + σ_d²)``.

    ``c_skip (y − μ̂)`` is the Wiener shrinkage of a white signal of variance σ_d², so at
    large σ the network learns a small correction to an estimate near μ̂ instead of
    reproducing the noise ``y − μ̂`` to a precision of a few per cent (the residual form);
    ``1/c_out² = σ⁻² + σ_d⁻²`` is the ``balanced`` objective's weight, so the target of
    ``r`` has about unit variance at every σ.
    """
    s2, d2 = sigma**2, sigma_data**2
    return d2 / (s2 + d2), sigma * sigma_data / math.sqrt(s2 + d2)

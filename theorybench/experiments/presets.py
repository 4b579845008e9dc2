"""Presets: every setting of a study, in one typed object per scale.

``smoke`` runs everything on tiny settings in well under a minute (the tests use it);
``default`` gives meaningful numbers on a 2-core CPU within 30 minutes and 4 GB;
``paper`` is sized for one GPU (80×80 images, the paper's UNet, long training) and is
documented, not run by the tests.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np

# (name, params) of each study entry; calpha appears twice to compare two regularities
DatasetEntry = tuple[str, dict]


def _grid(lo: float, hi: float, count: int) -> tuple[float, ...]:
    return tuple(float(f"{s:.4g}") for s in np.geomspace(lo, hi, count))


def builtin_entries(size: int) -> tuple[DatasetEntry, ...]:
    """The built-in study: Gaussian calibration, C^α at α = 2 and 4, disks, faces, shuffled."""
    return (
        ("gaussian", {"size": size}),
        ("calpha", {"size": size, "alpha": 2.0}),
        ("calpha", {"size": size, "alpha": 4.0}),
        ("disks", {"size": size}),
        ("faces", {"split": "test"}),
        ("shuffled", {"base": "faces", "split": "test"}),
    )


@dataclass(frozen=True)
class Preset:
    """Every setting of a run.

    Attributes
    ----------
    name : str
    size : int                  image side of the synthetic families (pixels).
    sigmas : tuple of float     the σ grid (pixel units): per-σ networks, MSE curves, KL.
    n_eval : int                test images per MSE curve (same images and noise for all).
    net : dict                  NetConfig fields of every network.
    per_sigma_steps, universal_steps : int   optimizer steps of each training.
    batch_size : int
    lr : float                  Adam learning rate (cosine decay).
    sigma_max : float           universal networks: σ = σ_max·u², u ~ U(0, 1).
    sigma0s : tuple of float    smoothing levels at which KL intervals are tabulated.
    rate_range : (lo, hi)       σ range of the C^α slope fit (SCIENCE.md §5: mid-range).
    jacobian_images : int       noisy images per Jacobian-analysis cell (d×d Jacobian each).
    memorization : dict         the training-set sweep (SCIENCE.md §8): ``entries``, ``sizes``
                                (N), ``net``, ``steps``, ``batch_size``, ``n_samples`` (K
                                noises), ``n_eval``, ``sampler``; two universal networks on
                                disjoint sets of each size N.
    datasets : entries          (name, params) studied; plugins are added with {}.
    """

    name: str
    size: int
    sigmas: tuple[float, ...]
    n_eval: int
    net: dict
    per_sigma_steps: int
    universal_steps: int
    batch_size: int
    lr: float = 1e-3
    sigma_max: float = 2.0
    sigma0s: tuple[float, ...] = (0.01, 0.05, 0.2)
    rate_range: tuple[float, float] = (0.02, 0.25)
    jacobian_images: int = 2
    datasets: tuple[DatasetEntry, ...] = field(default=())
    memorization: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


PRESETS: dict[str, Preset] = {
    "smoke": Preset(
        name="smoke", size=16, sigmas=_grid(0.02, 1.0, 4), n_eval=16,
        net={"arch": "bfcnn", "channels": 8, "depth": 3}, per_sigma_steps=12,
        universal_steps=16, batch_size=8, sigma0s=(0.02, 0.2), rate_range=(0.02, 0.4),
        jacobian_images=1,
        datasets=builtin_entries(16),
        memorization={"entries": (("disks", {"size": 16}),), "sizes": (1, 4),
                      "net": {"arch": "bfcnn", "channels": 8, "depth": 3}, "steps": 20,
                      "batch_size": 8, "n_samples": 8, "n_eval": 16,
                      "sampler": {"method": "heun", "steps": 10}},
    ),
    "default": Preset(
        name="default", size=32, sigmas=_grid(0.01, 2.0, 8), n_eval=64,
        net={"arch": "bfcnn", "channels": 24, "depth": 7}, per_sigma_steps=250,
        universal_steps=800, batch_size=32, datasets=builtin_entries(32),
        jacobian_images=1,
        memorization={"entries": (("disks", {"size": 16}),), "sizes": (1, 10, 100, 1000),
                      "net": {"arch": "unet", "channels": 16, "blocks": 2,
                              "convs_per_block": 1},
                      "steps": 1000, "batch_size": 32, "n_samples": 64, "n_eval": 64,
                      "sampler": {"method": "heun", "steps": 30}},
    ),
    "paper": Preset(
        name="paper", size=80, sigmas=_grid(0.005, 2.0, 14), n_eval=1024,
        net={"arch": "unet", "channels": 64, "blocks": 3}, per_sigma_steps=40_000,
        universal_steps=200_000, batch_size=128, sigma0s=(0.01, 0.05, 0.2), jacobian_images=8,
        datasets=builtin_entries(80),
        memorization={"entries": (("calpha", {"size": 80, "alpha": 2.0}), ("disks", {"size": 80}),
                                  ("faces", {"split": "test"})),
                      "sizes": (1, 10, 100, 1000, 10_000, 100_000),
                      "net": {"arch": "unet", "channels": 64, "blocks": 3}, "steps": 200_000,
                      "batch_size": 128, "n_samples": 256, "n_eval": 512,
                      "sampler": {"method": "stochastic"}},
    ),
}

"""Presets: every setting of a study, in one typed object per scale.

``smoke`` runs everything on tiny settings in well under a minute (the tests use it);
``default`` gives meaningful numbers on a 2-core CPU in 21–32 minutes, with a peak of
2.8–3.4 GB (summed RSS of the driver and its two workers; the largest cell alone, the C^α
references, peaks at 1.7 GB): the machine's speed moves the same cells by up to a third
from one day to another (docs/default-preset.md: the measured run times, and what sized
each setting);
``gpu`` is sized for about 6 minutes on one H200-class GPU (32×32, wider UNets, the
memorization sweep to N = 10⁴; the tests run it on CPU with tiny overrides); ``paper`` is
sized for one GPU over days (80×80 images, the paper's UNet, long training) and is
documented, not run by the tests.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np

from tbcore.validation import check_bool, check_choice, check_int

from ..evaluation import check_sigmas
from ..networks import NetConfig
from ..train_config import PRECISIONS

# (name, params) of each study entry; calpha appears twice to compare two regularities
DatasetEntry = tuple[str, dict]
# the global-mean path (measured on the default preset's universal networks, 2000 steps, one
# seed): disks MSE −8 % at σ = 0.01, −11 % at 0.1, −28 % at 0.95, −36 % at 2; faces −9 % at
# 0.01; Gaussian −4.5 % at 0.01, −14 % at 0.1; C^α (α = 2) within ±2 % for σ ≤ 1, −5 % at 2
UNET_SMALL = {"arch": "unet", "channels": 16, "blocks": 2, "convs_per_block": 1,
              "global_mean": True}
# the main study's networks: UNET_SMALL with the blind shrinkage (theorybench.blind_shrink,
# which measures its effect); the sweeps' networks stay homogeneous about μ̂ (no shrink)
UNET_SHRINK = {**UNET_SMALL, "shrink": True}


def _grid(lo: float, hi: float, count: int) -> tuple[float, ...]:
    return tuple(float(f"{s:.4g}") for s in np.geomspace(lo, hi, count))


def refine(sigmas: tuple[float, ...], factor: int) -> tuple[float, ...]:
    """A geometric grid with ``factor`` intervals per interval of ``sigmas`` (which it
    contains): the dense grid of the cheap MSE curves around the per-σ networks' grid."""
    dense = {float(f"{s:.4g}") for s in np.geomspace(sigmas[0], sigmas[-1],
                                                     factor * (len(sigmas) - 1) + 1)}
    return tuple(sorted(dense | set(sigmas)))


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
    size : int                  image side of the synthetic families (pixels): of the
                                entries' ``size`` and of plugins (``--override size=…``
                                sets both; the sweeps keep their own).
    sigmas : tuple of float     the σ grid of the per-σ networks (pixel units, strictly
                                increasing); its ends are the universal networks'
                                training range.
    curve_sigmas : tuple of float   the dense grid (containing ``sigmas``) of the MSE curves
                                of references and universal networks, and of their KL.
    n_eval : int                test images per MSE curve (same images and noise for all).
    net : dict                  NetConfig fields of the main study's networks (but for
                                the families of ``net_by_family``).
    net_by_family : dict        ``{family name: {NetConfig field: value}}``: the networks
                                (universal and per-σ) of every entry of that family take
                                these fields over ``net`` (:meth:`family_net`).
    per_sigma_steps, universal_steps : int   optimizer steps of each training.
    universal_steps_by_family : dict   ``{family name: steps}``: the universal networks of
                                every entry of that family train this long instead (compute
                                spent where a headline number is furthest from its target);
                                their per-σ networks start from those networks.
    batch_size : int
    lr : float                  Adam learning rate (cosine decay) of the universal networks.
    per_sigma_lr : float        the same for the per-σ networks.
    objective : str             ``TrainConfig.objective`` ("kl": the KL bound, or "paper").
    center : bool               networks subtract the training data's mean image.
    warm_start : bool           per-σ networks start from the universal network's weights.
    precondition : bool         per-σ networks use ``TrainConfig.precondition="auto"``:
                                each starts from the better, on its first training images,
                                of the started-from network and EDM's preconditioned form
                                (a shrinkage toward μ̂ plus a learned correction); without
                                a warm start, EDM's form. False: the paper's residual form.
    monitor_sigmas : tuple      σ of the held-out MSE tracked during universal training.
    sigma0s : tuple of float    smoothing levels at which KL intervals are tabulated.
    rate_range : (lo, hi)       σ range of the C^α slope fit (SCIENCE.md §5: mid-range).
    jacobian_images : int       noisy images per Jacobian-analysis cell (d×d Jacobian each).
    compile : bool              every network of the run trains with ``torch.compile``d
                                steps (``TrainConfig.compile``: 1.7–1.9× faster per step on the
                                default preset's UNet; a C++ compiler is then needed).
    precision : {"fp32", "bf16"}   every network's training forward (``TrainConfig.precision``:
                                bf16 is 2.2× faster per step for the default preset's UNet
                                on a CPU with AMX, at the same error after 6000 steps).
    memorization : dict         the training-set sweep (SCIENCE.md §8): ``entries``, ``sizes``
                                (N), ``net``, ``steps``, ``batch_size``, ``n_samples`` (K
                                noises), ``n_eval``, ``sampler``, optional ``objective``
                                (default "paper"), ``center``, ``lr`` (default: ``lr``),
                                ``sigma_max`` (the networks' top σ and the samplers' start,
                                default 1), ``pair_sigma`` (σ of the Jacobian comparison of
                                each pair, default the middle of ``sigmas``),
                                ``posterior_samples`` (at the largest N, the family's
                                posterior mean sampled as the networks: the ceiling of the
                                images-of-the-family criterion; default False); two
                                universal networks on disjoint sets of each size N.
                                Optional ``machines`` (``patches``, ``n_samples``,
                                ``n_calibration``, ``boundary``): the LS/ELS machines next to
                                the networks (``experiments.machines_sweep``).
    datasets : entries          (name, params) studied; plugins are added with {}.
    dimensions : dict           the intrinsic-dimension study (SCIENCE.md §5;
                                ``experiments.dimension_study``): ``family`` (a family with
                                a parameter k), ``ks``, ``size``, ``net``,
                                ``steps``, ``batch_size``, ``jacobian_images``, optional
                                ``lr``, ``n_eval``; one universal network per k (empty: none).
    """

    name: str
    size: int
    sigmas: tuple[float, ...]
    n_eval: int
    net: dict
    per_sigma_steps: int
    universal_steps: int
    batch_size: int
    curve_sigmas: tuple[float, ...] = ()
    universal_steps_by_family: dict = field(default_factory=dict)
    net_by_family: dict = field(default_factory=dict)
    lr: float = 1e-3
    per_sigma_lr: float = 3e-4
    objective: str = "kl"
    center: bool = True
    warm_start: bool = True
    precondition: bool = True
    monitor_sigmas: tuple[float, ...] = (0.01, 0.1, 1.0)
    sigma0s: tuple[float, ...] = (0.01, 0.05, 0.2)
    rate_range: tuple[float, float] = (0.02, 0.25)
    jacobian_images: int = 2
    compile: bool = False
    precision: str = "fp32"
    datasets: tuple[DatasetEntry, ...] = field(default=())
    memorization: dict = field(default_factory=dict)
    dimensions: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_int("size", self.size, low=1)
        check_int("n_eval", self.n_eval, low=2)
        for name in ("center", "warm_start", "precondition", "compile"):
            check_bool(name, getattr(self, name))
        check_choice("precision", self.precision, PRECISIONS)
        for name in ("sigmas", "curve_sigmas"):  # curve_sigmas empty: the per-σ grid
            grid = getattr(self, name) or self.sigmas
            grid = tuple(check_sigmas(grid, name)) if len(grid) else ()
            if len(grid) < 2 or any(np.diff(grid) <= 0):
                raise ValueError(f"{name} must hold at least 2 values > 0, strictly "
                                 f"increasing; got {list(grid)}")
            object.__setattr__(self, name, grid)
        missing = sorted(set(self.sigmas) - set(self.curve_sigmas))
        if missing:
            raise ValueError(f"curve_sigmas must contain every σ of sigmas; missing {missing}")
        lo, hi = self.curve_sigmas[0], self.curve_sigmas[-1]
        sigma0s = tuple(check_sigmas(self.sigma0s, "sigma0s"))
        outside = [s for s in sigma0s if not lo <= s <= hi]
        if outside:
            raise ValueError(f"sigma0s must lie in the curve grid's range [{lo:g}, {hi:g}] "
                             f"(the KL integrates from σ0 to its top); got {outside}")
        object.__setattr__(self, "sigma0s", sigma0s)
        if self.monitor_sigmas:
            object.__setattr__(self, "monitor_sigmas",
                               tuple(check_sigmas(self.monitor_sigmas, "monitor_sigmas")))
        for family, steps in self.universal_steps_by_family.items():
            if not isinstance(family, str):
                raise ValueError(f"universal_steps_by_family keys must be family names, "
                                 f"got {family!r}")
            check_int(f"universal_steps_by_family[{family!r}]", steps, low=1)
        for family, fields in self.net_by_family.items():
            if not isinstance(family, str) or not isinstance(fields, dict):
                raise ValueError(f"net_by_family must map family names to dicts of NetConfig "
                                 f"fields, got {family!r}: {fields!r}")
            try:  # a bad field is refused here, even where the family is not studied
                NetConfig.from_dict(self.family_net(family))
            except (TypeError, ValueError) as exc:
                raise ValueError(f"net_by_family[{family!r}]: {exc}") from None

    def family_net(self, family: str) -> dict:
        """The NetConfig fields of the main study's networks on ``family``: ``net`` with
        that family's ``net_by_family`` fields."""
        return {**self.net, **self.net_by_family.get(family, {})}

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


PRESETS: dict[str, Preset] = {
    "smoke": Preset(
        name="smoke", size=16, sigmas=_grid(0.02, 1.0, 4), n_eval=16,
        curve_sigmas=refine(_grid(0.02, 1.0, 4), 2), monitor_sigmas=(0.02, 0.2, 1.0),
        net={"arch": "bfcnn", "channels": 8, "depth": 3, "shrink": True}, per_sigma_steps=12,
        universal_steps=16, batch_size=8, sigma0s=(0.02, 0.2), rate_range=(0.02, 0.4),
        jacobian_images=1,
        datasets=builtin_entries(16),
        memorization={"entries": (("disks", {"size": 16}),), "sizes": (1, 4),
                      "net": {"arch": "bfcnn", "channels": 8, "depth": 3}, "steps": 20,
                      "batch_size": 8, "n_samples": 8, "n_eval": 16,
                      "sampler": {"method": "heun", "steps": 10}, "posterior_samples": True,
                      "machines": {"patches": (3, 5), "n_samples": 4, "n_calibration": 2}},
        dimensions={"family": "ellipses", "ks": (1, 3), "size": 16,
                    "net": {"arch": "bfcnn", "channels": 8, "depth": 3}, "steps": 16,
                    "batch_size": 8, "jacobian_images": 1, "n_eval": 8},
    ),
    "default": Preset(
        # every choice below was measured on the 2-core CPU: docs/default-preset.md keeps
        # the measurements (steps per CPU-second, objectives, architecture per family,
        # compiled bfloat16 steps, what the memorization networks' samples need)
        name="default", size=32, sigmas=_grid(0.01, 2.0, 8),
        curve_sigmas=refine(_grid(0.01, 2.0, 8), 4), n_eval=64,
        net=UNET_SHRINK, per_sigma_steps=400, universal_steps=4000,
        universal_steps_by_family={"disks": 28_000, "shuffled": 2000},
        net_by_family={"disks": {"blocks": 3}}, batch_size=32,
        lr=3e-3,
        per_sigma_lr=1e-3, objective="balanced", datasets=builtin_entries(32),
        jacobian_images=1, compile=True, precision="bf16",
        # faces: 80 training images, so N = 1, 10 and 40 (two disjoint sets)
        memorization={"entries": (("disks", {"size": 16}), ("faces", {"split": "test"})),
                      "sizes": (1, 10, 100, 1000),
                      "net": UNET_SMALL, "steps": 2000, "batch_size": 32, "n_samples": 64,
                      "n_eval": 64, "sampler": {"method": "heun", "steps": 30},
                      "objective": "paper", "lr": 1e-3, "posterior_samples": True,
                      "machines": {"patches": (3, 5, 7, 11, 15), "n_samples": 32,
                                   "n_calibration": 8}},
        # 16×16, universal networks only, five of the family's seven k (docs/default-preset.md:
        # the dimension study)
        dimensions={"family": "ellipses", "ks": (1, 2, 3, 5, 7), "size": 16,
                    "net": UNET_SMALL, "steps": 12_000, "batch_size": 32, "jacobian_images": 4},
    ),
    "gpu": Preset(
        # sized for one H200-class GPU in about 6 minutes of a 16-worker run, an estimate:
        # not yet run on one (no device was free in any session so far). 32-channel UNets
        # at batch 128; n_eval, the σ grids and the entries are the default preset's, so
        # its main study's reference cells (CPU work, minutes each) are the default's; all
        # its reference cells are computed beforehand with `--kinds reference` and carried
        # (bench/gpu_session.sh). At batch 128 each universal network sees 512,000 images
        # (the default's 64,000, its disks network 768,000) and each dimension-study
        # network 384,000 (the default's 256,000); it keeps one step budget for every
        # family, its networks wider and deeper than the default's. Its training is eager
        # and float32: neither compiled steps nor a bfloat16 forward has run on a GPU yet
        name="gpu", size=32, sigmas=_grid(0.01, 2.0, 8),
        curve_sigmas=refine(_grid(0.01, 2.0, 8), 4), n_eval=64,
        net={"arch": "unet", "channels": 32, "blocks": 3, "convs_per_block": 2, "shrink": True},
        per_sigma_steps=300, universal_steps=4000, batch_size=128, lr=1e-3,
        per_sigma_lr=3e-4, objective="balanced",
        datasets=builtin_entries(32), jacobian_images=2,
        memorization={"entries": (("disks", {"size": 32}),),
                      "sizes": (1, 10, 100, 1000, 10_000),
                      "net": {"arch": "unet", "channels": 32, "blocks": 3, "convs_per_block": 2},
                      "steps": 3000, "batch_size": 128, "n_samples": 128, "n_eval": 64,
                      "sampler": {"method": "heun", "steps": 40}, "objective": "balanced",
                      "center": True,
                      "machines": {"patches": (3, 5, 9, 15), "n_samples": 16,
                                   "n_calibration": 4}},
        dimensions={"family": "ellipses", "ks": (1, 2, 3, 4, 5, 6, 7), "size": 16,
                    "net": {"arch": "unet", "channels": 32, "blocks": 3, "convs_per_block": 2},
                    "steps": 3000, "batch_size": 128, "jacobian_images": 4},
    ),
    "paper": Preset(
        name="paper", size=80, sigmas=_grid(0.005, 2.0, 14),
        curve_sigmas=refine(_grid(0.005, 2.0, 14), 2), n_eval=1024,
        net={"arch": "unet", "channels": 64, "blocks": 3}, per_sigma_steps=40_000,
        universal_steps=200_000, batch_size=128, sigma0s=(0.01, 0.05, 0.2), jacobian_images=8,
        datasets=builtin_entries(80), warm_start=False, precondition=False, per_sigma_lr=1e-3,
        memorization={"entries": (("calpha", {"size": 80, "alpha": 2.0}), ("disks", {"size": 80}),
                                  ("faces", {"split": "test"})),
                      "sizes": (1, 10, 100, 1000, 10_000, 100_000),
                      "net": {"arch": "unet", "channels": 64, "blocks": 3}, "steps": 200_000,
                      "batch_size": 128, "n_samples": 256, "n_eval": 512,
                      "sampler": {"method": "stochastic"}},
    ),
}

"""Memorization → generalization sweep: two networks on disjoint training sets (SCIENCE.md §8).

For each distribution and training-set size N, a ``memorization`` cell

1. draws two disjoint training sets S1, S2 of N images (synthetic: images ``[0, N)`` and
   ``[N, 2N)`` of one seeded stream; finite data sets: a seeded permutation of the training
   split, so ``2N`` may not exceed its size);
2. trains two universal blind networks (same architecture and schedule, one on each set,
   each from its own initialization seed) and saves both checkpoints;
3. samples both networks and the empirical denoiser of S1 (the pure-memorization
   baseline, SCIENCE.md §3) from the same K initial noises with the same sampler (by
   default the deterministic Heun probability-flow ODE, SCIENCE.md §7, so the same noise
   gives comparable images);
4. measures each sample against its generator's training set: the copy criterion
   (``memorization.COPY_THRESHOLD``: centred cosine above 0.98 to the nearest training
   image, centred on the mean of the cell's unit-normalized held-out images; defined at
   every N, N = 1 included) gives the memorized fraction with its Wilson
   interval (not degenerate at 0 and 1, as a bootstrap's is); also the
   nearest-training cosines, plain and mean-subtracted, and d1/d2 (N >= 2); the two
   networks' samples against each other (cross cosine), the S1 network's train and test
   MSE per σ (the generalization gap), and the S2 network's MSE on the S1 images (the
   gap on the same images and noise, free of the held-out images' difficulty);
5. the baseline: the same measures for the cell's real held-out images against S1, so that
   a sample's novelty reads against the data's own (each held-out image's copy criterion
   centred on the mean of the *other* held-out images,
   :func:`memorization.baseline_reference`: no image sets its own centring);
6. for a family that can project onto its manifold (``Distribution.project``: disks),
   which samples are images of the family: the squared distance to the best fit per
   pixel at most ``memorization.ON_MANIFOLD_FACTOR``·σ_last² (σ_last: the sampler's last
   noise level) and the fit's distance to the nearest constant image above it (a flat
   fit shows no shape), with the held-out images, clean and seen at σ_last, as baselines;
   and, for an ODE sampler, where the networks' samples leave the family on the way: at
   each σ of the sampler's grid but the last (the final denoising's input is not
   recorded), the fraction of the networks' iterates (states carrying noise σ) within
   F·σ² per pixel of their best fit (no flatness test: the noise is there), against
   held-out images with noise σ;
7. with ``posterior_samples`` (at the entry's largest N, for a family with a projection
   and a posterior mean, :func:`posterior_mean`): the same sampler and noises drive the
   family's posterior mean (for disks an importance-sampled estimate, an upper reference),
   and its samples are measured as in 6: what a denoiser at (about) the MMSE reaches with
   this sampler and these noises, a reference for the networks' fractions.

Besides the plain d1/d2, the ratio between unit-norm images is recorded: a bias-free
network is homogeneous (``f(ay) = a f(y)``), so when it memorizes it reproduces a training
image only up to a scale that the initial noise sets, which the plain d1/d2 counts
against it.

The initial noises depend on the study seed only, not on N, so the report's image grids
show the same noise at every N. At N = 1 the ratio d1/d2 is undefined (no second training
image): its columns are NaN and its fractions None.
"""

from __future__ import annotations

import inspect
import math
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd
import torch

import datasets_synth
from datasets_synth.base import Distribution
from datasets_synth.references.empirical import EmpiricalDenoiser
from tbcore.seeding import block_generator, derived_seed
from tbcore.validation import check_int, check_seed, resolve_device

from ..cache import Cache
from ..evaluation import TensorImages, check_sigmas, mse_curve, training_curve
from ..memorization import (
    COPY_THRESHOLD,
    ON_MANIFOLD_FACTOR,
    baseline_reference,
    manifold_fit,
    manifold_tolerance,
    memorization_measures,
    on_manifold,
    reference_direction,
    summarize,
    unit_images,
    wilson_interval,
)
from ..networks import net_config_for
from ..sampling import ODE_SAMPLERS, SAMPLERS, SamplingDiverged, sample
from ..train_config import TrainConfig
from ..training import TrainingDiverged, converged, train
from .keys import CellKind, MissingCheckpoint, curve_record, entry_label

KIND = "memorization"
STUDY = "memorization"  # the tag of the sweep's own reference cells (kept out of the main tables)
STREAM_TRAINSET, STREAM_NOISE, STREAM_NETS = 31, 32, 33  # 34: evaluation.TRAINING_IMAGES_STREAM
STREAM_HELD_NOISE = 35  # noise of the held-out images in the on-manifold baseline
EXAMPLES = 6  # initial noises whose images are kept for the report's grids
DEFAULT_SAMPLER = {"method": "heun", "sigma_min": 0.01, "steps": 40, "mean": "auto"}
ROLES = ("s1", "s2", "empirical")  # S1 network, S2 network, empirical denoiser of S1
PER_SAMPLE = ("memorized", "copy_cos", "copy_index", "ratio", "memorized_ratio",
              "ratio_unit", "memorized_unit", "nn_index", "cos_nn", "cos_nn_centered",
              "max_cos", "max_cos_centered", "cross_cos", "cross_cos_centered",
              "cross_copy_cos", "manifold_residual", "manifold_shape")
BASELINE_PER_SAMPLE = ("memorized", "copy_cos", "cos_nn", "cos_nn_centered")


# ----------------------------------------------------------------------------- cells


def resolve_sampler(sampler: dict | None, sigma_max: float) -> dict:
    """The sampler options of a cell: defaults (Heun ODE from the training σ_max) + overrides.

    ``mean="auto"`` stands for the scalar pixel mean of the held-out images, resolved when
    the cell runs. Unknown methods or options raise ValueError naming the valid ones.
    """
    options = {**DEFAULT_SAMPLER, **(sampler or {})}
    method = options.pop("method")
    if method not in SAMPLERS:
        raise ValueError(f"sampler method must be one of {sorted(SAMPLERS)}, got {method!r}")
    valid = [p for p, v in inspect.signature(SAMPLERS[method]).parameters.items()
             if v.kind is inspect.Parameter.KEYWORD_ONLY]
    if method == "stochastic":  # the ODE defaults do not apply to the stochastic ascent
        for key in ("sigma_min", "steps"):
            if key not in (sampler or {}):
                options.pop(key)
        options.setdefault("sigma0", sigma_max)
    else:
        options.setdefault("sigma_max", sigma_max)
    valid.remove("record_every")  # the cell records the iterates it traces itself
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ValueError(f"unknown sampler option(s) {unknown} for method {method!r}; "
                         f"valid: {valid}")
    if not (options.get("mean") == "auto" or isinstance(options.get("mean"), (int, float))):
        raise ValueError(f"sampler mean must be 'auto' or a number, got {options.get('mean')!r}")
    return {"method": method, **options}


def build_memorization_cells(entries, sizes, net: dict, steps: int, batch_size: int, lr: float,
                             sigma_max: float, n_samples: int, sigmas, n_eval: int,
                             sampler: dict | None, seed: int, objective: str = "paper",
                             center: bool = False, monitor_sigmas=(),
                             compile: bool = False, precision: str = "fp32",
                             posterior_samples: bool = False) -> list[dict]:
    """One ``memorization`` cell spec per (entry, N).

    Parameters
    ----------
    entries : sequence of (name, params)   distributions, as ``presets.builtin_entries``.
    sizes : sequence of int >= 1   training-set sizes N. For a finite data set, N above
        ``len(dist.train_images()) // 2`` (two disjoint sets) become that largest N.
    net : dict              NetConfig fields of both networks.
    steps, batch_size : int   optimizer steps and images per step of each training.
    lr : float              Adam learning rate (cosine decay).
    sigma_max : float       universal training: the largest σ (pixel units); also the
                            sampler's starting level unless ``sampler`` says otherwise.
    n_samples : int >= 1    K, initial noises shared by both networks and the baseline.
    sigmas : sequence of float   σ grid of the train/test MSE curves (pixel units).
    n_eval : int >= 2       images per MSE curve (test: held-out images, paired with the
                            reference cells of the same seed where :func:`held_out` returns
                            the entry's own distribution: a synthetic family, or an entry
                            that is itself a test split; train: images of S1).
    sampler : dict or None  ``{"method": ..., **options}`` (default: Heun ODE, 40 σ values
                            from σ_max to 0.01, mean = held-out pixel mean).
    seed : int >= 0         study seed: training sets, noises, initializations.
    objective : "paper" (σ = σ_max·u², unweighted: serves the sampler's large σ) or "kl"
                            (``training.TrainConfig``; the report says which was used).
    center : bool           subtract the training set's mean image (``TrainConfig.center``).
    monitor_sigmas : sequence of float   σ of the held-out error tracked during each
                            training (``TrainConfig.monitor_sigmas``; none: not monitored).
    compile : bool          compiled training steps (``TrainConfig.compile``).
    precision : str         the training forward's arithmetic (``TrainConfig.precision``).
    posterior_samples : bool   at each entry's largest N, also sample the family's
                            posterior mean (module docstring, item 7), where the family
                            has one and a projection.

    Returns
    -------
    list of JSON-serializable dicts with ``kind``, ``dataset``, ``params``, ``N``, ``net``,
    ``train``, ``n_samples``, ``sigmas``, ``n_eval``, ``sampler``, ``seed`` and
    ``posterior_samples`` (bool).
    """
    seed = check_seed(seed)
    n_samples = check_int("n_samples", n_samples, low=1)
    n_eval = check_int("n_eval", n_eval, low=2)
    sizes = sorted({check_int("N", n, low=1) for n in sizes})
    if not sizes:
        raise ValueError("sizes must hold at least one training-set size N >= 1")
    sigmas = check_sigmas(sigmas)
    train_cfg = TrainConfig(mode="universal", objective=objective, sigma_min=min(sigmas),
                            sigma_max=sigma_max, center=center, steps=steps,
                            batch_size=batch_size, lr=lr, seed=seed,
                            monitor_sigmas=tuple(monitor_sigmas), compile=compile,
                            precision=precision)
    sampler = resolve_sampler(sampler, train_cfg.sigma_max)
    cells = []
    for name, params in entries:
        dist = datasets_synth.get(name, **params)
        net_cfg = net_config_for(net, dist)
        limit = math.inf
        if dist.num_images is not None:
            limit = len(dist.train_images()) // 2  # S1 and S2 must be disjoint
        chosen = sorted({min(n, limit) for n in sizes})
        reference = bool(posterior_samples and has_projection(dist)
                         and posterior_mean(dist) is not None)
        for n in chosen:
            cells.append({"kind": KIND, "dataset": name, "params": dict(params), "N": n,
                          "net": net_cfg.to_dict(), "train": train_cfg.to_dict(),
                          "n_samples": n_samples, "sigmas": list(sigmas), "n_eval": n_eval,
                          "sampler": dict(sampler), "seed": seed,
                          "posterior_samples": reference and n == chosen[-1]})
    return cells


def has_projection(dist) -> bool:
    """Whether the family fits its own images (it overrides ``Distribution.project``)."""
    return type(dist).project is not Distribution.project


def posterior_mean(dist) -> tuple[str, object] | None:
    """The family's posterior mean among its reference denoisers, as ``(name, denoiser)``:
    the ``exact`` one, else the one named ``posterior`` (an estimate from y alone); None
    without either."""
    references = dist.reference_denoisers()
    exact = [(name, d) for name, d in references.items() if d.kind == "exact"]
    if exact:
        return exact[0]
    return ("posterior", references["posterior"]) if "posterior" in references else None


def describe_memorization(spec: dict) -> str:
    """One line naming a memorization cell."""
    return (f"memorization sweep on {entry_label(spec['dataset'], spec['params'])}, "
            f"N={spec['N']}")


# ----------------------------------------------------------------------------- data


def training_sets(dist, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Disjoint training sets S1, S2 of ``n`` images each, and the rest of a finite set.

    Synthetic (``dist.num_images is None``): images ``[0, n)`` and ``[n, 2n)`` of
    ``dist.sample(2n, seed=derived_seed(seed, STREAM_TRAINSET))``; rest is empty.
    Finite: a seeded permutation of ``dist.train_images()``; ``2n`` must not exceed its size.

    Returns
    -------
    s1, s2 : tensors (n, c, h, w) float32 on the CPU; rest : tensor (m, c, h, w).
    """
    n = check_int("N", n, low=1)
    set_seed = derived_seed(seed, STREAM_TRAINSET)
    if dist.num_images is None:
        images = dist.sample(2 * n, set_seed)
        return images[:n], images[n:], images[:0]
    pool = dist.train_images()
    if 2 * n > len(pool):
        raise ValueError(f"N must be <= {len(pool) // 2} for {dist.name} (two disjoint sets "
                         f"from its {len(pool)} training images), got {n}")
    perm = torch.randperm(len(pool), generator=block_generator(set_seed, 0, STREAM_TRAINSET))
    return pool[perm[:n]].float(), pool[perm[n:2 * n]].float(), pool[perm[2 * n:]].float()


def held_out(dist, name: str, params: dict, rest: torch.Tensor):
    """Images the networks never saw: the distribution itself (synthetic, or a finite set
    sampling its test split), the test split of a finite set, else the unused training
    images (at least 2), else None."""
    if dist.num_images is None or params.get("split") == "test":
        return dist
    if "split" in params:
        return datasets_synth.get(name, **{**params, "split": "test"})
    return TensorImages(rest) if len(rest) >= 2 else None


# ----------------------------------------------------------------------------- measures


def _measures(samples, train_images, other, reference=None) -> pd.DataFrame:
    """``memorization_measures`` (copy criterion centred on ``reference``), plus
    ``ratio_unit``/``memorized_unit``: d1/d2 between unit-norm images (NaN/False at N = 1).

    A bias-free (homogeneous) network that memorizes reproduces a training image up to a
    scale set by the initial noise; the unit-norm ratio, ``√(1 − c1)/√(1 − c2)`` with c1,
    c2 the two largest cosines, ignores that scale, as the cosine measures do.
    """
    frame = memorization_measures(samples, train_images, other_samples=other,
                                  reference=reference)
    unit = memorization_measures(unit_images(samples), unit_images(train_images))
    frame["ratio_unit"] = unit["ratio"].to_numpy()
    frame["memorized_unit"] = unit["memorized_ratio"].to_numpy()
    return frame


def last_sigma(method: str, options: dict) -> float:
    """The sampler's last noise level: ``sigma_min`` of the ODE samplers (the last value of
    an explicit ``sigmas`` schedule), ``sigma_stop`` of the stochastic ascent (the option
    given, else the sampler's default)."""
    if options.get("sigmas") is not None:
        return float(min(options["sigmas"]))
    name = "sigma_stop" if method == "stochastic" else "sigma_min"
    default = inspect.signature(SAMPLERS[method]).parameters[name].default
    return float(options.get(name, default))


def _manifold_summary(images: torch.Tensor, dist, sigma: float):
    """Images of the family among ``images`` (:func:`on_manifold`): ``(summary, residuals,
    shapes)``, the per-image values of :func:`manifold_fit` (n,) and a summary with their
    fraction, its Wilson interval, the fraction of flat images (the fit's shape within the
    tolerance) and the median residual per pixel; None when the family has no projection."""
    fit = manifold_fit(images, dist, sigma)
    if fit is None:
        return None
    residuals, shapes = fit
    flags = on_manifold(residuals, shapes, sigma)
    summary = {"on_manifold_fraction": float(flags.mean()),
               "on_manifold_ci": wilson_interval(int(flags.sum()), len(flags)),
               "flat_fraction": float((shapes <= manifold_tolerance(sigma)).mean()),
               "median_manifold_residual": float(np.median(residuals))}
    return summary, residuals, shapes


def fraction_within(images: torch.Tensor, dist, sigma: float) -> float:
    """The fraction of ``images`` (n, c, h, w), seen at noise level ``sigma``, within
    ``manifold_tolerance(sigma)`` of their best fit (:func:`manifold_fit`; no flatness
    test: images carrying noise σ)."""
    residuals, _ = manifold_fit(images, dist, sigma)
    return float((residuals <= manifold_tolerance(sigma)).mean())


def trace_fractions(run, dist) -> list[float]:
    """Per recorded iterate of an ODE run (``run.trajectory_steps``: step k is at σ_k of
    its grid; the last σ, the final denoising's input, is never recorded),
    :func:`fraction_within` of the iterates at that σ."""
    return [fraction_within(run.trajectory[:, j].cpu(), dist, float(run.grid[k]))
            for j, k in enumerate(run.trajectory_steps.tolist())]


def _json_summary(summary: dict) -> dict:
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in summary.items()}


def _rounded(images: torch.Tensor) -> list:
    return np.round(images.detach().float().cpu().numpy().astype(np.float64), 4).tolist()


# ----------------------------------------------------------------------------- cell inputs


class CellInputs(NamedTuple):
    """What a memorization cell, and every analysis of its networks, rebuilds from its spec:
    the distribution, the training sets S1, S2 (and the rest of a finite set), the held-out
    distribution with its ``n_test`` images ``held`` (None without held-out images), the
    sampler's ``method`` and ``options`` (``mean="auto"`` resolved to the held-out pixel
    mean, 0.5 without them)."""

    dist: object
    s1: torch.Tensor
    s2: torch.Tensor
    rest: torch.Tensor
    test_dist: object
    n_test: int | None
    held: torch.Tensor | None
    method: str
    options: dict


def cell_inputs(spec: dict) -> CellInputs:
    """:class:`CellInputs` of a memorization cell spec (deterministic in its seed)."""
    dist = datasets_synth.get(spec["dataset"], **spec["params"])
    seed = spec["seed"]
    s1, s2, rest = training_sets(dist, spec["N"], seed)
    test_dist = held_out(dist, spec["dataset"], spec["params"], rest)
    n_test = None if test_dist is None else min(spec["n_eval"], test_dist.num_images or
                                               spec["n_eval"])
    held = None if test_dist is None else test_dist.sample(n_test, seed)
    options = dict(spec["sampler"])
    method = options.pop("method")
    if options.get("mean") == "auto":  # the distribution's mean, from held-out images
        options["mean"] = float(held.mean()) if held is not None else 0.5
    return CellInputs(dist, s1, s2, rest, test_dist, n_test, held, method, options)


def initial_noise(spec: dict, shape, count: int | None = None) -> torch.Tensor:
    """The cell's initial noises (K, c, h, w), or their first ``count``: they depend on the
    study seed only, so every N (and every analysis) samples from the same ones."""
    gen = block_generator(derived_seed(spec["seed"], STREAM_NOISE), 0, STREAM_NOISE)
    return torch.randn((spec["n_samples"], *shape), generator=gen)[:count]


def checkpoints(spec: dict, cache: Cache, what: str) -> list[Path]:
    """The two networks' checkpoints of the memorization cell ``spec["memorization_key"]``
    that ``what`` (a description of the reading cell) needs; MissingCheckpoint if absent."""
    paths = [Path(cache.artifact_path(spec["memorization_key"], f"-s{i}.pt")) for i in (1, 2)]
    for path in paths:
        if not path.exists():
            raise MissingCheckpoint(f"{what}: no checkpoint {path.name} (run the "
                                    f"memorization cell first)")
    return paths


# ----------------------------------------------------------------------------- compute


def _posterior_samples(dist, noise, method: str, options: dict, sigma_last: float,
                       trace: bool) -> dict:
    """The family's posterior mean sampled with the networks' sampler and noises (module
    docstring, item 7): ``denoiser`` and ``kind`` (its name and reference kind), the
    summary of item 6 and, with ``trace``, its iterates' trace; a diverging run gives
    ``failed`` (the message) and leaves the networks' results standing."""
    name, denoiser = posterior_mean(dist)
    out = {"denoiser": name, "kind": denoiser.kind}
    try:
        run = sample(denoiser, noise, method=method, **options, record_every=int(trace))
    except SamplingDiverged as exc:
        return {**out, "failed": str(exc)}
    out.update(_json_summary(_manifold_summary(run.images.cpu(), dist, sigma_last)[0]))
    if trace:
        out["trace"] = trace_fractions(run, dist)
    return out


def compute_memorization(spec: dict, cache: Cache, key: str, device=None,
                         progress: bool = False) -> dict:
    """Run one memorization cell (module docstring); return a JSON-serializable result.

    Returns
    -------
    dict with ``N``; ``train_seeds``, ``sampler`` (the options used, ``mean`` resolved);
    ``loss_s1``/``loss_s2`` (final training loss); ``monitor_s1``/``monitor_s2`` and
    ``converged_s1``/``converged_s2`` (held-out error during training and its convergence
    flag, :func:`~theorybench.training.converged`); ``mse_train``/``mse_test`` (curves of
    the S1 network: per-pixel MSE on S1 images and on held-out images, per σ of
    ``spec["sigmas"]``), ``mse_cross`` (the S2 network on the S1 images and noise of
    ``mse_train``); ``summary`` ``{role: summarize(...)}`` and ``per_sample`` ``{role:
    {column: K values}}`` (``memorized``: the copy criterion) for roles ``s1`` (S1 network
    vs S1, cross vs S2 network), ``s2`` (S2 network vs S2, cross vs S1 network),
    ``empirical`` (empirical denoiser of S1 vs S1, cross vs the S1 network); ``examples``
    (the first noises' images: ``s1``, ``s1_nearest``, ``s2``, ``s2_nearest``,
    ``empirical``, each (E, c, h, w) lists); ``centring`` (the copy criterion's, in words)
    and ``copy_threshold``; ``baseline`` (the cell's held-out images against S1, each
    centred on the mean of the others (a lone one on its own pixel mean): ``summary`` and
    ``per_sample`` as for a role; absent without held-out images). For a family with
    ``project``: ``manifold`` (``sigma_last``, ``factor``), each role's summary adds
    ``on_manifold_fraction``, ``on_manifold_ci``, ``flat_fraction`` and
    ``median_manifold_residual`` (per sample: ``manifold_residual``, ``manifold_shape``),
    and ``baseline["manifold"]`` holds those of the held-out images, ``clean`` and ``noisy``
    (plus σ_last noise); ``trace`` (ODE samplers: ``sigma``, the grid's levels but the last,
    and per level the fractions of ``s1``'s and ``s2``'s iterates, of the held-out images
    with that noise, ``held``, and with ``posterior_samples`` of the posterior's iterates,
    ``posterior``, that lie within the tolerance of the family); with
    ``spec["posterior_samples"]``, ``posterior_samples``: the summary of item 6 for the
    posterior mean's samples, with its ``denoiser`` name and ``kind`` (``failed`` if its
    sampler diverged). A diverging training or sampler gives ``failed`` (the message) and
    whatever was computed before.
    """
    device = resolve_device(device)
    n, seed = spec["N"], spec["seed"]
    dist, s1, s2, _, test_dist, n_test, held, method, options = cell_inputs(spec)
    net_cfg = net_config_for(spec["net"], dist)
    train_seeds = [derived_seed(spec["train"]["seed"], STREAM_NETS, i) for i in (1, 2)]
    result = {"N": n, "train_seeds": train_seeds, "sampler": {"method": method, **options},
              "n_test": n_test}
    try:
        nets = []
        for i, (images, tseed) in enumerate(zip((s1, s2), train_seeds, strict=True), 1):
            cfg = TrainConfig.from_dict({**spec["train"], "seed": tseed})
            den = train(dist, net_cfg, cfg, train_images=images, device=device,
                        progress=progress)
            den.save(cache.artifact_path(key, f"-s{i}.pt"))
            nets.append(den)
            result[f"loss_s{i}"] = den.history["loss"][-1] if den.history["loss"] else None
            monitor = den.history.get("monitor", {})
            result[f"monitor_s{i}"], result[f"converged_s{i}"] = monitor, converged(monitor)

        # generalization gap: the S1 network on its training images vs held-out images
        frame = training_curve(nets[0], s1, spec["sigmas"], seed, n=spec["n_eval"],
                               device=device)
        result["mse_train"] = curve_record(frame)
        # the same S1 images and noise through the S2 network, which never saw them: over
        # mse_train, what the S1 network fits of its own images, free of any difference in
        # difficulty between S1 and the held-out images
        frame = training_curve(nets[1], s1, spec["sigmas"], seed, n=spec["n_eval"],
                               device=device)
        result["mse_cross"] = curve_record(frame)
        if test_dist is not None:
            frame = mse_curve(nets[0], test_dist, spec["sigmas"], n=n_test, seed=seed,
                              device=device)
            result["mse_test"] = curve_record(frame)

        # the same K initial noises for every denoiser (independent of N)
        noise = initial_noise(spec, dist.shape).to(device)
        denoisers = {"s1": nets[0], "s2": nets[1], "empirical": EmpiricalDenoiser(s1.to(device))}
        # an ODE sampler's iterates, for the family's trace (module docstring, item 6)
        trace = method in ODE_SAMPLERS and has_projection(dist)
        runs = {role: sample(den, noise, method=method, **options,
                             record_every=int(trace and role != "empirical"))
                for role, den in denoisers.items()}
        samples = {role: run.images.cpu() for role, run in runs.items()}
        if trace:
            grid = runs["s1"].grid
            steps = runs["s1"].trajectory_steps  # every step but the last one's input
            result["trace"] = {"sigma": grid[steps].tolist(),
                               **{role: trace_fractions(runs[role], dist)
                                  for role in ("s1", "s2")}}

        versus = {"s1": (s1, samples["s2"]), "s2": (s2, samples["s1"]),
                  "empirical": (s1, samples["s1"])}
        # copy criterion centred on the mean of the unit-normalized held-out images
        reference = None if held is None else reference_direction(held)
        if held is None:
            result["centring"] = "each image's own pixel mean (no held-out images)"
        else:
            held_reference, held_centring = baseline_reference(held)
            result["centring"] = f"mean of the unit-normalized held-out images ({held_centring})"
        result["copy_threshold"] = COPY_THRESHOLD
        sigma_last = last_sigma(method, options)
        result["manifold"] = {"sigma_last": sigma_last, "factor": ON_MANIFOLD_FACTOR}
        result["summary"], result["per_sample"], frames = {}, {}, {}
        for role in ROLES:
            train_images, other = versus[role]
            frame = _measures(samples[role], train_images, other, reference)
            manifold = _manifold_summary(samples[role], dist, sigma_last)
            if manifold is not None:
                frame["manifold_residual"], frame["manifold_shape"] = manifold[1:]
            frames[role] = frame
            summary = summarize(frame)
            if manifold is not None:
                summary.update(manifold[0])
            if n >= 2:  # the unit-norm d1/d2 needs a second training image
                unit = summarize(frame.assign(memorized=frame["memorized_unit"]))
                summary["memorized_unit_fraction"] = unit["memorized_fraction"]
                summary["memorized_unit_ci"] = unit["memorized_ci_wilson"]
                summary["median_ratio_unit"] = float(frame["ratio_unit"].median())
            else:
                summary["memorized_unit_fraction"] = summary["median_ratio_unit"] = None
            result["summary"][role] = _json_summary(summary)
            result["per_sample"][role] = {c: frame[c].tolist() for c in PER_SAMPLE
                                          if c in frame}
        if held is not None:  # the data's own novelty: real held-out images against S1
            frame = memorization_measures(held, s1, reference=held_reference)
            result["baseline"] = {
                "summary": _json_summary(summarize(frame)),
                "per_sample": {c: frame[c].tolist() for c in BASELINE_PER_SAMPLE}}
            # the family's own images, clean and seen at the sampler's last noise level
            gen = block_generator(derived_seed(seed, STREAM_HELD_NOISE), 0, STREAM_HELD_NOISE)
            z = torch.randn(held.shape, generator=gen)
            noisy = held + sigma_last * z
            if trace:  # the same images with the noise of each of the trace's levels
                result["trace"]["held"] = [fraction_within(held + sigma * z, dist, sigma)
                                           for sigma in result["trace"]["sigma"]]
            manifold = {name: _manifold_summary(images, dist, sigma_last)
                        for name, images in (("clean", held), ("noisy", noisy))}
            if manifold["clean"] is not None:
                result["baseline"]["manifold"] = {name: _json_summary(m[0])
                                                  for name, m in manifold.items()}
        if spec.get("posterior_samples"):  # a reference (module docstring, item 7)
            result["posterior_samples"] = _posterior_samples(dist, noise, method, options,
                                                             sigma_last, trace)
            if "trace" in result["posterior_samples"]:
                result["trace"]["posterior"] = result["posterior_samples"].pop("trace")
        e = min(EXAMPLES, spec["n_samples"])
        nn1 = torch.tensor(frames["s1"]["nn_index"].to_numpy()[:e], dtype=torch.int64)
        nn2 = torch.tensor(frames["s2"]["nn_index"].to_numpy()[:e], dtype=torch.int64)
        result["examples"] = {"s1": _rounded(samples["s1"][:e]), "s1_nearest": _rounded(s1[nn1]),
                              "s2": _rounded(samples["s2"][:e]), "s2_nearest": _rounded(s2[nn2]),
                              "empirical": _rounded(samples["empirical"][:e])}
    except (TrainingDiverged, SamplingDiverged) as exc:
        result["failed"] = f"{describe_memorization(spec)}: {exc}"
    return result


# two networks trained per cell: on Ray they take a GPU when the run has one
CELL = CellKind(KIND, compute_memorization, describe_memorization, gpu=True,
                artifacts=("-s1.pt", "-s2.pt"))

__all__ = ["CELL", "KIND", "build_memorization_cells",
           "compute_memorization", "describe_memorization", "fraction_within",
           "has_projection", "held_out", "posterior_mean", "resolve_sampler",
           "trace_fractions", "training_sets"]

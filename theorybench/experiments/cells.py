"""Cells: the independent units of a study, each keyed by everything that determines it.

A cell is a plain spec dict (JSON-serializable, so any executor can ship it) with a
``kind``:

* ``reference``: the MSE curves of every reference denoiser of a distribution (exact,
  lower, upper and the baselines) on the σ grid;
* ``network``: train one network (``per-sigma`` at one σ, or ``universal`` over a σ
  range), store its checkpoint, evaluate its MSE curve on the same images and noise. A
  per-σ network may start from the universal network's weights (``init_key``: the key of
  that cell, whose checkpoint it reads; such cells run after the cells they start from).
  A network trained on a finite set is also evaluated on it (``curve_train``), and so
  are the reference cell's ``CONTROLS`` baselines (``curves_train``).

and the kinds of the side studies, each declared in its module as a
:class:`~.keys.CellKind` (``memorization_sweep``, ``machines_sweep``,
``jacobian_analysis``) and assembled here into :data:`KINDS`, the one table that
:func:`run_cell`, :func:`describe` and the executors read. ``keys.cell_key(spec)``
hashes the spec together with the source code of the components the cell runs, so editing
a component recomputes exactly the cells that depend on it.
"""

from __future__ import annotations

import platform
import time
from pathlib import Path

import numpy as np
import torch

import datasets_synth
from tbcore.validation import resolve_device

from ..blind_shrink import shrink_threshold
from ..cache import Cache
from ..data_stats import data_variance
from ..denoisers import reference_denoisers
from ..denoisers.network import NetworkDenoiser
from ..evaluation import evaluation_noise, mse_curve, training_curve
from ..networks import net_config_for
from ..sampling import SamplingDiverged
from ..train_config import TrainConfig
from ..training import TrainingDiverged, converged, train
from . import jacobian_analysis, machines_sweep, memorization_sweep
from .keys import CellKind, MissingCheckpoint, cell_key, curve_record, entry_label

EXAMPLES = 4  # test images kept per cell for the report's image rows
# baselines measured on the training images too, beside the networks' curve_train, each
# fitted to them by little: the identity by nothing (its ratio test/training: the two
# noises'), the mean image by the training images' mean (its ratio: the test images'
# variance about μ̂ against the training images', their difficulty at large σ), the
# wavelet by one threshold per σ (on the 25×25 faces, one level: most of its error at
# small σ is noise passed through, its ratio near the identity's). None of them measures
# how hard the test images are at small σ for a network.
CONTROLS = ("identity", "mean-image", "wavelet")


# a cell that fails this way is reported and not cached; a later run retries it
CELL_FAILURES = (TrainingDiverged, SamplingDiverged, MissingCheckpoint)


def _examples(dist, denoiser, sigmas, seed: int) -> dict:
    """Clean, noisy and denoised versions of the first test images at each σ."""
    x = dist.sample(EXAMPLES, seed)
    z = evaluation_noise(dist, seed, 0)[:EXAMPLES]
    out = {"clean": x.tolist(), "sigma": list(sigmas), "noisy": [], "denoised": []}
    with torch.no_grad():
        for s in sigmas:
            y = x + s * z
            out["noisy"].append(y.tolist())
            out["denoised"].append(denoiser(y, s).float().cpu().tolist())
    return out


def compute_reference(spec: dict) -> dict:
    """MSE curves of every reference denoiser of the cell's distribution, and the input of
    the KL bound's closing term (SCIENCE.md §4b).

    ``data_mean`` is μ̂, the scalar pixel mean of the cell's ``n_eval`` test images (the
    images of the curves): what the samplers' ``mean="auto"`` computes on held-out images.
    ``data_variance`` estimates ``E‖x − μ̂‖²`` (summed over pixels) for that fixed μ̂
    (:func:`theorybench.data_stats.data_variance`); ``data_variance_se`` is its standard error.
    ``sigma_max`` is the top of the σ grid: the start ``N(μ̂, σ_max² I)`` of the bound's
    reverse SDE; ``start_kl`` is ``KL(p_σmax ‖ N(μ̂, σ_max² I))`` where the family knows it
    in closed form (``Distribution.start_kl``), else None. With
    ``blind_range`` (σ_min, σ_max of the universal networks), an exact reference that has
    a ``blind(σ_min, σ_max)`` method adds its blind counterpart as ``<name>-blind`` (kind
    ``blind``: the floor of every universal network's KL integral from σ_min).
    ``curves_train``: the ``CONTROLS`` baselines' curves on the
    :func:`measured_training_set`, with the noise of the main study's networks'
    ``curve_train`` (empty without that set, and in a side study's reference cells, whose
    networks train on other sets).
    """
    dist = datasets_synth.get(spec["dataset"], **spec["params"])
    refs = reference_denoisers(dist)
    if spec.get("blind_range"):  # exact references that know their blind counterpart
        refs.update({f"{name}-blind": den.blind(*spec["blind_range"])
                     for name, den in list(refs.items())
                     if den.kind == "exact" and hasattr(den, "blind")})
    train_images = None if spec.get("study") else measured_training_set(dist, spec)
    curves, on_training = {}, {}
    for name in list(refs):  # each reference is released once measured (an oracle may
        den = refs.pop(name)  # hold a per-image decomposition: 0.5 GB for C^α's)
        costly = getattr(den, "costly", False)
        sigmas = spec.get("coarse_sigmas", spec["sigmas"]) if costly else spec["sigmas"]
        frame = mse_curve(den, dist, sigmas, n=spec["n_eval"], seed=spec["seed"])
        curves[name] = {"kind": den.kind, "description": getattr(den, "description", ""),
                        **curve_record(frame)}
        if train_images is not None and name in CONTROLS:
            on_training[name] = curve_record(training_curve(den, train_images, sigmas,
                                                            spec["seed"]))
    # on the curves' images
    variance, variance_se, mu = data_variance(dist, spec["n_eval"], spec["seed"])
    sigma_max = float(max(spec["sigmas"]))
    return {"curves": curves, "curves_train": on_training, "intrinsic_dim": dist.intrinsic_dim,
            "data_mean": mu, "data_variance": variance, "data_variance_se": variance_se,
            "sigma_max": sigma_max, "start_kl": dist.start_kl(sigma_max, mu)}


def _apart(train_images: torch.Tensor, test_images: torch.Tensor) -> bool:
    """Whether no test image (n, c, h, w) is one of the training images (N, c, h, w)."""
    same = test_images.flatten(1)[:, None, :] == train_images.flatten(1)[None]  # (n, N, d)
    return not bool(same.all(dim=2).any())


def measured_training_set(dist, spec: dict) -> torch.Tensor | None:
    """The distribution's finite training set (N, c, h, w) when none of the cell's test
    images is one of its images, else None (fresh images every step, or test images drawn
    from the training set, e.g. faces' split "train" or "all"): the images on which a
    cell measures the generalization gap."""
    train = dist.train_images()
    if train is None or not _apart(train, dist.sample(spec["n_eval"], spec["seed"])):
        return None
    return train


def compute_network(spec: dict, cache: Cache, key: str, device=None, progress=False) -> dict:
    """Train the cell's network, save its checkpoint, evaluate it on the σ grid (with a
    finite training set apart from the test images, also on the training images:
    ``curve_train``, else None)."""
    dist = datasets_synth.get(spec["dataset"], **spec["params"])
    net_cfg = net_config_for(spec["net"], dist)
    train_cfg = TrainConfig.from_dict(spec["train"])
    init = None
    if spec.get("init_key"):
        path = Path(cache.artifact_path(spec["init_key"], ".pt"))
        if not path.exists():
            raise MissingCheckpoint(f"{describe(spec)}: no checkpoint {path.name} of the "
                                    f"network it starts from (not run, or failed)")
        init = NetworkDenoiser.load(path, map_location=resolve_device(device))
    train_images = dist.train_images()
    denoiser = train(dist, net_cfg, train_cfg, train_images=train_images,
                     device=device, progress=progress, init=init)
    denoiser.save(cache.artifact_path(key, ".pt"))
    sigmas = spec["eval_sigmas"]
    frame = mse_curve(denoiser, dist, sigmas, n=spec["n_eval"], seed=spec["seed"],
                      device=resolve_device(device))
    monitor = denoiser.history.get("monitor", {})
    measured = measured_training_set(dist, spec)  # the generalization gap's images
    on_train = None if measured is None else training_curve(
        denoiser, measured, sigmas, spec["seed"], device=resolve_device(device))
    return {"curve": curve_record(frame),
            "curve_train": None if on_train is None else curve_record(on_train),
            "examples": _examples(dist, denoiser, sigmas, spec["seed"]),
            "loss": denoiser.history["loss"][-1] if denoiser.history["loss"] else None,
            "history": {"step": denoiser.history["step"], "loss": denoiser.history["loss"]},
            "monitor": monitor, "converged": converged(monitor),
            "output_scales": [denoiser.c_skip, denoiser.c_out],
            "shrink_threshold": shrink_threshold(denoiser.net)}


def stored_record(cache: Cache, spec: dict, key: str | None = None) -> dict | None:
    """The cell's stored record marked ``cached``, or None when it must be computed: no
    valid record, or one whose side files (``CellKind.artifacts``, e.g. a checkpoint other
    cells read) are gone."""
    key = cell_key(spec) if key is None else key
    record = cache.load(spec["kind"], key)
    if record is None or not all(cache.artifact_path(key, suffix).exists()
                                 for suffix in kind_of(spec).artifacts):
        return None
    return {**record, "cached": True}


def _code_moved(spec: dict, key: str) -> dict | None:
    """A failed record when the cell's key is no longer ``key`` (its hashed source changed
    on disk since the run computed ``key``, or a worker runs other code than the
    driver), else None."""
    if cell_key(spec) == key:
        return None
    return {"key": key, "spec": spec,
            "failed": f"{describe(spec)}: its code hashes to another key than the run "
                      f"computed at its start (source edited during the run, or a worker "
                      f"running other code than the driver); run again"}


def run_cell(spec: dict, cache_root: str, device=None, progress=False,
             key: str | None = None) -> dict:
    """Compute one cell unless cached; store and return its record.

    A training that diverges is recorded as ``{"failed": message}`` in the returned
    record but never stored, so a later run tries again. ``key``: the cell's key as the
    run computed it at its start (the executors pass it): a record stored under it is
    used; a cell whose hashed source has changed since, before or while it computes,
    fails (its side files removed) instead of storing results of other code under that
    key, or under a key the cells that read it do not know.
    """
    kind = kind_of(spec)  # an unknown kind is refused before anything is hashed or stored
    cache = Cache(cache_root)
    checked = key is not None
    key = key if checked else cell_key(spec)
    record = stored_record(cache, spec, key)
    if record is not None:
        return record
    if checked and (moved := _code_moved(spec, key)) is not None:
        return moved
    start = time.perf_counter()
    try:
        result = kind.compute(spec, cache, key, device, progress)
    except CELL_FAILURES as exc:
        return {"key": key, "spec": spec, "failed": f"{describe(spec)}: {exc}"}
    if "failed" in result:  # a cell that records its own failure: not cached either
        return {"key": key, "spec": spec, "failed": result["failed"]}
    if checked and (moved := _code_moved(spec, key)) is not None:  # edited while computing
        for suffix in kind.artifacts:  # no reader may take another code's checkpoint
            Path(cache.artifact_path(key, suffix)).unlink(missing_ok=True)
        return moved
    meta = {"seconds": time.perf_counter() - start, "device": str(resolve_device(device)),
            "torch": torch.__version__, "host": platform.node(),
            "date": time.strftime("%Y-%m-%d %H:%M:%S")}
    record = cache.store(spec["kind"], key, {"key": key, "spec": spec, "result": result,
                                            "meta": meta})
    return {**record, "cached": False}


def describe(spec: dict) -> str:
    """One line naming a cell (for progress bars and error messages)."""
    return kind_of(spec).describe(spec)


def kind_of(spec: dict) -> CellKind:
    """The :class:`~.keys.CellKind` of a spec; a one-line error for an unknown kind."""
    kind = KINDS.get(spec.get("kind"))
    if kind is None:
        raise ValueError(f"unknown cell kind {spec.get('kind')!r}; valid: {sorted(KINDS)}")
    return kind


def _describe_reference(spec: dict) -> str:
    return f"references of {entry_label(spec['dataset'], spec['params'])}"


def _describe_network(spec: dict) -> str:
    t = spec["train"]
    where = f"σ={t['sigma']:g}" if t["mode"] == "per-sigma" else f"σ≤{t['sigma_max']:g}"
    return f"{t['mode']} network on {entry_label(spec['dataset'], spec['params'])} ({where})"


def cell_dependencies(spec: dict) -> set[str]:
    """Keys of the cells whose stored results this cell reads: the values of its ``*_key``
    fields (``init_key`` of a warm-started network, ``network_key`` of a Jacobian cell,
    ``memorization_key`` of a Jacobian pair or a machines cell). Executors start a cell
    after those."""
    return {value for name, value in spec.items() if name.endswith("_key") and value}


def build_cells(preset, entries, seed: int) -> list[dict]:
    """Every cell of a study: references and networks for each (name, params) entry.

    The networks of an entry are ``preset.family_net(name)`` (``net`` with the family's
    ``net_by_family`` fields).
    References and the universal network (``preset.universal_steps``, or the entry's
    ``universal_steps_by_family``) are evaluated on the dense grid
    ``preset.curve_sigmas``; one per-σ network is trained at each σ of ``preset.sigmas``
    (a subset of it), from the universal network's weights when ``preset.warm_start``,
    each in the better-starting of two forms when ``preset.precondition``.
    """
    for field in ("universal_steps_by_family", "net_by_family"):
        unknown = sorted(set(getattr(preset, field)) - set(datasets_synth.names()))
        if unknown:
            raise ValueError(f"{field} names unknown distribution(s) {unknown}; "
                             f"valid: {', '.join(datasets_synth.names())}")
    cells = []
    for name, params in entries:
        dist = datasets_synth.get(name, **params)
        net = net_config_for(preset.family_net(name), dist).to_dict()  # circular if periodic
        size = dist.num_images  # finite sets: no more test images than they hold
        n_eval = preset.n_eval if size is None else min(preset.n_eval, size)
        common = {"dataset": name, "params": params, "n_eval": n_eval, "seed": seed}
        cells.append({"kind": "reference", "sigmas": list(preset.curve_sigmas),
                      "coarse_sigmas": list(preset.sigmas),
                      "blind_range": [preset.sigmas[0], preset.sigmas[-1]], **common})
        universal_cfg = TrainConfig(
            mode="universal", objective=preset.objective, sigma_min=preset.sigmas[0],
            sigma_max=preset.sigmas[-1], center=preset.center,
            steps=preset.universal_steps_by_family.get(name, preset.universal_steps),
            batch_size=preset.batch_size, lr=preset.lr, seed=seed,
            monitor_sigmas=preset.monitor_sigmas, compile=preset.compile,
            precision=preset.precision)
        universal = {"kind": "network", "net": net, "train": universal_cfg.to_dict(),
                     "eval_sigmas": list(preset.curve_sigmas), **common}
        cells.append(universal)
        init = {"init_key": cell_key(universal)} if preset.warm_start else {}
        for s in preset.sigmas:
            train_cfg = TrainConfig(mode="per-sigma", objective=preset.objective, sigma=s,
                                    center=preset.center,
                                    precondition="auto" if preset.precondition else "none",
                                    steps=preset.per_sigma_steps,
                                    batch_size=preset.batch_size, lr=preset.per_sigma_lr,
                                    warmup=0 if preset.warm_start else 50, seed=seed,
                                    compile=preset.compile, precision=preset.precision)
            cells.append({"kind": "network", "net": net, "train": train_cfg.to_dict(),
                          "eval_sigmas": [s], **init, **common})
    return cells


def curve_arrays(curve: dict) -> dict:
    """A stored curve as numpy arrays."""
    return {k: (np.asarray(v) if isinstance(v, list) else v) for k, v in curve.items()}


KINDS: dict[str, CellKind] = {kind.name: kind for kind in (
    CellKind("reference", lambda spec, cache, key, device, progress: compute_reference(spec),
             _describe_reference, gpu=False),
    CellKind("network", compute_network, _describe_network, gpu=True, artifacts=(".pt",)),
    memorization_sweep.CELL,
    machines_sweep.CELL,
    jacobian_analysis.CELL,
    jacobian_analysis.PAIR_CELL,
)}

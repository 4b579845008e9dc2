"""Cells: the independent units of a study, each keyed by everything that determines it.

A cell is a plain spec dict (JSON-serializable, so any executor can ship it) with a
``kind``:

* ``reference``: the MSE curves of every reference denoiser of a distribution (exact,
  lower, upper and the baselines) on the σ grid;
* ``network``: train one network (``per-sigma`` at one σ, or ``universal`` over a σ
  range), store its checkpoint, evaluate its MSE curve on the same images and noise.

``cell_key(spec)`` hashes the spec together with the source code of the components the
cell runs, so editing a component recomputes exactly the cells that depend on it.
"""

from __future__ import annotations

import hashlib
import importlib.util
import platform
import time
from pathlib import Path

import numpy as np
import torch

import datasets_synth
from datasets_synth.registry import get_factory

from ..cache import Cache, digest
from ..denoisers import reference_denoisers
from ..evaluation import mse_curve
from ..networks import NetConfig
from ..sampling import SamplingDiverged
from ..training import TrainConfig, TrainingDiverged, resolve_device, train

EXAMPLES = 4  # test images kept per cell for the report's image rows


class MissingCheckpoint(RuntimeError):
    """A cell needs the checkpoint of another cell, which is not stored (not run, or failed)."""


# a cell that fails this way is reported and not cached; a later run retries it
CELL_FAILURES = (TrainingDiverged, SamplingDiverged, MissingCheckpoint)
COMPONENTS = {
    "reference": ("theorybench.evaluation", "theorybench.denoisers"),
    "network": ("theorybench.evaluation", "theorybench.networks", "theorybench.training"),
    "jacobian": ("theorybench.jacobian", "theorybench.experiments.jacobian_analysis",
                 "theorybench.denoisers"),
    "jacobian-pair": ("theorybench.jacobian", "theorybench.experiments.jacobian_analysis"),
    "memorization": ("theorybench.evaluation", "theorybench.networks", "theorybench.training",
                     "theorybench.sampling", "theorybench.memorization", "theorybench.denoisers",
                     "theorybench.experiments.memorization_sweep"),
}


def _source_hash(module: str) -> str:
    """SHA-256 of a module's source (all files of a package)."""
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        return "unknown"
    origin = Path(spec.origin)
    files = sorted(origin.parent.glob("*.py")) if origin.name == "__init__.py" else [origin]
    h = hashlib.sha256()
    for file in files:
        h.update(file.read_bytes())
    return h.hexdigest()


def code_version(spec: dict) -> dict:
    """Source hashes of the components a cell runs, its distribution's module included."""
    factory = get_factory(spec["dataset"])
    modules = [*COMPONENTS[spec["kind"]], "datasets_synth.base", factory.__module__]
    return {m: _source_hash(m) for m in modules}


def cell_key(spec: dict) -> str:
    """Content address of a cell: its spec and the code that computes it."""
    return digest({"spec": spec, "code": code_version(spec)})


def entry_label(name: str, params: dict) -> str:
    """A readable label for a study entry, e.g. ``calpha(alpha=2.0)``."""
    shown = {k: v for k, v in params.items() if k not in ("size", "split")}
    inner = ", ".join(f"{k}={v}" for k, v in shown.items())
    return f"{name}({inner})" if inner else name


def _curve_record(frame) -> dict:
    return {"sigma": frame["sigma"].tolist(), "mse": frame["mse"].tolist(),
            "se": frame["se"].tolist(), "d": int(frame["d"].iloc[0]),
            "errors": frame.attrs["errors"].tolist()}


def _examples(dist, denoiser, sigmas, seed: int) -> dict:
    """Clean, noisy and denoised versions of the first test images at each σ."""
    from ..evaluation import evaluation_noise

    x = dist.sample(EXAMPLES, seed)
    z = evaluation_noise(dist.shape, seed, 0)[:EXAMPLES]
    out = {"clean": x.tolist(), "sigma": list(sigmas), "noisy": [], "denoised": []}
    with torch.no_grad():
        for s in sigmas:
            y = x + s * z
            out["noisy"].append(y.tolist())
            out["denoised"].append(denoiser(y, s).float().cpu().tolist())
    return out


def compute_reference(spec: dict) -> dict:
    """MSE curves of every reference denoiser of the cell's distribution."""
    dist = datasets_synth.get(spec["dataset"], **spec["params"])
    curves = {}
    for name, den in reference_denoisers(dist).items():
        frame = mse_curve(den, dist, spec["sigmas"], n=spec["n_eval"], seed=spec["seed"])
        curves[name] = {"kind": den.kind, "description": getattr(den, "description", ""),
                        **_curve_record(frame)}
    return {"curves": curves, "intrinsic_dim": dist.intrinsic_dim}


def compute_network(spec: dict, cache: Cache, key: str, device=None, progress=False) -> dict:
    """Train the cell's network, save its checkpoint, evaluate it on the σ grid."""
    dist = datasets_synth.get(spec["dataset"], **spec["params"])
    net_cfg = NetConfig.from_dict({**spec["net"], "in_channels": dist.shape[0]})
    train_cfg = TrainConfig.from_dict(spec["train"])
    denoiser = train(dist, net_cfg, train_cfg, train_images=dist.train_images(),
                     device=device, progress=progress)
    denoiser.save(cache.artifact_path(key, ".pt"))
    sigmas = spec["eval_sigmas"]
    frame = mse_curve(denoiser, dist, sigmas, n=spec["n_eval"], seed=spec["seed"],
                      device=resolve_device(device))
    return {"curve": _curve_record(frame),
            "examples": _examples(dist, denoiser, sigmas, spec["seed"]),
            "loss": denoiser.history["loss"][-1] if denoiser.history["loss"] else None}


def _compute(spec: dict, cache: Cache, key: str, device, progress: bool) -> dict:
    """Dispatch a cell to the function computing its kind."""
    kind = spec["kind"]
    if kind == "reference":
        return compute_reference(spec)
    if kind == "network":
        return compute_network(spec, cache, key, device=device, progress=progress)
    from . import jacobian_analysis, memorization_sweep  # import this module: loaded here

    if kind == "memorization":
        return memorization_sweep.compute_memorization(spec, cache, key, device=device,
                                                       progress=progress)

    if kind == "jacobian":
        return jacobian_analysis.compute_jacobian_cell(spec, cache, key, device=device)
    if kind == "jacobian-pair":
        return jacobian_analysis.compute_pair_cell(spec, cache, key, device=device)
    raise ValueError(f"unknown cell kind {kind!r}; valid: {sorted(COMPONENTS)}")


def run_cell(spec: dict, cache_root: str, device=None, progress=False) -> dict:
    """Compute one cell unless cached; store and return its record.

    A training that diverges is recorded as ``{"failed": message}`` in the returned
    record but never stored, so a later run tries again.
    """
    cache = Cache(cache_root)
    key = cell_key(spec)
    record = cache.load(spec["kind"], key)
    if record is not None:
        return {**record, "cached": True}
    start = time.perf_counter()
    try:
        result = _compute(spec, cache, key, device, progress)
    except CELL_FAILURES as exc:
        return {"key": key, "spec": spec, "failed": f"{describe(spec)}: {exc}"}
    if "failed" in result:  # a cell that records its own failure: not cached either
        return {"key": key, "spec": spec, "failed": result["failed"]}
    meta = {"seconds": time.perf_counter() - start, "device": str(resolve_device(device)),
            "torch": torch.__version__, "host": platform.node(),
            "date": time.strftime("%Y-%m-%d %H:%M:%S")}
    record = cache.store(spec["kind"], key, {"key": key, "spec": spec, "result": result,
                                            "meta": meta})
    return {**record, "cached": False}


def describe(spec: dict) -> str:
    """One line naming a cell (for progress bars and error messages)."""
    label = entry_label(spec["dataset"], spec["params"])
    if spec["kind"] == "reference":
        return f"references of {label}"
    if spec["kind"] == "jacobian":
        from .jacobian_analysis import describe_jacobian

        return describe_jacobian(spec)
    if spec["kind"] == "jacobian-pair":
        return f"Jacobian pair on {label}, N={spec['N']}"
    if spec["kind"] == "memorization":
        return f"memorization sweep on {label}, N={spec['N']}"
    t = spec["train"]
    where = f"σ={t['sigma']:g}" if t["mode"] == "per-sigma" else f"σ≤{t['sigma_max']:g}"
    return f"{t['mode']} network on {label} ({where})"


def build_cells(preset, entries, seed: int) -> list[dict]:
    """Every cell of a study: references and networks for each (name, params) entry."""
    cells = []
    for name, params in entries:
        size = datasets_synth.get(name, **params).num_images  # finite sets: no more test images
        n_eval = preset.n_eval if size is None else min(preset.n_eval, size)
        common = {"dataset": name, "params": params, "n_eval": n_eval, "seed": seed}
        cells.append({"kind": "reference", "sigmas": list(preset.sigmas), **common})
        trainings = [({"mode": "per-sigma", "sigma": s, "steps": preset.per_sigma_steps},
                      [s]) for s in preset.sigmas]
        trainings.append(({"mode": "universal", "sigma_max": preset.sigma_max,
                           "steps": preset.universal_steps}, list(preset.sigmas)))
        for train_fields, eval_sigmas in trainings:
            train_cfg = TrainConfig(batch_size=preset.batch_size, lr=preset.lr, seed=seed,
                                    **train_fields)
            cells.append({"kind": "network", "net": NetConfig.from_dict(preset.net).to_dict(),
                          "train": train_cfg.to_dict(), "eval_sigmas": eval_sigmas, **common})
    return cells


def curve_arrays(curve: dict) -> dict:
    """A stored curve as numpy arrays."""
    return {k: (np.asarray(v) if isinstance(v, list) else v) for k, v in curve.items()}

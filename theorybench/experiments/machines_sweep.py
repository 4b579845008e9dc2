"""What the memorization sweep's networks compute: the LS and ELS machines next to them.

For each memorization cell (two networks on disjoint training sets S1, S2 of size N), a
``machines`` cell

1. rebuilds S1 and the cell's held-out images, loads both networks, and samples them from
   the first ``n_samples`` of the cell's initial noises with the cell's sampler (the same
   deterministic ODE, so one noise gives comparable images);
2. calibrates the patch side of the LS and ELS machines of S1 per noise level, as Kamb &
   Ganguli (2025) do: along the S1 network's own sampling path (its iterates ``x_i`` at
   each σ_i of the sampler's grid, for the first ``n_calibration`` noises), every
   candidate side P is scored by ``mean ‖f_P(x_i, σ_i) − f_net(x_i, σ_i)‖²`` and the best
   is kept for that σ_i. The schedule and every score are stored;
3. samples the empirical denoiser of S1 and both calibrated machines from the same noises;
4. agreement per image between the S1 network's sample and each other sample (empirical,
   LS, ELS, S2 network): the Pearson correlation ``r`` of the two images' pixels (each
   image minus its own mean, then unit-normalized: the cosine of the centred images), and
   ``r²``, which is what the anchor reports as "median r²"; summarized as median and
   quartiles;
5. each machine's MSE on the held-out images at the study's σ grid, with the calibrated
   patch side of the nearest σ. Where the held-out images are the entry's own
   distribution (a synthetic family, or an entry that is itself a test split) they are
   the images and noise of the entry's ``reference`` cell, so the MSE reads against the
   MMSE bracket; otherwise (a train split, or a finite set without a split, which holds
   out its unused training images) the bracket describes other images.

Network samples are recomputed from the stored checkpoints rather than stored in the
memorization cell; the ODE sampler is deterministic, so they are the cell's samples.
"""

from __future__ import annotations

import numpy as np
import torch

from datasets_synth.references.empirical import EmpiricalDenoiser
from tbcore.validation import check_int, resolve_device

from ..denoisers.local import PatchEmpiricalDenoiser, check_patch, patch_fits
from ..denoisers.network import NetworkDenoiser
from ..evaluation import mse_curve
from ..memorization import cosine
from ..sampling import ODE_SAMPLERS, SamplingDiverged, sample
from .keys import CellKind, cell_key, curve_record, entry_label
from .memorization_sweep import cell_inputs, checkpoints, initial_noise

KIND = "machines"
MACHINES = {"ls": False, "els": True}  # name: equivariant
ROLES = ("empirical", "ls", "els", "s2")  # compared with the S1 network's samples
EXAMPLES = 6  # noises whose samples are kept for the report's grid


def build_machine_cells(memorization_cells: list[dict], patches, n_samples: int,
                        n_calibration: int, sigmas, boundary: str = "crop") -> list[dict]:
    """One ``machines`` cell per memorization cell.

    Parameters
    ----------
    memorization_cells : specs of kind ``memorization``; others are ignored. Their sampler
        must be an ODE (``euler`` or ``heun``): the machines follow the network's path
        along its σ grid.
    patches : odd ints   candidate patch sides (pixels); ELS with ``crop`` keeps those
        ≤ the image side.
    n_samples : int      noises sampled by every denoiser (the first of the cell's noises;
                         at most the cell's ``n_samples``).
    n_calibration : int  noises whose network path calibrates the patch side.
    sigmas : σ grid of the machines' MSE curves (the entry's reference cell's grid).
    boundary : ``PatchEmpiricalDenoiser`` boundary rule.

    Returns
    -------
    list of specs ``{"kind": "machines", "dataset", "params", "N", "patches",
    "n_samples", "n_calibration", "sigmas", "boundary", "memorization": <spec>,
    "memorization_key": key}``; run them after the memorization cells.
    """
    patches = sorted({check_patch(p) for p in patches})
    n_calibration = check_int("n_calibration", n_calibration, low=1)
    cells = []
    for m in memorization_cells:
        if m.get("kind") != "memorization":
            continue
        if m["sampler"]["method"] not in ODE_SAMPLERS:
            raise ValueError(f"machines need an ODE sampler ({', '.join(ODE_SAMPLERS)}) in the "
                             f"memorization cells, got {m['sampler']['method']!r}")
        k = min(check_int("n_samples", n_samples, low=2), m["n_samples"])
        cells.append({"kind": KIND, "dataset": m["dataset"], "params": m["params"],
                      "N": m["N"], "patches": patches, "n_samples": k,
                      "n_calibration": min(n_calibration, k), "sigmas": list(sigmas),
                      "boundary": boundary, "memorization": m, "memorization_key": cell_key(m)})
    return cells


def agreement(a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    """Per-image Pearson correlation of paired images (n, c, h, w) -> (n,) float64: the
    cosine of the two images after each loses its own mean."""
    return cosine(a, b, centered=True).numpy()


def summarize_agreement(r: np.ndarray) -> dict:
    """Median and quartiles of r and of r² over images."""
    out = {}
    for name, values in (("r", r), ("r2", r ** 2)):
        q1, med, q3 = np.quantile(values, [0.25, 0.5, 0.75])
        out[name] = {"median": float(med), "q1": float(q1), "q3": float(q3)}
    return out


def calibrate(machines: dict, network, path: torch.Tensor,
              grid: torch.Tensor) -> tuple[dict, dict]:
    """The patch side per σ whose output is closest to the network's along its path.

    Parameters
    ----------
    machines : {name: {P: PatchEmpiricalDenoiser}}   candidate machines per side.
    network : the denoiser being modelled.
    path : tensor (n, T, c, h, w)   the network's iterates before each step of the grid.
    grid : tensor (≥ T,)   the sampler's σ grid.

    Returns
    -------
    schedule : {name: {σ: P}};  scores : {name: {P: [mean squared difference per σ]}}.
    """
    schedule = {name: {} for name in machines}
    scores = {name: {p: [] for p in sides} for name, sides in machines.items()}
    with torch.no_grad():
        for i in range(path.shape[1]):
            sigma = float(grid[i])
            x = path[:, i]
            target = network(x, sigma)
            for name, sides in machines.items():
                for p, machine in sides.items():
                    scores[name][p].append(float((machine(x, sigma) - target).pow(2).mean()))
                best = min(sides, key=lambda p, n=name: scores[n][p][-1])
                schedule[name][sigma] = best
    return schedule, scores


def compute_machines(spec: dict, cache, key: str, device=None) -> dict:
    """Run one machines cell (module docstring); return a JSON-serializable result.

    Returns
    -------
    dict with ``N``, ``label``, ``sigma_grid`` (the sampler's), ``schedule``
    ``{machine: [P per grid σ]}``, ``scores`` ``{machine: {P: [per σ]}}``, ``agreement``
    ``{role: {"r": {...}, "r2": {...}}}`` and ``per_sample`` ``{role: [r per image]}`` for
    roles empirical, ls, els, s2 (each against the S1 network); ``mse`` ``{machine or
    "empirical": curve}`` on the held-out images; ``examples`` (the first noises' samples
    of s1, empirical, ls, els, s2); ``failed`` when a sampler diverges.
    """
    del key
    device = resolve_device(device)
    label = entry_label(spec["dataset"], spec["params"])
    nets = [NetworkDenoiser.load(p, map_location=device)
            for p in checkpoints(spec, cache, describe_machines(spec))]
    mem = spec["memorization"]
    dist, s1, _, _, test_dist, n_test, _, method, options = cell_inputs(mem)
    seed = mem["seed"]
    noise = initial_noise(mem, dist.shape, spec["n_samples"]).to(device)
    train = s1.to(device)
    sides = {name: {p: PatchEmpiricalDenoiser(train, p, equivariant=eq,
                                              boundary=spec["boundary"])
                    for p in spec["patches"]
                    if patch_fits(p, dist.shape, eq, spec["boundary"])}
             for name, eq in MACHINES.items()}
    result = {"N": spec["N"], "label": label}
    try:
        runs = {"s1": sample(nets[0], noise, method=method, record_every=1, **options),
                "s2": sample(nets[1], noise, method=method, **options)}
        grid = runs["s1"].grid
        path = runs["s1"].trajectory[:spec["n_calibration"]]
        schedule, scores = calibrate(sides, nets[0], path, grid)
        machines = {name: PatchEmpiricalDenoiser(train, schedule[name], equivariant=eq,
                                                 boundary=spec["boundary"])
                    for name, eq in MACHINES.items()}
        denoisers = {"empirical": EmpiricalDenoiser(train), **machines}
        for role, den in denoisers.items():
            runs[role] = sample(den, noise, method=method, **options)
    except SamplingDiverged as exc:
        result["failed"] = f"{describe_machines(spec)}: {exc}"
        return result
    images = {role: run.images.cpu() for role, run in runs.items()}
    result["sigma_grid"] = [float(s) for s in grid]
    result["schedule"] = {name: [schedule[name][float(s)] for s in grid[:path.shape[1]]]
                          for name in MACHINES}
    result["scores"] = {name: {str(p): v for p, v in s.items()} for name, s in scores.items()}
    result["per_sample"] = {role: agreement(images["s1"], images[role]).tolist()
                            for role in ROLES}
    result["agreement"] = {role: summarize_agreement(np.asarray(r))
                           for role, r in result["per_sample"].items()}
    if test_dist is not None:
        result["mse"] = {role: curve_record(mse_curve(denoisers[role], test_dist,
                                                       spec["sigmas"], n=n_test, seed=seed,
                                                       device=device))
                         for role in ("empirical", *MACHINES)}
    e = min(EXAMPLES, spec["n_samples"])
    result["examples"] = {role: np.round(images[role][:e].double().numpy(), 4).tolist()
                          for role in ("s1", *ROLES)}
    return result


def describe_machines(spec: dict) -> str:
    """One line naming a machines cell."""
    return f"LS/ELS machines on {entry_label(spec['dataset'], spec['params'])}, N={spec['N']}"


# the networks sample on the device; the machines' products run there too
CELL = CellKind(KIND, lambda spec, cache, key, device, progress: compute_machines(
    spec, cache, key, device=device), describe_machines, gpu=True)

__all__ = ["CELL", "KIND", "MACHINES", "agreement", "build_machine_cells", "calibrate",
           "compute_machines", "describe_machines", "summarize_agreement"]

"""The intrinsic-dimension study: MMSE ≈ kσ² and the Jacobian's rank as curves of k.

SCIENCE.md §5: at small σ the optimal denoiser projects onto the k-dimensional tangent
space of the image manifold, so the total MMSE/σ² → k and the optimal Jacobian has k
eigenvalues near 1 (the rest near 0). The preset's ``dimensions`` setting names a family
with one parameterization for every k (its parameter ``k``; the built-in one is
``ellipses``, k = 1 … 7, ``datasets_synth.ellipses``). For each k of the setting this
study stores, as ordinary cells tagged ``"study": "dimension"``:

* a ``reference`` cell: the MMSE bracket (posterior, and the quadrature posterior or a
  partial oracle) on the preset's σ grid;
* a universal ``network`` cell (no per-σ networks), evaluated on the same grid;
* a ``jacobian`` cell of that network at one small σ: its eigenvalues (count above 0.5,
  trace) and the principal angles between its top-k eigenvectors and the true tangent
  space (``Distribution.tangent_space``).

:func:`dimension_rows` reads the stored records into one row per k.
"""

from __future__ import annotations

import math

import numpy as np

import datasets_synth
from tbcore.validation import check_int

from ..networks import net_config_for
from ..train_config import TrainConfig
from .jacobian_analysis import build_jacobian_cells, jacobian_sigmas

STUDY = "dimension"  # the tag of this study's cells


def dimension_entries(setting: dict) -> list[tuple[str, dict]]:
    """(name, params) of each k of a preset's ``dimensions`` setting (``family``, ``ks``,
    ``size``); the family validates its own range of k."""
    return [(setting["family"], {"k": check_int("k", k, low=1), "size": setting["size"]})
            for k in setting["ks"]]


def build_dimension_cells(preset, seed: int) -> list[dict]:
    """Reference, universal-network and Jacobian cells of every k (module doc).

    ``preset.dimensions``: ``family`` (a distribution with a parameter ``k``), ``ks``
    (intrinsic dimensions), ``size`` (image side), ``net``,
    ``steps``, ``batch_size``, optional ``lr`` (default ``preset.lr``), ``n_eval``
    (default ``preset.n_eval``) and ``jacobian_images``. The σ grid is ``preset.sigmas``;
    the network is trained on its whole range with ``preset.objective``; the Jacobian is
    taken at the grid value nearest σ = 0.04 (the paper's disks figure). Empty when the
    preset has no ``dimensions``.
    """
    setting = preset.dimensions
    if not setting:
        return []
    sigmas = list(preset.sigmas)
    cells, networks = [], []
    for name, params in dimension_entries(setting):
        net = net_config_for(setting["net"], datasets_synth.get(name, **params)).to_dict()
        common = {"dataset": name, "params": params, "n_eval": setting.get("n_eval", preset.n_eval),
                  "seed": seed, "study": STUDY}
        cells.append({"kind": "reference", "sigmas": sigmas, **common})
        train_cfg = TrainConfig(
            mode="universal", objective=preset.objective, sigma_min=sigmas[0],
            sigma_max=sigmas[-1], center=preset.center, steps=setting["steps"],
            batch_size=setting["batch_size"], lr=setting.get("lr", preset.lr), seed=seed,
            monitor_sigmas=preset.monitor_sigmas, compile=preset.compile,
            precision=preset.precision)
        networks.append({"kind": "network", "net": net, "train": train_cfg.to_dict(),
                         "eval_sigmas": sigmas, **common})
    small = jacobian_sigmas(sigmas, targets=(0.04,))
    jacobians = build_jacobian_cells(networks, small, setting["jacobian_images"], seed)
    return cells + networks + [{**c, "study": STUDY} for c in jacobians]


def _total_over_s2(curve: dict, index: int) -> tuple[float, float]:
    """Total MSE/σ² and its standard error at ``curve["sigma"][index]``."""
    scale = curve["d"] / curve["sigma"][index] ** 2
    return curve["mse"][index] * scale, curve["se"][index] * scale


def _paired_se(first: dict, second: dict, index: int) -> float:
    """Standard error of ``first − second`` in total MSE/σ² at ``sigma[index]``, over the
    images both curves measured with the same noise (their per-image ``errors``)."""
    diff = (np.asarray(first["errors"][index]) - np.asarray(second["errors"][index])) * (
        first["d"] / first["sigma"][index] ** 2)
    return float(diff.std(ddof=1) / math.sqrt(diff.size))


def dimension_rows(records: list[dict]) -> list[dict]:
    """One row per k from the study's stored records (cells tagged ``study = dimension``).

    Columns: ``k``; at the smallest σ of the grid (``sigma``): ``U/σ²`` (the posterior,
    an upper bound), ``L/σ²`` (the best lower bound, or the quadrature posterior where it
    is exact: k ≤ 2), ``network/σ²`` (the universal network), each a total MSE over the
    pixels divided by σ², with ``*_se``, ``L−U_se`` (the paired standard error of
    ``L/σ² − U/σ²``: one reference cell measures both on the same images and noise), and
    the network's ``converged`` flag
    (:func:`~theorybench.training.converged`); at ``sigma_jacobian``: the network Jacobian's
    mean ``count>0.5`` (eigenvalues above 0.5), mean ``trace`` and the mean over images
    of the largest and of the mean principal angle (degrees) between its top-k
    eigenvectors and the tangent space; the same for the optimum (``optimum …``: the
    ``Cov[x|y]/σ²`` of the reference estimator the Jacobian cell differentiates, whose kind,
    ``exact`` or ``upper``, is ``optimum kind``). Missing cells leave NaN.
    """
    mine = [r for r in records if r["spec"].get("study") == STUDY and "result" in r]
    rows = {}
    for r in mine:
        spec, result = r["spec"], r["result"]
        k = spec["params"]["k"]
        row = rows.setdefault(k, {"k": k})
        if spec["kind"] == "reference":
            curves = result["curves"]
            upper = curves.get("posterior")
            if upper is not None:
                row["sigma"] = upper["sigma"][0]
                row["U/σ²"], row["U_se"] = _total_over_s2(upper, 0)
            lows = [c for c in curves.values() if c["kind"] in ("lower", "exact")]
            if lows:
                best = max(lows, key=lambda c: c["mse"][0])
                row["L/σ²"], row["L_se"] = _total_over_s2(best, 0)
                row["L kind"] = best["kind"]
                if upper is not None:
                    row["L−U_se"] = _paired_se(best, upper, 0)
        elif spec["kind"] == "network":
            row["network/σ²"], row["network_se"] = _total_over_s2(result["curve"], 0)
            row["converged"] = result.get("converged")
        elif spec["kind"] == "jacobian":
            row["sigma_jacobian"] = result["sigma"]
            for who, prefix in (("network", ""), ("reference", "optimum ")):
                if who in result["denoisers"]:
                    row.update(_jacobian_measures(result["denoisers"][who], prefix))
            if "reference" in result["denoisers"]:
                row["optimum kind"] = result["denoisers"]["reference"]["kind"]
    return [rows[k] for k in sorted(rows)]


def _jacobian_measures(rec: dict, prefix: str) -> dict:
    """Means over images of one denoiser's Jacobian measures (a jacobian cell's record)."""
    angles = np.asarray(rec.get("tangent_angles_deg", [[math.nan]]), dtype=float)
    return {f"{prefix}count>0.5": float(np.mean(rec["count_above"])),
            f"{prefix}trace": float(np.mean(rec["trace"])),
            f"{prefix}angle max°": float(np.mean(angles.max(1))),
            f"{prefix}angle mean°": float(np.mean(angles.mean(1)))}

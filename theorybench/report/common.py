"""Helpers shared by the report's sections: tables, stored curves and the MMSE bracket.

The base of ``theorybench.report``: every section module imports it and it imports none
of them, so the package has no import circle.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pandas as pd

from ..cache import atomic_write_bytes
from ..experiments.keys import entry_label
from ..kl import beyond_noise, tightest_references


def slug(label: str) -> str:
    """A file-name fragment of a label: lowercase, runs of other characters as ``-``."""
    return re.sub(r"[^a-z0-9]+", "-", label.lower()).strip("-")


def markdown_table(frame: pd.DataFrame, floatfmt: str = ".4g") -> str:
    """A GitHub markdown table (no extra dependency); missing values (None, NaN) as ``–``."""
    def cell(v):
        if v is None:
            return "–"
        if isinstance(v, (float, np.floating)):
            return "–" if math.isnan(v) else format(v, floatfmt)
        return str(v)
    head = "| " + " | ".join(map(str, frame.columns)) + " |"
    rule = "|" + "|".join("---" for _ in frame.columns) + "|"
    rows = ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([head, rule, *rows])


def image_size(d: int) -> str:
    """An image of ``d`` pixels as ``"side×side"`` (``"d = …"`` when not square)."""
    side = math.isqrt(int(d))
    return f"{side}×{side}" if side * side == int(d) else f"d = {int(d)}"


def curve_frame(curve: dict) -> pd.DataFrame:
    """A stored curve as an ``mse_curve``-like DataFrame (per-image errors in attrs)."""
    frame = pd.DataFrame({"sigma": curve["sigma"], "mse": curve["mse"], "se": curve["se"],
                          "d": curve["d"]})
    frame.attrs["errors"] = np.asarray(curve["errors"], dtype=float)
    return frame


def _same_grid(stored, sigmas) -> bool:
    """Whether a curve stored at ``stored`` is already on the grid ``sigmas``."""
    return len(stored) == len(sigmas) and bool(np.allclose(stored, sigmas))


def extend_monotone(frame: pd.DataFrame, sigmas, side: str) -> pd.DataFrame:
    """A bound stored on a coarser grid, extended to ``sigmas`` by monotonicity of the MMSE.

    The MMSE is non-decreasing in σ (y at σ' > σ is y at σ plus independent noise), so an
    upper bound at σ' ≥ σ bounds MMSE(σ) and a lower bound at σ' ≤ σ bounds it too:
    ``side="upper"`` takes the nearest stored σ' ≥ σ, ``"lower"`` the nearest σ' ≤ σ
    (MSE 0 below the grid: the trivial lower bound; +inf above it). Per-image errors follow
    the chosen σ'; ``attrs["extended"]`` (bool per σ) marks the σ off the stored grid
    that took a stored value (not those beyond it, which hold no bound).
    """
    stored = frame["sigma"].to_numpy()
    sigmas = np.asarray(sigmas, dtype=float)
    if _same_grid(stored, sigmas):
        return frame
    tol = 1e-9 * sigmas
    if side == "upper":
        index = np.searchsorted(stored, sigmas - tol, side="left")
        valid = index < len(stored)
        fill = np.inf
    else:
        index = np.searchsorted(stored, sigmas + tol, side="right") - 1
        valid = index >= 0
        fill = 0.0
    index = np.clip(index, 0, len(stored) - 1)
    errors = np.asarray(frame.attrs["errors"])[index]
    errors[~valid] = fill
    out = pd.DataFrame({"sigma": sigmas,
                        "mse": np.where(valid, frame["mse"].to_numpy()[index], fill),
                        "se": np.where(valid, frame["se"].to_numpy()[index], 0.0),
                        "d": frame["d"].iloc[0]})
    out.attrs["errors"] = errors
    out.attrs["extended"] = valid & ~np.isclose(stored[index], sigmas, rtol=1e-9, atol=0)
    return out


def flag(frame: pd.DataFrame, name: str) -> np.ndarray:
    """A frame's bool-per-σ attribute ``name`` (``extended``, ``borrowed``), all False where
    it has none."""
    return np.asarray(frame.attrs.get(name, np.zeros(len(frame), dtype=bool)), dtype=bool)


def monotone_envelope(frame: pd.DataFrame, side: str) -> pd.DataFrame:
    """A bound on one grid tightened by the monotonicity of the MMSE.

    The MMSE is non-decreasing in σ (:func:`extend_monotone`): an upper bound at σ' ≥ σ
    bounds MMSE(σ), and a lower bound at σ' ≤ σ does too. ``side="upper"`` takes at each σ
    the lowest upper bound among σ itself and the σ' ≥ σ whose value is below σ's by more
    than ``SELECTION_Z`` standard errors of the paired difference (per-image errors on the same
    images and noise, scaled); ``"lower"`` the highest lower bound among σ and the σ' ≤ σ
    above it by as much (ties: the nearest σ', σ itself first). Every value is a Monte Carlo
    estimate: taking the best of several would bias the bound by their noise, which the
    threshold keeps out. Per-image errors, the standard error and ``attrs["extended"]``
    (:func:`extend_monotone`) follow the chosen σ'; ``attrs["borrowed"]`` (bool per σ)
    marks the σ whose value comes from another σ'. A curve without per-image errors of at
    least 2 images is returned unchanged.
    """
    sigma = frame["sigma"].to_numpy(dtype=float)
    mse = frame["mse"].to_numpy(dtype=float)
    if np.isnan(mse).any() or np.any(np.diff(sigma) <= 0):
        raise ValueError("monotone_envelope: needs a curve on increasing σ without NaN MSE")
    errors = np.asarray(frame.attrs.get("errors", []), dtype=float)
    out = frame.copy()
    out.attrs["borrowed"] = np.zeros(len(mse), dtype=bool)
    if errors.ndim != 2 or errors.shape != (len(mse), errors.shape[1]) or errors.shape[1] < 2:
        return out
    with np.errstate(invalid="ignore"):  # inf − inf beyond a coarse grid: NaN, never taken
        diff = errors[:, None, :] - errors[None, :, :]  # [i, j]: e(σ_i) − e(σ_j), per image
    significant = beyond_noise(diff if side == "upper" else -diff)
    i, j = np.indices((len(mse), len(mse)))
    if side == "upper":
        allowed = (j == i) | ((j > i) & significant)
        best = np.where(allowed, mse[j], np.inf).min(axis=1)
        index = np.argmax(allowed & (mse[j] == best[:, None]), axis=1)  # the first from σ up
    else:
        allowed = (j == i) | ((j < i) & significant)
        best = np.where(allowed, mse[j], -np.inf).max(axis=1)
        hit = allowed & (mse[j] == best[:, None])
        index = len(mse) - 1 - np.argmax(hit[:, ::-1], axis=1)  # the first from σ down
    out["mse"] = mse[index]
    out["se"] = frame["se"].to_numpy()[index]
    out.attrs["errors"] = errors[index]
    out.attrs["borrowed"] = index != np.arange(len(mse))
    if "extended" in frame.attrs:
        out.attrs["extended"] = np.asarray(frame.attrs["extended"])[index]
    return out


def elsewhere(bound: pd.DataFrame) -> np.ndarray:
    """Bool per σ: the bound's value there was measured at another σ, either stored on a
    coarser grid (:func:`extend_monotone`'s ``extended``) or taken by
    :func:`monotone_envelope` (``borrowed``)."""
    return flag(bound, "extended") | flag(bound, "borrowed")


def on_grid(frame: pd.DataFrame, sigmas) -> pd.DataFrame:
    """The rows of a curve at ``sigmas`` (each must be on the curve's grid), its per-image
    errors and the ``borrowed`` and ``extended`` flags (where it has them) kept."""
    stored = frame["sigma"].to_numpy()
    index = [int(np.argmin(np.abs(np.log(stored / s)))) for s in sigmas]
    if not np.allclose(stored[index], sigmas, rtol=1e-6):
        raise ValueError("on_grid: a σ is not on the curve's grid")
    out = frame.iloc[index].reset_index(drop=True)
    for name in ("errors", "borrowed", "extended"):
        if name in frame.attrs:
            out.attrs[name] = np.asarray(frame.attrs[name])[index]
    return out


def closing_inputs(reference: dict, grid) -> dict:
    """``kl_bound``'s closing-term arguments from a stored reference result: its
    ``data_variance`` and ``data_variance_se`` (absent in old records: None), and its exact
    ``start_kl`` where it has one for the top of ``grid`` (the σ_max of the bound)."""
    start = reference.get("start_kl")
    top = reference.get("sigma_max")
    exact = start is not None and top is not None and math.isclose(top, float(max(grid)),
                                                                   rel_tol=1e-9)
    return {"data_variance": reference.get("data_variance"),
            "data_variance_se": reference.get("data_variance_se"),
            "start_kl": start if exact else None}


def bracket(ref_curves: dict) -> tuple[dict, str]:
    """The tightest MMSE reference of stored curves (:func:`kl.tightest_references`).

    Curves stored on a coarser grid (costly references) are first extended to the densest
    grid by :func:`extend_monotone`; the bracket's ends are then tightened by
    :func:`monotone_envelope` (an upper bound at a larger σ bounds the MMSE at a smaller
    one, where it is lower by more than its noise; a lower bound alike from a smaller σ).
    The exact MMSE is kept as measured where it was measured at every σ of the grid; an
    exact MMSE stored on a coarser grid is exact only at its own σ and, between them,
    brackets the MMSE by its value at the next larger σ (an upper bound) and at the next
    smaller one (a lower bound), so it enters as those two bounds.
    """
    grid = max((c["sigma"] for c in ref_curves.values()), key=len)  # the dense grid
    frames, kinds = {}, {}
    for name, c in ref_curves.items():
        frame, kind = curve_frame(c), c["kind"]
        coarse = kind == "exact" and not _same_grid(frame["sigma"], grid)
        sides = ("upper", "lower") if coarse else (kind,)
        for side in sides:
            key = name if len(sides) == 1 else f"{name} ({side})"
            if key in frames or (key != name and key in ref_curves):
                raise ValueError(f"bracket: two reference curves named {key!r}")
            frames[key] = extend_monotone(frame, grid, "lower" if side == "lower" else "upper")
            kinds[key] = side
    refs, how = tightest_references(frames, kinds)  # "extended" follows the chosen curves
    for curve in refs.values():
        curve.attrs["extended"] = flag(curve, "extended")  # all False where none was
    return {side: curve if side == "exact" else monotone_envelope(curve, side)
            for side, curve in refs.items()}, how


def objective_law(t: dict) -> str:
    """The σ law and loss of a universal network's training objective (``t``: a TrainConfig
    dict; records before objectives existed trained the paper's)."""
    log_uniform = f"ln σ uniform on [{t.get('sigma_min', 0):g}, {t['sigma_max']:g}]"
    return {"kl": f"{log_uniform}, loss ‖f(y) − x‖²/σ² (the KL bound, SCIENCE.md §4c)",
            "balanced": f"{log_uniform}, loss ‖f(y) − x‖²·(σ⁻² + σ_data⁻²), σ_data = "
                        f"{t.get('sigma_data', 0.25):g} (the KL weight with a floor)",
            "paper": f"σ = {t['sigma_max']:g}·u², unweighted loss (the paper's)"
            }[t.get("objective", "paper")]


def training_steps_text(t: dict) -> str:
    """How the TrainConfig dict ``t``'s steps ran, as a clause: ``", training steps
    compiled (`torch.compile`)"`` with ``compile``, ``", forward in bfloat16
    (`torch.autocast`)"`` with ``precision="bf16"``, both in that order (records before
    these fields trained eagerly in float32); ``""`` for neither."""
    parts = (["training steps compiled (`torch.compile`)"] if t.get("compile") else []) + (
        ["forward in bfloat16 (`torch.autocast`)"] if t.get("precision") == "bf16" else [])
    return "".join(f", {part}" for part in parts)


def preconditioned(result: dict) -> bool:
    """Whether a network cell's network was trained in EDM's preconditioned form (records
    written before the form existed have no ``output_scales``: residual form)."""
    return result.get("output_scales", [1.0])[0] != 1.0


def all_converged(flags) -> bool | None:
    """Whether every network of a group passed the convergence check: False where one is
    flagged, else None where one was not monitored (its flag None or NaN) or the group is
    empty, else True. A known False is never hidden by a missing flag."""
    flags = [None if pd.isna(f) else bool(f) for f in flags]
    if False in flags:
        return False
    return None if not flags or None in flags else True


def largest(values: np.ndarray, among: np.ndarray) -> int | None:
    """The index of the largest of ``values`` where the mask ``among`` holds (None where it
    holds nowhere)."""
    return int(np.flatnonzero(among)[np.argmax(values[among])]) if among.any() else None


def ratio_at(ratio: np.ndarray, se: np.ndarray | None, grid: np.ndarray, k: int | None) -> str:
    """``"r ± se at σ = s"`` for grid point k (without ``± se`` when it is unknown; ``–``
    for k None)."""
    if k is None:
        return "–"
    spread = "" if se is None else f" ± {se[k]:.2g}"
    return f"{ratio[k]:.3g}{spread} at σ = {grid[k]:g}"


def sigma_list(sigmas) -> str:
    """σ values as ``"0.01, 0.1"`` (empty: ``"none"``)."""
    return ", ".join(f"{v:g}" for v in sigmas) or "none"


def losses_text(loss: dict | None, everywhere: str = "every σ") -> str:
    """Where a denoiser is no better than a baseline (a :func:`theorybench.report.main.losses`
    dict): ``"not at σ = 0.01, 0.01208 (×1.048 ± 0.013)"``, the σ and the largest ratio of
    the two MSEs among them with its paired standard error (without ``± se`` where it is
    unknown); ``everywhere`` where it loses at no σ; ``"–"`` for None (no such baseline)."""
    if loss is None:
        return "–"
    if not len(loss["sigma"]):
        return everywhere
    k = int(np.argmax(loss["ratio"]))
    spread = "" if loss["se"] is None else f" ± {loss['se'][k]:.2g}"
    return f"not at σ = {sigma_list(loss['sigma'])} (×{loss['ratio'][k]:.4g}{spread})"


def identity_text(st: dict) -> str:
    """A network's losses to the identity (``standing``'s dict ``st``), followed, where it
    loses somewhere, by the blind optimum's (a universal network's floor) and its own on
    its training images, each in :func:`losses_text`'s words, separated by semicolons."""
    parts = [losses_text(st["above_identity"])]
    if st["above_identity"] is not None and len(st["above_identity"]["sigma"]):
        parts += [f"{whose}: {losses_text(st[key])}"
                  for key, whose in (("blind_above_identity", "blind optimum"),
                                     ("train_above_identity", "on its training images"))
                  if st.get(key) is not None]
    return "; ".join(parts)


def write_csv(frame: pd.DataFrame, path: Path) -> None:
    """Write a table as CSV, atomically, numbers to 6 significant digits."""
    atomic_write_bytes(path, frame.to_csv(index=False, float_format="%.6g").encode())


def _exceptions(specs: list[dict], value, common, describe) -> str:
    """``" (labels: describe(v))"`` for each value ``v = value(spec)`` other than
    ``common``, with the entries that have it (each label once, in order)."""
    groups: dict[str, list[str]] = {}
    for spec in specs:
        v = value(spec)
        if v != common:
            label = entry_label(spec["dataset"], spec["params"])
            labels = groups.setdefault(describe(v), [])
            if label not in labels:
                labels.append(label)
    return "".join(f" ({', '.join(labels)}: {text})" for text, labels in groups.items())


def architectures(specs: list[dict]) -> str:
    """The networks' NetConfig fields: the most common set, then the entries whose
    networks differ and in what (e.g. circular padding on a periodic family)."""
    nets = [spec["net"] for spec in specs]
    # ties go to zero padding, the configuration a periodic family is the exception to
    common = max(nets, key=lambda net: (nets.count(net), net.get("padding", "zeros") == "zeros"))

    def fields(net: dict) -> str:
        return "`" + ", ".join(f"{k}={v}" for k, v in net.items()) + "`"

    def differences(net: dict) -> str:
        return fields({k: net.get(k) for k in sorted(common.keys() | net.keys())
                       if common.get(k) != net.get(k)})

    return fields(common) + _exceptions(specs, lambda spec: spec["net"], common, differences)


def steps_text(specs: list[dict]) -> str:
    """The networks' optimizer steps: the most common count (a tie goes to the smaller,
    the preset's base budget), then the entries that trained otherwise (the preset's
    ``universal_steps_by_family``), e.g. ``"2000 steps (disks: 24000)"``."""
    steps = [spec["train"]["steps"] for spec in specs]
    common = max(steps, key=lambda n: (steps.count(n), -n))
    return f"{common} steps" + _exceptions(specs, lambda spec: spec["train"]["steps"],
                                           common, str)

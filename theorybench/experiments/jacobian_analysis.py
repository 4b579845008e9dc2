"""Jacobian cells: eigen-analysis of trained networks next to the optimal denoiser (SCIENCE.md §6).

A ``jacobian`` cell takes one stored ``network`` cell (its checkpoint, a per-σ network at
σ or the universal network evaluated at σ), draws ``n_images`` clean images of the
cell's distribution with their latents and the evaluation noise of ``mse_curve``
(image k and noise k are those of ``mse_curve(…, seed)``), and computes at each noisy
image ``y = x + σ z``, for the network and for the distribution's reference denoiser:

* the Jacobian ``J = ∇f(y)`` (``theorybench.jacobian``; networks in float32 and eval
  mode, references in float64) and the eigenvalues of its symmetric part (all ``d``),
  the trace ``tr J`` (effective dimension), the number of eigenvalues above 0.5, the
  asymmetry ``‖J − Jᵀ‖/‖J‖`` and the homogeneity error ``‖J y − f(y)‖/‖f(y)‖``;
* SURE's per-pixel MSE ``(‖f(y) − y‖² − dσ² + 2σ² tr J)/d`` next to the measured
  ``‖f(y) − x‖²/d`` (SCIENCE.md §6);
* families with a known parameterization (``Distribution.tangent_space``: disks,
  ellipses): the principal angles between the span of the top-k eigenvectors and the true
  k-d tangent space ``∂x/∂θ`` at the true parameters;
* families with a contour (``Distribution.contour_region``: calpha): the fraction of the
  energy of each top eigenvector lying within ``band`` pixels of the true contour,
  against the fraction of pixels there (chance level);
* the top eigenvectors of the first image (for figures).

References (the optimum, or the best available stand-in):

* ``gaussian`` (any distribution with an ``exact`` reference, differentiable in torch):
  the exact posterior mean (Wiener filter, ``J = C (C + σ²I)⁻¹``), by autograd;
* a reference with ``moments(y, σ)`` (disks, ellipses: ``ShapePosterior``): the posterior
  mean ``E[x|y]`` and its Jacobian ``Cov[x|y]/σ²`` (SCIENCE.md §6, Tweedie) from the
  estimator's own importance sample over the geometry, intensities in closed form;
* an oracle with ``given(latents)`` (calpha: the oracle given the true contour, ``J =
  C(m)(C(m) + σ²I)⁻¹`` exactly, linear in y); an oracle, not a function of y alone;
* other distributions (faces, shuffled, plugins without an exact reference): none.

:func:`compute_pair_similarity` compares two networks trained on disjoint sets (the
memorization sweep): overlap of their top-k eigenvector spans at the same noisy input.
"""

from __future__ import annotations

import contextlib
import math
from pathlib import Path

import numpy as np
import torch

import datasets_synth
from tbcore.validation import check_int, check_seed, resolve_device

from ..denoisers.network import NetworkDenoiser
from ..evaluation import NOISE_BLOCK, check_sigmas, evaluation_noise
from ..jacobian import jacobian_products, jacobian_spectrum, subspace_angles, sure_mse
from .keys import CellKind, MissingCheckpoint, cell_key, entry_label
from .memorization_sweep import checkpoints

KIND = "jacobian"
TOP_K = 8  # eigenvectors kept for figures (first image), and scored on the contour
TANGENT_DIM = 5  # the fewest eigenvectors kept (disks: (cx, cy, r, a_f, a_b), SCIENCE.md §5)
SHRINKAGE_LEVEL = 0.5  # eigenvalues above this count as kept dimensions
CONTOUR_BAND = 2.0  # calpha: pixels whose centre lies within this distance of the contour
SIGMA_TARGETS = (0.04, 0.15, 0.5)  # small (the paper's disks figure), middle, large
DIGITS = 6  # significant digits of stored floats
# Above TOP_K_MIN_D pixels a Jacobian is analysed from its top eigenpairs (Jacobian–vector
# products, no d × d matrix; jacobian_spectrum(k=...)), below it exactly (all d eigenvalues)
TOP_K_MIN_D = 48 * 48
TOP_K_START = 64  # first k of the top-k analysis, doubled while λ_k > SHRINKAGE_LEVEL ...
TOP_K_MAX = 512  # ... up to this k; beyond it count_above is unknown (NaN)
DISTANCE_PROBES = 32  # Rademacher probes of ‖J_a − J_b‖_F / ‖J_a‖_F above TOP_K_MIN_D


# ----------------------------------------------------------------------------- cells


def jacobian_sigmas(grid, targets=SIGMA_TARGETS) -> list[float]:
    """The grid values nearest (in log σ) to each target, without repeats, ascending.

    With the default targets: a small σ (≈ 0.04, the paper's disks figure), a middle and a
    large one. ``grid`` is the preset's σ grid (the per-σ networks are trained there).
    """
    grid = check_sigmas(grid)
    targets = check_sigmas(targets)
    log_grid = np.log(grid)
    chosen = {grid[int(np.argmin(np.abs(log_grid - math.log(t))))] for t in targets}
    return sorted(chosen)


def build_jacobian_cells(network_cells: list[dict], sigmas, n_images: int, seed: int,
                         top_k: int = TOP_K) -> list[dict]:
    """Jacobian cells for each network cell at each analysed σ.

    Parameters
    ----------
    network_cells : list of cell specs (those of kind ``network`` are used; others are
        ignored), as built by ``cells.build_cells``.
    sigmas : sequence of float > 0   σ values analysed (pixel units). A per-σ network is
        analysed at its own σ when that σ is listed; the universal network at every listed
        σ up to its ``sigma_max``.
    n_images : int in [1, 256]   noisy images per cell (the first images of ``mse_curve``
        with the same seed).
    seed : int >= 0   selects images and noise.
    top_k : int >= 5  eigenvectors kept (first image) and scored against the contour.

    Returns
    -------
    list of JSON-serializable specs ``{"kind": "jacobian", "dataset", "params", "sigma",
    "mode", "n_images", "seed", "top_k", "band", "network": <network spec>,
    "network_key": cell_key(network spec)}``, per-σ cells before universal ones for each
    entry. Run them after the network cells (they read their checkpoints).
    """
    sigmas = check_sigmas(sigmas)
    n_images = check_int("n_images", n_images, low=1, high=NOISE_BLOCK)
    seed = check_seed(seed)
    top_k = check_int("top_k", top_k, low=TANGENT_DIM)
    nets = [c for c in network_cells if c.get("kind") == "network"]
    trained: dict[str, list[float]] = {}  # per-σ networks of each entry
    for net in nets:
        if net["train"]["mode"] == "per-sigma":
            label = entry_label(net["dataset"], net["params"])
            trained.setdefault(label, []).append(net["train"]["sigma"])
    for label, grid in trained.items():
        missing = [s for s in sigmas if not any(math.isclose(s, g, rel_tol=1e-6) for g in grid)]
        if missing:
            raise ValueError(f"sigmas must be σ values of the per-σ networks of {label} "
                             f"({', '.join(f'{g:g}' for g in sorted(grid))}), got {missing[0]:g}")
    cells = []
    for net in nets:
        train = net["train"]
        if train["mode"] == "per-sigma":
            chosen = [s for s in sigmas if math.isclose(s, train["sigma"], rel_tol=1e-6)]
        else:
            chosen = [s for s in sigmas if s <= train["sigma_max"]]
        for sigma in chosen:
            cells.append({"kind": KIND, "dataset": net["dataset"], "params": net["params"],
                          "sigma": sigma, "mode": train["mode"], "n_images": n_images,
                          "seed": seed, "top_k": top_k, "band": CONTOUR_BAND,
                          "network": net, "network_key": cell_key(net)})
    cells.sort(key=lambda c: (entry_label(c["dataset"], c["params"]), c["mode"] != "per-sigma",
                              c["sigma"]))
    return cells


def describe_jacobian(spec: dict) -> str:
    """One line naming a Jacobian cell (progress bars, error messages)."""
    label = entry_label(spec["dataset"], spec["params"])
    return f"Jacobian of the {spec['mode']} network on {label} at σ={spec['sigma']:g}"


# ----------------------------------------------------------------------------- geometry


def contour_concentration(vectors, band) -> np.ndarray:
    """Fraction of each vector's energy inside ``band``: ``Σ_band v² / Σ v²``.

    vectors : array (k, d) or (k, c, h, w); band : bool (h, w) (the same for each channel).
    Returns (k,) floats in [0, 1]; a vector spread evenly gets ``band.mean()`` (chance).
    """
    v = np.asarray(vectors, dtype=float)
    band = np.asarray(band, dtype=bool)
    v = v.reshape(v.shape[0], -1, band.size)  # (k, c, h·w)
    energy = (v ** 2).sum(axis=(1, 2))
    inside = (v[:, :, band.reshape(-1)] ** 2).sum(axis=(1, 2))
    return inside / np.maximum(energy, 1e-300)


def subspace_overlap(U, V) -> float:
    """Mean ``cos²`` of the principal angles between the spans of U and V (1: same span)."""
    return float(torch.cos(subspace_angles(U, V)).square().mean())


# ----------------------------------------------------------------------------- references


class _LocalLinear:
    """``f(y') = f(y) + J (y' − y)``: a denoiser whose Jacobian is the given J (d × d)."""

    def __init__(self, J: torch.Tensor, y: torch.Tensor, fy: torch.Tensor):
        self.J, self.y, self.fy = J, y.reshape(1, -1), fy.reshape(1, -1)

    def __call__(self, y, sigma):
        flat = y.reshape(y.shape[0], -1).to(self.J.dtype)
        return (self.fy + (flat - self.y) @ self.J.T).reshape(y.shape).to(y.dtype)


def _reference(dist):
    """(name, kind, description, how) and a builder ``(x_i, y_i, latents_i, σ) -> (denoiser
    whose Jacobian is the reference's, extra record fields)``; None when there is none."""
    refs = dict(dist.reference_denoisers())
    sampled = [(name, den) for name, den in refs.items() if hasattr(den, "moments")]
    if sampled:  # a posterior that knows its moments (the shape manifolds' sampler)
        name, posterior = sampled[0]

        def build(x, y, lat, sigma):
            mom = posterior.moments(y, sigma)
            return (_LocalLinear(mom["jacobian"], y.reshape(-1).double(), mom["mean"]),
                    {"ess": mom["ess"]})

        info = (name, posterior.kind, posterior.description,
                "importance sample of the posterior: Cov[x|y]/σ² (Tweedie)")
        return info, build
    frozen = [(name, den) for name, den in refs.items()
              if getattr(den, "oracle", False) and hasattr(den, "given")]
    if frozen:  # an oracle that is a denoiser of y alone once given the latents (calpha)
        name, oracle = frozen[0]

        def build(x, y, lat, sigma):
            return oracle.given(lat), {}

        info = (name, oracle.kind, oracle.description,
                "autograd of the oracle given the image's latents (an oracle)")
        return info, build
    exact = [(name, den) for name, den in refs.items() if getattr(den, "kind", "") == "exact"
             and not getattr(den, "oracle", False) and getattr(den, "differentiable", True)]
    if exact:
        name, den = exact[0]

        def build(x, y, lat, sigma):
            return den, {}

        return (name, "exact", getattr(den, "description", ""), "autograd"), build
    return None


# ----------------------------------------------------------------------------- measurement


def _round(values, digits: int = DIGITS):
    """A float array as nested lists of floats rounded to ``digits`` significant digits."""
    a = np.asarray(values, dtype=float)
    return np.vectorize(lambda v: float(f"{v:.{digits}g}"), otypes=[float])(a).tolist()


@contextlib.contextmanager
def _exact_float32(device: torch.device):
    """On CUDA, switch TF32 off (it rounds convolutions to ~1e-3); restore afterwards."""
    if device.type != "cuda":
        yield
        return
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def analyse(denoiser, x: torch.Tensor, y: torch.Tensor, sigma: float, dist=None,
            latents: dict | None = None, top_k: int = TOP_K, band: float = CONTOUR_BAND) -> dict:
    """Every Jacobian measure of one denoiser at one noisy image.

    Parameters
    ----------
    denoiser : callable ``(y, σ) -> x̂``, differentiable in y (eval mode for networks).
    x, y : tensors (c, h, w) (or (1, c, h, w)): clean and noisy image, pixel units; the
        computation runs in y's dtype and device.
    sigma : float > 0;  dist : the distribution (for disks tangents / calpha contours).
    latents : this image's latents (``params`` for disks, ``mask`` for calpha), each with
        a leading dimension 1.

    Returns
    -------
    dict: ``eigenvalues`` (d,) numpy descending, ``eigenvectors`` (top_k, c, h, w),
    ``output`` f(y) (c, h, w), ``trace`` (± ``trace_se``), ``count_above`` (eigenvalues
    > 0.5), ``asymmetry``, ``homogeneity_error``, ``sure_mse`` and ``mse`` (per pixel),
    ``tangent_angles_deg`` (k,) where the family has a tangent space, and
    ``contour_concentration`` (top_k,) and ``contour_chance`` for calpha.

    Up to ``TOP_K_MIN_D`` pixels everything is exact (full J). Above, no d × d matrix is
    formed (:func:`_top_spectrum_and_count`): ``eigenvalues`` holds the top k (k >= 64),
    then NaN, ``count_above`` is exact when λ_k ≤ 0.5 for some k ≤ ``TOP_K_MAX``,
    else NaN; ``trace`` (hence ``sure_mse``) and ``asymmetry`` are unbiased / consistent
    Hutchinson estimates (SCIENCE.md §6), ``trace_se`` the trace's standard error.
    """
    y1 = y.reshape(1, *y.shape[-3:])
    d = y1[0].numel()
    if d > TOP_K_MIN_D:  # top eigenpairs from Jacobian–vector products only
        spec, count_above = _top_spectrum_and_count(denoiser, y1, sigma,
                                                    max(top_k, TANGENT_DIM))
        eigenvalues = np.full(d, np.nan)
        eigenvalues[:spec.k] = spec.eigenvalues.cpu().numpy()
    else:  # exact: all d eigenvalues of the full J
        spec = jacobian_spectrum(denoiser, y1, sigma)
        eigenvalues = spec.eigenvalues.cpu().numpy()
        count_above = spec.count_above(SHRINKAGE_LEVEL)
    vectors = spec.eigenvectors[:, :top_k].T.reshape(top_k, *spec.shape).cpu()
    out = {
        "eigenvalues": eigenvalues,
        "eigenvectors": vectors.numpy(),
        "output": spec.output.double().cpu().numpy(),
        "trace": spec.trace,
        "trace_se": spec.trace_se,
        "count_above": count_above,
        "asymmetry": spec.asymmetry,
        "homogeneity_error": spec.homogeneity_error,
        # SURE (SCIENCE.md §6) against the measured per-pixel error ‖f(y) − x‖²/d
        "sure_mse": float(sure_mse(denoiser, y1, sigma, trace=spec.trace)[0]),
        "mse": float((spec.output.double().cpu() - x.reshape(spec.shape).double().cpu())
                     .square().sum() / d),
    }
    latents = latents or {}
    tangent = None if dist is None or not latents else dist.tangent_space(latents)
    if tangent is not None and tangent.shape[1] <= spec.eigenvectors.shape[1]:
        angles = subspace_angles(spec.eigenvectors[:, :tangent.shape[1]].cpu(), tangent)
        out["tangent_angles_deg"] = torch.rad2deg(angles).numpy()
    region = None if dist is None or not latents else dist.contour_region(latents, band)
    if region is not None:
        out["contour_concentration"] = contour_concentration(vectors.numpy(), region)
        out["contour_chance"] = float(region.mean())
    return out


def _top_spectrum_and_count(denoiser, y1: torch.Tensor, sigma: float, k_min: int):
    """(top-k spectrum, eigenvalues above ``SHRINKAGE_LEVEL``) without a d × d matrix.

    k starts at ``max(TOP_K_START, k_min)`` and doubles while the k-th eigenvalue exceeds
    ``SHRINKAGE_LEVEL`` (the count is then only known to be >= k), up to ``TOP_K_MAX``;
    the count is exact once λ_k ≤ ``SHRINKAGE_LEVEL``, NaN if that never happens.
    """
    d = y1.numel()
    k = min(d, max(TOP_K_START, k_min))
    while True:
        spec = jacobian_spectrum(denoiser, y1, sigma, k=k)
        if float(spec.eigenvalues[-1]) <= SHRINKAGE_LEVEL:
            return spec, spec.count_above(SHRINKAGE_LEVEL)
        if k >= min(d, TOP_K_MAX):
            return spec, math.nan
        k = min(d, TOP_K_MAX, 2 * k)


_PER_IMAGE = ("trace", "count_above", "asymmetry", "homogeneity_error", "sure_mse", "mse",
              "tangent_angles_deg", "contour_concentration", "contour_chance")


def _summarize(results: list[dict], extras: list[dict]) -> dict:
    """Per-image lists of every measure; full spectra; image 0's eigenvectors and output."""
    rec = {"eigenvalues": _round(np.stack([r["eigenvalues"] for r in results]))}
    for name in _PER_IMAGE:
        if name in results[0]:
            rec[name] = _round(np.asarray([r[name] for r in results], dtype=float))
    rec["eigenvectors0"] = _round(results[0]["eigenvectors"], 5)
    rec["output0"] = _round(results[0]["output"], 5)
    for name in (extras[0] if extras else {}):
        rec[name] = [e[name] for e in extras]
    return rec


def _noisy_images(dist, sigma: float, n: int, seed: int):
    """Images 0 … n−1 of ``mse_curve(…, seed)`` with their latents and noisy versions."""
    x, latents = dist.sample_with_latents(n, seed)
    z = evaluation_noise(dist, seed, 0)[:n]
    return x, latents, x + sigma * z


def compute_jacobian_cell(spec: dict, cache, key: str, device=None) -> dict:
    """Analyse the cell's network and the reference at ``spec["sigma"]`` (module doc).

    Parameters
    ----------
    spec : a spec from :func:`build_jacobian_cells`.
    cache : theorybench.cache.Cache holding the network cell's checkpoint
        (``cache.artifact_path(spec["network_key"], ".pt")``).
    key : this cell's key (unused: nothing is stored beside the record).
    device : where the network's Jacobian is computed (None: CUDA if available); the
        references run on the CPU in float64.

    Returns
    -------
    JSON-serializable dict: ``sigma``, ``d``, ``shape``, ``clean0``/``noisy0`` (first
    image), ``denoisers`` {``network``: …, ``reference``: … or absent}, each with
    ``name``, ``kind``, ``description``, ``method`` and the per-image
    measures of :func:`analyse` (lists over images), full spectra and image 0's top
    eigenvectors.

    Raises
    ------
    MissingCheckpoint  when the network cell has no checkpoint (not run, or diverged).
    """
    del key
    path = Path(cache.artifact_path(spec["network_key"], ".pt"))
    if not path.exists():
        raise MissingCheckpoint(f"{describe_jacobian(spec)}: no checkpoint {path.name} "
                                f"(run the network cell first; it may have diverged, failed, "
                                f"or had its source edited during the run)")
    device = resolve_device(device)
    dist = datasets_synth.get(spec["dataset"], **spec["params"])
    sigma, n, top_k = float(spec["sigma"]), int(spec["n_images"]), int(spec["top_k"])
    band = float(spec.get("band", CONTOUR_BAND))
    x, latents, y = _noisy_images(dist, sigma, n, int(spec["seed"]))
    per_image = [{k: v[i:i + 1] for k, v in latents.items()} for i in range(n)]
    result = {"sigma": sigma, "d": dist.d, "shape": list(dist.shape),
              "clean0": _round(x[0].numpy(), 5), "noisy0": _round(y[0].numpy(), 5),
              "denoisers": {}}

    network = NetworkDenoiser.load(path, map_location=device)
    with _exact_float32(device):
        results = [analyse(network, x[i], y[i].to(device), sigma, dist, per_image[i], top_k,
                           band) for i in range(n)]
    result["denoisers"]["network"] = {
        "name": f"network ({spec['mode']})", "kind": "network",
        "description": network.description, "method": "autograd (float32, eval mode)",
        **_summarize(results, [])}

    reference = _reference(dist)
    if reference is not None:
        (name, kind, description, method), build = reference
        results, extras = [], []
        for i in range(n):
            den, extra = build(x[i], y[i:i + 1].double(), per_image[i], sigma)
            results.append(analyse(den, x[i], y[i].double(), sigma, dist, per_image[i],
                                   top_k, band))
            extras.append(extra)
        result["denoisers"]["reference"] = {
            "name": name, "kind": kind, "description": description, "method": method,
            **_summarize(results, extras)}
    return result


# ----------------------------------------------------------------------------- two networks


def compute_pair_similarity(path_a, path_b, dataset: str, params: dict, sigmas, n_images: int,
                            seed: int, k: int = TOP_K, device=None) -> dict:
    """Similarity of the Jacobians of two networks at the same noisy inputs (SCIENCE.md §8).

    For networks trained on disjoint sets of the same size N (the memorization sweep,
    checkpoints ``<key>-s1.pt`` and ``<key>-s2.pt``): at each σ and image, the overlap
    of the spans of their top-k eigenvectors (mean ``cos²`` of the principal angles: 1
    for the same span, about k/d for unrelated spans) and the relative distance
    ``‖J_a − J_b‖_F / ‖J_a‖_F``. Strong generalization shows as overlap → 1 as N grows.
    Above ``TOP_K_MIN_D`` pixels no d × d matrix is formed: top-k eigenvectors from
    Jacobian–vector products, and the distance estimated as ``‖(J_a − J_b) Z‖_F / ‖J_a Z‖_F``
    with ``DISTANCE_PROBES`` Rademacher columns Z (consistent, not unbiased).

    Parameters
    ----------
    path_a, path_b : checkpoint paths (``NetworkDenoiser.save``).
    dataset, params : the distribution the inputs are drawn from.
    sigmas : σ values (pixel units);  n_images : images per σ (the first of ``mse_curve``);
    seed : images and noise;  k : eigenvectors compared;  device : for the networks.

    Returns
    -------
    dict ``sigma`` (list), ``overlap`` and ``jacobian_distance`` (lists (σ, image)),
    ``chance`` (k/d), ``k``.
    """
    sigmas = check_sigmas(sigmas)
    n_images = check_int("n_images", n_images, low=1, high=NOISE_BLOCK)
    device = resolve_device(device)
    dist = datasets_synth.get(dataset, **params)
    k = check_int("k", k, low=1, high=dist.d)
    nets = [NetworkDenoiser.load(p, map_location=device) for p in (path_a, path_b)]
    overlap, distance = [], []
    with _exact_float32(device):
        for sigma in sigmas:
            _, _, y = _noisy_images(dist, sigma, n_images, check_seed(seed))
            row_o, row_d = [], []
            for i in range(n_images):
                yi = y[i:i + 1].to(device)
                if dist.d > TOP_K_MIN_D:  # top-k spectra and a Hutchinson distance: no d × d
                    sa, sb = (jacobian_spectrum(net, yi, sigma, k=k) for net in nets)
                    g = torch.Generator().manual_seed(i)
                    Z = 2.0 * torch.randint(0, 2, (dist.d, DISTANCE_PROBES), generator=g) - 1
                    Ja, Jb = (jacobian_products(net, yi, sigma, Z)[0] for net in nets)
                else:
                    sa, sb = (jacobian_spectrum(net, yi, sigma) for net in nets)
                    Ja, Jb = sa.jacobian.double(), sb.jacobian.double()
                row_o.append(subspace_overlap(sa.eigenvectors[:, :k].cpu(),
                                              sb.eigenvectors[:, :k].cpu()))
                # ‖J_a − J_b‖_F / ‖J_a‖_F, or its estimate ‖(J_a − J_b) Z‖_F / ‖J_a Z‖_F
                row_d.append(float((Ja - Jb).norm() / Ja.norm().clamp_min(1e-300)))
            overlap.append(row_o)
            distance.append(row_d)
    return {"sigma": sigmas, "overlap": _round(overlap), "jacobian_distance": _round(distance),
            "chance": k / dist.d, "k": k}


PAIR_KIND = "jacobian-pair"


def build_pair_cells(memorization_cells: list[dict], sigmas, n_images: int, seed: int,
                     k: int = TOP_K) -> list[dict]:
    """One ``jacobian-pair`` cell per memorization cell (two networks on disjoint sets).

    Parameters
    ----------
    memorization_cells : specs of kind ``memorization`` (``memorization_sweep``); others
        are ignored. Their checkpoints are ``<key>-s1.pt`` and ``<key>-s2.pt``.
    sigmas : σ values (pixel units);  n_images : images per σ;  seed : images and noise;
    k : eigenvectors compared.

    Returns
    -------
    list of JSON-serializable specs ``{"kind": "jacobian-pair", "dataset", "params", "N",
    "sigmas", "n_images", "seed", "k", "memorization": <spec>, "memorization_key": key}``.
    Run them after the memorization cells.
    """

    sigmas = check_sigmas(sigmas)
    n_images = check_int("n_images", n_images, low=1, high=NOISE_BLOCK)
    seed = check_seed(seed)
    k = check_int("k", k, low=1)
    return [{"kind": PAIR_KIND, "dataset": m["dataset"], "params": m["params"], "N": m["N"],
             "sigmas": sigmas, "n_images": n_images, "seed": seed, "k": k,
             "memorization": m, "memorization_key": cell_key(m)}
            for m in memorization_cells if m.get("kind") == "memorization"]


def compute_pair_cell(spec: dict, cache, key: str, device=None) -> dict:
    """:func:`compute_pair_similarity` of the memorization cell's two networks.

    Returns its dict plus ``N`` and ``label``; MissingCheckpoint when a checkpoint is absent.
    """
    del key
    label = entry_label(spec["dataset"], spec["params"])
    paths = checkpoints(spec, cache, describe_pair(spec))
    result = compute_pair_similarity(*paths, spec["dataset"], spec["params"], spec["sigmas"],
                                     spec["n_images"], spec["seed"], k=spec["k"], device=device)
    return {**result, "N": spec["N"], "label": label}


def describe_pair(spec: dict) -> str:
    """One line naming a Jacobian-pair cell."""
    return f"Jacobian pair on {entry_label(spec['dataset'], spec['params'])}, N={spec['N']}"


# the Jacobians of networks: on Ray they take a GPU when the run has one
CELL = CellKind(KIND, lambda spec, cache, key, device, progress: compute_jacobian_cell(
    spec, cache, key, device=device), describe_jacobian, gpu=True)
PAIR_CELL = CellKind(PAIR_KIND, lambda spec, cache, key, device, progress: compute_pair_cell(
    spec, cache, key, device=device), describe_pair, gpu=True)

__all__ = [
    "CELL",
    "CONTOUR_BAND",
    "KIND",
    "PAIR_CELL",
    "MissingCheckpoint",
    "PAIR_KIND",
    "analyse",
    "build_jacobian_cells",
    "build_pair_cells",
    "compute_jacobian_cell",
    "compute_pair_cell",
    "compute_pair_similarity",
    "contour_concentration",
    "describe_jacobian",
    "describe_pair",
    "jacobian_sigmas",
    "subspace_overlap",
]

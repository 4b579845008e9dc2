"""Memorization and generalization measures for generated images (SCIENCE.md §8).

For each generated image ``s`` and a training set ``{x_i}``:

* the copy criterion (the headline "memorized" flag, defined at every N including N = 1):
  each image is unit-normalized, centred by subtracting a *reference direction* — the
  mean of the unit-normalized held-out images (a mean image; for a held-out image itself
  measured against the training set, the mean of the *other* held-out images, so that
  no image sets its own centring: :func:`leave_one_out_references`), or, without
  held-out images, each image's own pixel mean — and unit-normalized again. The sample is a copy
  when the distance between its centred direction and the nearest centred training
  direction is below ``COPY_THRESHOLD`` = 0.2, i.e. when the largest *centred cosine*
  over the training set is at least ``1 − 0.2²/2 = 0.98`` (``copy_cos``). Scale-free: a
  homogeneous (bias-free) network's scaled copy ``a·x`` (a > 0) counts, which the plain
  d1/d2 missed. Raw cosines carry no information on families with a strong mean (two
  random disks images already score ≈ 0.98), hence the centring;
* ``d1``, ``d2``: Euclidean distances to the nearest and second-nearest training image;
  ``memorized_ratio`` when ``d1/d2 < 1/3`` (Yoon et al. 2023; Gu et al. 2023), defined for
  N >= 2 only (``d2 = inf``, ratio NaN at N = 1);
* cosine similarity ``⟨s, x⟩/(‖s‖‖x‖)`` to the nearest training image (by distance), and
  the largest cosine over the training set with its index; each also *mean-subtracted*
  (each image minus its own mean intensity), as the paper reports both;
* cross similarity: the cosine between paired samples of two networks drawn from the
  same noise (plain and mean-subtracted): near 1 means both networks learned the same
  density (strong generalization), whatever their training sets.

Everything is computed in float64, in chunks over the training set (``O(n × chunk)``
memory), so training sets of 10^5 images are fine. Caveats: exact duplicates in the
training set make ``d1 = d2`` (deduplicate first); a zero vector (e.g. a constant image
after mean subtraction) has cosine 0 with everything.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import torch

from tbcore.validation import check_float, check_int

MEMORIZED_RATIO = 1.0 / 3.0  # d1/d2 below this: memorized (Yoon et al. 2023; Gu et al. 2023)
# copy criterion: distance between centred unit directions below this, i.e. centred cosine
# above 1 − t²/2 = 0.98. Real images reach it too: on 16² disks (default sweep, seed 0)
# 6 % of the held-out images against N = 10 training images and 14 % against N = 1000,
# most of them near-constant images (one image up to scale, which the criterion ignores):
# read the samples' fraction next to the held-out baseline.
COPY_THRESHOLD = 0.2
COPY_COSINE = 1.0 - COPY_THRESHOLD ** 2 / 2
# a sample is an image of the family (on its manifold) when its squared distance to the
# family's best fit, per pixel, is at most this times σ_last² (σ_last: the sampler's last
# noise level). A real image seen at σ_last sits at ≈ σ_last²(1 − k/d) (k parameters):
# the threshold admits it with a wide margin (sd of that residual ≈ σ_last²·√(2/d)). The
# same tolerance excludes flat images: one whose fit is within it of a constant image (a
# disk of equal inside and outside intensity, which the family holds) shows no shape
# (measured at 16², default sweep, N = 1000: of the samples that passed the fit alone,
# 57–84 % were such near-constant images; so are 17 % of real disks).
ON_MANIFOLD_FACTOR = 2.0
_TINY = 1e-300  # denominators of cosines: a zero vector gets cosine 0


def _flat64(images: torch.Tensor, name: str) -> torch.Tensor:
    if not isinstance(images, torch.Tensor) or images.dim() < 2 or len(images) == 0:
        raise ValueError(f"{name} must be a non-empty tensor (n, c, h, w)")
    flat = images.detach().flatten(1).to(dtype=torch.float64)
    if not bool(torch.isfinite(flat).all()):
        raise ValueError(f"{name} must be finite")
    return flat


def _centered(flat: torch.Tensor) -> torch.Tensor:
    """Each row minus its own mean (the paper's mean-subtracted similarity)."""
    return flat - flat.mean(1, keepdim=True)


def _unit_rows(flat: torch.Tensor) -> torch.Tensor:
    return flat / flat.norm(dim=1, keepdim=True).clamp_min(_TINY)


def reference_direction(held_out: torch.Tensor) -> torch.Tensor:
    """The centring of the copy criterion: the mean of the unit-normalized held-out images
    (a mean image, flattened, float64)."""
    return _unit_rows(_flat64(held_out, "held_out")).mean(0)


def baseline_reference(held_out: torch.Tensor) -> tuple[torch.Tensor | None, str]:
    """The copy criterion's centring for the held-out images measured themselves, and a
    phrase saying which (for the records, after "mean of the unit-normalized held-out
    images"): :func:`leave_one_out_references`, or with a single image (whose own mean it
    would be) None, each image's own pixel mean."""
    if len(held_out) >= 2:
        return leave_one_out_references(held_out), "for a held-out image: of the others"
    return None, "for the one held-out image: its own pixel mean"


def leave_one_out_references(held_out: torch.Tensor) -> torch.Tensor:
    """The copy criterion's centring for the held-out images themselves (n, d) float64:
    row i is the mean of the unit-normalized held-out images *other than* i,
    ``(n·r̄ − u_i)/(n − 1)`` (r̄ = :func:`reference_direction`). Measured against the
    shared mean r̄, image i would take part in its own centring, which pulls every
    training direction ``w − r̄`` away from it by ``(u_i − r̄)/(n − 1)`` and lowers its
    centred cosines. Needs n >= 2."""
    u = _unit_rows(_flat64(held_out, "held_out"))
    if len(u) < 2:
        raise ValueError(f"held_out must hold at least 2 images, got {len(u)}")
    return (u.sum(0, keepdim=True) - u) / (len(u) - 1)


def _references(reference: torch.Tensor, n: int, d: int, device) -> torch.Tensor:
    """``reference`` as float64 on ``device``: (d,) shared by every image, or (n, d), row i
    centring image i."""
    ref = torch.as_tensor(reference).to(device=device, dtype=torch.float64)
    if ref.shape not in ((d,), (n, d)):
        raise ValueError(f"reference must have shape ({d},), shared, or ({n}, {d}), one row "
                         f"per image, got {tuple(ref.shape)}")
    return ref


def unit_images(images: torch.Tensor) -> torch.Tensor:
    """Each image (n, c, h, w) divided by its Euclidean norm (float64, same shape; a zero
    image stays 0)."""
    return _unit_rows(_flat64(images, "images")).view(images.shape)


def _directions(u: torch.Tensor, ref: torch.Tensor | None) -> torch.Tensor:
    """Unit rows ``u`` (n, d) centred on ``ref`` ((d,) or (n, d), as :func:`_references`
    returns it; None: each row's own mean) and unit-normalized again."""
    return _unit_rows(_centered(u) if ref is None else u - ref)


def copy_directions(images: torch.Tensor, reference: torch.Tensor | None = None) -> torch.Tensor:
    """Centred unit directions (n, d) float64: unit-normalize, subtract ``reference`` (d,)
    from :func:`reference_direction`, or (n, d) with row i for image i (from
    :func:`leave_one_out_references`), or with None each image's own pixel mean, and
    unit-normalize again. Invariant to a positive scale of the image."""
    u = _unit_rows(_flat64(images, "images"))
    return _directions(u, None if reference is None
                       else _references(reference, *u.shape, u.device))


def _check_training_set(train_images: torch.Tensor, samples: torch.Tensor) -> None:
    if not isinstance(train_images, torch.Tensor) or train_images.dim() < 2:
        raise ValueError("train_images must be a tensor (N, c, h, w)")
    if len(train_images) < 1:
        raise ValueError("train_images must hold at least 1 image")
    if train_images[0].numel() != samples[0].numel():
        raise ValueError(f"samples and train_images must have the same image size, got "
                         f"{tuple(samples.shape[1:])} and {tuple(train_images.shape[1:])}")


def nearest_copy(samples: torch.Tensor, train_images: torch.Tensor,
                 reference: torch.Tensor | None = None, chunk: int = 4096
                 ) -> dict[str, torch.Tensor]:
    """Largest centred cosine of each sample over the training set (N >= 1).

    ``reference``: as for :func:`copy_directions`. With one reference per sample (n, d),
    sample i and every training image are centred on ``r_i``. With ``r̄`` the references'
    mean and ``δ_i = r_i − r̄`` (small for :func:`leave_one_out_references`), the cosines
    come from ``c = w − r̄`` (w: a unit-normalized training image) by
    ``⟨u − r_i, w − r_i⟩ = ⟨u − r_i, c⟩ − ⟨u − r_i, δ_i⟩`` and
    ``‖w − r_i‖² = ‖c‖² − 2⟨δ_i, c⟩ + ‖δ_i‖²``: two (n, d) × (d, chunk) products per
    chunk, with no cancellation beyond ``δ``'s. A training image within rounding of
    ``r_i`` (``‖w − r_i‖² ≤ 1e-12 (‖c‖² + ‖δ_i‖²)``) is a zero centred vector: cosine 0.

    Returns (n,) tensors ``copy_cos`` (centred cosine to the nearest centred training
    direction), ``copy_distance`` (``√(2 − 2·copy_cos)``, the distance between the two
    centred unit directions) and ``copy_index``.
    """
    u = _unit_rows(_flat64(samples, "samples"))
    _check_training_set(train_images, samples)
    r = None if reference is None else _references(reference, *u.shape, u.device)
    if r is None or r.dim() == 1:  # each training image's centring is its own
        s = _directions(u, r)

        def cosines(x: torch.Tensor) -> torch.Tensor:
            return s @ _directions(_unit_rows(_flat64(x, "train_images")), r).T

    else:
        centre = r.mean(0)
        delta, a = r - centre, u - r
        a_delta, a_norm = (a * delta).sum(1, keepdim=True), a.norm(dim=1, keepdim=True)
        delta_sq = delta.square().sum(1, keepdim=True)

        def cosines(x: torch.Tensor) -> torch.Tensor:
            c = _unit_rows(_flat64(x, "train_images")) - centre
            c_sq = c.square().sum(1)[None]
            w_r_sq = c_sq - 2 * (delta @ c.T) + delta_sq  # ‖w − r_i‖², (n, chunk)
            cos = (a @ c.T - a_delta) / (a_norm * w_r_sq.clamp_min(0).sqrt()).clamp_min(_TINY)
            return torch.where(w_r_sq > 1e-12 * (c_sq + delta_sq), cos, torch.zeros_like(cos))

    chunk = check_int("chunk", chunk, low=1)
    best = torch.full((len(u),), -math.inf, dtype=torch.float64, device=u.device)
    best_i = torch.zeros(len(u), dtype=torch.int64, device=u.device)
    flat = train_images.detach()
    for start in range(0, len(flat), chunk):
        cos = cosines(flat[start:start + chunk].to(u.device))
        c_max, c_arg = cos.max(1)
        better = c_max > best
        best, best_i = torch.where(better, c_max, best), torch.where(better, c_arg + start,
                                                                      best_i)
    best = best.clamp(-1.0, 1.0)
    return {"copy_cos": best, "copy_distance": (2 - 2 * best).clamp_min(0).sqrt(),
            "copy_index": best_i}


def cosine(a: torch.Tensor, b: torch.Tensor, centered: bool = False) -> torch.Tensor:
    """Row-wise cosine ``⟨a_k, b_k⟩/(‖a_k‖‖b_k‖)`` of paired images (n, ...) -> (n,) float64.

    ``centered=True`` first subtracts each image's own mean. A zero vector gives 0.
    """
    a, b = _flat64(a, "a"), _flat64(b, "b")
    if a.shape != b.shape:
        raise ValueError(f"paired images must have the same shape, got {tuple(a.shape)} "
                         f"and {tuple(b.shape)}")
    if centered:
        a, b = _centered(a), _centered(b)
    return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1)).clamp_min(_TINY)


def nearest_neighbours(samples: torch.Tensor, train_images: torch.Tensor,
                       chunk: int = 4096) -> dict[str, torch.Tensor]:
    """Nearest training images of each sample, by distance and by cosine (float64).

    Parameters
    ----------
    samples : tensor (n, c, h, w)
    train_images : tensor (N, c, h, w), N >= 1 (``d2 = inf`` when N = 1); may live on any
        device and dtype: it is moved to ``samples``' device and converted to float64 one
        chunk at a time.
    chunk : int   training images per chunk (default 4096).

    Returns
    -------
    dict of (n,) tensors: ``d1``, ``d2`` (Euclidean distances to the nearest and
    second-nearest training image, total, not per pixel), ``nn_index``, ``cos_nn`` and
    ``cos_nn_centered`` (cosine to that nearest image, plain and mean-subtracted),
    ``max_cos``/``max_cos_index`` and ``max_cos_centered``/``max_cos_centered_index``
    (the largest cosine over the training set and its argmax).
    """
    s = _flat64(samples, "samples")
    _check_training_set(train_images, samples)
    chunk = check_int("chunk", chunk, low=1)
    n, device = s.shape[0], s.device
    sc = _centered(s)
    s_sq, s_norm, sc_norm = s.pow(2).sum(1), s.norm(dim=1), sc.norm(dim=1)
    top_sq = torch.full((n, 2), math.inf, dtype=torch.float64, device=device)
    top_i = torch.zeros((n, 2), dtype=torch.int64, device=device)
    best = {key: torch.full((n,), -math.inf, dtype=torch.float64, device=device)
            for key in ("max_cos", "max_cos_centered")}
    best_i = {key: torch.zeros(n, dtype=torch.int64, device=device) for key in best}
    train_flat = train_images.detach().flatten(1)
    for start in range(0, len(train_flat), chunk):
        x = train_flat[start:start + chunk].to(device=device, dtype=torch.float64)
        if not bool(torch.isfinite(x).all()):
            raise ValueError("train_images must be finite")
        xc = _centered(x)
        gram = s @ x.T  # ⟨s, x_i⟩, (n, chunk)
        sq = (s_sq[:, None] - 2 * gram + x.pow(2).sum(1)[None]).clamp_min(0)  # ‖s − x_i‖²
        # running two smallest distances: merge this chunk's top-2 with the best so far
        k = min(2, sq.shape[1])
        c_sq, c_i = torch.topk(sq, k, dim=1, largest=False)
        merged_sq = torch.cat([top_sq, c_sq], 1)
        merged_i = torch.cat([top_i, c_i + start], 1)
        top_sq, order = torch.topk(merged_sq, 2, dim=1, largest=False)
        top_i = torch.gather(merged_i, 1, order)
        for key, g, a_norm, b in (("max_cos", gram, s_norm, x),
                                  ("max_cos_centered", sc @ xc.T, sc_norm, xc)):
            cos = g / (a_norm[:, None] * b.norm(dim=1)[None]).clamp_min(_TINY)
            c_max, c_arg = cos.max(1)
            better = c_max > best[key]
            best[key] = torch.where(better, c_max, best[key])
            best_i[key] = torch.where(better, c_arg + start, best_i[key])
    # the Gram expansion loses ~1e-16‖s‖² to cancellation: recompute the two chosen
    # distances directly, so that d1 of a near-copy (memorized sample) is exact
    pair = train_flat[top_i.flatten().to(train_flat.device)].to(device=device,
                                                                 dtype=torch.float64)
    d = (s.repeat_interleave(2, 0) - pair).norm(dim=1).view(n, 2)
    if len(train_flat) == 1:  # no second neighbour
        d[:, 1] = math.inf
    d, order = d.sort(1)
    top_i = torch.gather(top_i, 1, order)
    nn_index = top_i[:, 0]
    x_nn = pair.view(n, 2, -1)[torch.arange(n, device=device), order[:, 0]]
    return {
        "d1": d[:, 0], "d2": d[:, 1], "nn_index": nn_index,
        "cos_nn": cosine(s, x_nn), "cos_nn_centered": cosine(s, x_nn, centered=True),
        "max_cos": best["max_cos"], "max_cos_index": best_i["max_cos"],
        "max_cos_centered": best["max_cos_centered"],
        "max_cos_centered_index": best_i["max_cos_centered"],
    }


def memorization_measures(samples: torch.Tensor, train_images: torch.Tensor,
                          other_samples: torch.Tensor | None = None,
                          reference: torch.Tensor | None = None, chunk: int = 4096,
                          threshold: float = COPY_THRESHOLD) -> pd.DataFrame:
    """One row per sample: copy criterion, nearest-neighbour distances, similarities.

    Parameters
    ----------
    samples : tensor (n, c, h, w)   generated images.
    train_images : tensor (N, c, h, w)   the generating network's training set, N >= 1.
    other_samples : tensor (n, c, h, w) or None   images of a second network from the same
        noise, paired row by row with ``samples`` (adds the cross columns).
    reference : tensor or None   centring of the copy criterion: (d,) from
        :func:`reference_direction` of held-out images, or one per sample (n, d) from
        :func:`leave_one_out_references` (None: each image's pixel mean).
    chunk : int   training images per chunk of the distance computation.
    threshold : float   copy threshold on the centred-direction distance.

    Returns
    -------
    DataFrame with columns ``copy_cos``, ``copy_distance``, ``copy_index``, ``memorized``
    (``copy_distance < threshold``: the headline flag, defined at every N; the threshold
    is kept in ``frame.attrs["copy_threshold"]``), ``d1``, ``d2``
    (Euclidean, pixel units; ``d2 = inf`` at N = 1), ``ratio`` (``d1/d2``; 1 when
    ``d2 = 0``, NaN at N = 1), ``memorized_ratio`` (``ratio < 1/3``), ``nn_index``,
    ``cos_nn``, ``cos_nn_centered``, ``max_cos``, ``max_cos_index``, ``max_cos_centered``,
    ``max_cos_centered_index`` (``_centered``: each image minus its own mean), and with
    ``other_samples`` ``cross_cos``, ``cross_cos_centered`` and ``cross_copy_cos`` (the
    centred cosine of the copy criterion between the paired samples).
    """
    threshold = check_float("threshold", threshold, low=0.0, low_open=True)
    found = nearest_neighbours(samples, train_images, chunk=chunk)
    copies = nearest_copy(samples, train_images, reference=reference, chunk=chunk)
    d1, d2 = found["d1"], found["d2"]
    # d1/d2 (Yoon et al. 2023); d2 = 0 only with duplicates at the sample: not memorized;
    # undefined (NaN) with a single training image
    ratio = torch.where(d2 > 0, d1 / d2.clamp_min(_TINY), torch.ones_like(d1))
    ratio = torch.where(torch.isinf(d2), torch.full_like(d1, math.nan), ratio)
    columns = {**copies, "memorized": copies["copy_distance"] < threshold,
               "d1": d1, "d2": d2, "ratio": ratio,
               "memorized_ratio": torch.nan_to_num(ratio, nan=math.inf) < MEMORIZED_RATIO}
    columns.update({k: v for k, v in found.items() if k not in ("d1", "d2")})
    if other_samples is not None:
        if tuple(other_samples.shape) != tuple(samples.shape):
            raise ValueError(f"other_samples must have the shape of samples "
                             f"{tuple(samples.shape)}, got {tuple(other_samples.shape)}")
        other = other_samples.to(samples.device)
        columns["cross_cos"] = cosine(samples, other)
        columns["cross_cos_centered"] = cosine(samples, other, centered=True)
        columns["cross_copy_cos"] = (copy_directions(samples, reference)
                                     * copy_directions(other, reference)).sum(1)
    frame = pd.DataFrame({k: v.cpu().numpy() for k, v in columns.items()})
    frame.attrs["copy_threshold"] = threshold  # read back by summarize
    return frame


def manifold_fit(images: torch.Tensor, dist, sigma: float):
    """The family's best fit ``P(s)`` of each image s (``P = dist.project`` at noise level
    ``sigma``, pixel units): ``(residuals, shapes)``, float64 (n,) each, with the squared
    distance to the fit per pixel ``‖s − P(s)‖²/d`` and the fit's own squared distance to
    the nearest constant image per pixel ``‖P(s) − mean P(s)‖²/d`` (the energy of the
    shape it found); None when the family has no projection. Compare both with
    :func:`manifold_tolerance` (:func:`on_manifold`)."""
    sigma = check_float("sigma", sigma, low=0.0, low_open=True)
    fitted = dist.project(images, sigma)
    if fitted is None:
        return None
    fitted = _flat64(fitted, "the fit")
    residuals = (_flat64(images, "images") - fitted).square().mean(1)
    shapes = _centered(fitted).square().mean(1)
    return residuals.cpu().numpy(), shapes.cpu().numpy()


def manifold_tolerance(sigma: float) -> float:
    """``ON_MANIFOLD_FACTOR · sigma²``: the per-pixel squared distance within which an image
    counts as its fit, and a fit as a constant image (flat), at noise level ``sigma``."""
    return ON_MANIFOLD_FACTOR * float(sigma) ** 2


def on_manifold(residuals: np.ndarray, shapes: np.ndarray, sigma: float) -> np.ndarray:
    """Flags ``residual ≤ F σ² < shape`` (``F = ON_MANIFOLD_FACTOR``; both (n,) from
    :func:`manifold_fit`): the sample is an image of the family up to the sampler's last
    noise level ``sigma`` (SCIENCE.md §8), and the shape of its fit stands above that
    tolerance (a fit within it of a constant image, which such families hold, shows no
    shape: a flat sample)."""
    tolerance = manifold_tolerance(sigma)
    residuals, shapes = np.asarray(residuals), np.asarray(shapes)
    if residuals.shape != shapes.shape:
        raise ValueError(f"residuals and shapes must have one value per image, got shapes "
                         f"{residuals.shape} and {shapes.shape}")
    return (residuals <= tolerance) & (shapes > tolerance)


def wilson_interval(successes: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion (non-degenerate at 0 and n):
    ``scipy.stats.binomtest(successes, n).proportion_ci(level, method="wilson")``."""
    from scipy.stats import binomtest

    n = check_int("n", n, low=1)
    successes = check_int("successes", successes, low=0, high=n)
    level = check_float("level", level, low=0.0, high=1.0, low_open=True)
    ci = binomtest(successes, n).proportion_ci(level, method="wilson")
    return float(ci.low), float(ci.high)


def summarize(frame: pd.DataFrame, level: float = 0.95) -> dict:
    """Summary of :func:`memorization_measures`' frame.

    Returns a dict: ``n``, ``memorized_fraction`` (the copy criterion, column
    ``memorized``) with its Wilson interval ``memorized_ci_wilson`` (low, high; a
    bootstrap's collapses to a point at 0 and 1); ``memorized_ratio_fraction`` (d1/d2 <
    1/3; None when the ratio is undefined, N = 1) when the frame has ``memorized_ratio``;
    the medians ``median_copy_cos``, ``median_copy_distance``, ``median_ratio`` (None at N = 1),
    ``median_cos_nn``, ``median_cos_nn_centered``, ``median_max_cos``,
    ``median_max_cos_centered`` (and ``median_cross_cos``, ``median_cross_cos_centered``,
    ``median_cross_copy_cos`` when the frame has the cross columns); ``copy_threshold``
    (the one the frame's ``memorized`` flags used; ``COPY_THRESHOLD`` for a frame that does
    not say).
    """
    if not isinstance(frame, pd.DataFrame) or "memorized" not in frame or len(frame) == 0:
        raise ValueError("frame must be a non-empty DataFrame from memorization_measures")
    flags = frame["memorized"].to_numpy(dtype=bool)
    out = {"n": len(frame), "memorized_fraction": float(flags.mean()),
           "memorized_ci_wilson": wilson_interval(int(flags.sum()), len(flags), level),
           "copy_threshold": frame.attrs.get("copy_threshold", COPY_THRESHOLD)}
    ratio_defined = "ratio" in frame and bool(np.isfinite(frame["ratio"].to_numpy()).all())
    if "memorized_ratio" in frame:
        out["memorized_ratio_fraction"] = (float(frame["memorized_ratio"].mean())
                                           if ratio_defined else None)
    for column in ("copy_cos", "copy_distance", "ratio", "cos_nn", "cos_nn_centered",
                   "max_cos", "max_cos_centered", "cross_cos", "cross_cos_centered",
                   "cross_copy_cos"):
        if column in frame:
            out[f"median_{column}"] = (None if column == "ratio" and not ratio_defined
                                       else float(frame[column].median()))
    return out


__all__ = ["COPY_COSINE", "COPY_THRESHOLD", "MEMORIZED_RATIO", "ON_MANIFOLD_FACTOR",
           "baseline_reference", "copy_directions", "cosine", "leave_one_out_references",
           "manifold_fit", "manifold_tolerance", "memorization_measures", "nearest_copy",
           "nearest_neighbours", "on_manifold", "reference_direction", "summarize",
           "wilson_interval"]

"""Memorization and generalization measures for generated images (SCIENCE.md §8).

For each generated image ``s`` and a training set ``{x_i}``:

* ``d1``, ``d2``: Euclidean distances to the nearest and second-nearest training image;
  the sample counts as memorized when ``d1/d2 < 1/3`` (Yoon et al. 2023; Gu et al. 2023);
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

from datasets_synth.base import check_float, check_int, check_seed

MEMORIZED_RATIO = 1.0 / 3.0  # d1/d2 below this: memorized (Yoon et al. 2023; Gu et al. 2023)
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
    train_images : tensor (N, c, h, w), N >= 2; may live on any device and dtype: it is
        moved to ``samples``' device and converted to float64 one chunk at a time.
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
    if not isinstance(train_images, torch.Tensor) or train_images.dim() < 2:
        raise ValueError("train_images must be a tensor (N, c, h, w)")
    if len(train_images) < 2:
        raise ValueError(f"train_images must hold at least 2 images (d1/d2 needs a second "
                         f"neighbour), got {len(train_images)}")
    if train_images[0].numel() != s.shape[1]:
        raise ValueError(f"samples and train_images must have the same image size, got "
                         f"{tuple(samples.shape[1:])} and {tuple(train_images.shape[1:])}")
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
                          chunk: int = 4096) -> pd.DataFrame:
    """One row per sample: nearest-neighbour distances, ratio, memorized flag, similarities.

    Parameters
    ----------
    samples : tensor (n, c, h, w)   generated images.
    train_images : tensor (N, c, h, w)   the generating network's training set, N >= 2.
    other_samples : tensor (n, c, h, w) or None   images of a second network from the same
        noise, paired row by row with ``samples`` (adds the cross columns).
    chunk : int   training images per chunk of the distance computation.

    Returns
    -------
    DataFrame with columns ``d1``, ``d2`` (Euclidean, pixel units, total over the d values),
    ``ratio`` (``d1/d2``; 1 when ``d2 = 0``), ``memorized`` (``ratio < 1/3``), ``nn_index``,
    ``cos_nn``, ``cos_nn_centered``, ``max_cos``, ``max_cos_index``, ``max_cos_centered``,
    ``max_cos_centered_index``, and with ``other_samples`` ``cross_cos``,
    ``cross_cos_centered``.
    """
    found = nearest_neighbours(samples, train_images, chunk=chunk)
    d1, d2 = found["d1"], found["d2"]
    # d1/d2 (Yoon et al. 2023); d2 = 0 only with duplicates at the sample: not memorized
    ratio = torch.where(d2 > 0, d1 / d2.clamp_min(_TINY), torch.ones_like(d1))
    columns = {"d1": d1, "d2": d2, "ratio": ratio, "memorized": ratio < MEMORIZED_RATIO}
    columns.update({k: v for k, v in found.items() if k not in ("d1", "d2")})
    if other_samples is not None:
        if tuple(other_samples.shape) != tuple(samples.shape):
            raise ValueError(f"other_samples must have the shape of samples "
                             f"{tuple(samples.shape)}, got {tuple(other_samples.shape)}")
        other = other_samples.to(samples.device)
        columns["cross_cos"] = cosine(samples, other)
        columns["cross_cos_centered"] = cosine(samples, other, centered=True)
    return pd.DataFrame({k: v.cpu().numpy() for k, v in columns.items()})


def bootstrap_fraction(flags, seed: int = 0, n_boot: int = 10_000,
                       level: float = 0.95) -> tuple[float, float, float]:
    """Fraction of true flags and its percentile-bootstrap interval.

    Resampling n Bernoulli flags with replacement gives a count ``~ Binomial(n, p̂)``, so the
    bootstrap is drawn exactly as ``Binomial(n, p̂)/n`` (seeded numpy generator). With
    p̂ = 0 or 1 the bootstrap interval collapses to a point; see :func:`wilson_interval`.
    Returns ``(p̂, low, high)``.
    """
    flags = np.asarray(flags, dtype=bool).ravel()
    if flags.size == 0:
        raise ValueError("flags must hold at least one value")
    seed = check_seed(seed)
    n_boot = check_int("n_boot", n_boot, low=100)
    level = check_float("level", level, low=0.0, high=1.0, low_open=True)
    n, p = flags.size, float(flags.mean())
    draws = np.random.default_rng(seed).binomial(n, p, size=n_boot) / n
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(draws, [tail, 100 - tail])
    return p, float(low), float(high)


def wilson_interval(successes: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion (non-degenerate at 0 and n)."""
    from scipy.stats import norm

    n = check_int("n", n, low=1)
    successes = check_int("successes", successes, low=0, high=n)
    level = check_float("level", level, low=0.0, high=1.0, low_open=True)
    z = float(norm.ppf(0.5 + level / 2))
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def summarize(frame: pd.DataFrame, seed: int = 0, n_boot: int = 10_000,
              level: float = 0.95) -> dict:
    """Summary of :func:`memorization_measures`' frame.

    Returns a dict: ``n``, ``memorized_fraction`` with its bootstrap interval
    ``memorized_ci`` (low, high) and Wilson interval ``memorized_ci_wilson``, and the
    medians ``median_ratio``, ``median_cos_nn``, ``median_cos_nn_centered``,
    ``median_max_cos``, ``median_max_cos_centered`` (and ``median_cross_cos``,
    ``median_cross_cos_centered`` when the frame has the cross columns).
    """
    if not isinstance(frame, pd.DataFrame) or "memorized" not in frame or len(frame) == 0:
        raise ValueError("frame must be a non-empty DataFrame from memorization_measures")
    flags = frame["memorized"].to_numpy(dtype=bool)
    p, low, high = bootstrap_fraction(flags, seed=seed, n_boot=n_boot, level=level)
    out = {"n": len(frame), "memorized_fraction": p, "memorized_ci": (low, high),
           "memorized_ci_wilson": wilson_interval(int(flags.sum()), len(flags), level)}
    for column in ("ratio", "cos_nn", "cos_nn_centered", "max_cos", "max_cos_centered",
                   "cross_cos", "cross_cos_centered"):
        if column in frame:
            out[f"median_{column}"] = float(frame[column].median())
    return out


__all__ = ["MEMORIZED_RATIO", "bootstrap_fraction", "cosine", "memorization_measures",
           "nearest_neighbours", "summarize", "wilson_interval"]

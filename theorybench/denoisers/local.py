"""Local and equivariant-local empirical denoisers of a finite training set.

Kamb & Ganguli (ICML 2025, "An analytic theory of creativity in convolutional diffusion
models") derive the optimal denoiser of a training set ``{x_i}`` (N images, uniform
weights) under two restrictions a convolutional network obeys.

**Locality (the LS machine).** Each output pixel ``p`` sees only the noisy patch
``y_Ω(p)`` of side P around it. The best such estimator of ``x_p`` is the posterior mean
of the centre pixel given that patch, with the patch prior taken from the training
patches at the same location:

    f(y)_p = Σ_i w_ip x_i(p),   w_·p = softmax_i(−‖y_Ω(p) − x_i,Ω(p)‖² / 2σ²).

Each pixel runs its own posterior over the training set; where the patch covers the
whole image every pixel's weights are those of the empirical denoiser (SCIENCE.md §3),
which it then equals.

**Locality + translation equivariance (the ELS machine).** The estimator must commute
with translations, so the patch prior pools the training patches at *every* location:

    f(y)_p = Σ_(i,q) w_(i,q),p x_i(q),   w_·p = softmax_(i,q)(−‖y_Ω(p) − x_i,Ω(q)‖² / 2σ²).

New images arise as mosaics of training patches from other places and other images.

**Boundary rules** (``boundary``):

* ``"crop"`` (default; the networks zero-pad): a query patch keeps only its pixels inside
  the image, and the distance is summed over those offsets, i.e.
  ``‖m_p ⊙ (y_Ω(p) − x)‖²`` with the mask ``m_p`` of visible offsets. For the LS machine
  the candidates are the training patches at the same location, seen through the same
  mask. For the ELS machine they are the P×P patches lying wholly inside a training
  image, ``(h − P + 1)(w − P + 1)`` per image, so P ≤ min(h, w). Translation equivariance
  then holds away from the border only.
* ``"circular"``: images are periodic. Patches wrap around, every location of every
  training image is a candidate, and the ELS output commutes exactly with circular
  shifts.

**Computation.** Logits are GEMM-shaped, like the empirical denoiser's:
``−‖m ⊙ (y − x)‖²/2 = ⟨y_Ω, x⟩ − ½⟨m, x²⟩ − ½‖y_Ω‖²``, and the last term is common to
every candidate of one query (y's out-of-image offsets are zero-padded). Per location
(LS) this is a batched matrix product over the d locations. For the ELS machine it is one
product of the ``b·d`` query patches with the ``M`` candidate patches. The softmax runs
online over chunks of candidates (running max, sum and weighted sum, as in
``empirical.EmpiricalDenoiser``), so memory stays bounded and nothing overflows at small σ.

Cost: LS does ``2·b·d·N·K`` flops per call (K = c·P²), ELS ``2·b·d·M·K``, with
``M ≈ N·d``; ``bench/bench_local.py`` states the rate against ``torch.matmul``.

The patch side may depend on σ (``patch``: an int, or a mapping ``{σ: P}``: at each call
the entry nearest in ln σ applies). The anchor calibrates it per noise level against a
trained network (``experiments.machines_sweep``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
import torch.nn.functional as F

from datasets_synth.references.empirical import OnlineSoftmax
from tbcore.denoiser import ReferenceDenoiser, sigma_column

BOUNDARIES = ("crop", "circular")
_CHUNK_ELEMENTS = 1 << 24  # LS: logits held at once per chunk (64 MiB in float32)
# ELS: blocks of query rows × candidates, small enough for the logits to stay in cache
# (measured on 2 cores: 4096 × 512 runs the GEMM-bound loop at its floor)
_ROW_BLOCK, _CANDIDATE_BLOCK = 4096, 512


def check_patch(patch) -> int:
    """An odd patch side ≥ 1, else ValueError naming what is valid."""
    if isinstance(patch, bool) or not isinstance(patch, int) or patch < 1 or patch % 2 == 0:
        raise ValueError(f"patch must be an odd integer >= 1, got {patch!r}")
    return patch


def patches(images: torch.Tensor, patch: int, boundary: str) -> torch.Tensor:
    """The P×P patch around every pixel: (n, c, h, w) → (n, h·w, c·P²).

    ``crop``: zero-padded (out-of-image offsets are 0); ``circular``: wrapped around.
    Offsets are ordered as ``F.unfold`` orders them (channel, row, column).
    """
    r = patch // 2
    if boundary == "circular":
        rows, cols = _wrapped(images.shape[-2:], r, images.device)
        return F.unfold(images[..., rows, cols], patch).transpose(1, 2)
    return F.unfold(images, patch, padding=r).transpose(1, 2)


def location_patches(images: torch.Tensor, patch: int, boundary: str) -> torch.Tensor:
    """The same patches location-major: (n, c, h, w) → (h·w, c·P², n), equal to
    ``patches(images, patch, boundary).permute(1, 2, 0)``, contiguous.

    Built from the images laid out image-last (c, h, w, n) and padded, as one strided view
    whose copy moves runs of n values: transposing ``patches``' output instead took 13×
    longer (N = 1000 images 16×16, P = 15: 1.1 s against 86 ms).
    """
    n, c, h, w = images.shape
    r = patch // 2
    last = images.permute(1, 2, 3, 0)  # (c, h, w, n)
    if boundary == "circular":
        rows, cols = _wrapped((h, w), r, images.device)
        padded = last[:, rows, cols].contiguous()
    else:
        padded = F.pad(last, (0, 0, r, r, r, r)).contiguous()
    rs, cs = padded.stride(1), padded.stride(2)  # one row, one column of the padded images
    view = padded.as_strided((h, w, c, patch, patch, n),
                             (rs, cs, padded.stride(0), rs, cs, 1))
    return view.reshape(h * w, c * patch * patch, n).contiguous()


def _wrapped(shape, r: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """The row and column indices that pad periodic images of side (h, w) by r on each
    side, shaped (h + 2r, 1) and (1, w + 2r) to index the two image dimensions together
    (torch's circular pad wraps by at most one image side)."""
    h, w = shape
    rows = torch.arange(-r, h + r, device=device) % h
    cols = torch.arange(-r, w + r, device=device) % w
    return rows[:, None], cols[None, :]


def patch_fits(patch: int, shape, equivariant: bool, boundary: str) -> bool:
    """Whether a side P is usable on images of ``shape`` (c, h, w): every side is, except
    that the ELS machine under ``crop`` needs P ≤ min(h, w) (a candidate patch must lie
    wholly inside a training image)."""
    return not (equivariant and boundary == "crop" and patch > min(shape[-2:]))


class PatchEmpiricalDenoiser(ReferenceDenoiser):
    """The LS (``equivariant=False``) or ELS (``equivariant=True``) machine of a training set.

    Parameters
    ----------
    train_images : tensor (N, c, h, w)   the training set. The computation runs in its
        dtype (float32 by default) and on the device of ``y``.
    patch : odd int, or mapping {σ: odd int}   patch side P in pixels, or one per noise
        level (the entry nearest in ln σ applies). ELS with ``crop``: P ≤ min(h, w).
    equivariant : bool   pool the training patches of every location (ELS).
    boundary : ``"crop"`` (default) or ``"circular"``; see the module docstring.

    Kind ``model``: the optimum under a stated restriction, neither the MMSE nor a bound
    on it.
    """

    kind = "model"

    def __init__(self, train_images: torch.Tensor, patch, equivariant: bool = False,
                 boundary: str = "crop"):
        super().__init__()
        if not isinstance(train_images, torch.Tensor) or train_images.dim() != 4 \
                or len(train_images) == 0:
            raise ValueError("train_images must be a non-empty tensor (N, c, h, w)")
        if boundary not in BOUNDARIES:
            raise ValueError(f"boundary must be one of {BOUNDARIES}, got {boundary!r}")
        self.train = train_images.contiguous()
        self.equivariant = bool(equivariant)
        self.boundary = boundary
        if isinstance(patch, Mapping):
            if not patch:
                raise ValueError("a patch schedule must hold at least one {σ: P} entry")
            self.schedule = sorted((float(s), check_patch(p)) for s, p in patch.items())
            if not all(s > 0 and math.isfinite(s) for s, _ in self.schedule):
                raise ValueError("the σ of a patch schedule must be finite and > 0")
        else:
            self.schedule = [(1.0, check_patch(patch))]
        too_big = [p for _, p in self.schedule
                   if not patch_fits(p, self.train.shape, self.equivariant, boundary)]
        if too_big:
            raise ValueError(f"the ELS machine with boundary 'crop' needs P <= min(h, w) = "
                             f"{min(self.train.shape[-2:])}, got {too_big[0]}")
        machine = "ELS" if self.equivariant else "LS"
        sides = sorted({p for _, p in self.schedule})
        self.description = (f"{machine} machine (patch {'/'.join(map(str, sides))}, "
                            f"{boundary} boundary)")
        self._candidates: dict = {}

    def patch_at(self, sigma: float) -> int:
        """The patch side used at noise level σ (the schedule's entry nearest in ln σ)."""
        return min(self.schedule, key=lambda e: abs(math.log(e[0] / sigma)))[1]

    def __call__(self, y, sigma, latents=None):
        s = sigma_column(sigma, y).flatten()
        out = torch.empty_like(y)
        for value in torch.unique(s).tolist():  # one pass per distinct σ (usually one)
            rows = (s == value).nonzero().squeeze(1)
            out[rows] = self._denoise(y[rows], value).to(y.dtype)
        return out

    # ------------------------------------------------------------------ computation

    def _train_on(self, device) -> torch.Tensor:
        return self.train if self.train.device == device else self.train.to(device)

    def _denoise(self, y: torch.Tensor, sigma: float) -> torch.Tensor:
        patch = self.patch_at(sigma)
        train = self._train_on(y.device)
        query = patches(y.to(train.dtype), patch, self.boundary)  # (b, d, K)
        if self.equivariant:
            out = self._els(query, train, patch, sigma)  # (b, d, c)
        else:
            out = self._ls(query, train, patch, sigma)
        return out.transpose(1, 2).reshape(y.shape)

    def _ls(self, query, train, patch, sigma):
        """Per location p: softmax over the N training patches at p (crop: the zero offsets
        are common to the query and its candidates, so they add nothing)."""
        b, d, k = query.shape
        c = train.shape[1]
        y = query.transpose(0, 1) / sigma ** 2  # (d, b, K)
        centres = train.flatten(2).permute(2, 0, 1)  # (d, N, c)
        acc = OnlineSoftmax((d, b, c), y)
        chunk = max(1, _CHUNK_ELEMENTS // (d * (b + k)))
        for start in range(0, len(train), chunk):
            x, half_sq = self._location_patches(train, patch, start, chunk)
            acc.add(torch.baddbmm(half_sq / -sigma ** 2, y, x), centres[:, start:start + chunk])
        return acc.mean().transpose(0, 1)

    def _location_patches(self, train, patch, start, chunk):
        """LS candidates of training images [start, start + chunk): their patches at each
        location (d, K, n) and ``½‖x‖²`` (d, 1, n); all of them are kept (per P and
        device) when they fit in ``_CHUNK_ELEMENTS``, else unfolded per call."""
        key = ("ls", patch, train.device)
        whole = len(train) * train[0].numel() * patch ** 2 <= _CHUNK_ELEMENTS  # N·d·K
        if whole and key in self._candidates:
            x, half_sq = self._candidates[key]
            return x[..., start:start + chunk], half_sq[..., start:start + chunk]
        images = train if whole else train[start:start + chunk]
        x = location_patches(images, patch, self.boundary)  # (d, K, n)
        half_sq = 0.5 * x.pow(2).sum(1, keepdim=True)
        if not whole:
            return x, half_sq
        self._candidates[key] = (x, half_sq)
        return x[..., start:start + chunk], half_sq[..., start:start + chunk]

    def _els(self, query, train, patch, sigma):
        """Per query location: softmax over every distinct candidate patch, weighted by
        its multiplicity n_j, as one product of augmented rows (module docstring):
        ``[y/σ², m_p/σ², 1] · [x_j, −½x_j², ln n_j] = (⟨y, x_j⟩ − ½⟨m_p, x_j²⟩)/σ² + ln n_j``."""
        b, d, k = query.shape
        cand, values = self._candidate_patches(train, patch)  # (M, 2K + 1), (M, c + 1)
        if self.boundary == "crop":  # m_p: the query's visible offsets
            ones = torch.ones((1, *train.shape[1:]), device=train.device, dtype=train.dtype)
            mask = patches(ones, patch, "crop")[0]  # (d, K)
        else:
            mask = torch.ones((d, k), device=query.device, dtype=query.dtype)
        rows = torch.cat([query, mask.expand(b, d, k)], 2).reshape(b * d, 2 * k) / sigma ** 2
        rows = torch.cat([rows, rows.new_ones((b * d, 1))], 1)
        out = torch.empty((b * d, values.shape[1] - 1), device=query.device, dtype=query.dtype)
        for r0 in range(0, b * d, _ROW_BLOCK):  # blocks of logits that stay in cache
            block = rows[r0:r0 + _ROW_BLOCK]
            acc = OnlineSoftmax((len(block), values.shape[1]), block, ones_column=True)
            for start in range(0, len(cand), _CANDIDATE_BLOCK):
                acc.add(block @ cand[start:start + _CANDIDATE_BLOCK].T,
                        values[start:start + _CANDIDATE_BLOCK])
            out[r0:r0 + _ROW_BLOCK] = acc.mean()
        return out.view(b, d, -1)

    def _candidate_patches(self, train, patch):
        """The distinct ELS candidates as augmented rows ``[x, −½x², ln n]`` (M, 2K + 1) and
        their centre pixels ``[x_centre, 1]`` (M, c + 1), cached per (P, device)."""
        key = ("els", patch, train.device)
        if key not in self._candidates:
            k = train.shape[1] * patch ** 2
            if self.boundary == "circular":
                cand = patches(train, patch, "circular").reshape(-1, k)
            else:
                cand = F.unfold(train, patch).transpose(1, 2).reshape(-1, k)
            cand, counts = torch.unique(cand, dim=0, return_counts=True)
            centre = torch.arange(train.shape[1], device=train.device) * patch ** 2 \
                + patch ** 2 // 2
            aug = torch.cat([cand, -0.5 * cand.pow(2), counts.to(cand.dtype).log()[:, None]], 1)
            values = torch.cat([cand[:, centre], cand.new_ones((len(cand), 1))], 1)
            self._candidates[key] = (aug.contiguous(), values.contiguous())
        return self._candidates[key]


def local_empirical(train_images: torch.Tensor, patch, **options) -> PatchEmpiricalDenoiser:
    """The LS machine of ``train_images`` (N, c, h, w); see PatchEmpiricalDenoiser."""
    return PatchEmpiricalDenoiser(train_images, patch, equivariant=False, **options)


def equivariant_local_empirical(train_images: torch.Tensor, patch,
                                **options) -> PatchEmpiricalDenoiser:
    """The ELS machine of ``train_images`` (N, c, h, w); see PatchEmpiricalDenoiser."""
    return PatchEmpiricalDenoiser(train_images, patch, equivariant=True, **options)

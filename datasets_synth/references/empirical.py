"""The memorizing (empirical) optimal denoiser of a finite training set (SCIENCE.md §3).

``f(y) = Σ_i w_i(y) x_i``, ``w = softmax_i(−‖y − x_i‖² / (2σ²))``: the posterior mean when
x is uniform on the training set. Since ``‖y − x_i‖² = ‖y‖² − 2⟨y, x_i⟩ + ‖x_i‖²`` and
``‖y‖²`` is common to all i, the logits are ``(⟨y, x_i⟩ − ‖x_i‖²/2) / σ²``: one matrix
product. The softmax runs online over chunks of the training set (running max, running
sum, running weighted sum), so memory is ``O(batch × chunk)`` and nothing overflows: at
tiny σ the weights collapse on the nearest training image.
"""

from __future__ import annotations

import torch

from tbcore.denoiser import ReferenceDenoiser, sigma_column


class OnlineSoftmax:
    """``Σ_j softmax_j(logits) values_j`` accumulated over chunks of j.

    Keeps a running max, a running sum of ``exp(logit − max)`` and the running weighted
    sum, so only one chunk of logits exists at a time and nothing overflows (at small σ
    the weights collapse on the best candidate). Batched: ``logits`` (..., m) and
    ``values`` (..., m, c) with the leading dimensions of ``shape`` = (..., c), or
    ``values`` (m, c) shared by every row (2-D).

    Parameters
    ----------
    shape : tuple   shape of the accumulated sum (..., c).
    like : tensor   gives the device and dtype.
    ones_column : bool   the values' last column is all ones: the weighted sum then
        carries the normalizer, no separate sum is taken, and :meth:`mean` has c − 1
        columns.
    """

    def __init__(self, shape: tuple, like: torch.Tensor, ones_column: bool = False):
        rows = (*shape[:-1], 1)
        self.ones_column = ones_column
        self.run_max = torch.full(rows, -torch.inf, device=like.device, dtype=like.dtype)
        self.run_sum = torch.zeros(rows, device=like.device, dtype=like.dtype)
        self.acc = torch.zeros(shape, device=like.device, dtype=like.dtype)

    def add(self, logits: torch.Tensor, values: torch.Tensor) -> None:
        """Fold in one chunk; ``logits`` is overwritten."""
        new_max = torch.maximum(self.run_max, logits.amax(-1, keepdim=True))
        rescale = torch.exp(self.run_max - new_max)  # 0 on the first chunk (exp(−inf))
        # weights below e^-80 are held there: exact to 1e-34 relative, and no float32
        # denormals (which slow every later pass tenfold)
        weights = logits.sub_(new_max).clamp_(min=-80.0).exp_()
        if not self.ones_column:
            self.run_sum = self.run_sum * rescale + weights.sum(-1, keepdim=True)
        if weights.dim() == 2:
            self.acc = torch.addmm(self.acc * rescale, weights, values)
        else:
            self.acc = torch.baddbmm(self.acc * rescale, weights, values)
        self.run_max = new_max

    def mean(self) -> torch.Tensor:
        """The softmax-weighted mean of the values seen so far."""
        if self.ones_column:
            return self.acc[..., :-1] / self.acc[..., -1:]
        return self.acc / self.run_sum


class EmpiricalDenoiser(ReferenceDenoiser):
    """Posterior mean of the uniform distribution on ``train_images``.

    Parameters
    ----------
    train_images : tensor (N, c, h, w)   the training set; the computation runs in its
        dtype (float32 by default; pass float64 for reference-grade accuracy) and on
        the device of ``y``.
    chunk : int    training images per chunk of the online softmax (default 4096).
    kind : str     ``exact`` (default: it is the MMSE denoiser of the training set) or
        ``upper`` (used on held-out images of the true distribution).
    """

    description = "empirical (memorizing) denoiser"

    def __init__(self, train_images: torch.Tensor, chunk: int = 4096, kind: str = "exact"):
        super().__init__(kind)
        if train_images.dim() < 2 or len(train_images) == 0:
            raise ValueError("train_images must be a non-empty tensor (N, c, h, w)")
        self.train = train_images.flatten(1).contiguous()  # (N, d)
        self.half_sq_norms = 0.5 * self.train.pow(2).sum(1)  # ‖x_i‖²/2, (N,)
        self.chunk = int(chunk)
        self._device_cache: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    def _on(self, device):
        if device == self.train.device:
            return self.train, self.half_sq_norms
        if device not in self._device_cache:
            self._device_cache[device] = (self.train.to(device), self.half_sq_norms.to(device))
        return self._device_cache[device]

    def __call__(self, y, sigma, latents=None):
        train, half_sq = self._on(y.device)
        flat = y.flatten(1).to(train.dtype)  # (b, d)
        inv_var = 1.0 / sigma_column(sigma, flat).pow(2)  # (b, 1): 1/σ²
        acc = OnlineSoftmax((flat.shape[0], flat.shape[1]), flat)
        for start in range(0, len(train), self.chunk):
            xs, hs = train[start:start + self.chunk], half_sq[start:start + self.chunk]
            logits = torch.addmm(-hs, flat, xs.T).mul_(inv_var)  # (⟨y,x_i⟩ − ‖x_i‖²/2)/σ²
            acc.add(logits, xs)
        return acc.mean().view_as(y).to(y.dtype)

    def nearest(self, images: torch.Tensor, k: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """Euclidean distances (n, k) and indices (n, k) of the k nearest training images."""
        train, half_sq = self._on(images.device)
        flat = images.flatten(1).to(train.dtype)
        best_d, best_i = [], []
        for start in range(0, len(train), self.chunk):
            xs, hs = train[start:start + self.chunk], half_sq[start:start + self.chunk]
            # ‖y − x_i‖² = ‖y‖² − 2(⟨y, x_i⟩ − ‖x_i‖²/2)
            sq = flat.pow(2).sum(1, keepdim=True) - 2 * torch.addmm(-hs, flat, xs.T)
            kk = min(k, len(xs))
            d, i = torch.topk(sq, kk, dim=1, largest=False)
            best_d.append(d)
            best_i.append(i + start)
        d, i = torch.cat(best_d, 1), torch.cat(best_i, 1)
        d, order = torch.topk(d, min(k, d.shape[1]), dim=1, largest=False)
        return d.clamp_min(0).sqrt(), torch.gather(i, 1, order)


def empirical_denoiser(train_images: torch.Tensor, **options) -> EmpiricalDenoiser:
    """The memorizing optimal denoiser of ``train_images`` (N, c, h, w); see EmpiricalDenoiser."""
    return EmpiricalDenoiser(train_images, **options)

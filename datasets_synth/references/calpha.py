"""MMSE bracket of ``calpha``: an oracle that knows the contour, an estimator that doesn't.

Given the mask ``m``, an image of ``calpha`` is exactly ``N(μ(m), C(m))`` (see
``datasets_synth.calpha``), so the posterior mean given ``y`` and ``m`` is the Gaussian
conditional mean ``x̂ = μ + C (C + σ²I)⁻¹ (y − μ)``. Knowing ``m`` is side information:
its MSE is ≤ MMSE (SCIENCE.md §5, lower bound). The same formula with ``m`` estimated
from y alone is a function of y: its MSE is ≥ MMSE (SCIENCE.md §5, upper bound).
"""

from __future__ import annotations

import hashlib
import math

import torch

from tbcore.denoiser import ReferenceDenoiser, sigma_column

# working memory of one slice of scored candidates (the band model's K, its product
# temporary and its Cholesky factor: 3 float64 (band × band) matrices per candidate and image)
SCORE_BYTES = 256 << 20
SCORE_SLICE = 256  # candidates per slice at most


def _key(tensor: torch.Tensor) -> tuple:
    """A content key of a tensor (shape, dtype, device, SHA-1 of its bytes)."""
    data = tensor.detach().contiguous().cpu().numpy().tobytes()
    return tuple(tensor.shape), str(tensor.dtype), str(tensor.device), hashlib.sha1(data).digest()


class CAlphaOracle(ReferenceDenoiser):
    """Posterior mean given y and the true mask: ``μ + C (C + σ²I)⁻¹ (y − μ)`` (lower bound).

    ``C(m) = V diag(ν) Vᵀ`` is diagonalized once per image (``torch.linalg.eigh``,
    float64), then every σ costs two matrix–vector products:
    ``x̂ = μ + V diag(ν/(ν+σ²)) Vᵀ (y − μ)``. The eigendecomposition of the last
    ``latents`` seen is cached (keyed on the mask's contents), so an ``mse_curve`` over
    a σ grid diagonalizes each image once. Memory: ``n·d²·8`` bytes for n images
    (2 GiB for 256 images of 32×32).

    Parameters
    ----------
    dist : CAlpha   the distribution (provides ``mean_vector`` and ``covariance``).
    chunk : int     images per batched eigendecomposition (default 16).
    """

    kind = "lower"
    oracle = True
    description = "Gaussian posterior mean given the true contour (oracle)"

    def __init__(self, dist, chunk: int = 16):
        super().__init__("lower")
        self.dist = dist
        self.chunk = int(chunk)
        self._cache: tuple | None = None  # (key, ν (n, d), V (n, d, d))

    def decomposition(self, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Eigenvalues ν (n, d) ≥ 0 and eigenvectors V (n, d, d) of C(m), float64."""
        key = _key(mask)
        if self._cache is not None and self._cache[0] == key:
            return self._cache[1], self._cache[2]
        self._cache = None  # free the previous decomposition before holding the new one
        n, d = mask.shape[0], self.dist.d
        values = torch.empty(n, d, dtype=torch.float64, device=mask.device)
        vectors = torch.empty(n, d, d, dtype=torch.float64, device=mask.device)
        for start in range(0, n, self.chunk):  # filled in place: no second copy at the end
            part = slice(start, start + self.chunk)
            torch.linalg.eigh(self.dist.covariance(mask[part]), out=(values[part], vectors[part]))
        values.clamp_min_(0.0)  # C is PSD; round-off can dip below 0
        self._cache = (key, values, vectors)
        return values, vectors

    def __call__(self, y, sigma, latents=None):
        if latents is None or "mask" not in latents:
            raise ValueError("CAlphaOracle needs latents={'mask': (n, 1, s, s)} from calpha")
        mask = latents["mask"]
        if mask.shape[0] != y.shape[0]:
            raise ValueError(f"latents['mask'] must hold one mask per image ({y.shape[0]}), "
                             f"got {mask.shape[0]}")
        s2 = sigma_column(sigma, y).double().view(-1, 1) ** 2
        nu, V = self.decomposition(mask)
        mu = self.dist.mean_vector(mask).to(y.device)
        r = y.flatten(1).double() - mu
        coef = torch.einsum("ndk,nd->nk", V, r) * (nu / (nu + s2))  # ν/(ν+σ²) · Vᵀ(y − μ)
        x = mu + torch.einsum("ndk,nk->nd", V, coef)
        return x.view_as(y).to(y.dtype)

    def given(self, latents) -> _OracleAtMask:
        """The oracle at one image's latents (``{"mask": (1, 1, s, s)}``) as a denoiser of
        y alone: linear, so its Jacobian is ``C(m)(C(m) + σ²I)⁻¹`` (the Jacobian
        analysis's reference for calpha)."""
        return _OracleAtMask(self, latents["mask"])


class _OracleAtMask:
    """The calpha oracle for one mask: ``μ + V diag(ν/(ν+σ²)) Vᵀ (y − μ)`` on any batch."""

    def __init__(self, oracle, mask: torch.Tensor):
        nu, V = oracle.decomposition(mask)
        self.nu, self.V = nu[0], V[0]
        self.mu = oracle.dist.mean_vector(mask)[0]

    def __call__(self, y, sigma):
        s2 = float(sigma) ** 2
        r = y.reshape(y.shape[0], -1).double() - self.mu
        gain = self.nu / (self.nu + s2)  # ν/(ν+σ²): x̂ = μ + C(C+σ²I)⁻¹(y − μ)
        x = self.mu + ((r @ self.V) * gain) @ self.V.T
        return x.reshape(y.shape).to(y.dtype)


# -- the estimator (y alone) --------------------------------------------------------------
LOG_2PI = math.log(2 * math.pi)


class _ContourPrior:
    """Whitened coordinates η of the contour at the sub-column positions.

    ``h(η) = c0(η_0) + W η_{1:}``: ``c0 = s(3/8 + Φ(η_0)/4)`` is ``U(3s/8, 5s/8)`` when
    ``η_0 ~ N(0, 1)``, and ``W`` (N, p) holds the eigenvectors of the prior covariance
    ``Σ_{nn'} = Σ_k amp_k² cos 2πk(t_n − t_n')`` of ``c − c0`` at the N = s·S sub-column
    centres, scaled by the square roots of their eigenvalues (kept if the std exceeds
    ``tol`` pixels). So ``η ~ N(0, I)`` is the contour prior (module docstring of
    ``datasets_synth.calpha``), exactly up to the dropped directions.
    """

    def __init__(self, dist, tol: float = 2e-3):
        s, S = dist.size, dist.subcolumns
        n_sub = s * S
        t = (torch.arange(n_sub, dtype=torch.float64) + 0.5) / n_sub
        k = torch.arange(1, dist.terms + 1, dtype=torch.float64)
        cov = torch.zeros(n_sub, n_sub, dtype=torch.float64)
        for start in range(0, dist.terms, 64):  # Σ_k amp_k² cos 2πk(t − t'), in slices of k
            kk, a2 = k[start:start + 64], dist.amplitudes[start:start + 64] ** 2
            phase = 2 * math.pi * kk * (t[:, None, None] - t[None, :, None])
            cov += (a2 * torch.cos(phase)).sum(-1)
        ev, U = torch.linalg.eigh(cov)
        keep = ev > tol**2
        self.W = U[:, keep] * ev[keep].sqrt()  # (N, p)
        self.dim = 1 + int(keep.sum())
        self.low, self.span = 3 * s / 8, s / 4
        self.size, self.subcolumns = s, S

    def heights(self, eta: torch.Tensor) -> torch.Tensor:
        """Unclipped sub-column heights (…, N) of η (…, dim)."""
        c0 = self.low + self.span * torch.special.ndtr(eta[..., :1])
        return c0 + eta[..., 1:] @ self.W.T

    def jacobian(self, eta: torch.Tensor) -> torch.Tensor:
        """∂h/∂η (…, N, dim)."""
        dc0 = self.span * torch.exp(-0.5 * eta[..., :1] ** 2) / math.sqrt(2 * math.pi)
        W = self.W.expand(*eta.shape[:-1], *self.W.shape)
        return torch.cat([dc0[..., None, :].expand(*W.shape[:-1], 1), W], -1)

    def fit(self, heights: torch.Tensor, noise: float) -> torch.Tensor:
        """η whose contour is the prior-smoothed fit of heights (…, N) with noise std (px)."""
        c0 = heights.mean(-1, keepdim=True).clamp(self.low + 0.01 * self.span,
                                                  self.low + 0.99 * self.span)
        eta0 = torch.special.ndtri((c0 - self.low) / self.span)
        W = self.W
        # argmin |W η − (h − c0)|²/noise² + |η|²  (Gaussian prior, SCIENCE.md §5 setting)
        gram = W.T @ W / noise**2 + torch.eye(W.shape[1], dtype=W.dtype)
        rest = torch.linalg.solve(gram, ((heights - c0) @ W / noise**2).unsqueeze(-1))[..., 0]
        return torch.cat([eta0, rest], -1)


def _gather2(A: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """``A[rows_n][:, cols_n]`` for each image n: (n, len(rows), len(cols))."""
    return A[rows[:, :, None], cols[:, None, :]]


def _padded_index(member: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices (n, k) of the True entries of member (n, d), padded; validity (n, k) float64."""
    count = member.sum(1)
    k = max(int(count.max()), 1)
    idx = torch.argsort((~member).to(torch.int8), dim=1, stable=True)[:, :k]
    valid = (torch.arange(k, device=member.device) < count[:, None]).double()
    return idx, valid


class _BandModel:
    """Exact likelihoods and conditional means for masks that agree outside a band of rows.

    In column j the band B holds rows ``lo_j ≤ i < hi_j``; every candidate mask is 1 above
    it (F1) and 0 below it (F2). With ``u_k = f_k + a_k`` (mean ½, covariance A), the data
    ``y_F1 = u1 + σz``, ``y_F2 = u2 + σz`` do not depend on the candidate, and by Gaussian
    conditioning (the model of ``datasets_synth.calpha``; SCIENCE.md §5 setting)::

        u_k,B | y_Fk ~ N(½ + r_k, Q_k),   W_k = (A_FkFk + σ²I)⁻¹,
            r_k = A_{B,Fk} W_k (y_Fk − ½),   Q_k = A_BB − A_{B,Fk} W_k A_{Fk,B},
        y_B | y_F ~ N(½ + m r1 + (1−m) r2,  K = D_m Q1 D_m + D_{1−m} Q2 D_{1−m} + σ²I).

    So ``log N(y; μ, C(m) + σ²I) = log p(y_F) + log N(y_B; …)`` costs one Cholesky of size
    |B| per candidate, and ``E[x | y, m]`` is ``y_B − σ² K⁻¹e`` on B and
    ``y_Fk − σ² W_k (y_Fk − ½) + σ² W_k A_{Fk,B} D K⁻¹e`` on Fk (``e`` the band residual,
    ``D = D_m`` for F1, ``D_{1−m}`` for F2). Index sets are padded per batch (``valid``).
    """

    def __init__(self, A: torch.Tensor, y: torch.Tensor, s2: torch.Tensor,
                 lo: torch.Tensor, hi: torch.Tensor):
        n, d = y.shape
        s = lo.shape[1]
        rows = torch.arange(s, device=y.device)[None, :, None]
        f1 = (rows < lo[:, None, :]).reshape(n, d)
        f2 = (rows >= hi[:, None, :]).reshape(n, d)
        self.lo, self.hi, self.s2, self.y = lo, hi, s2, y
        self.idx, self.valid = _padded_index(~(f1 | f2))
        vB = self.valid
        self.nb = vB.sum(1)
        self.yB = (torch.gather(y, 1, self.idx) - 0.5) * vB  # band residual of the prior mean
        A_BB = _gather2(A, self.idx, self.idx) * (vB[:, :, None] * vB[:, None, :])
        self.log_pF = torch.zeros(n, dtype=y.dtype, device=y.device)
        self.parts = []
        self.Q, self.r = [], []
        for member in (f1, f2):
            idx, v = _padded_index(member)
            M = _gather2(A, idx, idx) * (v[:, :, None] * v[:, None, :])
            M.diagonal(dim1=1, dim2=2).add_(s2[:, None] * v + (1 - v))
            L = torch.linalg.cholesky(M)
            yk = (torch.gather(y, 1, idx) - 0.5) * v
            vk = torch.cholesky_solve(yk[..., None], L)[..., 0]  # W_k (y_Fk − ½)
            A_kB = _gather2(A, idx, self.idx) * (v[:, :, None] * vB[:, None, :])
            Z = torch.linalg.solve_triangular(L, A_kB, upper=False)  # L⁻¹ A_{Fk,B}
            self.r.append((A_kB.mT @ vk[..., None])[..., 0])
            self.Q.append(A_BB - Z.mT @ Z)
            self.log_pF += (-0.5 * (yk * vk).sum(1)
                            - torch.log(torch.diagonal(L, dim1=1, dim2=2)).sum(1)
                            - 0.5 * v.sum(1) * LOG_2PI)
            self.parts.append((idx, v, vk, L, Z))

    def candidate_bytes(self) -> int:
        """Bytes :meth:`evaluate` holds per candidate, all images: K, a temporary, its factor."""
        n, width = self.idx.shape
        return 3 * n * width * width * self.y.element_size()

    def evaluate(self, mask: torch.Tensor) -> dict:
        """Log-likelihoods ``ll`` (n, P) of full masks (n, P, d), with what the rest needs."""
        vB = self.valid[:, None]
        m = torch.gather(mask, 2, self.idx[:, None, :].expand(-1, mask.shape[1], -1)) * vB
        mc = (1 - m) * vB
        Q1, Q2 = self.Q[0][:, None], self.Q[1][:, None]
        # K = D_m Q1 D_m + D_{1−m} Q2 D_{1−m} (in place: no autograd here)
        K = torch.mul(Q1, m[..., :, None]).mul_(m[..., None, :])
        K.addcmul_(torch.mul(Q2, mc[..., :, None]), mc[..., None, :])
        K.diagonal(dim1=-2, dim2=-1).add_(self.s2[:, None, None] * vB + (1 - vB))
        e = self.yB[:, None] - m * self.r[0][:, None] - mc * self.r[1][:, None]
        LK = torch.linalg.cholesky(K)
        w = torch.cholesky_solve(e[..., None], LK)[..., 0]  # K⁻¹ e
        ll = (self.log_pF[:, None] - 0.5 * (e * w).sum(-1)
              - torch.log(torch.diagonal(LK, dim1=-2, dim2=-1)).sum(-1)
              - 0.5 * self.nb[:, None] * LOG_2PI)
        return {"ll": ll, "m": m, "mc": mc, "w": w, "LK": LK}

    def conditional_mean(self, st: dict) -> torch.Tensor:
        """E[x | y, m] (n, P, d) of the evaluated candidates (not on a :meth:`select`-ed model)."""
        if self.parts is None:
            raise ValueError("a selected _BandModel has no conditional means; use the full model")
        s2 = self.s2[:, None, None]
        n, P = st["w"].shape[:2]
        x = self.y[:, None].expand(n, P, -1).clone()
        x.scatter_(2, self.idx[:, None].expand(-1, P, -1),
                   (self.yB[:, None] + 0.5 - s2 * st["w"]) * self.valid[:, None]
                   + torch.gather(x, 2, self.idx[:, None].expand(-1, P, -1))
                   * (1 - self.valid[:, None]))
        for (idx, v, vk, L, Z), D in zip(self.parts, (st["m"], st["mc"]), strict=True):
            fk = torch.gather(x, 2, idx[:, None].expand(-1, P, -1))
            # W_k A_{Fk,B} D w = L⁻ᵀ (Z D w)
            WADw = torch.linalg.solve_triangular(L.mT, Z @ (D * st["w"]).mT, upper=True).mT
            upd = -s2 * vk[:, None] + s2 * WADw
            x.scatter_(2, idx[:, None].expand(-1, P, -1), fk + upd * v[:, None])
        return x

    def select(self, rows: torch.Tensor) -> _BandModel:
        """The model of images ``rows`` only, for likelihoods, gradients and metrics (the
        Gauss–Newton iterations): without the factors of F1 and F2 (``parts``, the largest
        arrays), which only :meth:`conditional_mean` reads."""
        out = object.__new__(_BandModel)
        for name in ("lo", "hi", "s2", "y", "idx", "valid", "nb", "yB", "log_pF"):
            setattr(out, name, getattr(self, name)[rows])
        out.Q = [q[rows] for q in self.Q]
        out.r = [r[rows] for r in self.r]
        out.parts = None
        return out

    def _delta(self, st: dict) -> torch.Tensor:
        """δ̂ = E[u1 − u2 | y, m] on the band at candidate 0 (n, bmax)."""
        w, m, mc = st["w"][:, 0], st["m"][:, 0], st["mc"][:, 0]
        return (self.r[0] - self.r[1] + (self.Q[0] @ (m * w)[..., None])[..., 0]
                - (self.Q[1] @ (mc * w)[..., None])[..., 0])

    def grad_m(self, st: dict) -> torch.Tensor:
        """∂ log-likelihood / ∂m (n, d) at candidate 0 (zero off the band).

        ``w ∘ δ̂ − (K⁻¹ ∘ Q1) m + (K⁻¹ ∘ Q2)(1 − m)`` (n, d): the derivatives of
        ``−½ eᵀK⁻¹e`` and ``−½ log det K`` through ``e(m)`` and ``K(m)``.
        """
        w, m, mc = st["w"][:, 0], st["m"][:, 0], st["mc"][:, 0]
        Kinv = torch.cholesky_inverse(st["LK"][:, 0])
        g = (w * self._delta(st) - ((Kinv * self.Q[0]) @ m[..., None])[..., 0]
             + ((Kinv * self.Q[1]) @ mc[..., None])[..., 0]) * self.valid
        return torch.zeros_like(self.y).scatter_add_(1, self.idx, g)

    def metric(self, st: dict, jac: torch.Tensor) -> torch.Tensor:
        """Gauss–Newton curvature ``Jᵀ K⁻¹ J`` (n, p, p) at candidate 0, ``jac = ∂m/∂η`` (n, d, p).

        ``J = −δ̂ ∘ ∂m/∂η`` with ``δ̂ = E[u1 − u2 | y, m]`` on the band (the contrast that
        moves the band residual when the boundary moves).
        """
        delta = self._delta(st)
        jB = torch.gather(jac, 1, self.idx[..., None].expand(-1, -1, jac.shape[-1]))
        J = jB * (delta * self.valid)[..., None]
        Jw = torch.linalg.solve_triangular(st["LK"][:, 0], J, upper=False)
        return Jw.mT @ Jw


class _LowRankModel:
    """Likelihoods and conditional means over the whole image with a low-rank field model.

    ``u_k = ½ + Ũ c_k + ε_k``: Ũ (d, r) the leading eigenvectors of A scaled by the square
    roots of their eigenvalues, ``c_k ~ N(0, I)``, and the remaining modes (eigenvalues
    below ``tol·σ²``) replaced by independent pixel noise of the same variance ρ. Then
    ``C(m) + σ²I ≈ G Gᵀ + D``, ``G = [D_m Ũ, D_{1−m} Ũ]``, ``D = σ² + ρ(m² + (1−m)²)``, and
    Woodbury's identity costs ``O(d r²)`` per candidate. An approximation (a function of y
    all the same: still an upper bound), accurate when the dropped eigenvalues are ≪ σ².
    """

    def __init__(self, U: torch.Tensor, rho: torch.Tensor, y: torch.Tensor, s2: torch.Tensor,
                 size: int):
        n, d = y.shape
        self.U, self.rho, self.y, self.s2 = U, rho, y, s2
        self.e = y - 0.5
        r = U.shape[1]
        self.UU = (U[:, :, None] * U[:, None, :]).reshape(d, r * r)
        self.lo = torch.zeros(n, size, dtype=torch.long, device=y.device)
        self.hi = torch.full((n, size), size, dtype=torch.long, device=y.device)

    def _inner(self, m, mc, Dinv):
        r = self.U.shape[1]
        blocks = [((a * b * Dinv) @ self.UU).unflatten(-1, (r, r))
                  for a, b in ((m, m), (m, mc), (mc, mc))]
        top = torch.cat([blocks[0], blocks[1]], -1)
        bottom = torch.cat([blocks[1].mT, blocks[2]], -1)
        inner = torch.cat([top, bottom], -2)
        inner.diagonal(dim1=-2, dim2=-1).add_(1.0)
        return torch.linalg.cholesky(inner)  # chol(I + Gᵀ D⁻¹ G)

    def _solve(self, m, mc, Dinv, LM, R):
        """K⁻¹ R for R (…, d, q) by Woodbury."""
        DR = Dinv[..., None] * R
        GtDR = torch.cat([self.U.T @ (m[..., None] * DR), self.U.T @ (mc[..., None] * DR)], -2)
        z = torch.cholesky_solve(GtDR, LM)
        r = self.U.shape[1]
        Gz = m[..., None] * (self.U @ z[..., :r, :]) + mc[..., None] * (self.U @ z[..., r:, :])
        return DR - Dinv[..., None] * Gz

    def candidate_bytes(self) -> int:
        """Bytes :meth:`evaluate` holds per candidate, all images: about ten (d,) arrays
        (masks, D, D⁻¹, w and temporaries) and the four (2r × 2r) blocks of the inner matrix."""
        (n, d), r = self.y.shape, self.U.shape[1]
        return n * (10 * d + 16 * r * r) * self.y.element_size()

    def evaluate(self, mask: torch.Tensor) -> dict:
        """Log-likelihoods ``ll`` (n, P) of masks (n, P, d), with what the rest needs."""
        m, mc = mask, 1 - mask
        D = self.s2[:, None, None] + self.rho * (m * m + mc * mc)
        Dinv = 1 / D
        LM = self._inner(m, mc, Dinv)
        # w = K⁻¹ e by Woodbury, as (n·P, d) × (d, r) products
        e = self.e[:, None]
        De = Dinv * e
        z = torch.cholesky_solve(torch.cat([(m * De) @ self.U, (mc * De) @ self.U], -1)[..., None],
                                 LM)[..., 0]
        r = self.U.shape[1]
        w = De - Dinv * (m * (z[..., :r] @ self.U.T) + mc * (z[..., r:] @ self.U.T))
        d = self.y.shape[1]
        ll = (-0.5 * (e * w).sum(-1) - 0.5 * torch.log(D).sum(-1)
              - torch.log(torch.diagonal(LM, dim1=-2, dim2=-1)).sum(-1) - 0.5 * d * LOG_2PI)
        return {"ll": ll, "m": m, "mc": mc, "w": w, "Dinv": Dinv, "LM": LM}

    def conditional_mean(self, st: dict) -> torch.Tensor:
        return self.y[:, None] - self.s2[:, None, None] * st["w"]

    def select(self, rows: torch.Tensor) -> _LowRankModel:
        """The model of images ``rows`` only."""
        out = object.__new__(_LowRankModel)
        out.U, out.rho, out.UU = self.U, self.rho, self.UU
        for name in ("y", "s2", "e", "lo", "hi"):
            setattr(out, name, getattr(self, name)[rows])
        return out

    def grad_m(self, st: dict) -> torch.Tensor:
        """∂ log-likelihood / ∂m (n, d) at candidate 0.

        With ``A_r = ŨŨᵀ`` and ``w = K⁻¹e``: ``w∘A_r(m∘w) − w∘A_r((1−m)∘w)
        − diag(K⁻¹D_mA_r) + diag(K⁻¹D_{1−m}A_r) + ρ(2m − 1)(w² − diag K⁻¹)``.
        """
        m, mc, w = st["m"][:, 0], st["mc"][:, 0], st["w"][:, 0]
        Dinv, LM = st["Dinv"][:, 0], st["LM"][:, 0]
        U = self.U
        g = w * (U @ (U.T @ ((m - mc) * w)[..., None]))[..., 0]  # w ∘ A_r((m − (1−m)) ∘ w)
        for sign, mm in ((-1.0, m), (1.0, mc)):  # ∓ diag(K⁻¹ D A_r)
            KDU = self._solve(m, mc, Dinv, LM, mm[..., None] * U)
            g = g + sign * (KDU * U).sum(-1)
        B = Dinv[..., None] * torch.cat([m[..., None] * U, mc[..., None] * U], -1)  # D⁻¹G
        kdiag = Dinv - (B * torch.cholesky_solve(B.mT, LM).mT).sum(-1)  # diag K⁻¹
        return g + self.rho * (m - mc) * (w * w - kdiag)

    def metric(self, st: dict, jac: torch.Tensor) -> torch.Tensor:
        """``Jᵀ K⁻¹ J`` (n, p, p) at candidate 0, ``J = −δ̂ ∘ ∂m/∂η``, δ̂ = E[u1 − u2 | y, m]."""
        m, mc, w = st["m"][:, 0], st["mc"][:, 0], st["w"][:, 0]
        delta = self.U @ (self.U.T @ (m * w)[..., None] - self.U.T @ (mc * w)[..., None])
        J = jac * delta
        KJ = self._solve(m, mc, st["Dinv"][:, 0], st["LM"][:, 0], J)
        return J.mT @ KJ


def _level_cost(y: torch.Tensor, var: torch.Tensor, H: torch.Tensor) -> torch.Tensor:
    """Data cost (n, G, s) of a boundary at height H[g] in column j, two-level model.

    Level ``v1`` (mean of the top s/8 rows) above the boundary, ``v2`` (bottom s/8 rows)
    below, the boundary pixel blended by its coverage; per-pixel variance ``var`` (n,).
    """
    n, s, _ = y.shape
    rows_avg = max(1, s // 8)
    v1 = y[:, :rows_avg].mean((1, 2))
    v2 = y[:, -rows_avg:].mean((1, 2))
    rows = torch.arange(s, dtype=y.dtype, device=y.device)
    cover = (H[:, None] - rows[None, :]).clamp(0, 1)  # (G, s): coverage of row i
    pred = v2[:, None, None] + cover[None] * (v1 - v2)[:, None, None]  # (n, G, rows)
    # Σ_i (y_ij − pred_i(h))² = Σ y² − 2 Σ y pred + Σ pred²
    data = (y * y).sum(1)[:, None, :] - 2 * pred @ y + (pred * pred).sum(-1, keepdim=True)
    return data / (2 * var)[:, None, None]


def _edge_cost(y: torch.Tensor, var: torch.Tensor, H: torch.Tensor, width: float) -> torch.Tensor:
    """Data cost (n, G, s): minus the step statistic at height H[g] in column j.

    The means of ``width`` rows above and below the candidate boundary (fractional rows
    by linear interpolation of the column's cumulative sum) give the likelihood-ratio
    statistic ``(ȳ_above − ȳ_below)² / (2 var (1/w_a + 1/w_b))`` of a step there.
    """
    n, s, _ = y.shape
    cum = torch.cat([torch.zeros_like(y[:, :1]), y.cumsum(1)], 1)  # (n, s+1, s) at rows 0..s

    def integral(t):  # ∫_0^t y(r) dr for t (G,) in [0, s], per column: (n, G, s)
        t = t.clamp(0, s)
        i = t.floor().long().clamp(max=s - 1)
        f = (t - i)[None, :, None]
        return cum[:, i] + f * (cum[:, i + 1] - cum[:, i])

    top, bottom = (H - width).clamp(0, s), (H + width).clamp(0, s)
    wa, wb = (H - top).clamp_min(1e-9), (bottom - H).clamp_min(1e-9)
    mid = integral(H)
    above = (mid - integral(top)) / wa[None, :, None]
    below = (integral(bottom) - mid) / wb[None, :, None]
    weight = (1 / (1 / wa + 1 / wb))[None, :, None]
    return -(above - below) ** 2 * weight / (2 * var)[:, None, None]


def _dp_contour(data: torch.Tensor, H: torch.Tensor, step_var: float) -> torch.Tensor:
    """Per-column heights (n, s): the Viterbi path of a data cost and a random-walk prior.

    Minimizes ``Σ_j data[:, g_j, j] + Σ_j (H_{g_j} − H_{g_{j−1}})² / (2 step_var)``.

    Viterbi over the columns (dynamic programming; a loop over the s columns only):
    the boundary path that best trades the data cost ``data`` (n, G, s) against a
    Gaussian random-walk prior of the heights H (G,).
    """
    trans = (H[:, None] - H[None, :]) ** 2 / (2 * step_var)  # (G, G)
    cost = data[:, :, 0]
    back = []
    for j in range(1, data.shape[2]):
        best, arg = (cost[:, :, None] + trans).min(1)
        back.append(arg)
        cost = best + data[:, :, j]
    path = [cost.argmin(1)]
    for arg in reversed(back):
        path.append(torch.gather(arg, 1, path[-1][:, None])[:, 0])
    return H[torch.stack(path[::-1], 1)]


class CAlphaContourEstimator(ReferenceDenoiser):
    """Posterior mean over the contour, estimated from y alone (upper bound).

    ``x̂(y) = Σ_p w_p E[x | y, m(η_p)]``: a self-normalized importance-sampling estimate of
    ``E[E[x | y, m] | y]`` over the contour coordinates η (:class:`_ContourPrior`), with
    ``w_p ∝ p(y | η_p) p(η_p) / q(η_p)`` and ``p(y | η) = N(y; μ(m), C(m) + σ²I)``. Per image
    and σ:

    1. start contours by dynamic programming (:func:`_dp_contour`) on a two-level data
       term and on step statistics of several widths (``edge_widths``), fitted to η;
    2. the posterior modes from each start by damped Gauss–Newton ascent of
       ``log p(y | η) − |η|²/2`` (analytic gradient; curvature ``I + Jᵀ K⁻¹ J`` of the
       moving boundary), the likelihood evaluated exactly in a band of rows around the
       contour (:class:`_BandModel`) or, where cheaper (large σ), with a low-rank field
       model over the whole image (:class:`_LowRankModel`);
    3. the proposal q: an equal mixture of the Laplace approximations ``N(η̂_c, H_c⁻¹)``
       at the distinct modes (modes whose Laplace evidence trails the best by more than
       10 are dropped) and, with the low-rank model, the prior N(0, I) (``prior_share``
       times as many draws); antithetic pairs; weights by the balance heuristic.

    Every step uses y and σ only (never latents), so the MSE is ≥ MMSE (SCIENCE.md §5).
    The draws come from a generator seeded by ``seed`` at each call (one stream per
    call, consumed chunk by chunk): deterministic for a given batch.

    Parameters
    ----------
    dist : CAlpha          the distribution.
    samples : int          draws per image where the exact band model is used (small σ;
                           default 64; 0: the best mode alone).
    lowrank_samples : int  draws around the modes with the low-rank model (default 512).
    prior_share : float    prior draws per mode draw with the low-rank model (default 2).
    iterations : int       Gauss–Newton iterations (default 10).
    inflate : float        scale c of the Laplace covariances, ``c² H⁻¹`` (default 1).
    tol : float            low-rank model: field modes of variance < tol·σ² are replaced by
                           pixel noise (default 1e-2).
    edge_widths : tuple    widths (rows) of the step statistics of the start contours.
    chunk : int            images per batch (default 16).
    seed : int             seed of the draws (default 0).

    Memory: the draws are scored in slices whose working arrays stay within
    ``SCORE_BYTES`` (256 MiB; the slicing does not change the result): about 1.7 GB
    peak for 64 images of 32×32 at σ ≤ 2, where slices of 256 draws held 3.2 GB.
    """

    kind = "upper"
    costly = True  # seconds per image and σ: evaluated on the coarse grid only
    description = "posterior mean over contours estimated from y (modes + importance sampling)"

    def __init__(self, dist, samples: int = 64, lowrank_samples: int = 512,
                 prior_share: float = 2.0, iterations: int = 10, inflate: float = 1.0,
                 tol: float = 1e-2, edge_widths=(1.0, 2.0, 3.0, 4.0, 6.0), chunk: int = 16,
                 seed: int = 0):
        super().__init__("upper")
        self.dist = dist
        self.samples = int(samples)
        self.lowrank_samples = int(lowrank_samples)
        self.iterations = int(iterations)
        self.inflate = float(inflate)
        self.tol = float(tol)
        self.edge_widths = tuple(float(w) for w in edge_widths)
        self.prior_share = float(prior_share)
        self.steps = (1.0, 0.3)  # Gauss–Newton step lengths tried per iteration
        self.chunk = int(chunk)
        self.seed = int(seed)
        self.prior = _ContourPrior(dist)
        s, S = dist.size, dist.subcolumns
        self._col = torch.arange(s * S) // S
        # Var(c(t_j) − c(t_{j−1})) at pixel spacing, for the dynamic-programming prior
        k = torch.arange(1, dist.terms + 1, dtype=torch.float64)
        self._step_var = float((2 * dist.amplitudes**2
                                * (1 - torch.cos(2 * math.pi * k / s))).sum())
        self._region_var = float(dist.eigenvalues.mean())
        self._A = dist.region_covariance
        self._evA, self._UA = torch.linalg.eigh(self._A)

    # -- pieces ------------------------------------------------------------------------
    def _heights_in(self, h: torch.Tensor, model) -> torch.Tensor:
        """Heights (n, P, N) clipped to the model's band of rows (and to [0, s])."""
        col = self._col.to(h.device)
        lo = model.lo[:, None, col].to(h.dtype)
        hi = model.hi[:, None, col].to(h.dtype)
        return torch.minimum(torch.maximum(h, lo), hi)

    def _masks(self, h: torch.Tensor, exact: bool) -> torch.Tensor:
        """Masks (n, P, d) of clipped sub-column heights (n, P, N).

        ``exact=False``: the differentiable coverage used by the search (the exact one
        with antialias; a linear ramp over the pixel without).
        """
        n, P, n_sub = h.shape
        masks = self.dist.coverage(h.reshape(n * P, n_sub),
                                   antialias=self.dist.antialias or not exact)
        return masks.reshape(n, P, -1)

    def _log_post(self, model, eta: torch.Tensor, exact: bool):
        """Log posterior (n, P) of η (n, P, dim), up to a constant, and the model state."""
        st = model.evaluate(self._masks(self._heights_in(self.prior.heights(eta), model), exact))
        return st["ll"] - 0.5 * (eta * eta).sum(-1), st

    def _mask_jacobian(self, eta: torch.Tensor, model) -> torch.Tensor:
        """∂m/∂η (n, d, dim) of the search coverage at η (n, dim)."""
        s, S = self.dist.size, self.dist.subcolumns
        n = eta.shape[0]
        col = self._col.to(eta.device)
        h = self.prior.heights(eta)
        lo, hi = model.lo[:, col], model.hi[:, col]
        inside = (h > lo) & (h < hi)  # clipped heights do not move
        pix = h.floor().clamp(0, s - 1).long() * s + col  # pixel holding each sub-column's edge
        jac = self.prior.jacobian(eta) * (inside[..., None] / S)  # (n, N, dim)
        out = torch.zeros(n, s * s, eta.shape[-1], dtype=eta.dtype, device=eta.device)
        return out.scatter_add_(1, pix[..., None].expand_as(jac), jac)

    def _limits(self, h: torch.Tensor, spread) -> tuple[torch.Tensor, torch.Tensor]:
        """Band rows [lo, hi) per column (n, s) covering heights h (n, P, N) ± spread."""
        s, S = self.dist.size, self.dist.subcolumns
        n = h.shape[0]
        low = (h - spread).amin(1).view(n, s, S).amin(-1)
        high = (h + spread).amax(1).view(n, s, S).amax(-1)
        lo = low.floor().clamp(0, s - 1).long()
        return lo, torch.maximum(high.ceil().clamp(0, s).long(), lo + 1)

    def _lowrank_basis(self, s2: torch.Tensor):
        """Ũ (d, r) and ρ (d,) of the low-rank field model at the smallest σ² of s2."""
        keep = self._evA > self.tol * float(s2.min())
        U = self._UA[:, keep] * self._evA[keep].sqrt()
        return U, (self._A.diagonal() - (U * U).sum(1)).clamp_min(0.0)

    def _use_lowrank(self, s2: torch.Tensor, band_rows: int) -> bool:
        """Whether a low-rank candidate costs less than an exact band of ``band_rows`` pixels."""
        r = int((self._evA > self.tol * float(s2.min())).sum())
        d = self.dist.size**2
        return 3 * d * r * r + (2 * r) ** 3 / 3 < band_rows**3 / 3

    def _band_rows(self, eta: torch.Tensor) -> int:
        """Pixels of the largest band around the contours of η (n, P, dim) ± 1 px."""
        lo, hi = self._limits(self.prior.heights(eta), 1.0)
        return int((hi - lo).sum(1).max())

    def _model(self, y, s2, h: torch.Tensor, spread):
        """The cheaper exact-band or low-rank model for heights h (n, P, N) ± spread."""
        lo, hi = self._limits(h, spread)
        if not self._use_lowrank(s2, int((hi - lo).sum(1).max())):
            return _BandModel(self._A.to(y.device), y, s2, lo, hi)
        U, rho = self._lowrank_basis(s2)
        return _LowRankModel(U.to(y.device), rho.to(y.device), y, s2, self.dist.size)

    def _score(self, y, s2, draws: torch.Tensor):
        """Log posteriors (n, Q) and conditional means (n, Q, d) of draws η (n, Q, dim).

        Images are bucketed by the band their draws need (a wide band, e.g. of an image
        whose contour is barely visible, would otherwise pad every image's band).
        """
        n, Q = draws.shape[:2]
        hd = self.prior.heights(draws)
        lo, hi = self._limits(hd, 1.0)
        rows = (hi - lo).sum(1)
        cut = 1.3 * float(rows.float().median())
        buckets = [b for b in ((rows <= cut).nonzero()[:, 0], (rows > cut).nonzero()[:, 0])
                   if len(b)]
        lp = torch.empty(n, Q, dtype=y.dtype, device=y.device)
        xs = torch.empty(n, Q, y.shape[1], dtype=y.dtype, device=y.device)
        for b in buckets:
            model = self._model(y[b], s2[b], hd[b], 1.0)
            # candidates in slices whose working arrays stay within SCORE_BYTES (a wide
            # band at large σ: 16 images × 256 candidates would hold 3 GB)
            size = max(1, min(SCORE_SLICE, SCORE_BYTES // model.candidate_bytes()))
            for start in range(0, Q, size):
                part = slice(start, start + size)
                lpb, st = self._log_post(model, draws[b, part], exact=True)
                lp[b, part] = lpb
                xs[b, part] = model.conditional_mean(st)
        return lp, xs

    def _gauss_newton(self, model, eta: torch.Tensor):
        """Damped Gauss–Newton ascent of the log posterior from η (n, dim); returns η̂, H.

        Gradient ``(∂m/∂η)ᵀ ∂ll/∂m − η`` (analytic, ``model.grad_m``), curvature
        ``H = I + Jᵀ K⁻¹ J`` (``model.metric``); each iteration tries the step lengths in
        ``steps`` along ``H⁻¹ ∇`` and keeps the best if it raises the log posterior by more
        than ``1e-3``; images that stop improving leave the batch.
        """
        steps = torch.tensor(self.steps, dtype=eta.dtype, device=eta.device)
        n = eta.shape[0]
        eye = torch.eye(eta.shape[-1], dtype=eta.dtype, device=eta.device)
        eta = eta.clone()
        H = eye.repeat(n, 1, 1)
        lp, st = self._log_post(model, eta[:, None], exact=False)
        lp = lp[:, 0]
        active = torch.arange(n, device=eta.device)
        sub = model
        for _ in range(self.iterations):
            e = eta[active]
            jac = self._mask_jacobian(e, sub)  # (a, d, dim)
            grad = (jac.mT @ sub.grad_m(st)[..., None])[..., 0] - e
            Ha = sub.metric(st, jac) + eye
            H[active] = Ha
            delta = torch.linalg.solve(Ha, grad)
            trial = e[:, None] + steps[:, None] * delta[:, None]  # (a, steps, dim)
            lp_trial, st_trial = self._log_post(sub, trial, exact=False)
            best, arg = lp_trial.max(1)
            better = best > lp[active] + 1e-3
            rows = torch.arange(len(active), device=eta.device)
            eta[active] = torch.where(better[:, None], trial[rows, arg], e)
            lp[active] = torch.where(better, best, lp[active])
            if not bool(better.all()):
                if not bool(better.any()):
                    break
                keep = better.nonzero()[:, 0]
                active, arg, sub = active[keep], arg[keep], sub.select(keep)
                st_trial = {k: v[keep] for k, v in st_trial.items()}
            rows = torch.arange(len(active), device=eta.device)
            st = {k: v[rows, arg][:, None] for k, v in st_trial.items()}
        return eta, H

    def _starts(self, y: torch.Tensor, s2: torch.Tensor) -> torch.Tensor:
        """Start contours η (n, C, dim): dynamic programming on C data terms."""
        s, S = self.dist.size, self.dist.subcolumns
        n = y.shape[0]
        img = y.view(n, s, s)
        H = torch.arange(4 * s + 1, dtype=y.dtype, device=y.device) / 4  # ¼ px grid
        data = [_level_cost(img, s2 + self._region_var, H)]
        data += [_edge_cost(img, s2 + 1e-3, H, w) for w in self.edge_widths]
        g = torch.stack([_dp_contour(c, H, self._step_var) for c in data], 1)  # (n, C, s)
        # sub-column heights by periodic linear interpolation of the column centres
        pos = (torch.arange(s * S, dtype=y.dtype, device=y.device) + 0.5) / S - 0.5
        left = pos.floor().long()
        frac = pos - left
        h0 = g[..., left % s] * (1 - frac) + g[..., (left + 1) % s] * frac
        return self.prior.fit(h0, noise=0.5)

    def _touches(self, model, eta: torch.Tensor) -> torch.Tensor:
        """Whether the contour of η (n, dim) reaches an inner edge of the model's band (n,)."""
        s = self.dist.size
        col = self._col.to(eta.device)
        h = self.prior.heights(eta)
        lo, hi = model.lo[:, col], model.hi[:, col]
        return (((h <= lo + 1e-6) & (lo > 0)) | ((h >= hi - 1e-6) & (hi < s))).any(1)

    def _modes(self, y, s2, eta):
        """Gauss–Newton from starts η (m, dim) of images y (m, d); widens touched bands."""
        spread = (1.5 + 4 * s2.sqrt())[:, None, None]
        model = self._model(y, s2, self.prior.heights(eta)[:, None], spread)
        eta, H = self._gauss_newton(model, eta)
        lp = self._log_post(model, eta[:, None], exact=True)[0][:, 0]
        if isinstance(model, _BandModel):
            redo = self._touches(model, eta).nonzero()[:, 0]
            if len(redo):  # once more, in a band twice as wide around the new contour
                sub = self._model(y[redo], s2[redo], self.prior.heights(eta[redo])[:, None],
                                  2 * spread[redo])
                e2, H2 = self._gauss_newton(sub, eta[redo])
                lp2 = self._log_post(sub, e2[:, None], exact=True)[0][:, 0]
                better = lp2 > lp[redo]
                eta[redo] = torch.where(better[:, None], e2, eta[redo])
                H[redo] = torch.where(better[:, None, None], H2, H[redo])
                lp[redo] = torch.where(better, lp2, lp[redo])
        return eta, H, lp

    def _estimate(self, y, s2, generator):
        """Estimates (n, d) for images y (n, d) float64 at noise variances s2 (n,)."""
        n = y.shape[0]
        starts = self._starts(y, s2)  # (n, C, dim)
        C = starts.shape[1]
        # drop starts within 0.75 + 2σ px (mean) of an earlier start of the same image
        hs = self.prior.heights(starts)
        dist = (hs[:, :, None] - hs[:, None, :]).abs().mean(-1)  # (n, C, C)
        earlier = torch.ones(C, C, dtype=torch.bool, device=y.device).tril(-1)
        close = dist < (0.75 + 2 * s2.sqrt())[:, None, None]
        keep = ~(close & earlier).any(-1)  # (n, C)
        img, which = keep.nonzero(as_tuple=True)
        eta, H, lp = self._modes(y[img], s2[img], starts[img, which])
        # the proposal: an equal mixture of the Laplace approximations N(η̂_c, H_c⁻¹) at the
        # distinct modes (slots of dropped starts repeat the mode of largest evidence
        # log p(η̂|y) − ½ log det H), and the prior N(0, I) when ``prior_share`` > 0
        LH = torch.linalg.cholesky(H)
        evidence = lp - LH.diagonal(dim1=-2, dim2=-1).log().sum(-1)
        table = torch.full((n, C), -math.inf, dtype=y.dtype, device=y.device)
        table[img, which] = evidence
        slot = torch.full((n, C), -1, dtype=torch.long, device=y.device)
        slot[img, which] = torch.arange(len(img), device=y.device)
        order = table.argsort(1, descending=True)  # slot 0: the mode of largest evidence
        slot, table = torch.gather(slot, 1, order), torch.gather(table, 1, order)
        # missing slots, and modes far less probable than the best (evidence gap > 10),
        # repeat the best
        slot = torch.where((slot < 0) | (table < table[:, :1] - 10.0), slot[:, :1], slot)
        mu, Lh = eta[slot], LH[slot]  # (n, C, dim), (n, C, dim, dim): H = L Lᵀ
        dim = eta.shape[-1]
        lowrank = self._use_lowrank(s2, self._band_rows(mu))
        P = self.lowrank_samples if lowrank else self.samples
        if P == 0:  # the best mode alone
            hd = self.prior.heights(mu[:, :1])
            model = self._model(y, s2, hd, torch.ones_like(hd[..., :1]))
            return model.conditional_mean(self._log_post(model, mu[:, :1], exact=True)[1])[:, 0]
        per = -(-P // C)  # samples per slot: η = η̂_c + c L_c⁻ᵀ ξ, antithetic pairs
        xi = torch.randn(n, C, (per + 1) // 2, dim, generator=generator, dtype=y.dtype)
        xi = torch.cat([xi, -xi], 2)[:, :, :per].to(y.device)
        draws = mu[:, :, None] + self.inflate * torch.linalg.solve_triangular(
            Lh.mT, xi.mT, upper=True).mT  # (n, C, per, dim)
        draws = draws.flatten(1, 2)  # (n, C·per, dim)
        n_prior = 0
        if self.prior_share > 0 and lowrank:  # prior draws where candidates are cheap
            n_prior = max(1, round(self.prior_share * C * per))
            extra = torch.randn(n, n_prior, dim, generator=generator, dtype=y.dtype)
            draws = torch.cat([draws, extra.to(y.device)], 1)
        lp, xs = self._score(y, s2, draws)
        # log q of the mixture (balance heuristic over the slots and the prior)
        z = ((draws[:, None] - mu[:, :, None]) @ Lh) / self.inflate  # (n, C, Pt, dim)
        log_qc = (-0.5 * (z * z).sum(-1) - dim * math.log(self.inflate)
                  + Lh.diagonal(dim1=-2, dim2=-1).log().sum(-1)[..., None])
        counts = [float(per)] * C
        if n_prior:
            log_qc = torch.cat([log_qc, -0.5 * (draws * draws).sum(-1)[:, None]], 1)
            counts.append(float(n_prior))
        share = torch.tensor(counts, dtype=y.dtype, device=y.device)
        log_q = torch.logsumexp(log_qc + (share / share.sum()).log()[None, :, None], 1)
        weights = torch.softmax(lp - log_q, 1)
        return (weights[..., None] * xs).sum(1)

    def __call__(self, y, sigma, latents=None):
        s2 = sigma_column(sigma, y).double().reshape(-1) ** 2
        flat = y.flatten(1).double()
        generator = torch.Generator().manual_seed(self.seed)
        out = torch.empty_like(flat)
        for start in range(0, flat.shape[0], self.chunk):
            part = slice(start, start + self.chunk)
            out[part] = self._estimate(flat[part], s2[part], generator)
        return out.view_as(y).to(y.dtype)

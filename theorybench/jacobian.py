"""Jacobian of any denoiser at one image, its eigen-analysis, and SURE (SCIENCE.md §6).

A denoiser ``f(y, σ)`` acts near ``y`` as the linear map ``J = ∇f(y)`` (d × d, row
``i`` = ``∂f_i/∂y``). For a bias-free ReLU network ``f(y) = J y`` exactly (homogeneity),
so ``J`` *is* the adaptive linear denoiser: the eigenvectors of its symmetric part are
the adaptive ("geometry-adaptive harmonic") basis and the eigenvalues the shrinkage
factors (paper §4–5); ``tr J`` is the effective dimension. An MMSE denoiser has a
symmetric Jacobian ``I + σ² ∇² log p_σ`` (SCIENCE.md §6).

``J`` is computed exactly by reverse-mode automatic differentiation, one vector–Jacobian
product per output pixel, with the identity rows processed ``chunk`` at a time:

* ``method="replicate"``: the image is copied ``chunk`` times into one batch, the batch is
  denoised and back-propagated once with the identity rows as output gradients. This
  assumes that each image of a batch is denoised independently of the others (networks in
  eval mode: batch norm uses its running statistics). A denoiser whose output for one
  image depends on the rest of the batch (batch norm in training mode, batch-wide
  normalization) would give a wrong Jacobian; with ``check=True`` this is tested once by
  denoising ``[y, other image]`` and comparing the first output with ``f(y)``.
* ``method="vmap"``: one forward pass on the single image, then the backward pass is
  vectorized over a chunk of cotangents (``torch.autograd.grad(..., is_grads_batched=True)``).
  No assumption on batches, but slower: 20× slower than ``replicate`` for a UNet on a GPU
  (bench/bench_jacobian.py), as vmapped convolution backward passes are less efficient.
* ``method="auto"`` (default): ``replicate`` when the batch-independence test passes,
  else ``vmap``.

The chunk is chosen from a memory budget: one extra forward pass counts the bytes autograd
saves for one image, and a chunk row is charged a few times that.

For large images (the d × d J does not fit, or its O(d³) eigen-decomposition is too slow),
``jacobian_spectrum(..., k=K)`` gives the top K eigenpairs of ``(J + Jᵀ)/2`` and Hutchinson
estimates of ``tr J`` from Jacobian–vector products only (memory O(K·d)), and
:func:`jacobian_products` gives ``J V`` and ``Jᵀ V`` for any vectors.
"""

from __future__ import annotations

import math
import numbers
import warnings
from dataclasses import dataclass

import torch

from tbcore.denoiser import check_eval_mode, sigma_column
from tbcore.validation import check_int, check_seed

METHODS = ("auto", "vmap", "replicate")
ROW_COST_FACTOR = 4  # bytes of one chunk row ≈ this × the bytes autograd saves for one image
CPU_BUDGET = 1 << 30  # default memory budget on the CPU: 1 GiB
CUDA_BUDGET_FRACTION = 0.25  # default budget on a GPU: a quarter of its free memory
BATCH_TOLERANCE = 1e-3  # relative tolerance of the batch-independence check (TF32-safe)
TRACE_PROBES = 32  # top-k spectrum: Rademacher probes of Hutchinson's trace estimate
TOP_K_TOL = 1e-3  # top-k spectrum: residual norm ‖S u − θ u‖ at which a pair has converged
TOP_K_OVERSAMPLING = 8  # top-k spectrum: Ritz pairs kept beyond k (at least; k/4 for large k)


# ----------------------------------------------------------------------------- validation


def _check_image(y) -> torch.Tensor:
    """One image as a (1, c, h, w) floating tensor, or ValueError."""
    if not isinstance(y, torch.Tensor) or not y.is_floating_point():
        raise ValueError(f"y must be a floating-point tensor of shape (c, h, w) or (1, c, h, w), "
                         f"got {type(y).__name__}")
    if y.dim() == 3:
        y = y.unsqueeze(0)
    if y.dim() != 4 or y.shape[0] != 1:
        raise ValueError(f"y must have shape (c, h, w) or (1, c, h, w), got {tuple(y.shape)}")
    return y.detach()


def _check_sigma(sigma, y: torch.Tensor):
    """σ as a float, or a one-value tensor left as is (validated by ``sigma_column``)."""
    sigma_column(sigma, y)
    if isinstance(sigma, torch.Tensor):
        if sigma.numel() != 1:
            raise ValueError(f"sigma must be a float or a one-value tensor for one image, "
                             f"got {sigma.numel()} values")
        return sigma.reshape(1)
    return float(sigma)


def _sigma_for_batch(sigma, n: int):
    """σ for a batch of n copies of the image."""
    return sigma.expand(n) if isinstance(sigma, torch.Tensor) else sigma


# ----------------------------------------------------------------------------- Jacobian


def _forward(denoiser, y1: torch.Tensor, sigma):
    """f(y) for one image with autograd on: (y leaf, output, bytes autograd saved)."""
    saved: dict[int, int] = {}

    def pack(t):
        try:  # count each storage once (outputs and inputs are often saved twice)
            key = t.untyped_storage().data_ptr()
        except (RuntimeError, NotImplementedError):
            key = id(t)
        saved[key] = max(saved.get(key, 0), t.numel() * t.element_size())
        return t

    leaf = y1.clone().requires_grad_(True)
    with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = denoiser(leaf, sigma)
    if not isinstance(out, torch.Tensor) or out.shape != y1.shape:
        raise ValueError(f"the denoiser must return a tensor of y's shape {tuple(y1.shape)}, "
                         f"got {getattr(out, 'shape', type(out).__name__)}")
    if not out.requires_grad:
        raise ValueError("the denoiser's output is not differentiable in y (computed outside "
                         "autograd, e.g. with numpy or under no_grad); no Jacobian to take")
    return leaf, out, sum(saved.values())


def _auto_chunk(d: int, saved_bytes: int, itemsize: int, device: torch.device,
                memory_budget: float | None) -> int:
    """Rows per chunk so that a chunk's autograd memory stays within the budget."""
    if memory_budget is None:
        if device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(device)
            memory_budget = CUDA_BUDGET_FRACTION * free
        else:
            memory_budget = CPU_BUDGET
    row_bytes = ROW_COST_FACTOR * max(saved_bytes, d * itemsize) + 2 * d * itemsize
    return int(max(1, min(d, memory_budget // row_bytes)))


def _rows_vmap(leaf, out, eye_rows: torch.Tensor) -> torch.Tensor:
    """Rows of J for the cotangents ``eye_rows`` (b, d): one vectorized backward pass."""
    cotangents = eye_rows.reshape(eye_rows.shape[0], *out.shape)
    (grad,) = torch.autograd.grad(out, leaf, cotangents, retain_graph=True, is_grads_batched=True)
    return grad.reshape(eye_rows.shape[0], -1)


def _rows_replicate(denoiser, y1, sigma, eye_rows: torch.Tensor) -> torch.Tensor:
    """Rows of J for ``eye_rows`` (b, d): b copies of y in one batch, one backward pass."""
    b = eye_rows.shape[0]
    copies = y1.expand(b, *y1.shape[1:]).clone().requires_grad_(True)
    with torch.enable_grad():
        out = denoiser(copies, _sigma_for_batch(sigma, b))
        # copy k only reaches output k (batch independence), so row k of the batch = e_k J
        (grad,) = torch.autograd.grad(out, copies, eye_rows.reshape(out.shape))
    return grad.reshape(b, -1)


def _batch_coupling(denoiser, y1, sigma, out1: torch.Tensor) -> float:
    """‖f([y, y'])[0] − f(y)‖ / ‖f(y)‖ for another image y': 0 if batch images are denoised
    independently (and deterministically)."""
    other = 0.5 * y1.flip(-1).flip(-2) + 0.25 * y1.mean()
    with torch.no_grad():
        pair = denoiser(torch.cat([y1, other]), _sigma_for_batch(sigma, 2))[:1]
    scale = out1.detach().norm().clamp_min(torch.finfo(out1.dtype).tiny)
    return float((pair - out1.detach()).norm() / scale)


def _choose_method(denoiser, y1, sigma, out, method: str, check: bool) -> str:
    """"replicate" or "vmap" for ``method`` (module docstring), testing batch independence."""
    if method == "vmap" or (method == "replicate" and not check):
        return method
    gap = _batch_coupling(denoiser, y1, sigma, out)
    if not gap <= BATCH_TOLERANCE:
        if method == "replicate":
            raise ValueError(f"the denoiser's output for one image depends on the other "
                             f"images of the batch (relative change {gap:.2e}); use "
                             f"method='vmap'")
        return "vmap"
    return "replicate"


def _check_options(y, sigma, chunk, method, memory_budget, denoiser):
    """Validated (y1 (1, c, h, w), σ); ValueError naming the valid values otherwise."""
    y1 = _check_image(y)
    sigma = _check_sigma(sigma, y1)
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if chunk is not None:
        if isinstance(chunk, bool) or not isinstance(chunk, numbers.Integral) or chunk < 1:
            raise ValueError(f"chunk must be an integer >= 1 or None, got {chunk!r}")
    if memory_budget is not None and not (memory_budget > 0):
        raise ValueError(f"memory_budget must be > 0 bytes or None, got {memory_budget!r}")
    check_eval_mode(denoiser)
    return y1, sigma


def jacobian_and_output(denoiser, y, sigma, chunk: int | None = None, method: str = "auto",
                        memory_budget: float | None = None, check: bool = True):
    """Like :func:`jacobian`, also returning ``f(y)`` (c, h, w) from the same forward pass."""
    y1, sigma = _check_options(y, sigma, chunk, method, memory_budget, denoiser)

    leaf, out, saved_bytes = _forward(denoiser, y1, sigma)
    d = out.numel()
    chunk = min(d, int(chunk)) if chunk is not None else _auto_chunk(
        d, saved_bytes, out.element_size(), out.device, memory_budget)
    J = torch.empty(d, d, dtype=out.dtype, device=out.device)

    use = _choose_method(denoiser, y1, sigma, out, method, check)
    for i in range(0, d, chunk):  # step: one batched backward pass per chunk of rows
        b = min(chunk, d - i)
        rows = torch.zeros(b, d, dtype=out.dtype, device=out.device)
        rows[torch.arange(b), torch.arange(i, i + b)] = 1.0  # identity rows i … i+b−1
        J[i:i + chunk] = (_rows_vmap(leaf, out, rows) if use == "vmap"
                          else _rows_replicate(denoiser, y1, sigma, rows))
    return J, out.detach()[0]


def jacobian(denoiser, y, sigma, chunk: int | None = None, method: str = "auto",
             memory_budget: float | None = None, check: bool = True) -> torch.Tensor:
    """Exact Jacobian ``J = ∇_y f(y, σ)`` of a denoiser at one image (SCIENCE.md §6).

    Parameters
    ----------
    denoiser : callable ``(y (n,c,h,w), sigma) -> x_hat (n,c,h,w)``, differentiable in torch.
        Networks must be in eval mode (checked for batch-norm / dropout modules).
    y : tensor (c, h, w) or (1, c, h, w)   the noisy image, pixel units. Its dtype and
        device are those of the computation (pass float64 for a float64 Jacobian).
    sigma : float or one-value tensor      noise level, pixel units.
    chunk : int >= 1 or None   rows of J per backward pass (None: from ``memory_budget``).
    method : "auto" | "vmap" | "replicate"   see the module docstring.
    memory_budget : bytes or None   autograd memory allowed per chunk (None: 1 GiB on the
        CPU, a quarter of the free memory on a GPU).
    check : bool   with ``replicate``, verify once that batch images are denoised
        independently (two extra images through the denoiser); ``auto`` always does.

    Returns
    -------
    tensor (d, d), d = c·h·w, dtype and device of y; ``J[i, j] = ∂f_i/∂y_j`` with pixels
    flattened in (c, h, w) order. Gradients are enabled inside, even under ``no_grad``.

    Notes
    -----
    On NVIDIA GPUs cuDNN convolutions use TF32 by default, which rounds to about 1e-3;
    set ``torch.backends.cudnn.allow_tf32 = False`` for a Jacobian exact in float32.
    """
    return jacobian_and_output(denoiser, y, sigma, chunk=chunk, method=method,
                               memory_budget=memory_budget, check=check)[0]


# ----------------------------------------------------------------------------- products


class _Products:
    """``J V`` and ``Jᵀ V`` for blocks of vectors V (d, b), from one autograd graph kept for
    the whole analysis (no forward pass per product).

    ``Jᵀ v`` is a backward pass of ``f``; ``J v`` the "double-backward" trick: with
    ``G(u) = Jᵀ u`` built once with ``create_graph``, ``J v = ∂⟨G(u), v⟩/∂u``. ``replicate``
    keeps the graph of ``batch`` copies of y (batch-independent denoisers; blocks are
    padded to ``batch`` columns), ``vmap`` the graph of y alone with batched cotangents.
    Vectors and results are float64 (d, b); products run in y's dtype.
    """

    def __init__(self, denoiser, y1, sigma, use: str, batch: int, leaf=None, out=None):
        self.shape, self.dtype, self.use = y1.shape[1:], y1.dtype, use
        with torch.enable_grad():
            if use == "replicate":
                leaf = y1.expand(batch, *self.shape).clone().requires_grad_(True)
                out = denoiser(leaf, _sigma_for_batch(sigma, batch))
            self.unit = torch.zeros_like(out, requires_grad=True)  # u of G(u) = Jᵀ u
            (self.G,) = torch.autograd.grad(out, leaf, self.unit, create_graph=True)
        self.leaf, self.out, self.batch, self.count = leaf, out, batch, 0

    def _block(self, V: torch.Tensor):
        b = V.shape[1]
        T = V.T.to(self.dtype)
        if self.use == "replicate":  # pad to the graph's batch: copy k carries column k
            T = torch.cat([T, T.new_zeros(self.batch - b, T.shape[1])]).reshape(self.out.shape)
            grads = dict(grad_outputs=T)
        else:
            grads = dict(grad_outputs=T.reshape(b, *self.out.shape), is_grads_batched=True)
        (JtV,) = torch.autograd.grad(self.out, self.leaf, retain_graph=True, **grads)
        if self.G.requires_grad:  # J V = ∂⟨G(u), V⟩/∂u (G is linear in u)
            (JV,) = torch.autograd.grad(self.G, self.unit, retain_graph=True, **grads)
        else:  # G does not depend on u: J = 0
            JV = torch.zeros_like(JtV)
        return tuple(t.reshape(-1, V.shape[0])[:b].T.double() for t in (JV, JtV))

    def __call__(self, V: torch.Tensor):
        """(J V, Jᵀ V), each (d, b) float64, for V (d, b) float64 on y's device."""
        self.count += V.shape[1]
        parts = [self._block(V[:, i:i + self.batch]) for i in range(0, V.shape[1], self.batch)]
        return torch.cat([p[0] for p in parts], 1), torch.cat([p[1] for p in parts], 1)


def _orthonormal_block(X: torch.Tensor, V: torch.Tensor) -> torch.Tensor:
    """Orthonormal basis of the part of span X (d, s) orthogonal to V (d, m) (orthonormal),
    dropping directions already in span V (two Gram–Schmidt passes, then QR)."""
    norms = X.norm(dim=0).clamp_min(torch.finfo(X.dtype).tiny)
    for _ in range(2):
        X = X - V @ (V.T @ X)
        Q, R = torch.linalg.qr(X)
        X = Q[:, R.diagonal().abs() > 1e-10 * norms.max()]
        norms = torch.ones(X.shape[1], dtype=X.dtype, device=X.device)
    return X


def _block_size(k: int) -> int:
    """Residuals added per step of the top-k solver: few vectors (a high Krylov degree for
    the products spent; 4 beats 16 or 40 for k = 32), more for large k (GPU batches)."""
    return max(4, -(-k // 8))


def _top_eigenpairs(products: _Products, X0: torch.Tensor, k: int, tol: float,
                    max_products: int):
    """Top-k eigenpairs of ``S = (J + Jᵀ)/2`` by block Davidson (Rayleigh–Ritz).

    The search space starts as span X0 (d, keep), keep = k + oversampling Ritz vectors,
    and grows by the residuals ``S u − θ u`` of at most ``block`` unconverged Ritz pairs per
    step (a block Krylov space without preconditioner; converged pairs are soft-locked);
    past ``3·keep`` vectors it restarts from the top ``keep`` Ritz vectors. It stops when the
    top k residual norms are ≤ tol or after ``max_products`` products. Memory: the basis V,
    S V and A V (A = (J − Jᵀ)/2), each (d, ≤ 3·keep) float64.

    Returns θ (k,) descending, U (d, k), S U, A U (d, k), residual norms (k,), all float64.
    """
    d, keep = X0.shape
    block = _block_size(k)
    m_max = min(d, 3 * keep)
    X = _orthonormal_block(X0, X0[:, :0])
    V, SV, AV = X[:, :0], X[:, :0], X[:, :0]
    H = X.new_zeros(0, 0)  # Vᵀ S V
    Gram = X.new_zeros(0, 0)  # (S V)ᵀ (S V): residual norms without forming the Ritz vectors
    while True:
        JX, JtX = products(X)
        SX, AX = 0.5 * (JX + JtX), 0.5 * (JX - JtX)  # symmetric and antisymmetric parts
        cross = 0.5 * (V.T @ SX + SV.T @ X)
        H = torch.cat([torch.cat([H, cross], 1),
                       torch.cat([cross.T, 0.5 * (X.T @ SX + SX.T @ X)], 1)])
        g = SV.T @ SX
        Gram = torch.cat([torch.cat([Gram, g], 1), torch.cat([g.T, SX.T @ SX], 1)])
        V, SV, AV = torch.cat([V, X], 1), torch.cat([SV, SX], 1), torch.cat([AV, AX], 1)
        theta, Y = torch.linalg.eigh(H)
        theta, Y = theta.flip(0)[:keep], Y.flip(1)[:, :keep]  # Ritz pairs, descending
        # ‖S u − θ u‖² = yᵀ (SV)ᵀ SV y − θ² for u = V y (uᵀ S u = θ, ‖u‖ = 1)
        res = ((Y * (Gram @ Y)).sum(0) - theta ** 2).clamp_min(0).sqrt()
        done = bool(res[:k].max() <= tol)
        if done or products.count >= max_products:
            break
        active = torch.nonzero(res > tol).flatten()[:block]
        R = SV @ Y[:, active] - (V @ Y[:, active]) * theta[active]  # residual block
        if V.shape[1] + len(active) > m_max:  # thick restart from the top Ritz vectors
            V, SV, AV = V @ Y, SV @ Y, AV @ Y
            H, Gram = torch.diag(theta), Y.T @ Gram @ Y
        X = _orthonormal_block(R, V)
        if X.shape[1] == 0:  # span V is invariant under S: the Ritz pairs are exact
            done = True
            break
    U, SU, AU = V @ Y[:, :k], SV @ Y[:, :k], AV @ Y[:, :k]
    residuals = (SU - U * theta[:k]).norm(dim=0)
    if not done and not bool(residuals.max() <= tol):
        warnings.warn(f"top-{k} eigenpairs of (J + Jᵀ)/2 not converged after {products.count} "
                      f"Jacobian-vector products: largest residual {float(residuals.max()):.2e} "
                      f"> tol {tol:g} (raise max_products)", RuntimeWarning, stacklevel=3)
    return theta[:k], U, SU, AU, residuals


# ----------------------------------------------------------------------------- spectrum


@dataclass
class JacobianSpectrum:
    """Eigen-analysis of a denoiser's Jacobian at one image (SCIENCE.md §6; paper §4–5).

    Two kinds: the *full* spectrum (``k`` None: exact J, all d eigenpairs) and the *top-k*
    spectrum (``k`` an integer: k eigenpairs from Jacobian–vector products, no d × d matrix,
    see :func:`jacobian_spectrum`).

    Attributes
    ----------
    eigenvalues : tensor (d,) or (k,) float64   eigenvalues of ``(J + Jᵀ)/2``, descending
        (the k largest for a top-k spectrum; each within ``residual_norms`` of a true one).
    eigenvectors : tensor (d, d) or (d, k) float64   matching orthonormal eigenvectors, as
        columns (each defined up to its sign, as returned by the solver).
    asymmetry : float   ``‖J − Jᵀ‖_F / ‖J‖_F`` (0 for an MMSE denoiser). Top-k: estimated,
                        exact on the top-k span plus Hutchinson on its complement.
    trace : float       ``tr J``, the effective dimension. Top-k: ``Σ θ_i`` over the top-k
                        span plus Hutchinson on its complement, unbiased, ± ``trace_se``.
    homogeneity : float   ``‖J y‖ / ‖f(y)‖`` (1 for a bias-free network); for a network
                          centred on a mean image μ̂ (``denoiser.center``) y and f(y) are
                          taken relative to μ̂. Exact in both kinds.
    homogeneity_error : float   ``‖J y − f(y)‖ / ‖f(y)‖`` (0 for a bias-free network).
    jacobian : tensor (d, d) or None   J itself (dtype of the computation); None for top-k.
    output : tensor (c, h, w)  f(y).
    shape : tuple (c, h, w)    image shape, to fold eigenvectors back into images.
    k : int or None      number of eigenpairs of a top-k spectrum; None for the full one.
    trace_se : float     standard error of ``trace`` (0 when exact).
    residual_norms : tensor (k,) float64 or None   ``‖S u_i − θ_i u_i‖`` of a top-k spectrum.
    products : int       Jacobian–vector products used (each one ``J v`` and one ``Jᵀ v``);
                         d (one per row of J) for the full spectrum.
    """

    eigenvalues: torch.Tensor
    eigenvectors: torch.Tensor
    asymmetry: float
    trace: float
    homogeneity: float
    homogeneity_error: float
    jacobian: torch.Tensor | None
    output: torch.Tensor
    shape: tuple
    k: int | None = None
    trace_se: float = 0.0
    residual_norms: torch.Tensor | None = None
    products: int = 0

    @property
    def effective_dimension(self) -> float:
        """``tr J`` (SCIENCE.md §6); a Hutchinson estimate ± ``trace_se`` for top-k."""
        return self.trace

    def count_above(self, level: float) -> int:
        """Number of eigenvalues of ``(J + Jᵀ)/2`` above ``level``.

        Exact for the full spectrum, and for a top-k spectrum whose k-th eigenvalue is at or
        below ``level`` (every larger eigenvalue is then among the k). Otherwise the count is
        unknown (only ``>= k``): ValueError.
        """
        if self.k is not None and float(self.eigenvalues[-1]) > level:
            raise ValueError(f"count_above({level:g}) is unknown from the top {self.k} "
                             f"eigenvalues (the {self.k}-th is "
                             f"{float(self.eigenvalues[-1]):.4g} > {level:g}); use a larger k")
        return int((self.eigenvalues > level).sum())


def _centred(denoiser, y1, fy):
    """(ỹ, f̃) (d,) float64 on y's device: y and f(y), relative to ``denoiser.center`` for a
    network homogeneous about its mean image μ̂ (SCIENCE.md §6)."""
    y_flat = y1.reshape(-1).double()
    f_flat = fy.reshape(-1).double().to(y_flat.device)
    center = getattr(denoiser, "center", None)
    if center is not None:
        c = center.reshape(-1).to(device=y_flat.device, dtype=torch.float64)
        y_flat, f_flat = y_flat - c, f_flat - c
    return y_flat, f_flat


def _homogeneity(Jy: torch.Tensor, f_flat: torch.Tensor) -> tuple[float, float]:
    """(‖J ỹ‖/‖f̃‖, ‖J ỹ − f̃‖/‖f̃‖): bias-free ⇒ J y = f(y) (SCIENCE.md §6)."""
    f_norm = f_flat.norm().clamp_min(torch.finfo(torch.float64).tiny)
    return float(Jy.norm() / f_norm), float((Jy - f_flat).norm() / f_norm)


def _check_top_k_options(k, d, probes, seed, tol, max_products):
    """Validated (probes, seed, tol, max_products) of the top-k path; ValueError otherwise."""
    if k is None:
        given = [n for n, v in (("probes", probes), ("seed", seed), ("tol", tol),
                                ("max_products", max_products)) if v is not None]
        if given:
            raise ValueError(f"{', '.join(given)} apply only to the top-k spectrum; pass k")
        return None
    if isinstance(k, bool) or not isinstance(k, numbers.Integral) or not 1 <= k <= d:
        raise ValueError(f"k must be None (full spectrum) or an integer in [1, {d}], got {k!r}")
    probes = check_int("probes", TRACE_PROBES if probes is None else probes, low=2)
    seed = check_seed(0 if seed is None else seed)
    tol = TOP_K_TOL if tol is None else tol
    if isinstance(tol, bool) or not isinstance(tol, numbers.Real) or not 0 < tol < math.inf:
        raise ValueError(f"tol must be a float > 0, got {tol!r}")
    if max_products is not None:
        max_products = check_int("max_products", max_products, low=1)
    return probes, seed, float(tol), max_products


def jacobian_spectrum(denoiser, y, sigma, k: int | None = None, *, probes: int | None = None,
                      seed: int | None = None, tol: float | None = None,
                      max_products: int | None = None, **kw) -> JacobianSpectrum:
    """Eigen-decomposition of the symmetric part ``S = (J + Jᵀ)/2`` of ``J = ∇_y f(y, σ)``.

    Full (``k=None``, default): the exact J (:func:`jacobian_and_output`, d backward passes)
    and all d eigenpairs by ``torch.linalg.eigh``; memory d × d.

    Top-k (``k`` an integer): the k largest eigenpairs of S from Jacobian–vector products
    only (``J v`` and ``Jᵀ v`` from one kept autograd graph, see ``_Products``), by block
    Davidson–Rayleigh–Ritz (``_top_eigenpairs``); memory O(k·d), no d × d matrix. Typically
    a few hundred products for k = 32 (d products for the full J, plus its O(d³) eigh).
    Accuracy: each eigenvalue is within its residual norm ``‖S u − θ u‖ ≤ tol`` of a true
    eigenvalue (typically within tol²/gap), and the span of the eigenvectors within an
    angle ≈ tol / (λ_k − λ_{k+1}) of the true top-k span. ``tr J = tr S`` is estimated
    without bias as ``Σ θ_i`` (exact on the top-k span U) plus Hutchinson's estimate on its
    complement, ``mean_j (P z_j)ᵀ J (P z_j)``, ``P = I − U Uᵀ``, with ``probes`` Rademacher
    vectors z_j (Hutch++-style deflation: the variance comes only from the eigenvalues not
    among the k); ``trace_se`` is its standard error. ``asymmetry`` is estimated likewise
    (``‖M‖_F² = ‖M U‖_F² + E‖M P z‖²`` for M = S and J − Jᵀ); homogeneity is exact (one
    product with y). Deterministic for a given ``seed`` (start block, then probes, from
    one ``torch.Generator`` on the CPU).

    Parameters
    ----------
    denoiser, y, sigma : as in :func:`jacobian` (y (c, h, w) or (1, c, h, w), pixel units;
        σ in pixel units). Eigenvalues are dimensionless (shrinkage factors).
    k : None or int in [1, d]   None: full spectrum; else the number of top eigenpairs.
    probes : int >= 2   top-k only: Rademacher probes of the trace (default 32).
    seed : int >= 0     top-k only: seed of the start block and the probes (default 0).
    tol : float > 0     top-k only: residual norm at which an eigenpair has converged
        (default 1e-3, eigenvalue units).
    max_products : int or None   top-k only: most products of the solver (default 50·(k +
        oversampling)); beyond it a RuntimeWarning names the residual reached.
    **kw : chunk, method, memory_budget, check, as in :func:`jacobian`. For top-k, ``chunk``
        is the number of vectors per product pass (default: from the memory budget, at most
        the solver's block).

    Returns
    -------
    :class:`JacobianSpectrum` in float64 on y's device: full, or top-k (``jacobian`` None,
    ``trace_se``, ``residual_norms`` and ``k`` set).
    """
    y1 = _check_image(y)
    opts = _check_top_k_options(k, y1.numel(), probes, seed, tol, max_products)
    if opts is not None:
        return _top_k_spectrum(denoiser, y1, sigma, int(k), *opts, **kw)
    J, fy = jacobian_and_output(denoiser, y, sigma, **kw)
    J64 = J.double()
    evals, evecs = torch.linalg.eigh(0.5 * (J64 + J64.T))  # symmetric part (SCIENCE.md §6)
    y_flat, f_flat = _centred(denoiser, y1.to(J.device), fy)
    homogeneity, homogeneity_error = _homogeneity(J64 @ y_flat, f_flat)
    return JacobianSpectrum(
        eigenvalues=evals.flip(0),
        eigenvectors=evecs.flip(1),
        asymmetry=float((J64 - J64.T).norm() / J64.norm().clamp_min(1e-300)),
        trace=float(J64.diagonal().sum()),
        homogeneity=homogeneity,
        homogeneity_error=homogeneity_error,
        jacobian=J,
        output=fy,
        shape=tuple(fy.shape),
        products=J.shape[0],
    )


def _product_engine(denoiser, y1, sigma, batch_max, chunk, method, memory_budget, check):
    """(``_Products`` at y, f(y) (c, h, w)) after validation (options of :func:`jacobian`)."""
    y1, sigma = _check_options(y1, sigma, chunk, method, memory_budget, denoiser)
    leaf, out, saved_bytes = _forward(denoiser, y1, sigma)
    d = out.numel()
    use = _choose_method(denoiser, y1, sigma, out, method, check)
    batch = min(d, int(chunk)) if chunk is not None else min(batch_max, _auto_chunk(
        d, saved_bytes, out.element_size(), out.device, memory_budget))
    fy = out.detach()[0]
    if use == "replicate":
        leaf = out = None  # the products keep their own graph of `batch` copies
    return _Products(denoiser, y1, sigma, use, batch, leaf=leaf, out=out), fy


def jacobian_products(denoiser, y, sigma, V, chunk: int | None = None, method: str = "auto",
                      memory_budget: float | None = None, check: bool = True):
    """``(J V, Jᵀ V)`` for vectors V, from Jacobian–vector products only (no d × d matrix).

    Parameters
    ----------
    denoiser, y, sigma, method, memory_budget, check : as in :func:`jacobian`.
    V : tensor (d, b) or (d,)   vectors (pixels flattened in (c, h, w) order), any dtype.
    chunk : int >= 1 or None    vectors per product pass (None: from the memory budget).

    Returns
    -------
    two float64 tensors of V's shape on y's device: ``J V`` and ``Jᵀ V``.
    """
    y1 = _check_image(y)
    V = torch.as_tensor(V)
    if V.dim() not in (1, 2) or V.shape[0] != y1.numel():
        raise ValueError(f"V must have shape (d,) or (d, b) with d = {y1.numel()}, "
                         f"got {tuple(V.shape)}")
    V2 = V.reshape(V.shape[0], -1).to(device=y1.device, dtype=torch.float64)
    products, _ = _product_engine(denoiser, y1, sigma, max(1, V2.shape[1]), chunk, method,
                                  memory_budget, check)
    JV, JtV = products(V2)
    return JV.reshape(V.shape), JtV.reshape(V.shape)


def _top_k_spectrum(denoiser, y1, sigma, k, probes, seed, tol, max_products, chunk=None,
                    method="auto", memory_budget=None, check=True) -> JacobianSpectrum:
    """The top-k path of :func:`jacobian_spectrum` (its docstring)."""
    keep = min(y1.numel(), k + max(TOP_K_OVERSAMPLING, k // 4))
    products, fy = _product_engine(denoiser, y1, sigma, _block_size(k), chunk, method,
                                   memory_budget, check)
    d, device = fy.numel(), fy.device

    gen = torch.Generator().manual_seed(seed)  # start block, then probes: deterministic
    X0 = torch.randn(d, keep, generator=gen, dtype=torch.float64).to(device)
    Z = (2.0 * torch.randint(0, 2, (d, probes), generator=gen) - 1).double().to(device)
    theta, U, SU, AU, residuals = _top_eigenpairs(
        products, X0, k, tol, max_products if max_products is not None else 50 * keep)

    # trace and Frobenius norms: exact on span U, Hutchinson on its complement (P z)
    PZ = Z - U @ (U.T @ Z)
    y_flat, f_flat = _centred(denoiser, y1, fy)
    JW, JtW = products(torch.cat([PZ, y_flat[:, None]], 1))  # probes and J ỹ in one pass
    JP, JtP, Jy = JW[:, :-1], JtW[:, :-1], JW[:, -1]
    samples = (PZ * JP).sum(0)  # (P z)ᵀ J (P z), mean tr(P S P)
    trace = float(torch.diagonal(U.T @ SU).sum() + samples.mean())
    trace_se = float(samples.std() / math.sqrt(probes))
    sym2 = float(SU.square().sum() + (0.5 * (JP + JtP)).square().sum(0).mean())  # ‖S‖_F²
    anti2 = float(AU.square().sum() + (0.5 * (JP - JtP)).square().sum(0).mean())  # ‖A‖_F²
    asymmetry = 2 * math.sqrt(anti2) / max(math.sqrt(sym2 + anti2), 1e-300)  # ‖J−Jᵀ‖ = 2‖A‖
    homogeneity, homogeneity_error = _homogeneity(Jy, f_flat)
    return JacobianSpectrum(
        eigenvalues=theta, eigenvectors=U, asymmetry=asymmetry, trace=trace,
        homogeneity=homogeneity, homogeneity_error=homogeneity_error, jacobian=None,
        output=fy, shape=tuple(fy.shape), k=k, trace_se=trace_se, residual_norms=residuals,
        products=products.count)


def top_eigenvectors_as_images(spectrum: JacobianSpectrum, k: int = 16) -> torch.Tensor:
    """The k eigenvectors of largest eigenvalue as images (k, c, h, w), float64, unit norm.

    k is at most the number of eigenvectors held: d for a full spectrum, its k for a top-k one.
    """
    held = spectrum.eigenvectors.shape[1]
    if isinstance(k, bool) or not isinstance(k, numbers.Integral) or not 1 <= k <= held:
        raise ValueError(f"k must be an integer in [1, {held}], got {k!r}")
    return spectrum.eigenvectors[:, :k].T.reshape(k, *spectrum.shape)


# ----------------------------------------------------------------------------- helpers


def subspace_angles(U, V) -> torch.Tensor:
    """Principal angles between the column spans of U (d, p) and V (d, q), in radians.

    Returns a float64 tensor (on the CPU) of min(rank U, rank V) angles, ascending, in
    [0, π/2]: ``scipy.linalg.subspace_angles``, whose small angles come from sines and
    large ones from cosines, so both ends are accurate (Knyazev & Argentati 2002).
    """
    from scipy.linalg import subspace_angles as scipy_angles

    U = torch.as_tensor(U).detach().double().cpu()
    V = torch.as_tensor(V).detach().double().cpu()
    if U.dim() != 2 or V.dim() != 2 or U.shape[0] != V.shape[0] or 0 in U.shape + V.shape:
        raise ValueError(f"U and V must be matrices with the same number of rows and at "
                         f"least one column, got {tuple(U.shape)} and {tuple(V.shape)}")
    return torch.from_numpy(scipy_angles(U.numpy(), V.numpy()).copy()).flip(0)


def sure_mse(denoiser, y, sigma, trace=None) -> torch.Tensor:
    """Stein's unbiased estimate of the per-pixel MSE of each image (SCIENCE.md §6).

    ``(‖f(y) − y‖² − d σ² + 2 σ² tr ∇f(y)) / d``, whose expectation over the noise is
    ``E‖f(y) − x‖² / d`` for ``y = x + σ z``: the MSE without clean images.

    Parameters
    ----------
    denoiser : callable ``(y, sigma) -> x_hat``.
    y : tensor (n, c, h, w) or (c, h, w)   noisy images, pixel units.
    sigma : float or tensor of n values    noise level, pixel units.
    trace : float, tensor of n values, or None   ``tr J`` at each image; None computes it
        exactly with :func:`jacobian` (one Jacobian per image: slow for large d).

    Returns
    -------
    tensor (n,) float64: per-image, per-pixel SURE values.
    """
    if not isinstance(y, torch.Tensor) or y.dim() not in (3, 4):
        raise ValueError(f"y must be a tensor of shape (n, c, h, w) or (c, h, w), "
                         f"got {getattr(y, 'shape', type(y).__name__)}")
    y = y.unsqueeze(0) if y.dim() == 3 else y
    n, d = y.shape[0], y[0].numel()
    s2 = sigma_column(sigma, y).reshape(n).double() ** 2
    if trace is None:
        sig = sigma_column(sigma, y).reshape(n)
        trace = torch.tensor([float(jacobian(denoiser, y[k], sig[k:k + 1]).diagonal().sum())
                              for k in range(n)], dtype=torch.float64)
    trace = torch.as_tensor(trace, dtype=torch.float64).to(y.device).reshape(-1)
    if trace.numel() not in (1, n) or not bool(torch.all(torch.isfinite(trace))):
        raise ValueError(f"trace must be a finite float or hold one value per image ({n}), "
                         f"got {trace.numel()} values")
    with torch.no_grad():
        residual = (denoiser(y, sigma) - y).double().reshape(n, d)
    # SURE: ‖f(y) − y‖² − dσ² + 2σ² tr J, per pixel (SCIENCE.md §6)
    return ((residual ** 2).sum(1) - d * s2 + 2 * s2 * trace) / d


__all__ = [
    "METHODS",
    "JacobianSpectrum",
    "jacobian",
    "jacobian_and_output",
    "jacobian_products",
    "jacobian_spectrum",
    "subspace_angles",
    "sure_mse",
    "top_eigenvectors_as_images",
]

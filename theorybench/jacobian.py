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
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass

import torch
from torch import nn

from theorybench.denoisers.base import sigma_column

METHODS = ("auto", "vmap", "replicate")
ROW_COST_FACTOR = 4  # bytes of one chunk row ≈ this × the bytes autograd saves for one image
CPU_BUDGET = 1 << 30  # default memory budget on the CPU: 1 GiB
CUDA_BUDGET_FRACTION = 0.25  # default budget on a GPU: a quarter of its free memory
BATCH_TOLERANCE = 1e-3  # relative tolerance of the batch-independence check (TF32-safe)


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


def _check_eval_mode(denoiser) -> None:
    """ValueError if the denoiser holds batch-norm or dropout layers in training mode."""
    if isinstance(denoiser, nn.Module):
        modules = [denoiser]
    else:
        modules = [v for v in vars(denoiser).values() if isinstance(v, nn.Module)] \
            if hasattr(denoiser, "__dict__") else []
    stateful = (nn.modules.batchnorm._BatchNorm, nn.modules.dropout._DropoutNd)
    for module in modules:
        for sub in module.modules():
            named_norm = "batchnorm" in type(sub).__name__.lower()  # e.g. bias-free BN
            if sub.training and (isinstance(sub, stateful) or named_norm):
                raise ValueError(f"the denoiser holds {type(sub).__name__} in training mode; "
                                 f"call .eval() first (the Jacobian needs a per-image, "
                                 f"deterministic map)")


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


def jacobian_and_output(denoiser, y, sigma, chunk: int | None = None, method: str = "auto",
                        memory_budget: float | None = None, check: bool = True):
    """Like :func:`jacobian`, also returning ``f(y)`` (c, h, w) from the same forward pass."""
    y1 = _check_image(y)
    sigma = _check_sigma(sigma, y1)
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if chunk is not None:
        if isinstance(chunk, bool) or not isinstance(chunk, numbers.Integral) or chunk < 1:
            raise ValueError(f"chunk must be an integer >= 1 or None, got {chunk!r}")
    if memory_budget is not None and not (memory_budget > 0):
        raise ValueError(f"memory_budget must be > 0 bytes or None, got {memory_budget!r}")
    _check_eval_mode(denoiser)

    leaf, out, saved_bytes = _forward(denoiser, y1, sigma)
    d = out.numel()
    chunk = min(d, int(chunk)) if chunk is not None else _auto_chunk(
        d, saved_bytes, out.element_size(), out.device, memory_budget)
    J = torch.empty(d, d, dtype=out.dtype, device=out.device)

    use = method
    if method == "auto" or (method == "replicate" and check):
        gap = _batch_coupling(denoiser, y1, sigma, out)
        if not gap <= BATCH_TOLERANCE:
            if method == "replicate":
                raise ValueError(f"the denoiser's output for one image depends on the other "
                                 f"images of the batch (relative change {gap:.2e}); use "
                                 f"method='vmap'")
            use = "vmap"
        else:
            use = "replicate"

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


# ----------------------------------------------------------------------------- spectrum


@dataclass
class JacobianSpectrum:
    """Eigen-analysis of a denoiser's Jacobian at one image (SCIENCE.md §6; paper §4–5).

    Attributes
    ----------
    eigenvalues : tensor (d,) float64   eigenvalues of ``(J + Jᵀ)/2``, descending.
    eigenvectors : tensor (d, d) float64   matching orthonormal eigenvectors, as columns.
    asymmetry : float   ``‖J − Jᵀ‖_F / ‖J‖_F`` (0 for an MMSE denoiser).
    trace : float       ``tr J``, the effective dimension.
    homogeneity : float   ``‖J y‖ / ‖f(y)‖`` (1 for a bias-free network); for a network
                          centred on a mean image μ̂ (``denoiser.center``) y and f(y) are
                          taken relative to μ̂.
    homogeneity_error : float   ``‖J y − f(y)‖ / ‖f(y)‖`` (0 for a bias-free network).
    jacobian : tensor (d, d)   J itself (dtype of the computation).
    output : tensor (c, h, w)  f(y).
    shape : tuple (c, h, w)    image shape, to fold eigenvectors back into images.
    """

    eigenvalues: torch.Tensor
    eigenvectors: torch.Tensor
    asymmetry: float
    trace: float
    homogeneity: float
    homogeneity_error: float
    jacobian: torch.Tensor
    output: torch.Tensor
    shape: tuple

    @property
    def effective_dimension(self) -> float:
        """``tr J`` (SCIENCE.md §6)."""
        return self.trace


def jacobian_spectrum(denoiser, y, sigma, **kw) -> JacobianSpectrum:
    """Jacobian of ``denoiser`` at ``y`` and the eigen-decomposition of its symmetric part.

    Parameters
    ----------
    denoiser, y, sigma, **kw : as in :func:`jacobian` (kw: chunk, method, memory_budget, check).

    Returns
    -------
    :class:`JacobianSpectrum`; the eigen-decomposition (``torch.linalg.eigh``) is in float64
    on J's device.
    """
    J, fy = jacobian_and_output(denoiser, y, sigma, **kw)
    y_flat = _check_image(y).reshape(-1).to(device=J.device, dtype=torch.float64)
    J64 = J.double()
    f_flat = fy.reshape(-1).double()
    evals, evecs = torch.linalg.eigh(0.5 * (J64 + J64.T))  # symmetric part (SCIENCE.md §6)
    center = getattr(denoiser, "center", None)  # a network homogeneous about its mean image
    if center is not None:
        c = center.reshape(-1).to(device=J.device, dtype=torch.float64)
        y_flat, f_flat = y_flat - c, f_flat - c
    f_norm = f_flat.norm().clamp_min(torch.finfo(torch.float64).tiny)
    Jy = J64 @ y_flat  # bias-free ⇒ J y = f(y) (about μ̂ when centred; SCIENCE.md §6)
    return JacobianSpectrum(
        eigenvalues=evals.flip(0),
        eigenvectors=evecs.flip(1),
        asymmetry=float((J64 - J64.T).norm() / J64.norm().clamp_min(1e-300)),
        trace=float(J64.diagonal().sum()),
        homogeneity=float(Jy.norm() / f_norm),
        homogeneity_error=float((Jy - f_flat).norm() / f_norm),
        jacobian=J,
        output=fy,
        shape=tuple(fy.shape),
    )


def top_eigenvectors_as_images(spectrum: JacobianSpectrum, k: int = 16) -> torch.Tensor:
    """The k eigenvectors of largest eigenvalue as images (k, c, h, w), float64, unit norm."""
    d = spectrum.eigenvectors.shape[0]
    if isinstance(k, bool) or not isinstance(k, numbers.Integral) or not 1 <= k <= d:
        raise ValueError(f"k must be an integer in [1, {d}], got {k!r}")
    return spectrum.eigenvectors[:, :k].T.reshape(k, *spectrum.shape)


# ----------------------------------------------------------------------------- helpers


def _orthonormal_basis(A: torch.Tensor, name: str) -> torch.Tensor:
    """Orthonormal basis (d, r) of the column span of A (d, p), via the SVD (rank-revealing)."""
    if A.dim() != 2 or A.shape[1] < 1:
        raise ValueError(f"{name} must be a matrix (d, p) with p >= 1 columns, "
                         f"got {tuple(A.shape)}")
    U, s, _ = torch.linalg.svd(A, full_matrices=False)
    rank = int((s > s.max() * max(A.shape) * torch.finfo(A.dtype).eps).sum())
    if rank == 0:
        raise ValueError(f"{name} spans only the zero vector")
    return U[:, :rank]


def subspace_angles(U, V) -> torch.Tensor:
    """Principal angles between the column spans of U (d, p) and V (d, q), in radians.

    Returns a float64 tensor of min(rank U, rank V) angles, ascending, in [0, π/2]. Small
    angles come from sines, large ones from cosines, so both ends are accurate
    (Björck & Golub 1973; Knyazev & Argentati 2002).
    """
    U = torch.as_tensor(U).double()
    V = torch.as_tensor(V).double().to(U.device)
    if U.dim() != 2 or V.dim() != 2 or U.shape[0] != V.shape[0]:
        raise ValueError(f"U and V must be matrices with the same number of rows, got "
                         f"{tuple(U.shape)} and {tuple(V.shape)}")
    Qu, Qv = _orthonormal_basis(U, "U"), _orthonormal_basis(V, "V")
    if Qu.shape[1] < Qv.shape[1]:
        Qu, Qv = Qv, Qu
    cosines = torch.linalg.svdvals(Qu.T @ Qv).clamp(0.0, 1.0).flip(0)  # ascending cosines
    sines = torch.linalg.svdvals(Qv - Qu @ (Qu.T @ Qv)).clamp(0.0, 1.0)  # descending sines
    angles = torch.where(cosines ** 2 < 0.5, torch.arccos(cosines), torch.arcsin(sines))
    return angles.flip(0)


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
    "jacobian_spectrum",
    "subspace_angles",
    "sure_mse",
    "top_eigenvectors_as_images",
]

"""Drawing images from the density a denoiser implies (SCIENCE.md §7).

All samplers share one signature, ``sampler(denoiser, noise, **options) -> SampleResult``,
and :func:`sample` dispatches on ``method``:

* ``"stochastic"``: the coarse-to-fine stochastic gradient ascent of Kadkhodaie &
  Simoncelli (2021): from ``y0 = mean + σ0 z0``, repeat ``d = f(y) − y``,
  ``σ_t = ‖d‖/√d``, ``y ← y + h_t d + γ_t z`` until ``σ_t`` falls below ``sigma_stop``;
* ``"euler"``, ``"heun"``: the probability-flow ODE ``dx/dσ = (x − f(x, σ))/σ``
  (variance exploding, Karras et al. 2022) from ``sigma_max`` to ``sigma_min`` on a
  geometric grid, then one last denoising step ``f(x, σ_min)``; deterministic.

``noise`` is a standard-normal tensor (n, c, h, w): two denoisers given the same noise
(and, for the stochastic sampler, the same ``seed``) are compared on equal terms. The
noise the stochastic sampler injects comes from one generator per image, seeded by
``(seed, offset + k)``, so image k's path does not depend on the batch it is drawn in.

A run whose effective noise ``‖f(x) − x‖/√d`` grows past ``divergence_factor`` times its
starting level, or turns non-finite, raises :class:`SamplingDiverged` with the partial
result attached; no sampler ever returns NaN images.
"""

from __future__ import annotations

import inspect
import math
import warnings
from dataclasses import dataclass

import torch

from tbcore.denoiser import check_eval_mode, check_output
from tbcore.seeding import block_generator
from tbcore.validation import check_float, check_int, check_seed

SAMPLING_STREAM = 21  # generator stream reserved for the stochastic sampler's injected noise


@dataclass
class SampleResult:
    """What a sampler returns.

    Attributes
    ----------
    images : tensor (n, c, h, w)   the samples, in ``noise``'s dtype and device.
    sigmas : tensor (n, T) float64   effective noise ``‖f(x) − x‖/√d`` measured at each
        step (pixel units); NaN after an image has stopped.
    sigma_in : tensor (n, T) float64   the σ handed to the denoiser at each step (NaN
        after an image has stopped).
    steps : tensor (n,) int64   steps each image took (denoiser evaluations of the
        stochastic sampler; ODE steps, i.e. ``len(grid) − 1``, for euler/heun).
    converged : tensor (n,) bool   stochastic: ``σ_t < sigma_stop`` was reached within
        ``max_steps``; always True for the ODE samplers.
    method : str
    grid : tensor (T,) float64 or None   the ODE's σ grid (None for ``stochastic``).
    trajectory : tensor (n, R, c, h, w) or None   the iterates ``y`` (before each
        recorded step; stopped images stay frozen), when ``record_every > 0``.
    trajectory_steps : tensor (R,) int64 or None   the step index of each recorded iterate.
    """

    images: torch.Tensor
    sigmas: torch.Tensor
    sigma_in: torch.Tensor
    steps: torch.Tensor
    converged: torch.Tensor
    method: str
    grid: torch.Tensor | None = None
    trajectory: torch.Tensor | None = None
    trajectory_steps: torch.Tensor | None = None


class SamplingDiverged(RuntimeError):
    """A sampler's effective noise blew up or turned non-finite.

    Attributes
    ----------
    images : list[int]   indices (within the batch) of the diverging images.
    step : int           the step at which it was detected (1-based).
    partial : SampleResult   the state just before the failing step: ``images`` holds
        the last finite iterates (not denoised), ``sigmas``/``sigma_in`` the history so far.
    """

    def __init__(self, message: str, images: list[int], step: int, partial: SampleResult):
        super().__init__(message)
        self.images = images
        self.step = step
        self.partial = partial


# ----------------------------------------------------------------------------- helpers


def image_generators(seed: int, count: int, offset: int, device) -> list[torch.Generator]:
    """One torch generator per image: ``block_generator(seed, offset + k, stream)``."""
    return [block_generator(seed, k, SAMPLING_STREAM, device)
            for k in range(offset, offset + count)]


def _check_noise(noise) -> torch.Tensor:
    if not isinstance(noise, torch.Tensor) or noise.dim() != 4 or not noise.is_floating_point():
        raise ValueError("noise must be a float tensor (n, c, h, w) of standard-normal values")
    if noise.shape[0] == 0:
        raise ValueError("noise must hold at least one image (n >= 1)")
    if not bool(torch.isfinite(noise).all()):
        raise ValueError("noise must be finite")
    return noise


def _check_denoiser(denoiser):
    if not callable(denoiser):
        raise ValueError(f"denoiser must be a callable (y, sigma) -> x_hat, got {denoiser!r}")
    if getattr(denoiser, "oracle", False):
        raise ValueError("oracle denoisers need the clean image's latents and cannot sample")
    check_eval_mode(denoiser)


def _mean_tensor(mean, noise: torch.Tensor) -> torch.Tensor:
    """The distribution's mean as a tensor broadcastable to (n, c, h, w)."""
    if isinstance(mean, torch.Tensor):
        if tuple(mean.shape) not in ((), tuple(noise.shape[1:])):
            raise ValueError(f"mean must be a float or a tensor of shape "
                             f"{tuple(noise.shape[1:])}, got shape {tuple(mean.shape)}")
        if not bool(torch.isfinite(mean).all()):
            raise ValueError("mean must be finite")
        return mean.to(device=noise.device, dtype=noise.dtype)
    mean = check_float("mean", mean)
    return torch.tensor(mean, device=noise.device, dtype=noise.dtype)


def _effective_noise(residual: torch.Tensor) -> torch.Tensor:
    """``‖d‖/√d`` per image (SCIENCE.md §7), float64, shape (n,)."""
    flat = residual.flatten(1).double()
    return flat.norm(dim=1) / math.sqrt(flat.shape[1])


def _history(rows: list[torch.Tensor], n: int) -> torch.Tensor:
    return torch.stack(rows, 1) if rows else torch.zeros((n, 0), dtype=torch.float64)


def _trajectory(frames: list[torch.Tensor], steps: list[int]):
    if not frames:
        return None, None
    return torch.stack(frames, 1), torch.tensor(steps, dtype=torch.int64)


def _diverged(method, step, bad, sigma_bad, limit, partial) -> SamplingDiverged:
    shown = bad[:10] + (["..."] if len(bad) > 10 else [])
    message = (f"{method} sampler diverged at step {step} for images {shown}: effective noise "
               f"‖f(x) − x‖/√d = {sigma_bad:.4g} exceeds {limit:.4g} (divergence_factor × "
               f"starting level) or is non-finite; the denoiser may be outside its training "
               f"range or not a denoiser; the partial run is on .partial")
    return SamplingDiverged(message, bad, step, partial)


# ----------------------------------------------------------------------------- samplers


def stochastic(
    denoiser, noise: torch.Tensor, *, mean=0.5, sigma0: float = 1.0, h0: float = 0.01,
    beta: float = 0.1, sigma_stop: float = 0.05, max_steps: int = 3000, seed: int = 0,
    offset: int = 0, divergence_factor: float = 2.0, record_every: int = 0,
) -> SampleResult:
    """Coarse-to-fine stochastic ascent (Kadkhodaie & Simoncelli 2021; SCIENCE.md §7).

    ``y0 = mean + σ0·noise``; then for t = 1, 2, …, per image:
    ``d = f(y) − y``, ``σ_t = ‖d‖/√d``; stop with ``f(y)`` when ``σ_t < sigma_stop``;
    else ``h_t = h0·t/(1 + h0(t − 1))``, ``γ_t = σ_t √((1 − βh_t)² − (1 − h_t)²)``,
    ``y ← y + h_t d + γ_t z`` (z standard normal). Each step aims at the noise level
    ``(1 − βh_t)σ_t``; that prediction (σ0 on the first step) is the σ handed to the
    denoiser, so the sampler also drives non-blind denoisers. ``β = 1`` injects no noise.

    Parameters
    ----------
    denoiser : callable ``(y (n,c,h,w), sigma (n,)) -> x_hat``.
    noise : tensor (n, c, h, w)   standard-normal initial noise ``z0``.
    mean : float or tensor (c, h, w)   the distribution's mean (default 0.5).
    sigma0 : float > 0     initial noise level, pixel units (default 1.0).
    h0 : float in (0, 1]   initial step size (default 0.01).
    beta : float in [0, 1] noise-injection control β (default 0.1; 1 = none).
    sigma_stop : float > 0 stop when the effective noise falls below it (default 0.05).
    max_steps : int >= 1   per-image step limit (default 3000); images that do not
        converge return ``f(y)`` at their last step, ``converged = False``, and a warning.
    seed : int >= 0        seed of the injected noise.
    offset : int >= 0      index of ``noise[0]`` in the seed's image stream: image k of the
        batch uses stream ``offset + k``, so split batches reproduce one big batch.
    divergence_factor : float > 1   raise :class:`SamplingDiverged` when ``σ_t`` exceeds
        this times ``max(σ0, σ_1)`` (default 2).
    record_every : int >= 0   keep every ``record_every``-th iterate (0: none).
    """
    noise = _check_noise(noise)
    _check_denoiser(denoiser)
    sigma0 = check_float("sigma0", sigma0, low=0.0, low_open=True)
    h0 = check_float("h0", h0, low=0.0, high=1.0, low_open=True)
    beta = check_float("beta", beta, low=0.0, high=1.0)
    sigma_stop = check_float("sigma_stop", sigma_stop, low=0.0, low_open=True)
    max_steps = check_int("max_steps", max_steps, low=1)
    seed = check_seed(seed)
    offset = check_int("offset", offset, low=0)
    divergence_factor = check_float("divergence_factor", divergence_factor, low=1.0,
                                    low_open=True)
    record_every = check_int("record_every", record_every, low=0)
    mu = _mean_tensor(mean, noise)

    n, device = noise.shape[0], noise.device
    gens = image_generators(seed, n, offset, device)
    y = mu + sigma0 * noise  # y0 ~ N(mean, σ0² I)
    out = torch.empty_like(y)
    active = torch.ones(n, dtype=torch.bool, device=device)
    steps = torch.zeros(n, dtype=torch.int64)
    sigma_next = torch.full((n,), sigma0, dtype=torch.float64, device=device)
    reference = torch.full((n,), sigma0, dtype=torch.float64, device=device)
    sig_rows, in_rows, frames, frame_steps = [], [], [], []

    def partial(t):
        traj, traj_steps = _trajectory(frames, frame_steps)
        return SampleResult(y.clone(), _history(sig_rows, n), _history(in_rows, n),
                            steps.clone(), ~active.cpu(), "stochastic", None, traj, traj_steps)

    with torch.no_grad():
        for t in range(1, max_steps + 1):
            idx = active.nonzero().squeeze(1)
            if len(idx) == 0:
                break
            if record_every and (t - 1) % record_every == 0:
                frames.append(y.clone())
                frame_steps.append(t - 1)
            ya, s_in = y[idx], sigma_next[idx]
            fa = denoiser(ya, s_in.to(y.dtype))
            check_output(fa, ya)
            d = fa - ya  # d = f(y) − y: σ_t² times the score (SCIENCE.md §2)
            sigma_t = _effective_noise(d).to(device)  # σ_t = ‖d‖/√d
            if t == 1:
                reference[idx] = torch.maximum(reference[idx], sigma_t)
            limit = divergence_factor * reference[idx]
            bad = ~torch.isfinite(sigma_t) | (sigma_t > limit)
            if bool(bad.any()):
                where = bad.nonzero().squeeze(1)
                raise _diverged("stochastic", t, idx[where].tolist(),
                                float(sigma_t[where[0]]), float(limit[where[0]]), partial(t))
            row_s = torch.full((n,), math.nan, dtype=torch.float64)
            row_i = row_s.clone()
            row_s[idx.cpu()], row_i[idx.cpu()] = sigma_t.cpu(), s_in.cpu()
            sig_rows.append(row_s)
            in_rows.append(row_i)
            steps[idx.cpu()] += 1

            done = sigma_t < sigma_stop
            out[idx[done]] = fa[done]  # return f(y) once σ_t < sigma_stop
            if t == max_steps:
                out[idx[~done]] = fa[~done]
            active[idx[done]] = False

            keep = ~done
            idx, d, ya, sigma_k = idx[keep], d[keep], ya[keep], sigma_t[keep]
            if len(idx) == 0 or t == max_steps:
                break
            h = h0 * t / (1 + h0 * (t - 1))  # h_t = h0·t/(1 + h0(t−1))
            gamma = sigma_k * math.sqrt((1 - beta * h) ** 2 - (1 - h) ** 2)  # γ_t
            z = torch.stack([torch.randn(y.shape[1:], generator=gens[k], device=device,
                                         dtype=y.dtype) for k in idx.tolist()])
            y[idx] = ya + h * d + gamma.to(y.dtype).view(-1, 1, 1, 1) * z
            sigma_next[idx] = (1 - beta * h) * sigma_k  # the level this step aims at

    converged = ~active.cpu()
    if not bool(converged.all()):
        warnings.warn(f"stochastic sampler: {int((~converged).sum())} of {n} images did not "
                      f"reach sigma_stop={sigma_stop} in max_steps={max_steps}", stacklevel=2)
    if not bool(torch.isfinite(out).all()):  # a finite y gave a non-finite f(y)
        bad = (~torch.isfinite(out.flatten(1)).all(1)).nonzero().squeeze(1).tolist()
        raise _diverged("stochastic", int(steps.max()), bad, math.nan, math.nan, partial(0))
    traj, traj_steps = _trajectory(frames, frame_steps)
    return SampleResult(out, _history(sig_rows, n), _history(in_rows, n), steps, converged,
                        "stochastic", None, traj, traj_steps)


def sigma_grid(sigma_max: float, sigma_min: float, steps: int) -> torch.Tensor:
    """Geometric grid of ``steps`` values from ``sigma_max`` down to ``sigma_min`` (float64)."""
    sigma_max = check_float("sigma_max", sigma_max, low=0.0, low_open=True)
    sigma_min = check_float("sigma_min", sigma_min, low=0.0, low_open=True)
    steps = check_int("steps", steps, low=2)
    if sigma_min >= sigma_max:
        raise ValueError(f"sigma_min must be < sigma_max, got {sigma_min} >= {sigma_max}")
    return torch.logspace(math.log10(sigma_max), math.log10(sigma_min), steps,
                          dtype=torch.float64)


def check_schedule(sigmas) -> torch.Tensor:
    """An explicit σ schedule: at least 2 finite values > 0, strictly decreasing (float64);
    else ValueError naming what is valid."""
    grid = torch.as_tensor(sigmas, dtype=torch.float64).flatten()
    if len(grid) < 2 or not bool(torch.isfinite(grid).all()) or not bool((grid > 0).all()) \
            or not bool((grid[1:] < grid[:-1]).all()):
        raise ValueError("sigmas must hold at least 2 finite values > 0, strictly "
                         f"decreasing; got {grid.tolist()}")
    return grid


def _ode(denoiser, noise, solver, mean, sigma_max, sigma_min, steps, divergence_factor,
         record_every, sigmas=None) -> SampleResult:
    """Probability-flow ODE ``dx/dσ = (x − f(x, σ))/σ`` (SCIENCE.md §7; Karras et al. 2022)."""
    noise = _check_noise(noise)
    _check_denoiser(denoiser)
    grid = sigma_grid(sigma_max, sigma_min, steps) if sigmas is None else check_schedule(sigmas)
    divergence_factor = check_float("divergence_factor", divergence_factor, low=1.0,
                                    low_open=True)
    record_every = check_int("record_every", record_every, low=0)
    mu = _mean_tensor(mean, noise)
    n, device = noise.shape[0], noise.device
    x = mu + float(grid[0]) * noise  # x0 = mean + σ_max z
    reference = torch.full((n,), float(grid[0]), dtype=torch.float64)
    sig_rows, in_rows, frames, frame_steps = [], [], [], []

    def partial():
        traj, traj_steps = _trajectory(frames, frame_steps)
        return SampleResult(x.clone(), _history(sig_rows, n), _history(in_rows, n),
                            torch.full((n,), len(sig_rows), dtype=torch.int64),
                            torch.zeros(n, dtype=torch.bool), solver, grid, traj, traj_steps)

    def evaluate(xi, sigma, step, record):
        """``f(x, σ)`` with the divergence guard; records σ_eff when ``record``."""
        fx = denoiser(xi, torch.full((n,), sigma, device=device, dtype=xi.dtype))
        check_output(fx, xi)
        sigma_eff = _effective_noise(fx - xi).cpu()
        if step == 0 and record:
            reference.copy_(torch.maximum(reference, sigma_eff))
        bad = ~torch.isfinite(sigma_eff) | (sigma_eff > divergence_factor * reference)
        if bool(bad.any()):
            where = bad.nonzero().squeeze(1)
            raise _diverged(solver, step + 1, where.tolist(), float(sigma_eff[where[0]]),
                            float(divergence_factor * reference[where[0]]), partial())
        if record:
            sig_rows.append(sigma_eff)
            in_rows.append(torch.full((n,), sigma, dtype=torch.float64))
        return fx

    with torch.no_grad():
        for i in range(len(grid) - 1):
            s, s_next = float(grid[i]), float(grid[i + 1])
            if record_every and i % record_every == 0:
                frames.append(x.clone())
                frame_steps.append(i)
            slope = (x - evaluate(x, s, i, True)) / s  # dx/dσ = (x − f(x, σ))/σ
            x_next = x + (s_next - s) * slope  # Euler step
            if solver == "heun":  # trapezoid with the slope at the Euler prediction
                slope_next = (x_next - evaluate(x_next, s_next, i, False)) / s_next
                x_next = x + (s_next - s) * 0.5 * (slope + slope_next)
            x = x_next
        images = evaluate(x, float(grid[-1]), len(grid) - 1, True)  # final f(x, σ_min)
    if not bool(torch.isfinite(images).all()):
        bad = (~torch.isfinite(images.flatten(1)).all(1)).nonzero().squeeze(1).tolist()
        raise _diverged(solver, len(grid), bad, math.nan, math.nan, partial())
    traj, traj_steps = _trajectory(frames, frame_steps)
    return SampleResult(images, _history(sig_rows, n), _history(in_rows, n),
                        torch.full((n,), len(grid) - 1, dtype=torch.int64),
                        torch.ones(n, dtype=torch.bool), solver, grid, traj, traj_steps)


def euler(
    denoiser, noise: torch.Tensor, *, mean=0.5, sigma_max: float = 1.0,
    sigma_min: float = 0.01, steps: int = 50, divergence_factor: float = 2.0,
    record_every: int = 0, sigmas=None,
) -> SampleResult:
    """Probability-flow ODE with Euler steps (SCIENCE.md §7; Karras et al. 2022).

    ``x0 = mean + σ_max·noise``; ``x ← x + (σ_{i+1} − σ_i)(x − f(x, σ_i))/σ_i`` over the
    geometric grid of ``steps`` values from ``sigma_max`` to ``sigma_min``; returns
    ``f(x, σ_min)``. Deterministic: the same noise gives the same images.

    Parameters
    ----------
    denoiser : callable ``(x (n,c,h,w), sigma (n,)) -> x_hat``.
    noise : tensor (n, c, h, w)   standard-normal initial noise.
    mean : float or tensor (c, h, w)   the distribution's mean (default 0.5).
    sigma_max, sigma_min : float   ends of the σ grid, pixel units (defaults 1.0, 0.01).
        ``mean + σ_max z`` stands for the noisy density ``p_σmax`` only when ``σ_max²``
        dominates the data's largest covariance eigenvalue; raise it (within the range
        the denoiser was trained on) for data with strong low frequencies.
    steps : int >= 2   grid size (``steps − 1`` ODE steps, then the final denoising).
    divergence_factor : float > 1   raise :class:`SamplingDiverged` when ``‖f(x) − x‖/√d``
        exceeds this times ``max(σ_max, its value at the first step)`` (default 2).
    record_every : int >= 0   keep every ``record_every``-th iterate (0: none).
    sigmas : sequence of float or None   an explicit schedule, strictly decreasing (pixel
        units); it replaces the geometric grid of ``sigma_max``, ``sigma_min``, ``steps``.
    """
    return _ode(denoiser, noise, "euler", mean, sigma_max, sigma_min, steps,
                divergence_factor, record_every, sigmas)


def heun(
    denoiser, noise: torch.Tensor, *, mean=0.5, sigma_max: float = 1.0,
    sigma_min: float = 0.01, steps: int = 50, divergence_factor: float = 2.0,
    record_every: int = 0, sigmas=None,
) -> SampleResult:
    """Probability-flow ODE with Heun (2nd-order) steps; otherwise as :func:`euler`.

    Each step takes the Euler prediction ``x'`` and averages the slopes at ``(x, σ_i)`` and
    ``(x', σ_{i+1})`` (Karras et al. 2022, Alg. 1): two denoiser calls per step.
    """
    return _ode(denoiser, noise, "heun", mean, sigma_max, sigma_min, steps,
                divergence_factor, record_every, sigmas)


SAMPLERS = {"stochastic": stochastic, "euler": euler, "heun": heun}
ODE_SAMPLERS = ("euler", "heun")  # those with a σ grid and a stored trajectory


def sample(denoiser, noise: torch.Tensor, method: str = "stochastic", **options) -> SampleResult:
    """Draw images with ``denoiser`` from initial ``noise`` (n, c, h, w) by ``method``.

    ``method`` is one of ``stochastic`` (:func:`stochastic`), ``euler`` (:func:`euler`),
    ``heun`` (:func:`heun`); ``options`` are that sampler's keyword options.
    """
    if method not in SAMPLERS:
        raise ValueError(f"method must be one of {sorted(SAMPLERS)}, got {method!r}")
    sampler = SAMPLERS[method]
    valid = [p for p, v in inspect.signature(sampler).parameters.items()
             if v.kind is inspect.Parameter.KEYWORD_ONLY]
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ValueError(f"unknown option(s) {unknown} for method {method!r}; valid: {valid}")
    return sampler(denoiser, noise, **options)


__all__ = ["ODE_SAMPLERS", "SAMPLERS", "SampleResult", "SamplingDiverged", "euler", "heun",
           "sample", "check_schedule", "sigma_grid", "stochastic"]

"""Benchmark of the ``calpha`` sampler (and, with ``--denoisers``, of its MMSE bracket).

Prints the images/s of ``CAlpha.sample`` and of a straightforward per-image loop
implementation of the same construction (numpy, one image at a time: direct Fourier
sum for the contour, per-image FFT fields), run in the same process on the same random
numbers (the loop's images are checked against the vectorized ones), and their ratio,
with 1 and with 2 torch threads (``--threads``). Goal (issue 12): at least 30,000
images/s at 32×32 on one thread. Other processes may share the CPU: every timing is the
best of ``--repeats``.

    python bench/bench_calpha.py [--size 32] [--images 30000] [--threads 1,2] [--denoisers]
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from datasets_synth.calpha import OFFSET_MEAN, OFFSET_STD, CAlpha  # noqa: E402


def loop_images(dist: CAlpha, c0, ab, xi, offsets) -> np.ndarray:
    """The same construction, one image at a time (the reference implementation).

    c0 (n,), ab (n, 2, K), xi (n, s, s, 2), offsets (n, 2): the draws of ``_draw``.
    """
    s, S = dist.size, dist.subcolumns
    k = np.arange(1, dist.terms + 1)
    t = (np.arange(s * S) + 0.5) / (s * S)
    amp = dist.amplitudes.numpy()
    sqrt_lam = np.sqrt(dist.eigenvalues.numpy())
    rows = np.arange(s)[:, None, None]
    out = np.empty((len(c0), 1, s, s), dtype=np.float32)
    for n in range(len(c0)):
        # c(t) = c0 + Σ_k amp_k (a_k cos 2πkt + b_k sin 2πkt), clipped to [0, s]
        phase = 2 * np.pi * k[:, None] * t[None, :]
        c = c0[n] + (amp * ab[n, 0]) @ np.cos(phase) + (amp * ab[n, 1]) @ np.sin(phase)
        h = np.clip(c, 0, s).reshape(s, S)
        if dist.antialias:  # exact vertical coverage, averaged over the sub-columns
            m = np.clip(h[None] - rows, 0, 1).mean(-1)
        else:
            m = (np.arange(s)[:, None] + 0.5 < h[None, :, 0]).astype(float)
        f = np.fft.ifft2(sqrt_lam * (xi[n, ..., 0] + 1j * xi[n, ..., 1]), norm="ortho")
        u1 = f.real + OFFSET_MEAN + OFFSET_STD * offsets[n, 0]
        u2 = f.imag + OFFSET_MEAN + OFFSET_STD * offsets[n, 1]
        out[n, 0] = m * u1 + (1 - m) * u2
    return out


def draws(dist: CAlpha, count: int, seed: int):
    """The random numbers of ``_draw`` in its order (generator → c0, ab, ξ, offsets)."""
    g = torch.Generator().manual_seed(seed)
    c0, ab = dist.draw_contour_coefficients(g, count)
    xi = torch.randn(count, dist.size, dist.size, 2, generator=g)
    offsets = torch.randn(count, 2, 1, 1, generator=g)
    return c0, ab, xi, offsets


def best_time(fn, repeats: int) -> float:
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def bench_sampler(size: int, images: int, loop: int, repeats: int) -> None:
    dist = CAlpha(size=size)
    dist.sample(dist.block_size, 0)  # warm-up
    fast = best_time(lambda: dist.sample(images, 1), repeats)
    c0, ab, xi, offsets = draws(dist, loop, seed=2)
    slow = best_time(lambda: loop_images(dist, c0.numpy(), ab.numpy(), xi.numpy(),
                                         offsets[:, :, 0, 0].numpy()), max(1, repeats // 2))
    reference = loop_images(dist, c0.numpy(), ab.numpy(), xi.numpy(), offsets[:, :, 0, 0].numpy())
    vectorized = dist._draw(torch.Generator().manual_seed(2), loop)[0].numpy()
    err = float(np.abs(reference - vectorized).max())
    print(f"calpha size={size} antialias={dist.antialias} threads={torch.get_num_threads()}")
    goal = "" if torch.get_num_threads() != 1 or size != 32 else (
        f"  (goal >= 30,000 on one thread: {'met' if images / fast >= 30_000 else 'NOT met'})")
    print(f"  vectorized sample({images}): {images / fast:10.0f} images/s  (best of {repeats})"
          + goal)
    print(f"  per-image loop ({loop}):     {loop / slow:10.0f} images/s")
    print(f"  ratio: {(images / fast) / (loop / slow):.1f}x   "
          f"(max |loop − vectorized| = {err:.1e})")


def bench_denoisers(size: int, n: int, sigmas) -> None:
    from datasets_synth.references.calpha import CAlphaContourEstimator, CAlphaOracle

    dist = CAlpha(size=size)
    x, lat = dist.sample_with_latents(n, 0)
    z = torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
    oracle, estimator = CAlphaOracle(dist), CAlphaContourEstimator(dist)
    start = time.perf_counter()
    oracle.decomposition(lat["mask"])
    print(f"oracle: eigendecomposition {1e3 * (time.perf_counter() - start) / n:.0f} ms/image")
    for sigma in sigmas:
        y = x + sigma * z
        start = time.perf_counter()
        oracle(y, sigma, latents=lat)
        t_oracle = time.perf_counter() - start
        start = time.perf_counter()
        estimator(y, sigma)
        t_est = time.perf_counter() - start
        print(f"  sigma={sigma:<5g} oracle {1e3 * t_oracle / n:7.2f} ms/image   "
              f"estimator {1e3 * t_est / n:7.1f} ms/image")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--images", type=int, default=30000, help="images per timed sample()")
    parser.add_argument("--loop-images", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", default="1,2", help="torch thread counts, comma-separated")
    parser.add_argument("--denoisers", action="store_true", help="also time the bracket")
    parser.add_argument("--denoiser-images", type=int, default=32)
    args = parser.parse_args()
    threads = torch.get_num_threads()
    for nt in (int(t) for t in args.threads.split(",")):
        torch.set_num_threads(nt)
        bench_sampler(args.size, args.images, args.loop_images, args.repeats)
    torch.set_num_threads(threads)
    if args.denoisers:
        bench_denoisers(args.size, args.denoiser_images, [0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2])


if __name__ == "__main__":
    main()

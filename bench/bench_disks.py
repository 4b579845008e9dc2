"""``disks`` rendering throughput against a straightforward per-image supersampling loop.

Goal (issue: disks family): ``Disks(size=32).sample`` draws at least 50,000 images/s on the
2-core CPU, and reports its ratio to a per-image Python loop that renders each disk by
8×8 supersampling (the obvious implementation) in the same process. Other processes share
the CPU, so each timing is the best of several repeats; both are measured with one and
with two torch threads (intra-op threads stall when the cores are busy).
With ``--denoisers`` it also times the MMSE bracket (oracle and posterior) per call, and
the two ways the references save renders (one thread): the quarter oracle's coarse grid
rendered once per box in a call of n images against one call per image (nothing shared),
and the ``ellipses`` family's circles (k <= 5) by the disks renderer against the ellipse
formula over the whole image.

    python bench/bench_disks.py [--n 25600] [--repeats 7] [--denoisers]
"""

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import best_time  # noqa: E402
from datasets_synth.manifolds import Disks  # noqa: E402


def naive_render(params: torch.Tensor, size: int, sub: int = 8) -> torch.Tensor:
    """Per-image loop: each pixel is the mean of ``sub × sub`` point samples of the disk."""
    coords = (torch.arange(size * sub, dtype=torch.float32) + 0.5) / sub
    images = []
    for cx, cy, r, a_f, a_b in params.tolist():
        inside = ((coords[:, None] - cy) ** 2 + (coords[None, :] - cx) ** 2 <= r * r).float()
        m = inside.view(size, sub, size, sub).mean((1, 3))
        images.append(a_b + (a_f - a_b) * m)
    return torch.stack(images).unsqueeze(1)


def throughput(dist: Disks, n: int, n_naive: int, repeats: int) -> tuple[float, float]:
    """Images/s of ``dist.sample`` and of the naive loop (best of ``repeats``)."""
    fast = n / best_time(lambda: dist.sample(n, seed=1), repeats=repeats)
    params = dist.sample_with_latents(n_naive, seed=1)[1]["params"].float()
    slow = n_naive / best_time(lambda: naive_render(params, dist.size), repeats=repeats)
    return fast, slow


def denoiser_costs(dist: Disks, n: int = 64, repeats: int = 3) -> None:
    """Seconds per call of the oracle and the posterior on n images, per σ."""
    from theorybench.evaluation import evaluation_noise

    refs = dist.reference_denoisers()
    oracle, posterior = refs["oracle-geometry"], refs["posterior"]
    x, latents = dist.sample_with_latents(n, seed=0)
    z = evaluation_noise(dist, 0, 0)[:n]
    build = best_time(posterior._build, repeats=1, warmup=0)
    print(f"posterior bank ({posterior.bank_size} masks) built in {build:.2f} s")
    for sigma in (0.01, 0.1, 1.0):
        y = x + sigma * z
        t_o = best_time(lambda y=y, s=sigma: oracle(y, s, latents=latents), repeats=repeats)
        t_p = best_time(lambda y=y, s=sigma: posterior(y, s), repeats=repeats)
        ess = posterior.last_diagnostics["ess"].median().item()
        print(f"sigma={sigma:<5} {n} images: oracle {t_o * 1e3:7.2f} ms, posterior "
              f"{t_p:6.2f} s ({t_p / n * 1e3:.1f} ms/image, median ESS {ess:.0f})")


def shared_renders(n: int = 32, repeats: int = 3) -> None:
    """Ratios of the references' shared renders to the same work without sharing."""
    from datasets_synth.ellipses import Ellipses, ellipse_coverage
    from theorybench.evaluation import evaluation_noise

    dist = Disks(size=32)
    quarter = dist.reference_denoisers()["oracle-radius-quarter"]
    x, latents = dist.sample_with_latents(n, seed=0)
    y = x + 0.1 * evaluation_noise(dist, 0, 0)[:n]
    params = latents["params"]
    shared = best_time(lambda: quarter(y, 0.1, latents=latents), repeats=1)
    alone = best_time(lambda: [quarter(y[i:i + 1], 0.1, latents={"params": params[i:i + 1]})
                               for i in range(n)], repeats=1)
    print(f"quarter oracle, {n} images at sigma=0.1: one call {shared:.2f} s, one call per "
          f"image {alone:.2f} s, ratio {shared / alone:.2f}")
    circles = Ellipses(k=3)
    for count in (64, 4096):
        g = circles.sample_with_latents(count, seed=0)[1]["params"][:, :3]
        fast = best_time(lambda g=g: circles.coverage(g), repeats=repeats)
        formula = best_time(lambda g=g: ellipse_coverage(circles.ellipse(g), circles.size),
                            repeats=repeats)
        print(f"ellipses k=3, {count} circles 16x16: disks renderer {fast * 1e3:.2f} ms, "
              f"ellipse formula {formula * 1e3:.2f} ms, ratio {fast / formula:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--n", type=int, default=25_600)
    parser.add_argument("--n-naive", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--denoisers", action="store_true")
    args = parser.parse_args()
    dist = Disks(size=args.size)
    threads = torch.get_num_threads()
    for nt in (1, 2):
        torch.set_num_threads(nt)
        fast, slow = throughput(dist, args.n, args.n_naive, args.repeats)
        print(f"threads={nt}  size={args.size}  vectorised sample: {fast:,.0f} images/s  "
              f"naive 8x8-supersampling loop: {slow:,.0f} images/s  ratio {fast / slow:.0f}x  "
              f"(goal >= 50,000 images/s: {'met' if fast >= 50_000 else 'NOT met'})")
    if args.denoisers:
        torch.set_num_threads(1)
        denoiser_costs(dist)
        shared_renders()
    torch.set_num_threads(threads)


if __name__ == "__main__":
    main()

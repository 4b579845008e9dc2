"""Empirical (memorizing) denoiser: FLOP rate against a plain torch.matmul of the same size.

Goal (issue 3): 10,000 training images of 32×32, a batch of 256, at least 70% of the FLOP
rate of ``torch.matmul`` (256, 1024) @ (1024, 10000) in the same process.

    python bench/bench_empirical.py
"""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import best_time, matmul_flop_rate  # noqa: E402
from theorybench import empirical_denoiser  # noqa: E402


def main(n_train: int = 10_000, batch: int = 256, side: int = 32, sigma: float = 0.2) -> float:
    g = torch.Generator().manual_seed(0)
    d = side * side
    train = torch.rand(n_train, 1, side, side, generator=g)
    y = train[:batch] + sigma * torch.randn(batch, 1, side, side, generator=g)
    f = empirical_denoiser(train)
    seconds = best_time(lambda: f(y, sigma), repeats=5)
    flops = 2 * (2 * batch * d * n_train)  # logits ⟨y, x_i⟩ and the weighted sum Σ w_i x_i
    rate = flops / seconds
    reference = matmul_flop_rate(batch, d, n_train)
    print(f"threads={torch.get_num_threads()}  N={n_train} batch={batch} d={d}")
    print(f"empirical denoiser: {seconds * 1e3:.1f} ms, {rate / 1e9:.1f} GFLOP/s")
    print(f"torch.matmul ({batch},{d})@({d},{n_train}): {reference / 1e9:.1f} GFLOP/s")
    print(f"ratio: {rate / reference:.2f} (goal >= 0.70)")
    return rate / reference


if __name__ == "__main__":
    main()

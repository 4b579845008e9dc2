"""LS and ELS machines: FLOP rate against a plain torch.matmul of the logits' shape.

The default memorization sweep's largest cell: disks 16×16, N = 1000 training images,
32 samples, patch side 5 (K = 25). LS computes ``2·b·d·N·(K + c)`` flops per call (the
per-location logits and weighted sums), ELS ``2·b·d·M·(2K + 1 + c + 1)`` over its M
distinct candidate patches (augmented rows, see ``theorybench/denoisers/local.py``).
The reference is ``torch.matmul`` of the ELS logits' shape, (b·d, 2K + 1) @ (2K + 1, M).
Then the LS candidates at a large side (P = 15, which the sweep's calibration picks at
large σ; N·d·K is then over the cache budget, so they are built at every call): built
location-major against transposing ``F.unfold``'s output (goal < 1).

    python bench/bench_local.py
"""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import best_time, matmul_flop_rate  # noqa: E402
from datasets_synth import get  # noqa: E402
from theorybench.denoisers.local import (  # noqa: E402
    equivariant_local_empirical,
    local_empirical,
    location_patches,
    patches,
)


def main(n_train: int = 1000, batch: int = 32, side: int = 16, patch: int = 5,
         sigma: float = 0.1) -> dict:
    dist = get("disks", size=side)
    train = dist.sample(n_train, 1)
    g = torch.Generator().manual_seed(0)
    y = dist.sample(batch, 2) + sigma * torch.randn(batch, 1, side, side, generator=g)
    d, k = side * side, patch * patch
    ls, els = local_empirical(train, patch), equivariant_local_empirical(train, patch)
    els(y[:1], sigma)  # builds the candidate table once (cached per patch side)
    m = len(els._candidate_patches(train, patch)[0])
    rates = {}
    for name, machine, flops in (("LS", ls, 2 * batch * d * n_train * (k + 1)),
                                 ("ELS", els, 2 * batch * d * m * (2 * k + 3))):
        seconds = best_time(lambda machine=machine: machine(y, sigma), repeats=3)
        rates[name] = flops / seconds
        print(f"{name}: {seconds * 1e3:.0f} ms per call, {rates[name] / 1e9:.1f} GFLOP/s")
    reference = matmul_flop_rate(batch * d, 2 * k + 1, m)
    print(f"threads={torch.get_num_threads()}  N={n_train} batch={batch} d={d} P={patch} "
          f"distinct ELS candidates M={m} (of {n_train * (side - patch + 1) ** 2})")
    print(f"torch.matmul ({batch * d},{2 * k + 1})@({2 * k + 1},{m}): "
          f"{reference / 1e9:.1f} GFLOP/s")
    for name, rate in rates.items():
        print(f"{name} ratio: {rate / reference:.2f}")
    big = 15
    built = best_time(lambda: location_patches(train, big, "crop"), repeats=3)
    transposed = best_time(lambda: patches(train, big, "crop").permute(1, 2, 0).contiguous(),
                           repeats=3)
    print(f"LS candidates at P={big} ({n_train * d * big * big * 4 / 2 ** 20:.0f} MiB): built "
          f"location-major {built * 1e3:.0f} ms, transposed from unfold "
          f"{transposed * 1e3:.0f} ms; ratio {built / transposed:.2f}")
    return {**{name: rate / reference for name, rate in rates.items()},
            "candidates": built / transposed}


if __name__ == "__main__":
    main()

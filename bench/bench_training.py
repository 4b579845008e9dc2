"""Training-loop overhead and FLOP rate of ``theorybench.training.train``.

Prints (a) the time of one ``train()`` step (data generation, noise, σ draws, mean-image
centring, schedule, divergence checks and the held-out monitor included; universal mode,
``kl`` objective, held-out error every 75 steps, as in the default preset) over that of a
bare PyTorch loop on pre-generated tensors computing the same loss with the same network
and optimizer, measured alternately in the same process (goal: <= 1.10); (b) the training
step's achieved FLOP rate (convolutions counted analytically, forward + 2 × forward for
the backward pass) against a square ``torch.matmul`` of about the same FLOP count.
``--family`` picks the distribution whose images ``train()`` draws (gaussian by default;
calpha and disks draw on the training device): the bare loop's pre-generated tensors are
the upper bound a data pipeline can reach, so (a) also says whether the GPU waits on data.

    python bench/bench_training.py [--steps 64] [--repeats 3] [--device auto]
                                   [--family gaussian] [--arch unet] [--channels 16]
                                   [--blocks 2] [--convs 1] [--depth 6] [--size 32]
                                   [--batch 32] [--threads 0]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import datasets_synth  # noqa: E402
from tbcore.validation import resolve_device  # noqa: E402
from theorybench.networks import NetConfig, build_network, forward_flops  # noqa: E402
from theorybench.train_config import TrainConfig  # noqa: E402
from theorybench.training import train  # noqa: E402


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def clocks() -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process)."""
    return time.perf_counter(), time.process_time()


def per_step(start: tuple[float, float], steps: int) -> tuple[float, float]:
    wall, cpu = clocks()
    return (wall - start[0]) / steps, (cpu - start[1]) / steps


def time_train(dist, net_cfg, train_cfg, device) -> tuple[float, float]:
    """(wall, CPU) seconds per step of ``train`` (set-up included)."""
    sync(device)
    start = clocks()
    train(dist, net_cfg, train_cfg, device=device)
    sync(device)
    return per_step(start, train_cfg.steps)


def time_bare(dist, net_cfg, train_cfg, device) -> tuple[float, float]:
    """(wall, CPU) seconds per step of a plain loop: pre-generated x, z and log-uniform σ,
    the same net, loss ``mean(((r − σz)/σ)²)`` and Adam."""
    B, steps = train_cfg.batch_size, train_cfg.steps
    gen = torch.Generator().manual_seed(5)
    x = dist.sample(B * steps, 5).to(device).view(steps, B, *dist.shape)
    z = torch.randn(x.shape, generator=gen).to(device)
    lo, hi = train_cfg.sigma_min, train_cfg.sigma_max
    sigma = (lo * (hi / lo) ** torch.rand(steps, B, 1, 1, 1, generator=gen)).to(device)
    net = build_network(net_cfg, device=device).train()
    optimizer = torch.optim.Adam(net.parameters(), lr=train_cfg.lr)
    sync(device)
    start = clocks()
    for k in range(steps):
        noise = sigma[k] * z[k]
        loss = torch.mean(((net(x[k] + noise) - noise) / sigma[k]) ** 2)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    sync(device)
    return per_step(start, steps)


def matmul_rate(n: int, device: torch.device, repeats: int = 5) -> float:
    """FLOP/s of an n×n by n×n float32 matmul (best of ``repeats``)."""
    gen = torch.Generator().manual_seed(0)
    a, b = (torch.randn(n, n, generator=gen).to(device) for _ in range(2))
    torch.matmul(a, b)
    best = float("inf")
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        torch.matmul(a, b)
        sync(device)
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--arch", default="unet", choices=["bfcnn", "unet"])
    parser.add_argument("--depth", type=int, default=6)
    parser.add_argument("--channels", type=int, default=16)
    parser.add_argument("--blocks", type=int, default=2)
    parser.add_argument("--convs", type=int, default=1, help="convolutions per UNet block")
    parser.add_argument("--family", default="gaussian", help="a registered distribution")
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: keep)")
    args = parser.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)

    device = resolve_device(args.device)
    dist = datasets_synth.get(args.family, size=args.size)
    net_cfg = NetConfig(arch=args.arch, depth=args.depth, channels=args.channels,
                        blocks=args.blocks, convs_per_block=args.convs)
    train_cfg = TrainConfig(mode="universal", objective="kl", sigma_min=0.01, sigma_max=2.0,
                            center=True, monitor_sigmas=(0.01, 0.1, 1.0), monitor_every=75,
                            steps=args.steps,
                            batch_size=args.batch, lr=1e-3)
    time_bare(dist, net_cfg, TrainConfig(steps=4, batch_size=args.batch), device)  # warm-up
    train_times, bare_times = [], []
    for r in range(args.repeats):  # alternate (and swap the order), so load hits both alike
        for which in ((0, 1) if r % 2 == 0 else (1, 0)):
            if which == 0:
                train_times.append(time_train(dist, net_cfg, train_cfg, device))
            else:
                bare_times.append(time_bare(dist, net_cfg, train_cfg, device))
    # best of the repeats: the least disturbed by other load on the machine
    t_train, c_train = (min(t[i] for t in train_times) for i in (0, 1))
    t_bare, c_bare = (min(t[i] for t in bare_times) for i in (0, 1))
    print(f"device {device}, torch threads {torch.get_num_threads()}, {net_cfg}")
    print(f"batch {args.batch} at {args.size}x{args.size}, {args.steps} steps, "
          f"{args.repeats} alternating repeats (best of each)")
    print(f"(a) train() step {t_train * 1e3:.1f} ms, bare loop {t_bare * 1e3:.1f} ms, "
          f"ratio {t_train / t_bare:.3f} (goal <= 1.10)")
    print(f"    CPU time of this process: train() {c_train * 1e3:.1f} ms, "
          f"bare {c_bare * 1e3:.1f} ms, "
          f"ratio {c_train / c_bare:.3f} (robust to other load on CPU with --threads 1)")
    flops = 3 * forward_flops(net_cfg, args.size, args.size) * args.batch  # fwd + 2x fwd
    n = max(256, round((flops / 2) ** (1 / 3) / 64) * 64)
    rate_step, rate_mm = flops / t_train, matmul_rate(n, device)
    print(f"(b) training step {flops / 1e9:.2f} GFLOP -> {rate_step / 1e9:.1f} GFLOP/s; "
          f"matmul {n}x{n} {rate_mm / 1e9:.1f} GFLOP/s; ratio {rate_step / rate_mm:.2f}")


if __name__ == "__main__":
    main()

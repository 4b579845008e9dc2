"""Training-loop overhead and FLOP rate of ``theorybench.training.train``.

Prints (a) the time of one ``train()`` step (data generation, noise, σ draws, mean-image
centring, schedule and divergence checks included; universal mode, ``kl`` objective) over
that of a bare PyTorch loop on pre-generated tensors computing the same loss with the
same network and optimizer (goal: <= 1.10); the step is the difference between a
training of 2 × ``--steps`` steps and one of ``--steps``, so the set-up that a training
pays once (network, mean image and calibration images, the compiled function's first
call) is reported apart instead of spread over the bench's few steps (a preset trains
thousands); and the cost of the held-out monitor (the
preset's σ, every steps // 20 steps) per step of the preset's universal training, measured as
the difference between ``train()`` with and without it (a short bench over-weights the
monitor: it also measures at step 0 and at the end); (b) the training step's achieved
FLOP rate (convolutions counted analytically, forward + 2 × forward for the backward
pass) against a square ``torch.matmul`` of about the same FLOP count, in the preset's
arithmetic. With a preset whose training is compiled (``Preset.compile``) or runs its
forward in bfloat16 (``Preset.precision``), both loops of (a) do so too (the compilation
itself happens in a warm-up, outside the timings) and (a) also reports the speed-up of
the preset's ``train()`` steps over eager float32 ones.

``--family`` picks the distribution whose images ``train()`` draws (gaussian by default;
gaussian, calpha and disks draw on the training device, a GPU too): the bare loop's
pre-generated tensors are the upper bound a data pipeline can reach, so (a) also says
whether the GPU waits on data. The three loops of a repeat run back to back and (a)
reports the median and range of the ratios within each repeat: on a shared 2-core VM the
machine's speed drifts by ±20 % over tens of seconds (best-of timings of one loop and the
other gave ratios from 0.98 to 1.33 for the same code, 2026-12-04), so only timings taken
together compare. With ``--threads 1`` the CPU-time ratio is the one to read on a CPU.

The network (the preset's for ``--family``: with its ``net_by_family`` fields), batch,
image size, σ range and monitor are those of ``--preset`` (default: the default preset;
``gpu`` for the gpu preset's).

    python bench/bench_training.py [--preset default] [--steps 100] [--repeats 7]
                                   [--device auto] [--family gaussian] [--threads 0]
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import datasets_synth  # noqa: E402
from tbcore.validation import resolve_device  # noqa: E402
from theorybench.blind_shrink import BlindShrink  # noqa: E402
from theorybench.experiments.presets import PRESETS  # noqa: E402
from theorybench.networks import build_network, forward_flops, net_config_for  # noqa: E402
from theorybench.train_config import TrainConfig  # noqa: E402
from theorybench.training import compile_settings, train  # noqa: E402


def measurements(steps: int, every: int) -> int:
    """Held-out measurements of a ``steps``-step training: step 0, every ``every`` steps,
    and the end."""
    return len(range(0, steps, every)) + 1


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
    the same net (a ``BlindShrink`` calibrated, as ``train`` does; ``torch.compile``d when
    ``train_cfg.compile``, its forward in bfloat16 with ``precision="bf16"``), loss
    ``mean(((r − σz)/σ)²)`` and Adam."""
    B, steps = train_cfg.batch_size, train_cfg.steps
    gen = torch.Generator().manual_seed(5)
    x = dist.sample(B * steps, 5).to(device).view(steps, B, *dist.shape)
    z = torch.randn(x.shape, generator=gen).to(device)
    lo, hi = train_cfg.sigma_min, train_cfg.sigma_max
    sigma = (lo * (hi / lo) ** torch.rand(steps, B, 1, 1, 1, generator=gen)).to(device)
    net = build_network(net_cfg, device=device).train()
    if isinstance(net, BlindShrink):  # acting, as in train(): calibrated on clean images
        clean = x.flatten(0, 1)
        net.calibrate(clean - clean.mean(0))
    optimizer = torch.optim.Adam(net.parameters(), lr=train_cfg.lr)
    step_net = torch.compile(net, dynamic=False) if train_cfg.compile else net
    low_precision = train_cfg.precision == "bf16"
    with compile_settings(train_cfg.compile):  # as train() compiles
        sync(device)
        start = clocks()
        for k in range(steps):
            noise = sigma[k] * z[k]
            with torch.autocast(device.type, torch.bfloat16, enabled=low_precision):
                residual = step_net(x[k] + noise)
            loss = torch.mean(((residual - noise) / sigma[k]) ** 2)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        sync(device)
        return per_step(start, steps)


def matmul_rate(n: int, device: torch.device, repeats: int = 5,
                dtype: torch.dtype = torch.float32) -> float:
    """FLOP/s of an n×n by n×n matmul in ``dtype`` (best of ``repeats``)."""
    gen = torch.Generator().manual_seed(0)
    a, b = (torch.randn(n, n, generator=gen).to(device, dtype) for _ in range(2))
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
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--preset", default="default", choices=sorted(PRESETS),
                        help="whose network, batch, image size, σ range and monitor to time")
    parser.add_argument("--family", default="gaussian", help="a registered distribution")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: keep)")
    args = parser.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)

    device = resolve_device(args.device)
    preset = PRESETS[args.preset]
    dist = datasets_synth.get(args.family, size=preset.size)
    net_cfg = net_config_for(preset.family_net(args.family), dist)
    batch = preset.batch_size
    train_cfg = TrainConfig(mode="universal", objective="kl", sigma_min=preset.sigmas[0],
                            sigma_max=preset.sigmas[-1], center=True, monitor_sigmas=(),
                            steps=args.steps, batch_size=batch, lr=1e-3,
                            compile=preset.compile, precision=preset.precision)
    # the bench's short training measures its monitor at the cadence of the preset's
    # universal training (TrainConfig.monitor_interval of its steps)
    preset_steps = preset.universal_steps_by_family.get(args.family, preset.universal_steps)
    every = dataclasses.replace(train_cfg, steps=preset_steps).monitor_interval
    monitored = dataclasses.replace(train_cfg, monitor_sigmas=preset.monitor_sigmas,
                                    monitor_every=every)
    eager = dataclasses.replace(train_cfg, compile=False, precision="fp32")
    for cfg in dict.fromkeys((train_cfg, eager)):  # warm-up and compilation, untimed: the
        time_bare(dist, net_cfg, cfg, device)  # same images, so the same shrinkage state
        time_train(dist, net_cfg, cfg, device)
    double = dataclasses.replace(train_cfg, steps=2 * args.steps)
    loops = {"train": lambda: time_train(dist, net_cfg, train_cfg, device),
             "double": lambda: time_train(dist, net_cfg, double, device),
             "monitored": lambda: time_train(dist, net_cfg, monitored, device),
             "bare": lambda: time_bare(dist, net_cfg, train_cfg, device)}
    if train_cfg != eager:
        loops["eager"] = lambda: time_train(dist, net_cfg, eager, device)
    times = {name: [] for name in loops}
    for r in range(args.repeats):  # one of each, back to back, in a rotating order
        for name in list(loops)[r % len(loops):] + list(loops)[:r % len(loops)]:
            times[name].append(loops[name]())
    # ratios within each repeat: the machine's speed drifts by ±20 % over tens of seconds
    # on a shared VM, so single timings are not comparable, back-to-back ones are
    # with T(n) = set-up + n·step: 2·T(2S)/(2S) − T(S)/S = step, without the set-up
    times["step"] = [tuple(2 * b - a for a, b in zip(short, long, strict=True))
                     for short, long in zip(times["train"], times["double"], strict=True)]
    setups = sorted((a[0] - b[0]) * args.steps
                    for a, b in zip(times["train"], times["step"], strict=True))
    setup = statistics.median(setups)
    setup_text = f"{setup * 1e3:.0f} ms, range {setups[0] * 1e3:.0f}–{setups[-1] * 1e3:.0f}"
    if setup <= 0:  # a difference of two noisy timings
        setup_text += ": below this bench's resolution (more --steps or --repeats)"
    wall = {name: statistics.median(t[0] for t in ts) for name, ts in times.items()}
    print(f"device {device}, torch threads {torch.get_num_threads()}, {net_cfg}")
    print(f"preset {preset.name}: batch {batch} at {preset.size}x{preset.size}, "
          f"{args.steps} steps, {args.repeats} repeats")
    kind = ("compiled" if train_cfg.compile else "eager") + (
        ", forward in bfloat16" if train_cfg.precision == "bf16" else "")
    print(f"(a) train() step {wall['step'] * 1e3:.1f} ms (its set-up, once per training: "
          f"{setup_text}), bare loop {wall['bare'] * 1e3:.1f} ms (wall, medians, both "
          f"{kind}); ratio within a repeat (goal <= 1.10):")
    for i, clock in enumerate(("wall", "CPU time of this process")):
        ratios = sorted(a[i] / b[i] for a, b in zip(times["step"], times["bare"], strict=True))
        print(f"    {clock}: median {statistics.median(ratios):.3f}, "
              f"range {ratios[0]:.3f}–{ratios[-1]:.3f}")
    extra = statistics.median(a[0] - b[0] for a, b in
                              zip(times["monitored"], times["train"], strict=True))
    per_measurement = extra * args.steps / measurements(args.steps, every)
    in_preset = per_measurement * measurements(preset_steps, every)
    print(f"    held-out monitor: {per_measurement * 1e3:.0f} ms per measurement; at its "
          f"cadence in a {preset_steps}-step training {in_preset / preset_steps * 1e3:.2f} ms "
          f"per step, {in_preset / preset_steps / wall['bare']:.1%} of the bare step")
    if "eager" in times:
        speedup = sorted(a[0] / b[0] for a, b in zip(times["eager"], times["train"], strict=True))
        print(f"    the preset's steps ({kind}): {statistics.median(speedup):.2f}× faster than "
              f"eager float32 train() steps ({wall['eager'] * 1e3:.1f} ms; range "
              f"{speedup[0]:.2f}–{speedup[-1]:.2f})")
    flops = 3 * forward_flops(net_cfg, preset.size, preset.size) * batch  # fwd + 2x fwd
    n = max(256, round((flops / 2) ** (1 / 3) / 64) * 64)
    dtype = torch.bfloat16 if train_cfg.precision == "bf16" else torch.float32
    rate_step, rate_mm = flops / wall["step"], matmul_rate(n, device, dtype=dtype)
    print(f"(b) training step {flops / 1e9:.2f} GFLOP -> {rate_step / 1e9:.1f} GFLOP/s; "
          f"{str(dtype)[6:]} matmul {n}x{n} {rate_mm / 1e9:.1f} GFLOP/s; "
          f"ratio {rate_step / rate_mm:.2f}")


if __name__ == "__main__":
    main()

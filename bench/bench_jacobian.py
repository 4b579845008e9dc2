"""Jacobian of a bias-free UNet: batched autodiff against one backward pass per output pixel.

Goal: for the 16-channel bias-free UNet on a 32×32 image, ``theorybench.jacobian.jacobian``
is at least 10× faster than the per-pixel loop (one forward pass, then d backward passes
with ``retain_graph``, as the paper's authors compute it) and identical to 1e-5.

    python bench/bench_jacobian.py [--device cuda] [--size 32] [--channels 16]

``--mode topk``: the full eigen-analysis (exact J, then ``eigh`` of (J + Jᵀ)/2) against the
top-K one from Jacobian–vector products (``jacobian_spectrum(..., k=K)``). Goal: on a 64×64
image with the 16-channel UNet on the CPU, top-K (K = 32) at least 10× faster, its
eigenvalues within 1e-3 of the full ones.

    python bench/bench_jacobian.py --mode topk [--size 64] [--k 32]

The network's weights are He-normal (output layer included, so that J is not the
identity of the untrained network) and batch-norm running σ are random; it runs in eval
mode, float32, with TF32 off on GPUs so that both computations are exact float32.
"""

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from theorybench.jacobian import jacobian, jacobian_spectrum, subspace_angles  # noqa: E402
from theorybench.networks import BFBatchNorm, NetConfig, build_network  # noqa: E402


def unet_denoiser(channels: int, device) -> callable:
    """``f(y) = y − r(y)`` with a randomly initialized bias-free UNet in eval mode."""
    g = torch.Generator().manual_seed(0)
    net = build_network(NetConfig(arch="unet", channels=channels), generator=g)
    with torch.no_grad():
        convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
        out = convs[-1].weight
        out.normal_(0.0, 0.1 * (2.0 / out[0].numel()) ** 0.5, generator=g)
        for m in net.modules():
            if isinstance(m, BFBatchNorm):
                m.running_sd.uniform_(0.8, 1.25, generator=g)
    net = net.eval().to(device)
    for p in net.parameters():
        p.requires_grad_(False)
    return lambda y, sigma: y - net(y)


def per_pixel_loop(f, y: torch.Tensor, sigma: float) -> torch.Tensor:
    """The reference: one forward pass, then one backward pass per output pixel."""
    leaf = y.clone().requires_grad_(True)
    out = f(leaf, sigma).reshape(-1)
    d = out.numel()
    J = torch.empty(d, d, device=y.device)
    for i in range(d):
        (row,) = torch.autograd.grad(out[i], leaf, retain_graph=True)
        J[i] = row.reshape(-1)
    return J


def timed(fn, device) -> tuple[float, torch.Tensor]:
    """(seconds, result) of one call, synchronizing the GPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    result = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start, result


def setup(device: str, size: int, channels: int, sigma: float):
    """(device, denoiser, noisy image (1, 1, size, size) on the device, d): exact float32
    (TF32 off on GPUs), the same image for every mode."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
    f = unet_denoiser(channels, device)
    g = torch.Generator().manual_seed(1)
    x = torch.rand(1, 1, size, size, generator=g)
    y = (x + sigma * torch.randn(x.shape, generator=g)).to(device)
    return device, f, y, size * size


def main(device: str = "cpu", size: int = 32, channels: int = 16, sigma: float = 0.1,
         repeats: int = 3, method: str = "auto") -> float:
    device, f, y, d = setup(device, size, channels, sigma)

    timed(lambda: jacobian(f, y, sigma, method=method), device)  # warm-up (cuDNN, allocator)
    timed(lambda: per_pixel_loop(f, y[..., :8, :8], sigma), device)
    t_loop, J_loop = timed(lambda: per_pixel_loop(f, y, sigma), device)
    runs = [timed(lambda: jacobian(f, y, sigma, method=method), device) for _ in range(repeats)]
    t_fast, J_fast = min(runs, key=lambda r: r[0])
    diff = float((J_fast - J_loop).abs().max())
    fy = f(y, sigma).reshape(-1).double()
    homogeneity = float((J_fast.double() @ y.reshape(-1).double() - fy).norm() / fy.norm())

    print(f"device={device} threads={torch.get_num_threads()} unet channels={channels} "
          f"image {size}x{size} (d={d}) method={method}")
    print(f"per-pixel loop (1 forward + {d} backward): {t_loop:.3f} s")
    print(f"jacobian (batched, best of {repeats}): {t_fast:.3f} s")
    print(f"ratio: {t_loop / t_fast:.1f}x (goal >= 10)")
    print(f"max |J_fast - J_loop|: {diff:.2e} (goal <= 1e-5); "
          f"max |J| {float(J_loop.abs().max()):.2f}")
    print(f"homogeneity ||J y - f(y)|| / ||f(y)||: {homogeneity:.2e}")
    return t_loop / t_fast


def main_topk(device: str = "cpu", size: int = 64, channels: int = 16, sigma: float = 0.1,
              k: int = 32, repeats: int = 3) -> float:
    """Full (exact J + eigh) against top-k (JVPs) eigen-analysis: prints and returns the ratio."""
    device, f, y, d = setup(device, size, channels, sigma)

    def clocked(fn):  # (wall s, process CPU s, result): CPU time is less hurt by other load
        cpu = time.process_time()
        wall, result = timed(fn, device)
        return wall, time.process_time() - cpu, result

    timed(lambda: jacobian_spectrum(f, y[..., :16, :16], sigma, k=8), device)  # warm-up
    runs = [clocked(lambda: jacobian_spectrum(f, y, sigma, k=k)) for _ in range(repeats)]
    t_top, c_top, top = min(runs, key=lambda r: r[0])
    t_full, c_full, full = clocked(lambda: jacobian_spectrum(f, y, sigma))
    err = float((top.eigenvalues - full.eigenvalues[:k]).abs().max())
    angle = float(subspace_angles(top.eigenvectors, full.eigenvectors[:, :k]).max())
    gap = float(full.eigenvalues[k - 1] - full.eigenvalues[k])

    print(f"device={device} threads={torch.get_num_threads()} unet channels={channels} "
          f"image {size}x{size} (d={d}) k={k}")
    print(f"full (exact J: {d} rows, then eigh of (J + J^T)/2): {t_full:.2f} s "
          f"(CPU {c_full:.1f} s)")
    print(f"top-{k} (Jacobian-vector products: {top.products} J v and J^T v; best of "
          f"{repeats}): {t_top:.2f} s (CPU {c_top:.1f} s)")
    print(f"ratio: {t_full / t_top:.1f}x wall, {c_full / c_top:.1f}x CPU (goal >= 10)")
    print(f"max |eigenvalue top-k - full|: {err:.2e} (goal <= 1e-3); largest residual "
          f"{float(top.residual_norms.max()):.1e}; eigenvalues {float(full.eigenvalues[0]):.4f}"
          f" ... {float(full.eigenvalues[k - 1]):.4f}")
    print(f"largest angle between top-{k} spans: {angle:.3f} rad (gap lambda_k - lambda_k+1 "
          f"= {gap:.1e})")
    print(f"trace: exact {full.trace:.3f}, Hutchinson {top.trace:.3f} +- {top.trace_se:.3f} "
          f"({(top.trace - full.trace) / max(top.trace_se, 1e-300):+.1f} SE); asymmetry "
          f"{full.asymmetry:.4f} vs estimate {top.asymmetry:.4f}")
    return t_full / t_top


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", default="rows", choices=("rows", "topk"),
                        help="rows: batched J against the per-pixel loop; topk: full against "
                             "top-K eigen-analysis")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--size", type=int, default=None, help="image side (32 rows, 64 topk)")
    parser.add_argument("--channels", type=int, default=16)
    parser.add_argument("--sigma", type=float, default=0.1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--method", default="auto", choices=("auto", "vmap", "replicate"))
    parser.add_argument("--k", type=int, default=32, help="topk: eigenpairs computed")
    args = parser.parse_args()
    if args.mode == "topk":
        main_topk(args.device, args.size or 64, args.channels, args.sigma, args.k, args.repeats)
    else:
        main(args.device, args.size or 32, args.channels, args.sigma, args.repeats, args.method)

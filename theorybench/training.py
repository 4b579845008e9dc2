"""``train``: fit a bias-free network to denoise a distribution (a ``NetworkDenoiser``).

The network ``r`` predicts the noise residual ``σ z`` of ``y = x + σ z``; the denoiser is
``f(y) = y − r(y − μ̂)``, where ``μ̂`` is the training data's mean image when
``center=True`` (a bias-free ``r`` is homogeneous, so ``f`` is homogeneous about ``μ̂``:
it can output the mean image at large σ, which a homogeneous map of ``y`` cannot) and 0
otherwise. Least squares learns the posterior mean, hence the score (SCIENCE.md §1–2).

Two modes (Kadkhodaie et al. 2024, App. A): ``per-sigma`` (one σ for every image) and
``universal`` (σ drawn per image; the blind network denoises a whole range). Two
objectives (:func:`draw_sigma`, :func:`objective_loss`):

* ``kl`` (SCIENCE.md §4c): ``ln σ ~ U[ln σ_min, ln σ_max]`` and the noise-prediction loss
  ``‖r/σ − z‖²/d = ‖f(y) − x‖²/(d σ²)``. Since ``dσ/σ = d ln σ``,
  ``d · ln(σ_max/σ_min) · E[loss] = ∫_{σ_min}^{σ_max} MSE(f, σ) σ⁻³ dσ`` (total MSE): the
  loss is the KL integral of :mod:`theorybench.kl` up to the θ-free ``∫ MMSE σ⁻³ dσ``, so
  training minimizes exactly what the report measures.
* ``balanced``: the same σ law, loss weight ``σ⁻² + σ_data⁻²`` instead of ``σ⁻²`` (the
  weight λ(σ) of Karras et al. 2022, EDM): equal to ``kl`` where σ ≪ σ_data, and a floor
  that keeps the large σ the sampler starts from in the loss (SCIENCE.md §4c: a network
  meant for sampling needs both ends). It bounds the KL integral from above.
* ``paper``: σ = σ_max · u², u ~ U(0, 1) (the paper's code) and the unweighted per-pixel
  loss ``‖r − σz‖²/d``; σ < 0.05 then carries < 0.5 % of the loss at the optimum.

A per-σ network knows its σ, so it may be preconditioned (``precondition``, EDM's
scalings, :func:`~theorybench.train_config.edm_scales`): ``f(y) = μ̂ + c_skip (y − μ̂) −
c_out r(y − μ̂)``. Where σ exceeds the data's scale the residual form asks ``r`` to
reproduce the noise ``y − μ̂`` almost exactly (at σ = 2 on the Gaussian field, 5 % of
error in that copy costs more than the whole gain of the Wiener filter over the mean
image); the preconditioned form starts from a shrinkage toward μ̂ and learns a small
correction.
A per-σ network may start from another network's weights (``init=``, e.g. the universal
network: a warm start along the σ ladder; preconditioned, with the output layer zeroed).
During training the held-out MSE at ``monitor_sigmas`` is measured on fixed images and
noise every ``monitor_interval`` steps and kept in the history; :func:`converged` flags a
network whose held-out error still fell by more than 5 % over its last 20 % of steps.

Data: fresh images every step for an endless distribution (step k uses images
``k·B … k·B + B − 1`` of the stream of ``TRAIN_DATA_SEED + seed``, a stream disjoint
from the small seeds used for evaluation; drawn on the training device by the families
that can, so a GPU does not wait on the CPU: on a GPU that device's stream, other values
of the same law), or a fixed training set, moved to the device once and drawn in seeded
minibatches (a fresh random permutation per epoch). Images, noise and σ are generated
``CHUNK_STEPS`` steps at a time to keep the per-step overhead low. All randomness comes
from explicit generators: on one machine the same seed gives the same weights. With
``compile`` the training steps run a ``torch.compile`` of the network (sharing its weights);
the first such training in a process compiles (seconds to a minute, cached on disk for the
next process), later ones of the same architecture, image size and mode reuse the code
(static shapes: the code of a network depends on its own shape only). With
``precision="bf16"`` the training forward runs under ``torch.autocast`` in bfloat16: its
output, the residual, is rounded to bfloat16 (2⁻⁹ relative) before the float32 loss; the
parameters, the optimizer, the batch-norm statistics and everything after training stay
float32.
"""

from __future__ import annotations

import contextlib
import functools
import time
import warnings
from collections.abc import Iterator

import numpy as np
import torch
from tqdm.auto import tqdm

from tbcore.seeding import block_generator
from tbcore.validation import resolve_device

from .blind_shrink import BlindShrink
from .denoisers.network import NetworkDenoiser, centered, network_residual
from .networks import BFBatchNorm, NetConfig, build_network, zero_output_layer
from .train_config import TrainConfig, edm_scales

CHUNK_STEPS = 16  # steps of data generated at once (part of the random stream's layout)
AUTO_IMAGES = 256  # training images on which precondition="auto" compares its two starts
TRAIN_DATA_SEED = 2**41  # training images use seed TRAIN_DATA_SEED + seed
STREAM_INIT, STREAM_NOISE, STREAM_BATCHES = 11, 12, 13  # generator streams of one training
STREAM_MONITOR = 14  # noise of the held-out monitoring images
MONITOR_SEED = 2**42  # held-out monitoring images: a seed disjoint from training and tests
CENTER_IMAGES = 1024  # images averaged into the mean image μ̂ (endless distributions)
CONVERGENCE_DROP, CONVERGENCE_TAIL = 0.05, 0.2  # "not converged": > 5 % drop over the last 20 %
COMPILED_VARIANTS = 64  # compile=True: compiled versions of one forward function per process
COMPILE_LIMITS = {"recompile_limit": COMPILED_VARIANTS, "fail_on_recompile_limit_hit": True}


class TrainingDiverged(RuntimeError):
    """The training loss became NaN or infinite."""


# -- training -------------------------------------------------------------------------
def draw_sigma(cfg: TrainConfig, count: int, generator: torch.Generator,
               device) -> torch.Tensor:
    """Noise levels (count, 1, 1, 1) of one chunk of training images (pixel units).

    per-sigma: ``cfg.sigma``; universal ``kl`` and ``balanced``: ``ln σ ~ U[ln σ_min,
    ln σ_max]`` (SCIENCE.md §4c); universal ``paper``: ``σ = σ_max u²``, ``u ~ U(0, 1)``.
    """
    if cfg.mode == "per-sigma":
        return torch.full((count, 1, 1, 1), cfg.sigma, device=device)
    u = torch.rand(count, 1, 1, 1, generator=generator, device=device)
    if cfg.objective == "paper":
        return cfg.sigma_max * u.square()
    return cfg.sigma_min * (cfg.sigma_max / cfg.sigma_min) ** u


def objective_loss(residual: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor,
                   objective: str, sigma_data: float = 0.25) -> torch.Tensor:
    """The training loss of one batch (a scalar).

    Parameters
    ----------
    residual : (n, c, h, w)   ``y − f(y)``: the network's prediction ``r`` in the residual
        form, ``(1 − c_skip)(y − μ̂) + c_out r`` when preconditioned.
    noise : (n, c, h, w)      the added noise ``σ z``.
    sigma : (n, 1, 1, 1)      each image's σ.
    objective : "kl" → mean of ``(r/σ − z)² = (f(y) − x)²/σ²`` (SCIENCE.md §4c: times
        ``d · ln(σ_max/σ_min)`` its expectation is ``∫ MSE σ⁻³ dσ``);
        "balanced" → mean of ``(r − σz)² (σ⁻² + σ_data⁻²)`` (EDM's weight λ(σ));
        "paper" → mean of ``(r − σz)²`` (per-pixel MSE, unweighted).
    """
    if objective == "kl":
        return torch.mean(((residual - noise) / sigma) ** 2)
    if objective == "balanced":
        return torch.mean((residual - noise) ** 2 * (sigma**-2 + sigma_data**-2))
    return torch.mean((residual - noise) ** 2)


def _fresh_images(dist, seed: int, chunk: int, device) -> Iterator[torch.Tensor]:
    """Chunks of ``chunk`` images, consecutive in the stream of ``TRAIN_DATA_SEED + seed``,
    drawn on ``device`` by a family that ``draws_on_device`` (on a GPU: that device's
    random stream, so the GPU does not wait on the CPU for data), else on the CPU."""
    offset = 0
    while True:
        yield dist.sample(chunk, TRAIN_DATA_SEED + seed, offset=offset, device=device)
        offset += chunk


def _minibatch_images(images: torch.Tensor, seed: int, chunk: int) -> Iterator[torch.Tensor]:
    """Chunks of ``chunk`` images of a fixed set: epochs of seeded random permutations."""
    gen = block_generator(seed, 0, STREAM_BATCHES)
    order = torch.empty(0, dtype=torch.long)
    while True:
        while len(order) < chunk:
            order = torch.cat([order, torch.randperm(len(images), generator=gen)])
        index, order = order[:chunk], order[chunk:]
        yield images[index.to(images.device)]


def _meta_value(value):
    """A ``weights_only``-safe version of a distribution parameter."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return repr(value)


class _Monitor:
    """MSE at fixed σ on fixed images and noise, measured during training: images the
    distribution samples (``MONITOR_SEED``), as the evaluation draws them, so held out
    wherever the evaluation is (endless families; finite sets on their ``test`` split, as
    the presets use them)."""

    def __init__(self, dist, cfg: TrainConfig, device) -> None:
        self.sigmas = list(cfg.monitor_sigmas)
        self.every = cfg.monitor_interval
        n = cfg.monitor_images if dist.num_images is None else \
            min(cfg.monitor_images, dist.num_images)
        self.x = dist.sample(n, MONITOR_SEED).to(device) if self.sigmas else None
        if self.x is not None:
            gen = block_generator(cfg.seed, 0, STREAM_MONITOR)
            self.z = torch.randn(self.x.shape, generator=gen).to(device)
        self.record = {"step": [], "sigma": self.sigmas, "mse": [[] for _ in self.sigmas]}

    def due(self, step: int, last: int) -> bool:
        return bool(self.sigmas) and (step % self.every == 0 or step == last)

    @torch.no_grad()
    def measure(self, net: torch.nn.Module, center, step: int, frozen_norm: bool,
                scales: tuple[float, float]) -> None:
        net.eval()
        for i, s in enumerate(self.sigmas):
            y = self.x + s * self.z
            x_hat = y - network_residual(net, centered(y, center), *scales)
            self.record["mse"][i].append(float((x_hat - self.x).pow(2).mean()))
        self.record["step"].append(step)
        _train_mode(net, frozen_norm)


@torch.no_grad()
def _output_scales(cfg: TrainConfig, net: torch.nn.Module, u: torch.Tensor,
                   noise: torch.Tensor, warm: bool) -> tuple[float, float]:
    """``(c_skip, c_out)`` of the network about to be trained (``cfg.precondition``); with
    EDM's, a warm-started ``net`` gets a zero output layer (it starts at μ̂ + c_skip (y − μ̂));
    a ``BlindShrink`` is set back to the residual form (θ = ∞), EDM's scalings replacing
    those of its noise estimate.

    ``auto`` with a warm start compares the two starting points on the first training
    images ``u = y − μ̂`` (n, c, h, w) with their noise ``σ z``: the initial network as it
    is (error ``σz − r(u)``) and the shrinkage (error ``σz − (1 − c_skip) u``).
    """
    if cfg.precondition == "none":
        return 1.0, 1.0
    edm = edm_scales(cfg.sigma, cfg.sigma_data)
    if cfg.precondition == "auto" and warm:
        net.eval()
        u, noise = u[:AUTO_IMAGES], noise[:AUTO_IMAGES]
        # deterministic on one device; a near-tie may go either way on two (their rounding)
        as_is = (noise - net(u)).pow(2).mean()
        shrunk = (noise - (1.0 - edm[0]) * u).pow(2).mean()
        _train_mode(net, frozen_norm=True)
        if as_is <= shrunk:
            return 1.0, 1.0
    if isinstance(net, BlindShrink):  # told σ, it takes EDM's form instead of σ̂'s
        net.reset_parameters()
    if warm:
        zero_output_layer(net)
    return edm


def _train_mode(net: torch.nn.Module, frozen_norm: bool) -> None:
    """Training mode; with ``frozen_norm`` the normalization layers keep their running
    statistics (a warm start then begins at exactly the initial network's function, and
    every step refines it, instead of switching to one σ's batch statistics)."""
    net.train()
    if frozen_norm:
        for module in net.modules():
            if isinstance(module, BFBatchNorm):
                module.eval()


def monitored_error(monitor: dict) -> np.ndarray:
    """The held-out error per measurement (m,): ``mean_σ MSE(σ)/σ²`` over the monitored σ
    (the KL objective's weighting)."""
    sig = np.asarray(monitor["sigma"], dtype=float)[:, None]
    return (np.asarray(monitor["mse"], dtype=float) / sig**2).mean(0)


def tail_drop(monitor: dict, tail: float = CONVERGENCE_TAIL) -> float | None:
    """Relative fall ``1 − e_last/e_start`` of :func:`monitored_error` over at least the
    last ``tail`` of the steps: from the last measurement at or before the tail's start,
    never the last itself (with measurements sparser than the tail, the one before it).
    None when fewer than two measurements were taken."""
    steps = np.asarray(monitor.get("step", []), dtype=float)
    if len(steps) < 2:
        return None
    error = monitored_error(monitor)
    before = np.flatnonzero(steps <= steps[-1] * (1 - tail) * (1 + 1e-12))
    start = min(int(before[-1]) if len(before) else 0, len(steps) - 2)
    return float(1.0 - error[-1] / error[start])


def converged(monitor: dict, drop: float = CONVERGENCE_DROP,
              tail: float = CONVERGENCE_TAIL) -> bool | None:
    """False when the held-out error fell by more than ``drop`` over the last ``tail`` of
    the steps (:func:`tail_drop`: the network was still improving, more steps would change
    its numbers). None when nothing was monitored."""
    fall = tail_drop(monitor, tail)
    return None if fall is None else bool(fall <= drop)


def check_compile_support(device: torch.device) -> None:
    """Raise a one-line ValueError where ``compile=True`` cannot work (it would fail at the
    first training step with a long traceback): a torch whose compiler lacks the settings
    of :func:`compile_settings`, or on a CPU no C++ compiler to build kernels with."""
    eagerly = "or train eagerly (compile=False, --override compile=false)"
    missing = [name for name in COMPILE_LIMITS if not hasattr(torch._dynamo.config, name)]
    if missing:
        raise ValueError(f"compile=True needs a torch whose compiler has the settings "
                         f"{missing} (torch 2.13 is tested, this is {torch.__version__}); "
                         f"upgrade torch {eagerly}")
    if device.type != "cpu":
        return
    try:
        from torch._inductor.cpp_builder import get_cpp_compiler

        get_cpp_compiler()
    except Exception as exc:  # torch raises its own InvalidCxxCompiler
        raise ValueError(f"compile=True needs a C++ compiler on a CPU ($CXX, or g++ on the "
                         f"PATH); install one {eagerly}") from exc


def _check_init(init, net_cfg: NetConfig, train_cfg: TrainConfig) -> None:
    """A warm start's network must match ``net_cfg`` and ``train_cfg``: its weights are
    loaded as they are, in the residual form, with its own centring."""
    if not isinstance(init, NetworkDenoiser) or init.net_config != net_cfg:
        raise ValueError("init must be a NetworkDenoiser with the same NetConfig as net_cfg")
    if (init.c_skip, init.c_out) != (1.0, 1.0):
        raise ValueError("init must be in the residual form f(y) = y − r(y − μ̂) (c_skip = "
                         "c_out = 1); a preconditioned network's scalings belong to its own σ")
    if (init.center is not None) != train_cfg.center:
        raise ValueError(f"init {'has' if init.center is not None else 'lacks'} a mean image "
                         f"but train_cfg.center is {train_cfg.center}: a warm start keeps "
                         f"init's centring")


@functools.cache
def has_bf16_units(device: torch.device, cpuinfo: str = "/proc/cpuinfo") -> bool | None:
    """Whether ``device`` computes in bfloat16 natively: a CUDA device that does without
    emulation, a CPU whose flags (the ``flags`` or ``Features`` lines of ``cpuinfo``) name
    AMX or AVX-512 bfloat16 (x86) or bf16 (ARM); None where this cannot be told (another
    device type, or no readable ``cpuinfo``)."""
    if device.type == "cuda":
        with torch.cuda.device(device):
            return torch.cuda.is_bf16_supported(including_emulation=False)
    if device.type != "cpu":
        return None
    try:
        with open(cpuinfo, encoding="utf-8") as info:
            flags = {word for line in info if line.lower().startswith(("flags", "features"))
                     for word in line.split(":", 1)[1].split()}
    except OSError:
        return None
    return bool(flags & {"amx_bf16", "avx512_bf16", "bf16"})


def warn_without_bf16(device: torch.device) -> None:
    """A warning where ``precision="bf16"`` would be emulated (slower than float32)."""
    if has_bf16_units(device) is False:
        warnings.warn(f"precision='bf16' on a {device.type} without bfloat16 units: its "
                      f"training steps are emulated and may be slower than float32 "
                      f"(--override 'precision=\"fp32\"')", stacklevel=3)


@contextlib.contextmanager
def compile_settings(compiled: bool) -> Iterator[None]:
    """Around a training loop: with ``compiled``, torch's compiler settings
    ``COMPILE_LIMITS`` (up to ``COMPILED_VARIANTS`` compiled versions of one forward
    function per process: shapes, paddings, training or frozen normalization, shrinkage on
    or off; torch's default of 8 is reached by a study in one process, after which it
    would train on without compiling, silently; an error past them), and the compiler's
    worker threads limited to the training's torch threads."""
    if not compiled:
        yield
        return
    import torch._inductor.config as inductor_config

    with torch._dynamo.config.patch(**COMPILE_LIMITS), \
            inductor_config.patch(compile_threads=torch.get_num_threads()):
        yield


def calibration_images(dist, train_images: torch.Tensor | None, seed: int) -> torch.Tensor:
    """Clean images (n, c, h, w) whose mean is μ̂ and on which a ``BlindShrink`` network
    measures the data's scale: the training set, or ``CENTER_IMAGES`` training-stream
    images of an endless distribution."""
    if train_images is not None:
        return train_images.float()
    return dist.sample(CENTER_IMAGES, TRAIN_DATA_SEED + seed)


def train(dist, net_cfg: NetConfig, train_cfg: TrainConfig,
          train_images: torch.Tensor | None = None, device=None,
          progress: bool = False, init: NetworkDenoiser | None = None) -> NetworkDenoiser:
    """Train a bias-free network to denoise images of ``dist``.

    Parameters
    ----------
    dist : Distribution     image shape, fresh images when ``train_images`` is None (an
        endless distribution; a finite one must provide ``train_images()``), and held-out
        images for the monitor.
    net_cfg : NetConfig     its ``in_channels`` must equal the images' channels.
    train_cfg : TrainConfig
    train_images : tensor (N, c, h, w) or None   a fixed training set (finite values).
    device : "auto"/None (CUDA if available, else CPU), "cpu", "cuda", or a torch.device.
    progress : bool         show a tqdm bar.
    init : NetworkDenoiser or None   start from its weights (and its mean image) instead of
        a fresh initialization (preconditioned: with its output layer zeroed); its
        NetConfig must equal ``net_cfg``, it must be in the residual form, and it has a
        mean image exactly when ``train_cfg.center``.

    Returns
    -------
    NetworkDenoiser on ``device`` in eval mode.

    Raises
    ------
    TrainingDiverged   if the loss becomes NaN or infinite (the message gives the step).
    ValueError         for inconsistent inputs.
    """
    if not isinstance(net_cfg, NetConfig) or not isinstance(train_cfg, TrainConfig):
        raise ValueError("train needs a NetConfig and a TrainConfig")
    if init is not None:
        _check_init(init, net_cfg, train_cfg)
    device = resolve_device(device)
    if train_cfg.compile:
        check_compile_support(device)
    if train_cfg.precision == "bf16":
        warn_without_bf16(device)
    shape = tuple(dist.shape)
    if train_images is None and dist.num_images is not None:
        if not hasattr(dist, "train_images"):
            raise ValueError(f"{dist.name} is a finite data set: pass train_images (N, c, h, w)")
        train_images = dist.train_images()
    if train_images is not None:
        if not isinstance(train_images, torch.Tensor) or train_images.dim() != 4 or \
                len(train_images) == 0:
            raise ValueError("train_images must be a non-empty tensor (N, c, h, w)")
        if not bool(torch.isfinite(train_images).all()):
            raise ValueError("train_images must hold finite values only")
        shape = tuple(train_images.shape[1:])
    if shape[0] != net_cfg.in_channels:
        raise ValueError(f"net_cfg.in_channels must equal the images' channels {shape[0]}, "
                         f"got {net_cfg.in_channels}")
    cfg, B = train_cfg, train_cfg.batch_size
    chunk = CHUNK_STEPS * B
    if train_images is None:
        images = _fresh_images(dist, cfg.seed, chunk, device)
    else:
        images = _minibatch_images(train_images.float().to(device), cfg.seed, chunk)

    net = build_network(net_cfg, block_generator(cfg.seed, 0, STREAM_INIT), device=device)
    # a per-σ network in EDM's form drops the blind shrinkage (_output_scales): no calibration
    calibrate = isinstance(net, BlindShrink) and cfg.precondition == "none"
    if init is not None:
        net.load_state_dict(init.net.state_dict())
        center = None if init.center is None else init.center.to(device)
    elif cfg.center or calibrate:
        clean = calibration_images(dist, train_images, cfg.seed).to(device)
        center = clean.mean(0) if cfg.center else None
        if calibrate:
            net.calibrate(centered(clean, center))
    else:
        center = None
    _train_mode(net, frozen_norm=init is not None)
    # static shapes: the compiled code of a network depends on its own shape only, not on
    # the shapes that the process trained before (same bits whatever the worker)
    step_net = torch.compile(net, dynamic=False) if cfg.compile else net  # net's parameters
    low_precision = cfg.precision == "bf16"  # the forward only (TrainConfig.precision)
    optimizer = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, cfg.lr_factor)
    noise_gen = block_generator(cfg.seed, 0, STREAM_NOISE, device)
    monitor = _Monitor(dist, cfg, device)
    history = {"step": [], "loss": []}
    losses = torch.zeros(CHUNK_STEPS, device=device)
    bar = tqdm(total=cfg.steps, disable=not progress, desc="train", leave=False)
    start_time = time.perf_counter()
    with compile_settings(cfg.compile):
        for first in range(0, cfg.steps, CHUNK_STEPS):
            count = min(CHUNK_STEPS, cfg.steps - first)
            x_all = next(images)
            z_all = torch.randn(x_all.shape, generator=noise_gen, device=device)
            sigma_all = draw_sigma(cfg, len(x_all), noise_gen, device)
            noise_all = sigma_all * z_all
            input_all = centered(x_all + noise_all, center)  # y − μ̂, y = x + σ z
            if first == 0:  # the form to train (cfg.precondition), chosen on training images
                scales = _output_scales(cfg, net, input_all, noise_all, init is not None)
            for i in range(count):
                if monitor.due(first + i, cfg.steps):
                    monitor.measure(net, center, first + i, init is not None, scales)
                batch = slice(i * B, (i + 1) * B)
                with torch.autocast(device.type, torch.bfloat16, enabled=low_precision):
                    residual = network_residual(step_net, input_all[batch], *scales)
                residual = residual.float()  # bfloat16 out of the autocast: the loss in float32
                loss = objective_loss(residual, noise_all[batch], sigma_all[batch], cfg.objective,
                                      cfg.sigma_data)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                scheduler.step()
                losses[i] = loss.detach()
            chunk_losses = losses[:count].cpu()  # one synchronization per chunk
            bad = (~torch.isfinite(chunk_losses)).nonzero()
            if len(bad):
                step = first + int(bad[0])
                bar.close()
                raise TrainingDiverged(f"training loss is {float(chunk_losses[bad[0]])} at step "
                                       f"{step} of {cfg.steps} (lr={cfg.lr}); lower lr or check "
                                       f"the data")
            history["step"].append(first + count - 1)
            history["loss"].append(float(chunk_losses.mean()))
            bar.update(count)
            bar.set_postfix(loss=f"{history['loss'][-1]:.3g}")
    bar.close()
    if monitor.due(cfg.steps, cfg.steps):
        monitor.measure(net, center, cfg.steps, init is not None, scales)
    history["monitor"] = monitor.record
    meta = {
        "distribution": getattr(dist, "name", type(dist).__name__),
        "dist_params": {str(k): _meta_value(v) for k, v in getattr(dist, "params", {}).items()},
        "n_train": None if train_images is None else len(train_images),
        "seconds": time.perf_counter() - start_time,
        "device": str(device),
        "warm_start": init is not None,
    }
    return NetworkDenoiser(net, net_cfg, train_cfg, history, meta, center=center,
                           output_scales=scales)

"""Training: approach to the exact MMSE, determinism, checkpoints, divergence, interface."""

from __future__ import annotations

import math
import os
import warnings

import pytest
import torch

from datasets_synth.base import Distribution
from datasets_synth.gaussian import GaussianField
from tbcore.validation import resolve_device
from theorybench.denoisers.network import NetworkDenoiser
from theorybench.evaluation import mse_curve
from theorybench.networks import NetConfig
from theorybench.train_config import TrainConfig
from theorybench.training import CHUNK_STEPS, TrainingDiverged, _minibatch_images, train

TINY = NetConfig(arch="bfcnn", channels=4, depth=3)



@pytest.fixture(scope="module")
def gaussian():
    return GaussianField(size=16)


@pytest.fixture(scope="module")
def small_unet(gaussian):
    cfg = TrainConfig(mode="universal", steps=2 * CHUNK_STEPS, batch_size=8, seed=4)
    return train(gaussian, NetConfig(arch="unet", channels=4, blocks=2), cfg)


def test_per_sigma_training_approaches_the_wiener_filter(gaussian):
    sigma = 0.1
    den = train(gaussian, NetConfig(channels=16, depth=5),
                TrainConfig(sigma=sigma, steps=300, batch_size=32, lr=3e-3))
    net = mse_curve(den, gaussian, [sigma], n=512, seed=1)
    wiener = mse_curve(gaussian.reference_denoisers()["wiener"], gaussian, [sigma], n=512, seed=1)
    mmse = gaussian.mmse(sigma)  # SCIENCE.md §4: Σ λσ²/(λ+σ²) / d = 0.622 σ² here
    mse, se = float(net.mse[0]), float(net.se[0])
    assert abs(float(wiener.mse[0]) - mmse) < 3 * float(wiener.se[0])
    assert mse < 0.70 * sigma**2  # far below the identity's σ²
    assert mse < 1.06 * mmse  # measured: about 1.02 × MMSE after 300 steps
    assert mse > mmse - 4 * se  # nothing beats the posterior mean


def test_universal_training_denoises_a_range_of_sigmas(gaussian):
    den = train(gaussian, NetConfig(channels=16, depth=5),
                TrainConfig(mode="universal", objective="paper", sigma_max=1.0, steps=200,
                            batch_size=32, lr=3e-3))
    curve = mse_curve(den, gaussian, [0.2, 0.5], n=256, seed=1)
    for sigma, mse in zip(curve.sigma, curve.mse, strict=True):
        assert gaussian.mmse(sigma) * 0.95 < mse < 0.6 * sigma**2


def test_same_seed_same_weights_and_global_rng_untouched(gaussian):
    cfg = TrainConfig(mode="universal", steps=CHUNK_STEPS + 3, batch_size=4, seed=7)
    state = torch.random.get_rng_state()
    a, b = (train(gaussian, TINY, cfg).net.state_dict() for _ in range(2))
    c = train(gaussian, TINY, TrainConfig.from_dict({**cfg.to_dict(), "seed": 8})).net.state_dict()
    assert torch.equal(state, torch.random.get_rng_state())
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)


def test_fixed_training_set(gaussian):
    images = gaussian.sample(6, 3)
    den = train(gaussian, TINY, TrainConfig(steps=5, batch_size=4), train_images=images)
    assert den.meta["n_train"] == 6 and len(den.history["loss"]) == 1
    # minibatches run through seeded random permutations: each epoch sees every image once
    stream = _minibatch_images(torch.arange(6.0), seed=0, chunk=12)
    epochs = torch.cat([next(stream) for _ in range(3)]).view(6, 6)
    assert all(torch.equal(e.sort().values, torch.arange(6.0)) for e in epochs)
    assert not all(torch.equal(e, epochs[0]) for e in epochs)
    with pytest.raises(ValueError, match="finite"):
        train(gaussian, TINY, TrainConfig(steps=1), train_images=images * math.nan)
    with pytest.raises(ValueError, match="in_channels"):
        train(gaussian, NetConfig(in_channels=3, channels=4, depth=3), TrainConfig(steps=1))


def test_finite_distribution_trains_on_its_training_split():
    from datasets_synth.faces import Faces

    den = train(Faces(split="test"), NetConfig(arch="unet", channels=4, blocks=2),
                TrainConfig(steps=2, batch_size=4))
    assert den.meta["n_train"] == 80 and den.meta["distribution"] == "faces"


def test_checkpoint_round_trip(small_unet, tmp_path):
    path = tmp_path / "net.pt"
    small_unet.save(path)
    assert os.listdir(tmp_path) == ["net.pt"]  # the temporary file was renamed away
    loaded = NetworkDenoiser.load(path)
    y = torch.rand(3, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    assert torch.equal(loaded(y, 0.1), small_unet(y, 0.1))
    assert not torch.equal(loaded(y, 0.1), y)  # a trained network, not the identity
    assert loaded.net_config == small_unet.net_config
    assert loaded.train_config == small_unet.train_config
    assert loaded.history == small_unet.history and loaded.meta == small_unet.meta
    assert not loaded.net.training and loaded.kind == "network"


def test_checkpoint_with_mismatched_config_is_refused(small_unet, tmp_path):
    path = tmp_path / "net.pt"
    small_unet.save(path)
    payload = torch.load(path, weights_only=True)
    payload["net_config"]["channels"] = 8
    torch.save(payload, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="do not fit"):
        NetworkDenoiser.load(tmp_path / "bad.pt")
    payload["net_config"] = {**small_unet.net_config.to_dict(), "blocks": 3}
    torch.save(payload, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="do not fit"):
        NetworkDenoiser.load(tmp_path / "bad.pt")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="checkpoint"):
        NetworkDenoiser.load(tmp_path / "other.pt")


class NaNAfter(Distribution):
    """Gaussian-field images, NaN from stream index ``start`` on (to force divergence)."""

    name = "nan-after"

    def __init__(self, start: int):
        super().__init__(start=start)
        self.base = GaussianField(size=8)
        self.shape = self.base.shape
        self.start = start

    def _take(self, n, seed, offset):
        images, latents = self.base._take(n, seed, offset)
        index = torch.arange(offset, offset + n)
        images[index >= self.start] = math.nan
        return images, latents


def test_nan_loss_raises_training_diverged_at_its_step():
    cfg = TrainConfig(steps=2 * CHUNK_STEPS, batch_size=4)
    with pytest.raises(TrainingDiverged, match=r"at step 5 of 32"):
        train(NaNAfter(start=5 * 4 + 2), TINY, cfg)  # step 5 holds the first NaN image
    assert issubclass(TrainingDiverged, RuntimeError)


def test_denoiser_interface(small_unet):
    y = torch.rand(2, 1, 16, 16, generator=torch.Generator().manual_seed(2))
    x_hat = small_unet(y, 0.3)
    torch.testing.assert_close(x_hat, y - small_unet.net(y))  # f(y) = y − r(y)
    assert torch.equal(small_unet(y, torch.tensor([0.1, 0.9])), x_hat)  # blind: σ unused
    assert not x_hat.requires_grad  # parameters are frozen
    assert small_unet(y.double(), 0.3).dtype == torch.float64
    for bad in (0.0, -1.0, math.nan, torch.tensor([0.1, 0.2, 0.3])):
        with pytest.raises(ValueError, match="sigma"):
            small_unet(y, bad)
    with pytest.raises(ValueError, match=r"\(n, 1, h, w\)"):
        small_unet(torch.rand(2, 3, 16, 16), 0.1)


def test_jacobian_through_the_denoiser(small_unet):
    # SCIENCE.md §6: a bias-free network is homogeneous, so f(y) = ∇f(y) y
    y = torch.rand(1, 1, 16, 16, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    with torch.enable_grad():
        jac = torch.autograd.functional.jacobian(lambda v: small_unet(v, 0.2), y)
    jac = jac.reshape(256, 256)
    f_y = small_unet(y, 0.2).reshape(256)
    assert torch.linalg.norm(jac @ y.reshape(256) - f_y) / torch.linalg.norm(f_y) < 1e-5
    assert torch.linalg.norm(jac - torch.eye(256, dtype=jac.dtype)) > 1e-3  # not identity


def test_train_config_round_trip_schedule_and_validation():
    cfg = TrainConfig(mode="universal", steps=100, warmup=10, schedule="cosine")
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    assert cfg.lr_factor(0) == pytest.approx(0.1)  # warm-up 1/10
    assert cfg.lr_factor(50) == pytest.approx(0.5)  # cosine half way
    step = TrainConfig(steps=100, warmup=0, schedule="step")
    assert [step.lr_factor(k) for k in (0, 49, 50, 74, 75, 99)] == \
        pytest.approx([1, 1, 0.1, 0.1, 0.01, 0.01])
    # the monitor's cadence: steps // 20 by default (at least 1), else monitor_every
    assert [TrainConfig(steps=s).monitor_interval for s in (2000, 39, 10)] == [100, 1, 1]
    assert TrainConfig(steps=2000, monitor_every=7).monitor_interval == 7
    for bad in ({"mode": "per_sigma"}, {"sigma": 0.0}, {"steps": 0}, {"lr": -1.0},
                {"schedule": "linear"}, {"seed": -1}, {"warmup": 1.5}):
        with pytest.raises(ValueError):
            TrainConfig(**bad)
    with pytest.raises(ValueError, match="valid fields"):
        TrainConfig.from_dict({"sigmas": 0.1})
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="device"):
        resolve_device("gpu0")


def test_compiled_steps_minimize_the_same_loss_deterministically(gaussian, monkeypatch):
    """``compile=True`` trains through ``torch.compile`` (static shapes) the same network on
    the same data with the same loss: its held-out error follows the eager training's to
    rounding (measured: within 1e-7), universal and warm-started in EDM's form alike; the
    same seed gives the same weights, whatever shape the process compiled in between."""
    calls = []
    compile_ = torch.compile
    monkeypatch.setattr(torch, "compile", lambda net, **kw: calls.append(kw) or compile_(net, **kw))
    cfg = TrainConfig(mode="universal", steps=3 * CHUNK_STEPS, batch_size=8, seed=3, lr=3e-3,
                      monitor_sigmas=(0.3,), monitor_every=CHUNK_STEPS)
    compiled_cfg = TrainConfig.from_dict({**cfg.to_dict(), "compile": True})
    eager = train(gaussian, TINY, cfg)
    assert calls == []
    first = train(gaussian, TINY, compiled_cfg)
    assert calls == [{"dynamic": False}]
    train(GaussianField(size=12), TINY, compiled_cfg)  # another shape in between
    again = train(gaussian, TINY, compiled_cfg)
    errors = [d.history["monitor"]["mse"][0] for d in (eager, first)]
    assert errors[1] == pytest.approx(errors[0], rel=1e-4)
    assert errors[1][-1] < 0.97 * errors[1][0]  # it trained
    a, b = first.net.state_dict(), again.net.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    per_sigma = TrainConfig(sigma=0.5, precondition="edm", steps=CHUNK_STEPS, batch_size=8,
                            monitor_every=4, warmup=0)
    warm = [train(gaussian, TINY, TrainConfig.from_dict({**per_sigma.to_dict(), "compile": c}),
                  init=eager).history["monitor"]["mse"][0] for c in (False, True)]
    assert warm[1] == pytest.approx(warm[0], rel=1e-4)
    assert len(calls) == 4


def test_compile_needs_a_cpp_compiler_a_capable_torch_and_a_bool(gaussian, monkeypatch):
    import torch._inductor.cpp_builder as cpp_builder

    import theorybench.training as training

    cfg = TrainConfig(steps=2, batch_size=2, compile=True)
    monkeypatch.setitem(training.COMPILE_LIMITS, "no_such_setting", 1)  # an older torch
    with pytest.raises(ValueError, match=r"needs a torch whose compiler has the settings "
                                         r"\['no_such_setting'\].*compile=false"):
        train(gaussian, TINY, cfg, device="cpu")
    monkeypatch.delitem(training.COMPILE_LIMITS, "no_such_setting")

    def missing():
        raise RuntimeError("no compiler")

    monkeypatch.setattr(cpp_builder, "get_cpp_compiler", missing)
    with pytest.raises(ValueError, match="needs a C.. compiler.*compile=false"):
        train(gaussian, TINY, cfg, device="cpu")
    for bad in (1, "yes", None):
        with pytest.raises(ValueError, match=f"compile must be True or False, got {bad!r}"):
            TrainConfig(compile=bad)


def test_compile_settings_raise_the_variant_limit_and_fail_past_it():
    """Inside a compiled training loop torch keeps up to COMPILED_VARIANTS compiled versions
    of a function and fails past them (its default, 8, then trains eagerly, silently);
    outside, torch's settings are as they were."""
    from theorybench.training import COMPILED_VARIANTS, compile_settings

    config = torch._dynamo.config
    before = (config.recompile_limit, config.fail_on_recompile_limit_hit)
    with compile_settings(True):
        assert (config.recompile_limit, config.fail_on_recompile_limit_hit) == \
            (COMPILED_VARIANTS, True)
    with compile_settings(False):
        assert (config.recompile_limit, config.fail_on_recompile_limit_hit) == before
    assert (config.recompile_limit, config.fail_on_recompile_limit_hit) == before


def test_bf16_precision_trains_the_forward_in_bfloat16_deterministically(gaussian,
                                                                          monkeypatch):
    """``precision="bf16"``: the training forward's convolutions run in bfloat16 (autocast),
    the batch-norm statistics, parameters and the trained network's use stay in float32; it
    minimizes the same loss (the held-out error follows float32 training's to bfloat16's
    rounding) and the same seed gives the same weights."""
    from theorybench import training

    cfg = TrainConfig(mode="universal", steps=3 * CHUNK_STEPS, batch_size=8, seed=3, lr=3e-3,
                      monitor_sigmas=(0.3,), monitor_every=CHUNK_STEPS)
    low = TrainConfig.from_dict({**cfg.to_dict(), "precision": "bf16"})
    seen = set()  # (training mode, output dtype) of every convolution
    build = training.build_network

    def spied(*args, **kwargs):
        net = build(*args, **kwargs)
        for module in net.modules():
            if isinstance(module, torch.nn.Conv2d):
                module.register_forward_hook(
                    lambda m, args, out: seen.add((m.training, out.dtype)))
        return net

    monkeypatch.setattr(training, "build_network", spied)
    first = train(gaussian, TINY, low)
    assert (True, torch.bfloat16) in seen and (True, torch.float32) not in seen
    assert (False, torch.float32) in seen  # the monitor measures the float32 network
    assert all(p.dtype == torch.float32 for p in first.net.parameters())
    assert all(b.dtype == torch.float32 for b in first.net.buffers())
    y = torch.rand(2, 1, 16, 16)
    assert first(y, 0.3).dtype == torch.float32
    again = train(gaussian, TINY, low)
    a, b = first.net.state_dict(), again.net.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    full = train(gaussian, TINY, cfg).history["monitor"]["mse"][0]
    half = first.history["monitor"]["mse"][0]
    assert half == pytest.approx(full, rel=0.05) and half[-1] < 0.97 * half[0]


def test_bf16_precision_trains_the_default_presets_unet(gaussian):
    """The default preset's network (a UNet with a global mean and the blind shrinkage,
    which acts: calibrated on the training images) trains in bfloat16 to a float32
    residual, deterministically, to the float32 training's held-out error within 5 %."""
    from theorybench.blind_shrink import BlindShrink

    net = NetConfig(arch="unet", channels=4, blocks=2, global_mean=True, shrink=True)
    cfg = TrainConfig(mode="universal", steps=2 * CHUNK_STEPS, batch_size=8, seed=4,
                      lr=3e-3, center=True, monitor_sigmas=(0.3,), monitor_every=CHUNK_STEPS)
    low = TrainConfig.from_dict({**cfg.to_dict(), "precision": "bf16"})
    first, again = train(gaussian, net, low), train(gaussian, net, low)
    assert isinstance(first.net, BlindShrink) and first.net.active
    a, b = first.net.state_dict(), again.net.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    u = torch.randn(2, 1, 16, 16)
    with torch.autocast("cpu", torch.bfloat16):  # as in training: the shrinkage's output
        assert first.net(u).dtype == torch.float32
    full = train(gaussian, net, cfg).history["monitor"]["mse"][0]
    assert first.history["monitor"]["mse"][0] == pytest.approx(full, rel=0.05)


@pytest.mark.parametrize("text, expected", [
    ("flags\t\t: fpu sse2 avx512f avx512_bf16 amx_tile\n", True),
    ("flags\t\t: fpu sse2 avx2 avx512f\n", False),
    ("Features\t: fp asimd bf16 i8mm\n", True),
    ("Features\t: fp asimd\n", False),
    (None, None),
])
def test_bf16_units_are_read_from_the_cpu_flags(tmp_path, text, expected):
    from theorybench.training import has_bf16_units

    path = tmp_path / "cpuinfo"
    if text is not None:
        path.write_text("processor\t: 0\n" + text)
    assert has_bf16_units(torch.device("cpu"), str(path)) is expected
    assert has_bf16_units(torch.device("meta")) is None  # cannot be told


def test_bf16_precision_warns_without_bfloat16_units_and_is_checked(gaussian, monkeypatch):
    from theorybench import training

    cfg = TrainConfig(steps=2, batch_size=2, precision="bf16")
    monkeypatch.setattr(training, "has_bf16_units", lambda device: False)
    with pytest.warns(UserWarning, match="without bfloat16 units.*'precision=\"fp32\"'"):
        train(gaussian, TINY, cfg)
    monkeypatch.setattr(training, "has_bf16_units", lambda device: None)  # cannot tell
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        train(gaussian, TINY, cfg)
    with pytest.raises(ValueError,
                       match=r"precision must be one of \['bf16', 'fp32'\], got 'fp16'"):
        TrainConfig(precision="fp16")

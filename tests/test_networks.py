"""Bias-free networks: homogeneity, no additive constants, paper sizes, FLOP count."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from theorybench.networks import (
    BFBatchNorm,
    NetConfig,
    build_network,
    count_parameters,
    forward_flops,
    net_config_for,
)


def exercised(cfg: NetConfig, size: int) -> nn.Module:
    """A network whose output layer is not zero and whose running σ's were updated."""
    gen = torch.Generator().manual_seed(3)
    net = build_network(cfg, generator=gen)
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    with torch.no_grad():
        convs[-1].weight.normal_(0.0, 0.1, generator=gen)
        for _ in range(3):  # training-mode passes update the running standard deviations
            net(torch.rand(8, cfg.in_channels, size, size, generator=gen) * 2.0)
    return net.eval()


CASES = [
    (NetConfig(arch="bfcnn", channels=8, depth=6), 12),
    (NetConfig(arch="unet", channels=4, blocks=2), 16),
    (NetConfig(arch="unet", channels=4, blocks=3, in_channels=3), 13),  # padded to 16
    (NetConfig(arch="unet", channels=4, blocks=2, global_mean=True), 16),
    (NetConfig(arch="unet", channels=4, blocks=2, global_mean=True, padding="circular"), 16),
    (NetConfig(arch="bfcnn", channels=8, depth=4, padding="circular"), 12),
]


@pytest.mark.parametrize("cfg,size", CASES)
def test_eval_mode_is_positively_homogeneous(cfg, size):
    # SCIENCE.md §6: no additive constants + ReLU ⇒ r(a y) = a r(y) for a > 0
    net = exercised(cfg, size)
    bns = [m for m in net.modules() if isinstance(m, BFBatchNorm)]
    assert bns and all(not torch.allclose(m.running_sd, torch.ones_like(m.running_sd))
                       for m in bns)
    y = torch.rand(4, cfg.in_channels, size, size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        r = net(y)
        assert r.shape == y.shape and r.norm() > 1e-3
        for a in (0.01, 0.3, 2.5, 40.0):
            r_a = net(a * y)
            assert ((r_a - a * r).norm() / (a * r).norm()).item() < 1e-5
        assert torch.equal(net(torch.zeros_like(y)), torch.zeros_like(y))  # r(0) = 0


@pytest.mark.parametrize("cfg,size", CASES)
def test_no_parameter_is_a_bias(cfg, size):
    net = build_network(cfg)
    for name, _ in net.named_parameters():
        assert "bias" not in name
        assert name.endswith(".weight") or name.endswith(".gammas"), name
    for module in net.modules():
        assert getattr(module, "bias", None) is None
        assert not isinstance(module, (nn.BatchNorm2d, nn.Linear, nn.GroupNorm, nn.LayerNorm))
    assert [name.rsplit(".", 1)[-1] for name, _ in net.named_buffers()] == \
        ["running_sd"] * sum(isinstance(m, BFBatchNorm) for m in net.modules())


def test_bias_free_batch_norm_closed_form():
    bn = BFBatchNorm(3)
    with torch.no_grad():
        bn.gammas.copy_(torch.tensor([0.5, 2.0, -1.0]).view(1, 3, 1, 1))
    x = torch.randn(16, 3, 5, 5, generator=torch.Generator().manual_seed(0)) * 3.0 + 1.0
    sd = torch.sqrt(x.var(dim=(0, 2, 3), unbiased=False) + 1e-5).view(1, 3, 1, 1)
    out = bn.train()(x)
    torch.testing.assert_close(out, x * bn.gammas / sd)  # no mean removed, no shift
    torch.testing.assert_close(bn.running_sd, 0.9 + 0.1 * sd)  # momentum 0.1 from 1
    torch.testing.assert_close(bn.eval()(x), x * bn.gammas / bn.running_sd)


def test_paper_sizes():
    unet = count_parameters(build_network(NetConfig.paper("unet")))
    assert unet == 7_696_192  # the paper: "7.6M"
    assert abs(unet - 7.6e6) / 7.6e6 < 0.10
    bfcnn = count_parameters(build_network(NetConfig.paper("bfcnn")))
    # 21 convolutions 3×3 (1→64, 19 × 64→64, 64→1) and 19 γ vectors of 64
    assert bfcnn == 9 * (64 + 19 * 64 * 64 + 64) + 19 * 64 == 702_784
    assert NetConfig.paper("bfcnn") == NetConfig()


@pytest.mark.parametrize("cfg,size", CASES + [(NetConfig(arch="unet", channels=4,
                                                           convs_per_block=1, kernel=5), 20)])
def test_forward_flops_match_the_layers(cfg, size):
    net = build_network(cfg).eval()
    counted = []

    def hook(module, inputs, output):
        if isinstance(module, nn.ConvTranspose2d):
            counted.append(2 * module.weight.numel() * inputs[0].shape[-2] * inputs[0].shape[-1])
        elif isinstance(module, nn.Conv2d):
            counted.append(2 * module.weight.numel() * output.shape[-2] * output.shape[-1])

    for module in net.modules():
        module.register_forward_hook(hook)
    with torch.no_grad():
        net(torch.zeros(1, cfg.in_channels, size, size))
    assert forward_flops(cfg, size, size) == sum(counted)


@pytest.mark.parametrize("global_mean", [False, True])
def test_global_mean_path_reaches_the_whole_image(global_mean):
    # 2 levels of 3×3 convolutions: a receptive field of 29 pixels, less than a 48-pixel
    # image; the global-mean path makes every output depend on every input pixel
    cfg = NetConfig(arch="unet", channels=4, blocks=2, convs_per_block=1,
                    global_mean=global_mean)
    net = exercised(cfg, 48)
    y = torch.rand(1, 1, 48, 48, generator=torch.Generator().manual_seed(2), requires_grad=True)
    net(y)[0, 0, 0, 0].backward()
    far = y.grad[0, 0, 24:, 24:].abs().max().item()  # inputs ≥ 24 pixels away on both axes
    assert (far > 1e-6) == global_mean, far
    assert y.grad[0, 0, :2, :2].abs().max().item() > 1e-6  # near inputs always count


@pytest.mark.parametrize("padding", ["zeros", "circular"])
@pytest.mark.parametrize("arch", ["bfcnn", "unet"])
def test_circular_padding_commutes_with_cyclic_shifts(arch, padding):
    # on the torus every layer commutes with cyclic shifts (the UNet's 2×2 pooling with
    # shifts by multiples of 2^blocks = 4): so does the network; zero padding breaks it
    cfg = NetConfig(arch=arch, channels=4, depth=4, blocks=2, global_mean=True,
                    padding=padding)
    net = exercised(cfg, 16)
    y = torch.rand(2, 1, 16, 16, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        shifted = net(torch.roll(y, (4, -8), dims=(2, 3)))
        expected = torch.roll(net(y), (4, -8), dims=(2, 3))
    error = ((shifted - expected).norm() / expected.norm()).item()
    assert (error < 1e-5) == (padding == "circular"), error


def test_periodic_families_get_circular_padding():
    import datasets_synth

    net = {"arch": "unet", "channels": 4, "blocks": 2}
    gaussian = datasets_synth.get("gaussian", size=8)
    disks = datasets_synth.get("disks", size=8)
    assert gaussian.periodic and not disks.periodic
    assert net_config_for(net, gaussian) == NetConfig(**net, padding="circular")
    assert net_config_for(net, disks) == NetConfig(**net)
    assert net_config_for({**net, "in_channels": 3}, disks).in_channels == 1
    # the family's padding is a default: a net that names one keeps it
    assert net_config_for({**net, "padding": "zeros"}, gaussian).padding == "zeros"


def test_build_is_seeded_and_leaves_global_rng_alone():
    cfg = NetConfig(arch="unet", channels=4, blocks=2)
    state = torch.random.get_rng_state()
    a = build_network(cfg, torch.Generator().manual_seed(5)).state_dict()
    b = build_network(cfg, torch.Generator().manual_seed(5)).state_dict()
    c = build_network(cfg, torch.Generator().manual_seed(6)).state_dict()
    assert torch.equal(state, torch.random.get_rng_state())
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)
    # He-normal: std √(2/fan_in) for an inner 3×3 conv of 64 input channels
    w = build_network(NetConfig(channels=64, depth=3)).layers[2].weight
    assert abs(w.std().item() / (2.0 / (64 * 9)) ** 0.5 - 1) < 0.05


def test_untrained_network_is_the_identity_denoiser():
    net = build_network(NetConfig(channels=8, depth=4)).eval()
    y = torch.rand(2, 1, 8, 8)
    assert torch.equal(net(y), torch.zeros_like(y))  # zero output layer: f(y) = y


def test_config_round_trip_and_validation():
    cfg = NetConfig(arch="unet", channels=16, blocks=2, in_channels=3)
    assert NetConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="valid fields"):
        NetConfig.from_dict({**cfg.to_dict(), "width": 3})
    with pytest.raises(ValueError, match="bfcnn"):
        NetConfig(arch="resnet")
    with pytest.raises(ValueError, match="odd"):
        NetConfig(kernel=4)
    with pytest.raises(ValueError, match="circular"):
        NetConfig(padding="reflect")
    with pytest.raises(ValueError, match="depth"):
        NetConfig(depth=1)
    with pytest.raises(ValueError, match="channels"):
        NetConfig(channels=2.5)
    with pytest.raises(ValueError):
        build_network(cfg.to_dict())

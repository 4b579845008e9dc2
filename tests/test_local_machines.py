"""The LS and ELS machines (denoisers/local.py) against closed forms and brute force, and
the calibration and agreement of the machines sweep."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from datasets_synth.references.empirical import EmpiricalDenoiser
from theorybench.denoisers import KINDS
from theorybench.denoisers.local import (
    PatchEmpiricalDenoiser,
    equivariant_local_empirical,
    local_empirical,
    location_patches,
    patches,
)
from theorybench.experiments.machines_sweep import agreement, calibrate, summarize_agreement
from theorybench.report.common import bracket
from theorybench.report.machines import _bracket_at
from theorybench.sampling import sample


def _rand(*shape, seed=0):
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _brute(q, candidates, centre_index, mask, sigma):
    """Σ_j softmax_j(−‖m_p ⊙ (q_p − x_j)‖²/2σ²) x_j[centre] by explicit distances; q: the
    query patches (b, d, K), candidates (M, K), mask (d, K)."""
    d2 = (((q[:, :, None, :] - candidates[None, None]) ** 2) * mask[None, :, None, :]).sum(-1)
    w = torch.softmax(-d2 / (2 * sigma ** 2), -1)
    return (w * candidates[:, centre_index]).sum(-1)


def test_model_kind_is_declared():
    assert "model" in KINDS
    assert local_empirical(_rand(2, 1, 4, 4), 3).kind == "model"


@pytest.mark.parametrize("sigma", [0.02, 0.3, 3.0])
def test_ls_with_a_patch_covering_the_image_is_the_empirical_denoiser(sigma):
    train = _rand(7, 1, 6, 5)
    y = train[:3] + 0.3 * _rand(3, 1, 6, 5, seed=1)
    expected = EmpiricalDenoiser(train)(y, sigma)
    # crop: a side of 2·max(h, w) − 1 sees the whole image from every pixel
    assert torch.allclose(local_empirical(train, 11)(y, sigma), expected, atol=1e-12)
    square = _rand(5, 2, 5, 5)
    y = square[:2] + 0.2 * _rand(2, 2, 5, 5, seed=2)
    # circular: a side equal to the (odd) image side covers every pixel once
    assert torch.allclose(local_empirical(square, 5, boundary="circular")(y, sigma),
                          EmpiricalDenoiser(square)(y, sigma), atol=1e-12)


@pytest.mark.parametrize("boundary", ["crop", "circular"])
@pytest.mark.parametrize("equivariant", [False, True])
def test_constant_training_images_give_the_closed_form(boundary, equivariant):
    """Every patch of a constant image is constant, so both machines weigh the N values
    c_i by the visible patch's distance to them: a closed form per pixel."""
    values = _rand(5)
    train = values.view(5, 1, 1, 1).expand(5, 1, 6, 6).contiguous()
    y = 0.5 + 0.4 * torch.randn(2, 1, 6, 6, generator=torch.Generator().manual_seed(3),
                                dtype=torch.float64)
    sigma, side = 0.3, 3
    q = patches(y, side, boundary)
    m = patches(torch.ones(1, 1, 6, 6, dtype=torch.float64), side, boundary)[0]
    d2 = ((q[..., None] - values) ** 2 * m[None, :, :, None]).sum(2)
    expected = (torch.softmax(-d2 / (2 * sigma ** 2), -1) * values).sum(-1).view(2, 1, 6, 6)
    machine = PatchEmpiricalDenoiser(train, side, equivariant=equivariant, boundary=boundary)
    assert torch.allclose(machine(y, sigma), expected, atol=1e-12)


@pytest.mark.parametrize("boundary", ["crop", "circular"])
@pytest.mark.parametrize("side", [1, 3, 7, 9])
def test_location_patches_are_the_patches_location_major(boundary, side):
    images = _rand(4, 2, 5, 6, seed=side)  # two channels, not square, P up to > h
    expected = patches(images, side, boundary).permute(1, 2, 0)
    got = location_patches(images, side, boundary)
    assert got.shape == (30, 2 * side * side, 4) and got.is_contiguous()
    assert torch.equal(got, expected)


def test_ls_matches_brute_force():
    train, y, sigma, side = _rand(4, 1, 5, 6), _rand(3, 1, 5, 6, seed=4), 0.15, 3
    mask = patches(torch.ones(1, 1, 5, 6, dtype=torch.float64), side, "crop")[0]
    q = patches(y, side, "crop")  # (b, d, K)
    x = patches(train, side, "crop")  # (N, d, K): the candidates at each location
    d2 = (((q[:, None] - x[None]) ** 2) * mask).sum(-1)  # (b, N, d)
    w = torch.softmax(-d2 / (2 * sigma ** 2), 1)
    expected = (w * train.flatten(2)[None, :, 0]).sum(1).view(3, 1, 5, 6)
    assert torch.allclose(local_empirical(train, side)(y, sigma), expected, atol=1e-12)


@pytest.mark.parametrize("rounded", [False, True])
def test_els_crop_matches_brute_force_with_repeated_patches(rounded):
    """Candidates: every patch wholly inside a training image (duplicates merged with their
    multiplicity must give the same answer as keeping them all)."""
    train = _rand(3, 1, 6, 7, seed=5)
    train = train.round() if rounded else train
    y, sigma, side = _rand(2, 1, 6, 7, seed=6), 0.2, 3
    cand = F.unfold(train, side).transpose(1, 2).reshape(-1, side * side)
    mask = patches(torch.ones(1, 1, 6, 7, dtype=torch.float64), side, "crop")[0]
    expected = _brute(patches(y, side, "crop"), cand, side * side // 2, mask,
                      sigma).view(2, 1, 6, 7)
    got = equivariant_local_empirical(train, side)(y, sigma)
    assert torch.allclose(got, expected, atol=1e-12)


def test_els_circular_commutes_with_circular_shifts():
    train, y = _rand(4, 2, 8, 8, seed=7), _rand(3, 2, 8, 8, seed=8)
    machine = equivariant_local_empirical(train, 5, boundary="circular")
    shifted = machine(torch.roll(y, (2, 3), (2, 3)), 0.2)
    assert torch.allclose(shifted, torch.roll(machine(y, 0.2), (2, 3), (2, 3)), atol=1e-12)
    # the LS machine is not equivariant: its prior depends on the location
    ls = local_empirical(train, 5, boundary="circular")
    assert not torch.allclose(ls(torch.roll(y, (2, 3), (2, 3)), 0.2),
                              torch.roll(ls(y, 0.2), (2, 3), (2, 3)), atol=1e-6)


@pytest.mark.parametrize("equivariant", [False, True])
def test_stable_at_small_sigma(equivariant):
    """At tiny σ a training image is its own posterior mean, in float32, with no NaN
    (for ELS with the crop rule, where the pixel's whole patch is a candidate: off the
    border)."""
    train = _rand(6, 1, 8, 8, seed=9).float()
    machine = PatchEmpiricalDenoiser(train, 3, equivariant=equivariant)
    out = machine(train[:2], 1e-4)
    assert torch.isfinite(out).all()
    inside = (..., slice(1, -1), slice(1, -1)) if equivariant else (...,)
    assert torch.allclose(out[inside], train[:2][inside], atol=1e-5)


def test_patch_schedule_uses_the_nearest_sigma_in_log():
    train = _rand(3, 1, 6, 6).float()
    machine = local_empirical(train, {0.01: 3, 0.1: 5, 1.0: 7})
    assert [machine.patch_at(s) for s in (0.005, 0.02, 0.05, 0.5, 4.0)] == [3, 3, 5, 7, 7]
    y = _rand(2, 1, 6, 6, seed=1).float()
    mixed = machine(y, torch.tensor([0.01, 1.0]))  # one σ per image: each its own P
    assert torch.allclose(mixed[:1], local_empirical(train, 3)(y[:1], 0.01))
    assert torch.allclose(mixed[1:], local_empirical(train, 7)(y[1:], 1.0))


@pytest.mark.parametrize("kwargs, match", [
    ({"patch": 4}, "odd integer"),
    ({"patch": {}}, "at least one"),
    ({"patch": 3, "boundary": "reflect"}, "boundary must be one of"),
    ({"patch": 9, "equivariant": True}, "P <= min"),
])
def test_bad_input_is_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        PatchEmpiricalDenoiser(_rand(2, 1, 6, 6), **kwargs)


def test_agreement_is_the_pixel_correlation():
    a = _rand(4, 1, 5, 5)
    assert np.allclose(agreement(a, 3 * a + 1), 1.0)  # r is scale- and offset-free
    assert np.allclose(agreement(a, -a), -1.0)
    flat = a.flatten(1).numpy()
    b = _rand(4, 1, 5, 5, seed=2)
    expected = [np.corrcoef(flat[i], b.flatten(1).numpy()[i])[0, 1] for i in range(4)]
    assert np.allclose(agreement(a, b), expected)
    summary = summarize_agreement(np.array([0.1, 0.5, 0.9]))
    assert summary["r"]["median"] == 0.5 and np.isclose(summary["r2"]["median"], 0.25)


def test_calibration_recovers_the_patch_of_a_machine_posing_as_the_network():
    train = _rand(20, 1, 8, 8, seed=11).float()
    truth = local_empirical(train, {0.05: 3, 0.3: 7})
    noise = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(12))
    run = sample(truth, noise, method="heun", sigma_max=1.0, sigma_min=0.02, steps=6,
                 mean=0.5, record_every=1)
    sides = {"ls": {p: local_empirical(train, p) for p in (3, 5, 7)}}
    schedule, scores = calibrate(sides, truth, run.trajectory, run.grid)
    assert schedule["ls"] == {float(s): truth.patch_at(float(s)) for s in run.grid[:-1]}
    assert all(len(v) == len(run.grid) - 1 for v in scores["ls"].values())


@pytest.mark.parametrize("equivariant", [False, True])
def test_chunked_and_whole_paths_agree(monkeypatch, equivariant):
    """Small chunk budgets (training patches unfolded per chunk, many candidate blocks)
    give the same output as one pass."""
    import theorybench.denoisers.local as local

    train, y = _rand(9, 1, 7, 7, seed=13), _rand(2, 1, 7, 7, seed=14)
    whole = PatchEmpiricalDenoiser(train, 3, equivariant=equivariant)(y, 0.1)
    monkeypatch.setattr(local, "_CHUNK_ELEMENTS", 300)
    monkeypatch.setattr(local, "_ROW_BLOCK", 16)
    monkeypatch.setattr(local, "_CANDIDATE_BLOCK", 7)
    chunked = PatchEmpiricalDenoiser(train, 3, equivariant=equivariant)(y, 0.1)
    assert torch.allclose(chunked, whole, atol=1e-12)


def test_machines_need_an_ode_sampler():
    """The machines follow the network's ODE path; a stochastic sampler has none."""
    from theorybench.experiments.machines_sweep import build_machine_cells
    from theorybench.experiments.memorization_sweep import build_memorization_cells

    def memorization(sampler):
        return build_memorization_cells([("disks", {"size": 16})], [1], {"arch": "bfcnn"}, 10,
                                        4, 1e-3, 1.0, 4, [0.1, 1.0], 4, sampler, 0)

    ode = build_machine_cells(memorization({"method": "heun", "steps": 10}), [3], 2, 1,
                              [0.1, 1.0])
    assert len(ode) == 1 and ode[0]["kind"] == "machines"
    with pytest.raises(ValueError, match="machines need an ODE sampler .*'stochastic'"):
        build_machine_cells(memorization({"method": "stochastic"}), [3], 2, 1, [0.1, 1.0])


def test_machines_bracket_reads_an_exact_mmse_as_both_ends():
    """A family with an exact MMSE (its bracket is ``{"exact": curve}``) gives L = U = that
    MMSE in the machines table, not NaN; a bracket gives its own ends."""
    def curve(kind, mse):
        return {"kind": kind, "sigma": [0.01, 0.1], "mse": mse, "se": [1e-6, 1e-5], "d": 4,
                "errors": [[m, m] for m in mse]}

    exact = bracket({"wiener": curve("exact", [1e-4, 5e-3]),
                     "identity": curve("upper", [1e-4, 1e-2])})[0]
    assert _bracket_at(exact, 0.1) == {"L": 5e-3, "L se": 1e-5, "U": 5e-3, "U se": 1e-5}
    pair = bracket({"oracle": curve("lower", [5e-5, 2e-3]),
                    "identity": curve("upper", [1e-4, 1e-2])})[0]
    assert _bracket_at(pair, 0.01) == {"L": 5e-5, "L se": 1e-6, "U": 1e-4, "U se": 1e-6}

"""Jacobian cells and their report section (SCIENCE.md §6): Wiener spectrum in closed form,
disks tangent space against the posterior's Jacobian, contour concentration, end-to-end
cells on tiny networks, pair similarity, figures and CSV."""

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch

import datasets_synth
from datasets_synth.calpha import contour_band
from theorybench.cache import Cache, digest
from theorybench.denoisers.network import NetworkDenoiser
from theorybench.experiments.cells import build_cells
from theorybench.experiments.jacobian_analysis import (
    PAIR_KIND,
    MissingCheckpoint,
    _reference,
    analyse,
    build_jacobian_cells,
    build_pair_cells,
    compute_jacobian_cell,
    compute_pair_cell,
    compute_pair_similarity,
    contour_concentration,
    jacobian_sigmas,
    subspace_overlap,
)
from theorybench.experiments.keys import cell_key
from theorybench.experiments.presets import PRESETS
from theorybench.networks import NetConfig, build_network
from theorybench.report.jacobian import jacobian_section
from theorybench.train_config import TrainConfig
from theorybench.training import train

SMOKE = PRESETS["smoke"]
NET = {"arch": "bfcnn", "channels": 8, "depth": 3}


def random_network(seed: int, size_scale: float = 0.3) -> NetworkDenoiser:
    """A bias-free BF-CNN with random weights everywhere (the output layer is not zero)."""
    cfg = NetConfig(**NET)
    net = build_network(cfg, torch.Generator().manual_seed(seed))
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(size_scale * torch.randn(p.shape, generator=g))
    return NetworkDenoiser(net, cfg)


# ----------------------------------------------------------------------------- references


def test_gaussian_reference_spectrum_is_sorted_wiener_gains():
    dist = datasets_synth.get("gaussian", size=8)
    sigma = 0.1
    info, build = _reference(dist)
    assert info[1] == "exact"
    x, lat = dist.sample_with_latents(1, 0)
    y = (x + sigma * torch.randn(x.shape, generator=torch.Generator().manual_seed(0))).double()
    den, _ = build(x[0], y, {}, sigma)
    out = analyse(den, x[0], y[0], sigma, dist, {})
    lam = dist.eigenvalues.reshape(-1)
    gains = np.sort((lam / (lam + sigma ** 2)).numpy())[::-1]  # J = C (C + σ²I)⁻¹
    np.testing.assert_allclose(out["eigenvalues"], gains, atol=1e-12)
    assert out["trace"] == pytest.approx(gains.sum(), rel=1e-12)
    assert out["count_above"] == int((gains > 0.5).sum())
    assert out["asymmetry"] < 1e-12


def test_disks_tangent_rank_and_posterior_jacobian_spans_it():
    dist = datasets_synth.get("disks", size=32)
    sigma = 0.04
    x, lat = dist.sample_with_latents(1, 0)
    T = dist.tangent_space(lat)
    s = torch.linalg.svdvals(T)
    assert T.shape == (dist.d, 5) and s[-1] > 1e-3 * s[0]  # rank 5
    # the tangent is the derivative of render: a finite difference along r agrees
    step = torch.zeros(5, dtype=torch.float64)
    step[2] = 1e-4
    p = lat["params"][0]
    fd = (dist.render((p + step)[None]) - dist.render((p - step)[None])).reshape(-1) / 2e-4
    torch.testing.assert_close(fd, T[:, 2], atol=1e-3 * float(T[:, 2].abs().max()), rtol=0)

    y = (x + sigma * torch.randn(x.shape, generator=torch.Generator().manual_seed(1))).double()
    info, build = _reference(dist)
    den, extra = build(x[0], y, {k: v[:1] for k, v in lat.items()}, sigma)
    out = analyse(den, x[0], y[0], sigma, dist, {k: v[:1] for k, v in lat.items()})
    # measured (seed 0 image, σ = 0.04): λ = 1.24, 1.00, 1.00, 0.94, 0.86, then 0.02;
    # angles 0.0°, 0.1°, 1.4°, 5°, 7° (ESS of the importance sample 164)
    assert out["count_above"] == 5
    assert out["eigenvalues"][4] > 0.7 and out["eigenvalues"][5] < 0.1
    assert out["tangent_angles_deg"].max() < 30
    assert out["asymmetry"] < 1e-12 and out["eigenvalues"][-1] > -1e-9  # Cov/σ²: sym, PSD
    # the moments' mean is the `posterior` denoiser's estimate (far below the MSE)
    f_post = dist.reference_denoisers()["posterior"](y, sigma).reshape(-1)
    assert float((out["output"].reshape(-1) - f_post.numpy()).__pow__(2).mean()) \
        < 1e-6 * out["mse"]
    assert extra["ess"] > 1
    # SURE is unbiased: within a few of its standard deviations σ²√(2/d) of the error
    assert abs(out["sure_mse"] - out["mse"]) < 5 * sigma ** 2 * math.sqrt(2 / dist.d)


def test_disks_moments_reduce_to_oracle_when_geometry_is_certain():
    """At tiny σ the posterior over the geometry collapses: the mean is the oracle's."""
    dist = datasets_synth.get("disks", size=16)
    x, lat = dist.sample_with_latents(1, 3)
    sigma = 0.005
    y = x + sigma * torch.randn(x.shape, generator=torch.Generator().manual_seed(2))
    mom = dist.reference_denoisers()["posterior"].moments(y, sigma)
    oracle = dist.reference_denoisers()["oracle-geometry"]
    f_oracle = oracle(y.double(), sigma, latents=lat).reshape(-1)
    assert float((mom["mean"] - f_oracle).square().mean()) < 0.05 * sigma ** 2
    assert float(mom["jacobian"].trace()) == pytest.approx(5, abs=0.5)


# ----------------------------------------------------------------------------- contours


def test_contour_band_of_a_straight_edge():
    mask = np.zeros((16, 16))
    mask[:5] = 1.0  # hard edge between rows 4 and 5
    band = contour_band(mask, 2.0)
    np.testing.assert_array_equal(band.any(1), [False, False] + [True] * 6 + [False] * 8)
    assert band.mean() == pytest.approx(6 / 16)
    assert not contour_band(np.ones((8, 8)), 2.0).any()  # no contour: empty band
    with pytest.raises(ValueError, match="width"):
        contour_band(mask, -1.0)


def test_contour_concentration_extremes():
    dist = datasets_synth.get("calpha", size=16, alpha=2.0)
    _, lat = dist.sample_with_latents(1, 0)
    band = contour_band(lat["mask"][0].numpy(), 2.0)
    assert 0 < band.mean() < 1
    on_contour = np.where(band, 1.0, 0.0)[None, None]
    uniform = np.ones((1, 1, 16, 16))
    off = np.where(band, 0.0, 1.0)[None, None]
    values = contour_concentration(np.concatenate([on_contour, uniform, off]), band)
    np.testing.assert_allclose(values, [1.0, band.mean(), 0.0], atol=1e-12)


# ----------------------------------------------------------------------------- cells


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """Tiny trained networks on gaussian and calpha (size 16) and their Jacobian cells."""
    cache = Cache(tmp_path_factory.mktemp("cache"))
    entries = [("gaussian", {"size": 16}), ("calpha", {"size": 16, "alpha": 2.0})]
    sigmas = [0.07368]
    nets = [c for c in build_cells(SMOKE, entries, 0) if c["kind"] == "network"
            and (c["train"]["mode"] == "universal" or c["train"]["sigma"] in sigmas)]
    for c in nets:
        dist = datasets_synth.get(c["dataset"], **c["params"])
        cfg = TrainConfig.from_dict({**c["train"], "steps": 24})
        den = train(dist, NetConfig.from_dict({**c["net"], "in_channels": 1}), cfg, device="cpu")
        den.save(cache.artifact_path(cell_key(c), ".pt"))
    cells = build_jacobian_cells(nets, sigmas, n_images=1, seed=0)
    records = [{"spec": c, "result": compute_jacobian_cell(c, cache, digest(c), device="cpu")}
               for c in cells]
    return cache, nets, cells, records


def test_build_jacobian_cells_and_sigmas():
    grid = (0.01, 0.0194, 0.0376, 0.0729, 0.141, 0.274, 0.532, 1.03, 2.0)
    assert jacobian_sigmas(grid) == [0.0376, 0.141, 0.532]
    assert jacobian_sigmas(SMOKE.sigmas) == [0.07368, 0.2714]
    # nearest in log σ: 0.0501 (ln ratio 0.225), where the linear nearest is 0.0316
    assert jacobian_sigmas((0.0316, 0.0501), targets=(0.04,)) == [0.0501]
    nets = [c for c in build_cells(SMOKE, [("gaussian", {"size": 16})], 0)
            if c["kind"] == "network"]
    cells = build_jacobian_cells(nets, [0.07368, 0.2714], n_images=2, seed=0)
    assert [(c["mode"], c["sigma"]) for c in cells] == [
        ("per-sigma", 0.07368), ("per-sigma", 0.2714), ("universal", 0.07368),
        ("universal", 0.2714)]
    assert json.loads(json.dumps(cells)) == cells
    assert all(c["network_key"] == cell_key(c["network"]) for c in cells)
    with pytest.raises(ValueError, match="per-σ networks"):
        build_jacobian_cells(nets, [0.05], n_images=2, seed=0)
    with pytest.raises(ValueError, match="n_images"):
        build_jacobian_cells(nets, [0.07368], n_images=0, seed=0)


def test_cells_compute_every_measure(study):
    _, _, cells, records = study
    assert len(records) == 4  # 2 entries × (per-σ, universal)
    for rec in records:
        res = rec["result"]
        assert json.loads(json.dumps(res)) == res
        net, ref = res["denoisers"]["network"], res["denoisers"]["reference"]
        d, sigma = res["d"], res["sigma"]
        assert len(net["eigenvalues"][0]) == d and len(ref["eigenvalues"][0]) == d
        assert np.asarray(net["eigenvectors0"]).shape == (8, 1, 16, 16)
        assert net["homogeneity_error"][0] < 1e-4  # bias-free: J y = f(y)
        # SURE and the measured error agree within SURE's noise, σ²√(2/d) per pixel
        for den in (net, ref):
            assert abs(den["sure_mse"][0] - den["mse"][0]) < 5 * sigma ** 2 * math.sqrt(2 / d)
        if rec["spec"]["dataset"] == "gaussian":
            lam = datasets_synth.get("gaussian", size=16).eigenvalues.reshape(-1)
            assert ref["trace"][0] == pytest.approx(float((lam / (lam + sigma ** 2)).sum()),
                                                    rel=1e-5)
        else:
            assert ref["kind"] == "lower" and "oracle" in ref["method"]
            assert len(net["contour_concentration"][0]) == 8
            assert 0 < net["contour_chance"][0] < 1


def test_missing_checkpoint(tmp_path):
    nets = [c for c in build_cells(SMOKE, [("gaussian", {"size": 16})], 0)
            if c["kind"] == "network"]
    cell = build_jacobian_cells(nets, [0.07368], n_images=1, seed=0)[0]
    with pytest.raises(MissingCheckpoint, match="no checkpoint"):
        compute_jacobian_cell(cell, Cache(tmp_path), "k")


def test_section_writes_figures_and_csv(study, tmp_path):
    _, _, _, records = study
    lines = jacobian_section(records + [{"spec": {"kind": "network"}}], tmp_path)
    text = "\n".join(lines)
    assert "## Jacobian eigen-analysis" in text
    for name in ("jacobian_spectra_gaussian.png", "jacobian_vectors_gaussian_0.png",
                 "jacobian_trace_gaussian.png", "jacobian_spectra_calpha-alpha-2-0.png",
                 "jacobian.csv"):
        assert (tmp_path / name).stat().st_size > 0
        assert name in text
    table = pd.read_csv(tmp_path / "jacobian.csv")
    assert len(table) == 6  # 2 entries × (per-σ, universal, reference)
    assert {"trace", "count>0.5", "contour_top_k", "contour_chance", "sure_mse", "sure_se",
            "sure_shown"} <= set(table)
    # SURE is shown (± SE) only where its SE is below 10 % of the MSE, else said why
    for row in table.itertuples():
        assert row.sure_shown == (row.sure_se < 0.1 * row.mse)
    hidden = table[~table.sure_shown]
    assert all(f"SE {r.sure_se:.2g} vs MSE {r.mse:.2g}" in text for r in hidden.itertuples())
    assert text.count("not shown (") == len(hidden)
    assert jacobian_section([], tmp_path / "empty") == []
    pair = {"sigma": [0.1], "overlap": [[0.5, 0.6]], "jacobian_distance": [[0.2, 0.3]],
            "chance": 0.0625, "k": 4, "label": "gaussian(size=8)"}
    pairs = [{"spec": {"kind": PAIR_KIND}, "result": {**pair, "N": n}} for n in (10, 100)]
    lines = jacobian_section(pairs, tmp_path / "pairs")
    assert "jacobian_pairs.png" in "\n".join(lines)
    pairs = pd.read_csv(tmp_path / "pairs" / "jacobian_pairs.csv")
    assert len(pairs) == 2  # the mean over images and its standard error, per N
    assert np.allclose(pairs["overlap"], 0.55) and np.allclose(pairs["overlap_se"], 0.05)


# ----------------------------------------------------------------------------- pairs


def test_pair_similarity_of_two_networks(tmp_path):
    paths = []
    for seed in (0, 0, 5):
        path = tmp_path / f"net{len(paths)}.pt"
        random_network(seed).save(path)
        paths.append(path)
    same = compute_pair_similarity(paths[0], paths[1], "gaussian", {"size": 8}, [0.1], 2, 0, k=4)
    other = compute_pair_similarity(paths[0], paths[2], "gaussian", {"size": 8}, [0.1], 2, 0, k=4)
    np.testing.assert_allclose(same["overlap"], 1.0, atol=1e-6)
    np.testing.assert_allclose(same["jacobian_distance"], 0.0, atol=1e-6)
    assert 0 <= np.max(other["overlap"]) < 0.99
    assert np.min(other["jacobian_distance"]) > 1e-3
    assert same["chance"] == 4 / 64
    # as cells of the memorization sweep: checkpoints <key>-s1.pt and <key>-s2.pt
    from theorybench.experiments.memorization_sweep import build_memorization_cells

    sweep = build_memorization_cells([("gaussian", {"size": 8})], [4, 8], NET, steps=2,
                                     batch_size=2, lr=1e-3, sigma_max=1.0, n_samples=1,
                                     sigmas=[0.1], n_eval=2, sampler=None, seed=0)
    cells = build_pair_cells(sweep, [0.1], 1, 0, k=4)
    assert [c["N"] for c in cells] == [4, 8] and json.loads(json.dumps(cells)) == cells
    cache = Cache(tmp_path / "cache")
    with pytest.raises(MissingCheckpoint, match="memorization cell"):
        compute_pair_cell(cells[0], cache, "k")
    for i, seed in ((1, 0), (2, 0)):
        random_network(seed).save(cache.artifact_path(cells[0]["memorization_key"], f"-s{i}.pt"))
    result = compute_pair_cell(cells[0], cache, "k")
    assert result["N"] == 4 and result["label"] == "gaussian"  # entry_label omits size
    np.testing.assert_allclose(result["overlap"], 1.0, atol=1e-6)
    # the overlap measure itself: a span against itself and against an orthogonal one
    eye = torch.eye(6, dtype=torch.float64)
    assert subspace_overlap(eye[:, :2], eye[:, [1, 0]]) == pytest.approx(1.0)
    assert subspace_overlap(eye[:, :2], eye[:, 2:4]) == pytest.approx(0.0, abs=1e-12)


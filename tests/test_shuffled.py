"""``shuffled`` = its base, exactly: every reference of the base as ``P f P⁻¹`` (SCIENCE.md §5).

``mse_curve`` on ``shuffled`` evaluates image ``P x_k`` (the base's image k) with noise
``P z_k`` (``evaluation_noise`` permutes the base's noise), so ``y_shuffled = P y_base``
and every conjugated reference errs exactly as the base's, image by image.
"""

import numpy as np
import pytest
import torch

import datasets_synth
from datasets_synth.references.conjugate import Conjugated
from theorybench import mse_curve
from theorybench.denoisers import reference_denoisers

CASES = [  # (base, base parameters): faces (empirical + baselines), disks (oracle + posterior)
    ("faces", {"split": "test"}),
    ("disks", {"size": 8}),
    ("gaussian", {"size": 8}),
]
SIGMAS = [0.05, 0.21, 0.6]


class _Inverse:
    """``P⁻¹``-conjugation: ``Conjugated(f, _Inverse(sh))`` is ``y ↦ P⁻¹ f(P y)``."""

    def __init__(self, shuffled):
        self.shuffle, self.unshuffle = shuffled.unshuffle, shuffled.shuffle


def _families(base, params):
    sh = datasets_synth.get("shuffled", base=base, seed=5, **params)
    return sh, reference_denoisers(sh), reference_denoisers(sh.base)


@pytest.mark.parametrize("base, params", CASES, ids=[c[0] for c in CASES])
def test_every_base_reference_is_conjugated(base, params):
    sh, refs, base_refs = _families(base, params)
    assert sh.reference_base() is sh.base
    assert datasets_synth.get(base, **params).reference_base() is None
    assert set(refs) == set(base_refs) >= {"identity", "wavelet"}
    for name, den in refs.items():
        assert isinstance(den, Conjugated), name
        assert den.kind == base_refs[name].kind, name
        assert den.oracle == base_refs[name].oracle, name
        assert den.differentiable == getattr(base_refs[name], "differentiable", True), name
        assert den.description == f"P f P^-1 of {base_refs[name].description}", name
    if base == "faces":
        assert refs["empirical-train"].kind == "upper"
    if base == "disks":
        assert any(den.kind == "lower" and den.oracle for den in refs.values())


@pytest.mark.parametrize("base, params", CASES, ids=[c[0] for c in CASES])
def test_conjugated_references_err_as_the_base_ones(base, params):
    """Paired noise: per-image errors on shuffled equal the base's to float precision."""
    sh, refs, base_refs = _families(base, params)
    n = 6
    x, latents = sh.base.sample_with_latents(n, seed=3)
    xs, latents_s = sh.sample_with_latents(n, seed=3)
    assert torch.equal(xs, sh.shuffle(x))
    z = torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
    for name, f in base_refs.items():
        f_sh = refs[name]
        for sigma in SIGMAS:
            y = x + sigma * z
            kw = {"latents": latents} if f.oracle else {}
            kw_s = {"latents": latents_s} if f.oracle else {}
            out, out_s = f(y, sigma, **kw), f_sh(sh.shuffle(y), sigma, **kw_s)
            torch.testing.assert_close(out_s, sh.shuffle(out), rtol=1e-6, atol=1e-7,
                                       msg=f"{name} at σ={sigma}")
    # the same through mse_curve: P⁻¹ f_shuffled P on the base is f, image by image
    for name, f in base_refs.items():
        a = mse_curve(f, sh.base, SIGMAS, n=n, seed=2)
        b = mse_curve(Conjugated(refs[name], _Inverse(sh)), sh.base, SIGMAS, n=n, seed=2)
        np.testing.assert_allclose(b.attrs["errors"], a.attrs["errors"], rtol=1e-5, atol=1e-9,
                                   err_msg=name)


def test_shuffled_gaussian_keeps_the_exact_start_kl_and_the_blind_optimum():
    """The permutation leaves N(μ̂·1, σ² I) and the blind posterior's error unchanged: the
    shuffled Gaussian's exact closing term and blind Wiener filter are the base's."""
    sh, refs, base_refs = _families("gaussian", {"size": 16})
    assert sh.start_kl(2.0, 0.5) == sh.base.start_kl(2.0, 0.5) > 0
    assert not hasattr(refs["identity"], "blind")  # only where the base has one
    blind, base_blind = refs["wiener"].blind(0.01, 2.0), base_refs["wiener"].blind(0.01, 2.0)
    assert blind.kind == base_blind.kind == "blind"
    a = mse_curve(base_blind, sh.base, SIGMAS, n=6, seed=2)
    b = mse_curve(Conjugated(blind, _Inverse(sh)), sh.base, SIGMAS, n=6, seed=2)
    np.testing.assert_allclose(b.attrs["errors"], a.attrs["errors"], rtol=1e-5, atol=1e-9)


def test_shuffled_faces_upper_bound_equals_the_base_one():
    """The issue's symptom: at σ ≈ 0.21 the shuffled wavelet gave U ≈ 0.030 against 0.016.

    On the shuffled family itself (same 20 test faces, noise permuted like the images)
    every per-image error equals the base's to float precision: U_shuffled = U_base.
    """
    sh, refs, base_refs = _families("faces", {"split": "test"})
    sigmas = [0.1, 0.21, 0.4]
    for name in ("wavelet", "empirical-train", "identity"):
        a = mse_curve(base_refs[name], sh.base, sigmas, n=20, seed=0)
        b = mse_curve(refs[name], sh, sigmas, n=20, seed=0)
        np.testing.assert_allclose(b.attrs["errors"], a.attrs["errors"], rtol=1e-5,
                                   atol=1e-10, err_msg=name)


@pytest.mark.parametrize("kind", ["upper", "exact"])
def test_shuffled_rows_report_u_of_both_families(kind):
    """Each family's own U (its exact MMSE where it has one), matched by σ."""
    from theorybench.report.main import StudyData, shuffled_rows

    def curve(sigmas, mses):
        return {"sigma": sigmas, "mse": mses, "se": [0.0] * len(sigmas), "d": 4,
                "errors": [[m, m] for m in mses]}

    def records(u, nets):
        ref = {"spec": {"kind": "reference"},
               "result": {"curves": {"wavelet": {"kind": "upper", **curve([0.1, 0.2], u)},
                                     "best": {"kind": kind, **curve([0.1, 0.2],
                                                                    [x / 2 for x in u])}}}}
        return [ref] + [{"spec": {"kind": "network", "train": {"mode": "per-sigma"}},
                         "result": {"curve": curve([s], [m]), "examples": {}}}
                        for s, m in nets]

    params = {"base": "faces", "seed": 0, "split": "test"}
    studies = [StudyData("faces", {"split": "test"},
                         records([1.0, 2.5], [(0.1, 0.5), (0.2, 1.0)])),
               StudyData("shuffled", params, records([1.0, 2.0], [(0.2, 1.5)]))]
    rows = shuffled_rows(studies)
    assert len(rows) == 1
    row = rows[0]
    assert row["sigma"] == pytest.approx(0.2)  # matched by σ, not by position
    assert row["network base"] == 1.0 and row["ratio shuffled/base"] == pytest.approx(1.5)
    assert (row["U shuffled"], row["U base"]) == (1.0, 1.25)  # the lower upper bound, or exact
    assert not any("P f P" in key for key in row)


def test_the_section_names_how_the_two_families_networks_were_trained_differently():
    """The shuffled family's networks against its base's: each setting that differs, from
    the cells' own TrainConfig dicts (per-σ settings that each network sets apart, its σ and
    monitored σ, are not differences; a setting one record lacks is not compared)."""
    from theorybench.report.main import StudyData, _recipes_text, recipe_differences
    from theorybench.train_config import TrainConfig

    curve = {"sigma": [0.1], "mse": [1.0], "se": [0.0], "d": 4, "errors": [[1.0, 1.0]]}
    net = {"arch": "unet", "channels": 16}

    def records(steps, scales, per_sigma=(0.1, 0.2), padding="zeros", shrink=None):
        universal = TrainConfig(mode="universal", steps=steps).to_dict()
        nets = [{"spec": {"kind": "network", "train": universal, "net": net},
                 "result": {"curve": curve, **({} if shrink is None
                                               else {"shrink_threshold": shrink})}}]
        nets += [{"spec": {"kind": "network", "net": {**net, "padding": padding},
                           "init_key": "abc",
                           "train": TrainConfig(mode="per-sigma", sigma=s, steps=400,
                                                monitor_sigmas=(s,)).to_dict()},
                  "result": {"curve": curve, "examples": {}, "output_scales": [scale]}}
                 for s, scale in zip(per_sigma, scales, strict=True)]
        return nets

    faces = StudyData("faces", {"split": "test"}, records(4000, [1.0, 1.0]))
    params = {"base": "faces", "seed": 0, "split": "test"}
    shuffled = StudyData("shuffled", params, records(12000, [1.0, 0.7]))
    assert recipe_differences(shuffled, faces) == [
        "per-sigma preconditioned 1 of 2 against 0 of 2", "universal steps 12000 against 4000"]
    assert recipe_differences(faces, faces) == []
    assert _recipes_text([faces, shuffled]) == (
        f" ({shuffled.label} against faces: per-sigma preconditioned 1 of 2 against 0 of 2, "
        "universal steps 12000 against 4000)")
    # one per-σ cell fewer: no difference; another padding: the architecture differs
    fewer = StudyData("shuffled", params, records(4000, [1.0], per_sigma=(0.1,)))
    assert recipe_differences(fewer, faces) == []
    assert _recipes_text([faces, fewer]) == " (here the same for both)"
    circular = StudyData("shuffled", params, records(4000, [1.0, 1.0], padding="circular"))
    assert recipe_differences(circular, faces) == [
        'per-sigma net {"arch": "unet", "channels": 16, "padding": "circular"} against '
        '{"arch": "unet", "channels": 16, "padding": "zeros"}']
    # an older record without a setting: not compared; a kind only one entry has: said
    older = records(2000, [1.0, 1.0])
    del older[0]["spec"]["train"]["precision"]
    older = StudyData("shuffled", params, older)
    assert recipe_differences(older, faces) == ["universal steps 2000 against 4000"]
    alone = StudyData("shuffled", params, records(4000, [1.0, 1.0])[:1])
    assert recipe_differences(alone, faces) == ["per-sigma networks in one only"]
    # the blind shrinkage's calibrated threshold, stored in the universal network's result
    calibrated = StudyData("faces", {"split": "test"}, records(4000, [1.0, 1.0], shrink=0.083))
    shrunk = StudyData("shuffled", params, records(4000, [1.0, 1.0], shrink=0.283))
    assert recipe_differences(shrunk, calibrated) == [
        "universal shrink threshold 0.283 against 0.083"]
    assert recipe_differences(shrunk, faces) == []  # a threshold one side lacks: not compared

"""Evaluating a user's own network: the README's example runs verbatim, and the common
mistakes are refused with one line naming the fix."""

import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch

import datasets_synth
from theorybench import (
    data_variance,
    jacobian_spectrum,
    kl_bound,
    mmse_references,
    mse_curve,
    sample,
)
from theorybench.denoisers import reference_denoisers
from theorybench.kl import SELECTION_Z, tightest_references

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_example() -> str:
    text = README.read_text()
    found = re.search(r"## Evaluate your own network.*?```python\n(.*?)```", text, re.S)
    assert found, "README lost its 'Evaluate your own network' example"
    return found.group(1)


def test_readme_example_runs_verbatim(capsys):
    namespace = {}
    exec(compile(readme_example(), str(README), "exec"), namespace)
    kl = namespace["kl"].table
    assert namespace["how"] == "exact" and len(kl) == 1
    assert 0 < kl["kl_low"].iloc[0] < kl["kl_high"].iloc[0]  # a shrinkage is not optimal
    assert namespace["images"].shape == (4, 1, 16, 16)
    assert len(namespace["spectrum"].eigenvalues) == 256


def test_mmse_references_pick_the_tightest_bounds_per_sigma():
    dist = datasets_synth.get("disks", size=16)
    sigmas = [0.05, 0.2]
    refs, how = mmse_references(dist, sigmas, n=8, seed=0)
    assert how == "bracket" and set(refs) == {"lower", "upper"}
    curves = {name: mse_curve(den, dist, sigmas, n=8, seed=0)
              for name, den in reference_denoisers(dist).items()}
    kinds = {name: den.kind for name, den in reference_denoisers(dist).items()}
    # per σ one of the bounds: the tightest, or one that the tightest does not beat by more
    # than SELECTION_Z standard errors of their paired difference (kl._pick)
    for side, sign in (("upper", 1.0), ("lower", -1.0)):
        names = [n for n in curves if kinds[n] == side]
        values = sign * np.stack([curves[n]["mse"].to_numpy() for n in names])
        errors = sign * np.stack([curves[n].attrs["errors"] for n in names])
        chosen = sign * refs[side]["mse"].to_numpy()
        held = np.isclose(values, chosen).argmax(axis=0)  # the curve each σ took
        assert np.isclose(values, chosen).any(axis=0).all()
        for j, (k, best) in enumerate(zip(held, values.argmin(axis=0), strict=True)):
            diff = errors[k, j] - errors[best, j]
            assert diff.mean() <= SELECTION_Z * diff.std(ddof=1) / math.sqrt(diff.size) + 1e-12
    with pytest.raises(ValueError, match="no exact or upper"):
        tightest_references({"a": curves["oracle-geometry"]}, {"a": "lower"})


def test_data_variance_is_the_field_variance():
    dist = datasets_synth.get("gaussian", size=16, std=0.2)
    value, se, mean = data_variance(dist, n=512, seed=0)
    assert abs(value - 256 * 0.04) < 4 * se + 0.05 * 256 * 0.04 and abs(mean - 0.5) < 0.05


def test_data_variance_corrects_for_the_fitted_mean():
    """Flat images of gray level c ~ N(0.5, s²): E‖x − μ̂‖² for a fresh x and μ̂ fitted on n
    images is d s² (1 + 1/n); the in-sample mean alone is d s² (1 − 1/n) in expectation, and
    the 2d·Var(μ̂) term restores the difference (n = 4: 1.25 against 0.75 d s²)."""

    class Flat:
        def sample(self, n, seed):
            g = torch.Generator().manual_seed(seed)
            level = 0.5 + 0.2 * torch.randn(n, 1, 1, 1, generator=g, dtype=torch.float64)
            return level.expand(n, 1, 4, 4)

    values = [data_variance(Flat(), n=4, seed=s)[0] for s in range(10_000)]
    assert np.mean(values) / (16 * 0.04) == pytest.approx(1.25, rel=0.03)


def test_wrong_output_shape_is_refused():
    dist = datasets_synth.get("gaussian", size=16)
    squeezed = lambda y, sigma: y[:, 0]  # (n, h, w): would broadcast silently  # noqa: E731
    with pytest.raises(ValueError, match=r"returned \(8, 16, 16\).*\(n, c, h, w\)"):
        mse_curve(squeezed, dist, [0.1], n=8)
    with pytest.raises(ValueError, match="must return a tensor"):
        sample(squeezed, torch.randn(2, 1, 16, 16), method="heun", steps=3)
    with pytest.raises(ValueError, match="must return a tensor"):
        sample(lambda y, s: y.numpy(), torch.randn(2, 1, 16, 16), method="stochastic")


def test_module_in_training_mode_is_refused():
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 1, 3, padding=1), torch.nn.BatchNorm2d(1))
    dist = datasets_synth.get("gaussian", size=16)

    def denoiser(y, sigma):
        return net(y)

    denoiser.net = net  # an object holding the module, as wrappers do
    for call in (lambda f: mse_curve(f, dist, [0.1], n=4),
                 lambda f: sample(f, torch.randn(2, 1, 16, 16), method="heun", steps=3),
                 lambda f: jacobian_spectrum(f, torch.randn(1, 1, 16, 16), 0.1)):
        with pytest.raises(ValueError, match=r"training mode; call \.eval\(\)"):
            call(denoiser)
    net.eval()
    assert len(mse_curve(denoiser, dist, [0.1], n=4)) == 1


def test_sigma_in_the_0_255_convention_warns():
    dist = datasets_synth.get("gaussian", size=16)
    with pytest.warns(UserWarning, match="divide a 0–255 σ by 255"):
        mse_curve(lambda y, s: y, dist, [25.0], n=4)


def test_curves_on_different_grids_are_refused():
    dist = datasets_synth.get("gaussian", size=16)
    curve = mse_curve(lambda y, s: y, dist, [0.05, 0.1, 0.2], n=4)
    refs, _ = mmse_references(dist, [0.05, 0.1, 0.3], n=4)
    with pytest.raises(ValueError, match="grid"):
        kl_bound(curve, refs)


def test_standard_error_of_the_identity_matches_its_closed_form():
    # the identity's per-image error is σ² mean(z²) over d pixels, of variance 2σ⁴/d: the
    # standard error of the mean over n images is σ² √(2/d) / √n
    dist = datasets_synth.get("gaussian", size=8)
    n, sigma = 400, 0.3
    curve = mse_curve(lambda y, s: y, dist, [sigma], n=n, seed=1)
    assert curve.mse[0] == pytest.approx(sigma**2, rel=0.03)
    assert curve.se[0] == pytest.approx(sigma**2 * np.sqrt(2 / dist.d / n), rel=0.1)
    errors = curve.attrs["errors"]
    assert curve.se[0] == pytest.approx(errors.std(1, ddof=1)[0] / np.sqrt(n), rel=1e-12)

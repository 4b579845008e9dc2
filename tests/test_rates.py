"""Rates of the report (SCIENCE.md §5) and the SURE display rule (§6) on synthetic curves."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

import datasets_synth
from theorybench.report.jacobian import SURE_MAX_REL_SE, _row, sure_cell, sure_se
from theorybench.report.main import log_slope, rate_rows, ratio_se, secant_bracket

SIGMAS = np.geomspace(0.01, 2.0, 8)


def frame(sigma, errors) -> pd.DataFrame:
    """A curve like ``mse_curve``'s from per-image errors (len(sigma), n)."""
    errors = np.asarray(errors, dtype=float)
    out = pd.DataFrame({"sigma": sigma, "mse": errors.mean(1),
                        "se": errors.std(1, ddof=1) / math.sqrt(errors.shape[1]), "d": 256})
    out.attrs["errors"] = errors
    return out


def power_law_errors(rng, sigma, slope, n, shared=0.5, own=0.2):
    """Per-image errors c σ^{2·slope} e^{shared·u_j + own·v_ij}: image j's factor u_j is the
    same at every σ (correlated across σ, like the same images and noise), v_ij is not."""
    u = rng.standard_normal(n)
    v = rng.standard_normal((len(sigma), n))
    return 0.3 * sigma[:, None] ** (2 * slope) * np.exp(shared * u[None] + own * v)


def test_log_slope_se_matches_the_spread_of_slopes():
    rng = np.random.default_rng(0)
    sigma = np.geomspace(0.02, 0.25, 6)
    fits = [log_slope(sigma, e.mean(1), 0.02, 0.25, e)
            for e in (power_law_errors(rng, sigma, 2 / 3, 64) for _ in range(400))]
    slopes = np.array([f["slope"] for f in fits])
    ses = np.array([f["se"] for f in fits])
    assert all(f["points"] == 6 for f in fits)
    # unbiased up to the log of a mean (O(1/n)), and the SE is the slopes' spread: an SE
    # that ignored the correlation across σ (the shared factor) would be ~2.5× too large
    assert abs(slopes.mean() - 2 / 3) < 4 * slopes.std() / math.sqrt(len(slopes))
    assert 0.85 < np.median(ses) / slopes.std() < 1.15
    # the residual SE is zero for an exact power law and grows with curvature
    exact = 0.3 * sigma ** (4 / 3)
    assert log_slope(sigma, exact, 0.02, 0.25)["se_fit"] < 1e-12
    assert math.isnan(log_slope(sigma, exact, 0.02, 0.25)["se"])  # no per-image errors
    curved = exact / (1 + sigma**2 / 0.01)
    assert log_slope(sigma, curved, 0.02, 0.25)["se_fit"] > 0.05
    # the window is respected and degenerate windows give NaN
    assert log_slope(sigma, exact, 0.03, 0.1)["points"] == sum((sigma >= 0.03) & (sigma <= 0.1))
    assert math.isnan(log_slope(sigma, exact, 0.3, 1.0)["slope"])


def mmse(sigma):
    """A curve with slope 1 at small σ, → 0 at large σ (the shape of SCIENCE.md §5)."""
    return 0.05 * sigma**2 / (0.02 + sigma**2) ** (1 / 3)


def exact_frame(values, n=4):
    """Per-image errors with exactly the given means (symmetric perturbation)."""
    values = np.asarray(values, dtype=float)
    return frame(SIGMAS, values[:, None] * (1 + 0.01 * np.array([1, -1] * (n // 2))))


def test_secant_bracket_contains_the_true_slope():
    rng = np.random.default_rng(1)
    m = mmse(SIGMAS)
    lower = exact_frame(m * (1 - rng.uniform(0.05, 0.4, m.size)))
    upper = exact_frame(m * (1 + rng.uniform(0.05, 1.0, m.size)))
    for a in range(len(SIGMAS)):
        for b in range(a + 1, len(SIGMAS)):
            sa, sb = SIGMAS[a], SIGMAS[b]
            true = math.log(m[b] / m[a]) / math.log(sb**2 / sa**2)
            br = secant_bracket(lower, upper, sa, sb)
            assert br["low"] <= true <= br["high"]
            width = math.log(upper.mse[b] * upper.mse[a] / (lower.mse[b] * lower.mse[a]))
            assert br["high"] - br["low"] == pytest.approx(width / math.log(sb**2 / sa**2))
            # the same relative perturbation of every image in L and U: paired, it cancels
            assert br["se_low"] == pytest.approx(0, abs=1e-9)
            assert br["se_high"] == pytest.approx(0, abs=1e-9)
    # L = 0 (no lower bound) or U infinite (a bound beyond its grid): no bracket end
    zero = exact_frame(0 * m)
    assert math.isnan(secant_bracket(zero, upper, SIGMAS[1], SIGMAS[2])["high"])
    with np.errstate(invalid="ignore"):  # the SE column of an infinite curve
        inf_upper = exact_frame(np.where(SIGMAS > 1, np.inf, m))
    assert math.isnan(secant_bracket(lower, inf_upper, SIGMAS[1], SIGMAS[7])["high"])


def test_rate_rows_of_a_calpha_entry():
    rng = np.random.default_rng(2)
    dense = np.geomspace(0.01, 2.0, 29)
    assert np.allclose(dense[::4], SIGMAS)
    m_dense = mmse(dense)[:, None]
    noise = lambda shape: np.exp(0.1 * rng.standard_normal(shape))  # noqa: E731
    refs = {"lower": frame(dense, 0.8 * m_dense * noise((29, 32))),
            "upper": frame(dense, 1.3 * m_dense * noise((29, 32)))}
    per_sigma = frame(SIGMAS, 1.5 * mmse(SIGMAS)[:, None] * noise((8, 32)))
    universal = frame(dense, 2.0 * m_dense * noise((29, 32)))
    study = SimpleNamespace(name="calpha", label="calpha(alpha=2.0)",
                            params={"alpha": 2.0, "size": 16},
                            networks={"per-sigma": per_sigma, "universal": universal},
                            reference={"result": {"curves": {}}})
    preset = SimpleNamespace(rate_range=(0.02, 0.25))
    rows = pd.DataFrame(rate_rows(study, refs, preset))
    slopes = rows[rows.table == "slope"]
    assert len(slopes) == 1 + 7  # the window, then each coarse interval
    window = slopes.iloc[0]
    assert window["σ from"] == pytest.approx(SIGMAS[1])
    assert window["σ to"] == pytest.approx(SIGMAS[4])
    assert window["fit"] == "LS, 4 σ" and (slopes["fit"].iloc[1:] == "secant").all()
    a, b = slopes["σ from"].to_numpy(), slopes["σ to"].to_numpy()
    true = np.log(mmse(b) / mmse(a)) / np.log(b**2 / a**2)
    # L and U are 0.8 and 1.3 × the MMSE up to 10 % noise per image (SE ~2 % per σ)
    assert ((slopes["MMSE ≥"] - 4 * slopes["se ≥"] <= true)
            & (true <= slopes["MMSE ≤"] + 4 * slopes["se ≤"])).all()
    assert (slopes["MMSE ≥"] <= slopes["MMSE ≤"]).all()
    for label in ("per-σ net", "universal net", "L", "U"):
        assert slopes[f"{label} se"].between(0, 0.1).all()
    assert slopes["theory α/(α+1)"].eq(2 / 3).all()
    field_slope = datasets_synth.get("calpha", alpha=2.0, size=16).rate_law()["component_slope"]
    assert np.allclose(slopes["region fields Wiener"], [field_slope(16, s, t)
                                                        for s, t in zip(a, b, strict=True)])
    ratios = rows[rows.table == "ratio"]
    assert len(ratios) == 2 * 8  # two networks × the coarse grid
    ps = ratios[ratios.network == "per-sigma"]
    assert np.allclose(ps["MSE/U"], per_sigma.mse / refs["upper"].mse.to_numpy()[::4])
    assert np.allclose(ps["MSE/L"], per_sigma.mse / refs["lower"].mse.to_numpy()[::4])
    assert (ratios["se(MSE/U)"] > 0).all() and (ratios["se(MSE/L)"] > 0).all()
    # paired with the reference on the same 32 images: the delta-method SE of the ratio
    assert np.allclose(ps["se(MSE/U)"], ratio_se(per_sigma.attrs["errors"],
                                                 refs["upper"].attrs["errors"][::4]))
    note = rows[rows.table == "note"].note.iloc[0]  # the window's bracket is about [0.82, 1.02]
    assert "above the theory α/(α+1) = 0.667" in note and "below" not in note


def test_rate_rows_without_networks_on_the_coarse_reference_grid():
    rng = np.random.default_rng(3)
    m = mmse(SIGMAS)[:, None]
    refs = {"lower": frame(SIGMAS, 0.9 * m * np.exp(0.05 * rng.standard_normal((8, 16)))),
            "upper": frame(SIGMAS, 1.2 * m * np.exp(0.05 * rng.standard_normal((8, 16))))}
    study = SimpleNamespace(name="calpha", label="c", params={"alpha": 4.0, "size": 16},
                            networks={"per-sigma": None, "universal": None},
                            reference={"result": {"curves": {
                                "a": {"sigma": list(SIGMAS)}}}})
    rows = pd.DataFrame(rate_rows(study, refs, SimpleNamespace(rate_range=(0.02, 0.25))))
    slopes = rows[rows.table == "slope"]
    true = np.log(mmse(slopes["σ to"].to_numpy()) / mmse(slopes["σ from"].to_numpy())) / (
        2 * np.log(slopes["σ to"].to_numpy() / slopes["σ from"].to_numpy()))
    lo = slopes["MMSE ≥"] - 3 * slopes["se ≥"]
    hi = slopes["MMSE ≤"] + 3 * slopes["se ≤"]
    assert ((lo <= true) & (true <= hi)).all()
    assert slopes["theory α/(α+1)"].eq(0.8).all()
    assert "ratio" not in set(rows.table)  # no network: no ratio rows
    note = rows[rows.table == "note"].note.iloc[0]
    assert "above the theory α/(α+1) = 0.8" in note  # this curve's window slope is ~0.9
    # a bracket below the theory: unreachable at this size, the fields' own slope is given
    refs = {k: frame(SIGMAS, f.attrs["errors"] * SIGMAS[:, None] ** -0.6)
            for k, f in refs.items()}
    rows = pd.DataFrame(rate_rows(study, refs, SimpleNamespace(rate_range=(0.02, 0.25))))
    note = rows[rows.table == "note"].note.iloc[0]
    wiener = rows[rows.table == "slope"]["region fields Wiener"].iloc[0]
    assert "below the theory" in note and f"Wiener slope on this window is {wiener:.3g}" in note
    assert "preset paper, 80×80" in note and "no run at a larger size" in note


# ----------------------------------------------------------------------------- SURE


def test_sure_se_formula_matches_monte_carlo():
    """SE of SURE for a linear shrinker f(y) = A y, against the spread over the noise."""
    rng = np.random.default_rng(4)
    d, sigma = 64, 0.3
    lam = rng.uniform(0, 1, d)
    x = rng.standard_normal(d) * 0.5
    z = rng.standard_normal((4000, d))
    y = x + sigma * z
    f = lam * y  # A = diag(λ)
    sure = (((f - y) ** 2).sum(1) - d * sigma**2 + 2 * sigma**2 * lam.sum()) / d
    err = ((f - x) ** 2).sum(1) / d
    rec = {"eigenvalues": [lam.tolist()], "mse": [float(err.mean())],
           "sure_mse": [float(sure[0])]}
    assert sure_se(rec, sigma) == pytest.approx((sure - err).std(), rel=0.1)
    # a non-symmetric J: its antisymmetric part adds σ²‖A‖² to the error, not to the bias
    Q = np.linalg.qr(rng.standard_normal((d, d)))[0]
    S = Q @ np.diag(lam) @ Q.T
    A = 0.3 * (lambda m: m - m.T)(rng.standard_normal((d, d)) / np.sqrt(d))
    J = S + A
    f = y @ J.T
    sure = (((f - y) ** 2).sum(1) - d * sigma**2 + 2 * sigma**2 * np.trace(J)) / d
    err = ((f - x) ** 2).sum(1) / d
    asym = np.linalg.norm(J - J.T) / np.linalg.norm(J)
    rec = {"eigenvalues": [lam.tolist()], "mse": [float(err.mean())],
           "sure_mse": [float(sure[0])], "asymmetry": [float(asym)]}
    assert asym > 0.3
    assert sure_se(rec, sigma) == pytest.approx((sure - err).std(), rel=0.05)
    # f ≈ 0: the familiar σ²√(2/d)
    rec0 = {"eigenvalues": [[0.0] * d], "mse": [0.0], "sure_mse": [0.0]}
    assert sure_se(rec0, sigma) == pytest.approx(sigma**2 * math.sqrt(2 / d))


def jacobian_record(n_images, lam, mse, sure):
    return {"eigenvalues": [lam] * n_images, "trace": [sum(lam)] * n_images,
            "count_above": [1] * n_images, "asymmetry": [0.0] * n_images,
            "homogeneity_error": [0.0] * n_images, "mse": [mse] * n_images,
            "sure_mse": [sure] * n_images}


def test_sure_hidden_when_too_few_images():
    entry = SimpleNamespace(label="calpha(alpha=2.0)")
    d, sigma = 1024, 0.2
    lam = [0.01] * d  # strong shrinkage: SE ≈ σ²√(2/d) ≈ 0.0018+ against an MSE of 0.004
    one = _row(entry, sigma, "network", jacobian_record(1, lam, 0.004, 0.0051))
    assert one["sure_se"] == pytest.approx(sigma**2 * math.sqrt(2 / d), rel=0.2)
    assert not one["sure_shown"]
    cell = sure_cell(one)
    assert cell.startswith("not shown (1 image too few: SE 0.0019")  # bias term included
    assert "MSE 0.004" in cell
    # enough images make it precise: n = 64 divides the SE by 8 (< 10 % of the MSE)
    many = _row(entry, sigma, "network", jacobian_record(64, lam, 0.004, 0.0041))
    assert many["sure_se"] < SURE_MAX_REL_SE * 0.004 and many["sure_shown"]
    assert sure_cell(many).startswith("0.0041 ± ")
    # near the identity (small σ) SURE is precise from one image: shown
    near = _row(entry, 0.01, "network", jacobian_record(1, [0.99] * d, 1e-4, 1.01e-4))
    assert near["sure_shown"]


def test_sure_se_of_a_top_k_record_is_empirical_plus_its_traces_error():
    """Eigenvalues past k are unknown (NaN): no linearized variance, the spread of
    SURE − measured error over the images (undefined for one image), plus in full the
    error its Hutchinson traces put in SURE, 2σ²h/d (shared probes)."""
    lam = [0.9, 0.5] + [math.nan] * 62
    rec = {"eigenvalues": [lam, lam, lam], "mse": [1.0, 2.0, 3.0],
           "sure_mse": [1.1, 1.9, 3.3]}
    diff = np.array([0.1, -0.1, 0.3])
    assert sure_se(rec, 0.1) == pytest.approx(diff.std(ddof=1) / math.sqrt(3))
    h = 0.5  # a trace's standard error: 2σ²h/d = 2·0.01·0.5/64 in SURE
    assert sure_se({**rec, "trace_se": [h] * 3}, 0.1) == pytest.approx(
        math.hypot(diff.std(ddof=1) / math.sqrt(3), 2 * 0.01 * h / 64))
    one = {"eigenvalues": [lam], "mse": [1.0], "sure_mse": [1.1], "trace_se": [h]}
    assert math.isnan(sure_se(one, 0.1))


def test_row_adds_the_trace_estimates_error_and_gives_homogeneity_for_networks_only():
    entry = SimpleNamespace(label="disks")
    rec = {**jacobian_record(4, [0.5] * 8, 0.01, 0.01), "trace_se": [0.3] * 4}
    row = _row(entry, 0.1, "network", rec)  # the same trace on every image: the estimates'
    assert row["trace_se"] == pytest.approx(0.3)  # error, shared probes: not 0.3/√4
    spread = {**rec, "trace": [1.0, 2.0, 3.0, 4.0]}  # the images' spread (SE 0.645) and h
    assert _row(entry, 0.1, "network", spread)["trace_se"] == pytest.approx(
        math.hypot(np.std([1, 2, 3, 4], ddof=1) / 2, 0.3))
    one = {**jacobian_record(1, [0.5] * 8, 0.01, 0.01), "trace_se": [0.3]}
    assert _row(entry, 0.1, "network", one)["trace_se"] == pytest.approx(0.3)
    assert row["homogeneity_error"] == 0.0
    full = _row(entry, 0.1, "network", {**rec, "trace_se": [0.0] * 4})
    assert full["trace_se"] == 0.0  # exact traces, no spread
    reference = _row(entry, 0.1, "reference: posterior (exact)", rec)
    assert math.isnan(reference["homogeneity_error"])


@pytest.mark.parametrize("taken", ["borrowed", "extended"])
def test_rate_rows_take_the_slopes_of_l_and_u_through_their_own_values_only(taken):
    """A U taken from a larger σ measures no estimator there, whether the monotone envelope
    took it (``borrowed``) or the reference was stored on a coarser grid (``extended``): its
    slope leaves that σ out (two σ sharing one value would read 0 ± 0), while the MMSE
    secant bracket keeps the tighter, still valid, bound."""
    from theorybench.report.common import extend_monotone, monotone_envelope

    m = mmse(SIGMAS)[:, None]
    spread = 1 + 0.01 * np.array([1, -1] * 8)
    lower = frame(SIGMAS, 0.8 * m * spread)
    loose = 1.3 * m * spread
    loose[2:4] *= 20  # U at σ[2], σ[3] far above U at σ[4]: the envelope takes σ[4]'s
    if taken == "borrowed":
        upper = monotone_envelope(frame(SIGMAS, loose), "upper")
    else:  # U stored without σ[2], σ[3]: both take σ[4]'s
        stored = [0, 1, 4, 5, 6, 7]
        upper = extend_monotone(frame(SIGMAS[stored], loose[stored]), SIGMAS, "upper")
    assert upper.attrs[taken].tolist() == [False] * 2 + [True] * 2 + [False] * 4
    study = SimpleNamespace(name="calpha", label="c", params={"alpha": 2.0, "size": 16},
                            networks={"per-sigma": None, "universal": None},
                            reference={"result": {"curves": {"a": {"sigma": list(SIGMAS)}}}})
    rows = pd.DataFrame(rate_rows(study, {"lower": lower, "upper": upper},
                                  SimpleNamespace(rate_range=(0.02, 0.25))))
    local = rows[(rows.table == "slope") & (rows.fit == "secant")].reset_index(drop=True)
    # intervals [σ1, σ2], [σ2, σ3], [σ3, σ4] touch a borrowed U: no slope of U there
    assert local["U"].isna().tolist() == [False, True, True, True, False, False, False]
    own = np.log(loose[5].mean() / loose[4].mean()) / np.log(SIGMAS[5] ** 2 / SIGMAS[4] ** 2)
    assert local["U"].iloc[4] == pytest.approx(own)
    # the bracket's upper end uses the envelope: on [σ2, σ3] both ends hold U(σ4)
    br = secant_bracket(lower, upper, SIGMAS[2], SIGMAS[3])
    assert local["MMSE ≤"].iloc[2] == pytest.approx(br["high"])
    assert br["high"] == pytest.approx(np.log(upper.mse[3] / lower.mse[2])
                                       / np.log(SIGMAS[3] ** 2 / SIGMAS[2] ** 2))
    window = rows[(rows.table == "slope") & (rows.fit != "secant")].iloc[0]
    # the window's 4 σ include two borrowed U: no LS slope of U over its other two
    assert window["fit"] == "LS, 4 σ" and np.isnan(window["U"]) and np.isfinite(window["L"])


def test_rate_note_says_when_the_bracket_also_holds_the_components_wiener_slope():
    """A bracket wide enough to hold the law's slope and the region fields' own Wiener slope
    (0.619 on this window at 16×16) cannot tell the two apart: the note says so."""
    u = 0.3 * SIGMAS ** (2 * 2 / 3)
    study = SimpleNamespace(name="calpha", label="c", params={"alpha": 2.0, "size": 16},
                            networks={"per-sigma": None, "universal": None},
                            reference={"result": {"curves": {"a": {"sigma": list(SIGMAS)}}}})

    def note(k):  # L = U/k: the secant bracket 2/3 ± ln k / ln(σb²/σa²)
        refs = {"lower": exact_frame(u / k), "upper": exact_frame(u)}
        rows = pd.DataFrame(rate_rows(study, refs, SimpleNamespace(rate_range=(0.02, 0.25))))
        return rows[rows.table == "note"].note.iloc[0]
    wide, narrow = note(1.5), note(1.05)  # half widths 0.089 and 0.011
    assert "contains the theory α/(α+1) = 0.667" in wide
    assert "also contains the Wiener slope of the region fields alone, 0.619" in wide
    assert "contains the theory α/(α+1) = 0.667" in narrow and "also contains" not in narrow

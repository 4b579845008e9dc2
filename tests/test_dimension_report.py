"""The dimension study's rows and verdict from synthetic records (exact numbers)."""

import numpy as np
import pandas as pd
import pytest

from theorybench.experiments.dimension_study import STUDY, dimension_rows
from theorybench.report.dimension import _network_verdict, _posterior_verdict


def _curve(kind, sigma, total_over_s2, d=256):
    mse = total_over_s2 * sigma**2 / d  # two images of that error each
    return {"kind": kind, "sigma": [sigma], "mse": [mse], "se": [0.0], "d": d,
            "errors": [[mse, mse]]}


def _jacobian(count, trace, angles):
    return {"count_above": [count], "trace": [trace], "tangent_angles_deg": [angles]}


def test_rows_scale_totals_by_sigma_squared_and_keep_the_optimum_apart():
    spec = {"study": STUDY, "params": {"k": 2}}
    records = [
        {"spec": {**spec, "kind": "reference"},
         "result": {"curves": {"posterior": _curve("upper", 0.01, 2.1),
                               "oracle": _curve("lower", 0.01, 1.9)}}},
        {"spec": {**spec, "kind": "network"},
         "result": {"curve": _curve("network", 0.01, 20.0), "converged": False}},
        {"spec": {**spec, "kind": "jacobian"},
         "result": {"sigma": 0.0454,
                    "denoisers": {"network": _jacobian(8, 13.0, [40.0, 50.0]),
                                  "reference": {**_jacobian(2, 2.0, [3.0, 7.0]),
                                                "kind": "upper"}}}},
        {"spec": {"study": "main", "kind": "network", "params": {"k": 2}}, "result": {}},
    ]
    (row,) = dimension_rows(records)
    assert row["k"] == 2 and row["sigma"] == 0.01
    assert abs(row["U/σ²"] - 2.1) < 1e-12 and abs(row["L/σ²"] - 1.9) < 1e-12
    assert row["L kind"] == "lower" and abs(row["network/σ²"] - 20.0) < 1e-12
    assert row["converged"] is False and row["sigma_jacobian"] == 0.0454
    assert (row["count>0.5"], row["trace"], row["angle max°"], row["angle mean°"]) == \
        (8, 13.0, 50.0, 45.0)
    assert (row["optimum count>0.5"], row["optimum trace"], row["optimum angle max°"]) == \
        (2, 2.0, 7.0)
    assert row["optimum kind"] == "upper"  # the estimator the Jacobian cell differentiated


def test_rows_give_the_paired_standard_error_of_l_minus_u():
    # per-image errors of L and U sharing one noise: the difference's spread, not the sum
    # of the two spreads; differences ±δ about their mean over n images: SE = δ/√(n − 1)
    d, sigma, n, delta = 256, 0.01, 8, 0.05
    common = np.linspace(1.0, 3.0, n)  # the images' own difficulty, shared by L and U
    upper = common + delta * np.array([1, -1] * (n // 2))
    scale = sigma**2 / d  # total MSE/σ² → per-pixel MSE

    def curve(kind, totals):
        return {"kind": kind, "sigma": [sigma], "mse": [totals.mean() * scale],
                "se": [totals.std(ddof=1) / np.sqrt(n) * scale], "d": d,
                "errors": [list(totals * scale)]}

    spec = {"study": STUDY, "params": {"k": 1}, "kind": "reference"}
    (row,) = dimension_rows([{"spec": spec, "result": {"curves": {
        "posterior": curve("upper", upper), "quadrature": curve("exact", common)}}}])
    assert row["L−U_se"] == pytest.approx(delta / np.sqrt(n - 1), rel=1e-9)
    assert row["L−U_se"] < row["U_se"] / 5  # pairing removes the images' own spread


def test_verdict_follows_the_numbers():
    base = {"k": [1, 2], "sigma": [0.01, 0.01], "U/σ²": [1.0, 2.0], "sigma_jacobian": 0.0454,
            "optimum count>0.5": [1.0, 2.0]}
    good = pd.DataFrame({**base, "network/σ²": [1.05, 2.1], "count>0.5": [1.0, 2.0]})
    text = _network_verdict(good)
    assert "within 15% of U for k = 1, 2" in text and "the same count for k = 1, 2" in text
    assert "tested on a network for k = 1, 2" in text and "no network reaches" not in text
    assert "at σ = 0.0454 their Jacobians" in text
    poor = pd.DataFrame({**base, "network/σ²": [9.0, 20.0], "count>0.5": [3.0, 2.0]})
    text = _network_verdict(poor)
    assert "within 15% of U for no k" in text and "the same count for k = 2" in text
    assert "no network reaches the small-σ regime" in text
    # far below U is not within 15 % of it either (a U loose by half, or noise)
    below = pd.DataFrame({**base, "network/σ²": [0.5, 1.9], "count>0.5": [1.0, 2.0]})
    text = _network_verdict(below)
    assert "0.5–0.95× U (within 15% of U for k = 2)" in text
    assert "tested on a network for k = 2." in text


def test_posterior_verdict_says_where_its_noise_hides_the_tolerance():
    frame = pd.DataFrame({"k": [1, 2, 5], "U/σ²": [0.94, 2.5, 5.2], "U_se": [0.19, 0.1, 0.3]})
    assert _posterior_verdict(frame) == (
        "Posterior U/σ² within 15% of k for k = 1, 5; outside for k = 2 (for k = 1 twice its "
        "standard error exceeds 15% of k: the test does not resolve it).")
    frame["U_se"] = 0.01
    assert _posterior_verdict(frame).endswith("outside for k = 2.")


def test_an_inverted_bracket_is_named_with_its_margin():
    from theorybench.report.dimension import _inverted

    frame = pd.DataFrame({"k": [1, 2, 3], "U/σ²": [0.936744, 2.05651, 3.07],
                          "U_se": [0.188, 0.251, 0.34], "L/σ²": [0.936808, 2.0586, 2.09],
                          "L kind": ["exact", "exact", "lower"]})
    text = _inverted(frame)  # (2.0586 − 2.05651)/2.05651 = 0.10 %
    assert text.startswith(" L/σ² lies above U/σ² for k = 1, 2, by at most 0.001 of U (L the "
                           "exact posterior by quadrature")
    lower = frame.assign(**{"L kind": ["lower"] * 3})
    assert "by at most 0.001 of U: both are measured on the same" in _inverted(lower)
    paired = _inverted(lower.assign(**{"L−U_se": [0.0001, 0.001, 0.01]}))
    assert ("by at most 0.001 of U, by 0.64–2.1 paired standard errors of L − U (`L−U_se` in "
            "`dimension.csv`: the same images and noise): both") in paired
    assert "paired" not in _inverted(lower.assign(**{"L−U_se": [np.nan, 0.0, 0.01]}))
    assert _inverted(frame.assign(**{"L/σ²": [0.5, 1.0, 2.0]})) == ""
    assert _inverted(frame.drop(columns="L/σ²")) == ""

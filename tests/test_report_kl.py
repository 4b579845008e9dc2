"""The report's KL rows: which quadrature errors it can estimate."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from theorybench.report.common import curve_frame, extend_monotone, monotone_envelope
from theorybench.report.main import _jumps

GRID = np.geomspace(0.01, 2.0, 29)
ROW = {"sigma0": 0.05, "quad_err_low": 1.0, "quad_err_high": 2.0}


def curve(sigma, mse, images=1) -> pd.DataFrame:
    """A stored curve of ``images`` equal per-image errors, as the report reads it."""
    mse = np.asarray(mse, dtype=float)
    return curve_frame({"sigma": sigma, "mse": mse, "se": np.zeros_like(mse), "d": 1,
                        "errors": np.repeat(mse[:, None], images, axis=1)})


def test_an_end_whose_bound_jumps_where_its_estimate_reads_has_no_quadrature_error():
    # U stored on every 4th σ (the coarse grid), extended to the dense one by the next
    # stored σ: the low end's integrand jumps after each stored σ; L measured everywhere
    coarse = GRID[::4]
    upper = extend_monotone(curve(coarse, coarse**2), GRID, "upper")
    bounds = {"upper": upper, "lower": curve(GRID, 0.5 * GRID**2)}
    assert set(_jumps(ROW, bounds, GRID)) == {"quad_err_low"}
    assert math.isnan(_jumps(ROW, bounds, GRID)["quad_err_low"])
    # σ0 inside the top segment, whose lower end σ[27] took σ[28]'s U: that segment counts;
    # σ0 at the top: nothing is integrated, nothing jumps
    assert upper.attrs["extended"][27] and not upper.attrs["extended"][28]
    assert set(_jumps({**ROW, "sigma0": GRID[27] * 1.01}, bounds, GRID)) == {"quad_err_low"}
    assert _jumps({**ROW, "sigma0": GRID[28]}, bounds, GRID) == {}
    # L stored on the coarse grid and extended from the next smaller stored σ: the high end
    lower = extend_monotone(curve(coarse, 0.5 * coarse**2), GRID, "lower")
    assert set(_jumps(ROW, {**bounds, "lower": lower}, GRID)) == {"quad_err_low",
                                                                   "quad_err_high"}
    # an exact MMSE, measured at every σ: both ends' estimates stand
    assert _jumps(ROW, {"exact": curve(GRID, GRID**2)}, GRID) == {}


def test_the_estimate_reads_below_sigma0_and_borrowed_and_missing_values_jump():
    lower = curve(GRID, 0.5 * GRID**2)
    # U taken from σ[10] at σ[7..9] by the monotone envelope (far above σ[10]'s there):
    # from σ0 = σ[10] the trapezoid reads σ ≥ σ[10], its error estimate σ[9] too
    loose = GRID**2
    loose[7:10] *= 50
    upper = monotone_envelope(curve(GRID, loose, images=4), "upper")
    assert upper.attrs["borrowed"][7:10].all() and not upper.attrs["borrowed"][10:].any()
    bounds = {"upper": upper, "lower": lower}
    assert set(_jumps({**ROW, "sigma0": GRID[10]}, bounds, GRID)) == {"quad_err_low"}
    assert _jumps({**ROW, "sigma0": GRID[14]}, bounds, GRID) == {}
    # U stored up to σ[24] only: U = ∞ above, B_low's integrand drops to 0 there
    short = extend_monotone(curve(GRID[:25], GRID[:25] ** 2), GRID, "upper")
    assert not short.attrs["extended"].any() and np.isinf(short["mse"][25:]).all()
    assert set(_jumps(ROW, {"upper": short, "lower": lower}, GRID)) == {"quad_err_low"}
    # L above U by noise at some σ (B_high takes U there) while U jumps: both ends
    inverted = extend_monotone(curve(GRID[::4], 0.4 * GRID[::4] ** 2), GRID, "upper")
    assert set(_jumps(ROW, {"upper": inverted, "lower": lower}, GRID)) == {
        "quad_err_low", "quad_err_high"}

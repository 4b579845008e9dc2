"""The report's KL rows: which quadrature errors it can estimate."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from theorybench.report.common import extend_monotone
from theorybench.report.main import _jumps

GRID = np.geomspace(0.01, 2.0, 29)


def curve(sigma, mse) -> pd.DataFrame:
    out = pd.DataFrame({"sigma": sigma, "mse": mse, "se": 0.0, "d": 1})
    out.attrs["errors"] = np.asarray(mse, dtype=float)[:, None]
    return out


def test_an_end_whose_bound_jumps_inside_the_integral_has_no_quadrature_error():
    # U stored on every 4th σ (the coarse grid), extended to the dense one by the next
    # stored σ: the low end's integrand jumps after each stored σ; L measured everywhere
    coarse = GRID[::4]
    upper = extend_monotone(curve(coarse, coarse**2), GRID, "upper")
    bounds = {"upper": upper, "lower": curve(GRID, 0.5 * GRID**2)}
    row = {"sigma0": 0.05, "quad_err_low": 1.0, "quad_err_high": 2.0}
    assert set(_jumps(row, bounds, GRID)) == {"quad_err_low"}
    assert math.isnan(_jumps(row, bounds, GRID)["quad_err_low"])
    # σ0 inside the top segment, whose lower end σ[27] took σ[28]'s U: that segment counts;
    # σ0 at the top: nothing is integrated, nothing jumps
    assert upper.attrs["extended"][27] and not upper.attrs["extended"][28]
    assert set(_jumps({**row, "sigma0": GRID[27] * 1.01}, bounds, GRID)) == {"quad_err_low"}
    assert _jumps({**row, "sigma0": GRID[28]}, bounds, GRID) == {}
    # L stored on the coarse grid and extended from the next smaller stored σ: the high end
    lower = extend_monotone(curve(coarse, 0.5 * coarse**2), GRID, "lower")
    assert set(_jumps(row, {**bounds, "lower": lower}, GRID)) == {"quad_err_low",
                                                                   "quad_err_high"}
    # an exact MMSE, measured at every σ: both ends' estimates stand
    assert _jumps(row, {"exact": curve(GRID, GRID**2)}, GRID) == {}

"""The section "Across seeds": two runs' MSE/U, KL and flags side by side, and their z."""

import json

import numpy as np
import pandas as pd
import pytest

from theorybench.report.seeds import check_comparable, read_run, seed_rows, seeds_section

SIGMA = [0.01, 0.1, 1.0, 2.0]


def _rates(ratios, ses):
    """A ``rates.csv`` frame: a slope row (ignored) and the MSE/U rows of two networks."""
    rows = [{"table": "slope", "entry": "gaussian", "network": None, "sigma": None,
             "MSE/U": None, "se(MSE/U)": None}]
    for network in ("per-sigma", "universal"):
        rows += [{"table": "ratio", "entry": "gaussian", "network": network, "sigma": s,
                  "MSE/U": r, "se(MSE/U)": e}
                 for s, r, e in zip(SIGMA, ratios[network], ses[network], strict=True)]
    return pd.DataFrame(rows)


def _kl(low, high, se):
    return pd.DataFrame([{"entry": "gaussian", "network": net, "sigma0": 0.05, "kl_low": low,
                          "kl_high": high, "se_high": se} for net in ("per-sigma", "universal")])


def _training(flags):
    return pd.DataFrame([{"study": "main", "entry": "gaussian", "network": net, "converged": f}
                         for net, f in flags] + [{"study": "dimension", "entry": "gaussian",
                                                  "network": "universal", "converged": False}])


def _write(folder, seed, ratios, ses, kl, flags, preset="smoke"):
    folder.mkdir(parents=True)
    (folder / "run.json").write_text(json.dumps({"preset": preset, "overrides": [],
                                                 "datasets": None, "seed": seed,
                                                 "commit": "abc1234", "date": "today"}))
    _rates(ratios, ses).to_csv(folder / "rates.csv", index=False)
    kl.to_csv(folder / "kl.csv", index=False)
    _training(flags).to_csv(folder / "training.csv", index=False)
    return folder


@pytest.fixture
def two_runs(tmp_path):
    a = _write(tmp_path / "a", 0, {"per-sigma": [1.0, 1.2, 1.1, 3.0], "universal": [2, 1, 1, 1]},
               {"per-sigma": [0.1] * 4, "universal": [0.3, 0.1, 0.1, 0.1]},
               _kl(4.5, 4.5, 0.6), [("per-sigma", True), ("per-sigma", True),
                                    ("universal", False)])
    b = _write(tmp_path / "b", 1, {"per-sigma": [1.0, 1.6, 1.1, 3.0], "universal": [2, 1, 1, 1.5]},
               {"per-sigma": [0.1, 0.2, 0.1, 0.1], "universal": [0.4, 0.1, 0.1, 0.1]},
               _kl(30.0, 36.4, 0.6), [("per-sigma", True), ("per-sigma", False),
                                      ("universal", True)])
    return a, b


def test_rows_set_the_runs_side_by_side_with_their_z(two_runs):
    a, b = two_runs
    rows, z = seed_rows([read_run(a), read_run(b)], (0.05, 0.2))
    per, uni = rows
    assert per["worst MSE/U, σ ≤ 1"] == "1.2 ± 0.1 at σ = 0.1 / 1.6 ± 0.2 at σ = 0.1"
    # z = (1.6 − 1.2)/√(0.1² + 0.2²) at σ = 0.1, 0 elsewhere
    z01 = 0.4 / np.sqrt(0.05)
    assert per["RMS z"] == f"{np.sqrt(z01**2 / 4):.2f}"
    assert per["largest z"] == f"+{z01:.2f} at σ = 0.1"
    assert uni["largest z"] == "+3.54 at σ = 2"  # 0.5/√0.02
    assert per["KL, σ0 = 0.05"] == "4.5 ± 0.6 / [30, 36.4]" and per["KL, σ0 = 0.2"] == "– / –"
    # every per-σ network of the main study must pass; the side study's row is not read
    assert per["converged"] == "True / False" and uni["converged"] == "False / True"
    assert list(z.columns) == ["entry", "network", "seed", "sigma", "z"] and len(z) == 8
    bare = {**read_run(b), "kl": pd.DataFrame(), "training": pd.DataFrame()}  # nothing stored
    rows, _ = seed_rows([read_run(a), bare], (0.05,))
    assert rows[0]["KL, σ0 = 0.05"] == "4.5 ± 0.6 / –" and rows[0]["converged"] == "True / –"
    assert set(z["seed"]) == {1}
    np.testing.assert_allclose(z[z["network"] == "per-sigma"]["z"], [0, z01, 0, 0], atol=1e-12)


def test_section_writes_the_z_and_names_the_runs(two_runs):
    a, b = two_runs
    this = read_run(a)
    (a / "seeds.csv").unlink(missing_ok=True)
    text = "\n".join(seeds_section(this, [b], (0.05,)))
    assert text.startswith("## Across seeds")
    assert f"seed 1: `{b}`, commit `abc1234`, today" in text and "order 0 / 1" in text
    assert "| gaussian | per-sigma |" in text
    assert len(pd.read_csv(a / "seeds.csv")) == 8
    assert seeds_section(this, [], (0.05,)) == []


def test_only_runs_of_the_same_study_at_another_seed_compare(two_runs, tmp_path):
    a, b = two_runs
    here = json.loads((a / "run.json").read_text())
    check_comparable(here, b)
    with pytest.raises(ValueError, match="the same seed"):
        check_comparable(here, a)
    other = _write(tmp_path / "c", 1, {"per-sigma": [1] * 4, "universal": [1] * 4},
                   {"per-sigma": [0.1] * 4, "universal": [0.1] * 4}, _kl(1, 1, 0.1), [],
                   preset="default")
    with pytest.raises(ValueError, match="preset 'default', this one 'smoke'"):
        check_comparable(here, other)
    (b / "kl.csv").unlink()
    with pytest.raises(ValueError, match=r"not the report folder .* \(no kl.csv\)"):
        check_comparable(here, b)

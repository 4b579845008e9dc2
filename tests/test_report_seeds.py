"""The section "Across seeds": two runs' MSE/U, KL and flags side by side, and their z."""

import json

import numpy as np
import pandas as pd
import pytest

from theorybench.report.common import all_converged, write_csv
from theorybench.report.seeds import (
    check_compare,
    dimension_seed_rows,
    jacobian_seed_rows,
    machine_seed_rows,
    run_tables,
    seed_rows,
    seeds_section,
    side_by_side,
    sweep_rows,
    z_summary,
)

SIGMA = [0.0123456789, 0.1, 1.0, 2.0]  # more digits than the CSV keeps: both sides rounded


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


def _meta(seed, preset="smoke"):
    return {"preset": preset, "overrides": [], "datasets": None, "seed": seed,
            "commit": "abc1234", "date": "today"}


def _write(folder, seed, ratios, ses, kl, flags, preset="smoke"):
    """A run's report folder, written as the report writes it (6 significant digits)."""
    folder.mkdir(parents=True)
    (folder / "run.json").write_text(json.dumps(_meta(seed, preset)))
    write_csv(_rates(ratios, ses), folder / "rates.csv")
    write_csv(kl, folder / "kl.csv")
    write_csv(_training(flags), folder / "training.csv")
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
    rows, z = seed_rows([run_tables(a), run_tables(b)], (0.05, 0.2))
    per, uni = rows
    assert per["worst MSE/U, σ ≤ 1"] == "1.2 ± 0.1 at σ = 0.1 / 1.6 ± 0.2 at σ = 0.1"
    # z = (1.6 − 1.2)/√(0.1² + 0.2²) at σ = 0.1, 0 elsewhere, at every σ of the grid
    z01 = 0.4 / np.sqrt(0.05)
    assert per["RMS z"] == f"{np.sqrt(z01**2 / 4):.2f}"
    assert per["largest z"] == f"+{z01:.2f} at σ = 0.1"
    assert uni["largest z"] == "+3.54 at σ = 2"  # 0.5/√0.02
    assert per["B, σ0 = 0.05"] == "4.5 ± 0.6 / [30, 36.4]" and per["B, σ0 = 0.2"] == "– / –"
    # every per-σ network of the main study must pass; the side study's row is not read
    assert per["converged"] == "True / False" and uni["converged"] == "False / True"
    assert list(z.columns) == ["entry", "network", "seed", "sigma", "z"] and len(z) == 8
    assert set(z["seed"]) == {1}
    np.testing.assert_allclose(z[z["network"] == "per-sigma"]["z"], [0, z01, 0, 0], atol=1e-12)
    bare = {**run_tables(b), "kl": pd.DataFrame(), "training": pd.DataFrame()}  # nothing stored
    rows, _ = seed_rows([run_tables(a), bare], (0.05,))
    assert rows[0]["B, σ0 = 0.05"] == "4.5 ± 0.6 / –" and rows[0]["converged"] == "True / –"


def test_non_finite_ratios_and_errors_are_left_out(two_runs):
    a, b = two_runs
    this, other = run_tables(a), run_tables(b)
    this["ratio"].loc[1, "MSE/U"] = np.nan  # per-sigma at σ = 0.1: an infinite U upstream
    other["ratio"].loc[0, "se(MSE/U)"] = 0.0  # σ ≈ 0.0123: equal values, no error: 0/0
    this["ratio"].loc[0, "se(MSE/U)"] = 0.0
    (per, _), z = seed_rows([this, other], (0.05,))
    assert per["worst MSE/U, σ ≤ 1"].startswith("1.1 ± 0.1 at σ = 1 / ")
    mine = z[z["network"] == "per-sigma"]
    assert mine["sigma"].tolist() == pytest.approx(SIGMA, rel=1e-5)  # every σ, NaN kept
    assert mine.dropna(subset=["z"])["sigma"].tolist() == [1.0, 2.0]
    assert per["RMS z"] == "0.00" and per["largest z"] == "+0.00 at σ = 1"
    # the count says what was left out: 2 of per-sigma's 4 σ, none of universal's
    assert z_summary(z).endswith("; 2 of its 8 σ without a z (a σ one run lacks, or no "
                                 "finite standard error)")


def test_z_matches_sigma_to_the_csv_digits_and_refuses_a_sigma_twice(two_runs):
    a, b = two_runs
    this, other = run_tables(a), run_tables(b)
    other["ratio"]["sigma"] *= 1 + 3e-6  # another float format: the same σ to 6 digits
    _, z = seed_rows([this, other], (0.05,))
    assert z["z"].notna().all() and len(z) == 8
    other["ratio"]["sigma"] *= 1 + 1e-3  # another grid: no σ in common
    _, z = seed_rows([this, other], (0.05,))
    assert z["z"].isna().all() and z_summary(z) == "seed 1: no finite z (8 σ)"
    twice = run_tables(b)
    twice["ratio"] = pd.concat([twice["ratio"], twice["ratio"].iloc[[2]]], ignore_index=True)
    with pytest.raises(ValueError, match="the other run lists one network's MSE/U twice at σ"):
        seed_rows([this, twice], (0.05,))


def test_summary_names_the_entry_that_carries_most_of_the_z():
    z = pd.DataFrame({"seed": [1] * 4, "entry": ["gaussian", "gaussian", "disks", "disks"],
                      "sigma": [0.1, 1.0, 0.1, 1.0], "z": [3.0, 1.0, 1.0, 1.0]})
    # Σz² = 10 + 2: gaussian 10/12 from 2 of 4 z
    assert z_summary(z).endswith("RMS 1.73, a training spread of about 1.41 quoted standard "
                                 "errors (gaussian: 83% of Σz² from 2 of the 4 z)")


def test_a_flagged_network_is_not_hidden_by_an_unmonitored_one(two_runs):
    a, b = two_runs
    this = run_tables(a)
    this["training"] = _training([("per-sigma", False), ("per-sigma", None),
                                  ("universal", True), ("universal", None)])
    rows, _ = seed_rows([this, run_tables(b)], (0.05,))
    assert rows[0]["converged"].startswith("False / ")  # a known False, not "–"
    assert rows[1]["converged"].startswith("– / ")  # unmonitored, none flagged: unknown
    assert [all_converged(f) for f in ([False, None], [True, None], [True, True], [],
                                       [True, np.nan])] == [False, None, True, None, None]


def test_section_writes_the_z_names_the_runs_and_clears_a_stale_file(two_runs, tmp_path):
    a, b = two_runs
    lines, summary = seeds_section(a, _meta(0), [b], (0.05,))
    text = "\n".join(lines)
    assert text.startswith("## Across seeds")
    # 8 z, one beyond ±2: per-sigma 0.4/√0.05 = 1.79 at σ = 0.1, universal 0.5/√0.02 =
    # 3.54 at σ = 2, the others 0
    assert summary == ("seed 1: 1 of 8 z beyond ±2 (N(0, 1): about 0.4), RMS 1.40, a "
                       "training spread of about 0.98 quoted standard errors")  # √(1.4² − 1)
    calm = pd.DataFrame({"seed": [2, 2], "sigma": [1.0, 2.0], "z": [0.5, -0.5]})
    assert z_summary(calm) == ("seed 2: 0 of 2 z beyond ±2 (N(0, 1): about 0.1), RMS 0.50, "
                               "no training spread seen beyond the quoted errors")
    assert f"Over every network ({summary})." in text
    assert "memorization sweep" not in text  # neither run has one
    assert f"seed 1: `{b}`, commit `abc1234`, today" in text and "order 0 / 1" in text
    assert "| gaussian | per-sigma |" in text and "Not in this run" not in text
    assert len(pd.read_csv(a / "seeds.csv")) == 8
    assert seeds_section(a, _meta(0), [], (0.05,)) == ([], None)
    assert not (a / "seeds.csv").exists()  # no comparison: no z of an earlier one
    # a network the other run has and this one lacks is named
    extra = pd.read_csv(b / "rates.csv")
    extra.loc[extra["network"] == "universal", "entry"] = "disks"
    write_csv(extra, b / "rates.csv")
    text = "\n".join(seeds_section(a, _meta(0), [b], (0.05,))[0])
    assert "Not in this run, so not compared: disks universal (seed 1)." in text
    # a folder that stopped being comparable after the command line's check: said, not raised
    lines, summary = seeds_section(a, _meta(1), [b], (0.05,))
    assert summary is None
    assert lines[2].startswith(f"Not compared: --compare {b}: seed 1, as this run")


def test_only_runs_of_the_same_study_at_other_seeds_compare(two_runs, tmp_path):
    a, b = two_runs
    out = tmp_path / "out"
    check_compare(_meta(0), [b], out)
    with pytest.raises(ValueError, match="seed 0, as this run"):
        check_compare(_meta(0), [a], out)
    with pytest.raises(ValueError, match="the folder this run writes"):
        check_compare(_meta(2), [a], a)
    twin = tmp_path / "twin"
    twin.mkdir()
    for name in ("run.json", "rates.csv", "kl.csv", "training.csv"):
        (twin / name).write_bytes((b / name).read_bytes())
    with pytest.raises(ValueError, match=f"seed 1, as {b}"):
        check_compare(_meta(0), [b, twin], out)
    other = _write(tmp_path / "c", 3, {"per-sigma": [1] * 4, "universal": [1] * 4},
                   {"per-sigma": [0.1] * 4, "universal": [0.1] * 4}, _kl(1, 1, 0.1), [],
                   preset="default")
    with pytest.raises(ValueError, match="preset 'default', this one 'smoke'"):
        check_compare(_meta(0), [other], out)
    (twin / "run.json").write_text("{cut short")
    with pytest.raises(ValueError, match="its run.json is not JSON"):
        check_compare(_meta(0), [twin], out)
    (b / "kl.csv").unlink()
    with pytest.raises(ValueError, match=r"not the report folder .* \(no kl.csv\)"):
        check_compare(_meta(0), [b], out)


def test_sweep_rows_set_the_memorization_sweeps_side_by_side(two_runs):
    a, b = two_runs
    nan = float("nan")

    def sweep(folder, rows):
        write_csv(pd.DataFrame(rows), folder / "memorization.csv")

    cell = {"entry": "disks", "mem S1": 1.0, "mem S2": 0.03125, "on S1": 1.0, "on S2": 0.40625,
            "cross/train": 10.39, "cross_cc": 0.26, "cos_c S1": 0.99, "cos_c S2": 0.99,
            "failed": ""}
    sweep(a, [{**cell, "N": 1}, {**cell, "N": 10, "cross_cc": 0.9, "failed": "diverged"},
              {**cell, "N": 100, "on S1": nan, "on S2": nan, "cross_cc": 0.995,
               "cos_c S2": 0.999}])
    sweep(b, [{**cell, "N": 1, "mem S2": 1.0, "cross/train": 15.6}])
    rows = sweep_rows([run_tables(a), run_tables(b)])
    assert [(r["entry"], r["N"]) for r in rows] == [("disks", 1), ("disks", 100)]  # no failed
    one, hundred = rows
    assert one["copies S1, S2"] == "100%, 3% / 100%, 100%"
    assert one["images of the family S1, S2"] == "100%, 41% / 100%, 41%"
    assert one["S2 net / S1 net on S1"] == "10.4 / 15.6"
    assert one["generalization criterion"] == "not met / not met"
    assert hundred["images of the family S1, S2"] == "—, — / —"  # no fit; b lacks N = 100
    assert hundred["generalization criterion"] == "not met / —"  # above S1's, not S2's
    # a run without a sweep, or with an older table (no cross column): "—", no error
    bare = run_tables(b) | {"memorization": pd.DataFrame()}
    older = run_tables(b) | {"memorization": run_tables(b)["memorization"].drop(
        columns="cross/train")}
    for other in (bare, older):
        assert sweep_rows([run_tables(a), other])[0]["copies S1, S2"] == "100%, 3% / —"
    assert sweep_rows([bare, run_tables(a)]) == []
    # the section shows the table
    text = "\n".join(seeds_section(a, _meta(0), [b], (0.05,))[0])
    assert "The memorization sweep at each seed" in text and "| disks | 1 | 100%, 3% / " in text


def test_side_by_side_matches_rows_on_their_keys():
    first = pd.DataFrame({"entry": ["a", "a", "b", None], "N": [1, 10, 1, 5],
                          "v": [1.0, 2.0, 3.0, 4.0]})
    other = pd.DataFrame({"entry": ["b", "a"], "N": [1, 10], "v": [30.0, 20.0]})
    empty = pd.DataFrame(columns=["entry", "N", "v"])
    rows = side_by_side([first, other, empty], ["entry", "N"],
                        {"v": lambda cells: "|".join("-" if c is None else f"{c['v']:g}"
                                                     for c in cells)})
    # the row without an entry is left out; the others matched on both keys
    assert rows == [{"entry": "a", "N": 1, "v": "1|-|-"}, {"entry": "a", "N": 10, "v": "2|20|-"},
                    {"entry": "b", "N": 1, "v": "3|30|-"}]
    assert side_by_side([empty, first], ["entry", "N"], {}) == []
    # float keys match to a relative 1e-5 (another writer's last digits), not beyond
    sigma = pd.DataFrame({"sigma": [0.0454399, 0.1]})
    near = pd.DataFrame({"sigma": [0.04544, 0.1001]})
    found = side_by_side([sigma, near], ["sigma"], {"hit": lambda cells: cells[1] is not None})
    assert [r["hit"] for r in found] == [True, False]
    with pytest.raises(ValueError, match="two rows with the same entry, N"):
        side_by_side([first, pd.concat([other, other])], ["entry", "N"], {})


def _dimension(network, se, count, converged):
    return pd.DataFrame({"k": [1, 2], "sigma": [0.01, 0.01], "network/σ²": network,
                         "network_se": se, "count>0.5": count, "converged": converged})


def test_dimension_rows_give_each_seed_and_the_z_of_the_others(two_runs):
    a, b = two_runs
    write_csv(_dimension([9.0, 20.0], [0.3, 0.6], [3.0, 8.0], [False, None]),
              a / "dimension.csv")
    write_csv(_dimension([10.0, 20.0], [0.4, 0.0], [3.25, 7.5], [True, True]).iloc[:1],
              b / "dimension.csv")
    one, two = dimension_seed_rows([run_tables(a), run_tables(b)])
    assert one == {"k": 1, "network/σ²": "9 ± 0.3 / 10 ± 0.4", "z": "+2.00",  # 1/√(0.3²+0.4²)
                   "eigenvalues > 0.5": "3 / 3.25", "converged": "False / True"}
    assert two["network/σ²"] == "20 ± 0.6 / —" and two["z"] == "—"  # b lacks k = 2
    assert two["converged"] == "– / —"  # not monitored in a
    assert dimension_seed_rows([run_tables(b), run_tables(a)])[0]["z"] == "-2.00"
    # equal values without an error: no z; an older table without the Jacobian's count
    write_csv(_dimension([9.0, 20.0], [0.0, 0.6], [3.0, 8.0], [False, None]),
              a / "dimension.csv")
    write_csv(_dimension([9.0, 20.0], [0.0, 0.6], [3.0, 8.0], [True, True])
              .drop(columns="count>0.5"), b / "dimension.csv")
    one = dimension_seed_rows([run_tables(a), run_tables(b)])[0]
    assert one["z"] == "–" and one["eigenvalues > 0.5"] == "3 / –"
    bare = run_tables(b) | {"dimension": pd.DataFrame()}
    assert dimension_seed_rows([bare, run_tables(a)]) == []
    assert dimension_seed_rows([run_tables(a), bare])[0]["z"] == "—"


def test_jacobian_and_machine_rows_set_the_seeds_side_by_side(two_runs):
    a, b = two_runs

    def jacobian(counts, traces, images=1):
        return pd.DataFrame({"entry": "disks", "sigma": [0.04544] * 4,
                             "denoiser": ["network (per-σ)", "network (universal)",
                                          "network (shifted)", "reference: posterior (upper)"],
                             "images": images, "count>0.5": counts, "trace": traces})
    write_csv(jacobian([19, 1024, 0, 5], [22.3, 29.5, 1.0, 5.0]), a / "jacobian.csv")
    write_csv(jacobian([14, 1022, 0, 5], [14.7, 27.7, 3.0, 5.0]), b / "jacobian.csv")
    rows = jacobian_seed_rows([run_tables(a), run_tables(b)])
    assert [r["denoiser"] for r in rows] == ["network (per-σ)", "network (universal)",
                                             "network (shifted)"]
    per, universal, shifted = rows
    assert per["eigenvalues > 0.5"] == "19 / 14" and per["trace"] == "22.3 / 14.7"
    assert per["count: range / median"] == f"{5 / 16.5:.0%}"  # (19 − 14)/median(19, 14)
    assert per["trace: range / median"] == f"{7.6 / 18.5:.0%}"
    assert universal["eigenvalues > 0.5"] == "1024 / 1022"  # counts in full
    assert shifted["count: range / median"] == "–" and shifted["trace: range / median"] == "100%"
    assert jacobian_seed_rows([run_tables(a)])[0]["count: range / median"] == "–"  # one run
    text = "\n".join(seeds_section(a, _meta(0), [b], (0.05,))[0])
    assert "each of one image that the seed draws" in text
    write_csv(jacobian([19, 1024, 0, 5], [22.3, 29.5, 1.0, 5.0], images=4), b / "jacobian.csv")
    text = "\n".join(seeds_section(a, _meta(0), [b], (0.05,))[0])
    assert "each a mean over 1/4 images" in text and "one image" not in text
    for folder, r2 in ((a, [0.029, 0.211]), (b, [0.023, 0.175])):
        write_csv(pd.DataFrame({"entry": "disks", "N": [1, 1000], "r2 els": r2,
                                "r2 s2": [0.196, 0.69]}), folder / "machines.csv")
    rows = machine_seed_rows([run_tables(a), run_tables(b)])
    assert rows[1] == {"entry": "disks", "N": 1000, "r² S1 net vs ELS": "0.211 / 0.175",
                       "r² S1 net vs S2 net": "0.690 / 0.690"}
    text = "\n".join(seeds_section(a, _meta(0), [b], (0.05,))[0])
    assert "The networks' Jacobians at each seed" in text and "| disks | 0.04544 |" in text
    assert "The machines at each seed" in text and "| disks | 1000 | 0.211 / 0.175 |" in text
    assert "The intrinsic-dimension study at each seed" not in text  # neither run has one
    # a study only the other run has is not set beside anything
    (a / "machines.csv").unlink()
    text = "\n".join(seeds_section(a, _meta(0), [b], (0.05,))[0])
    assert "The machines at each seed" not in text


def test_a_compared_table_with_a_repeated_key_is_said_not_raised(two_runs):
    a, b = two_runs
    machines = pd.DataFrame({"entry": "disks", "N": [1, 1], "r2 els": [0.1, 0.2],
                             "r2 s2": [0.3, 0.4]})
    write_csv(machines, b / "machines.csv")
    write_csv(machines.iloc[:1], a / "machines.csv")
    lines, summary = seeds_section(a, _meta(0), [b], (0.05,))
    text = "\n".join(lines)
    assert summary is not None and "| gaussian | per-sigma |" in text  # the rest stands
    assert ("The other studies not set side by side: two rows with the same entry, N in a "
            "compared table.") in text

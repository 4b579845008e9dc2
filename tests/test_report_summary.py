"""The report's "At a glance" section: the other sections' numbers, gathered unchanged."""

import math

import numpy as np
import pandas as pd

from theorybench.report.summary import (
    kl_text,
    memorization_rows,
    network_rows,
    rate_summary_rows,
    summary_section,
)


def _lost(sigmas, ratio=1.05, se=0.01):
    """A ``losses`` dict: the σ where a curve loses, each with ``ratio`` ± ``se``."""
    n = len(sigmas)
    return {"sigma": np.array(sigmas, dtype=float), "ratio": np.full(n, ratio),
            "se": None if se is None else np.full(n, se)}


def _standing(network, ratio, above_identity, above_mean, blind=None, converged=True, se=None,
              train=None):
    sigma = np.array([0.01, 0.1, 1.0, 2.0])
    ratio = np.asarray(ratio, dtype=float)
    return {"network": network, "sigma": sigma, "ratio": ratio, "se": se,
            "worst": int(np.argmax(ratio)), "worst_small": int(np.argmax(ratio[:3])),
            "above_identity": _lost(above_identity), "above_mean": _lost(above_mean),
            "blind_above_identity": None if blind is None else _lost(blind, 1.01, 0.004),
            "train_above_identity": None if train is None else _lost(train, 1.2, None),
            "converged": converged}


def _kl(network, sigma0, low, high, se=0.5):
    return {"entry": "gaussian", "network": network, "sigma0": sigma0, "kl_low": low,
            "kl_high": high, "se_high": se}


def test_network_rows_quote_the_worst_ratios_the_losses_and_the_kl():
    standings = {"gaussian": [
        _standing("per-sigma", [1.0, 1.2, 1.1, 3.0], [], [], se=np.array([0.1, 0.05, 0.1, 0.2])),
        _standing("universal", [1.5, 1.1, 1.0, 1.2], [0.01], [2.0], blind=[0.01],
                  converged=False)]}
    kl_rows = [_kl("per-sigma", 0.01, 4.5, 4.5, se=0.66),
               _kl("universal", 0.01, 30.0, 36.4),
               _kl("wiener-blind (blind optimum)", 0.01, 3.2, 3.2)]  # not a network row
    rows = network_rows(standings, kl_rows, (0.01, 0.05))
    assert [r["network"] for r in rows] == ["per-sigma", "universal"]
    per, uni = rows
    # σ ≤ 1 and the whole grid are distinct maxima: 1.2 at 0.1, 3 at 2
    assert per["worst MSE/U, σ ≤ 1"] == "1.2 ± 0.05 at σ = 0.1"
    assert per["worst MSE/U"] == "3 ± 0.2 at σ = 2"
    assert per["better than the identity"] == "every σ"
    assert per["better than the mean image, σ ≥ 1"] == "every σ"
    assert per["B, σ0 = 0.01"] == "4.5 ± 0.66"  # an exact MMSE: one value
    assert per["B, σ0 = 0.05"] == "–" and per["converged"] is True
    assert uni["better than the identity"] == ("not at σ = 0.01 (×1.05 ± 0.01); blind optimum: "
                                               "not at σ = 0.01 (×1.01 ± 0.004)")
    assert uni["better than the mean image, σ ≥ 1"] == "not at σ = 2 (×1.05 ± 0.01)"
    assert uni["B, σ0 = 0.01"] == "[30, 36.4]" and uni["converged"] is False
    assert uni["worst MSE/U"] == "1.5 at σ = 0.01"  # no standard error known
    wide, = network_rows({"gaussian": [standings["gaussian"][1]]},
                         [_kl("universal", 0.01, 0.0331, 1204.6)], (0.01,))
    assert wide["B, σ0 = 0.01"] == "[0.0331, 1205]"  # no exponent
    # not monitored; losing to the identity where the blind optimum does not
    lone = _standing("universal", [1.0] * 4, [0.01], [], blind=[], converged=None)
    row, = network_rows({"faces": [lone]}, [], (0.01,))
    assert row["converged"] == "–"
    assert row["better than the identity"] == "not at σ = 0.01 (×1.05 ± 0.01); blind optimum: " \
        "every σ"
    # trained on a finite set: where it loses on its own training images too
    fitted = _standing("universal", [1.0] * 4, [0.01, 0.1], [], train=[0.01])
    row, = network_rows({"faces": [fitted]}, [], (0.01,))
    assert row["better than the identity"] == ("not at σ = 0.01, 0.1 (×1.05 ± 0.01); on its "
                                               "training images: not at σ = 0.01 (×1.2)")
    fitted = _standing("universal", [1.0] * 4, [], [], train=[])  # no loss: nothing added
    assert network_rows({"faces": [fitted]}, [], (0.01,))[0]["better than the identity"] == (
        "every σ")


def test_memorization_rows_take_the_smallest_and_largest_n():
    nan = math.nan
    table = pd.DataFrame({
        "entry": ["disks"] * 3 + ["faces"] * 2, "N": [1, 10, 1000, 1, 40],
        "mem S1": [1.0, 0.0, 0.0, 1.0, 0.0], "mem S2": [0.98, 0.0, 0.0, 1.0, 0.0],
        "mem held": [0.0, 0.06, 0.14, 0.0, 0.05],
        "on S1": [1.0, 0.3, 0.203, nan, nan], "on S2": [1.0, 0.3, 0.125, nan, nan],
        "on post": [nan, nan, 0.797, nan, nan], "on held": [0.83, 0.83, 0.828, nan, nan],
        "cross_cc": [0.99, 0.7, 0.835, 0.99, 0.9], "cos_c S1": [0.997, 0.8, 0.868, 0.99, 0.85],
        "cos_c S2": [0.997, 0.8, 0.88, 0.99, 0.89], "failed": ["", "", "", "", ""]})
    disks, faces = memorization_rows(table)
    assert disks["copies, smallest N"] == "N = 1: 100% / 98% (held-out 0%)"
    assert disks["copies, largest N"] == "N = 1000: 0% / 0% (held-out 14%)"
    assert disks["images of the family, largest N"] == \
        "20% / 12% (posterior 80%, held-out 83%)"
    assert faces["copies, largest N"] == "N = 40: 0% / 0% (held-out 5%)"
    assert faces["images of the family, largest N"] == "—"  # faces fit no parameters
    # the section's generalization criterion: cross cosine above both nearest-training ones
    assert disks["generalizes, largest N"] == ("no (0.835 between the networks, 0.868 / "
                                               "0.880 to their nearest training image, S1 / "
                                               "S2 net)")
    assert faces["generalizes, largest N"].startswith("yes (0.900 between")
    table.loc[4, "cos_c S2"] = 0.91  # S2's samples nearer its own images than to S1's
    assert memorization_rows(table)[1]["generalizes, largest N"].startswith("no (0.900 betw")
    # a failed cell is not the largest N reached (as in the section's verdict)
    table.loc[2, "failed"] = "sampler diverged"
    disks, _ = memorization_rows(table)
    assert disks["copies, largest N"].startswith("N = 10: ")
    table.loc[:2, "failed"] = "training diverged"
    assert [r["entry"] for r in memorization_rows(table)] == ["faces"]


def test_section_lists_what_is_missing_and_only_studies_with_unconverged_networks():
    standings = {"gaussian": [_standing("per-sigma", [1.0] * 4, [], [])]}
    training = [{"study": "main", "entry": "gaussian", "network": "per-sigma", "sigma": 0.1,
                 "converged": True},
                {"study": "dimension", "entry": "ellipses(k=1)", "network": "universal",
                 "sigma": math.nan, "converged": False}]
    text = "\n".join(summary_section(standings, [], (0.01,), training, None,
                                     ["disks (no stored universal network)"], []))
    assert "## At a glance" in text and "| gaussian | per-sigma |" in text
    assert "Not in the table (a cell failed or not run, or no bound): disks (no stored universal " \
        "network)." in text
    assert "- dimension: not converged: 1 of 1 networks (ellipses(k=1) universal)." in text
    assert "- main:" not in text  # no network of the main study flagged
    assert "Across seeds" not in text  # no compared run
    seeds = "seed 1: 14 of 96 z beyond ±2 (N(0, 1): about 4.4), RMS 1.25"
    text = "\n".join(summary_section(standings, [], (0.01,), training, None, [], [], seeds))
    assert f"the z of one run are correlated): {seeds}. The standard errors above" in text
    training[1]["converged"] = True
    assert "still improving" not in "\n".join(
        summary_section(standings, [], (0.01,), training, None, [], []))


def test_section_is_empty_without_networks():
    assert summary_section({}, [], (0.01,), [], None, [], []) == []
    assert summary_section({"faces": []}, [], (0.01,), [], None, [], []) == []


def test_rate_rows_take_the_least_squares_window_only():
    window = {"table": "slope", "entry": "calpha(alpha=2.0)", "fit": "LS, 4 σ",
              "σ from": 0.02132, "σ to": 0.2065, "per-σ net": 0.6924, "per-σ net se": 0.0073,
              "universal net": 0.6995, "universal net se": 0.0078, "MMSE ≥": 0.6001,
              "MMSE ≤": 0.7168, "theory α/(α+1)": 2 / 3}
    rates = [window, {**window, "fit": "secant", "per-σ net": 0.5},  # a local secant: not shown
             {"table": "ratio", "entry": "gaussian"}]
    row, = rate_summary_rows(rates)
    assert row == {"entry": "calpha(alpha=2.0)", "σ": "0.02132–0.2065",
                   "per-σ net": "0.692 ± 0.0073", "universal net": "0.7 ± 0.0078",
                   "MMSE bracket": "[0.6, 0.717]", "theory α/(α+1)": "0.667"}
    standings = {"calpha(alpha=2.0)": [_standing("per-sigma", [1.0] * 4, [], [])]}
    text = "\n".join(summary_section(standings, [], (0.01,), [], None, [], rates))
    assert "| calpha(alpha=2.0) | 0.02132–0.2065 | 0.692 ± 0.0073 |" in text


def test_kl_text_gives_the_bound_and_what_clipping_added():
    exact = {"kl_low": 21.5, "kl_high": 21.5, "se_high": 0.71, "clipped_nats": 0.0125}
    assert kl_text(exact) == "21.5 ± 0.71 (0.0125 clipped)"
    bracket = {"kl_low": 68.19, "kl_high": 241.7, "se_high": 5.0, "clipped_nats": 45.82}
    assert kl_text(bracket) == "[68.2, 242] (45.8 clipped)"
    assert kl_text(bracket | {"clipped_nats": 0.0}) == "[68.2, 242]"
    assert kl_text({"kl_low": 4.52, "kl_high": 4.52, "se_high": 0.6}) == "4.52 ± 0.6"
    assert kl_text(None) == "–"
    for missing in (float("nan"), None):  # a CSV's empty cell, a record without it
        assert kl_text(bracket | {"clipped_nats": missing}) == "[68.2, 242]"

"""``run_all.py`` end to end on the smoke preset: real values, cache hits, refusals."""

import dataclasses
import json
import math
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import datasets_synth
from theorybench.cli import main
from theorybench.experiments.keys import entry_label

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def smoke(smoke_run):
    """The session's smoke run (conftest): (out, cache, run.json)."""
    return smoke_run


def test_report_files(smoke):
    out, _, _ = smoke
    readme = (out / "README.md").read_text()
    for label in ("gaussian", "calpha(alpha=2.0)", "calpha(alpha=4.0)", "disks", "faces",
                  "shuffled(base=faces)"):
        assert f"## {label}" in readme
    # the headline numbers first, one row per entry and network, and the sweep's
    glance = readme[readme.index("## At a glance"):readme.index("## gaussian")]
    for row in ("| gaussian | per-sigma |", "| disks | universal |",
                "| shuffled(base=faces) | universal |", "| disks | N = 1: ",
                "| calpha(alpha=4.0) | 0.02–"):  # the C^α slopes' window
        assert row in glance, row
    section = readme[readme.index("## gaussian"):readme.index("## calpha")]
    worst = next(line for line in section.splitlines()
                 if line.startswith("| per-sigma |")).split(" | ")[1]  # worst MSE/U
    row = next(line for line in glance.splitlines() if line.startswith("| gaussian | per-sigma"))
    assert row.split(" | ")[2] == worst  # entry, network, worst, worst for σ ≤ 1
    for name in ("kl.csv", "rates.csv", "mse.csv", "shuffled.csv", "mse_gaussian.png",
                 "kl_disks.png", "examples_calpha-alpha-2-0.png", "dimension.png"):
        assert (out / name).stat().st_size > 0, name
    assert "## Intrinsic dimension" in readme
    section = readme[readme.index("## Intrinsic dimension"):]
    assert "The networks: `arch=bfcnn" in section  # how the study's networks trained
    # the header names the processor the numbers were computed on
    device = json.loads((out / "run.json").read_text())["device"]
    assert device.startswith("cuda") or (device.startswith("cpu (") and device.endswith(" CPUs)"))
    assert f"device {device}" in readme
    # the Gaussian field is periodic: its networks pad circularly, and the header says so
    assert "(gaussian: `padding=circular`)" in readme
    # a family's published measurement reaches the report through its attribute
    assert "Published (Kadkhodaie et al. (ICLR 2024), network on 80×80 disks" in readme


def test_dimension_study_rows(smoke):
    """One row per k of the smoke preset's dimension study, with the bracket ordered, the
    network's Jacobian measured against the k-dimensional tangent space, and none of its
    cells in the main study's tables."""
    out, _, _ = smoke
    table = pd.read_csv(out / "dimension.csv")
    assert table["k"].tolist() == [1, 3]
    assert (table["L/σ²"] <= table["U/σ²"] + 3 * table["U_se"]).all()
    assert table[["network/σ²", "count>0.5", "trace", "angle max°", "optimum count>0.5",
                  "optimum trace"]].notna().all().all()
    training = pd.read_csv(out / "training.csv")  # its networks: in the training table only
    assert set(training.study[training.entry.str.startswith("ellipses")]) == {"dimension"}
    assert (training.study == "dimension").sum() == 2
    dim = training[training.study == "dimension"]
    flags = {k: dim.converged[dim.entry.str.contains(f"k={k}[,)]")].item() for k in table.k}
    assert table["converged"].tolist() == [flags[k] for k in table.k]
    readme = (out / "README.md").read_text()
    assert "the universal networks' MSE is" in readme  # the verdict from the table
    # the section names the networks still improving, and only when there are some
    assert ("Still improving when training stopped (`converged` False" in readme) == (
        not table["converged"].all())
    _, _, meta = smoke
    assert meta["preset"] == "smoke" and meta["computed"] == meta["cells"]


def test_machines_rows(smoke):
    """One machines row per memorization N, with agreement quartiles ordered, the calibrated
    patch sides among the candidates and every MSE against the sweep's own bracket; the
    sweep's reference cells give the S1 network a KL interval."""
    out, _, _ = smoke
    table = pd.read_csv(out / "machines.csv")
    assert table["N"].tolist() == [1, 4]
    for role in ("empirical", "ls", "els", "s2"):
        assert (table[f"r2 {role} q1"] <= table[f"r2 {role}"]).all()
        assert (table[f"r2 {role}"] <= table[f"r2 {role} q3"]).all()
        assert ((table[f"r {role}"] >= -1) & (table[f"r {role}"] <= 1)).all()
    for tag in ("lo", "mid"):
        slack = 3 * (table[f"L {tag} se"] + table[f"U {tag} se"])
        assert (table[f"L {tag}"] <= table[f"U {tag}"] + slack).all()
        columns = [f"{c} {tag}" for c in ("network", "empirical", "ls", "els")]
        assert table[columns].notna().all().all()
    sides = {int(p) for col in ("P ls", "P els") for v in table[col] for p in v.split("→")}
    assert sides <= {3, 5}
    readme = (out / "README.md").read_text()
    assert "## What the networks compute" in readme
    assert pd.read_csv(out / "memorization.csv")["kl high"].notna().all()
    # the closest machine by the median, and whether its quartiles overlap another's
    for _, part in table.groupby("entry"):
        last = part.iloc[-1]
        roles = {"empirical": "empirical", "ls": "LS", "els": "ELS"}
        top = max(roles, key=lambda r: last[f"r2 {r}"])
        sentence = (f"At N = {last['N']}, the S1 network's samples agree most among the three "
                    f"machines, by the median, with the {roles[top]} machine's (median r² "
                    f"{last[f'r2 {top}']:.3f}")
        assert sentence in readme
        tied = any(last[f"r2 {r} q3"] >= last[f"r2 {top} q1"] for r in roles if r != top)
        follows = readme.split(sentence, 1)[1]
        assert follows.startswith(", its quartiles overlapping") == tied


def test_gaussian_reference_is_the_exact_mmse(smoke):
    out, _, _ = smoke
    mse = pd.read_csv(out / "mse.csv")
    wiener = mse[(mse.entry == "gaussian") & (mse.denoiser == "wiener")]
    dist = datasets_synth.get("gaussian", size=16)
    for row in wiener.itertuples():
        assert abs(row.mse - dist.mmse(row.sigma)) < 3 * row.se + 1e-9


def _gaussian_gap_integrand(mse: pd.DataFrame, denoiser: str, sigma0: float):
    """The KL integrand d·(MSE − MMSE)/σ² (d = 256; SCIENCE.md §4b) of a Gaussian denoiser's
    stored curve against the Wiener filter's, at the stored σ ≥ σ0, with ln σ."""
    g = mse[mse.entry == "gaussian"]
    pair = g[g.denoiser == denoiser].merge(g[g.denoiser == "wiener"], on="sigma",
                                           suffixes=("", "_mmse")).sort_values("sigma")
    pair = pair[pair.sigma >= sigma0 - 1e-12]
    sigma = pair.sigma.to_numpy()
    return 256 * (pair.mse - pair.mse_mmse).to_numpy() / sigma**2, np.log(sigma)


def test_blind_optimum_is_stored_and_floors_the_universal_network(smoke):
    """The Gaussian's blind Wiener filter is a reference of kind ``blind`` on the dense grid,
    never part of the bracket, and its KL integral from σ_min is below the universal
    network's (the floor of SCIENCE.md §4b–c for denoisers that do not see σ)."""
    out, _, _ = smoke
    mse, kl = pd.read_csv(out / "mse.csv"), pd.read_csv(out / "kl.csv")
    blind = mse[(mse.entry == "gaussian") & (mse.kind == "blind")]
    assert set(blind.denoiser) == {"wiener-blind"} and len(blind) == 7
    assert not (mse[mse.entry != "gaussian"].kind == "blind").any()
    rows = kl[(kl.entry == "gaussian") & np.isclose(kl.sigma0, 0.02)].set_index("network")
    gap = rows.kl_high - rows.closing
    assert 0 < gap["wiener-blind (blind optimum)"] < gap["universal"]
    # its integral is the trapezoid in ln σ of its stored gap to the exact MMSE, from σ0 on
    h, u = _gaussian_gap_integrand(mse, "wiener-blind", sigma0=0.02)
    assert len(u) >= 2 and math.isclose(gap["wiener-blind (blind optimum)"],
                                         np.trapezoid(np.maximum(h, 0), u), rel_tol=1e-4)
    readme = (out / "README.md").read_text()
    assert "price of not knowing σ" in readme
    # a clipped blind row is flagged with the exact MMSE's cause, never as a network's
    clipped = kl[(kl.network == "wiener-blind (blind optimum)") & kl.clipped]
    flag = ("Flag (wiener-blind (blind optimum)): the blind optimum's MSE falls below U at "
            "some σ; MSE − U was clipped to 0 there (`clipped_nats` nats in all): U is the "
            "exact MMSE, which no estimator beats in expectation")
    assert (flag in readme) == (len(clipped) > 0)


def test_finite_training_sets_get_the_networks_curve_on_their_images(smoke):
    """Networks trained on a finite set (faces, shuffled faces: 80 images) store their MSE
    curve on those images, the one ``training_curve`` gives for their checkpoint, and the
    report shows it against the test curve; networks trained on fresh images store None.
    The main reference cells store the control baselines on the same images and noise."""
    from theorybench.cache import Cache
    from theorybench.denoisers.network import NetworkDenoiser
    from theorybench.evaluation import training_curve

    out, cache, _ = smoke
    records = [json.loads(p.read_text()) for p in (cache / "network").glob("*.json")]
    finite = [r for r in records if r["spec"]["dataset"] in ("faces", "shuffled")]
    assert finite and all(r["result"]["curve_train"] is None for r in records
                          if r not in finite)
    universal = next(r for r in finite if r["spec"]["dataset"] == "faces"
                     and r["spec"]["train"]["mode"] == "universal")
    stored = universal["result"]["curve_train"]
    assert len(stored["errors"][0]) == 80 and stored["sigma"] == universal["spec"]["eval_sigmas"]
    net = NetworkDenoiser.load(Cache(cache).artifact_path(universal["key"], ".pt"))
    images = datasets_synth.get("faces", split="test").train_images()
    again = training_curve(net, images, stored["sigma"], universal["spec"]["seed"])
    np.testing.assert_allclose(again["mse"], stored["mse"], rtol=1e-6)
    # the main reference cells' controls: the networks' images and noise (the identity's
    # errors are the noise's alone), none in side studies' reference cells or without a set
    references = [json.loads(p.read_text()) for p in (cache / "reference").glob("*.json")]
    for entry in ("faces", "shuffled"):
        reference = next(r for r in references
                         if r["spec"]["dataset"] == entry and not r["spec"].get("study"))
        controls = reference["result"]["curves_train"]
        assert set(controls) == {"identity", "mean-image", "wavelet"}
        identity = controls["identity"]
        expected = training_curve(lambda y, sigma: y, datasets_synth.get(
            entry, **reference["spec"]["params"]).train_images(), identity["sigma"],
            universal["spec"]["seed"])
        np.testing.assert_allclose(identity["mse"], expected["mse"], rtol=1e-6)
    assert not any(r["result"]["curves_train"] for r in references
                   if r["spec"].get("study") or r["spec"]["dataset"] not in ("faces", "shuffled"))
    mse = pd.read_csv(out / "mse.csv")
    rows = mse[mse.kind == "network-train"]
    assert set(rows.entry) == {"faces", "shuffled(base=faces)"}
    baselines = mse[(mse.kind == "baseline-train") & (mse.entry == "faces")]
    assert set(baselines.denoiser) == {f"{name}, training images"
                                       for name in ("identity", "mean-image", "wavelet")}
    faces = rows[(rows.entry == "faces")
                 & (rows.denoiser == "network (universal), training images")]
    np.testing.assert_allclose(faces.mse, stored["mse"], rtol=1e-5)
    readme = (out / "README.md").read_text()
    section = readme[readme.index("## faces"):readme.index("## shuffled")]
    assert "Generalization gap: each network on the 80 images it was trained on" in section
    assert "Generalization gap" not in readme[readme.index("## gaussian"):readme.index("## faces")]


def test_training_curve_only_for_test_images_apart_from_the_training_set():
    """faces' split "train" evaluates on its training images, split "all" partly: no
    generalization gap to measure there."""
    from theorybench.experiments.cells import _apart

    train = datasets_synth.get("faces", split="test").train_images()
    assert _apart(train, datasets_synth.get("faces", split="test").sample(20, 0))
    assert not _apart(train, datasets_synth.get("faces", split="train").sample(5, 0))
    assert not _apart(train, torch.cat([train[7:8] + 1, train[3:4]]))


def test_generalization_rows_divide_the_test_curve_by_the_training_one():
    from theorybench.report.main import StudyData, generalization_rows

    def curve(sigmas, mses):
        return {"sigma": sigmas, "mse": mses, "se": [0.0] * len(sigmas), "d": 4,
                "errors": [[m, m] for m in mses]}

    sig = [0.1, 0.5, 1.0]
    curves = {"identity": {**curve(sig, [0.0102, 0.255, 1.02]), "kind": "upper"},
              "mean-image": {**curve(sig, [0.06] * 3), "kind": "upper"},
              "wavelet": {**curve(sig, [0.009, 0.1, 0.2]), "kind": "upper"}}
    on_training = {"identity": curve(sig, [0.0098, 0.245, 0.98]),
                   "mean-image": curve(sig, [0.05] * 3),
                   "wavelet": curve(sig, [0.009, 0.08, 0.1])}
    records = [{"spec": {"kind": "reference"},
                "result": {"curves": curves, "curves_train": on_training}},
               {"spec": {"kind": "network", "train": {"mode": "universal"}},
                "result": {"curve": curve(sig, [0.011, 0.1, 0.3]), "examples": {},
                           "curve_train": curve(sig, [0.0088, 0.08, 0.3])}},
               {"spec": {"kind": "network", "train": {"mode": "per-sigma"}},  # no train curve
                "result": {"curve": curve([0.1], [0.01]), "examples": {}, "curve_train": None}}]
    rows = generalization_rows(StudyData("faces", {}, records), sigmas=[0.1, 1.0])
    assert [(r["network"], r["σ"]) for r in rows] == [("universal", 0.1), ("universal", 1.0)]
    assert rows[0] == {  # every image has the same error: standard errors of 0
        "network": "universal", "σ": 0.1, "MSE/σ², training images": "0.88 ± 0",
        "MSE/σ², test images": "1.1 ± 0", "test/training": "1.25 ± 0",
        "identity MSE/σ², training / test images": "0.98 / 1.02",
        "test/training, each over the identity": "1.201 ± 0",  # (0.011/0.0102)/(0.0088/0.0098)
        "mean-image test/training": "1.2 ± 0", "wavelet test/training": "1 ± 0"}
    assert rows[1]["test/training"] == "1 ± 0" and rows[1]["wavelet test/training"] == "2 ± 0"
    # unpaired curves: the ratio's SE by the delta method, from both relative SEs
    records[1]["result"]["curve"]["se"] = [0.0011, 0.0, 0.0]  # 10 % of 0.011
    records[1]["result"]["curve_train"]["se"] = [0.00066, 0.0, 0.0]  # 7.5 % of 0.0088
    rows = generalization_rows(StudyData("faces", {}, records), sigmas=[0.1])
    assert rows[0]["test/training"] == "1.25 ± 0.16"  # 1.25 · √(0.1² + 0.075²) = 0.156
    # images of unequal difficulty, the network a fixed multiple of the identity on each:
    # the unpaired ratio carries the images' spread, the paired one none of it
    spread = np.array([0.5, 3.0])  # two images, as every curve here
    records[0]["result"]["curves"]["identity"]["errors"][0] = list(0.0102 * spread)
    records[0]["result"]["curves_train"]["identity"]["errors"][0] = list(0.0098 * spread)
    records[1]["result"]["curve"]["errors"][0] = list(0.011 * spread)
    records[1]["result"]["curve_train"]["errors"][0] = list(0.0088 * spread)
    row = generalization_rows(StudyData("faces", {}, records), sigmas=[0.1])[0]
    assert row["test/training"] == "1.25 ± 0.16"
    value, se = row["test/training, each over the identity"].split(" ± ")
    assert value == "1.201" and float(se) < 1e-6  # rounding only
    # without the reference's controls (an older record): the network's columns only
    del records[0]["result"]["curves_train"]
    assert set(generalization_rows(StudyData("faces", {}, records), [0.1])[0]) == {
        "network", "σ", "MSE/σ², training images", "MSE/σ², test images", "test/training"}


def test_gaussian_kl_equals_integral_of_stored_gap(smoke):
    """The KL table is the trapezoid integral in ln σ of d·(MSE_θ − MMSE)/σ², clipped at 0
    for B_low, plus the closing term, here the exact KL(p_σmax ‖ N(μ̂, σ_max² I)), for both
    ends (SCIENCE.md §4b)."""
    out, _, _ = smoke
    mse, kl = pd.read_csv(out / "mse.csv"), pd.read_csv(out / "kl.csv")
    h, u = _gaussian_gap_integrand(mse, "network (universal)", sigma0=0.02)
    expected = np.trapezoid(h, u)
    expected_low = np.trapezoid(np.maximum(h, 0), u)
    row = kl[(kl.entry == "gaussian") & (kl.network == "universal") & np.isclose(kl.sigma0, 0.02)]
    closing = row.closing.iloc[0]
    # the Gaussian's start KL in closed form (Distribution.start_kl), not convexity's
    # E‖x − μ̂‖²/(2σ_max²) ≈ Σλ/2 = 256·0.04/2 (σ_max = the grid's top σ = 1): its
    # Σ ½ (λ/σ² − ln(1 + λ/σ²)) plus d (m − μ̂)²/2, μ̂ within 0.06 (5 SE) of the mean m
    lam = datasets_synth.get("gaussian", size=16).eigenvalues
    shape_term = float(0.5 * (lam - torch.log1p(lam)).sum())
    assert row.closing_exact.iloc[0]
    assert shape_term <= closing < shape_term + 256 * 0.06**2 / 2 < 10.24 / 2
    # the exact MMSE is both ends of the bracket: both ends clip MSE − MMSE at 0 (§4b)
    assert math.isclose(row.kl_high.iloc[0], expected_low + closing, rel_tol=1e-4)
    assert math.isclose(row.kl_low.iloc[0], expected_low + closing, rel_tol=1e-4)
    # what the clipping of MSE − U < 0 added to B_low, counted as such
    assert math.isclose(row.clipped_nats.iloc[0], expected_low - expected, rel_tol=1e-4,
                        abs_tol=1e-9)
    assert kl.closing.notna().all()
    assert not kl[kl.entry != "gaussian"].closing_exact.any()
    assert row.clipped.iloc[0] == bool(np.any(h < 0))
    assert "B_high" in (out / "README.md").read_text()


def test_brackets_are_ordered(smoke):
    out, _, _ = smoke
    mse = pd.read_csv(out / "mse.csv")
    for entry in ("calpha(alpha=2.0)", "calpha(alpha=4.0)", "disks"):
        m = mse[mse.entry == entry]
        lower = m[m.kind == "lower"].groupby("sigma")[["mse", "se"]].max()
        upper = m[m.kind == "upper"].groupby("sigma")[["mse", "se"]].min()
        assert len(lower) == len(upper) == 7  # the dense grid: 4 σ refined twice
        assert (lower.mse <= upper.mse + 3 * (lower.se + upper.se)).all(), entry
        identity = m[m.denoiser == "identity"]  # per-pixel MSE σ², within its noise
        assert (abs(identity.mse - identity.sigma**2) < 4 * identity.se).all(), entry


def test_second_run_hits_the_cache_and_changes_nothing(smoke):
    out, cache, _ = smoke
    before = {p.name: p.read_bytes() for p in out.glob("*.csv")}
    assert main(["--preset", "smoke", "--out", str(out), "--cache", str(cache), "--quiet"]) == 0
    assert json.loads((out / "run.json").read_text())["computed"] == 0
    assert {p.name: p.read_bytes() for p in out.glob("*.csv")} == before
    # the header says the cells came from the cache, computed before, and when
    head = (out / "README.md").read_text().splitlines()[2]
    assert "0 of them computed by this run; the other " in head
    assert "read from the cache, computed before this run" in head and "records are dated" in head


def test_report_only_rebuilds_from_cache(smoke, tmp_path):
    _, cache, meta = smoke
    out = tmp_path / "again"
    assert main(["--preset", "smoke", "--out", str(out), "--cache", str(cache),
                 "--report-only", "--quiet"]) == 0
    assert (out / "kl.csv").exists()
    assert "report rebuilt from the stored cells by" not in (out / "README.md").read_text()
    # the run's run.json names an older commit: the header names the report's code too
    (out / "run.json").write_text(json.dumps({**meta, "commit": "0ld0ld0"}))
    assert main(["--preset", "smoke", "--out", str(out), "--cache", str(cache),
                 "--report-only", "--quiet"]) == 0
    head = (out / "README.md").read_text().split("## ")[0]
    assert "commit `0ld0ld0` · report rebuilt from the stored cells by commit `" in head


def test_compare_sets_another_seed_s_report_beside_this_one(smoke, tmp_path, capsys):
    """``--compare DIR``: the section "Across seeds" and ``seeds.csv``, both runs read from
    their report files; here the other run is this one's report under another seed's
    run.json, so every z is 0. The folder the run writes is refused before any cell."""
    out, cache, meta = smoke
    other = tmp_path / "seed-1"
    shutil.copytree(out, other)
    (other / "run.json").write_text(json.dumps({**meta, "seed": 1}))
    again = tmp_path / "again"
    assert main(["--preset", "smoke", "--out", str(again), "--cache", str(cache),
                 "--report-only", "--quiet", "--compare", str(other)]) == 0
    text = (again / "README.md").read_text()
    assert "## Across seeds" in text and "`seeds.csv`" in text.split("## Files")[1]
    assert f"--compare {other}`; the numbers below" in text.split("## ")[0]
    z = pd.read_csv(again / "seeds.csv")
    assert len(z) and set(z["seed"]) == {1} and (z["z"] == 0).all()
    with pytest.raises(SystemExit) as exit_:
        main(["--preset", "smoke", "--out", str(other), "--cache", str(cache), "--quiet",
              "--compare", str(other)])
    assert exit_.value.code == 2 and "the folder this run writes" in capsys.readouterr().err


def test_report_only_of_a_run_cut_short_says_what_is_missing(smoke, tmp_path):
    """A run killed before its end stores some cells and no run.json: the rebuilt report
    says how many cells are missing and where the stored ones ran, and gives no wall time."""
    _, cache, _ = smoke
    partial = tmp_path / "cache"
    shutil.copytree(cache, partial)
    cells = sorted((partial / "network").glob("*.json"))
    specs = {path: json.loads(path.read_text())["spec"] for path in cells}
    universal = next(path for path, spec in specs.items()  # one of the main study's
                     if spec["train"]["mode"] == "universal" and not spec.get("study"))
    dropped = [universal] + [path for path in cells if path != universal][:2]
    for path in dropped:
        path.unlink()
    out = tmp_path / "rebuilt"
    out.mkdir()  # the run.json of another run there (another seed) is not taken for this one's
    (out / "run.json").write_text(json.dumps({"preset": "smoke", "overrides": [], "seed": 5,
                                              "datasets": None, "wall_seconds": 1234.0}))
    assert main(["--preset", "smoke", "--out", str(out), "--cache", str(partial),
                 "--report-only", "--quiet"]) == 0
    head = (out / "README.md").read_text().split("## ")[0]
    assert "1234 s" not in head
    assert "wall time not recorded" in head and "device cpu on " in head
    missing = [line for line in head.splitlines() if line.startswith("**Incomplete:**")]
    assert missing and missing[0].startswith(f"**Incomplete:** {len(dropped)} cells")
    # the universal network dropped: its entry's row is gone from the summary, which says so
    glance = (out / "README.md").read_text().split("## ")[1]
    label = entry_label(specs[universal]["dataset"], specs[universal]["params"])
    assert glance.startswith("At a glance") and f"| {label} | universal |" not in glance
    assert f"{label} (no stored universal network" in glance
    full = tmp_path / "full"
    assert main(["--preset", "smoke", "--out", str(full), "--cache", str(cache),
                 "--report-only", "--quiet"]) == 0
    assert "Incomplete" not in (full / "README.md").read_text()


def test_kinds_computes_only_those_cells(smoke, tmp_path):
    """``--kinds reference`` runs the reference cells alone (the CPU work a GPU run can be
    given ready-made): the same records as the full run's, the rest reported missing."""
    _, cache, meta = smoke
    out = tmp_path / "refs"
    fresh = tmp_path / "cache"
    assert main(["--preset", "smoke", "--kinds", "reference", "--out", str(out), "--cache",
                 str(fresh), "--quiet"]) == 0
    run = json.loads((out / "run.json").read_text())
    stored = sorted(p.name for p in (fresh / "reference").glob("*.json"))
    assert run["cells"] == run["computed"] == len(stored) > 0
    assert run["missing"] == meta["cells"] - len(stored)
    assert sorted(p.name for p in (fresh / "network").glob("*.json")) == []
    assert set(stored) <= {p.name for p in (cache / "reference").glob("*.json")}
    assert f"**Incomplete:** {run['missing']} cells" in (out / "README.md").read_text()


@pytest.mark.parametrize("args", [
    ["--preset", "huge"],
    ["--datasets", "nope"],
    ["--datasets", ","],
    ["--seed", "-1"],
    ["--seed", "x"],
    ["--device", "tpu:9"],
    ["--report-only", "--cache", "{empty}"],
    ["--kinds", "reference,nope"],
    ["--kinds", ","],
    ["--datasets", "faces-folder"],
    ["--compare", "{empty}"],
])
def test_bad_options_exit_2_with_one_line(args, tmp_path):
    args = [a.replace("{empty}", str(tmp_path / "empty")) for a in args]
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, str(ROOT / "run_all.py"), *args, "--out", str(out),
                           "--quiet"], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("run_all.py: error:")
    assert not out.exists()


def test_gpu_preset_runs_on_cpu_with_tiny_overrides(tmp_path):
    """The gpu preset's cells (objective, centring, warm starts, dense grid) on CPU, tiny."""
    out, cache = tmp_path / "reports", tmp_path / "cache"
    tiny = ['net={"arch": "unet", "channels": 4, "blocks": 2, "convs_per_block": 1}',
            "universal_steps=16", "per_sigma_steps=4", "batch_size=4", "n_eval=8",
            "size=16", 'datasets=[["gaussian", {"size": 16}]]', "jacobian_images=1"]
    args = ["--preset", "gpu", "--device", "cpu", "--datasets", "gaussian", "--out", str(out),
            "--cache", str(cache), "--quiet", "--jobs", "1", "--seed", "3"]
    assert main(args + [a for t in tiny for a in ("--override", t)]) == 0
    meta = json.loads((out / "run.json").read_text())
    assert meta["preset"] == "gpu" and meta["failed"] == 0 and len(meta["overrides"]) == len(tiny)
    # the report's command line reruns this study: its seed, datasets and overrides
    command = (f"python run_all.py --preset gpu --out {shlex.quote(str(out))} --seed 3 "
               "--datasets gaussian " + " ".join(f"--override {shlex.quote(t)}" for t in tiny))
    head = (out / "README.md").read_text().split("## ")[0]
    assert f"Regenerate with `{command}`" in head and "· seed 3 ·" in head
    mse = pd.read_csv(out / "mse.csv")
    universal = mse[mse.denoiser == "network (universal)"]
    per_sigma = mse[mse.denoiser == "network (per-sigma)"]
    assert len(universal) == 29 and len(per_sigma) == 8  # dense and coarse grids
    training = pd.read_csv(out / "training.csv")
    assert set(training["warm start"][training.network == "per-sigma"]) == {True}
    assert "objective `balanced`" in (out / "README.md").read_text()


def test_header_names_the_entries_whose_networks_differ():
    from theorybench.report.common import architectures

    def spec(name, padding):
        return {"dataset": name, "params": {"size": 8}, "net": {"arch": "unet", "padding": padding}}

    specs = [spec("gaussian", "circular"), spec("disks", "zeros"), spec("faces", "zeros"),
             spec("gaussian", "circular"), spec("shuffled", "zeros")]
    assert architectures(specs) == \
        "`arch=unet, padding=zeros` (gaussian: `padding=circular`)"
    assert architectures(specs[1:3]) == "`arch=unet, padding=zeros`"
    # a tie goes to zero padding; a field only one side has is a difference too
    assert architectures(specs[:2]) == \
        "`arch=unet, padding=zeros` (gaussian: `padding=circular`)"
    # the header describes the main study's networks, not the dimension study's
    from theorybench.report.main import study_header

    train = {"mode": "universal", "steps": 10, "batch_size": 4, "lr": 1e-3,
             "objective": "paper", "sigma_max": 1.0}
    records = [{"spec": {"kind": "network", "train": train, **spec(name, "zeros"), **extra},
                "result": {}}
               for name, extra in (("disks", {}), ("ellipses", {"study": "dimension"}),
                                   ("ellipses", {"study": "dimension"}))]
    records[1]["spec"]["net"] = records[2]["spec"]["net"] = {"arch": "bfcnn"}
    assert "universal networks: `arch=unet, padding=zeros`, 10 steps" in \
        study_header(records)[0]
    assert architectures([spec("disks", "zeros"), {**spec("faces", "zeros"),
                          "net": {"arch": "unet", "padding": "zeros", "channels": 8}}]) == \
        "`arch=unet, padding=zeros` (faces: `channels=8`)"


def test_universal_steps_by_family_trains_that_family_longer_and_the_header_says_so():
    from theorybench.cli import apply_overrides
    from theorybench.experiments.cells import build_cells
    from theorybench.experiments.presets import PRESETS
    from theorybench.report.common import steps_text
    from theorybench.report.main import study_header

    preset = dataclasses.replace(PRESETS["smoke"], universal_steps_by_family={"disks": 40})
    entries = [("gaussian", {"size": 16}), ("disks", {"size": 16}), ("calpha", {"size": 16})]
    universal = [c for c in build_cells(preset, entries, 0)
                 if c["kind"] == "network" and c["train"]["mode"] == "universal"]
    base = preset.universal_steps
    assert [c["train"]["steps"] for c in universal] == [base, 40, base]
    assert steps_text(universal) == f"{base} steps (disks: 40)"
    assert steps_text(universal[:2]) == f"{base} steps (disks: 40)"  # a tie: the smaller
    assert steps_text(universal + universal[1:2]) == f"{base} steps (disks: 40)"  # once
    records = [{"spec": spec, "result": {}} for spec in universal]
    assert f", {base} steps (disks: 40), batch" in " ".join(study_header(records))
    # a quick run's universal_steps is every universal network's budget
    assert apply_overrides(preset, ["universal_steps=3"]).universal_steps_by_family == {}
    typo = dataclasses.replace(preset, universal_steps_by_family={"disk": 40})
    with pytest.raises(ValueError, match=r"unknown distribution\(s\) \['disk'\]; valid: "):
        build_cells(typo, entries, 0)


def test_net_by_family_changes_that_family_s_networks_and_the_header_says_so():
    from theorybench.cli import apply_overrides
    from theorybench.experiments.cells import build_cells
    from theorybench.experiments.presets import PRESETS
    from theorybench.report.common import architectures

    preset = dataclasses.replace(PRESETS["smoke"], net_by_family={"disks": {"channels": 4}})
    entries = [("gaussian", {"size": 16}), ("disks", {"size": 16}), ("calpha", {"size": 16}),
               ("calpha", {"size": 16, "alpha": 4.0})]
    networks = [c for c in build_cells(preset, entries, 0) if c["kind"] == "network"]
    channels = {(c["dataset"], c["net"]["channels"]) for c in networks}  # universal, per-σ
    assert channels == {("gaussian", 8), ("disks", 4), ("calpha", 8)}
    per_sigma = [c for c in networks if c["dataset"] == "disks" and c.get("init_key")]
    assert per_sigma and all(c["net"]["channels"] == 4 for c in per_sigma)
    assert " (disks: `channels=4`)" in architectures(networks)
    # another network for every family drops the family's own fields
    tiny = apply_overrides(preset, ['net={"arch": "bfcnn", "channels": 2, "depth": 2}'])
    assert tiny.net_by_family == {}
    both = apply_overrides(preset, ['net={"arch": "bfcnn", "channels": 2, "depth": 2}',
                                    'net_by_family={"disks": {"depth": 3}}'])
    assert both.net_by_family == {"disks": {"depth": 3}}
    with pytest.raises(ValueError, match=r"net_by_family names unknown distribution\(s\) "
                                         r"\['disk'\]"):
        build_cells(dataclasses.replace(preset, net_by_family={"disk": {}}), entries, 0)
    with pytest.raises(ValueError, match="net_by_family must map family names to dicts"):
        dataclasses.replace(preset, net_by_family={"disks": 3})
    with pytest.raises(ValueError, match=r"net_by_family\['disks'\]: NetConfig has no "
                                         r"field\(s\) \['blokcs'\]; valid fields"):
        dataclasses.replace(preset, net_by_family={"disks": {"blokcs": 3}})


def test_bad_override_is_refused(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--preset", "smoke", "--override", "steps=3", "--out", str(tmp_path)])
    assert exc.value.code == 2
    assert "FIELD one of" in capsys.readouterr().err


@pytest.mark.parametrize("override, message", [
    ("n_eval=0", "n_eval must be an integer >= 2"),
    ("size=0", "size must be an integer >= 1"),
    ("sigmas=[1.0, 0.1]", "sigmas must hold at least 2 values > 0, strictly increasing"),
    ("sigma0s=[]", "sigma0s must hold at least one"),
    ("monitor_sigmas=[-0.1]", "monitor_sigmas must be finite and > 0, got -0.1"),
    ('sigmas=["0.02", "1.0"]', "sigmas must be finite numbers > 0"),
    ('sigma0s=["0.02"]', "sigma0s must be finite numbers > 0"),
    ("sigma0s=[5.0]", "sigma0s must lie in the curve grid's range [0.02, 1]"),
    ('universal_steps_by_family={"disks": 0}',
     "universal_steps_by_family['disks'] must be an integer >= 1"),
    ("compile=1", "compile must be"),
    ('precision="fp16"', "precision must be one of ['bf16', 'fp32']"),
])
def test_preset_refuses_bad_values_before_any_cell(tmp_path, capsys, override, message):
    with pytest.raises(SystemExit) as exc:
        main(["--preset", "smoke", "--override", override, "--out", str(tmp_path / "o"),
              "--cache", str(tmp_path / "c")])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "c").exists()


def test_preset_flags_are_true_or_false():
    import dataclasses

    from theorybench.experiments.presets import PRESETS

    for name in ("center", "warm_start", "precondition", "compile"):
        with pytest.raises(ValueError, match=f"{name} must be True or False, got 1"):
            dataclasses.replace(PRESETS["smoke"], **{name: 1})


def test_preset_precision_reaches_every_network():
    """The preset's precision (bf16 in the default preset) is every trained network's:
    main study, per-σ, memorization sweep and dimension study."""
    from theorybench.experiments.presets import PRESETS
    from theorybench.experiments.study import study_cells

    preset = PRESETS["default"]
    assert preset.precision == "bf16"
    cells = study_cells(preset, preset.datasets, None, 0)
    trained = [c["train"] for c in cells if c["kind"] in ("network", "memorization")]
    kinds = {(c["kind"], c.get("study"), c["train"]["mode"]) for c in cells if "train" in c}
    assert {("network", None, "per-sigma"), ("memorization", None, "universal"),
            ("network", "dimension", "universal")} <= kinds
    assert trained and all(t["precision"] == "bf16" for t in trained)


def test_training_steps_text_names_compilation_and_precision():
    from theorybench.report.common import training_steps_text

    compiled = ", training steps compiled (`torch.compile`)"
    low = ", forward in bfloat16 (`torch.autocast`)"
    assert training_steps_text({}) == ""
    assert training_steps_text({"compile": True, "precision": "fp32"}) == compiled
    assert training_steps_text({"precision": "bf16"}) == low
    assert training_steps_text({"compile": True, "precision": "bf16"}) == compiled + low


def test_ratio_standard_error_matches_the_spread_of_repeated_ratios():
    """The delta-method SE of MSE/U from paired per-image errors (report.main.ratio_se)
    against the spread of the ratio over 4000 independent test sets of 64 images, whose
    network and reference errors are correlated as on shared images and noise."""
    from theorybench.report.main import ratio_se

    rng = np.random.default_rng(0)
    base = rng.gamma(2.0, 1.0, size=(4000, 64))  # the images' own difficulty, shared
    reference = base * rng.gamma(20.0, 1 / 20, size=base.shape)
    network = 3.0 * base * rng.gamma(5.0, 1 / 5, size=base.shape)
    ratios = network.mean(1) / reference.mean(1)
    se = ratio_se(network, reference)  # one row per test set, as one row per σ
    assert se.shape == (4000,) and abs(ratios.mean() - 3.0) < 0.02
    assert abs(np.median(se) / ratios.std() - 1) < 0.1
    # independent errors of the same spread would give a larger SE: the pairing matters
    assert np.median(ratio_se(network, reference[::-1])) > 1.5 * np.median(se)
    assert ratio_se(network, reference[:, :10]) is None and ratio_se(None, reference) is None


def test_size_override_resizes_the_entries():
    from theorybench.cli import apply_overrides
    from theorybench.experiments.presets import PRESETS

    preset = apply_overrides(PRESETS["smoke"], ["size=8"])
    sized = [params for _, params in preset.datasets if "size" in params]
    assert preset.size == 8 and sized and all(p["size"] == 8 for p in sized)
    kept = apply_overrides(PRESETS["smoke"], ["size=8", 'datasets=[["disks", {"size": 12}]]'])
    assert [tuple(e) for e in kept.datasets] == [("disks", {"size": 12})]


def test_standing_rows_name_where_a_network_loses_to_the_baselines():
    from theorybench.report.common import bracket
    from theorybench.report.main import StudyData, standing, standing_rows

    def curve(sigmas, mses, kind=None):
        out = {"sigma": sigmas, "mse": mses, "se": [0.0] * len(sigmas), "d": 4,
               "errors": [[m, m] for m in mses]}
        return {**out, "kind": kind} if kind else out

    sig = [0.1, 1.0, 2.0]
    curves = {"wiener": curve(sig, [0.01, 0.02, 0.03], "exact"),
              "identity": curve(sig, [0.01, 1.0, 4.0], "upper"),
              "mean-image": curve(sig, [0.04] * 3, "upper")}
    records = [{"spec": {"kind": "reference"}, "result": {"curves": curves}},
               {"spec": {"kind": "network", "train": {"mode": "universal"}},
                "result": {"curve": curve(sig, [0.012, 0.03, 0.05]), "examples": {}}}]
    records += [{"spec": {"kind": "network", "train": {"mode": "per-sigma"}},
                 "result": {"curve": curve([s], [m]), "examples": {}}}
                for s, m in ((0.1, 0.011), (2.0, 0.035))]
    study = StudyData("gaussian", {"size": 8}, records)
    refs, _ = bracket(curves)
    rows = {r["network"]: r for r in standing_rows(standing(study, refs))}
    assert rows["universal"] == {  # every image has the same error: a standard error of 0
        "network": "universal", "worst MSE/U": "1.67 ± 0 at σ = 2",
        "worst MSE/U, σ ≤ 1": "1.5 ± 0 at σ = 1",
        "better than the identity": "not at σ = 0.1 (×1.2 ± 0)",
        "better than the mean image, σ ≥ 1": "not at σ = 2 (×1.25 ± 0)"}
    assert rows["per-sigma"]["worst MSE/U"] == "1.17 ± 0 at σ = 2"
    assert rows["per-sigma"]["better than the mean image, σ ≥ 1"] == "every σ"
    # with the blind optimum, the universal network's row says where it loses too
    curves["wiener-blind"] = curve(sig, [0.0101, 0.5, 0.04], "blind")
    rows = {r["network"]: r for r in standing_rows(
        standing(StudyData("gaussian", {"size": 8}, records), refs))}
    assert rows["universal"]["better than the identity"] == (
        "not at σ = 0.1 (×1.2 ± 0); blind optimum: not at σ = 0.1 (×1.01 ± 0)")
    assert rows["per-sigma"]["better than the identity"] == "not at σ = 0.1 (×1.1 ± 0)"
    # trained on a finite set: against the identity on the same training images and noise
    curves.pop("wiener-blind")
    records[0]["result"]["curves_train"] = {"identity": curve(sig, [0.0098, 0.98, 3.9])}
    records[1]["result"]["curve_train"] = curve(sig, [0.0099, 0.02, 3.95])
    rows = {r["network"]: r for r in standing_rows(
        standing(StudyData("gaussian", {"size": 8}, records), refs))}
    assert rows["universal"]["better than the identity"] == (  # the larger of 1.0102, 1.0128
        "not at σ = 0.1 (×1.2 ± 0); on its training images: not at σ = 0.1, 2 (×1.013 ± 0)")
    assert rows["per-sigma"]["better than the identity"] == "not at σ = 0.1 (×1.1 ± 0)"


def test_losses_quote_the_paired_ratio_where_a_network_loses():
    """``losses``: the σ where a curve is no better than a baseline on the same images and
    noise, the ratio of the two MSEs there and its paired standard error (``ratio_se``)."""
    from theorybench.report.common import curve_frame, losses_text
    from theorybench.report.main import losses, ratio_se

    rng = np.random.default_rng(1)
    sig = [0.01, 0.1, 1.0, 2.0]
    base = rng.gamma(4.0, 1.0, size=(4, 50)) * np.array(sig)[:, None] ** 2
    net = base * np.array([1.05, 0.9, 1.2, 0.99])[:, None] * rng.gamma(50.0, 1 / 50, base.shape)

    def curve(errors):
        return curve_frame({"sigma": sig, "mse": errors.mean(1).tolist(), "se": [0.0] * 4,
                            "d": 4, "errors": errors.tolist()})

    lost = losses(curve(net), curve(base))
    ratio = net.mean(1) / base.mean(1)
    lose = ratio >= 1
    assert lose.tolist() == [True, False, True, False]
    np.testing.assert_allclose(lost["sigma"], np.array(sig)[lose])
    np.testing.assert_allclose(lost["ratio"], ratio[lose])
    np.testing.assert_allclose(lost["se"], ratio_se(net, base)[lose])
    k = int(np.argmax(ratio))
    assert losses_text(lost) == (f"not at σ = 0.01, 1 (×{ratio[k]:.4g} ± "
                                 f"{ratio_se(net, base)[k]:.2g})")
    # a mask keeps only its σ; a baseline on a denser grid is read at the curve's σ
    only_large = losses(curve(net), curve(base), np.array(sig) >= 1)
    assert only_large["sigma"].tolist() == [1.0]
    coarse = curve_frame({"sigma": sig[1:3], "mse": net[1:3].mean(1).tolist(),
                          "se": [0.0] * 2, "d": 4, "errors": net[1:3].tolist()})
    assert losses(coarse, curve(base))["sigma"].tolist() == [1.0]
    # without per-image errors: no standard error
    bare = curve(net)
    bare.attrs.pop("errors")
    assert losses_text(losses(bare, curve(base))) == f"not at σ = 0.01, 1 (×{ratio[k]:.4g})"
    assert losses_text(None) == "–" and losses_text(losses(curve(base), curve(net * 2))) == \
        "every σ"


def test_a_bf16_preset_runs_in_float32_where_bfloat16_is_emulated(monkeypatch, tmp_path, capsys):
    """The default preset's bfloat16 forward, on a CPU without bfloat16 units, becomes an
    override the run records; a chosen precision, another executor, a device whose units
    cannot be told and a float32 preset are left alone."""
    from theorybench import cli
    from theorybench.experiments.presets import PRESETS

    cpu = torch.device("cpu")
    units = {"value": False}
    monkeypatch.setattr(cli, "has_bf16_units", lambda device: units["value"])
    default, smoke = PRESETS["default"], PRESETS["smoke"]
    assert default.precision == "bf16" and smoke.precision == "fp32"
    overrides, note = cli.native_precision(default, ["universal_steps=50"], cpu, "local")
    assert overrides == ["universal_steps=50", 'precision="fp32"'] and "no bfloat16 units" in note
    assert cli.apply_overrides(default, overrides).precision == "fp32"
    for args in ((default, ['precision="bf16"'], cpu, "local"), (default, [], cpu, "ray"),
                 (smoke, [], cpu, "local")):
        assert cli.native_precision(*args) == (args[1], None)
    for value in (True, None):
        units["value"] = value
        assert cli.native_precision(default, [], cpu, "local") == ([], None)
    # a run records the override it computed with, and says so once
    units["value"] = False
    out = tmp_path / "out"
    assert main(["--datasets", "gaussian", "--kinds", "reference", "--device", "cpu", "--out",
                 str(out), "--cache", str(tmp_path / "cache"), "--quiet"]) == 0
    assert json.loads((out / "run.json").read_text())["overrides"] == ['precision="fp32"']
    assert capsys.readouterr().err.count("no bfloat16 units") == 1
    # a rebuild reads the cells the run computed, with the precision from its run.json
    assert main(["--datasets", "gaussian", "--kinds", "reference", "--report-only", "--out",
                 str(out), "--cache", str(tmp_path / "cache"), "--quiet"]) == 0
    command = next(line for line in (out / "README.md").read_text().splitlines()
                   if line.startswith("Regenerate with"))
    assert "precision=" in command and "fp32" in command
    parse = cli.build_parser().parse_args
    assert cli.rebuild_overrides(parse(["--datasets", "gaussian"]), out / "run.json") == [
        'precision="fp32"']
    for other in (["--datasets", "gaussian", "--seed", "1"], ["--datasets", "faces"],
                  ["--datasets", "gaussian", "--override", 'precision="bf16"']):
        assert cli.rebuild_overrides(parse(other), out / "run.json") == parse(other).override


def test_the_rerun_command_names_a_report_folder_other_than_the_default():
    """Following another seed's "Regenerate with" line must not overwrite ``reports/``."""
    from theorybench.report.main import rerun_command

    meta = {"seed": 1, "overrides": ['precision="fp32"']}
    assert rerun_command("default", meta, out=Path("reports")) == (
        "python run_all.py --preset default --seed 1 --override 'precision=\"fp32\"'")
    assert rerun_command("default", meta, ["reports"], Path("reports/seed-1")) == (
        "python run_all.py --preset default --out reports/seed-1 --seed 1 "
        "--override 'precision=\"fp32\"' --compare reports")
    # a study of a plugin's family needs its --plugin to be run again
    assert rerun_command("smoke", {"plugins": ["edges_plugin"], "datasets": "edges"}) == (
        "python run_all.py --preset smoke --plugin edges_plugin --datasets edges")


def test_a_run_records_the_commit_it_started_with(monkeypatch, tmp_path):
    """A commit in the checkout while the cells run (a long run) is not the code that
    computed them: run.json names the commit at the start."""
    from theorybench import cli

    ran = []
    run_cells = cli.run_cells

    def running(*args, **kwargs):
        records = run_cells(*args, **kwargs)
        ran.append(True)  # a commit happens here, as the cells finish
        return records

    monkeypatch.setattr(cli, "run_cells", running)
    monkeypatch.setattr(cli, "git_commit", lambda: "later" if ran else "started")
    out = tmp_path / "out"
    assert main(["--preset", "smoke", "--datasets", "gaussian", "--kinds", "reference",
                 "--out", str(out), "--cache", str(tmp_path / "cache"), "--quiet"]) == 0
    assert json.loads((out / "run.json").read_text())["commit"] == "started"


def test_readme_explains_the_shared_tables_once_and_names_the_image_sizes(smoke):
    """The legends of the entry sections' tables sit in one section between At a glance and
    the first entry; every entry section points to it; the header gives each entry's size."""
    out, _, _ = smoke
    readme = (out / "README.md").read_text()
    legend = readme.index("## How to read the entries")
    assert readme.index("## At a glance") < legend < readme.index("## gaussian")
    for table in ("**Where the networks stand.**", "**KL bound**", "**Generalization gap**"):
        assert readme.count(table) == 1 and readme.index(table) > legend
    assert readme.count("Where the networks stand (section How to read the entries):") == 6
    assert "Image size in the entry sections" in readme and "gaussian 16×16" in readme
    assert "faces 25×25" in readme


def test_small_report_helpers():
    from theorybench.report.common import image_size
    from theorybench.report.jacobian import _images_text
    from theorybench.report.main import LEGENDS, _borrowed_text, legend_section
    from theorybench.report.memorization import _against_identity

    assert (image_size(1024), image_size(625), image_size(10)) == ("32×32", "25×25", "d = 10")
    assert legend_section(set()) == []
    shown = "\n".join(legend_section({"kl"}))
    assert LEGENDS["kl"] in shown and LEGENDS["standing"] not in shown
    assert "one noisy image per entry and σ" in _images_text([1])
    assert "(1, 4 per entry and σ" in _images_text([1, 4]) and _images_text([]) == ""
    curve = {"sigma": [0.01, 0.1], "mse": [4e-4, 1e-3]}
    group = [{"spec": {"N": n}, "result": {"mse_test": curve}} for n in (1, 10)]
    assert "At σ = 0.01 of their test curves" in _against_identity(group)
    assert "N = 1: 4, N = 10: 4" in _against_identity(group)
    assert _against_identity([{"spec": {"N": 1}, "result": {}}]) == ""
    upper = pd.DataFrame({"sigma": [0.1, 0.2, 0.4]})
    upper.attrs["borrowed"] = np.array([True, True, False])  # U from σ = 0.4 below it
    assert _borrowed_text({"upper": upper}) == (
        "; U from a larger σ at 2 of 3 σ (0.1–0.2: 0 stored on a coarser grid, 2 by the "
        "monotone envelope; the MMSE does not decrease with σ)")
    upper.attrs["extended"] = np.array([True, False, True])  # 0.4 a coarse grid's 0.8
    assert _borrowed_text({"upper": upper}) == (
        "; U from a larger σ at 3 of 3 σ (0.1–0.4: 1 stored on a coarser grid, 2 by the "
        "monotone envelope; the MMSE does not decrease with σ)")
    upper.attrs["borrowed"][:] = False
    upper.attrs["extended"][:] = False
    assert _borrowed_text({"upper": upper, "exact": upper}) == ""

"""The memorization → generalization sweep end to end on a tiny study, and its report."""

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch

import datasets_synth
from tbcore.seeding import derived_seed
from theorybench.cache import Cache
from theorybench.denoisers.network import NetworkDenoiser
from theorybench.evaluation import mse_curve, training_curve
from theorybench.experiments import memorization_sweep as ms
from theorybench.experiments.cells import run_cell
from theorybench.experiments.keys import cell_key
from theorybench.memorization import cosine, leave_one_out_references, memorization_measures
from theorybench.report.memorization import (
    generalizes,
    memorization_section,
    stays_down_to,
    summary_row,
    verdict,
)
from theorybench.report.training import training_section
from theorybench.sampling import SampleResult, SamplingDiverged, sigma_grid
from theorybench.training import TrainingDiverged, converged

NET = {"arch": "bfcnn", "channels": 8, "depth": 3}
SAMPLER = {"sigma_min": 1e-3, "steps": 10}  # tiny σ_min: the empirical samples land on S1
K = 8


def tiny_cells(entries=(("disks", {"size": 16}),), sizes=(1, 4), sampler=SAMPLER):
    return ms.build_memorization_cells(list(entries), sizes, NET, 30, 8, 1e-3, 2.0, K,
                                       [0.05, 0.2, 1.0], 16, sampler, 0,
                                       monitor_sigmas=(0.2,), posterior_samples=True)


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    root = tmp_path_factory.mktemp("memcache")
    records = [run_cell(spec, root) for spec in tiny_cells()]
    return root, records


def test_cells_are_plain_specs_and_finite_sets_are_capped():
    cells = tiny_cells(entries=(("disks", {"size": 16}), ("faces", {"split": "test"})),
                       sizes=(4, 1, 40, 41))
    found = [(c["dataset"], c["N"]) for c in cells]
    # faces holds 80 training images: two disjoint sets allow N <= 40
    assert found == [("disks", 1), ("disks", 4), ("disks", 40), ("disks", 41),
                     ("faces", 1), ("faces", 4), ("faces", 40)]
    assert json.loads(json.dumps(cells)) == cells
    spec = cells[0]
    assert spec["kind"] == "memorization" and spec["train"]["mode"] == "universal"
    assert spec["sampler"] == {"method": "heun", "sigma_min": 1e-3, "steps": 10,
                               "mean": "auto", "sigma_max": 2.0}
    assert cell_key(spec) != cell_key(cells[1])
    # the posterior mean samples at each entry's largest N, where the family has one and
    # can fit its images (faces: neither)
    assert [c["posterior_samples"] for c in cells] == [False] * 3 + [True] + [False] * 3


def test_trace_fractions_tell_noisy_images_of_the_family_from_others():
    """Iterates that are disks with noise σ_k are images of the family at σ_k; a texture
    of unit amplitude is one at σ = 1 only, where the tolerance 2σ² exceeds its energy.
    With textures at every other level the fractions alternate: each level reads its own
    iterates. A run that records every other step is read at the σ of the steps it
    recorded."""
    dist = datasets_synth.get("disks", size=16)
    grid = sigma_grid(1.0, 0.01, 6)
    clean = dist.sample(8, 3)
    z = torch.randn((8, 6, 1, 16, 16), generator=torch.Generator().manual_seed(0))
    noisy = clean.unsqueeze(1) + grid.float().view(1, -1, 1, 1, 1) * z
    texture = clean.mean() + torch.randn(noisy.shape, generator=torch.Generator().manual_seed(1))

    def run(trajectory, steps=range(5)):  # an ODE run records steps 0 .. len(grid) − 2
        steps = torch.tensor(list(steps))
        return SampleResult(clean, None, None, None, None, "heun", grid, trajectory[:, steps],
                            steps)

    assert ms.trace_fractions(run(noisy), dist) == [1.0] * 5
    assert ms.trace_fractions(run(texture), dist) == [1.0, 0.0, 0.0, 0.0, 0.0]
    alternate = torch.where((torch.arange(6) % 2 == 1).view(1, -1, 1, 1, 1), texture, noisy)
    assert ms.trace_fractions(run(alternate), dist) == [1.0, 0.0, 1.0, 0.0, 1.0]
    assert ms.trace_fractions(run(texture, (0, 2, 4)), dist) == [1.0, 0.0, 0.0]
    assert ms.trace_fractions(run(noisy, (0, 2, 4)), dist) == [1.0] * 3
    # iterates at σ_2 read as if at σ_4: their noise exceeds that level's tolerance
    at_2 = SampleResult(clean, None, None, None, None, "heun", grid, noisy[:, [2]],
                        torch.tensor([4]))
    assert ms.trace_fractions(at_2, dist) == [0.0]


def test_stays_down_to():
    assert stays_down_to([1.0, 0.5, 0.1, 0.05], [1.0, 0.9, 0.5, 0.95]) == 0.5
    assert stays_down_to([1.0, 0.5], [0.8, 0.8]) == 0.5
    assert math.isnan(stays_down_to([1.0, 0.5], [0.7, 1.0]))


@pytest.mark.parametrize("sampler, match", [({"method": "ddim"}, "method must be one of"),
                                            ({"sigma0": 1.0}, "unknown sampler option"),
                                            ({"record_every": 2}, "unknown sampler option"),
                                            ({"mean": "data"}, "mean must be")])
def test_bad_sampler_raises(sampler, match):
    with pytest.raises(ValueError, match=match):
        tiny_cells(sampler=sampler)


def test_bad_sizes_raise():
    with pytest.raises(ValueError, match="N must be an integer >= 1"):
        tiny_cells(sizes=(0, 4))


def test_training_sets_are_disjoint_and_seeded():
    dist = datasets_synth.get("disks", size=16)
    s1, s2, rest = ms.training_sets(dist, 5, seed=3)
    assert s1.shape == s2.shape == (5, 1, 16, 16) and len(rest) == 0
    assert torch.cdist(s1.flatten(1).double(), s2.flatten(1).double()).min() > 0.1
    again = ms.training_sets(dist, 5, seed=3)
    assert torch.equal(s1, again[0]) and torch.equal(s2, again[1])
    assert torch.equal(torch.cat([s1, s2]), dist.sample(10, derived_seed(3, 31)))
    faces = datasets_synth.get("faces", split="test")
    f1, f2, frest = ms.training_sets(faces, 40, seed=0)
    pool = faces.train_images()
    assert len(f1) == len(f2) == 40 and len(frest) == 0
    same = (f1.flatten(1)[:, None] == f2.flatten(1)[None]).all(-1)
    assert not same.any()  # no shared image
    # together they are exactly the training split, each image once
    match = (torch.cat([f1, f2]).flatten(1)[:, None] == pool.flatten(1)[None]).all(-1)
    assert (match.sum(0) == 1).all() and (match.sum(1) == 1).all()
    with pytest.raises(ValueError, match="N must be <= 40"):
        ms.training_sets(faces, 41, seed=0)


def test_held_out_uses_the_test_split():
    train_faces = datasets_synth.get("faces", split="train")
    held = ms.held_out(train_faces, "faces", {"split": "train"}, torch.zeros(0, 1, 25, 25))
    assert held.params["split"] == "test" and held.num_images == 20


def test_single_image_copy_criterion():
    """N = 1: an exact and a scaled copy are memorized, a different image is not; d1/d2 is
    undefined (the old criterion borrowed d2 from held-out images)."""
    dist = datasets_synth.get("disks", size=16)
    held = dist.sample(64, seed=5)
    x1 = dist.sample(1, seed=6)
    ref = ms.reference_direction(held)
    samples = torch.cat([x1, 0.7 * x1, held[:1]])
    frame = ms._measures(samples, x1, None, ref)
    assert frame["memorized"].tolist() == [True, True, False]
    assert frame["cos_nn"].iloc[2] > 0.9  # raw cosine of two different disks images
    assert frame["ratio"].isna().all() and frame["ratio_unit"].isna().all()
    assert not frame["memorized_ratio"].any()


def test_sweep_results(sweep):
    root, records = sweep
    for record in records:
        res = record["result"]
        assert "failed" not in res and not record["cached"]
        assert set(res["summary"]) == {"s1", "s2", "empirical"}
        for i in (1, 2):  # each network's held-out error during training and its flag
            assert res[f"monitor_s{i}"]["sigma"] == [0.2]
            assert res[f"monitor_s{i}"]["step"][-1] == 30  # after the last of 30 steps
            assert res[f"converged_s{i}"] == converged(res[f"monitor_s{i}"])
        assert all(len(v["cos_nn"]) == K for v in res["per_sample"].values())
        # the empirical denoiser of S1 with a tiny σ_min reproduces training images
        emp = res["summary"]["empirical"]
        assert emp["memorized_fraction"] == 1.0 and emp["median_cos_nn"] > 0.9999
        assert emp["median_copy_cos"] > 0.999 and res["copy_threshold"] == 0.2
        assert "held-out" in res["centring"] and "of the others" in res["centring"]
        # baseline: the cell's real held-out images against S1 are not copies, each centred
        # on the mean of the other held-out images
        base = res["baseline"]
        inputs = ms.cell_inputs(record["spec"])
        own = memorization_measures(inputs.held, inputs.s1,
                                    reference=leave_one_out_references(inputs.held))
        np.testing.assert_array_equal(base["per_sample"]["copy_cos"], own["copy_cos"])
        assert base["summary"]["n"] == 16 and len(base["per_sample"]["copy_cos"]) == 16
        assert base["summary"]["memorized_fraction"] == 0.0
        assert base["summary"]["median_copy_cos"] < 0.9
        # disks can tell their own images: real held-out ones are, clean and at σ_last
        assert res["manifold"] == {"sigma_last": SAMPLER["sigma_min"], "factor": 2.0}
        assert base["manifold"]["clean"]["on_manifold_fraction"] == 1.0
        assert base["manifold"]["noisy"]["on_manifold_fraction"] == 1.0
        for role in ("s1", "s2", "empirical"):
            residuals = np.array(res["per_sample"][role]["manifold_residual"])
            shapes = np.array(res["per_sample"][role]["manifold_shape"])
            tolerance = 2.0 * SAMPLER["sigma_min"] ** 2
            assert res["summary"][role]["on_manifold_fraction"] == pytest.approx(
                float(np.mean((residuals <= tolerance) & (shapes > tolerance))))
            assert res["summary"][role]["flat_fraction"] == pytest.approx(
                float(np.mean(shapes <= tolerance)))
        # the empirical denoiser's samples are training images: disks
        assert res["summary"]["empirical"]["on_manifold_fraction"] == 1.0
        # the trace: one fraction per level of the sampler's grid but the last, for both
        # networks and for the held-out images with that noise, which are disks
        trace = res["trace"]
        assert trace["sigma"] == pytest.approx(sigma_grid(2.0, 1e-3, 10)[:-1].tolist())
        assert len(trace["s1"]) == len(trace["s2"]) == len(trace["sigma"])
        assert all(0.0 <= f <= 1.0 for f in trace["s1"] + trace["s2"])
        assert trace["held"] == [1.0] * len(trace["sigma"])
        # cross similarity pairs the two networks' samples drawn from the same noise
        ex = {k: torch.tensor(v) for k, v in res["examples"].items()}
        assert ex["s1"].shape == (6, 1, 16, 16)
        assert cosine(ex["s1"], ex["s2"]).numpy() == pytest.approx(
            res["per_sample"]["s1"]["cross_cos"][:6], abs=1e-3)
        assert res["per_sample"]["s1"]["cross_cos"] == pytest.approx(
            res["per_sample"]["s2"]["cross_cos"])
        # the stored test curve is the checkpoint's curve on the reference cells' images
        key = record["key"]
        net = NetworkDenoiser.load(Cache(root).artifact_path(key, "-s1.pt"))
        assert (Cache(root).artifact_path(key, "-s2.pt")).exists()
        dist = datasets_synth.get("disks", size=16)
        curve = mse_curve(net, dist, record["spec"]["sigmas"], n=16, seed=0)
        assert curve["mse"].tolist() == pytest.approx(res["mse_test"]["mse"], rel=1e-6)
        # the train curve and the S2 network's on the same S1 images and noise
        spec = record["spec"]
        s1 = ms.cell_inputs(spec).s1
        other = NetworkDenoiser.load(Cache(root).artifact_path(key, "-s2.pt"))
        for den, name in ((net, "mse_train"), (other, "mse_cross")):
            again = training_curve(den, s1, spec["sigmas"], spec["seed"], n=spec["n_eval"])
            assert again["mse"].tolist() == pytest.approx(res[name]["mse"], rel=1e-6), name
        assert res["mse_cross"]["mse"] != res["mse_train"]["mse"]
    one, four = records[0]["result"], records[1]["result"]
    # the posterior mean, sampled at the largest N only, stays on the family all the way
    assert "posterior_samples" not in one and "posterior" not in one["trace"]
    assert four["trace"]["posterior"] == [1.0] * len(four["trace"]["sigma"])
    post = four["posterior_samples"]
    assert post["on_manifold_fraction"] + post["flat_fraction"] == 1.0
    assert (post["denoiser"], post["kind"]) == ("posterior", "upper")
    assert one["summary"]["s1"]["memorized_ratio_fraction"] is None  # no d2 at N = 1
    assert one["summary"]["s1"]["memorized_unit_fraction"] is None
    assert four["summary"]["s1"]["memorized_ratio_fraction"] is not None
    assert json.loads(json.dumps(one)) == one  # the record is plain JSON, as stored


def test_recomputing_gives_identical_numbers(sweep, tmp_path):
    _, records = sweep
    spec = records[1]["spec"]
    again = ms.compute_memorization(spec, Cache(tmp_path), "k")
    first = {k: v for k, v in records[1]["result"].items() if k != "seconds"}
    assert json.dumps({k: v for k, v in again.items() if k != "seconds"},
                      sort_keys=True) == json.dumps(first, sort_keys=True)


def test_cached_call_computes_nothing(sweep, monkeypatch):
    root, records = sweep

    def boom(*args, **kwargs):
        raise AssertionError("recomputed a cached cell")

    monkeypatch.setattr(ms, "compute_memorization", boom)
    again = run_cell(records[0]["spec"], root)
    assert again["cached"] and again["result"] == records[0]["result"]


def test_divergence_is_recorded(monkeypatch, tmp_path):
    spec = tiny_cells(sizes=(4,))[0]

    def diverge(*args, **kwargs):
        raise TrainingDiverged("training loss is nan at step 3")

    monkeypatch.setattr(ms, "train", diverge)
    res = ms.compute_memorization(spec, Cache(tmp_path), "k")
    assert "loss is nan" in res["failed"] and "summary" not in res

    def blow_up(*args, **kwargs):
        raise SamplingDiverged("heun sampler diverged", [0], 2, None)

    monkeypatch.undo()
    monkeypatch.setattr(ms, "sample", blow_up)
    res = ms.compute_memorization(spec, Cache(tmp_path), "k")
    assert "sampler diverged" in res["failed"] and "mse_test" in res


def test_section_writes_table_figures_and_csv(sweep, tmp_path):
    _, records = sweep
    lines, returned = memorization_section(records, tmp_path)
    text = "\n".join(lines)
    assert "### disks" in text and "| N | memorized S1 net [95% CI]" in text
    assert "Memorization at N = 1" in text and "At every N ≤ 10" in text
    assert "largest N reached, N = 4" in text
    assert "t = 0.2" in text and "0.98" in text and "memorized held-out (baseline)" in text
    table = pd.read_csv(tmp_path / "memorization.csv")
    assert table["N"].tolist() == [1, 4] and (table["mem emp"] == 1.0).all()
    assert returned["mem S1"].tolist() == table["mem S1"].tolist()  # the CSV's table
    # a baseline per N, and the headline fraction is defined at N = 1
    assert (table["mem held"] == 0.0).all() and table["cos_c held"].notna().all()
    assert table["mem S1"].notna().all() and math.isnan(table["memr S1"].iloc[0])
    # Wilson intervals: not a point at a fraction of 0 or 1 (the empirical denoiser's 1)
    k = records[0]["spec"]["n_samples"]
    assert (table["mem emp lo"] < 1).all() and (table["mem emp hi"] == 1.0).all()
    assert table["mem emp lo"].iloc[0] == pytest.approx(k / (k + 1.96**2), rel=1e-3)
    assert "Wilson 95% intervals" in text
    for name in ("mem-disks-vs-n.png", "mem-disks-hist.png", "mem-disks-n1.png",
                 "mem-disks-n4.png", "memorization_mse.csv", "mem-disks-trace.png"):
        assert (tmp_path / name).stat().st_size > 0
    # the trace's CSV and the sentences on the posterior's ceiling and the way down
    trace = pd.read_csv(tmp_path / "memorization_trace.csv")
    assert set(trace["series"]) == {"s1", "s2", "held", "posterior"}
    assert set(trace.loc[trace["series"] == "posterior", "N"]) == {4}
    assert "For reference, the family's posterior mean (`posterior`)" in text
    assert "Along the sampler's way down" in text and "The **trace** follows" in text
    assert table["on post"].isna().tolist() == [True, False]
    assert memorization_section([], tmp_path) == ([], None)
    # a report without a sweep leaves no earlier report's sweep tables in its folder
    assert not any((tmp_path / name).exists() for name in
                   ("memorization.csv", "memorization_mse.csv", "memorization_trace.csv"))


def test_a_diverging_posterior_leaves_the_networks_results(monkeypatch, tmp_path):
    """The posterior mean's sampler is a reference: its divergence is recorded beside the
    networks' measures, which stand."""
    spec = tiny_cells()[1]
    assert spec["posterior_samples"]

    class Broken(torch.nn.Module):
        kind = "upper"

        def forward(self, y, sigma):
            return y * float("inf")

    monkeypatch.setattr(ms, "posterior_mean", lambda dist: ("posterior", Broken().eval()))
    res = ms.compute_memorization(spec, Cache(tmp_path), "k")
    assert "failed" not in res and "summary" in res and "posterior" not in res["trace"]
    post = res["posterior_samples"]
    assert post["denoiser"] == "posterior" and "diverged" in post["failed"]
    lines = "\n".join(memorization_section([{"spec": spec, "result": res}], tmp_path)[0])
    assert "For reference" not in lines  # no fraction to quote


def test_section_reads_old_records(sweep, tmp_path):
    """Records cached before the copy criterion: no crash, no mislabelled fraction."""
    _, records = sweep
    old = json.loads(json.dumps(records))
    for r in old:
        r["result"].pop("baseline")
        r["result"].pop("trace")
        r["result"].pop("posterior_samples", None)
        for s in r["result"]["summary"].values():
            for key in [k for k in s if "copy" in k or "ratio_fraction" in k]:
                s.pop(key)
        for p in r["result"]["per_sample"].values():
            for key in [k for k in p if "copy" in k]:
                p.pop(key)
    text = "\n".join(memorization_section(old, tmp_path)[0])
    assert "The **trace**" not in text and "For reference" not in text
    table = pd.read_csv(tmp_path / "memorization.csv")
    assert table["mem S1"].isna().all() and table["memr S1"].notna().all()


def _row(n, mem, cos, cross, test=0.001):
    return {"N": n, "mem S1": mem, "mem S2": mem, "cos_nn S1": cos, "cos_nn S2": cos,
            "cos_c S1": cos, "cos_c S2": cos, "cross": cross, "cross_cc": cross,
            "mem held": 0.0, "cos_c held": 0.5, "mem emp": 1.0, "test mse": test,
            "sigma_mid": 0.2, "failed": ""}


def test_verdict_states_both_criteria():
    good = verdict(pd.DataFrame([_row(1, 1.0, 0.99, 0.5), _row(10, 0.95, 0.97, 0.6),
                                 _row(1000, 0.0, 0.8, 0.9)]))
    assert good.count("**met**") == 3 and "Caveat" not in good  # N = 1, N ≤ 10, largest N
    bad = verdict(pd.DataFrame([_row(1, 0.5, 0.99, 0.5), _row(100, 0.0, 0.8, 0.7)]))
    assert bad.count("**not met**") == 3 and "N = 100" in bad and "rising at every step" in bad
    # the target (N = 1) and the talk's regime (N ≤ 10) are stated apart
    split = verdict(pd.DataFrame([_row(1, 1.0, 0.99, 0.5), _row(10, 0.0, 0.85, 0.7),
                                  _row(100, 0.0, 0.8, 0.83), _row(1000, 0.0, 0.8, 0.76)]))
    assert "Memorization at N = 1 (≥ 90% of both networks' samples copies" in split
    assert "**met** (100%)" in split and "At every N ≤ 10, the talk's memorization regime " \
        "(the same criterion): **not met**" in split
    assert "not monotone (up from first to last)" in split  # −0.49, −0.15, +0.03, −0.04
    # neither network is singled out: S2's samples nearer its own training set than to S1's
    lopsided = {**_row(1000, 0.0, 0.8, 0.85), "cos_c S2": 0.9}
    assert not generalizes(lopsided) and generalizes({**lopsided, "cos_c S2": 0.84})
    assert not generalizes({**lopsided, "cos_c S2": math.nan})  # a cosine missing: not met
    assert "0.850 against 0.800 / 0.900 to their nearest training image" in verdict(
        pd.DataFrame([lopsided]))
    # agreeing networks that do not denoise: flagged
    flat = verdict(pd.DataFrame([_row(100, 0.0, 0.3, 0.95, test=math.inf)]))
    assert "Caveat" in flat


def test_verdict_reads_the_lower_network_and_a_missing_one_as_not_met():
    one = {**_row(1, 1.0, 0.99, 0.5), "mem S2": 0.8, "cos_c S2": 0.95}
    text = verdict(pd.DataFrame([one, _row(1000, 0.0, 0.8, 0.9)]))
    assert "Memorization at N = 1 (" in text and "**not met** (80%)" in text
    assert "N = 1: 80% memorized (held-out images: 0%), median centred cosine 0.950" in text
    for missing in ({"mem S2": math.nan}, {"mem S1": math.nan}):  # either order
        text = verdict(pd.DataFrame([{**_row(1, 1.0, 0.99, 0.5), **missing}]))
        assert "Memorization at N = 1 (" in text and "**not met** (—)" in text


def _family(on_s1, on_s2):
    """A largest-N row with the images-of-the-family measures (held-out clean and noisy
    apart, to tell them apart in the text)."""
    return {**_row(1000, 0.0, 0.8, 0.9), "K": 64, "n held": 20, "on S1": on_s1, "on S2": on_s2,
            "sigma_last": 0.01, "on held": 0.83, "on held noisy": 0.81, "flat S1": 0.1,
            "flat S2": 0.2, "flat held": 0.17}


def test_verdict_on_images_of_the_family_needs_both_networks():
    met = verdict(pd.DataFrame([_family(0.9, 0.85)]))
    assert "90% of S1 and 85% of S2 samples (real held-out images: 83% clean, 81% at " \
        "σ_last); ≥ 80% for both networks: **met**" in met
    assert "Memorized: 0% of the 64 S1 samples against 0% of the 20 real held-out" in met
    for on_s1, on_s2 in ((0.9, 0.5), (0.5, 0.9), (0.9, math.nan)):
        text = verdict(pd.DataFrame([_family(on_s1, on_s2)]))
        assert "≥ 80% for both networks: **not met**" in text


def test_training_section_lists_every_network(sweep, tmp_path):
    """The sweep's two networks per cell get rows, flags and a figure beside the main
    study's networks; a side study's unconverged network is named under its study."""
    _, records = sweep
    falling = {"step": [0, 80, 100], "sigma": [0.1], "mse": [[1.0, 0.5, 0.3]]}
    flat = {"step": [0, 80, 100], "sigma": [0.1], "mse": [[1.0, 0.5, 0.5]]}
    train_cfg = {"mode": "universal", "steps": 100, "sigma": 0.1}

    def network(study, k, monitor):
        spec = {"kind": "network", "dataset": "ellipses", "params": {"k": k}, "train": train_cfg}
        return {"spec": {**spec, "study": study} if study else spec,
                "result": {"monitor": monitor, "converged": converged(monitor)}}

    lines, rows = training_section([network(None, 1, flat), network("dimension", 2, falling),
                                    *records], tmp_path)
    frame = pd.DataFrame(rows)
    assert frame.study.tolist() == ["main", "dimension"] + ["memorization"] * 4
    assert frame.entry.tolist()[2:4] == ["disks N=1 S1", "disks N=1 S2"]
    text = "\n".join(lines)
    assert "- main: not converged: 0 of 1 networks." in text
    assert "- dimension: not converged: 1 of 1 networks (ellipses(k=2) universal)." in text
    assert "- memorization: not converged: " in text
    assert (tmp_path / "training_memorization-sweep-disks.png").exists()
    assert (tmp_path / "training_dimension-study.png").exists()


def test_summary_row_keeps_the_held_out_measures_apart():
    """Clean and noisy held-out images, their count and copy interval, each in its column."""
    record = {"spec": {"dataset": "disks", "params": {}, "N": 10, "n_samples": 64,
                       "sigmas": [0.01, 0.1, 1.0]},
              "result": {"baseline": {
                  "summary": {"memorized_fraction": 0.05, "memorized_ci_wilson": [0.01, 0.2],
                              "n": 20, "median_copy_cos": 0.7, "median_cos_nn": 0.9},
                  "manifold": {"clean": {"on_manifold_fraction": 0.83, "flat_fraction": 0.17},
                               "noisy": {"on_manifold_fraction": 0.81}}}}}
    row = summary_row(record)
    assert (row["on held"], row["on held noisy"], row["flat held"]) == (0.83, 0.81, 0.17)
    assert (row["mem held"], row["mem held lo"], row["mem held hi"], row["n held"]) == (
        0.05, 0.01, 0.2, 20)
    assert row["K"] == 64 and math.isnan(row["mem S1"]) and math.isnan(row["on S1"])

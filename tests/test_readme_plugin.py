"""The README's worked plugin (a family with an exact MMSE, an oracle and a sampler, on
public names only) runs verbatim, and ``run_all.py --plugin`` studies it end to end: its
bracket, manifold row and Jacobian reference reach the report with no harness edit."""

import re
import sys
from pathlib import Path

import pandas as pd
import pytest

import datasets_synth
from datasets_synth import registry
from theorybench.cli import main
from theorybench.evaluation import mse_curve, paired_difference

README = Path(__file__).resolve().parents[1] / "README.md"


def plugin_source() -> str:
    found = re.search(r"A worked plugin:.*?```python\n(.*?)```", README.read_text(), re.S)
    assert found, "README lost its worked plugin"
    return found.group(1)


@pytest.fixture(scope="module")
def plugin_module(tmp_path_factory):
    """The README block as an importable module ``edges_plugin``."""
    folder = tmp_path_factory.mktemp("plugin")
    (folder / "edges_plugin.py").write_text(plugin_source())
    sys.path.insert(0, str(folder))
    yield "edges_plugin"
    sys.path.remove(str(folder))
    sys.modules.pop("edges_plugin", None)
    registry._REGISTERED.pop("edges", None)  # no plugin left for the other tests


def test_plugin_is_short_public_and_conforms(plugin_module):
    source = plugin_source()
    assert len(source.strip().splitlines()) <= 40
    assert not re.search(r"import .*\b_[a-z]", source)  # public names only
    namespace = {}
    exec(compile(source, "edges_plugin.py", "exec"), namespace)
    dist = datasets_synth.get("edges", size=12)
    datasets_synth.check_distribution(dist)
    refs = dist.reference_denoisers()
    assert {name: den.kind for name, den in refs.items()} == {
        "quadrature": "exact", "oracle-edge": "lower", "posterior": "upper"}
    sigmas = [0.01, 0.1]
    exact, upper = (mse_curve(refs[n], dist, sigmas, n=16, seed=0)
                    for n in ("quadrature", "posterior"))
    lower = mse_curve(refs["oracle-edge"], dist, sigmas, n=16, seed=0)
    assert (lower["mse"] <= exact["mse"]).all()  # an oracle beats the MMSE
    gap = paired_difference(exact, upper)  # the sampler agrees with the quadrature
    assert (gap["diff"].abs() <= 3 * gap["se"] + 1e-12).all()


def test_run_all_with_the_plugin(plugin_module, tmp_path):
    out, cache = tmp_path / "reports", tmp_path / "cache"
    args = ["--preset", "smoke", "--plugin", plugin_module, "--datasets", "edges", "--out",
            str(out), "--cache", str(cache), "--quiet"]
    assert main(args) == 0
    readme = (out / "README.md").read_text()
    assert "## edges" in readme and "MMSE reference: exact" in readme
    rates = pd.read_csv(out / "rates.csv")
    manifold = rates[(rates.table == "manifold") & (rates.entry == "edges")]
    assert len(manifold) and (manifold.theory == 3).all()
    jacobian = pd.read_csv(out / "jacobian.csv")
    reference = jacobian[jacobian.denoiser.str.startswith("reference")]
    assert len(reference) and reference["tangent_max_angle_deg"].notna().all()
    mse = pd.read_csv(out / "mse.csv")
    assert (mse.entry == "edges").all()


def test_bad_plugin_is_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--plugin", "no_such_module_here", "--out", str(tmp_path)])
    assert exc.value.code == 2
    assert "--plugin no_such_module_here: cannot import" in capsys.readouterr().err


def test_plugins_get_the_preset_size(plugin_module):
    from theorybench.cli import default_params, study_entries
    from theorybench.experiments.presets import PRESETS

    __import__(plugin_module)
    smoke = PRESETS["smoke"]
    assert default_params("edges", smoke) == {"size": smoke.size}
    assert ("edges", {"size": smoke.size}) in study_entries(smoke, None)

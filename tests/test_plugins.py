"""A third-party distribution found through the ``theorybench.distributions`` entry point."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import datasets_synth

ROOT = Path(__file__).resolve().parents[1]

PLUGIN = textwrap.dedent('''
    import torch
    from datasets_synth import Distribution
    from tbcore.validation import check_float

    class Stripes(Distribution):
        """Vertical stripes of random phase: a plugin written in a few lines."""
        name, value_range, intrinsic_dim = "stripes", (0.0, 1.0), 1

        def __init__(self, size=16, freq=2.0):
            super().__init__(size=size, freq=check_float("freq", freq, low=0.0, low_open=True))
            self.shape = (1, size, size)

        def _draw(self, generator, count):
            phase = torch.rand(count, 1, 1, 1, generator=generator) * 6.2832
            cols = torch.arange(self.shape[-1]).view(1, 1, 1, -1)
            omega = self.params["freq"] * 6.2832 / self.shape[-1]
            img = 0.5 + 0.5 * torch.sin(cols * omega + phase)
            return img.expand(-1, 1, self.shape[1], -1).contiguous(), {"phase": phase.flatten()}
''')


def install_plugin(target: Path) -> None:
    """Install a tiny plugin distribution into ``target`` (a sys.path entry): the package
    and its .dist-info with an entry_points.txt, as pip would lay them out."""
    (target / "tb_stripes").mkdir(parents=True)
    (target / "tb_stripes" / "__init__.py").write_text(PLUGIN)
    info = target / "tb_stripes-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: tb-stripes\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        "[theorybench.distributions]\nstripes = tb_stripes:Stripes\n"
        "broken = tb_stripes_missing:Factory\n")
    (info / "RECORD").write_text("")


@pytest.fixture
def plugin_path(tmp_path, monkeypatch):
    install_plugin(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    sys.modules.pop("tb_stripes", None)


def test_plugin_is_found_through_its_entry_point(plugin_path):
    assert "stripes" in datasets_synth.names()
    dist = datasets_synth.get("stripes", size=12, freq=3.0)
    datasets_synth.check_distribution(dist)
    assert dist.sample(4, seed=0).shape == (4, 1, 12, 12)
    with pytest.raises(ValueError, match="freq"):
        datasets_synth.get("stripes", freq=-1.0)


def test_broken_plugin_is_refused_with_its_name(plugin_path):
    with pytest.raises(ValueError, match="broken.*failed to import.*tb_stripes_missing"):
        datasets_synth.get("broken")


def test_plugin_appears_in_run_all_list(plugin_path):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(plugin_path), str(ROOT)]))
    out = subprocess.run([sys.executable, str(ROOT / "run_all.py"), "--list"], env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "stripes" in out.stdout and "1x16x16" in out.stdout


def test_register_in_process(monkeypatch):
    from datasets_synth.gaussian import GaussianField
    from datasets_synth.registry import _REGISTERED

    monkeypatch.setattr("datasets_synth.registry._REGISTERED", dict(_REGISTERED))
    datasets_synth.register("white", lambda **p: GaussianField(gamma=0.0, **p))
    assert "white" in datasets_synth.names()
    assert datasets_synth.get("white", size=8).params["gamma"] == 0.0
    with pytest.raises(ValueError, match="callable"):
        datasets_synth.register("bad", None)

"""Bad input is refused with a one-line message and leaves no file behind.

Command line: exit status 2, the last stderr line starts with ``run_all.py: error:``, and
the ``--out`` and ``--cache`` folders are neither created nor changed. API: ValueError
with a one-line message, and nothing written in the working directory. The command-line
cases run ``theorybench.cli.main`` in-process (argparse exits exactly as the script
does); two of them also go through ``python run_all.py`` in a subprocess.
"""

import math
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import datasets_synth
from theorybench.cli import main

ROOT = Path(__file__).resolve().parents[1]

# -- tiny broken plugins (one package, one entry point each) ---------------------------
PLUGINS = textwrap.dedent('''
    import torch
    from datasets_synth import Distribution
    from tbcore.validation import check_float

    class _Plain(Distribution):
        name, value_range = "plain", (0.0, 1.0)

        def __init__(self):
            super().__init__()
            self.shape = (1, 16, 16)

        def _draw(self, generator, count):
            return torch.rand(count, 1, 16, 16, generator=generator), {}

    class WrongShape(_Plain):
        def _draw(self, generator, count):
            return torch.rand(count, 1, 8, 8, generator=generator), {}

    class WrongDtype(_Plain):
        def _draw(self, generator, count):
            return torch.rand(count, 1, 16, 16, generator=generator).double(), {}

    class NanValues(_Plain):
        def _draw(self, generator, count):
            x = torch.rand(count, 1, 16, 16, generator=generator)
            x[:, :, 3, 3] = float("nan")
            return x, {}

    class OutOfRange(_Plain):
        def _draw(self, generator, count):
            return 2.0 + torch.rand(count, 1, 16, 16, generator=generator), {}

    class GlobalRandom(_Plain):
        def _draw(self, generator, count):
            return torch.rand(count, 1, 16, 16), {}

    class BadDefault(_Plain):
        def __init__(self, alpha=-1.0):
            check_float("alpha", alpha, low=0.0, low_open=True)
            super().__init__()

    class NoSuperInit(_Plain):
        def __init__(self):  # forgets super().__init__(**params): no self.params
            self.shape = (1, 16, 16)

    class TensorLatents(_Plain):
        def _draw(self, generator, count):
            return torch.rand(count, 1, 16, 16, generator=generator), torch.zeros(count)

    def not_a_distribution(**params):
        return [1, 2, 3]
''')
ENTRY_POINTS = {
    "wrong-shape": "WrongShape", "wrong-dtype": "WrongDtype", "nan-values": "NanValues",
    "out-of-range": "OutOfRange", "global-random": "GlobalRandom", "bad-default": "BadDefault",
    "not-a-distribution": "not_a_distribution", "no-super-init": "NoSuperInit",
    "tensor-latents": "TensorLatents",
}


def install_plugins(target: Path) -> None:
    """The package ``tb_bad`` and its dist-info, as pip lays them out, under ``target``."""
    (target / "tb_bad").mkdir(parents=True)
    (target / "tb_bad" / "__init__.py").write_text(PLUGINS)
    info = target / "tb_bad-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: tb-bad\nVersion: 0.1\n")
    lines = [f"{name} = tb_bad:{attr}" for name, attr in ENTRY_POINTS.items()]
    lines.append("missing-module = tb_bad_not_installed:Factory")
    (info / "entry_points.txt").write_text("[theorybench.distributions]\n" + "\n".join(lines)
                                           + "\n")
    (info / "RECORD").write_text("")


@pytest.fixture(scope="module")
def plugin_dir(tmp_path_factory):
    target = tmp_path_factory.mktemp("bad_plugins")
    install_plugins(target)
    return target


@pytest.fixture
def plugins(plugin_dir, monkeypatch):
    monkeypatch.syspath_prepend(str(plugin_dir))
    yield plugin_dir
    sys.modules.pop("tb_bad", None)


def snapshot(folder: Path) -> dict:
    """Every path under ``folder``: files with their size and modification time."""
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
            if p.is_file() else "folder" for p in folder.rglob("*")}


# -- command line ---------------------------------------------------------------------
# (id, arguments ({out}, {cache}, {file} are replaced), regex the message must match)
CLI_CASES = [
    ("unknown-preset", ["--preset", "huge"], "invalid choice: 'huge'"),
    ("unknown-distribution", ["--datasets", "nope"], "unknown distribution 'nope'.*gaussian"),
    ("empty-dataset-list", ["--datasets", " , "], "at least one name"),
    ("negative-seed", ["--seed", "-1"], r"--seed must be an integer in \[0, 4294967295\]"),
    ("seed-beyond-32-bits", ["--seed", str(2**32)], r"seed must be .*got 4294967296"),
    ("non-integer-seed", ["--seed", "1.5"], "invalid int value"),
    ("unknown-device", ["--device", "tpu:9"], "device must be"),
    ("unknown-executor", ["--executor", "spark"], "invalid choice: 'spark'"),
    ("unknown-option", ["--sigma", "0.1"], "unrecognized arguments"),
    ("override-list-as-number", ["--override", "sigmas=5"], "sigmas must be a list"),
    ("override-dict-as-string", ["--override", 'net="foo"'], "net must be an object"),
    ("override-bool-as-string", ["--override", 'warm_start="no"'],
     "warm_start must be a boolean"),
    ("jobs-with-ray", ["--executor", "ray", "--jobs", "3"], "--jobs is for --executor local"),
    ("report-only-no-cache", ["--report-only", "--datasets", "gaussian"], "--report-only"),
    ("cache-not-writable", ["--cache", "{file}/cache"], "cannot be written"),
    ("faces-folder-without-path", ["--datasets", "faces-folder"], "needs path"),
    ("ray-address-without-ray", ["--ray-address", "127.0.0.1:6379"], "ray-address"),
    ("plugin-wrong-shape", ["--datasets", "wrong-shape"], "shape"),
    ("plugin-wrong-dtype", ["--datasets", "wrong-dtype"], "float32"),
    ("plugin-nan-values", ["--datasets", "nan-values"], "NaN"),
    ("plugin-out-of-range", ["--datasets", "out-of-range"], "value_range"),
    ("plugin-global-random-state", ["--datasets", "global-random"], "global torch random"),
    ("plugin-bad-default", ["--datasets", "bad-default"], "alpha must be"),
    ("plugin-not-a-distribution", ["--datasets", "not-a-distribution"], "not a Distribution"),
    ("plugin-fails-to-import", ["--datasets", "missing-module"],
     "failed to import.*tb_bad_not_installed"),
    ("plugin-without-super-init", ["--datasets", "no-super-init"],
     "'no-super-init' breaks the Distribution contract .AttributeError.*must call "
     r"super\(\).__init__\(\*\*params\)"),
    ("plugin-tensor-latents", ["--datasets", "tensor-latents"],
     "'tensor-latents' breaks the Distribution contract .*latents a dict"),
    ("override-string-unquoted", ["--override", "precision=fp32"],
     "is not JSON .*a string is quoted, e.g. --override 'precision=\"fp32\"'"),
    ("out-is-a-file", ["--out", "{file}"], "--out .*file is a file; give a folder"),
    ("out-under-a-file", ["--out", "{file}/out"], "--out .*file/out: .*file is a file"),
]
if not torch.cuda.is_available():
    CLI_CASES.append(("cuda-unavailable", ["--device", "cuda"], "CUDA is not available"))


def expect_usage_error(argv, capsys, match: str) -> str:
    """Run ``main(argv)``: exit status 2, one-line message matching ``match``."""
    with pytest.raises(SystemExit) as info:
        main(argv)
    err = capsys.readouterr().err
    assert info.value.code == 2, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("run_all.py: error:"), err
    assert "Traceback" not in err
    assert re.search(match, last), last
    return last


@pytest.mark.parametrize("case", CLI_CASES, ids=[c[0] for c in CLI_CASES])
def test_command_line_refuses(case, tmp_path, capsys, monkeypatch, request):
    name, args, match = case
    if name.startswith("plugin-"):
        request.getfixturevalue("plugins")  # only these runs see the broken plugins
    work = tmp_path / "work"
    work.mkdir()
    (work / "file").write_text("a regular file")
    monkeypatch.chdir(work)
    before = snapshot(work)
    out, cache = work / "out", work / "cache"
    args = [a.format(out=out, cache=cache, file=work / "file") for a in args]
    defaults = ["--preset", "smoke", "--out", str(out), "--cache", str(cache), "--quiet"]
    expect_usage_error(defaults + args, capsys, match)
    assert not out.exists() and not cache.exists()
    assert snapshot(work) == before


def test_list_names_a_family_that_breaks_the_contract(plugins, capsys):
    assert main(["--list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    broken = [line for line in lines if line.startswith("no-super-init")]
    assert broken and "(breaks the Distribution contract: AttributeError:" in broken[0]
    assert any(line.startswith("gaussian") for line in lines)  # the others still listed


def test_written_files_get_the_mode_of_a_plain_open(tmp_path):
    """Reports and cache records are shared: not mkstemp's private 0600."""
    from theorybench.cache import atomic_write_bytes

    mask = os.umask(0o022)
    os.umask(mask)
    atomic_write_bytes(tmp_path / "a.json", b"{}")
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o666 & ~mask
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]  # no temporary left


def test_report_only_with_an_empty_cache_changes_nothing(tmp_path, capsys):
    cache, out = tmp_path / "cache", tmp_path / "out"
    cache.mkdir()
    before = snapshot(tmp_path)
    expect_usage_error(["--preset", "smoke", "--report-only", "--cache", str(cache), "--out",
                        str(out), "--quiet"], capsys, "nothing stored")
    assert snapshot(tmp_path) == before


def test_executor_ray_without_ray_names_the_extra(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError
    out, cache = tmp_path / "out", tmp_path / "cache"
    last = expect_usage_error(["--preset", "smoke", "--datasets", "gaussian", "--executor", "ray",
                               "--out", str(out), "--cache", str(cache), "--quiet"], capsys,
                              r"needs Ray.*theorybench\[ray\]")
    assert "pip install" in last
    assert not out.exists() and not cache.exists()


def test_malformed_ray_address(tmp_path, capsys):
    pytest.importorskip("ray")
    out, cache = tmp_path / "out", tmp_path / "cache"
    expect_usage_error(["--preset", "smoke", "--executor", "ray", "--ray-address",
                        "not an address", "--out", str(out), "--cache", str(cache)], capsys,
                       "--ray-address must be")
    assert not out.exists() and not cache.exists()


@pytest.mark.parametrize("args", [["--datasets", "nope"], ["--datasets", "wrong-shape"]],
                         ids=["unknown-distribution", "plugin-wrong-shape"])
def test_the_script_itself_exits_2(args, tmp_path, plugin_dir):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(plugin_dir), str(ROOT)]))
    out, cache = tmp_path / "out", tmp_path / "cache"
    proc = subprocess.run([sys.executable, str(ROOT / "run_all.py"), "--preset", "smoke", *args,
                           "--out", str(out), "--cache", str(cache), "--quiet"], env=env,
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("run_all.py: error:")
    assert "Traceback" not in proc.stderr
    assert not out.exists() and not cache.exists()


# -- API ------------------------------------------------------------------------------
def _identity():
    from theorybench.denoisers import Identity

    return Identity()


def _mse(sigmas, dist=("gaussian", {"size": 8}), n=4):
    from theorybench import mse_curve

    return lambda ctx: mse_curve(_identity(), datasets_synth.get(dist[0], **dist[1]), sigmas,
                                 n=n, seed=0)


def _checkpoint(ctx, edit):
    """Save a tiny network, apply ``edit`` to its payload, save that, then load it."""
    from theorybench.denoisers.network import NetworkDenoiser
    from theorybench.networks import NetConfig, build_network

    cfg = NetConfig(channels=4, depth=3)
    path = ctx["files"] / "net.pt"
    NetworkDenoiser(build_network(cfg), cfg).save(path)
    payload = torch.load(path, weights_only=True)
    edited = ctx["files"] / "edited.pt"
    if isinstance(edit, bytes):
        edited.write_bytes(edit)
    else:
        torch.save(edit(payload), edited)
    ctx["made"] |= {"net.pt", "edited.pt"}
    return NetworkDenoiser.load(edited)


def _more_channels(payload):
    payload["net_config"] = {**payload["net_config"], "channels": 8}
    return payload


def _deeper(payload):
    payload["net_config"] = {**payload["net_config"], "depth": 4}
    return payload


class _Code:
    """An object that pickles as a function call: what weights_only=True must refuse."""

    def __reduce__(self):
        return (os.getcwd, ())


def _with_code(payload):
    payload["meta"] = {"hook": _Code()}
    return payload


def _faces_folder(ctx, files=(), **params):
    folder = ctx["files"] / "images"
    folder.mkdir(exist_ok=True)
    for name in files:
        (folder / name).write_bytes(b"not really an image")
    ctx["made"] |= {"images", *(f"images/{name}" for name in files)}
    return datasets_synth.get("faces-folder", path=str(folder), **params)


def _one_image_folder(ctx):
    import numpy as np
    from skimage.io import imsave

    folder = ctx["files"] / "one"
    folder.mkdir()
    imsave(folder / "a.png", (np.arange(256).reshape(16, 16)).astype(np.uint8),
           check_contrast=False)
    ctx["made"] |= {"one", "one/a.png"}
    return datasets_synth.get("faces-folder", path=str(folder))


def _float_image_folder(ctx):
    import numpy as np
    from skimage.io import imsave

    folder = ctx["files"] / "float"
    folder.mkdir()
    for name in ("a.tif", "b.tif"):  # grey levels 0–255 stored as floats
        imsave(folder / name, np.arange(256, dtype=np.float32).reshape(16, 16),
               check_contrast=False)
    ctx["made"] |= {"float", "float/a.tif", "float/b.tif"}
    return datasets_synth.get("faces-folder", path=str(folder))


def test_faces_folder_reads_floating_point_files_in_0_1(tmp_path):
    import numpy as np
    from skimage.io import imsave

    from datasets_synth.faces import FLOAT_MARGIN

    ramp = np.linspace(-FLOAT_MARGIN / 2, 1 + FLOAT_MARGIN / 2, 256, dtype=np.float32)
    for name in ("a.tif", "b.tif"):  # within the margin: read, then clipped to [0, 1]
        imsave(tmp_path / name, ramp.reshape(16, 16), check_contrast=False)
    images = datasets_synth.get("faces-folder", path=str(tmp_path), size=16).train_images()
    assert float(images.min()) == 0.0 and float(images.max()) == 1.0
    assert float(images.std()) > 0.25  # the ramp, not a constant


def _run_cells(**options):
    from theorybench.executors import run_cells

    return lambda ctx: run_cells([], str(ctx["files"] / "cache"), **options)


def _gaussian_sample(**kw):
    return lambda ctx: datasets_synth.get("gaussian", size=8).sample(**kw)


def _train_config(**kw):
    from theorybench.train_config import TrainConfig

    return lambda ctx: TrainConfig(**kw)


def _net_config(**kw):
    from theorybench.networks import NetConfig

    return lambda ctx: NetConfig(**kw)


def _cache_below_a_file(ctx):
    from theorybench.cache import Cache

    blocker = ctx["files"] / "blocker"
    blocker.write_text("x")
    ctx["made"].add("blocker")
    return Cache(blocker / "cache")


def _denoise_with_sigma(sigma):
    return lambda ctx: _identity()(torch.zeros(2, 1, 8, 8), sigma)


# (id, callable(ctx), regex of the ValueError message)
API_CASES = [
    ("unknown-distribution", lambda ctx: datasets_synth.get("nope"), "unknown distribution"),
    ("unknown-parameter", lambda ctx: datasets_synth.get("gaussian", sigma=1.0),
     "bad parameters"),
    ("gaussian-std-zero", lambda ctx: datasets_synth.get("gaussian", std=0.0), "std"),
    ("gaussian-size-too-small", lambda ctx: datasets_synth.get("gaussian", size=4), "size"),
    ("sigma-zero", _mse([0.1, 0.0]), "sigmas must be finite and > 0"),
    ("sigma-negative", _mse([-0.5]), "sigmas must be finite and > 0"),
    ("sigma-infinite", _mse([math.inf]), "sigmas must be finite"),
    ("sigma-nan", _mse([math.nan]), "sigmas must be finite"),
    ("sigma-not-a-number", _mse(["a"]), "sigmas must be finite numbers"),
    ("sigma-grid-empty", _mse([]), "empty grid"),
    ("n-below-two", _mse([0.1], n=1), "n must be an integer >= 2"),
    ("n-larger-than-finite-data-set", _mse([0.1], ("faces", {"split": "test"}), n=21),
     "holds 20 images"),
    ("sample-more-than-finite-data-set",
     lambda ctx: datasets_synth.get("faces", split="test").sample(21, 0), "holds 20 images"),
    ("sample-negative-n", _gaussian_sample(n=-1, seed=0), "n must be an integer >= 0"),
    ("sample-negative-seed", _gaussian_sample(n=2, seed=-3), "seed must be"),
    ("denoiser-sigma-zero", _denoise_with_sigma(0.0), "sigma must be"),
    ("denoiser-sigma-nan", _denoise_with_sigma(math.nan), "sigma must be"),
    ("alpha-zero", lambda ctx: datasets_synth.get("calpha", alpha=0.0), "alpha must be"),
    ("alpha-negative", lambda ctx: datasets_synth.get("calpha", alpha=-2.0), "alpha must be"),
    ("alpha-infinite", lambda ctx: datasets_synth.get("calpha", alpha=math.inf),
     "alpha must be"),
    ("disks-radius-too-large", lambda ctx: datasets_synth.get("disks", size=16, r_max=9.0),
     "r_max"),
    ("disks-r-min-at-half-size", lambda ctx: datasets_synth.get("disks", size=8, r_min=4.0),
     r"r_min must be in \[.*, 4.0\) \(below size/2"),
    ("shuffled-of-shuffled", lambda ctx: datasets_synth.get("shuffled", base="shuffled"),
     "another distribution"),
    ("faces-split-unknown", lambda ctx: datasets_synth.get("faces", split="valid"), "split"),
    ("faces-folder-missing", lambda ctx: datasets_synth.get("faces-folder", path="/nowhere/x"),
     "existing folder"),
    ("faces-folder-empty", lambda ctx: _faces_folder(ctx), "holds no images"),
    ("faces-folder-no-image-files", lambda ctx: _faces_folder(ctx, ["notes.txt", "a.csv"]),
     "holds no images"),
    ("faces-folder-one-image", _one_image_folder, "at least 2 images"),
    ("faces-folder-float-0-255", _float_image_folder,
     r"'a.tif' holds floating-point values in \[0, 255\]; floating-point images must lie in"),
    ("checkpoint-config-mismatch", lambda ctx: _checkpoint(ctx, _more_channels),
     "do not fit the stored NetConfig"),
    ("checkpoint-depth-mismatch", lambda ctx: _checkpoint(ctx, _deeper),
     "do not fit the stored NetConfig"),
    ("checkpoint-with-code", lambda ctx: _checkpoint(ctx, _with_code), "checkpoint"),
    ("checkpoint-not-a-checkpoint", lambda ctx: _checkpoint(ctx, b"not a checkpoint"),
     "checkpoint"),
    ("checkpoint-wrong-format", lambda ctx: _checkpoint(ctx, lambda p: {"weights": 1}),
     "is not a theorybench.network/1 checkpoint"),
    ("cache-below-a-file", _cache_below_a_file, "cannot be written"),
    ("train-sigma-zero", _train_config(sigma=0.0), "sigma must be"),
    ("train-lr-nan", _train_config(lr=math.nan), "lr must be"),
    ("train-mode-unknown", _train_config(mode="fast"), "mode must be one of"),
    ("net-kernel-even", _net_config(kernel=4), "kernel must be an odd integer"),
    ("net-arch-unknown", _net_config(arch="resnet"), "arch must be one of"),
    ("executor-unknown", _run_cells(executor="spark"), "executor must be one of"),
    ("executor-threads-zero", _run_cells(threads=0), "threads must be an integer >= 1"),
    ("register-not-callable", lambda ctx: datasets_synth.register("x", None), "callable"),
]


@pytest.mark.parametrize("call, match", [c[1:] for c in API_CASES],
                         ids=[c[0] for c in API_CASES])
def test_api_refuses(call, match, tmp_path, monkeypatch):
    cwd, files = tmp_path / "cwd", tmp_path / "files"
    cwd.mkdir()
    files.mkdir()
    monkeypatch.chdir(cwd)
    ctx = {"files": files, "made": set()}
    with pytest.raises(ValueError, match=match) as info:
        call(ctx)
    message = str(info.value)
    assert message and "\n" not in message, message
    assert list(cwd.iterdir()) == []
    assert set(snapshot(files)) == ctx["made"]  # only what the case itself set up

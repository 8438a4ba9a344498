"""Packaging: `vjepa_scale.kernels` imports from a plain checkout and works without triton, and a built
wheel carries the kernels (never as a top-level `kernels`) and the recipes, working from a fresh venv
outside the checkout."""
import json
import os
import shutil
import site
import subprocess
import sys
import zipfile
from importlib.machinery import PathFinder
from pathlib import Path

import pytest

from helpers import ROOT, run
CLEAN_ENV = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}


def test_kernels_import_from_a_plain_checkout():
    # The normal path finder, given only the checkout root, finds vjepa_scale.kernels = the top-level kernels/.
    pkg = PathFinder.find_spec("vjepa_scale", [str(ROOT)])
    sub = PathFinder.find_spec("vjepa_scale.kernels", pkg.submodule_search_locations)
    assert sub is not None, "vjepa_scale/kernels is missing from the checkout"
    assert Path(sub.origin) == ROOT / "vjepa_scale" / "kernels" / "__init__.py"
    assert Path(sub.origin).resolve() == ROOT / "kernels" / "__init__.py"
    if (ROOT / ".git").exists():  # tracked as a relative symlink (git mode 120000), not a copy
        ls = subprocess.run(["git", "ls-files", "-s", "vjepa_scale/kernels"], cwd=ROOT, capture_output=True,
                            text=True, check=True).stdout
        assert ls.startswith("120000 "), ls
        assert os.readlink(ROOT / "vjepa_scale" / "kernels") == "../kernels"
    # A real import from the checkout root: no PYTHONPATH, and any editable-install finder removed.
    code = ("import sys; sys.meta_path[:] = [f for f in sys.meta_path "
            "if '__editable__' not in getattr(f, '__module__', '')]; "
            "import vjepa_scale, vjepa_scale.kernels as k; "
            "print(vjepa_scale.__file__); print(k.__file__); print(k.masked_gather.__module__)")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=CLEAN_ENV, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == [str(ROOT / "vjepa_scale" / "__init__.py"),
                                str(ROOT / "vjepa_scale" / "kernels" / "__init__.py"), "vjepa_scale.kernels.gather"]


def test_package_works_without_triton():
    """With `import triton` failing, the kernels import and run their torch paths."""
    code = ("import sys; sys.modules['triton'] = None\n"
            "import torch\n"
            "from vjepa_scale.kernels import masked_gather, ema_update_\n"
            "from vjepa_scale.kernels.backend import triton_available\n"
            "assert not triton_available()\n"
            "x = torch.randn(1, 4, 3)\n"
            "assert masked_gather(x, torch.tensor([1]), backend='auto').shape == (1, 3)\n"
            "s = [torch.zeros(2)]; ema_update_(s, [torch.ones(2)], s, 0.5)\n"
            "assert s[0].tolist() == [0.5, 0.5]\n"
            "assert 'vjepa_scale.kernels.gather_triton' not in sys.modules\n")
    proc = run([sys.executable, "-c", code], timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]


def _run(cmd, **kw):
    r = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=600, **kw)
    assert r.returncode == 0, f"{cmd}\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r.stdout


@pytest.mark.slow
def test_wheel_works_in_a_fresh_venv(tmp_path):
    # Build from a copy of the sources (the build writes build/ and *.egg-info next to setup.py).
    src = tmp_path / "src"
    src.mkdir()
    for name in ("setup.py", "README.md"):
        shutil.copy(ROOT / name, src / name)
    for name in ("configs", "kernels", "vjepa_scale"):
        shutil.copytree(ROOT / name, src / name, symlinks=True, ignore=shutil.ignore_patterns("__pycache__"))
    dist = tmp_path / "dist"
    env = dict(CLEAN_ENV, PIP_DISABLE_PIP_VERSION_CHECK="1")
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", dist, src],
         cwd=tmp_path, env=env)
    (wheel,) = dist.glob("vjepa_scale-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert not [n for n in names if n.startswith("kernels/")], "the wheel installs a top-level `kernels`"
    assert {n.split("/")[0] for n in names if not n.startswith("vjepa_scale-")} == {"vjepa_scale"}
    assert "vjepa_scale/kernels/gather_triton.py" in names
    recipes = sorted(p.name for p in (ROOT / "configs").glob("*.yaml"))
    assert sorted(n.split("/")[-1] for n in names if n.startswith("vjepa_scale/configs/")) == recipes

    # A fresh venv outside the checkout; its dependencies (torch, yaml, ...) come from this interpreter's
    # site-packages, appended after its own through a .pth file (no network).
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", venv])
    py = venv / "bin" / "python"
    purelib = Path(_run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], env=env).strip())
    (purelib / "dev_deps.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    _run([sys.executable, "-m", "pip", "--python", py, "install", "--no-deps", "--no-index", wheel], env=env)
    assert not (purelib / "kernels").exists()

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    code = """if True:
        import json, vjepa_scale, vjepa_scale.kernels as k
        from vjepa_scale.config import load_config, resolve_config_path
        cfg = load_config("vith384")
        print(json.dumps({"pkg": vjepa_scale.__file__, "kernels": k.__file__, "gather": k.masked_gather.__module__,
                          "recipe": str(resolve_config_path("vith384")), "cfg": cfg.to_dict(), "grid": cfg.grid}))
    """
    got = json.loads(_run([py, "-c", code], cwd=elsewhere, env=env).strip().splitlines()[-1])
    installed = purelib / "vjepa_scale"
    assert Path(got["pkg"]) == installed / "__init__.py"  # the installed copy, not the checkout
    assert Path(got["kernels"]) == installed / "kernels" / "__init__.py"
    assert got["gather"] == "vjepa_scale.kernels.gather"
    assert Path(got["recipe"]) == installed / "configs" / "vith384.yaml"
    from vjepa_scale.config import load_config

    assert got["cfg"] == load_config(ROOT / "configs" / "vith384.yaml").to_dict()
    assert got["cfg"]["model"]["size"] == "huge" and got["cfg"]["data"]["crop_size"] == 384
    assert tuple(got["grid"]) == (8, 24, 24)

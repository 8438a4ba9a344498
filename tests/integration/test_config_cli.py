"""Configs through fresh processes: tools/train.py refuses bad configs before any training work,
a checkout's recipes come before the packaged ones, and importing the config imports no model code."""
import shutil
import sys

import pytest

from helpers import ROOT, cpu_env, launch, run


def _cli(*args, world=1):
    return launch("tools/train.py", *args, env=cpu_env(WORLD_SIZE=str(world), RANK="0", LOCAL_RANK="0"), timeout=120)


@pytest.mark.parametrize("args,world,message", [
    (["--config", "cpu_demo.yaml", "--opt", "optim.warmpu=3"], 1, "did you mean 'optim.warmup'"),
    (["--config", "vith384.yaml"], 1, "data.datasets[0].path"),
    (["--config", "cpu_demo.yaml", "--opt", "data.global_batch_size=9"], 2, "data.global_batch_size=9 is not divisible"),
    (["--config", "cpu_demo.yaml", "--opt", "data.batch_size=2"], 1,
     "data.batch_size=2 and data.global_batch_size=8 disagree"),
    (["--config", "cpu_demo.yaml", "--resume", "/nonexistent/run"], 1, "--resume: '/nonexistent/run' does not exist"),
    # not available on a CPU; on CUDA cuDNN's kernels take no fp32
    (["--config", "cpu_demo.yaml", "--opt", "model.attention_backend=cudnn", "--opt", "train.precision=fp32"], 1,
     "model.attention_backend: 'cudnn'"),
    (["--config", "cpu_demo.yaml", "--opt", "data.datasets=[{path: x"], 1,
     "override 'data.datasets=[{path: x': the value '[{path: x' is not valid YAML"),
])
def test_cli_fails_before_training(tmp_path, args, world, message):
    out = tmp_path / "run"
    r = _cli(*args, "--output-dir", str(out), world=world)
    assert r.returncode == 2, r.stderr
    assert message in r.stderr
    assert not out.exists()  # nothing was started


def test_checkout_recipes_come_first(tmp_path):
    """A checkout whose package also holds recipes (vjepa_scale/configs/): the top-level configs/ wins."""
    repo = tmp_path / "repo"
    (repo / "configs").mkdir(parents=True)
    (repo / "vjepa_scale" / "configs").mkdir(parents=True)
    for f in ("__init__.py", "config.py"):
        shutil.copy(ROOT / "vjepa_scale" / f, repo / "vjepa_scale" / f)
    (repo / "setup.py").write_text("")
    (repo / "configs" / "both.yaml").write_text("")
    (repo / "vjepa_scale" / "configs" / "both.yaml").write_text("")
    (repo / "vjepa_scale" / "configs" / "packaged.yaml").write_text("")
    code = ("from vjepa_scale.config import resolve_config_path as r; "
            "print(r('both')); print(r('packaged.yaml'))")
    out = run([sys.executable, "-c", code], cpu_env(PYTHONPATH=None), cwd=repo, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [str(repo / "configs" / "both.yaml"),
                                  str(repo / "vjepa_scale" / "configs" / "packaged.yaml")]


def test_config_imports_no_model_code():
    code = ("import sys, vjepa_scale.config as c; "
            "assert not [m for m in sys.modules if m.startswith('vjepa_scale.models')], 'models imported'; "
            "import vjepa_scale.models.vit as v; "
            "assert v.resolve_vit_size is c.resolve_vit_size and not hasattr(v, 'VIT_SIZES')")  # one size table
    r = run([sys.executable, "-c", code], timeout=120)
    assert r.returncode == 0, r.stderr

"""End to end: pretrain a tiny encoder with tools/train.py on synthetic videos, probe it with
tools/eval_probe.py from its checkpoint (EMA target / online / random init), refuse a checkpoint
of another size, and run the probe under a 2-process launch.
"""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from vjepa_scale.config import load_config
from vjepa_scale.eval.config import load_eval_config
from vjepa_scale.eval.encoder import load_frozen_encoder
from vjepa_scale.weights import load_consolidated

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow
ENV = dict(os.environ, DS_ACCELERATOR="cpu", DS_SKIP_SHM_BUILD="1", OMP_NUM_THREADS="1")


def _port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


def _run(cmd, timeout=300):
    return subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from vjepa_scale.data.synthetic_videos import write_synthetic_videos

    base = tmp_path_factory.mktemp("evale2e")
    idx = write_synthetic_videos(base / "data", num_videos=16, frames=8, size=32, val_fraction=0.25)
    run = base / "run"
    opts = ["model.depth=1", "data.backend=cpu", f"data.datasets=[{{path: {idx['train']}}}]", "data.crop_size=32",
            "data.frame_step=2",  # a 7-frame window: clips fit the 8-frame videos (shorter files are skipped)
            "optim.iterations=3", "train.checkpoint_every=3", "train.log_every=1"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", _port(),
           "tools/train.py", "--config", "cpu_demo.yaml", "--output-dir", str(run)]
    for o in opts:
        cmd += ["--opt", o]
    r = _run(cmd)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    common = [f"data.train_index={idx['train']}", f"data.val_index={idx['val']}", "data.crop_size=32",
              "data.frames_per_clip=4", "data.frame_step=2", "data.num_workers=0", "optim.epochs=2",
              "run.progress_bar=false", "run.num_threads=1"]
    return {"run": run, "idx": idx, "common": common, "base": base}


def _probe(*args):
    return _run([sys.executable, "tools/eval_probe.py", *args])


def test_probe_from_checkpoint_target_online_random(setup):
    run, common, base = setup["run"], setup["common"], setup["base"]
    for which in ("target", "online"):
        cfg = load_eval_config(None, [*common, f"encoder.checkpoint={run}", f"encoder.which={which}"])
        frozen = load_frozen_encoder(cfg)
        ref = load_consolidated(run, which)["encoder"]
        assert frozen.step == 3 and which in frozen.source
        for k, v in ref.items():
            assert torch.equal(frozen.encoder.state_dict()[k], v), k
    target, online = load_consolidated(run, "target")["encoder"], load_consolidated(run, "online")["encoder"]
    assert any(not torch.equal(target[k], online[k]) for k in target)  # EMA lags the online encoder

    r = _probe("--checkpoint", str(run), "--output", str(base / "p_target"), *common)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads((base / "p_target" / "result.json").read_text())
    assert res["encoder_step"] == 3 and "target encoder" in res["encoder"] and res["model"]["width"] == 96
    r = _probe("--random-init", "--checkpoint", str(run), "--output", str(base / "p_rand"), *common)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads((base / "p_rand" / "result.json").read_text())
    assert res["encoder"].startswith("random init") and res["model"]["width"] == 96 and res["model"]["depth"] == 1


def test_checkpoint_of_another_size_fails_naming_key_and_shapes(setup):
    r = _probe("--checkpoint", str(setup["run"]), *setup["common"], "model.size=small", "model.depth=1")
    assert r.returncode == 2
    assert "encoder parameter" in r.stderr and "(96," in r.stderr and "(384," in r.stderr, r.stderr[-2000:]
    pre = load_config(Path(setup["run"]) / "checkpoints" / "step_00000003" / "config.yaml")
    assert pre.model.width == 96


def test_probe_under_two_process_launch(setup):
    out = setup["base"] / "p_dist"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", _port(),
           "tools/eval_probe.py", "--random-init", "--checkpoint", str(setup["run"]), "--output", str(out),
           *setup["common"], "optim.batch_size=4"]
    r = _run(cmd)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    res = json.loads((out / "result.json").read_text())
    assert res["world_size"] == 2 and res["runs"][0]["num_val_videos"] == 4  # counts summed over ranks

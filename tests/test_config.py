"""Recipes load into typed configs; bad configs fail before any training work with a named key."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from vjepa_scale.config import ConfigError, load_config, save_config
from vjepa_scale.train.launch import check_data_paths, deepspeed_config, preflight, resolve_batch
from vjepa_scale.train.schedules import horizon

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("name,size,crop,batch", [("vitl16.yaml", "large", 224, 3072),
                                                  ("vith16.yaml", "huge", 224, 3072),
                                                  ("vith384.yaml", "huge", 384, 2400)])
def test_paper_recipes(name, size, crop, batch):
    cfg = load_config(name)  # bare name resolves into configs/
    assert cfg.model.size == size and cfg.data.crop_size == crop
    assert cfg.data.global_batch_size == batch
    assert cfg.grid == (8, crop // 16, crop // 16)
    o = cfg.optim
    assert (o.iterations, o.warmup, o.ipe_scale) == (90_000, 12_000, 1.25) and horizon(o) == 112_500
    assert (o.start_lr, o.lr, o.final_lr) == (2e-4, 6.25e-4, 1e-6)
    assert (o.weight_decay, o.final_weight_decay, o.ema, o.grad_clip) == (0.04, 0.4, (0.998, 1.0), 10.0)
    assert [(t.num_blocks, t.spatial_scale) for t in cfg.mask.types] == [(8, (0.15, 0.15)), (2, (0.7, 0.7))]
    assert cfg.train.precision == "bf16" and cfg.zero.stage == 3
    assert (cfg.data.frames_per_clip, cfg.data.frame_step) == (16, 4)


def test_recipe_round_trips(tmp_path):
    cfg = load_config("vith384", ["optim.lr=1e-3", "zero.overlap_comm=false"])
    assert cfg.optim.lr == 1e-3 and cfg.zero.overlap_comm is False
    save_config(cfg, tmp_path / "c.yaml")
    assert load_config(tmp_path / "c.yaml") == cfg


def test_unknown_key_names_closest(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("optim:\n  warmpu: 10\n")
    with pytest.raises(ConfigError, match=r"optim\.warmpu.*did you mean 'optim\.warmup'"):
        load_config(p)
    with pytest.raises(ConfigError, match=r"train\.chekpoint_every.*train\.checkpoint_every"):
        load_config("cpu_demo", ["train.chekpoint_every=3"])


def test_wrong_type_and_range_name_the_key():
    with pytest.raises(ConfigError, match=r"optim\.iterations must be an integer"):
        load_config("cpu_demo", ["optim.iterations=abc"])
    with pytest.raises(ConfigError, match=r"data\.global_batch_size must be > 0"):
        load_config("cpu_demo", ["data.global_batch_size=0"])


def test_global_batch_divides_world():
    cfg = load_config("vith384")
    assert resolve_batch(cfg, 240).data.batch_size == 10
    assert resolve_batch(load_config("vith384", ["optim.grad_accum=2"]), 120).data.batch_size == 10
    with pytest.raises(ConfigError, match=r"data\.global_batch_size=2400 is not divisible by world_size=7"):
        resolve_batch(cfg, 7)
    per_rank = load_config("cpu_demo", ["data.global_batch_size=null", "data.batch_size=3"])
    assert resolve_batch(per_rank, 2).data.global_batch_size == 6


def test_missing_data_path_named(tmp_path):
    cfg = load_config("vith384")
    with pytest.raises(ConfigError, match=r"data\.datasets\[0\]\.path.*kinetics710_train\.txt.*does not exist"):
        check_data_paths(cfg)
    idx = tmp_path / "idx.txt"
    idx.write_text("a.mp4 0\n")
    ok = load_config("vith384", [f"data.datasets=[{{path: {idx}}}]"])
    assert preflight(ok, 240).data.batch_size == 10
    with pytest.raises(ConfigError, match=r"train\.init_from: '/nonexistent/run' does not exist"):
        preflight(load_config("cpu_demo", ["train.init_from=/nonexistent/run"]), 2)


def test_deepspeed_config_blocks():
    cfg = load_config("vith384", ["zero.stage3_prefetch_bucket_size=123",
                                  "deepspeed={zero_optimization: {sub_group_size: 7}, gradient_clipping: 1.0}"])
    cfg = resolve_batch(cfg, 240)
    ds = deepspeed_config(cfg, 240)
    z = ds["zero_optimization"]
    assert z["stage"] == 3 and z["stage3_prefetch_bucket_size"] == 123 and z["sub_group_size"] == 7
    assert ds["gradient_clipping"] == 1.0  # the raw block wins
    assert ds["bf16"] == {"enabled": True}
    assert ds["train_batch_size"] == 2400 and ds["train_micro_batch_size_per_gpu"] == 10
    target = deepspeed_config(cfg, 240, with_optimizer=False)
    assert target["zero_optimization"]["stage3_param_persistence_threshold"] == 0
    assert "gradient_clipping" not in target or target["gradient_clipping"] == 1.0
    assert "bf16" not in deepspeed_config(resolve_batch(load_config("cpu_demo"), 2), 2)  # fp32 on CPU
    z2 = resolve_batch(load_config("cpu_demo", ["zero.stage=2"]), 2)
    assert deepspeed_config(z2, 2)["zero_optimization"]["stage"] == 2
    assert deepspeed_config(z2, 2, with_optimizer=False)["zero_optimization"] == {"stage": 0}  # replicated target


def _cli(*args, world=1):
    env = dict(os.environ, WORLD_SIZE=str(world), RANK="0", LOCAL_RANK="0")
    return subprocess.run([sys.executable, str(ROOT / "tools" / "train.py"), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("args,world,message", [
    (["--config", "cpu_demo.yaml", "--opt", "optim.warmpu=3"], 1, "did you mean 'optim.warmup'"),
    (["--config", "vith384.yaml"], 1, "data.datasets[0].path"),
    (["--config", "cpu_demo.yaml", "--opt", "data.global_batch_size=9"], 2, "data.global_batch_size=9 is not divisible"),
    (["--config", "cpu_demo.yaml", "--resume", "/nonexistent/run"], 1, "--resume: '/nonexistent/run' does not exist"),
])
def test_cli_fails_before_training(tmp_path, args, world, message):
    out = tmp_path / "run"
    r = _cli(*args, "--output-dir", str(out), world=world)
    assert r.returncode == 2, r.stderr
    assert message in r.stderr
    assert not out.exists()  # nothing was started


@pytest.mark.parametrize("name", sorted(p.name for p in (ROOT / "configs").glob("*.yaml")
                                        if not p.name.startswith("probe_")))
def test_every_training_recipe_loads_and_validates(name):
    cfg = load_config(name)
    assert cfg.grid[0] * cfg.grid[1] * cfg.grid[2] > 0

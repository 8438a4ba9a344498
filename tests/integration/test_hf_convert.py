"""tools/convert_to_hf.py on a real 2-rank ZeRO-3 checkpoint, and warm starts from a training run."""
from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import json
import sys
from pathlib import Path

import pytest
import torch

from helpers import assert_ok, cpu_env, free_port, launch, load_tool, require, train_args
from vjepa_scale.models import VisionTransformer3D
from vjepa_scale.weights import load_init_state

transformers = require("transformers")
require("deepspeed")

pytestmark = pytest.mark.slow  # trains two ranks for two steps (~20 s on 2 cores)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """Two ranks, ZeRO-3, RoPE, two steps of cpu_demo: one checkpoint at step 2."""
    out = tmp_path_factory.mktemp("run")
    assert_ok(launch("tools/train.py", *train_args(out, "optim.iterations=2", "train.checkpoint_every=2",
                                                   "train.progress_bar=false", "data.global_batch_size=4",
                                                   "model.pos_embed=rope"), nproc=2))
    return out


def _cli():
    return load_tool("convert_to_hf")


def test_cli_runs_as_a_script():
    r = launch("tools/convert_to_hf.py", "--help", timeout=60)
    assert r.returncode == 0 and "RUN_OR_CHECKPOINT OUT_DIR" in r.stdout and "--include-predictor" in r.stdout


def test_convert_zero3_run_to_stock_vjepa2(run_dir, tmp_path, capsys):
    from vjepa_scale.weights import load_consolidated

    out = tmp_path / "hf"
    assert _cli().main([str(run_dir), str(out), "--include-predictor", "--max-shard-size", "400KB"]) == 0
    assert "target encoder at step 2" in capsys.readouterr().out
    assert len(set(json.loads((out / "model.safetensors.index.json").read_text())["weight_map"].values())) > 1
    card = (out / "README.md").read_text()
    assert "**target** encoder" in card and "step **2**" in card

    ref = load_consolidated(run_dir, which="target")
    cfg = ref["config"]
    encoder = VisionTransformer3D(cfg.model, cfg.grid).eval()
    encoder.load_state_dict(ref["encoder"])
    hf = transformers.VJEPA2Model.from_pretrained(out).eval()
    torch.manual_seed(0)
    video = torch.randn(2, 3, cfg.data.frames_per_clip, cfg.data.crop_size, cfg.data.crop_size)
    with torch.no_grad():
        ours = encoder(video)
        theirs = hf(video.permute(0, 2, 1, 3, 4), skip_predictor=True).last_hidden_state
    assert (ours - theirs).abs().max() <= 1e-4
    back = load_init_state(out, cfg)
    assert all(torch.equal(back["encoder"][k], v) for k, v in ref["encoder"].items())
    assert all(torch.equal(back["predictor"][k], v) for k, v in ref["predictor"].items())


def test_convert_online_and_errors(run_dir, tmp_path, capsys):
    from vjepa_scale.weights import load_consolidated

    cli = _cli()
    ckpt = run_dir / "checkpoints" / "step_00000002"
    assert cli.main([str(ckpt), str(tmp_path / "online"), "--which", "online"]) == 0
    online, target = load_consolidated(run_dir, "online"), load_consolidated(run_dir, "target")
    back = load_init_state(tmp_path / "online", online["config"])
    assert back["predictor"] is None
    assert all(torch.equal(back["encoder"][k], v) for k, v in online["encoder"].items())
    assert not torch.equal(online["encoder"]["patch_embed.weight"], target["encoder"]["patch_embed.weight"])
    assert cli.main([str(ckpt), str(tmp_path / "online")]) == 2  # refuses to overwrite
    assert "not empty" in capsys.readouterr().err
    assert cli.main([str(tmp_path / "nothing"), str(tmp_path / "x")]) == 2
    assert "no complete checkpoint" in capsys.readouterr().err
    with pytest.MonkeyPatch.context() as mp:  # no transformers: refused naming the extra, before any work
        mp.setitem(sys.modules, "transformers", None)
        assert cli.main([str(ckpt), str(tmp_path / "no_hf")]) == 2
        assert ("a Hugging Face export needs transformers, which is not installed: pip install -c constraints.txt "
                "-e '.[hf]'") in capsys.readouterr().err
    # the run's checkpoints/latest file names the checkpoint (it is not an official file)
    assert cli.main([str(run_dir / "checkpoints" / "latest"), str(tmp_path / "via_latest")]) == 0
    assert "target encoder at step 2" in capsys.readouterr().out


def test_convert_passes_over_a_damaged_checkpoint_of_a_run(run_dir, tmp_path, capsys):
    """A damaged newest checkpoint: given as such, an error naming the file (exit 2); as the run folder, the
    newest undamaged one, with a warning naming the damaged one (as --resume auto does)."""
    import shutil

    cli = _cli()
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    new, old = run / "checkpoints" / "step_00000002", run / "checkpoints" / "step_00000001"
    shutil.copytree(new, old)  # an older save of the same weights
    meta = json.loads((old / "meta.json").read_text())
    (old / "meta.json").write_text(json.dumps(meta | {"step": 1, "save_index": meta.get("save_index", 1) - 1}))
    ema = sorted((new / "ema").glob("rank*.pt"))[0]
    ema.write_bytes(ema.read_bytes()[:1000])
    assert cli.main([str(new), str(tmp_path / "a")]) == 2
    assert f"{ema} is damaged" in capsys.readouterr().err
    assert cli.main([str(run), str(tmp_path / "b")]) == 0
    out = capsys.readouterr()
    assert "checkpoint step_00000002 cannot be loaded" in out.err and "target encoder at step 1" in out.out


def test_warm_start_from_training_run(run_dir):
    from vjepa_scale.weights import load_consolidated

    online, target = load_consolidated(run_dir, "online"), load_consolidated(run_dir, "target")
    cfg = online["config"]
    state = load_init_state(run_dir, cfg)
    for name, ref in (("encoder", online["encoder"]), ("predictor", online["predictor"]),
                      ("target_encoder", target["encoder"])):
        assert all(torch.equal(state[name][k], v) for k, v in ref.items())
    other = online["config"]
    other.model.num_heads = 6  # 96 / 6: same shapes, different attention
    with pytest.raises(ValueError, match=r"model.num_heads \(via model.size\)=3 but the config has 6"):
        load_init_state(run_dir, other)


def test_training_warm_start_from_hf_folder_keeps_weights_exact(run_dir, tmp_path):
    """train.init_from loads before DeepSpeed: the fp32 masters it checkpoints equal the imported weights."""
    from vjepa_scale.hf import export_to_hf
    from vjepa_scale.weights import load_consolidated

    src = load_consolidated(run_dir, "target")
    hf = export_to_hf(src["config"], src["encoder"], tmp_path / "hf", src["predictor"], step=src["step"])
    out = tmp_path / "warm"
    # One rank (the source run had two); a vanishing LR (1e-30) so one step moves no weight by more than
    # ~1e-30 (elements that are exactly zero do move by that much).
    args = train_args(out, "optim.iterations=1", "train.checkpoint_every=1", "train.progress_bar=false",
                      "data.global_batch_size=2", "model.pos_embed=rope", f"train.init_from={hf}",
                      "optim.start_lr=1.0e-30", "optim.lr=1.0e-30", "optim.final_lr=1.0e-30")
    assert_ok(launch("tools/train.py", *args, env=cpu_env(MASTER_PORT=str(free_port()))))
    online = load_consolidated(out, "online")
    for name in ("encoder", "predictor"):
        for k, v in src[name].items():
            assert (online[name][k] - v).abs().max() <= 1e-20, f"{name}.{k}"


def test_a_run_folder_that_also_holds_an_export_is_read_as_the_run(run_dir, tmp_path):
    """`convert_to_hf.py RUN RUN --overwrite` puts an export's config.json into the run folder: as
    train.init_from the folder is still the run (its predictor and EMA target), not the export."""
    import shutil

    from vjepa_scale.hf import export_to_hf
    from vjepa_scale.weights import load_consolidated

    run = shutil.copytree(run_dir, tmp_path / "run")
    src = load_consolidated(run, "target")
    export_to_hf(src["config"], src["encoder"], run, step=src["step"], overwrite=True)  # no predictor in it
    assert (run / "config.json").is_file()
    state = load_init_state(run, src["config"])
    assert state["predictor"] is not None and state["target_encoder"] is not None
    # evaluation's encoder.hf_path reads the export there (the EMA target it holds), not the run
    from vjepa_scale.eval.config import EvalConfig, EvalDataConfig
    from vjepa_scale.eval.encoder import load_frozen_encoder

    d = src["config"].data
    cfg = EvalConfig(data=EvalDataConfig(train_index="a", val_index="b", crop_size=d.crop_size,
                                         frames_per_clip=d.frames_per_clip))
    cfg.encoder.hf_path = str(run)
    frozen = load_frozen_encoder(cfg.validate()).encoder.state_dict()
    assert all(torch.equal(frozen[k], v) for k, v in src["encoder"].items())

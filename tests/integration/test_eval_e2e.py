"""tools/eval_probe.py end to end: on synthetic videos from a random-init encoder (results, few-shot
subsets, bad input); from the checkpoint of a tiny encoder pretrained with tools/train.py (EMA target /
online / random init), refusing a `model:` section of another size, and under a 2-process launch.
"""
import json
from pathlib import Path

import pytest
import torch

from helpers import assert_ok, launch, load_tool, require, run_ranks, train_args
from vjepa_scale.config import load_config
from vjepa_scale.eval.config import load_eval_config
from vjepa_scale.eval.encoder import load_frozen_encoder
from vjepa_scale.weights import load_consolidated


def test_cli_takes_overrides_anywhere_and_as_opt(capsys):
    """Overrides between options (parse_intermixed_args) and `--opt KEY=VALUE` (as tools/train.py takes
    them) reach the config: the options' own overrides come after them; a bad one exits 2 naming the key."""
    cli = load_tool("eval_probe")
    args, overrides = cli.parse_args(["--config", "probe_motion", "optim.epochs=1", "--seeds", "0,1",
                                      "probe.kind=linear", "run.output_dir=a", "--output", "b"])
    assert args.config == "probe_motion"
    assert overrides == ["optim.epochs=1", "probe.kind=linear", "run.output_dir=a", "run.output_dir=\"b\"",
                         "run.seeds=[0,1]"]
    _, overrides = cli.parse_args(["--opt", "optim.epochs=1", "--seeds", "0", "--opt", "optim.epochs=2"])
    assert overrides == ["optim.epochs=1", "optim.epochs=2", "run.seeds=[0]"]
    with pytest.raises(SystemExit):  # both forms: their relative order would be lost
        cli.parse_args(["--opt", "optim.epochs=5", "optim.epochs=1"])
    assert "either bare (section.key=value) or with --opt, not both" in capsys.readouterr().err
    for bad in (["optim.epochs=0", "--seeds", "0"], ["--opt", "optim.epochs=0", "--seeds", "0"]):
        assert cli.main(["--config", "probe_motion", "--random-init", *bad]) == 2
        assert "optim.epochs must be > 0, got 0" in capsys.readouterr().err


def test_cli_end_to_end_on_synthetic_videos(tmp_path):
    from vjepa_scale.data.synthetic_videos import write_synthetic_videos

    idx = write_synthetic_videos(tmp_path / "data", num_videos=12, frames=8, size=32, val_fraction=0.34)
    out = tmp_path / "out"
    common = [f"data.train_index={idx['train']}", f"data.val_index={idx['val']}", "model.size=tiny",
              "model.depth=1", "data.crop_size=32", "data.frames_per_clip=4", "data.frame_step=2",
              "data.num_views=2", "data.num_workers=0", "optim.epochs=2", "run.progress_bar=false",
              "run.num_threads=1"]
    r = _probe("--random-init", "--output", str(out), "--seeds", "0,1", *common, "probe.kind=v2",
               "probe.num_self_blocks=1", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    res = json.loads((out / "result.json").read_text())
    assert res["num_train_videos"] == 8 and res["num_val_videos"] == 4 and res["num_classes"] == 4
    assert set(res["val_top1_per_seed"]) == {"0", "1"} and len(res["runs"][0]["history"]) == 2
    assert res["encoder"] == "random init (seed 0)"
    # tiny with depth 1 is no named size: the record says custom beside the real dims
    assert res["model"] == {"size": "custom", "width": 192, "depth": 1, "num_heads": 3, "mlp_ratio": 4.0,
                            "pos_embed": res["model"]["pos_embed"]}
    assert any((out / "tb").iterdir())
    assert res["val_feature_effective_rank"] > 1.0
    # label-efficient probes: each seed trains on its own balanced subset
    r = _probe("--random-init", "--output", str(tmp_path / "few"), "--seeds", "0,1", *common,
               "data.train_per_class=1", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    few = json.loads((tmp_path / "few" / "result.json").read_text())
    assert few["train_per_class"] == 1 and [x["num_train_videos"] for x in few["runs"]] == [4, 4]
    # bad input fails with the file and line, exit status 2
    bad = tmp_path / "bad.txt"
    bad.write_text(Path(idx["train"]).read_text() + "extra.mp4 up\n")
    r = _probe("--random-init", *common, f"data.train_index={bad}", cwd=tmp_path)
    assert r.returncode == 2 and f"{bad}:9: label 'up' is not an integer" in r.stderr
    r = _probe("--random-init", *common, "probe.num_heads=7", cwd=tmp_path)
    assert r.returncode == 2 and "probe.num_heads=7 does not divide the encoder width 192" in r.stderr


def test_a_sigterm_to_the_whole_job_stops_a_streamed_evaluation_that_then_continues(tmp_path):
    """SIGTERM to the process group (SLURM signals every process of a job, the loader workers too), sent by a
    worker of a streamed pass: the evaluation saves and exits 75 (the workers ignore it, as training's do:
    with plain DataLoader workers the rank crashed in about half of such stops), and the same command
    continues to the uninterrupted result."""
    from helpers import start
    from vjepa_scale.data.synthetic_videos import write_synthetic_videos

    idx = write_synthetic_videos(tmp_path / "data", num_videos=12, frames=16, size=32, val_fraction=0.25)
    args = ["--random-init", "model.size=tiny", "model.depth=1", f"data.train_index={idx['train']}",
            f"data.val_index={idx['val']}", "data.crop_size=32", "data.frames_per_clip=4", "data.frame_step=2",
            "data.num_workers=2", "data.train_augment=true", "optim.epochs=6", "optim.batch_size=2",
            "run.num_threads=1", "run.tensorboard=false"]
    straight = _probe(*args, "--output", str(tmp_path / "straight"))
    assert straight.returncode == 0, straight.stderr[-3000:]
    out = tmp_path / "stopped"
    # a loader worker of epoch 2 signals the process group: a new session, so only this job gets it
    proc = start(Path(__file__).parent / "eval_sigterm_in_worker.py", "--epoch", "1", *args, "--output", str(out),
                 log=tmp_path / "log", start_new_session=True)
    assert proc.wait(timeout=120) == 75, (tmp_path / "log").read_text()[-3000:]
    assert (out / "probe_state.pt").is_file() and (out / "PREEMPTED").is_file()
    r = _probe(*args, "--output", str(out))
    assert r.returncode == 0, r.stderr[-3000:]
    assert "eval: continuing the stopped evaluation" in r.stdout
    done, want = (json.loads((d / "result.json").read_text()) for d in (out, tmp_path / "straight"))
    assert done["runs"][0]["history"] == want["runs"][0]["history"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from vjepa_scale.data.synthetic_videos import write_synthetic_videos

    require("deepspeed")
    base = tmp_path_factory.mktemp("evale2e")
    idx = write_synthetic_videos(base / "data", num_videos=16, frames=8, size=32, val_fraction=0.25)
    run = base / "run"
    opts = ["model.depth=1", "data.backend=cpu", f"data.datasets=[{{path: {idx['train']}}}]", "data.crop_size=32",
            "data.frame_step=2",  # a 7-frame window: clips fit the 8-frame videos (shorter files are skipped)
            "optim.iterations=3", "train.checkpoint_every=3", "train.log_every=1"]
    assert_ok(launch("tools/train.py", *train_args(run, *opts), nproc=2))
    common = [f"data.train_index={idx['train']}", f"data.val_index={idx['val']}", "data.crop_size=32",
              "data.frames_per_clip=4", "data.frame_step=2", "data.num_workers=0", "optim.epochs=2",
              "run.progress_bar=false", "run.num_threads=1"]
    return {"run": run, "idx": idx, "common": common, "base": base}


def _probe(*args, nproc=None, cwd=None):
    return launch("tools/eval_probe.py", *args, nproc=nproc, cwd=cwd)


@pytest.mark.slow
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


@pytest.mark.slow
def test_model_section_of_another_size_fails_naming_the_fields(setup):
    r = _probe("--checkpoint", str(setup["run"]), *setup["common"], "model.size=small", "model.depth=1")
    assert r.returncode == 2
    assert "model.num_heads (via model.size)=3 but the config has 6" in r.stderr, r.stderr[-2000:]
    assert "model.width (via model.size)=96 but the config has 384" in r.stderr, r.stderr[-2000:]
    pre = load_config(Path(setup["run"]) / "checkpoints" / "step_00000003" / "config.yaml")
    assert pre.model.width == 96


@pytest.mark.slow
def test_probe_under_two_process_launch(setup):
    out = setup["base"] / "p_dist"
    r = _probe("--random-init", "--checkpoint", str(setup["run"]), "--output", str(out), *setup["common"],
               "optim.batch_size=4", nproc=2)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    res = json.loads((out / "result.json").read_text())
    assert res["world_size"] == 2 and res["runs"][0]["num_val_videos"] == 4  # counts summed over ranks
    # streamed features (encoded for every batch, loader workers, DDP): the same probe steps and result
    r = _probe("--random-init", "--checkpoint", str(setup["run"]), "--output", str(out), *setup["common"],
               "optim.batch_size=4", "run.features=stream", "data.num_workers=1", nproc=2)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    assert "eval: features streamed (encoded every epoch) (run.features=stream; " in r.stdout
    streamed = json.loads((out / "result.json").read_text())
    assert streamed["features"] == "stream" and streamed["runs"][0]["num_val_videos"] == 4
    for a, b in zip(res["runs"][0]["history"], streamed["runs"][0]["history"], strict=True):
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-3) and b["val_top1"] == a["val_top1"], (a, b)
    # few-shot: each seed's subset is chosen first, then spread over the ranks
    r = _probe("--random-init", "--checkpoint", str(setup["run"]), "--output", str(out), *setup["common"],
               "optim.batch_size=4", "data.train_per_class=1", "--seeds", "0,1", nproc=2)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    res = json.loads((out / "result.json").read_text())
    assert res["world_size"] == 2 and [x["num_train_videos"] for x in res["runs"]] == [4, 4]
    # one val video for two ranks: rank 1 has none, and both ranks stop with the reason (rank 0 used to
    # wait for it in the probe's first all-reduce); plain processes, so no launcher ends a rank left waiting
    one = setup["base"] / "one_val.txt"
    one.write_text(Path(setup["idx"]["val"]).read_text().splitlines()[0] + "\n")
    ranks = run_ranks("tools/eval_probe.py", "--random-init", "--checkpoint", str(setup["run"]), "--output", str(out),
                      *setup["common"], f"data.val_index={one}", nproc=2)
    err = "".join(r.stderr for r in ranks)
    assert all(r.returncode != 0 for r in ranks), err[-3000:]
    assert "rank 1 of 2 got no usable videos (1 in the index)" in err, err[-3000:]
    assert "another rank got no usable videos" in err, err[-3000:]

"""2-rank ZeRO-3 runs on CPU (gloo): training, sharded EMA, exact resume, killed saves, consolidation.

Three launches of tools/train.py share one tiny setup (depth 1, width 96, crop 32, 4 frames):
  straight: 6 steps through the `deepspeed` launcher, a checkpoint after every step;
  killed:   the same run under torch.distributed.run, checkpoints every 3 steps, rank 0 SIGKILLed
            in the middle of the step-6 save (kill_in_save.py beside this file);
  resumed:  `--resume auto` on the killed run's directory, training steps 4-6 again.
"""
import shutil
from pathlib import Path

import pytest
import torch

from helpers import assert_ok, cpu_env, gpu_env, launch, reference_ema, require, run_ranks, train_args
from vjepa_scale.config import load_config
from vjepa_scale.models import Predictor, VisionTransformer3D
from vjepa_scale.train.engine import build_models
from vjepa_scale.train.metrics import read_metrics
from vjepa_scale.train.phases import resolve_batch
from vjepa_scale.weights import CKPT_SUBDIR, find_latest, list_checkpoints, load_consolidated

require("deepspeed")
KILL_IN_SAVE = Path(__file__).with_name("kill_in_save.py")
STEPS = 6
OPTS = ["model.depth=1", "data.crop_size=32", "data.synthetic_size=64", f"optim.iterations={STEPS}",
        "optim.ema=[0.5,0.7]", "train.log_every=1", "train.keep_last=10"]

pytestmark = pytest.mark.slow


def _launch(run_dir, *opts, launcher="torchrun", kill_in_save_at=None, resume=None, nproc=2, cpu=True):
    """tools/train.py on `nproc` ranks; with `kill_in_save_at`, through kill_in_save.py."""
    script = ["tools/train.py"]
    if kill_in_save_at is not None:
        script = [KILL_IN_SAVE, "--kill-in-save-at-step", str(kill_in_save_at)]
    return launch(*script, *train_args(run_dir, *OPTS, *opts, resume=resume), nproc=nproc, launcher=launcher,
                  env=cpu_env() if cpu else gpu_env(OMP_NUM_THREADS="1"))


def _losses(run_dir) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_metrics(run_dir)}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("train2")
    straight, killed = base / "straight", base / "killed"
    assert_ok(_launch(straight, "train.checkpoint_every=1", launcher="deepspeed"))
    k = _launch(killed, "train.checkpoint_every=3", kill_in_save_at=STEPS)
    assert k.returncode != 0, "rank 0 should have been killed inside the step-6 save"
    killed_state = {"latest": find_latest(killed), "tmp": sorted(p.name for p in (killed / "checkpoints").glob(".tmp_*"))}
    resumed = base / "resumed"
    shutil.copytree(killed, resumed)
    rr = _launch(resumed, "train.checkpoint_every=3", resume="auto")
    assert_ok(rr)
    yield {"straight": straight, "killed": killed, "killed_state": killed_state, "resumed": resumed,
           "resumed_log": rr.stdout + rr.stderr}


def test_two_rank_zero3_trains(runs):
    run = runs["straight"]
    losses = _losses(run)
    assert sorted(losses) == list(range(1, STEPS + 1))
    first, last = losses[1], losses[STEPS]
    assert last < first - 0.02, losses
    recs = read_metrics(run)
    assert all(r["grad_norm"] > 0 and r["clips_per_s"] > 0 and 0 <= r["data_wait"] < 1 for r in recs)
    assert all(r["tokens_per_s"] == pytest.approx(r["clips_per_s"] * 2 * 2 * 2, rel=1e-5) and r["eta_s"] >= 0
               for r in recs)  # each written to 7 significant digits
    assert recs[-1]["eta_s"] == 0 and recs[0]["mfu"] is None  # no known peak on CPU
    # optimizer steps change the (consolidated) online weights
    a = load_consolidated(list_checkpoints(run)[0], "online")["encoder"]
    b = load_consolidated(run, "online")["encoder"]
    assert max((a[k] - b[k]).abs().max().item() for k in a) > 1e-4
    assert list((run / "tb").glob("events.out.tfevents.*"))
    cfg = load_config(run / "config.yaml")  # effective config; the per-rank batch (derived) left null
    assert cfg.data.batch_size is None and cfg.data.global_batch_size == 8 and cfg.model.depth == 1
    assert resolve_batch(cfg, 2).data.batch_size == 4


def test_sharded_ema_equals_single_process_ema(runs):
    """Target after k steps == fp32 EMA (one process) of the consolidated online weights of each step."""
    ckpts = list_checkpoints(runs["straight"])
    assert [load_consolidated(c, "target")["step"] for c in ckpts] == list(range(1, STEPS + 1))
    start = load_consolidated(ckpts[0], "target")["encoder"]
    shadow = reference_ema(ckpts)  # momentum of step s is applied after optimizer step index s-1
    target = load_consolidated(ckpts[-1], "target")["encoder"]
    online = load_consolidated(ckpts[-1], "online")["encoder"]
    assert max((target[k] - shadow[k]).abs().max().item() for k in shadow) <= 1e-6
    assert max((target[k] - start[k]).abs().max().item() for k in shadow) > 1e-4  # the EMA moved
    assert max((target[k] - online[k]).abs().max().item() for k in shadow) > 1e-5  # and is not a copy


def test_killed_save_keeps_previous_checkpoint(runs):
    state = runs["killed_state"]
    assert state["latest"] is not None and state["latest"].name == "step_00000003"
    assert state["tmp"] == [".tmp_step_00000006"]  # the half-written save is left aside, not committed
    assert "resumed from" in runs["resumed_log"] and "step_00000003" in runs["resumed_log"]


def test_resume_is_exact(runs):
    straight, resumed = _losses(runs["straight"]), _losses(runs["resumed"])
    assert [resumed[s] for s in range(4, STEPS + 1)] == [straight[s] for s in range(4, STEPS + 1)]
    # the resumed run replaced the killed run's records of steps 4-6 instead of appending duplicates
    assert [r["step"] for r in read_metrics(runs["resumed"])] == list(range(1, STEPS + 1))
    assert find_latest(runs["resumed"]).name == f"step_{STEPS:08d}"
    assert not list((runs["resumed"] / "checkpoints").glob(".tmp_*"))
    for which in ("online", "target"):
        a, b = load_consolidated(runs["straight"], which), load_consolidated(runs["resumed"], which)
        assert a["step"] == b["step"] == STEPS
        for part in ("encoder", "predictor"):
            assert a[part].keys() == b[part].keys()
            assert all(torch.equal(a[part][k], b[part][k]) for k in a[part]), (which, part)


def test_keep_last_prunes_old_checkpoints(tmp_path):
    """One rank, a save every step, train.keep_last=2: only the two newest stay, `latest` names the last."""
    run = tmp_path / "keep2"
    (r,) = run_ranks("tools/train.py", *train_args(run, *OPTS, "optim.iterations=4", "train.checkpoint_every=1",
                                                   "train.keep_last=2"), nproc=1)  # one rank: no launcher needed
    assert_ok(r)
    root = run / CKPT_SUBDIR
    assert [p.name for p in list_checkpoints(run)] == ["step_00000003", "step_00000004"]
    assert sorted(p.name for p in root.iterdir()) == ["latest", "step_00000003", "step_00000004"]
    assert (root / "latest").read_text() == "step_00000004" and find_latest(run) == root / "step_00000004"
    assert [x["step"] for x in read_metrics(run)] == [1, 2, 3, 4]  # the steps ran; only their saves went


def test_load_consolidated_builds_models(runs, capfd):
    capfd.readouterr()
    d = load_consolidated(runs["straight"])  # run dir -> latest, target by default
    out, err = capfd.readouterr()  # DeepSpeed's consolidation prints and progress bars are silenced
    assert not any(s in out + err for s in ("Processing zero checkpoint", "Detected checkpoint", "Loading checkpoint",
                                            "Gathering sharded weights")), out + err
    cfg = d["config"]
    enc = VisionTransformer3D(cfg.model, cfg.grid)
    enc.load_state_dict(d["encoder"], strict=True)
    pred = Predictor(cfg.model, enc.embed_dim, cfg.grid, len(cfg.mask.types))
    pred.load_state_dict(d["predictor"], strict=True)
    assert all(v.dtype == torch.float32 for v in d["encoder"].values())
    with torch.no_grad():
        out = enc(torch.randn(1, 3, cfg.data.frames_per_clip, cfg.data.crop_size, cfg.data.crop_size))
    assert out.shape == (1, cfg.grid[0] * cfg.grid[1] * cfg.grid[2], enc.embed_dim) and torch.isfinite(out).all()
    with pytest.raises(ValueError, match="which must be"):
        load_consolidated(runs["straight"], "ema")


def test_init_from_previous_run(runs):
    """train.init_from (through vjepa_scale.weights.load_init_state) loads online, predictor and EMA weights."""
    run = runs["straight"]
    cfg = load_config(run / "config.yaml", [f"train.init_from={run}"])
    jepa, target = build_models(cfg, seed=123)
    online, ema = load_consolidated(run, "online"), load_consolidated(run, "target")
    for got, want in ((jepa.encoder.state_dict(), online["encoder"]), (jepa.predictor.state_dict(), online["predictor"]),
                      (target.state_dict(), ema["encoder"])):
        assert all(torch.equal(got[k], want[k]) for k in want)
    assert not any(p.requires_grad for p in target.parameters())


def test_bf16_run_keeps_fp32_ema_shadow(tmp_path):
    """The GPU precision path on CPU: bf16 engines, fp32 masters feed an fp32 EMA shadow."""
    run = tmp_path / "bf16"
    r = _launch(run, "train.precision=bf16", "optim.iterations=3", "train.checkpoint_every=1",
                "model.activation_checkpointing=true")
    assert_ok(r)
    ckpts = list_checkpoints(run)
    assert len(ckpts) == 3
    shadow = reference_ema(ckpts)
    target = load_consolidated(run, "target")["encoder"]
    assert max((target[k] - shadow[k]).abs().max().item() for k in shadow) <= 1e-6
    # the shadow holds values a bf16 copy could not: it is a real fp32 EMA
    w = target["transformer.blocks.0.attn.qkv.weight"]
    assert (w != w.bfloat16().float()).float().mean() > 0.5
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in read_metrics(run))


def test_logged_loss_matches_single_process_recompute(runs):
    """Step k+1's logged loss == the loss recomputed in one process from checkpoint k's consolidated
    weights (online encoder + predictor, EMA target) on both ranks' batches of that step: the target
    forward really uses the EMA shards, and each rank reads the data position it should. The loss
    is the global per-mask-type token mean: each rank divides its error sums by the type's token
    count over both ranks / 2, and the logged loss is the mean of the ranks' losses."""
    from vjepa_scale.data import build_dataloader
    from vjepa_scale.models import JEPA, compute_targets

    k = 4
    d_on = load_consolidated(list_checkpoints(runs["straight"])[k - 1], "online")
    d_tg = load_consolidated(list_checkpoints(runs["straight"])[k - 1], "target")
    cfg = resolve_batch(d_on["config"], 2)  # the per-rank batch of the run's 2 ranks
    assert d_on["step"] == k
    jepa = JEPA(cfg)
    jepa.encoder.load_state_dict(d_on["encoder"])
    jepa.predictor.load_state_dict(d_on["predictor"])
    target = VisionTransformer3D(cfg.model, cfg.grid)
    target.load_state_dict(d_tg["encoder"])
    losses = []
    batches = [next(iter(build_dataloader(cfg, rank, 2, start_step=k, num_steps=1))) for rank in range(2)]
    counts = [torch.tensor(b.masks.tgt_type_bounds).diff().double() for b in batches]
    type_norm = ((counts[0] + counts[1]) / 2).float()
    with torch.no_grad():
        for batch in batches:
            assert batch.step == k
            tg = compute_targets(target, batch.video, batch.masks)
            losses.append(jepa(batch.video, batch.masks, tg, type_norm).item())
    logged = _losses(runs["straight"])[k + 1]
    assert abs(sum(losses) / 2 - logged) < 1e-5, (losses, logged)
    # with the online encoder as target instead, the loss is measurably different
    target.load_state_dict(d_on["encoder"])
    with torch.no_grad():
        batch = next(iter(build_dataloader(cfg, 0, 2, start_step=k, num_steps=1)))
        other = jepa(batch.video, batch.masks, compute_targets(target, batch.video, batch.masks), type_norm).item()
    assert abs(other - losses[0]) > 1e-4


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("stage,ckpt", [(3, "false"), (1, "auto")])
def test_gpu_bf16_run_reports_mfu(tmp_path, stage, ckpt):
    """One GPU, the deepspeed launcher, bf16 (precision auto): ZeRO-3, and ZeRO-1 (EMA over the master
    fragments) with activation checkpointing `auto` (resolved on the card, logged): trains, logs MFU on
    known cards."""
    from vjepa_scale.flops import device_peak_tflops

    run = tmp_path / "gpu"
    r = _launch(run, "data.crop_size=64", "model.depth=2", "data.global_batch_size=4", "optim.iterations=4",
                "train.checkpoint_every=4", f"zero.stage={stage}", f"model.activation_checkpointing={ckpt}",
                launcher="deepspeed", nproc=1, cpu=False)
    assert_ok(r)
    if ckpt == "auto":
        assert "model.activation_checkpointing: auto -> 0 (0 of 2 encoder blocks" in r.stdout + r.stderr
    ema = torch.load(run / "checkpoints" / "step_00000004" / "ema" / "rank00000.pt", weights_only=True)
    assert ema["layout"] == ("zero3" if stage == 3 else "fragments")
    recs = read_metrics(run)
    assert [x["step"] for x in recs] == [1, 2, 3, 4]
    assert all(torch.isfinite(torch.tensor(x["loss"])) and x["tflops_per_rank"] > 0 for x in recs)
    assert all(0 < x["mem_peak_gib"] < 200 for x in recs)  # the allocator's peak of each window, on CUDA
    if device_peak_tflops(torch.device("cuda", 0)) is not None:
        assert all(0 < x["mfu"] < 1 for x in recs)
    d = load_consolidated(run, "target")
    assert d["step"] == 4 and all(v.dtype == torch.float32 for v in d["encoder"].values())

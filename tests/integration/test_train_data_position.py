"""The Trainer's data position: gradient accumulation boundaries and exact resume from video files.

- grad_accum=2 through a 1-process ZeRO-3 Trainer (gloo, synthetic clips): optimizer step s eats
  micro-steps 2s and 2s+1, DeepSpeed steps only at the boundary, both micro-batches reach the
  gradient, and a run resumed at step 1 continues at micro-step 2 and ends bit-identical.
- The CPU video backend with DataLoader workers, 2 ranks: 4 steps straight == 2 steps + resume.
"""
import os
import subprocess

import pytest
import torch

from helpers import assert_ok, free_port, launch, require, train_args
from vjepa_scale.config import load_config
from vjepa_scale.weights import list_checkpoints, load_consolidated
from vjepa_scale.train.metrics import read_metrics

require("deepspeed")
OPTS = ["model.depth=1", "data.crop_size=32", "data.synthetic_size=64", "optim.ema=[0.5,0.7]", "train.log_every=1",
        "train.keep_last=10"]
ACCUM = ["optim.grad_accum=2", "data.global_batch_size=4", "optim.iterations=3", "train.checkpoint_every=1"]

pytestmark = pytest.mark.slow


def _params(trainer) -> dict[str, torch.Tensor]:
    """Full copies of the online engine's (ZeRO-3 partitioned) parameters."""
    import deepspeed

    named = list(trainer.engine.module.named_parameters())
    with deepspeed.zero.GatheredParameters([p for _, p in named]):
        return {n: p.detach().clone() for n, p in named}


def _accum_worker(_, run_dir: str, port: str, resume, out: str) -> None:
    """One Trainer process: records, after every micro-step, its data position, DeepSpeed's optimizer
    step count, the parameters and the global grad norm."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=port, RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
    from vjepa_scale.train.engine import Trainer
    from vjepa_scale.train.launch import preflight

    records = []

    class Recording(Trainer):
        def micro_step(self, batch):
            loss = super().micro_step(batch)
            records.append({"step": self.step, "micro": batch.step, "index": list(batch.index),
                            "global_steps": self.engine.global_steps, "params": _params(self),
                            "grad_norm": float(self.engine.get_global_grad_norm() or 0.0)})
            return loss

    cfg = preflight(load_config("cpu_demo", [*OPTS, *ACCUM]), 1)
    trainer = Recording(cfg, run_dir, resume=resume)
    start = {"step": trainer.step, "global_steps": trainer.engine.global_steps, "params": _params(trainer)}
    trainer.fit()
    torch.save({"start": start, "records": records}, out)
    torch.distributed.destroy_process_group()


def _run_accum(tmp_path, name: str, resume=None) -> dict:
    out = tmp_path / f"{name}.pt"
    torch.multiprocessing.spawn(_accum_worker, args=(str(tmp_path / name), str(free_port()), resume, str(out)), nprocs=1)
    return torch.load(out, weights_only=False)


def _reference_grad_norm(cfg, micro_steps) -> float:
    """Plain-torch gradient norm of the mean loss over the given micro-batches at the initial weights."""
    from vjepa_scale.data import build_dataloader
    from vjepa_scale.models import compute_targets
    from vjepa_scale.train.engine import build_models

    jepa, target = build_models(cfg, cfg.train.seed)
    a = len(micro_steps)
    for m in micro_steps:
        batch = next(iter(build_dataloader(cfg, 0, 1, start_step=m, num_steps=1)))
        with torch.no_grad():
            targets = compute_targets(target, batch.video, batch.masks)
        (jepa(batch.video, batch.masks, targets) / a).backward()
    return torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in jepa.parameters() if p.grad is not None])).item()


def _same(a: dict, b: dict) -> bool:
    return all(torch.equal(a[k], b[k]) for k in a)


def test_grad_accum_boundaries_data_position_and_resume(tmp_path, monkeypatch):
    from vjepa_scale.data import build_dataloader
    from vjepa_scale.train.launch import preflight

    monkeypatch.setenv("DS_ACCELERATOR", "cpu")
    monkeypatch.setenv("DS_SKIP_SHM_BUILD", "1")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    a = 2
    straight = _run_accum(tmp_path, "straight")
    recs = straight["records"]
    # optimizer step s consumed micro-steps s*a .. s*a+a-1, each the batch build_dataloader gives for it
    assert [(r["step"], r["micro"]) for r in recs] == [(m // a, m) for m in range(3 * a)]
    cfg = preflight(load_config("cpu_demo", [*OPTS, *ACCUM]), 1)
    for r in recs:
        assert r["index"] == next(iter(build_dataloader(cfg, 0, 1, start_step=r["micro"], num_steps=1))).index
    # DeepSpeed steps the optimizer (and the weights) only after the a-th micro-batch
    prev = straight["start"]
    assert prev["global_steps"] == 0
    for m, r in enumerate(recs):
        boundary = m % a == a - 1
        assert r["global_steps"] == m // a + int(boundary)
        assert _same(r["params"], prev["params"]) != boundary, m
        prev = r
    # the first update's gradient is the mean over both micro-batches, not the last one alone
    g = recs[a - 1]["grad_norm"]
    assert g == pytest.approx(_reference_grad_norm(cfg, [0, 1]), rel=1e-4)
    assert g != pytest.approx(_reference_grad_norm(cfg, [1]), rel=1e-2)

    # resumed after optimizer step 1: continues at micro-step a with DeepSpeed's boundaries in phase
    ckpt = list_checkpoints(tmp_path / "straight")[0]
    resumed = _run_accum(tmp_path, "resumed", resume=str(ckpt))
    assert resumed["start"]["step"] == 1 and resumed["start"]["global_steps"] == 1
    assert _same(resumed["start"]["params"], recs[a - 1]["params"])
    rr = resumed["records"]
    assert [(r["step"], r["micro"], r["global_steps"]) for r in rr] == \
           [(r["step"], r["micro"], r["global_steps"]) for r in recs[a:]]
    assert all(_same(x["params"], y["params"]) for x, y in zip(rr, recs[a:]))
    losses = {r["step"]: r["loss"] for r in read_metrics(tmp_path / "straight")}
    assert {r["step"]: r["loss"] for r in read_metrics(tmp_path / "resumed")} == {2: losses[2], 3: losses[3]}
    for which in ("online", "target"):
        x, y = load_consolidated(tmp_path / "straight", which), load_consolidated(tmp_path / "resumed", which)
        assert x["step"] == y["step"] == 3
        assert all(_same(x[part], y[part]) for part in ("encoder", "predictor")), which


def _train(run_dir, *opts, resume=None) -> subprocess.CompletedProcess:
    return launch("tools/train.py", *train_args(run_dir, *OPTS, *opts, resume=resume), nproc=2, timeout=600)


def test_exact_resume_with_video_files_and_workers(tmp_path):
    """CPU video backend, 2 ranks x 2 DataLoader workers: 4 steps straight == stop after 2 + resume."""
    from vjepa_scale.data.synthetic_videos import write_synthetic_videos

    index = write_synthetic_videos(tmp_path / "videos", 12, 12, 48, ("h264", "vp9"), val_fraction=0)["train"]
    opts = ["data.backend=cpu", f"data.datasets=[{{path: {index}}}]", "data.num_workers=2", "data.frame_step=2",
            "optim.iterations=4", "train.checkpoint_every=2"]
    straight = tmp_path / "straight"
    r = _train(straight, *opts)
    assert_ok(r)
    losses = {x["step"]: x["loss"] for x in read_metrics(straight)}
    assert sorted(losses) == [1, 2, 3, 4]
    used = load_config(straight / "config.yaml").data
    assert used.backend == "cpu" and used.num_workers == 2 and used.global_batch_size == 8
    # a run stopped after step 2 is its step-2 checkpoint: resume from it into a fresh run dir
    ckpt = list_checkpoints(straight)[0]
    assert ckpt.name == "step_00000002"
    resumed = tmp_path / "resumed"
    rr = _train(resumed, *opts, resume=str(ckpt))
    assert_ok(rr)
    assert "resumed from" in rr.stdout + rr.stderr
    assert {x["step"]: x["loss"] for x in read_metrics(resumed)} == {3: losses[3], 4: losses[4]}
    for which in ("online", "target"):
        x, y = load_consolidated(straight, which), load_consolidated(resumed, which)
        assert x["step"] == y["step"] == 4
        assert all(_same(x[part], y[part]) for part in ("encoder", "predictor")), which

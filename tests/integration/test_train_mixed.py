"""2-rank ZeRO-3 run on mixed shapes: two video sets of different clip shapes plus an image set in
packed batches filled to a token budget; the loss falls and a resume is bitwise exact."""
from __future__ import annotations

import pytest
import torch

from helpers import assert_ok, launch, require, train_args, write_images
from vjepa_scale.train.metrics import read_metrics
from vjepa_scale.weights import list_checkpoints, load_consolidated

require("deepspeed")
require("av")
pytestmark = pytest.mark.slow
STEPS = 6


def _opts(a, b, img):
    datasets = (f"data.datasets=[{{path: '{a}', frames_per_clip: 4, crop_size: 32}},"
                f" {{path: '{b}', frames_per_clip: 2, crop_size: 64}}, {{path: '{img}', crop_size: 32}}]")
    return ["model.depth=1", "data.backend=cpu", "data.crop_size=32", "data.frames_per_clip=4", "data.frame_step=2",
            "data.global_batch_size=null", "data.tokens_per_batch=48", datasets, f"optim.iterations={STEPS}",
            "optim.ema=[0.5,0.7]", "train.log_every=1", "train.keep_last=10", "train.checkpoint_every=3"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    from vjepa_scale.data.synthetic_videos import write_synthetic_videos

    base = tmp_path_factory.mktemp("mixed_train")
    a = write_synthetic_videos(base / "a", 8, 12, 32, ("vp9",), val_fraction=0)["train"]
    b = write_synthetic_videos(base / "b", 8, 12, 48, ("vp9",), val_fraction=0, seed=1)["train"]
    img = write_images(base / "img", 8)
    straight, resumed = base / "straight", base / "resumed"
    r = launch("tools/train.py", *train_args(straight, *_opts(a, b, img)), nproc=2)
    assert_ok(r)
    ckpt = list_checkpoints(straight)[0]
    assert ckpt.name == "step_00000003"
    rr = launch("tools/train.py", *train_args(resumed, *_opts(a, b, img), resume=str(ckpt)), nproc=2)
    assert_ok(rr)
    return {"straight": straight, "resumed": resumed}


def test_mixed_shapes_train_with_a_falling_loss(runs):
    recs = read_metrics(runs["straight"])
    losses = {r["step"]: r["loss"] for r in recs}
    assert sorted(losses) == list(range(1, STEPS + 1))
    assert losses[STEPS] < losses[1] - 0.02, losses
    # clips per step vary with the shapes drawn; tokens/s and clips/s are both measured
    assert all(r["clips_per_s"] > 0 and r["tokens_per_s"] > 0 for r in recs)
    assert len({r["clips_per_step"] for r in recs}) > 1
    assert all(r["tokens_per_s"] <= r["clips_per_s"] * 16 + 1e-6 for r in recs)
    # each log window's trained clips per dataset (2 ranks summed), as shares
    assert all(abs(sum(r[f"data_share_{i}"] for i in range(3)) - 1) < 1e-8 for r in recs)  # 9 digits each


def test_mixed_shapes_resume_is_exact(runs):
    a = {r["step"]: r["loss"] for r in read_metrics(runs["straight"])}
    b = {r["step"]: r["loss"] for r in read_metrics(runs["resumed"])}
    assert [b[s] for s in range(4, STEPS + 1)] == [a[s] for s in range(4, STEPS + 1)]
    for which in ("online", "target"):
        x, y = load_consolidated(runs["straight"], which), load_consolidated(runs["resumed"], which)
        for part in ("encoder", "predictor"):
            assert all(torch.equal(x[part][k], y[part][k]) for k in x[part]), (which, part)

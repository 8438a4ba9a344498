"""Mixed-shape data: per-dataset clip shapes, image datasets, token-budget batches, one shape per step."""
from __future__ import annotations

import dataclasses

import pytest
import numpy as np
import torch

from helpers import needs, require, video_cfg, write_images
from vjepa_scale.config import DatasetSpec
from vjepa_scale.data import build_dataloader
from vjepa_scale.data.sampler import BudgetStepSampler, MixturePlan, ShapePerStepSampler, TokenBudget
from vjepa_scale.mixed import MixedVideo

require("av")


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    from vjepa_scale.data.synthetic_videos import write_synthetic_videos

    base = tmp_path_factory.mktemp("mixed")
    a = write_synthetic_videos(base / "a", 4, 12, 32, ("vp9",), val_fraction=0)["train"]
    b = write_synthetic_videos(base / "b", 4, 12, 32, ("vp9",), val_fraction=0, seed=1)["train"]
    return a, b, write_images(base / "img", 5)


def _cfg(sets, **data_kw):
    a, b, img = sets
    cfg = video_cfg([(a, 1.0)], frames=4, crop=32, batch=4)
    cfg.data = dataclasses.replace(cfg.data, datasets=[DatasetSpec(str(a)), DatasetSpec(str(b), 1.0, 2, 64),
                                                       DatasetSpec(str(img))], **data_kw)
    return cfg.validate()


def test_token_budget_batches_stay_within_the_budget():
    sizes, tokens = [10, 10, 10], [8, 16, 4]
    budget = TokenBudget(sizes, tokens, 40)
    assert budget.window() == 10
    mix = MixturePlan(sizes, [1, 1, 1], 0)
    per_rank = [BudgetStepSampler(30, budget.window(), r, 2, 0, 0, 20, mixture=mix, budget=budget) for r in (0, 1)]
    again = BudgetStepSampler(30, budget.window(), 1, 2, 0, 7, 13, mixture=mix, budget=budget)
    counts = set()
    for r, s in enumerate(per_rank):
        batches = list(s)
        for step, batch in enumerate(batches):
            used = sum(budget.tokens(i) for i, _, _ in batch)
            assert used <= 40 and batch, (step, batch)
            # full: the next clip of the window would not have fit
            window = s.batch_indices(step)
            if len(batch) < len(window):
                assert used + budget.tokens(window[len(batch)]) > 40
            assert [slot for _, _, slot in batch] == list(range(r * 10, r * 10 + len(batch)))
            counts.add(len(batch))
        if r == 1:
            assert list(again) == batches[7:]  # a pure function of (seed, step, rank): resumable
    assert len(counts) > 1  # the clips per batch vary with the shapes drawn


def test_per_step_sampler_one_shape_per_step_and_resumable():
    sizes, weights = [6, 6, 4], [1.0, 1.0, 2.0]
    groups = [[0], [1, 2]]
    make = lambda rank, start=0, n=40: ShapePerStepSampler(sizes, weights, groups, [3, 2], rank, 2, 5, start, n)
    s0, s1 = list(make(0)), list(make(1))
    seen = {0: [], 1: []}
    for step, (b0, b1) in enumerate(zip(s0, s1)):
        k = make(0).group_at(step)
        in_group = lambda i: (i < 6) if k == 0 else (i >= 6)
        assert all(in_group(i) for i, _, _ in b0 + b1) and len(b0) == len(b1) == [3, 2][k]
        assert not {i for i, _, _ in b0} & {i for i, _, _ in b1} or k == 1  # disjoint within an epoch of group 0
        seen[k] += [i for i, _, _ in b0 + b1]
    assert seen[0] and seen[1]  # both shapes drawn
    assert sorted(seen[0][:6]) == list(range(6))  # group 0's stream: a permutation per epoch
    assert list(make(1, 17, 23)) == s1[17:]


def test_per_step_sampler_counts_far_into_a_run_with_bounded_state():
    """Group counts at large steps equal a count over every step's draw, in any query order, while
    the sampler keeps a few blocks of draws, not one per 4096 steps of the run."""
    s = ShapePerStepSampler([6, 6, 4], [1.0, 1.0, 2.0], [[0], [1, 2]], [3, 2], seed=5)
    B = s.BLOCK
    draws = np.concatenate([s._draw_block(b) for b in range(12)])
    for step in (11 * B + 7, 3 * B, 5 * B + 1, 12 * B - 1, 0):
        for k in (0, 1):
            assert s.count_before(k, step) == int((draws[:step] == k).sum())
        assert s.group_at(step) == draws[step]
    assert len(s._blocks) <= 4


def test_packed_mixing_loader_yields_mixed_batches(sets):
    cfg = _cfg(sets, tokens_per_batch=40)
    batches = list(build_dataloader(cfg, rank=0, world_size=1, start_step=0, num_steps=6))
    assert any(isinstance(b.video, MixedVideo) for b in batches)
    grids = set()
    for b in batches:
        assert b.num_tokens <= 40 and b.masks.batch_size == len(b.index) == len(b.label)
        shapes = b.video.sample_shapes() if isinstance(b.video, MixedVideo) else [tuple(b.video.shape[1:])] * len(b.index)
        for sh, g in zip(shapes, b.masks.sample_grids or [b.masks.grid] * len(shapes)):
            assert (sh[1] // 2, sh[2] // 16, sh[3] // 16) == tuple(g)
            grids.add(tuple(g))
    assert {(2, 2, 2), (1, 4, 4), (1, 2, 2)} <= grids  # videos 4x32, videos 2x64, images (one tubelet)
    again = list(build_dataloader(cfg, rank=0, world_size=1, start_step=3, num_steps=3))
    for x, y in zip(batches[3:], again):
        assert x.index == y.index and torch.equal(x.masks.ctx_idx, y.masks.ctx_idx)


def test_image_clip_is_the_image_repeated_to_one_tubelet(sets):
    cfg = _cfg(sets)
    from vjepa_scale.data import build_dataset

    ds = build_dataset(cfg)
    i = ds.index.starts[2]
    item = ds[(i, 0, 0)]
    assert item["video"].shape == (3, 2, 32, 32)
    assert torch.equal(item["video"][:, 0], item["video"][:, 1])


def _masks_fit_the_clips(b):
    """A uniform batch's masks are drawn on its clips' own token grid and index inside its tokens."""
    _, _, T, H, W = b.video.shape
    grid = (T // 2, H // 16, W // 16)
    assert tuple(b.masks.grid) == grid and b.masks.total_tokens == len(b.index) * grid[0] * grid[1] * grid[2]
    for idx in (b.masks.ctx_idx, b.masks.tgt_idx):
        assert 0 <= int(idx.min()) and int(idx.max()) < b.masks.total_tokens
    return grid


def test_per_step_mixing_loader_masks_each_step_on_its_shape(sets):
    cfg = _cfg(sets, mixing="per_step")
    grids = set()
    for b in build_dataloader(cfg, rank=0, world_size=1, start_step=0, num_steps=12):
        assert isinstance(b.video, torch.Tensor) and not b.masks.mixed
        grids.add(_masks_fit_the_clips(b))
    assert {(2, 2, 2), (1, 4, 4), (1, 2, 2)} <= grids  # data's 4x32, the 2x64 set, images


@pytest.mark.parametrize("which", ["own_shape", "images"])
def test_one_dataset_of_another_shape_than_data_is_masked_on_its_grid(sets, which):
    a, b, img = sets
    spec = DatasetSpec(str(b), 1.0, 2, 64) if which == "own_shape" else DatasetSpec(str(img))
    cfg = _cfg(sets)
    cfg.data = dataclasses.replace(cfg.data, datasets=[spec])
    cfg.validate()
    assert not cfg.data.one_video_shape(cfg.model.tubelet_size) and not cfg.data.is_mixed(cfg.model.tubelet_size)
    for batch in build_dataloader(cfg, rank=0, world_size=1, start_step=0, num_steps=3):
        assert _masks_fit_the_clips(batch) == ((1, 4, 4) if which == "own_shape" else (1, 2, 2))


@needs("nvidia.dali")
def test_dali_backend_leaves_what_its_pipelines_cannot_read_to_the_cpu_decoder(sets, caplog):
    a, b, img = sets
    cfg = _cfg(sets)
    cfg.data = dataclasses.replace(cfg.data, backend="dali", datasets=[DatasetSpec(str(b), 1.0, 2, 64)])
    cfg.validate()
    with caplog.at_level("WARNING", logger="vjepa_scale.data"):
        loader = build_dataloader(cfg, rank=0, world_size=1, start_step=0, num_steps=1)
    assert type(loader).__name__ == "VideoLoader" and "decoded by the cpu backend" in caplog.text
    assert _masks_fit_the_clips(next(iter(loader))) == (1, 4, 4)
    cfg.data = dataclasses.replace(cfg.data, datasets=[DatasetSpec(str(a), 1.0)])
    assert cfg.data.one_video_shape(cfg.model.tubelet_size)


def test_per_step_phases_that_change_the_global_batch_are_refused_up_front(sets):
    """per_step streams advance per micro-step: a phase (or an elastic resume) that would continue the
    stream at another position is a ConfigError before any step, naming the phase."""
    from vjepa_scale.config import ConfigError, PhaseConfig
    from vjepa_scale.train.launch import preflight
    from vjepa_scale.train.phases import check_per_step_offsets, plan

    cfg = _cfg(sets, mixing="per_step")
    cfg.optim.iterations = 4
    cfg.phases = [PhaseConfig(steps=2), PhaseConfig(global_batch_size=8)]
    cfg.validate()
    with pytest.raises(ConfigError, match=r"per_step .* phases\[1\] takes 8 clips per step where the phases "
                                          r"before it took \[4\]\. To run this, keep the global batch"):
        preflight(cfg, 1)
    cfg.phases = [PhaseConfig(steps=2), PhaseConfig(global_batch_size=4)]  # the same batch: one stream
    phases = plan(preflight(cfg.validate(), 1), 1)
    with pytest.raises(ConfigError, match=r"per_step .*: resuming run/ckpt: the global batch changed"):
        check_per_step_offsets(phases, base=6, cause="resuming run/ckpt: the global batch changed")
    cfg.data = dataclasses.replace(cfg.data, mixing="packed")
    cfg.phases = [PhaseConfig(steps=2), PhaseConfig(global_batch_size=8)]
    preflight(cfg.validate(), 1)  # packed batches continue at any stream position
    # under a token budget the batch is the budget's window (stream positions): the advice names the budget
    cfg.data = dataclasses.replace(cfg.data, mixing="per_step", tokens_per_batch=40, batch_size=None,
                                   global_batch_size=None)
    cfg.phases = [PhaseConfig(steps=2), PhaseConfig(crop_size=48)]  # images: 9 tokens, not 4 (the smallest)
    with pytest.raises(ConfigError, match=r"phases\[1\] takes 4 stream positions \(token-budget windows\) per step "
                                          r"where the phases before it took \[10\]\. To run this, keep "
                                          r"data.tokens_per_batch, the smallest clip shape"):
        preflight(cfg.validate(), 1)
    cfg.phases = []
    (phase,) = plan(preflight(cfg.validate(), 1), 1)
    assert "token budget 40 per rank (a window of 10 stream positions)" in phase.describe()


def test_per_step_keeps_shapes_of_equal_token_counts_apart(sets):
    """per_step: one clip shape per micro-step also when two shapes have the same token count (8-frame 32 px
    videos and 64 px images: 16 tokens each); packed batches with batch_min truncation are refused (it would
    cut every sample to the smallest shape's masks)."""
    from vjepa_scale.config import ConfigError

    a, _, img = sets
    cfg = video_cfg([(a, 1.0)], frames=8, step=1, crop=32, batch=2)
    cfg.data = dataclasses.replace(cfg.data, datasets=[DatasetSpec(str(a)), DatasetSpec(str(img), 1.0, None, 64)],
                                   mixing="per_step")
    grids = set()
    for b in build_dataloader(cfg.validate(), rank=0, world_size=1, start_step=0, num_steps=8):
        assert isinstance(b.video, torch.Tensor) and not b.masks.mixed
        grids.add(_masks_fit_the_clips(b))
    assert grids == {(4, 2, 2), (1, 4, 4)}
    cfg.mask = dataclasses.replace(cfg.mask, truncate="batch_min")
    cfg.validate()  # one shape per batch: the reference's truncation applies
    cfg.data = dataclasses.replace(cfg.data, mixing="packed")
    with pytest.raises(ConfigError, match=r"mask.truncate: batch_min .*\(data.mixing: packed\) is the smallest "
                                          r"shape's: use data.mixing: per_step"):
        cfg.validate()
    from vjepa_scale.config import PhaseConfig  # a phase whose crop makes data's shape differ from b's own

    b = sets[1]
    cfg.data = dataclasses.replace(cfg.data, datasets=[DatasetSpec(str(a)), DatasetSpec(str(b), 1.0, 8, 32)])
    cfg.optim.iterations = 4
    cfg.validate()  # one shape: 8 frames x 32 px
    cfg.phases = [PhaseConfig(steps=2), PhaseConfig(crop_size=64)]
    with pytest.raises(ConfigError, match=r"clip shapes mixed in one batch in phases\[1\] \(data.mixing: packed\)"):
        cfg.validate()
    cfg.data = dataclasses.replace(cfg.data, crop_size=64)  # data's own shape never trains: every phase sets 32
    cfg.phases = [PhaseConfig(steps=2, crop_size=32), PhaseConfig(crop_size=32)]
    cfg.validate()


def test_a_grid_the_mask_blocks_always_cover_is_refused_in_preflight(sets):
    """An image set at a crop of one patch (token grid 1x1x1) leaves no context under any mask: pre-flight
    refuses it naming the dataset and its grid (it used to fail at the first batch)."""
    from vjepa_scale.config import ConfigError
    from vjepa_scale.train.launch import preflight

    a, _, img = sets
    cfg = video_cfg([(a, 1.0)], frames=4, crop=32, batch=2)
    cfg.data = dataclasses.replace(cfg.data, datasets=[DatasetSpec(str(a)), DatasetSpec(str(img), 1.0, None, 16)])
    with pytest.raises(ConfigError, match=r"^data.datasets\[1\] \(2 frames x 16 px\), token grid \(1, 1, 1\): "
                                          r"mask.types\[0\]: blocks of shape \(1, 1, 1\) .* left no context"):
        preflight(cfg.validate(), 1)
    cfg.data = dataclasses.replace(cfg.data, datasets=[DatasetSpec(str(a)), DatasetSpec(str(img), 1.0, None, 32)])
    preflight(cfg.validate(), 1)


def test_a_mixtures_trained_shares_per_dataset_are_logged(sets):
    """`dataset_clips` counts a step's clips per index file; the log window turns the counts into
    data_share_<i> (of all ranks' trained clips), only for a mixture of several datasets."""
    from vjepa_scale.data import dataset_clips
    from vjepa_scale.train.metrics import StepWindow

    a, b, _ = sets
    cfg = video_cfg([(a, 1.0), (b, 3.0)], frames=4, crop=32, batch=4)
    loader = build_dataloader(cfg, rank=0, world_size=1, start_step=0, num_steps=6)
    batches = list(loader)
    counts = dataset_clips(loader, batches)
    first_b = loader.index.starts[1]
    entries = [i for x in batches for i in x.index]
    assert counts == [sum(i < first_b for i in entries), sum(i >= first_b for i in entries)]
    assert sum(counts) == 24 and counts[1] > counts[0]  # weights 1:3
    window = StepWindow(torch.device("cpu"), 1, 4, 8, None, num_datasets=2)
    stats = {"lr": 1e-3, "weight_decay": 0.04, "momentum": 0.998}
    for x in batches:
        window.add(torch.tensor(0.5), 0.0, 0.1, 1.0, 4, 32, dataset_clips(loader, [x]))
    m = window.summary(stats, 0, None)
    assert (m["data_share_0"], m["data_share_1"]) == (counts[0] / 24, counts[1] / 24)
    one = StepWindow(torch.device("cpu"), 1, 4, 8, None, num_datasets=1)  # one dataset: nothing to compare
    one.add(torch.tensor(0.5), 0.0, 0.1, 1.0, 4, 32, None)
    assert not any(k.startswith("data_share") for k in one.summary(stats, 0, None))
    single = build_dataloader(video_cfg([(a, 1.0)], frames=4, crop=32, batch=4), num_steps=1)
    assert dataset_clips(single, list(single)) is None

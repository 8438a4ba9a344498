"""Data on real-footage failure modes (issue 16): truncated files with an intact header, variable frame
rates, runs of missing files, unbiased substitution, rotation, index labels, eval skips, skip metrics.

Every file is generated here with PyAV; DALI runs in CPU mode (VP9) where it applies.
"""
from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from helpers import frame_ids, needs, single_process_group, video_cfg, write_index
from vjepa_scale.config import ConfigError, load_config
from vjepa_scale.data import NoReadableVideosError, build_dataloader
from vjepa_scale.data.clips import normalize_clip, plan_clips, plan_video, stored_box
from vjepa_scale.data.decode import VideoError, probe_video
from vjepa_scale.data.index import read_index
from vjepa_scale.data.sampler import StepBatchSampler
from vjepa_scale.data.skips import substitute
from vjepa_scale.data.synthetic_videos import frame_index_frames, moving_shape_frames, write_video

needs_dali = needs("nvidia.dali")
BACKENDS = ["cpu", pytest.param("dali", marks=needs_dali)]
VFR_MS = np.cumsum([0] + [40 if i % 3 else 200 for i in range(29)]).tolist()  # 30 frames, 40 / 200 ms apart


@pytest.fixture(scope="module")
def vp9_files(tmp_path_factory):
    """Three 30-frame frame_index VP9 files (48 x 32), a VFR one, and a moving-shape one cut to 30% (header
    intact)."""
    d = tmp_path_factory.mktemp("footage")
    good = []
    for k in range(3):
        good.append(str(d / f"good{k}.webm"))
        write_video(good[-1], frame_index_frames(30, 32, 48), 8, "vp9")
    vfr = str(d / "vfr.webm")
    write_video(vfr, frame_index_frames(30, 32, 48), 8, "vp9", timestamps_ms=VFR_MS)
    full, cut = d / "full.webm", d / "cut.webm"
    write_video(full, moving_shape_frames(0, 30, 48, np.random.default_rng(0)), 8, "vp9")  # 30 frames, 3.75 s
    data = full.read_bytes()
    cut.write_bytes(data[: len(data) * 3 // 10])
    return {"dir": d, "good": good, "vfr": vfr, "cut": str(cut)}


@pytest.mark.parametrize("backend", BACKENDS)
def test_truncated_with_header_skipped_and_counted(vp9_files, backend, tmp_path):
    """A VP9 webm cut to 30% (header says 30 frames / 3.75 s): skipped with kind "truncated" and counted on
    every backend; no clip of it is ever trained on, and every clip has its planned frames."""
    cut = vp9_files["cut"]
    with pytest.raises(VideoError, match="truncated") as e:
        probe_video(cut)
    assert e.value.kind == "truncated"
    index = write_index(tmp_path / "i.txt", vp9_files["good"] + [cut])
    cfg = video_cfg([(index, 1.0)], backend, frames=4, step=3)
    loader = build_dataloader(cfg, num_steps=10)  # 20 draws over 4 entries: the cut one 5 times at least
    for batch in loader:
        assert 3 not in batch.index
        for b, i in enumerate(batch.index):
            got = frame_ids(batch.video[b])
            assert np.all(np.diff(got) == 3) and len(set(got)) == 4  # exact stride, no frozen frame
            if not batch.skipped:  # (a replacement's plan is keyed by the entry it replaces)
                info = probe_video(vp9_files["good"][i])
                assert got == list(plan_video(info, cfg.data, 0, batch.step, i)[0].frames)
    assert list(loader.skipped_files) == [cut] and loader.skipped_files[cut] >= 5
    assert loader.tracker.kinds == {"truncated": loader.skipped_files[cut]}


@pytest.mark.parametrize("backend", BACKENDS)
def test_vfr_webm_gives_clips_every_draw_at_stride(vp9_files, backend, tmp_path):
    """A 30-frame VFR webm (frames 40 or 200 ms apart, duration x fps would say 23): exact count 30, a clip
    every draw, frames picked by index at the configured stride (seek path included)."""
    info = probe_video(vp9_files["vfr"])
    assert info.num_frames == 30 and info.variable_frame_rate and len(info.frame_pts) == 30
    index = write_index(tmp_path / "vfr.txt", [vp9_files["vfr"]])
    cfg = video_cfg([(index, 1.0)], backend, frames=4, step=3)
    starts = set()
    for batch in build_dataloader(cfg, num_steps=20):  # 40 draws
        assert batch.skipped == []
        for b in range(2):
            (plan,) = plan_video(info, cfg.data, 0, batch.step, 0)
            got = frame_ids(batch.video[b])
            assert got == list(plan.frames) and np.all(np.diff(got) == 3)
            starts.add(got[0])
    assert max(starts) >= 8 and min(starts) < 8  # both decode paths: from the start and after a seek


def test_probe_counts_frames_exactly_not_from_duration(vp9_files):
    for path in vp9_files["good"]:
        info = probe_video(path)
        assert info.num_frames == 30 and not info.variable_frame_rate and len(info.frame_pts) == 30
        assert info.fps == pytest.approx(8.0) and info.keyframes >= 1


def upright_and_stored(k: int) -> tuple[np.ndarray, np.ndarray]:
    """(upright frames (T, 48, 32, 3), stored frames = upright turned back by k quarter turns)."""
    up = np.array(frame_index_frames(20, 48, 32), dtype=np.int32)
    up[:, :24, :16] += 120  # a bright top-left quadrant: wrong orientation moves it
    up[:, 36:, :, 0] = 0  # a red-free bottom band
    up = np.clip(up, 0, 255).astype(np.uint8)
    return up, np.ascontiguousarray(np.rot90(up, -k, axes=(1, 2)))


@pytest.mark.parametrize("backend,codec,rotation", [("cpu", "h264", 90), ("cpu", "vp9", 270), ("cpu", "h264", 180),
                                                    pytest.param("dali", "vp9", 90, marks=needs_dali)])
def test_rotated_video_comes_out_upright(tmp_path, backend, codec, rotation):
    """A file stored sideways with a display rotation: clips equal the upright picture's (same box on the
    upright picture, same flip), far from the stored orientation's."""
    up, stored = upright_and_stored(rotation // 90)
    path = str(tmp_path / f"rot{rotation}{'.mp4' if codec == 'h264' else '.webm'}")
    write_video(path, stored, 8, codec, rotation=rotation)
    info = probe_video(path)
    assert info.rotation == rotation and info.display_size == (48, 32)
    cfg = video_cfg([(write_index(tmp_path / "r.txt", [path]), 1.0)], backend, frames=4, step=2,
                    random_resize_scale=(0.5, 1.0))
    flips = set()
    for batch in build_dataloader(cfg, num_steps=4):
        for b in range(2):
            (plan,) = plan_clips(20, 48, 32, cfg.data, 0, batch.step, 0)  # planned on the upright picture
            want = normalize_clip(torch.from_numpy(up[list(plan.frames)]), plan.box, plan.flip, 32)
            sideways = normalize_clip(torch.from_numpy(up[list(plan.frames)]).transpose(1, 2).contiguous(),
                                      plan.box[1::-1] + plan.box[:1:-1], plan.flip, 32)
            err = (batch.video[b] - want).abs().mean()
            assert err < 0.08, err  # codec and colour-conversion noise only
            assert (batch.video[b] - sideways).abs().mean() > 3 * err
            flips.add(plan.flip)
    assert flips == {True, False}


def test_stored_box_maps_upright_crops():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (7, 5))
    for k in range(4):
        up = np.rot90(img, k)
        for box in [(0, 0, 2, 3), (1, 2, 3, 2), (up.shape[0] - 2, up.shape[1] - 1, 2, 1)]:
            t, l, h, w = stored_box(box, 90 * k, *img.shape)
            crop = np.rot90(img[t:t + h, l:l + w], k)
            assert np.array_equal(crop, up[box[0]:box[0] + box[2], box[1]:box[1] + box[3]])


def test_draw_counts_after_a_run_of_bad_entries_stay_within_noise():
    """60 entries, 10..29 unusable (a missing folder in a sorted index), 50 epochs of the real sampler.

    Each good entry is its own draw once per epoch (50) plus a share of the 1000 replacements, which the
    uniform policy spreads evenly: 1000 / 40 = 25 each, sd sqrt(1000 * 1/40 * 39/40) = 4.94. Bound: every
    count within 6 sd of 75 (each breach p < 2e-9) and chi-square of the replacement counts < 100 on 39
    degrees of freedom (p < 1e-6). The old next-entry policy gives entry 30 all 1000 (z > 190).
    """
    n, bad = 60, set(range(10, 30))

    def entry(i):
        if i in bad:
            raise VideoError(f"v{i}.mp4", "file does not exist", "missing")
        return i

    sampler = StepBatchSampler(n, 4, seed=3, num_steps=50 * n // 4)
    used = np.zeros(n, int)
    for batch in sampler:
        for index, step, slot in batch:
            used[substitute(index, n, entry, seed=3, step=step, slot=slot, max_bad_fraction=0.5)[0]] += 1
    good = np.array(sorted(set(range(n)) - bad))
    assert used[list(bad)].sum() == 0 and used.sum() == 50 * n
    sd = np.sqrt(1000 / 40 * 39 / 40)
    assert np.abs(used[good] - 75).max() < 6 * sd, used[good]
    replaced = used[good] - 50
    assert ((replaced - 25) ** 2 / 25).sum() < 100


def test_two_slots_replaced_by_the_same_file_get_different_clips(tmp_path):
    path = str(tmp_path / "one.webm")
    write_video(path, moving_shape_frames(0, 12, 32, np.random.default_rng(0)), 8, "vp9")
    index = write_index(tmp_path / "i.txt", [path, str(tmp_path / "gone1.mp4"), str(tmp_path / "gone2.mp4")])
    cfg = video_cfg([(index, 1.0)], frames=4, step=2, batch=3, max_bad_fraction=0.9)
    batch = next(iter(build_dataloader(cfg, num_steps=1)))  # one epoch: the good file fills every slot
    assert batch.index == [0, 0, 0] and len(batch.skipped) >= 2
    for a in range(3):
        for b in range(a):
            assert not torch.equal(batch.video[a], batch.video[b])


def test_bad_share_above_the_limit_ends_with_a_clear_error(tmp_path):
    path = str(tmp_path / "one.webm")
    write_video(path, moving_shape_frames(0, 12, 32, np.random.default_rng(0)), 8, "vp9")
    index = write_index(tmp_path / "i.txt", [path] + [str(tmp_path / f"gone{k}.mp4") for k in range(39)])
    cfg = video_cfg([(index, 1.0)], frames=4, step=2, batch=4, max_bad_fraction=0.5)
    with pytest.raises(NoReadableVideosError, match=r"data.max_bad_fraction=0.5"):
        for _ in build_dataloader(cfg, num_steps=10):
            pass


def test_index_labels_and_paths_with_spaces(tmp_path):
    spaced = tmp_path / "my clips" / "a clip.webm"
    spaced.parent.mkdir()
    write_video(spaced, frame_index_frames(12, 32, 32), 8, "vp9")
    index = tmp_path / "i.txt"
    index.write_text(f"# comment\n{spaced} 3\nplain.mp4\n")
    paths, labels = read_index(index)
    assert paths == [str(spaced), str(tmp_path / "plain.mp4")] and labels == [3, -1]
    batch = next(iter(build_dataloader(video_cfg([(index, 1.0)], frames=4, step=2, batch=1), num_steps=1)))
    assert batch.index == [0] and batch.label.tolist() == [3]
    bad = tmp_path / "bad.txt"
    bad.write_text(f"{spaced} 3\nclip.mp4 cat\n")
    with pytest.raises(ConfigError, match=r"bad.txt:2: label 'cat' is not an integer"):
        read_index(bad)
    with pytest.raises(ConfigError, match=r"bad.txt:2: label 'cat' is not an integer"):
        build_dataloader(video_cfg([(bad, 1.0)]), num_steps=1)


def test_eval_leaves_out_and_counts_bad_files(vp9_files, tmp_path):
    from vjepa_scale.config import ModelConfig
    from vjepa_scale.eval.config import EvalDataConfig
    from vjepa_scale.eval.data import EvalClips
    from vjepa_scale.eval.features import extract_features
    from vjepa_scale.models.vit import VisionTransformer3D

    missing = str(tmp_path / "missing.webm")
    paths = [vp9_files["good"][0], missing, vp9_files["cut"], vp9_files["good"][1]]
    cfg = EvalDataConfig(train_index="x", val_index="x", frames_per_clip=4, frame_step=2, crop_size=32)
    clips = EvalClips(paths, [0, 1, 0, 1], cfg)
    assert clips[1]["video"] is None and clips[1]["skipped"] == (missing, "missing: file does not exist")
    enc = VisionTransformer3D(ModelConfig(size="tiny", depth=1, width=48, num_heads=3, patch_size=16), (2, 2, 2))
    fs = extract_features(enc.eval(), clips, batch_size=2, device=torch.device("cpu"), progress=False)
    assert fs.index_M.tolist() == [0, 3] and fs.labels_M.tolist() == [0, 1]
    assert [p for p, _ in fs.skipped] == [missing, vp9_files["cut"]] and fs.skipped[1][1].startswith("truncated")



def _index_with_a_run_of_missing_files(tmp_path, good: int, missing: int, after: int, seed: int):
    """(an index of `good` small VP9 videos with a run of `missing` absent files after the first `after`
    (a sorted index whose folder is gone), the missing paths)."""
    rng = np.random.default_rng(seed)
    videos = []
    for k in range(good):
        videos.append(str(tmp_path / f"v{k:02d}.webm"))
        write_video(videos[-1], moving_shape_frames(k % 4, 8, 32, rng), 8, "vp9")
    gone = [str(tmp_path / "gone" / f"m{k:02d}.webm") for k in range(missing)]
    return write_index(tmp_path / "i.txt", videos[:after] + gone + videos[after:]), gone

def test_missing_run_trains_to_the_end_with_skips_in_metrics(tmp_path, caplog):
    """20 missing files in a row among 40 good ones: the Trainer (1 rank, real DeepSpeed) trains all 15 steps
    (one epoch), metrics.jsonl and tensorboard carry the skip counts, the epoch summary is logged."""
    from vjepa_scale.train.engine import Trainer
    from vjepa_scale.train.launch import preflight
    from vjepa_scale.train.metrics import read_metrics

    index, missing = _index_with_a_run_of_missing_files(tmp_path, 40, 20, after=10, seed=0)
    env = single_process_group()
    cfg = load_config("cpu_demo", ["model.depth=1", "data.backend=cpu", f"data.datasets=[{{path: {index}}}]",
                                   "data.crop_size=32", "data.frame_step=2", "data.global_batch_size=4",
                                   "optim.iterations=15", "train.log_every=5", "train.precision=fp32",
                                   "train.progress_bar=false", "train.checkpoint_every=15"])
    trainer = Trainer(preflight(cfg, env.world_size), tmp_path / "run", env=env)
    with caplog.at_level(logging.WARNING, logger="vjepa_scale.data"):
        trainer.fit()
    assert trainer.step == 15
    records = read_metrics(tmp_path / "run")
    assert [r["step"] for r in records] == [5, 10, 15]
    last = records[-1]
    assert last["data_skipped"] >= 20 and last["data_skipped_missing"] == last["data_skipped"]
    assert 0 < last["data_bad_share"] < 0.5 and records[0]["data_skipped"] <= last["data_skipped"]
    assert all(k.startswith("data_skipped_missing") or not k.startswith("data_skipped_") for k in last)
    summary = [r.getMessage() for r in caplog.records if "data epoch 0" in r.getMessage()]
    assert len(summary) == 1 and "missing x" in summary[0] and all(m in summary[0] for m in missing)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tb = EventAccumulator(str(tmp_path / "run" / "tb"))
    tb.Reload()
    assert [e.value for e in tb.Scalars("train/data_skipped")][-1] == last["data_skipped"]


def test_skip_counts_continue_across_a_resume_and_a_phase_boundary(tmp_path):
    """data_skipped (+ per kind, data_bad_share) are run totals: a run resumed from its step-4 checkpoint,
    and a run whose loader is rebuilt at a phase boundary at step 4, log what the uninterrupted run logs;
    the checkpoint's meta.json holds the totals so far (sums over ranks, so any world size continues them)."""
    import json
    import shutil

    from vjepa_scale.train.engine import Trainer
    from vjepa_scale.train.launch import preflight
    from vjepa_scale.train.metrics import read_metrics

    index, _ = _index_with_a_run_of_missing_files(tmp_path, 16, 8, after=8, seed=1)
    env = single_process_group()

    def run(name, *opts, resume=None):
        cfg = load_config("cpu_demo", ["model.depth=1", "data.backend=cpu", f"data.datasets=[{{path: {index}}}]",
                                       "data.crop_size=32", "data.frame_step=2", "data.global_batch_size=4",
                                       "optim.iterations=8", "train.log_every=2", "train.precision=fp32",
                                       "train.progress_bar=false", "train.checkpoint_every=4", *opts])
        Trainer(preflight(cfg, env.world_size), tmp_path / name, resume=resume, env=env).fit()
        return {r["step"]: {k: v for k, v in r.items() if k.startswith(("data_skipped", "data_bad"))}
                for r in read_metrics(tmp_path / name)}

    straight = run("straight")
    assert list(straight) == [2, 4, 6, 8] and 0 < straight[4]["data_skipped"] < straight[8]["data_skipped"]
    ckpt = tmp_path / "straight" / "checkpoints" / "step_00000004"
    saved = json.loads((ckpt / "meta.json").read_text())["data_skips"]
    assert saved["skipped"] == straight[4]["data_skipped"] == saved["kinds"]["missing"]
    shutil.copytree(ckpt, tmp_path / "resumed" / "checkpoints" / ckpt.name)
    resumed = run("resumed", resume=str(tmp_path / "resumed" / "checkpoints" / ckpt.name))
    assert resumed == {s: straight[s] for s in (6, 8)}
    assert run("phased", "phases=[{steps: 4}, {}]") == straight


def test_stored_box_maps_upright_crops_of_non_square_pixels():
    """Pixels twice as wide as high (sample aspect ratio 2), with every rotation: the stored box, shown at
    that aspect and turned upright, is the box drawn on the upright picture."""
    img = np.random.default_rng(0).integers(0, 255, (6, 5))
    shown = np.repeat(img, 2, axis=1)  # (6, 10): how the stored pixels are displayed
    for k in range(4):
        up = np.rot90(shown, k)
        for box in [(0, 0, 2, 2), (2, 2, 4, 2), (up.shape[0] - 2, up.shape[1] - 2, 2, 2), (0, 0, *up.shape)]:
            t, l, h, w = stored_box(box, 90 * k, *img.shape, sar=2.0)
            crop = np.rot90(np.repeat(img[t:t + h, l:l + w], 2, axis=1), k)
            assert np.array_equal(crop, up[box[0]:box[0] + box[2], box[1]:box[1] + box[3]]), (k, box)


@pytest.mark.parametrize("rotation", [0, 90])
def test_anamorphic_video_is_planned_on_its_display_size(tmp_path, rotation):
    """An H.264 file of 32 x 24 stored pixels with sample aspect ratio 2:1 shows 32 x 48: probed with its SAR
    and display size, and a full-picture square-aspect crop plan covers every stored pixel (planned on the
    stored 32 x 24 it would be a 24 x 24 part)."""
    from fractions import Fraction

    import av

    path = str(tmp_path / "anamorphic.mp4")
    with av.open(path, "w") as out:
        s = out.add_stream("libx264", rate=8, options={"preset": "ultrafast"})
        s.width, s.height, s.pix_fmt = 24, 32, "yuv420p"
        s.codec_context.sample_aspect_ratio = Fraction(2, 1)
        if rotation:
            s.set_display_rotation(rotation)
        for _ in range(4):
            out.mux(s.encode(av.VideoFrame.from_ndarray(np.zeros((32, 24, 3), np.uint8), format="rgb24")))
        out.mux(s.encode())
    info = probe_video(path)
    assert info.sar == 2.0 and info.display_size == ((48, 32) if rotation else (32, 48))
    cfg = video_cfg([(write_index(tmp_path / "a.txt", [path]), 1.0)], frames=2, step=1,
                    random_resize_scale=(1.0, 1.0), random_resize_aspect_ratio=(1.5, 1.5) if not rotation
                    else (2 / 3, 2 / 3))
    (plan,) = plan_video(info, cfg.data, 0, 0, 0)
    assert plan.box == (0, 0, 32, 24)

"""Frozen evaluation: probe numerics, index/config validation, clip sampling, features, probe training,
HF import (the command line end to end: integration/test_eval_e2e.py)."""
from __future__ import annotations

import dataclasses
import json
import math
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from helpers import TensorVideos, load_tool, require, separable_features, single_process_group
from vjepa_scale.config import ConfigError, ModelConfig
from vjepa_scale.eval.config import EvalConfig, EvalDataConfig, ProbeConfig, ProbeOptimConfig, load_eval_config
from vjepa_scale.eval.data import EvalClips, eval_frame_indices, read_labeled_index, view_boxes
from vjepa_scale.eval.encoder import eval_grid, load_frozen_encoder
from vjepa_scale.eval.features import FeatureSet, extract_features
from vjepa_scale.eval.probe import AttentiveProbe, CrossAttention
from vjepa_scale.eval.train_probe import evaluate, probe_lr, train_probe
from vjepa_scale.models import VisionTransformer3D
from vjepa_scale.weights import CheckpointMismatchError, check_state_dict, module_shapes


@pytest.fixture(autouse=True)
def one_thread():
    """The test machine is shared: one torch thread is much faster than two contended ones."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def tiny_model(**kw) -> ModelConfig:
    cfg = ModelConfig(size="tiny", depth=1, **kw)
    cfg.validate()
    return cfg


# ---------------------------------------------------------------- probe


def test_cross_attention_matches_reference():
    torch.manual_seed(0)
    D, h = 24, 4
    xa = CrossAttention(D, h)
    q_BQD, x_BND = torch.randn(2, 1, D), torch.randn(2, 7, D)
    Wq, bq = xa.q.weight, xa.q.bias
    Wk, Wv = xa.kv.weight[:D], xa.kv.weight[D:]
    bk, bv = xa.kv.bias[:D], xa.kv.bias[D:]
    out = []
    for b in range(2):
        heads = []
        for i in range(h):
            s = slice(i * D // h, (i + 1) * D // h)
            q = q_BQD[b] @ Wq[s].T + bq[s]
            k = x_BND[b] @ Wk[s].T + bk[s]
            v = x_BND[b] @ Wv[s].T + bv[s]
            heads.append(torch.softmax(q @ k.T / math.sqrt(D // h), -1) @ v)
        out.append(xa.proj(torch.cat(heads, -1)))
    torch.testing.assert_close(xa(q_BQD, x_BND), torch.stack(out), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind,self_blocks", [("v1", 0), ("v2", 3)])
def test_probe_shapes_and_designs(kind, self_blocks):
    probe = AttentiveProbe(ProbeConfig(kind=kind), 48, num_classes=5, encoder_heads=4)
    assert len(probe.self_blocks) == self_blocks
    logits = probe(torch.randn(3, 10, 48))
    assert logits.shape == (3, 5)
    # the probe is permutation-invariant over tokens (positions live in the features)
    x = torch.randn(2, 10, 48)
    torch.testing.assert_close(probe(x), probe(x[:, torch.randperm(10)]), rtol=1e-4, atol=1e-5)


def test_probe_heads_must_divide_encoder_width():
    with pytest.raises(ConfigError, match=r"probe.num_heads=5 does not divide the encoder width 192"):
        AttentiveProbe(ProbeConfig(num_heads=5), 192, num_classes=4, encoder_heads=3)


def test_probe_lr_schedule():
    assert probe_lr(0, 100, 10, 1e-4, 1e-3, 0.0) == pytest.approx(1e-4)
    assert probe_lr(10, 100, 10, 1e-4, 1e-3, 0.0) == pytest.approx(1e-3)
    assert probe_lr(55, 100, 10, 1e-4, 1e-3, 0.0) == pytest.approx(5e-4)
    assert probe_lr(100, 100, 10, 1e-4, 1e-3, 1e-6) == pytest.approx(1e-6)


# ---------------------------------------------------------------- index and config validation


def test_index_labels_missing_or_not_integer(tmp_path):
    good = tmp_path / "good.txt"
    good.write_text("# comment\nvids/a.mp4 0\n\n/abs/b.webm 3\n")
    paths, labels = read_labeled_index(good, "data.train_index")
    assert paths == [str(tmp_path / "vids/a.mp4"), "/abs/b.webm"] and labels == [0, 3]
    missing = tmp_path / "missing.txt"
    missing.write_text("a.mp4 1\nb.mp4\n")
    with pytest.raises(ConfigError, match=r"data.val_index: .*missing.txt:2: label missing"):
        read_labeled_index(missing, "data.val_index")
    bad = tmp_path / "bad.txt"
    bad.write_text("a.mp4 1\nb.mp4 1\nc.mp4 left\n")
    with pytest.raises(ConfigError, match=r"bad.txt:3: label 'left' is not an integer"):
        read_labeled_index(bad, "data.train_index")
    neg = tmp_path / "neg.txt"
    neg.write_text("a.mp4 -1\n")
    with pytest.raises(ConfigError, match=r"neg.txt:1: label -1 is negative"):
        read_labeled_index(neg, "data.train_index")
    with pytest.raises(ConfigError, match=r"data.train_index: index file .*nope.txt' does not exist"):
        read_labeled_index(tmp_path / "nope.txt", "data.train_index")


def test_eval_config_validation(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown config key 'probe.num_head'; did you mean 'probe.num_heads'"):
        load_eval_config(None, ["probe.num_head=4"])
    with pytest.raises(ConfigError, match=r"give encoder.checkpoint, encoder.hf_path or encoder.random_init=true"):
        load_eval_config(None, ["data.train_index=a", "data.val_index=b"])
    with pytest.raises(ConfigError, match=r"encoder.random_init needs a `model:` section or encoder.checkpoint"):
        load_eval_config(None, ["data.train_index=a", "data.val_index=b", "encoder.random_init=true"])
    with pytest.raises(ConfigError, match=r"probe.kind must be one of \['v1', 'v2'\]"):
        load_eval_config(None, ["probe.kind=v3"])
    with pytest.raises(ConfigError, match=r"encoder.which=online picks an encoder of a training checkpoint; an "
                                          r"export \(encoder.hf_path\) holds one encoder"):
        load_eval_config(None, ["data.train_index=a", "data.val_index=b", "encoder.hf_path=x", "encoder.which=online"])
    cfg = load_eval_config(None, ["data.train_index=a", "data.val_index=b", "encoder.random_init=true",
                                  "model.size=tiny", "run.seeds=[0,1,2]"])
    assert cfg.model.size == "tiny" and cfg.run.seeds == [0, 1, 2] and cfg.optim.epochs == 20
    assert cfg.optim.lr == 1e-3
    p = tmp_path / "probe.yaml"
    p.write_text("model: {size: tiny}\nencoder: {random_init: true}\ndata: {train_index: a, val_index: b}\n")
    assert load_eval_config(p).model.size == "tiny"
    assert load_eval_config("probe_motion", ["encoder.random_init=true", "model.size=tiny"]).run.seeds == [0, 1, 2]


@pytest.mark.parametrize("name,clips,classes", [("probe_k400_16x8x3", 8, 400), ("probe_ssv2_16x2x3", 2, 174)])
def test_reference_protocol_recipes_load_with_every_key_as_written(name, clips, classes):
    """The shipped V-JEPA 1 evaluation recipes: every key as the YAML says (none dropped or renamed), the
    reference's clip layout, augmented streamed training, global batch 256."""
    import yaml

    from helpers import ROOT

    raw = yaml.safe_load((ROOT / "configs" / f"{name}.yaml").read_text())
    cfg = load_eval_config(name, ["encoder.checkpoint=runs/x"])
    loaded = cfg.to_dict()
    for section, keys in raw.items():
        for key, value in keys.items():
            got = loaded[section][key]
            assert (list(got) if isinstance(got, (list, tuple)) else got) == value, (section, key)
    d = cfg.data
    assert (d.frames_per_clip, d.frame_step, d.num_clips, d.num_views, d.num_classes) == (16, 4, clips, 3, classes)
    assert d.train_augment and d.frame_spacing == "linspace" and cfg.run.features == "auto"
    assert (cfg.optim.batch_size, cfg.optim.epochs, cfg.optim.lr) == (256, 20, 1e-3)


def test_probe_batch_must_divide_over_the_ranks(monkeypatch):
    """optim.batch_size is per step over all ranks: 16 on 3 ranks is refused before any work (it was
    rounded to 15 silently)."""
    from vjepa_scale.eval.run import run_eval

    cfg = load_eval_config(None, ["data.train_index=missing_a", "data.val_index=missing_b", "encoder.random_init=true",
                                  "model.size=tiny"])
    monkeypatch.setenv("WORLD_SIZE", "3")
    with pytest.raises(ConfigError, match=r"optim.batch_size=16 \(samples per step over all ranks\) does not divide "
                                          r"over the 3 ranks"):
        run_eval(cfg)


def test_repeated_probe_seeds_are_refused():
    """`--seeds 0,1,1` would train seed 1 twice: the mean over 3 runs beside a per-seed dict of 2 keys."""
    base = ["data.train_index=a", "data.val_index=b", "encoder.random_init=true", "model.size=tiny"]
    with pytest.raises(ConfigError, match=r"^run.seeds=\[0, 1, 1, 2, 2\] repeats seed 1, 2: each seed trains one"):
        load_eval_config(None, [*base, "run.seeds=[0, 1, 1, 2, 2]"])
    assert load_eval_config(None, [*base, "run.seeds=[2, 0]"]).run.seeds == [2, 0]


def test_run_device_is_auto_cpu_cuda_or_cuda_index(capsys):
    """run.device=gpu was a torch RuntimeError traceback (exit 1): refused with the key and the allowed
    values when the config loads, and tools/eval_probe.py exits 2 with that message."""
    base = ["data.train_index=a", "data.val_index=b", "encoder.random_init=true", "model.size=tiny"]
    for bad in ("gpu", "cuda:x", "cuda:", "CPU", "mps"):
        with pytest.raises(ConfigError, match=rf"^run.device must be auto, cpu, cuda or cuda:N \(N: a GPU index\), "
                                              rf"got '{re.escape(bad)}'$"):
            load_eval_config(None, [*base, f"run.device={json.dumps(bad)}"])
    for ok in ("auto", "cpu", "cuda", "cuda:3"):
        assert load_eval_config(None, [*base, f"run.device={ok}"]).run.device == ok
    code = load_tool("eval_probe").main(["--random-init", *base, "run.device=gpu"])
    assert code == 2
    assert "error: run.device must be auto, cpu, cuda or cuda:N (N: a GPU index), got 'gpu'" in capsys.readouterr().err


def test_train_and_val_index_must_not_share_videos(tmp_path):
    """The same video in both index files (here once as a relative path, once through a symlinked folder)
    fails naming both files, the count and an example, unless data.allow_overlap."""
    from vjepa_scale.eval.data import check_disjoint
    from vjepa_scale.eval.run import run_eval

    (tmp_path / "vids").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "vids")
    train, val = tmp_path / "train.txt", tmp_path / "val.txt"
    train.write_text("vids/a.mp4 0\nvids/b.mp4 1\nvids/c.mp4 1\n")
    val.write_text(f"{tmp_path}/link/b.mp4 1\nvids/c.mp4 1\nvids/d.mp4 0\n")
    cfg = EvalConfig(model=tiny_model(), data=EvalDataConfig(train_index=str(train), val_index=str(val)))
    cfg.encoder.random_init = True
    with pytest.raises(ConfigError, match=rf"data.train_index {train} and data.val_index {val} share 2 videos "
                                          rf"\(e.g. {tmp_path}/link/b.mp4\).*data.allow_overlap=true"):
        run_eval(cfg.validate())
    cfg.data.allow_overlap = True
    check_disjoint([str(tmp_path / "vids/b.mp4")], [str(tmp_path / "link/b.mp4")], cfg.data)
    assert load_eval_config(None, ["data.allow_overlap=true"], validate=False).data.allow_overlap


def test_eval_grid_must_fit_encoder():
    cfg = EvalConfig(data=EvalDataConfig(train_index="a", val_index="b", crop_size=40, frames_per_clip=8))
    with pytest.raises(ConfigError, match=r"data.crop_size=40 is not divisible by the encoder's patch_size=16"):
        eval_grid(cfg, tiny_model())
    cfg.data.crop_size, cfg.data.frames_per_clip = 32, 7
    with pytest.raises(ConfigError, match=r"data.frames_per_clip=7 is not divisible .* tubelet_size=2"):
        eval_grid(cfg, tiny_model())


def test_checkpoint_of_another_size_is_named():
    tiny = VisionTransformer3D(tiny_model(), (2, 2, 2))
    expected = module_shapes(tiny)
    small = VisionTransformer3D(ModelConfig(size="small", depth=1), (2, 2, 2))
    with pytest.raises(CheckpointMismatchError,
                       match=r"ckpt: encoder parameter '.*' has shape \(384.*\) in the checkpoint but \(192.*\) .*"
                             r"another model size\? check model.size/width/depth"):
        check_state_dict(small.state_dict(), expected, "encoder", "ckpt")
    deeper = VisionTransformer3D(ModelConfig(size="tiny", depth=2), (2, 2, 2))
    with pytest.raises(CheckpointMismatchError, match=r"not in the model: \['transformer.blocks.1.*check model.size"):
        check_state_dict(deeper.state_dict(), expected, "encoder", "ckpt")
    check_state_dict(tiny.state_dict(), expected, "encoder", "ckpt")


def test_random_init_encoder_is_frozen_and_seeded():
    def build(seed):
        cfg = EvalConfig(model=tiny_model(), data=EvalDataConfig(train_index="a", val_index="b", crop_size=32,
                                                                 frames_per_clip=4))
        cfg.encoder.random_init, cfg.encoder.init_seed = True, seed
        return load_frozen_encoder(cfg.validate())

    a, b, c = build(0), build(0), build(1)
    assert not a.encoder.training and not any(p.requires_grad for p in a.encoder.parameters())
    assert a.encoder.grid == (2, 2, 2)
    w = "transformer.blocks.0.attn.qkv.weight"
    assert torch.equal(a.encoder.state_dict()[w], b.encoder.state_dict()[w])
    assert not torch.equal(a.encoder.state_dict()[w], c.encoder.state_dict()[w])


@pytest.fixture(scope="module")
def pretrained_run(tmp_path_factory):
    """A real run folder: a 1-rank in-process Trainer (ZeRO-3, sin-cos positions, 16-frame clips at 32 px:
    grid 8x2x2) trained 1 step and saved."""
    require("deepspeed")
    from vjepa_scale.config import load_config
    from vjepa_scale.train.engine import Trainer
    from vjepa_scale.train.launch import preflight

    env = single_process_group()
    cfg = load_config("cpu_demo", ["model.depth=1", "model.pos_embed=sincos", "data.crop_size=32",
                                   "data.frames_per_clip=16", "data.global_batch_size=2", "optim.iterations=1",
                                   "train.precision=fp32", "train.progress_bar=false"])
    run = tmp_path_factory.mktemp("pretrained") / "run"
    trainer = Trainer(preflight(cfg, env.world_size), run, env=env)
    trainer.fit()  # saves at the end
    return run


def test_checkpoint_model_section_is_checked_and_keeps_the_pretraining_grid(pretrained_run):
    """A `model:` next to encoder.checkpoint must equal the run's architecture; the encoder is still built
    at the pretraining grid, so sin-cos features equal those without `model:`."""
    import copy

    from vjepa_scale.weights import load_consolidated

    ck = load_consolidated(pretrained_run, "target")  # the encoder eval reads by default
    pre = ck["config"]
    assert pre.grid == (8, 2, 2) and pre.model.pos_embed == "sincos" and ck["step"] == 1

    def build(model):
        cfg = EvalConfig(model=model, data=EvalDataConfig(train_index="a", val_index="b", crop_size=32,
                                                          frames_per_clip=8))
        cfg.encoder.checkpoint = str(pretrained_run)
        return load_frozen_encoder(cfg.validate()).encoder

    plain, same = build(None), build(copy.deepcopy(pre.model))
    assert plain.grid == same.grid == pre.grid
    assert set(plain.state_dict()) == set(ck["encoder"])
    assert all(torch.equal(plain.state_dict()[k], v) for k, v in ck["encoder"].items())  # the run's weights
    x = torch.randn(1, 3, 8, 32, 32)  # an 8-frame eval clip
    with torch.no_grad():
        torch.testing.assert_close(same(x), plain(x), rtol=0, atol=0)
    other = copy.deepcopy(pre.model)
    other.pos_embed, other.num_heads = "rope", 6  # same parameter shapes, another model
    with pytest.raises(CheckpointMismatchError,
                       match=rf"encoder.checkpoint {re.escape(str(pretrained_run))}: the run was trained with "
                             r"model.pos_embed='sincos' but the config has 'rope'; model.num_heads \(via model.size\)=3 but the config has 6"):
        build(other)


def test_every_spelling_of_one_runs_encoder_has_one_origin(pretrained_run, monkeypatch):
    """A result folder is matched on the encoder's origin: the run folder, its checkpoints folder, its latest
    file, a checkpoint of it, a relative path or a trailing slash all name one run; the online encoder,
    an export or a random init are others."""
    from vjepa_scale.eval.encoder import encoder_origin

    def origin(*opts):
        return encoder_origin(load_eval_config(None, ["data.train_index=a", "data.val_index=b", *opts]))

    (ckpt,) = sorted((pretrained_run / "checkpoints").glob("step_*"))
    monkeypatch.chdir(pretrained_run.parent)
    spellings = [pretrained_run, f"{pretrained_run}/", pretrained_run / "checkpoints",
                 pretrained_run / "checkpoints" / "latest", ckpt, pretrained_run.name]
    assert {origin(f"encoder.checkpoint={p}") for p in spellings} == {f"{pretrained_run.resolve()} (target encoder)"}
    assert origin(f"encoder.checkpoint={pretrained_run}", "encoder.which=online").endswith("(online encoder)")
    assert origin(f"encoder.checkpoint={pretrained_run}", "encoder.random_init=true").startswith("random init")


def test_a_damaged_checkpoint_is_a_config_error_naming_the_file(pretrained_run, tmp_path):
    """encoder.checkpoint whose EMA file is cut short: a ConfigError naming that file, before any loading
    (given as the checkpoint folder, or as the run whose only checkpoint it is)."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(pretrained_run, run)
    (ckpt,) = sorted((run / "checkpoints").glob("step_*"))
    ema = ckpt / "ema" / "rank00000.pt"
    ema.write_bytes(ema.read_bytes()[:1000])
    for path in (ckpt, run):
        cfg = load_eval_config(None, ["data.train_index=a", "data.val_index=b", f"encoder.checkpoint={path}",
                                      "data.crop_size=32"])
        with pytest.raises(ConfigError, match=rf"encoder.checkpoint: .*{re.escape(str(ema))} is damaged"):
            load_frozen_encoder(cfg)


# ---------------------------------------------------------------- clips and features


def test_eval_frame_indices_and_views():
    assert eval_frame_indices(40, 4, 2, 1) == [[16, 18, 20, 22]]  # centred: window 7, starts 0..33
    clips = eval_frame_indices(40, 4, 2, 3)
    assert [c[0] for c in clips] == [0, 16, 33] and clips[-1][-1] == 39
    assert eval_frame_indices(3, 4, 2, 2) == [[0, 2, 2, 2]] * 2  # short video: clamp to the last frame
    # data.frame_spacing: linspace, the reference's spacing: 4 frames over 8 (window 8, starts 0..32, centred 16)
    assert eval_frame_indices(40, 4, 2, 1, "linspace") == [[16, 18, 21, 23]]
    assert eval_frame_indices(5, 4, 2, 1, "linspace") == [[0, 4, 4, 4]]  # short: 5 // 2 frames spread, then the last
    assert view_boxes(48, 64, 1, 1.0) == [(0, 8, 48, 48)]
    assert view_boxes(48, 64, 3, 1.0) == [(0, 0, 48, 48), (0, 8, 48, 48), (0, 16, 48, 48)]
    assert view_boxes(64, 48, 2, 1.0) == [(0, 0, 48, 48), (16, 0, 48, 48)]
    assert view_boxes(64, 64, 1, 2.0) == [(16, 16, 32, 32)]


def test_extract_features_layout_matches_direct_encoding():
    torch.manual_seed(0)
    enc = VisionTransformer3D(tiny_model(), (2, 2, 2)).eval()
    videos = torch.randn(5, 2, 3, 3, 4, 32, 32)  # 5 videos, 2 views, 3 clips
    fs = extract_features(enc, TensorVideos(videos, [0, 1, 2, 3, 0]), batch_size=2, device=torch.device("cpu"),
                          progress=False)
    assert fs.feats_MVND.shape == (5, 2, 3 * 8, 192) and fs.labels_M.tolist() == [0, 1, 2, 3, 0]
    with torch.no_grad():
        direct = enc(videos[3, 1, 2][None])[0]  # video 3, view 1, clip 2
    torch.testing.assert_close(fs.feats_MVND[3, 1, 16:24], direct, rtol=1e-4, atol=1e-5)
    # ranks split the videos rank::world
    part = extract_features(enc, TensorVideos(videos, [0, 1, 2, 3, 0]), 2, torch.device("cpu"), rank=1,
                            world_size=2, progress=False)
    assert part.index_M.tolist() == [1, 3]
    torch.testing.assert_close(part.feats_MVND[1], fs.feats_MVND[3], rtol=1e-4, atol=1e-5)


def test_videos_shorter_than_a_clip_window_are_counted_and_reported(tmp_path, caplog):
    """6-frame videos under a 10-frame window (4 frames at step 3) are padded (their last frame repeated): the
    items say so, the evaluation warns once with the counts, and result.json has them; 12-frame ones are not."""
    import json

    from vjepa_scale.data.synthetic_videos import write_synthetic_videos
    from vjepa_scale.eval.run import run_eval

    index = {}
    for frames in (12, 6):
        idx = write_synthetic_videos(tmp_path / f"f{frames}", num_videos=8, frames=frames, size=32, val_fraction=0.5,
                                     seed=frames)
        for split in ("train", "val"):
            index[split] = index.get(split, "") + idx[split].read_text()  # absolute paths
    for split in ("train", "val"):
        (tmp_path / f"{split}.txt").write_text(index[split])
    data = EvalDataConfig(train_index=str(tmp_path / "train.txt"), val_index=str(tmp_path / "val.txt"), crop_size=32,
                          frames_per_clip=4, frame_step=3, num_workers=0)
    paths, labels = read_labeled_index(data.train_index, "data.train_index")
    assert [EvalClips(paths, labels, data)[i]["padded"] for i in range(len(paths))] == [False] * 4 + [True] * 4
    # data.fps (as training's): the 8 fps videos get step 4 at fps 2 (a 13-frame window: all short) and step 2
    # at fps 4 (a 7-frame window), whatever frame_step says
    for fps, step, short in ((2.0, 3, [True] * 8), (4.0, 100, [False] * 4 + [True] * 4)):
        by_rate = dataclasses.replace(data, fps=fps, frame_step=step)
        assert [EvalClips(paths, labels, by_rate)[i]["padded"] for i in range(len(paths))] == short, fps
    cfg = EvalConfig(model=tiny_model(), data=data, optim=ProbeOptimConfig(epochs=1, batch_size=4))
    cfg.encoder.random_init = True
    cfg.run.output_dir, cfg.run.tensorboard, cfg.run.progress_bar = str(tmp_path / "out"), False, False
    with caplog.at_level("WARNING", logger="vjepa_scale.eval"):
        result = run_eval(cfg.validate())
    warned = [r.getMessage() for r in caplog.records if "clip window" in r.getMessage()]
    assert len(warned) == 1 and warned[0].startswith("eval: 4 train and 4 val videos are shorter than one clip window "
                                                     "(data.frames_per_clip=4 at data.frame_step=3 spans 10 frames)")
    assert result["padded_videos"] == {"train": 4, "val": 4}
    assert json.loads((tmp_path / "out" / "result.json").read_text())["padded_videos"] == {"train": 4, "val": 4}
    # the folder now holds this encoder's result: another encoder's run is refused before any work (its
    # result and curves would replace or mix with it), unless run.overwrite; the same encoder's replaces it
    other = dataclasses.replace(cfg, encoder=dataclasses.replace(cfg.encoder, init_seed=1))
    with pytest.raises(ConfigError, match=r"run.output_dir: .*result.json holds the result of another encoder "
                                          r"\(random init \(seed 0\), .*\); this run evaluates random init \(seed 1\), "):
        run_eval(other)
    other.run = dataclasses.replace(cfg.run, overwrite=True)
    assert run_eval(other)["encoder_origin"].startswith("random init (seed 1), 192 wide x 1 blocks")
    assert run_eval(dataclasses.replace(other, run=cfg.run))["encoder"] == "random init (seed 1)"
    from vjepa_scale.eval.run import check_output_dir  # a result.json from before origins were recorded: replaced

    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "result.json").write_text(json.dumps({"encoder": "runs/x (target encoder, step 3)"}))
    check_output_dir(tmp_path / "old", "/abs/runs/x (target encoder)", overwrite=False)


def test_eval_exits_2_naming_a_split_without_usable_videos(tmp_path, capsys, monkeypatch):
    """Every val video unusable: tools/eval_probe.py ends with the reason and exit code 2 (not a traceback),
    before any train video is encoded (it failed only after extracting every train feature): a val index
    whose first entries name no file (its folder, the rule), or none of whose first videos reads."""
    from vjepa_scale.data.synthetic_videos import write_synthetic_videos

    monkeypatch.setattr("vjepa_scale.eval.run.extract_features", lambda *a, **k: pytest.fail("features extracted"))
    idx = write_synthetic_videos(tmp_path / "v", num_videos=4, frames=8, size=32, val_fraction=0.5, seed=0)
    val = tmp_path / "val.txt"
    cli = load_tool("eval_probe")
    args = ["--random-init", "--output", str(tmp_path / "out"), "model.size=tiny", "model.depth=1",
            f"data.train_index={idx['train']}", f"data.val_index={val}", "data.crop_size=32", "data.frames_per_clip=4",
            "data.num_workers=0", "data.num_classes=8", "run.progress_bar=false", "run.tensorboard=false"]
    val.write_text("missing.mp4 0\n")
    assert cli.main(args) == 2
    assert (f"error: data.val_index: index file '{val}': its only entry names an existing file (line 1: 'missing.mp4' "
            f"is {tmp_path.resolve()}/missing.mp4). Relative entries resolve against the index file's folder"
            in capsys.readouterr().err)
    for i in range(10):
        (tmp_path / f"junk{i}.mp4").write_bytes(b"\x00" * 64)
    val.write_text("".join(f"junk{i}.mp4 0\n" for i in range(10)) + Path(idx["val"]).read_text())
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert (f"error: data.val_index: index file '{val}': none of the first 8 of its 12 videos can be read, e.g. "
            f"{tmp_path.resolve()}/junk0.mp4 (" in err and err.rstrip().endswith("(checked before any train video is "
                                                                                 "encoded)"))
    assert not (tmp_path / "out").exists()


def test_eval_refuses_a_folder_as_an_index(tmp_path):
    """A folder reads as images without labels (-1): evaluation went on and failed late (`IndexError: Target -1`)."""
    from vjepa_scale.eval.run import run_eval

    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "a.jpg").write_bytes(b"")
    with pytest.raises(ConfigError, match=rf"^data\.val_index: '{tmp_path}/imgs' is a folder, read as images without "
                                          rf"labels; this needs an index file of `path label` lines"):
        read_labeled_index(tmp_path / "imgs", "data.val_index")
    cfg = EvalConfig(model=tiny_model(), data=EvalDataConfig(train_index=str(tmp_path / "imgs"), val_index="b"))
    cfg.encoder.random_init = True
    with pytest.raises(ConfigError, match=r"^data\.train_index: '.*imgs' is a folder"):
        run_eval(cfg.validate())


def test_probe_classes_refuse_one_class_and_warn_about_gaps_unseen_and_repeated_labels(caplog):
    """One train class was refused only when it was 0 (num_classes = 1 + the largest label); labels with gaps
    made a head of 1 + the largest label outputs silently; val labels absent from train and repeated val
    videos were scored without a word."""
    from vjepa_scale.eval.data import probe_classes

    data = EvalDataConfig(train_index="a", val_index="b")
    for label in (0, 3):
        with pytest.raises(ConfigError, match=rf"^data\.train_index: every train video has label {label}; a probe "
                                              rf"needs at least 2 classes$"):
            probe_classes([label] * 4, [0, 1], ["/v/x.mp4", "/v/y.mp4"], data)
    with caplog.at_level("WARNING", logger="vjepa_scale.eval"):
        assert probe_classes([0, 1, 2, 3], [1, 2], ["/v/a.mp4", "/v/b.mp4"], data) == 4
        assert not caplog.records
        assert probe_classes([0, 1000, 2000, 3000, 0], [1000, 7, 7], ["/v/a.mp4", "/v/b.mp4", "/v/./b.mp4"],
                             data) == 3001
    assert [r.getMessage() for r in caplog.records] == [
        "eval: the probe head has 3001 outputs (1 + the largest label) but the train videos use 4 distinct labels "
        "(0, 1000, 2000, 3000): each unused label is an output that never trains; number the classes 0..3 (or set "
        "data.num_classes)",
        "eval: 2 val videos have labels no train video has (7): the probe cannot predict them, so they count as "
        "errors in val top-1",
        "eval: data.val_index lists 1 videos more than once (e.g. /v/b.mp4, 2 times): each listing is scored, so "
        "those videos weigh more in val top-1"]
    caplog.clear()
    given = dataclasses.replace(data, num_classes=10)
    with caplog.at_level("WARNING", logger="vjepa_scale.eval"):
        assert probe_classes([0, 1, 2], [1], ["/v/a.mp4"], given) == 10
        assert probe_classes([0, 1, 2], [1], ["/v/a.mp4"], given, warn=False) == 10
    assert [r.getMessage() for r in caplog.records] == [
        "eval: the probe head has 10 outputs (data.num_classes) but the train videos use 3 distinct labels (0, 1, 2): "
        "each unused label is an output that never trains; lower data.num_classes or check the labels"]
    with pytest.raises(ConfigError, match=r"^data\.val_index: label 10 >= data\.num_classes=10$"):
        probe_classes([0, 1, 2], [10], ["/v/a.mp4"], given)


def test_a_head_too_large_for_memory_or_one_class_is_refused_before_any_video_is_encoded(tmp_path, monkeypatch):
    """A label of 10^12 (a typo, a hash) made a head of 10^12 outputs, allocated after the feature extraction;
    train videos of one class were refused only when it was class 0."""
    from vjepa_scale.data.synthetic_videos import write_synthetic_videos
    from vjepa_scale.eval.run import run_eval

    monkeypatch.setattr("vjepa_scale.eval.run.extract_features", lambda *a, **k: pytest.fail("features extracted"))
    idx = write_synthetic_videos(tmp_path / "v", num_videos=4, frames=8, size=32, val_fraction=0.5, seed=0)
    train = tmp_path / "train.txt"
    cfg = EvalConfig(model=tiny_model(), data=EvalDataConfig(train_index=str(train), val_index=str(idx["val"])))
    cfg.encoder.random_init, cfg.run.output_dir = True, str(tmp_path / "out")
    videos = [line.rsplit(None, 1)[0] for line in Path(idx["train"]).read_text().splitlines()]
    train.write_text("".join(f"{v} 3\n" for v in videos))
    with pytest.raises(ConfigError, match=r"^data\.train_index: every train video has label 3"):
        run_eval(cfg.validate())
    train.write_text("".join(f"{v} {k * 10 ** 12}\n" for k, v in enumerate(videos)))
    with pytest.raises(ConfigError, match=r"^the probe head of 1000000000001 outputs needs [\d.]+ GiB \(193 x "
                                          r"1000000000001 weights with gradient and AdamW state\), more than "
                                          r"available host memory .*: 1000000000001 classes: 1 \+ the largest label, "
                                          r"1000000000000; number the classes 0, 1, \.\.\.$"):
        run_eval(cfg)
    from vjepa_scale.eval.run import check_head_fits

    check_head_fits(1280, 1000, False, torch.device("cpu"))


def test_eval_clips_decode_real_videos(tmp_path):
    from vjepa_scale.data.synthetic_videos import write_synthetic_videos

    idx = write_synthetic_videos(tmp_path, num_videos=4, frames=12, size=32, val_fraction=0.25)
    paths, labels = read_labeled_index(idx["train"], "data.train_index")
    ds = EvalClips(paths, labels, EvalDataConfig(train_index="a", val_index="b", crop_size=32, frames_per_clip=4,
                                                 frame_step=2, num_clips=2, num_views=3, resize_ratio=1.0))
    item = ds[0]
    assert item["video"].shape == (3, 2, 3, 4, 32, 32) and item["label"] == labels[0]
    assert torch.equal(ds[0]["video"], item["video"])  # deterministic
    # square video at ratio 1: the three views are the same crop
    torch.testing.assert_close(item["video"][0], item["video"][2])



def test_augmented_clips_draw_from_seed_epoch_and_video_only(tmp_path):
    """data.train_augment's items: one sample of num_clips clips; the same (seed, epoch, video) gives the same
    tensor, another epoch or seed another; without crop, flip or erasing it is the whole frame resized."""
    from vjepa_scale.data.synthetic_videos import write_synthetic_videos
    from vjepa_scale.eval.data import AugmentedClips

    idx = write_synthetic_videos(tmp_path, num_videos=4, frames=24, size=32, val_fraction=0.25)
    paths, labels = read_labeled_index(idx["train"], "data.train_index")
    data = EvalDataConfig(train_index="a", val_index="b", crop_size=16, frames_per_clip=4, frame_step=2, num_clips=2,
                          num_views=3, train_augment=True, horizontal_flip=True)
    ds = AugmentedClips(paths, labels, data, seed=0)
    item = ds[1]
    assert item["video"].shape == (1, 2, 3, 4, 16, 16) and item["label"] == labels[1] and not item["padded"]
    assert torch.equal(AugmentedClips(paths, labels, data, seed=0)[1]["video"], item["video"])
    ds.set_epoch(1)
    assert not torch.equal(ds[1]["video"], item["video"])
    assert not torch.equal(AugmentedClips(paths, labels, data, seed=1)[1]["video"], item["video"])
    plain = dataclasses.replace(data, random_resize_scale=(1.0, 1.0), random_resize_aspect_ratio=(1.0, 1.0),
                                horizontal_flip=False, random_erase_prob=0.0, num_views=1, num_clips=1)
    whole = AugmentedClips(paths, labels, plain, seed=0)[1]["video"][0, 0]
    frames = EvalClips(paths, labels, dataclasses.replace(plain, frame_step=1, frames_per_clip=24))[1]["video"][0, 0]
    # the one window of 7 frames starts at a drawn frame; every frame is the square video resized to 16 px
    starts = [k for k in range(18) if torch.allclose(frames[:, k:k + 7:2], whole, atol=1e-5)]
    assert len(starts) == 1, starts
    # streamed, each epoch's pass draws that epoch's crops (in the loader's worker too)
    from vjepa_scale.eval.stream import StreamedFeatures

    enc = VisionTransformer3D(tiny_model(), (2, 1, 1)).eval().requires_grad_(False)
    stream = StreamedFeatures(enc, AugmentedClips(paths, labels, data, seed=0), [0, 1, 2], 1, 2, torch.device("cpu"),
                              torch.float32, num_workers=1)
    sel = [torch.tensor([2, 0])]
    x0, x1, x0_again = (next(stream.batches(sel, torch.device("cpu"), epoch))[0] for epoch in (0, 1, 0))
    assert torch.equal(x0, x0_again) and not torch.allclose(x0, x1)


def test_random_erasing_fills_one_box_of_noise_in_every_frame():
    import numpy as np

    from vjepa_scale.data.clips import random_erase_

    x = torch.zeros(3, 4, 32, 32)
    assert not random_erase_(x, 0.0, np.random.default_rng(0)).any()
    changed = 0
    for seed in range(20):
        y = random_erase_(torch.zeros(3, 4, 32, 32), 1.0, np.random.default_rng(seed))
        box = y.ne(0).any(dim=(0, 1))  # (H, W) pixels erased in some frame and channel
        rows, cols = box.any(1).nonzero().flatten(), box.any(0).nonzero().flatten()
        if not box.any():
            continue  # no box fitted in 10 draws: unchanged
        changed += 1
        h, w = len(rows), len(cols)
        assert box.sum() == h * w and rows.diff().eq(1).all() and cols.diff().eq(1).all()  # one rectangle
        assert 0.02 * 1024 * 0.5 <= h * w <= 1024 / 3 * 1.5 and 0.3 / 1.5 <= h / w <= 3.4 * 1.5, (h, w)
        assert y.ne(0).all(dim=(0, 1)).sum() == h * w  # the same box in every frame and channel
        assert not torch.equal(y[:, 0], y[:, 1])  # fresh noise per frame
        torch.testing.assert_close(random_erase_(torch.zeros(3, 4, 32, 32), 1.0, np.random.default_rng(seed)), y)
    assert changed >= 15


# ---------------------------------------------------------------- probe training


@pytest.mark.parametrize("kind", ["v1", "v2"])
def test_probe_training_learns_a_separable_task(kind):
    train, val = separable_features(96, 4, seed=0), separable_features(48, 4, seed=1)
    res = train_probe(train, val, ProbeConfig(kind=kind, num_self_blocks=1), ProbeOptimConfig(epochs=8, batch_size=16),
                      num_classes=4, encoder_heads=4, seed=0, device=torch.device("cpu"), progress=False)
    assert res["val_top1"] >= 90.0, res["history"]
    assert res["history"][0]["train_loss"] > res["history"][-1]["train_loss"]
    assert len(res["history"]) == 8 and res["steps"] == 8 * 12  # 96 videos x 2 views / 16
    # same seed, same result
    again = train_probe(train, val, ProbeConfig(kind=kind, num_self_blocks=1), ProbeOptimConfig(epochs=8, batch_size=16),
                        num_classes=4, encoder_heads=4, seed=0, device=torch.device("cpu"), progress=False)
    assert again["val_top1"] == res["val_top1"]


class FirstTokenLogits(torch.nn.Module):
    """Reads logits straight from the features (token 0, first C dims): a known classifier."""

    def __init__(self, classes):
        super().__init__()
        self.classes = classes

    def forward(self, x_BND):
        return x_BND[:, 0, :self.classes]


def test_probe_train_metrics_count_each_sample_once():
    """5 samples in batches of 4: the epoch's second batch repeats 3 of them. The real probe with a
    learning rate far below its weights' precision (no weight decay) keeps its predictions; labels make
    2 of the 5 right, so train_top1 is exactly 40 % (no count of 8 samples gives it) and train_loss the
    mean over the 5, computed from the same probe (same seed) before training, in every epoch."""
    D, heads, seed = 16, 2, 0
    x = torch.randn(5, 1, 6, D, generator=torch.Generator().manual_seed(1))  # (5 videos, 1 view, 6 tokens, D)
    torch.manual_seed(seed)  # as train_probe initializes its probe
    with torch.no_grad():
        logits = AttentiveProbe(ProbeConfig(), D, 3, heads)(x[:, 0])
    pred = logits.argmax(-1)
    assert (logits.topk(2).values.diff(dim=-1).abs() > 1e-4).all()  # no near-tie that a rounding could flip
    y = torch.where(torch.arange(5) < 2, pred, (pred + 1) % 3)  # right for the first two
    train = FeatureSet(x, y, torch.arange(5))
    res = train_probe(train, train, ProbeConfig(), ProbeOptimConfig(epochs=3, batch_size=4, lr=1e-30, weight_decay=0.0),
                      num_classes=3, encoder_heads=heads, seed=seed, device=torch.device("cpu"), progress=False)
    loss = F.cross_entropy(logits, y).item()
    assert len(res["history"]) == 3
    for row in res["history"]:
        assert row["train_samples"] == 5 and row["train_top1"] == 40.0, row
        assert row["train_loss"] == pytest.approx(loss, rel=1e-6), row
        assert row["val_top1"] == 40.0 and row["val_loss"] == pytest.approx(loss, rel=1e-6), row  # the probe did not move


def test_evaluate_averages_softmax_over_views():
    x = torch.zeros(2, 2, 1, 3)
    x[0, 0, 0] = torch.tensor([0.0, 0.3, 0.0])  # video 0, label 0: view 0 weakly wrong,
    x[0, 1, 0] = torch.tensor([5.0, 0.0, 0.0])  # view 1 confidently right
    x[1, 0, 0] = torch.tensor([0.0, 0.0, 4.0])  # video 1, label 1: both views say class 2
    x[1, 1, 0] = torch.tensor([0.0, 1.0, 3.0])
    m = evaluate(FirstTokenLogits(3), FeatureSet(x, torch.tensor([0, 1]), torch.arange(2)), torch.device("cpu"),
                 torch.float32)
    assert m["top1"] == 50.0 and m["count"] == 2
    p0 = (F.softmax(x[0, 0, 0], -1) + F.softmax(x[0, 1, 0], -1)) / 2
    p1 = (F.softmax(x[1, 0, 0], -1) + F.softmax(x[1, 1, 0], -1)) / 2
    assert m["loss"] == pytest.approx(-(p0[0].log() + p1[1].log()).item() / 2, rel=1e-5)


# ---------------------------------------------------------------- streamed features (run.features)


class SomeUnusable(TensorVideos):
    """TensorVideos whose items at `bad` are unusable files, as `EvalClips` gives them."""

    def __init__(self, videos, labels, bad=()):
        super().__init__(videos, labels)
        self.bad = set(bad)

    def __getitem__(self, i):
        item = super().__getitem__(i)
        if i in self.bad:
            item.update(video=None, skipped=(f"v{i}.mp4", "decode: broken"))
        return item


def _tiny_videos(n, views=2, clips=2, seed=0):
    """A 1-block tiny encoder (8 tokens per 4x32x32 clip) and n videos of `views` x `clips` clips, labels i % 3."""
    torch.manual_seed(seed)
    enc = VisionTransformer3D(tiny_model(), (2, 2, 2)).eval().requires_grad_(False)
    return enc, torch.randn(n, views, clips, 3, 4, 32, 32), [i % 3 for i in range(n)]


def test_streamed_features_read_like_the_features_kept_in_memory():
    """The same sample ids give the same features and labels, encoded on the fly; a probe trained on either
    takes the same steps (equal up to the encoder's rounding on other batch shapes)."""
    from vjepa_scale.eval.stream import StreamedFeatures

    enc, videos, labels = _tiny_videos(6)
    cpu = torch.device("cpu")
    mem = extract_features(enc, TensorVideos(videos, labels), 2, cpu, progress=False)
    stream = StreamedFeatures(enc, TensorVideos(videos, labels), list(range(6)), 2, 2, cpu, torch.float32,
                              num_workers=1)  # one loader worker: the batches come back in order
    assert (len(stream), stream.num_views, stream.dim) == (len(mem), mem.num_views, mem.dim) == (6, 2, 192)
    sels = [torch.tensor([3, 0, 11]), torch.tensor([5, 5])]  # sample = video * 2 + view
    for (xm, ym, km), (xs, ys, ks) in zip(mem.batches(sels, cpu), stream.batches(sels, cpu), strict=True):
        torch.testing.assert_close(xs, xm, rtol=1e-4, atol=1e-5)
        assert xs.shape == (len(ym), 16, 192) and torch.equal(ys, ym) and ks.all() and km.all()
    assert [y.tolist() for _, y, _ in stream.batches(sels, cpu)] == [[1, 0, 2], [2, 2]]
    got = list(stream.videos(cpu))
    torch.testing.assert_close(torch.cat([x for x, _ in got]), mem.feats_MVND, rtol=1e-4, atol=1e-5)
    assert torch.cat([y for _, y in got]).tolist() == labels
    runs = [train_probe(data, data, ProbeConfig(), ProbeOptimConfig(epochs=2, batch_size=4, lr=1e-2), num_classes=3,
                        encoder_heads=3, seed=0, device=cpu, progress=False) for data in (mem, stream)]
    assert runs[0]["steps"] == runs[1]["steps"] == 6
    for a, b in zip(runs[0]["history"], runs[1]["history"], strict=True):
        assert a["train_samples"] == b["train_samples"] == 12
        for k in ("train_loss", "val_loss", "train_top1", "val_top1"):
            assert b[k] == pytest.approx(a[k], rel=1e-4, abs=1e-4), (k, a, b)


def test_streamed_batches_leave_out_unusable_videos_and_train_on_the_rest():
    """Video 1 is unusable: its samples are not kept, it is listed once, and a batch of nothing else is a
    zero-gradient step; the epoch's train metrics count the usable samples only."""
    from vjepa_scale.data.skips import NoReadableVideosError
    from vjepa_scale.eval.stream import StreamedFeatures

    enc, videos, labels = _tiny_videos(3, views=1, clips=1)
    cpu = torch.device("cpu")
    stream = StreamedFeatures(enc, SomeUnusable(videos, labels, bad={1}), [0, 1, 2], 1, 2, cpu, torch.float32)
    (x, y, kept), (none, y2, kept2) = stream.batches([torch.tensor([1, 2, 0]), torch.tensor([1])], cpu)
    assert kept.tolist() == [False, True, True] and y.tolist() == [2, 0] and x.shape == (2, 8, 192)
    assert none is None and y2.numel() == 0 and kept2.tolist() == [False]
    assert stream.skipped == {"v1.mp4": "decode: broken"}
    res = train_probe(stream, stream, ProbeConfig(), ProbeOptimConfig(epochs=2, batch_size=1), num_classes=3,
                      encoder_heads=3, seed=0, device=cpu, progress=False)
    assert res["steps"] == 6 and [r["train_samples"] for r in res["history"]] == [2, 2]
    assert res["num_val_videos"] == 2
    nothing = StreamedFeatures(enc, SomeUnusable(videos, labels, bad={0, 1, 2}), [0, 1, 2], 1, 2, cpu, torch.float32)
    with pytest.raises(NoReadableVideosError, match="probe seed0: no train video could be read on any rank"):
        train_probe(nothing, stream, ProbeConfig(), ProbeOptimConfig(epochs=1, batch_size=1), num_classes=3,
                    encoder_heads=3, seed=0, device=cpu, tag="seed0", progress=False)
    with pytest.raises(NoReadableVideosError, match="val features: no val video could be read on any rank"):
        evaluate(AttentiveProbe(ProbeConfig(), 192, 3, 3), nothing, cpu, torch.float32)


def test_feature_store_keeps_features_in_memory_only_when_they_fit(monkeypatch, capsys):
    """auto: memory up to half the host memory a rank may use, else stream; memory that does not fit is refused
    naming the key and the sizes; stream is always stream; unknown memory: memory."""
    from vjepa_scale.eval.run import feature_store

    avail = {"bytes": 2000}
    monkeypatch.setattr("vjepa_scale.train.memory.agreed_available_bytes",
                        lambda device, n: (avail["bytes"], "available host memory of the test"))
    f32, bf16 = torch.float32, torch.bfloat16
    assert feature_store("auto", 2, 1, 10, 10, f32) == ("memory", 800)  # 2 x 1 x 10 x 10 x 4 bytes
    assert "eval: features kept in host memory (2 videos x 1 views x 10 tokens x 10 x 4 bytes = 0.0 MiB per rank; " \
           "available host memory of the test: 0.0 MiB)" in capsys.readouterr().out
    assert feature_store("auto", 2, 3, 10, 10, f32) == ("stream", 2400)
    assert "eval: features streamed (encoded every epoch)" in capsys.readouterr().out
    assert feature_store("auto", 5, 1, 10, 10, bf16) == ("memory", 1000)  # bf16 features: 2 bytes
    assert feature_store("stream", 1, 1, 1, 1, f32) == ("stream", 4)
    avail["bytes"] = 700
    with pytest.raises(ConfigError, match=r"run.features=memory: the features take 2 videos x 1 views x 10 tokens x "
                                          r"10 x 4 bytes = .* per rank, more than the available host memory of the "
                                          r"test .*: set run.features=stream \(or auto\)"):
        feature_store("memory", 2, 1, 10, 10, f32)
    avail["bytes"] = None
    assert feature_store("auto", 10 ** 9, 3, 4608, 1280, bf16)[0] == "memory"


def test_eval_streams_the_same_result_as_memory_from_real_videos(tmp_path, capsys):
    """run_eval end to end on decoded videos: run.features=stream gives memory's probe (history within rounding)
    and says so; an unusable train file is left out and counted alike (the stream's batches then differ: it is
    met in them, where memory mode drops it before drawing any)."""
    from vjepa_scale.data.synthetic_videos import write_synthetic_videos
    from vjepa_scale.eval.run import run_eval

    idx = write_synthetic_videos(tmp_path / "v", num_videos=12, frames=8, size=32, val_fraction=0.25, seed=0)
    (tmp_path / "junk.mp4").write_bytes(b"\x00" * 64)
    with_junk = tmp_path / "train.txt"
    with_junk.write_text(Path(idx["train"]).read_text() + f"{tmp_path / 'junk.mp4'} 1\n")
    results = {}
    for mode, train_index in (("memory", idx["train"]), ("stream", idx["train"]), ("memory", with_junk),
                              ("stream", with_junk)):
        data = EvalDataConfig(train_index=str(train_index), val_index=str(idx["val"]), crop_size=32,
                              frames_per_clip=4, frame_step=2, num_views=2, num_workers=0, num_classes=8)
        cfg = EvalConfig(model=tiny_model(), data=data, optim=ProbeOptimConfig(epochs=2, batch_size=4))
        cfg.encoder.random_init = True
        cfg.run = dataclasses.replace(cfg.run, output_dir=str(tmp_path / mode), tensorboard=False, features=mode)
        results[mode, train_index == with_junk] = run_eval(cfg.validate())
        out = capsys.readouterr().out
        assert ("eval: features kept in host memory" if mode == "memory" else "eval: features streamed") in out
        # not a terminal (as under SLURM): a line per epoch and per feature extraction instead of bars
        assert re.search(r"\d\d:\d\d:\d\d probe seed0 epoch 2/2 \(step 10/10, 00:0\d\): train loss \d\.\d{4} top-1 "
                         r"[\d.]+, val loss \d\.\d{4} top-1 [\d.]+\n", out), out
        assert (mode == "memory") == ("train features: rank 0 encoded 9 videos in 00:0" in out), out
        assert (f"eval: left out train video {tmp_path / 'junk.mp4'} (" in out) == (train_index == with_junk)
    mem, stream = results["memory", False], results["stream", False]
    assert (mem["features"], stream["features"]) == ("memory", "stream")
    from helpers import ROOT  # every key of result.json, of a run and of a history row is documented

    doc = (ROOT / "docs" / "METRICS.md").read_text().split("## Evaluation: result.json")[1]
    documented = set(re.findall(r"^\| `([^`]+)` ", doc, re.M)) | set(re.findall(r"`(\w+)`", doc))
    keys = set(mem) | set(mem["runs"][0]) | set(mem["runs"][0]["history"][0]) | set(mem["model"])
    assert not keys - documented, keys - documented
    assert mem["feature_bytes_per_rank"] == stream["feature_bytes_per_rank"] == 12 * 2 * 8 * 192 * 4  # 9 + 3 videos
    assert mem["num_train_videos"] == stream["num_train_videos"] == 9
    assert mem["num_val_videos"] == stream["num_val_videos"] == 3
    for a, b in zip(mem["runs"][0]["history"], stream["runs"][0]["history"], strict=True):
        for k in ("train_loss", "val_loss", "train_top1", "val_top1"):
            assert b[k] == pytest.approx(a[k], rel=1e-4, abs=1e-4), (k, a, b)
    assert stream["val_feature_effective_rank"] == pytest.approx(mem["val_feature_effective_rank"], rel=1e-4)
    mem, stream = results["memory", True], results["stream", True]
    assert mem["skipped_videos"] == stream["skipped_videos"] and list(stream["skipped_videos"]["train"]) == [
        str(tmp_path / "junk.mp4")]
    assert mem["num_train_videos"] == stream["num_train_videos"] == 9
    assert [r["train_samples"] for r in stream["runs"][0]["history"]] == [18, 18]  # 9 usable videos x 2 views


def test_train_augment_streams_one_new_sample_per_video_and_epoch(tmp_path, capsys):
    """run_eval with data.train_augment: auto streams (and says why), memory is refused before any work, every
    epoch trains one sample per train video (num_views applies to val), and a re-run repeats it exactly."""
    from vjepa_scale.data.synthetic_videos import write_synthetic_videos
    from vjepa_scale.eval.run import run_eval

    idx = write_synthetic_videos(tmp_path / "v", num_videos=12, frames=16, size=32, val_fraction=0.25, seed=0)
    data = EvalDataConfig(train_index=str(idx["train"]), val_index=str(idx["val"]), crop_size=32, frames_per_clip=4,
                          frame_step=2, num_views=2, num_workers=1, num_classes=8, train_augment=True)
    cfg = EvalConfig(model=tiny_model(), data=data, optim=ProbeOptimConfig(epochs=2, batch_size=4))
    cfg.encoder.random_init = True
    cfg.run = dataclasses.replace(cfg.run, output_dir=str(tmp_path / "out"), tensorboard=False, progress_bar=False)
    with pytest.raises(ConfigError, match=r"data.train_augment=true draws new crops every epoch, .*set run.features "
                                          r"to auto or stream \(run.features=memory given\)"):
        dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, features="memory")).validate()
    first = run_eval(cfg.validate())
    assert "eval: features streamed (encoded every epoch) (data.train_augment: new train crops every epoch)" in \
        capsys.readouterr().out
    assert first["features"] == "stream" and first["num_train_videos"] == 9 and first["num_val_videos"] == 3
    assert [r["train_samples"] for r in first["runs"][0]["history"]] == [9, 9]  # one per video, not per view
    again = run_eval(cfg)
    assert again["runs"][0]["history"] == first["runs"][0]["history"]
    for key, value, match in (("random_erase_prob", 1.5, r"data.random_erase_prob must be in \[0, 1\], got 1.5"),
                              ("random_resize_scale", (0.5, 1.2), r"data.random_resize_scale must satisfy 0 < min <= "
                                                                  r"max <= 1, got \[0.5, 1.2\]")):
        with pytest.raises(ConfigError, match=match):
            dataclasses.replace(cfg, data=dataclasses.replace(data, **{key: value})).validate()


@pytest.fixture
def stop_after_each_step():
    """A stop request stands before every call (as after SIGUSR1 at any moment): each run_eval goes one probe
    step further, saves and raises Preempted."""
    from vjepa_scale.train import preempt

    yield preempt
    preempt.clear()


@pytest.mark.parametrize("features,augment", [("memory", False), ("stream", True)])
def test_a_stopped_evaluation_continues_to_the_uninterrupted_result(tmp_path, stop_after_each_step, features,
                                                                    augment):
    """Stopped after every probe step (mid-epoch, at the end of an epoch, between seeds) and run again each
    time, the evaluation ends with exactly the uninterrupted result; the state is then removed."""
    from vjepa_scale.data.synthetic_videos import write_synthetic_videos
    from vjepa_scale.eval.resume import STATE_FILE
    from vjepa_scale.eval.run import run_eval

    preempt = stop_after_each_step
    idx = write_synthetic_videos(tmp_path / "v", num_videos=12, frames=16, size=32, val_fraction=0.25, seed=0)
    (tmp_path / "junk.mp4").write_bytes(b"\x00" * 64)  # one unusable train video: reported as by a straight run
    train_index = tmp_path / "train.txt"
    train_index.write_text(Path(idx["train"]).read_text() + f"{tmp_path / 'junk.mp4'} 1\n")
    data = EvalDataConfig(train_index=str(train_index), val_index=str(idx["val"]), crop_size=32, frames_per_clip=4,
                          frame_step=2, num_views=2, num_workers=0, num_classes=8, train_augment=augment)
    cfg = EvalConfig(model=tiny_model(), data=data, optim=ProbeOptimConfig(epochs=2, batch_size=8))
    cfg.encoder.random_init = True
    cfg.run = dataclasses.replace(cfg.run, output_dir=str(tmp_path / "straight"), tensorboard=False,
                                  progress_bar=False, features=features, seeds=[0, 1])
    straight = run_eval(cfg.validate())
    steps = sum(r["steps"] for r in straight["runs"])
    # 10 train videos, 1 view each, streamed; 9 usable x 2 views in memory: 2 or 3 batches of 8 per epoch
    assert steps == 2 * 2 * (2 if augment else 3)
    stopped = dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, output_dir=str(tmp_path / "stopped")))
    stops = 0
    while True:
        preempt.request_stop("test stop")
        try:
            result = run_eval(stopped)
            break
        except preempt.Preempted as e:
            stops += 1
            assert e.checkpoint == tmp_path / "stopped" / STATE_FILE and e.checkpoint.is_file()
            assert stops <= steps
        preempt.clear()
    assert stops == steps  # one probe step per run; the last run ends the last seed
    assert [r["history"] for r in result["runs"]] == [r["history"] for r in straight["runs"]]
    assert result["val_top1_per_seed"] == straight["val_top1_per_seed"]
    assert result["skipped_videos"] == straight["skipped_videos"] and len(result["skipped_videos"]["train"]) == 1
    assert [r["num_train_videos"] for r in result["runs"]] == [r["num_train_videos"] for r in straight["runs"]] == [9, 9]
    assert not (tmp_path / "stopped" / STATE_FILE).exists()


def test_a_stopped_evaluations_state_is_refused_for_another_evaluation(tmp_path, stop_after_each_step, capsys):
    from vjepa_scale.data.synthetic_videos import write_synthetic_videos
    from vjepa_scale.eval.run import run_eval

    preempt = stop_after_each_step
    idx = write_synthetic_videos(tmp_path / "v", num_videos=8, frames=8, size=32, val_fraction=0.25, seed=0)
    data = EvalDataConfig(train_index=str(idx["train"]), val_index=str(idx["val"]), crop_size=32, frames_per_clip=4,
                          frame_step=2, num_workers=0, num_classes=8)
    cfg = EvalConfig(model=tiny_model(), data=data, optim=ProbeOptimConfig(epochs=2, batch_size=2))
    cfg.encoder.random_init = True
    cfg.run = dataclasses.replace(cfg.run, output_dir=str(tmp_path / "out"), tensorboard=False, progress_bar=False)
    preempt.request_stop("test stop")
    with pytest.raises(preempt.Preempted):
        run_eval(cfg.validate())
    preempt.clear()
    other = dataclasses.replace(cfg, optim=dataclasses.replace(cfg.optim, lr=2e-3))
    with pytest.raises(ConfigError, match=r"probe_state.pt holds the state of another evaluation \(optim.lr: 0.001 "
                                          r"there, 0.002 now\): continue it with its own settings, give another "
                                          r"--output \(run.output_dir\), or run.overwrite=true to discard it"):
        run_eval(other)
    (tmp_path / "out" / "probe_state.pt").write_bytes(b"not a state")
    with pytest.raises(ConfigError, match=r"probe_state.pt: cannot read the stopped evaluation's state"):
        run_eval(cfg)
    discarded = run_eval(dataclasses.replace(other, run=dataclasses.replace(cfg.run, overwrite=True)))
    assert discarded["config"]["optim"]["lr"] == 2e-3 and "continuing" not in capsys.readouterr().out
    # keys that do not change the result may differ (threads, workers, progress bars, the device)
    preempt.request_stop("test stop")
    with pytest.raises(preempt.Preempted):
        run_eval(cfg)
    preempt.clear()
    free = dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, num_threads=1, progress_bar=True),
                               data=dataclasses.replace(cfg.data, num_workers=1))
    assert run_eval(free)["runs"][0]["steps"] == 6
    assert "eval: continuing the stopped evaluation in " in capsys.readouterr().out


def test_cli_exits_75_on_a_stop_and_continues_on_the_next_run(tmp_path, stop_after_each_step, capsys):
    from vjepa_scale.data.synthetic_videos import write_synthetic_videos

    preempt = stop_after_each_step
    idx = write_synthetic_videos(tmp_path / "v", num_videos=8, frames=8, size=32, val_fraction=0.25, seed=0)
    cli = load_tool("eval_probe")
    args = ["--random-init", "--output", str(tmp_path / "out"), "model.size=tiny", "model.depth=1",
            f"data.train_index={idx['train']}", f"data.val_index={idx['val']}", "data.crop_size=32",
            "data.frames_per_clip=4", "data.frame_step=2", "data.num_workers=0", "data.num_classes=8",
            "optim.epochs=1", "run.progress_bar=false", "run.tensorboard=false"]
    preempt.request_stop("got SIGUSR1")
    assert cli.main(args) == 75
    assert (tmp_path / "out" / "PREEMPTED").read_text().startswith("step 1\ncheckpoint ")  # for requeue scripts
    err = capsys.readouterr().err
    assert f"eval preempted at step 1 (got SIGUSR1); checkpoint: {tmp_path / 'out' / 'probe_state.pt'}; run the " \
           f"same command again to continue" in err, err
    preempt.clear()
    assert cli.main(args) == 0 and (tmp_path / "out" / "result.json").is_file()
    assert not (tmp_path / "out" / "probe_state.pt").exists() and not (tmp_path / "out" / "PREEMPTED").exists()


def test_a_state_saved_after_the_last_epoch_resumes_to_the_same_result():
    """A kill after a seed's last per-epoch save but before it was recorded done leaves a state at the end:
    continuing it trains nothing more and gives the finished probe's result."""
    train, val = separable_features(24, 4, seed=0), separable_features(12, 4, seed=1)
    states = []
    args = (train, val, ProbeConfig(), ProbeOptimConfig(epochs=2, batch_size=8), 4, 4, 0, torch.device("cpu"))
    done = train_probe(*args, progress=False, save=lambda state, stop="": states.append(state) or Path("x"))
    assert [(st["epoch"], st["step"]) for st in states] == [(1, 0), (2, 0)]
    again = train_probe(*args, progress=False, resume=states[-1])
    assert again == done


def test_the_state_identity_names_a_newer_checkpoint_precision_and_feature_mode(tmp_path):
    from vjepa_scale.eval.resume import identity, load_state, save_state

    config = {"optim": {"lr": 1e-3}, "run": {"num_threads": 1}, "model": None}
    ident = identity(config, "runs/x (target encoder, step 3)", 2, {"dtype": "torch.bfloat16", "features": "stream"})
    save_state(tmp_path, {"identity": ident, "runs": [], "current": None})
    assert load_state(tmp_path, identity({**config, "run": {"num_threads": 8}}, "runs/x (target encoder, step 3)", 2,
                                         {"dtype": "torch.bfloat16", "features": "stream"}), False) is not None
    later = identity(config, "runs/x (target encoder, step 6)", 2, {"dtype": "torch.float32", "features": "memory"})
    with pytest.raises(ConfigError, match=r"dtype: 'torch.bfloat16' there, 'torch.float32' now; encoder: 'runs/x "
                                          r"\(target encoder, step 3\)' there, 'runs/x \(target encoder, step 6\)' "
                                          r"now; features: 'stream' there, 'memory' now"):
        load_state(tmp_path, later, False)
    assert load_state(tmp_path, later, True) is None  # run.overwrite


# ---------------------------------------------------------------- HF export


def test_hf_export_loads_the_same_encoder(tmp_path):
    from vjepa_scale.config import Config, DataConfig
    from vjepa_scale.hf import export_to_hf

    model = tiny_model()
    pre = Config(model=model, data=DataConfig(backend="synthetic", crop_size=32, frames_per_clip=4)).validate()
    torch.manual_seed(3)
    enc = VisionTransformer3D(model, pre.grid)
    export_to_hf(pre, enc.state_dict(), tmp_path / "hf")
    cfg = EvalConfig(data=EvalDataConfig(train_index="a", val_index="b", crop_size=32, frames_per_clip=4))
    cfg.encoder.hf_path = str(tmp_path / "hf")
    frozen = load_frozen_encoder(cfg.validate())
    assert frozen.model_cfg.pos_embed == "sincos" and frozen.encoder.dims.depth == 1
    assert frozen.model_cfg.size == "custom"  # tiny at depth 1 is no named size (result.json's model.size)
    for k, v in enc.state_dict().items():
        torch.testing.assert_close(frozen.encoder.state_dict()[k], v, rtol=0, atol=0)
    cfg.model = ModelConfig(size="small", depth=1)  # an architecture the export does not fit
    with pytest.raises(CheckpointMismatchError, match=r"config.json: hidden_size=192 but the config has model.width .*=384"):
        load_frozen_encoder(cfg.validate())


def test_a_damaged_hf_export_is_a_config_error_naming_the_file(tmp_path):
    """A config.json that is not JSON and a truncated safetensors file: ConfigErrors naming the file
    (the eval CLI's exit 2), not a JSON or safetensors traceback."""
    from vjepa_scale.config import Config, DataConfig
    from vjepa_scale.hf import export_to_hf

    pre = Config(model=tiny_model(), data=DataConfig(backend="synthetic", crop_size=32, frames_per_clip=4)).validate()
    export_to_hf(pre, VisionTransformer3D(tiny_model(), pre.grid).state_dict(), tmp_path / "hf")
    cfg = EvalConfig(data=EvalDataConfig(train_index="a", val_index="b", crop_size=32, frames_per_clip=4))
    cfg.encoder.hf_path = str(tmp_path / "hf")
    weights = tmp_path / "hf" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(ConfigError, match=r"encoder\.hf_path: .*model\.safetensors is damaged \(not a whole safetensors"):
        load_frozen_encoder(cfg.validate())
    from vjepa_scale.config import load_config
    from vjepa_scale.train.launch import preflight

    with pytest.raises(ConfigError, match=r"train\.init_from: .*model\.safetensors: not a readable safetensors export"):
        preflight(load_config("cpu_demo", [f"train.init_from={tmp_path / 'hf'}"]), 1)  # the same for training
    (tmp_path / "hf" / "config.json").write_text("{not json")
    with pytest.raises(ConfigError, match=r"encoder\.hf_path: .*config\.json is not valid JSON"):
        load_frozen_encoder(cfg.validate())
    export_to_hf(pre, VisionTransformer3D(tiny_model(), pre.grid).state_dict(), tmp_path / "sharded",
                 max_shard_size=20_000)  # shards and their index
    (tmp_path / "sharded" / "model.safetensors.index.json").write_text("{")
    cfg.encoder.hf_path = str(tmp_path / "sharded")
    with pytest.raises(ConfigError, match=r"encoder\.hf_path: .*model\.safetensors\.index\.json is damaged"):
        load_frozen_encoder(cfg.validate())


def test_per_class_subset_is_balanced_and_seeded():
    from vjepa_scale.eval.data import per_class_subset

    labels = [i % 3 for i in range(30)]
    a = per_class_subset(labels, 4, seed=0)
    assert len(a) == 12 and sorted(labels[i] for i in a) == [0] * 4 + [1] * 4 + [2] * 4
    assert a == per_class_subset(labels, 4, seed=0) and a != per_class_subset(labels, 4, seed=1)
    with pytest.raises(ConfigError, match=r"data.train_per_class=11 but class 0 has only 10 videos"):
        per_class_subset(labels, 11, seed=0)


def test_few_shot_subset_is_chosen_first_then_spread_over_ranks():
    """Every simulated rank picks the single-process subset and takes `chosen[rank::world]`: the shares
    are disjoint, cover the subset and differ by at most one video; fewer videos than ranks fail on every
    rank (before any collective), naming the key, the count and the world size."""
    from vjepa_scale.eval.data import per_class_subset, rank_share

    labels = [i % 4 for i in range(40)]
    single = per_class_subset(labels, 2, seed=5)  # 8 videos
    for world in (1, 2, 3, 8):
        shares = [rank_share(per_class_subset(labels, 2, seed=5), r, world, 2) for r in range(world)]
        assert sorted(i for share in shares for i in share) == single
        assert max(map(len, shares)) - min(map(len, shares)) <= 1 and min(map(len, shares)) >= 1
    for rank in range(12):
        with pytest.raises(ConfigError, match=r"data.train_per_class=2 selects 8 train videos, fewer than the 12 "
                                              r"ranks"):
            rank_share(single, rank, 12, 2)
    # a rank encodes just its share
    torch.manual_seed(0)
    enc = VisionTransformer3D(tiny_model(), (2, 2, 2)).eval()
    videos = TensorVideos(torch.randn(40, 1, 1, 3, 4, 32, 32), labels)
    share = rank_share(single, 1, 3, 2)
    fs = extract_features(enc, videos, 4, torch.device("cpu"), rank=1, world_size=3, progress=False, positions=share)
    assert fs.index_M.tolist() == share


def test_probe_training_refuses_a_rank_without_samples():
    empty = FeatureSet(torch.zeros(0, 2, 5, 24), torch.zeros(0, dtype=torch.int64), torch.zeros(0, dtype=torch.int64))
    with pytest.raises(ValueError, match=r"probe seed0: 1 of 1 ranks hold no training sample \(0 \(video, view\)"):
        train_probe(empty, separable_features(8, 4, seed=1), ProbeConfig(), ProbeOptimConfig(epochs=1), num_classes=4,
                    encoder_heads=4, seed=0, device=torch.device("cpu"), tag="seed0", progress=False)


def test_effective_rank():
    from vjepa_scale.eval.features import effective_rank, top_pc_share

    g = torch.Generator().manual_seed(0)
    line = torch.randn(500, 1, generator=g) * torch.randn(1, 16, generator=g)
    assert effective_rank(line) == pytest.approx(1.0, abs=1e-4)
    q, _ = torch.linalg.qr(torch.randn(16, 16, generator=g))
    iso = torch.cat([q, -q]) * 3.0  # centred, equal singular values
    assert effective_rank(iso) == pytest.approx(16.0, rel=1e-6)
    assert 1.0 < effective_rank(torch.randn(200, 4, generator=g) * torch.tensor([10.0, 1.0, 1.0, 1.0])) < 4.0
    assert top_pc_share(line) == pytest.approx(1.0, abs=1e-6)
    assert top_pc_share(iso) == pytest.approx(1 / 16, rel=1e-6)


# ---------------------------------------------------------------- the command line's output folder


def test_cli_default_output_folder_names_the_encoder_source():
    """tools/eval_probe.py's docstring examples, without --output, write to four folders (a random-init
    baseline does not replace the pretrained result); --output or a run.output_dir override is taken as given."""
    cli = load_tool("eval_probe")
    base = "runs/experiment_motion/probe"
    cases = {(): base, ("--which", "online"): f"{base}_online", ("--random-init",): f"{base}_random_init",
             ("--random-init", "--output", "o1"): "o1", ("--random-init", "run.output_dir=o2/"): "o2/"}
    for extra, want in cases.items():
        cfg = cli.eval_config(*cli.parse_args(["--config", "probe_motion", "--checkpoint", "runs/motion", *extra]))
        assert cfg.run.output_dir == want, extra
    cfg = cli.eval_config(*cli.parse_args(["--config", "probe_motion", "--hf", "exports/motion_hf"]))
    assert cfg.run.output_dir == f"{base}_hf" and cfg.encoder.hf_path == "exports/motion_hf"
    # a run= mapping merges into the recipe's run section: it sets the folder only when it names output_dir
    cfg = cli.eval_config(*cli.parse_args(["--config", "probe_motion", "--random-init", "--checkpoint", "r",
                                           "run={seeds: [0]}"]))
    assert cfg.run.output_dir == f"{base}_random_init" and cfg.run.seeds == [0]
    cfg = cli.eval_config(*cli.parse_args(["--config", "probe_motion", "--checkpoint", "r", "run={output_dir: o3}"]))
    assert cfg.run.output_dir == "o3"
    assert not cli.output_given(["run={seeds: [0], device: output_dir_like}"])  # only the key counts
    # a path flag is a path, not YAML: '#' and a date stay in it
    cfg = cli.eval_config(*cli.parse_args(["--config", "probe_motion", "--checkpoint", "runs/motion #2",
                                           "--output", "2024-06-01"]))
    assert (cfg.encoder.checkpoint, cfg.run.output_dir) == ("runs/motion #2", "2024-06-01")


def test_experiment_summary_pairs_only_probes_of_one_architecture(tmp_path, capsys):
    """tools/experiment_summary.py --pair refuses a pretrained result and a baseline of different models (a
    RoPE encoder against a sin-cos random init measures nothing) and tabulates a matching pair."""
    import json

    summary = load_tool("experiment_summary")
    run = tmp_path / "pre"
    run.mkdir()
    (run / "metrics.jsonl").write_text(json.dumps({"step": 1, "loss": 0.5, "step_time": 0.1}) + "\n")
    model = {"size": "tiny", "width": 192, "depth": 12, "num_heads": 3, "mlp_ratio": 4.0, "pos_embed": "rope"}
    res = {"encoder": "e", "val_top1_mean": 60.0, "val_top1_std": 0.0, "val_top1_per_seed": {"0": 60.0},
           "num_train_videos": 8, "num_val_videos": 4, "num_classes": 4, "model": model}
    pre, rnd, other = tmp_path / "pre.json", tmp_path / "rnd.json", tmp_path / "other.json"
    pre.write_text(json.dumps(res))
    rnd.write_text(json.dumps(res | {"val_top1_mean": 40.0, "val_top1_per_seed": {"0": 40.0}}))
    other.write_text(json.dumps(res | {"model": model | {"pos_embed": "sincos"}}))
    args = ["--pretrain", str(run), "--out", str(tmp_path / "out"), "--pair", "full", str(pre)]
    assert summary.main([*args, str(other)]) == 2
    assert "a baseline must have the pretrained encoder's architecture" in capsys.readouterr().err
    assert summary.main([*args, str(rnd)]) == 0
    assert "| full | 8 | 60.0 ± 0.0 (60.0) | 40.0 ± 0.0 (40.0) | +20.0 |" in capsys.readouterr().out

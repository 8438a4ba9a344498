"""Recipes load into typed configs; bad configs fail before any training work with a named key
(tools/train.py's refusals and fresh-interpreter checks: integration/test_config_cli.py)."""
import dataclasses
import math
import re
import typing
from pathlib import Path

import pytest
import torch
import yaml

from helpers import ROOT

from vjepa_scale.config import (Config, ConfigError, ModelConfig, Section, clip_grid, config_search_path,
                                load_config, resolve_config_path, save_config, to_plain)
from vjepa_scale.eval.config import EvalConfig
from vjepa_scale.train.launch import (check_attention_backend, check_data_paths, deepspeed_config, preflight,
                                      resolve_batch)
from vjepa_scale.train.phases import plan
from vjepa_scale.train.schedules import horizon


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
    assert (cfg.data.frames_per_clip, cfg.data.frame_step, cfg.data.fps) == (16, 4, None)
    # jepa concatenates its datasets (weights by size) and pads short videos with their last frame
    assert cfg.data.short_videos == "pad" and [d.weight for d in cfg.data.datasets] == [None] * 3
    assert cfg.data.frame_spacing == "linspace"  # and spreads 16 frames over 64, as its linspace does


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


def test_integer_keys_take_whole_numbers_in_exponent_form(tmp_path):
    """YAML 1.1 reads 1e5, 1.0e5 and 2.5e3 as strings (no dot or no exponent sign) and 1.0e+5 as a float:
    an int key takes each when it is exactly a whole number, in a recipe and in an override alike,
    Optional[int] keys included; a string key keeps the string."""
    p = tmp_path / "exp.yaml"
    p.write_text("data:\n  backend: synthetic\noptim:\n  iterations: 1e5\n  warmup: 2.5e3\ntrain:\n  checkpoint_every: 1.0e+3\n"
                 "  log_every: 1.0e1\n")
    cfg = load_config(p)
    got = (cfg.optim.iterations, cfg.optim.warmup, cfg.train.checkpoint_every, cfg.train.log_every)
    assert got == (100_000, 2_500, 1_000, 10) and all(type(v) is int for v in got)
    cfg = load_config("cpu_demo", ["optim.iterations=1.0e5", "optim.warmup=2.5e3", "model.width=1.92e2",
                                   "data.global_batch_size=8e0", "train.output_dir=1e5"])
    assert (cfg.optim.iterations, cfg.optim.warmup, cfg.model.width, cfg.data.global_batch_size) == \
        (100_000, 2_500, 192, 8)
    assert type(cfg.model.width) is int and cfg.train.output_dir == "1e5"


@pytest.mark.parametrize("opt,shown", [("optim.iterations=1.5", "1.5 (not a whole number)"),
                                       ("optim.iterations=2.5e-1", "0.25 (not a whole number)"),
                                       ("optim.iterations=1.5e0", "'1.5e0' (not a whole number)"),
                                       ("model.width=2.5e-1", "0.25 (not a whole number)"),
                                       ("optim.iterations=true", "True"), ("optim.iterations='1e5x'", "'1e5x'")])
def test_integer_keys_refuse_fractions_naming_key_and_value(opt, shown):
    key = opt.split("=")[0]
    with pytest.raises(ConfigError, match=rf"{re.escape(key)} must be an integer, got {re.escape(shown)}$"):
        load_config("cpu_demo", [opt])


@pytest.mark.parametrize("opts,message", [
    (["model.pos_embed=rope", "model.pred_width=56", "model.pred_num_heads=8"],
     r"pos_embed=rope needs an even head size >= 6, got model\.pred_width / model\.pred_num_heads = 7"),
    (["model.pos_embed=rope", "model.pred_width=64", "model.pred_num_heads=32"],
     r"got model\.pred_width / model\.pred_num_heads = 2"),
    (["model.pos_embed=rope", "model.size=custom", "model.width=198", "model.depth=2", "model.num_heads=2",
      "model.mlp_ratio=4"], r"got model\.width / model\.num_heads = 99"),
    (["optim.betas=[0.9, 1.5]"], r"optim\.betas must each be in \[0, 1\), got \[0\.9, 1\.5\]"),
    (["optim.eps=-1"], r"optim\.eps must be >= 0 and finite, got -1"),
    (["optim.lr=nan"], r"optim\.lr must be > 0, got nan"),
    (["model.width=0"], r"model\.width must be > 0, got 0"),
    (["data.global_batch_size=null", "data.tokens_per_batch=64", "data.crop_size=64", "data.frames_per_clip=8",
      "phases=[{steps: 30}, {frames_per_clip: 16}]"],
     r"data\.tokens_per_batch=64 is below one clip of data\.datasets\[0\] in phases\[1\] \(128 tokens\)"),
])
def test_values_that_would_fail_later_are_refused_naming_the_key(opts, message):
    """Each of these was accepted and then crashed at the first forward / the engine start, or trained
    wrongly (a RoPE head of 2 channels has no rotary part; a phase's clip over the token budget)."""
    with pytest.raises(ConfigError, match=message):
        load_config("cpu_demo", opts)


@pytest.mark.parametrize("opts,message", [
    (["data.fps=0"], r"^data\.fps must be > 0, got 0"),
    (["data.fps=-4"], r"^data\.fps must be > 0, got -4"),
    (["data.short_videos=repeat"], r"^data\.short_videos must be one of \['skip', 'pad'\], got 'repeat'"),
    (["data.datasets=[{path: a.txt, weight: null}, {path: b.txt, weight: 2.0}]"],
     r"^data\.datasets\[0\]\.weight is null \(in proportion to its entries\) but data\.datasets\[1\]\.weight is 2\.0"),
    (["data.datasets=[{path: a.txt, weight: 1.0}, {path: b.txt, weight: null}]"],
     r"^data\.datasets\[1\]\.weight is null .* but data\.datasets\[0\]\.weight is 1\.0: make every"),
    (["data.datasets=[{path: a.txt, weight: 0}]"], r"^data\.datasets\[0\]\.weight must be > 0 or null, got 0"),
])
def test_sampling_keys_are_checked_naming_the_key(opts, message):
    with pytest.raises(ConfigError, match=message):
        load_config("cpu_demo", ["data.backend=cpu", *opts])


@pytest.mark.parametrize("opt,message", [
    ("optim.start_lr=.nan", r"^optim\.start_lr must be >= 0 and finite, got nan"),
    ("optim.final_lr=-1.0e-3", r"^optim\.final_lr must be >= 0 and finite, got -0\.001"),
    ("optim.weight_decay=.nan", r"^optim\.weight_decay must be >= 0"),
    ("optim.grad_clip=.nan", r"^optim\.grad_clip must be >= 0 and finite, got nan"),  # nan > 0 was False: no clipping
    ("train.hang_timeout_s=.nan", r"^train\.hang_timeout_s must be >= 0 and finite"),  # the watchdog was off
    ("train.device_peak_tflops=-5", r"^train\.device_peak_tflops must be > 0"),
])
def test_nan_and_negative_rates_are_refused(opt, message):
    with pytest.raises(ConfigError, match=message):
        load_config("cpu_demo", [opt])


def test_config_files_duplicate_keys_and_paths(tmp_path):
    """A key given twice in a mapping is refused naming its line (PyYAML keeps the last: a second `optim:`
    dropped the first); YAML merge keys still work; a path with a folder that does not exist is refused,
    not read as the shipped recipe of that file name."""
    p = tmp_path / "r.yaml"
    p.write_text("model: {size: tiny}\noptim: {lr: 1.0e-3}\ntrain: {seed: 1}\noptim: {warmup: 5}\n")
    with pytest.raises(ConfigError, match=rf"^{p}: invalid YAML at line 4, column 1: duplicate key 'optim'"):
        load_config(p)
    with pytest.raises(ConfigError, match=r"the value '\{lr: 1.0e-3, lr: 5.0e-3\}' is not valid YAML \(duplicate key 'lr'"):
        load_config("cpu_demo", ["optim={lr: 1.0e-3, lr: 5.0e-3}"])
    p.write_text("data: {backend: synthetic}\nmodel: &m {size: tiny}\noptim:\n  <<: {lr: 2.0e-3, warmup: 5}\n"
                 "  lr: 1.0e-3\n")
    assert (load_config(p).optim.lr, load_config(p).optim.warmup) == (1e-3, 5)
    with pytest.raises(ConfigError, match=r"config file '/nowhere/recipes/vith384.yaml' not found \(a path with a "
                                          r"folder is read as given"):
        load_config("/nowhere/recipes/vith384.yaml")
    assert load_config("vith384").data.crop_size == 384  # a bare name still finds the recipe
    p.write_text("model: {size: tiny}\n? [a, b]\n: 1\n")  # a list as a key: YAML's own error, exit 2 (no TypeError)
    with pytest.raises(ConfigError, match=rf"^{p}: invalid YAML at line 2"):
        load_config(p)
    (tmp_path / "recipes").mkdir()
    (tmp_path / "recipes" / "mine.yaml").write_text("data: {backend: synthetic}\nmodel: {size: tiny}\n")
    assert load_config(tmp_path / "recipes" / "mine").model.size == "tiny"  # a path may leave out .yaml
    # a mapping merges into a section (the recipe's other keys stay); a list replaces; null resets
    merged = load_config("cpu_demo", ["optim={lr: 1.0e-3, warmup: 4}"])
    assert (merged.optim.lr, merged.optim.warmup, merged.optim.iterations) == (1e-3, 4, 60)
    assert load_config("cpu_demo", ["optim=null"]).optim.iterations == 90_000
    assert len(load_config("cpu_demo", ["mask.types=[{num_blocks: 3}]"]).mask.types) == 1


def test_sampling_keys_accepted():
    cfg = load_config("cpu_demo", ["data.backend=cpu", "data.fps=4", "data.short_videos=pad",
                                   "data.datasets=[{path: a.txt, weight: null}, {path: b.txt, weight: null}]"])
    assert (cfg.data.fps, cfg.data.short_videos) == (4.0, "pad")
    assert [d.weight for d in cfg.data.datasets] == [None, None]
    assert load_config("cpu_demo").data.short_videos == "skip" and load_config("cpu_demo").data.fps is None


def test_zero_stage_0_is_refused_naming_the_key():
    with pytest.raises(ConfigError, match=r"^zero\.stage must be 1, 2 or 3, got 0 \(stage 0 keeps no ZeRO"):
        load_config("cpu_demo", ["zero.stage=0"])


def test_a_runs_saved_config_launches_again_on_another_world_size(tmp_path):
    """RUN/config.yaml leaves the derived per-rank batch null (`as_saved`): the file resolves again on
    any world size with the same global batch (an elastic resume from it continues exactly)."""
    from vjepa_scale.config import save_config
    from vjepa_scale.train.phases import as_saved

    ran = preflight(load_config("cpu_demo"), 2)
    assert (ran.data.batch_size, ran.data.global_batch_size) == (4, 8)
    save_config(as_saved(ran), tmp_path / "config.yaml")
    again = preflight(load_config(tmp_path / "config.yaml"), 4)
    assert (again.data.batch_size, again.data.global_batch_size) == (2, 8)
    budget = preflight(load_config("cpu_demo", ["data.tokens_per_batch=4096", "data.global_batch_size=null"]), 2)
    save_config(as_saved(budget), tmp_path / "budget.yaml")  # a token budget derives both keys
    assert preflight(load_config(tmp_path / "budget.yaml"), 1).data.tokens_per_batch == 4096
    # a per-rank batch stays per rank (it was saved as this world's global batch: 6 on 2 ranks, refused on 4)
    per_rank = preflight(load_config("cpu_demo", ["data.global_batch_size=null", "data.batch_size=3"]), 2)
    save_config(as_saved(per_rank), tmp_path / "per_rank.yaml")
    again = preflight(load_config(tmp_path / "per_rank.yaml"), 4)
    assert (again.data.batch_size, again.data.global_batch_size) == (3, 12)
    both = preflight(load_config("cpu_demo", ["data.batch_size=4"]), 2)  # agrees with the global 8: that one stays
    assert (as_saved(both).data.batch_size, as_saved(both).data.global_batch_size) == (None, 8)


def test_a_token_budget_refuses_batch_keys_it_would_ignore(tmp_path):
    """Checked on the user's config (preflight); a run's saved config holds the resolved global batch."""
    from vjepa_scale.config import save_config

    with pytest.raises(ConfigError, match=r"data\.tokens_per_batch=4096 sets the batch .* "
                                          r"set data\.global_batch_size: null"):
        preflight(load_config("cpu_demo", ["data.tokens_per_batch=4096", "data.global_batch_size=8"]), 1)
    saved = preflight(load_config("cpu_demo", ["data.tokens_per_batch=4096", "data.global_batch_size=null"]), 2)
    save_config(saved, tmp_path / "config.yaml")  # what a checkpoint holds: loads back as it was
    assert saved.data.global_batch_size is not None and load_config(tmp_path / "config.yaml") == saved
    with pytest.raises(ConfigError, match=r"phases\[1\]\.global_batch_size would be ignored: data\.tokens_per_batch"):
        load_config("cpu_demo", ["data.tokens_per_batch=4096", "data.global_batch_size=null",
                                 "phases=[{steps: 30}, {global_batch_size: 8}]"])
    load_config("cpu_demo", ["data.tokens_per_batch=4096", "data.global_batch_size=null"])
    budget = ["data.tokens_per_batch=4096", "data.global_batch_size=null"]
    with pytest.raises(ConfigError, match=r"data\.tokens_per_batch=4096 sets the batch .* so data\.batch_size=3 would "
                                          r"be ignored: set data\.batch_size: null"):
        preflight(load_config("cpu_demo", [*budget, "data.batch_size=3"]), 1)
    # a phase at another crop has its own window (the batch resolved for phase 0 does not carry over)
    two = preflight(load_config("cpu_demo", [*budget, "phases=[{steps: 30}, {crop_size: 96}]"]), 1)
    windows = [p.cfg.data.batch_size for p in plan(two, 1)]
    assert windows == [p.cfg.budget_window() for p in plan(two, 1)] and windows[0] != windows[1]


@pytest.mark.parametrize("key,value", [("random_resize_aspect_ratio", "[0, 1.35]"),
                                       ("random_resize_aspect_ratio", "[-1, 1.35]"),
                                       ("random_resize_aspect_ratio", "[1.35, 0.75]"),
                                       ("random_resize_scale", "[0.5, 0.3]")])
def test_crop_ranges_are_checked_before_the_workers(key, value):
    with pytest.raises(ConfigError, match=rf"data\.{key} must satisfy 0 < min <= max.*, got \["):
        load_config("cpu_demo", [f"data.{key}={value}"])


@pytest.mark.parametrize("value,want", [("true", True), ("false", False), ("0.25", 0.25), ("1", 1.0),
                                        ("auto", "auto")])
def test_activation_checkpointing_forms(value, want):
    """A union key takes each accepted form as itself (a bool stays a bool, not 1.0)."""
    m = load_config("cpu_demo", [f"model.activation_checkpointing={value}"]).model
    assert m.activation_checkpointing == want and type(m.activation_checkpointing) is type(want)
    assert m.checkpoint_fraction == (1.0 if want == "auto" else float(want))


@pytest.mark.parametrize("value,needle", [("sometimes", "none of the accepted forms"), ("1.5", "in [0, 1]"),
                                         ("-0.5", "in [0, 1]")])
def test_activation_checkpointing_refuses_other_values(value, needle):
    with pytest.raises(ConfigError, match=r"model\.activation_checkpointing.*" + re.escape(needle)):
        load_config("cpu_demo", [f"model.activation_checkpointing={value}"])


def test_global_batch_divides_world():
    cfg = load_config("vith384")
    assert resolve_batch(cfg, 240).data.batch_size == 10
    assert resolve_batch(load_config("vith384", ["optim.grad_accum=2"]), 120).data.batch_size == 10
    with pytest.raises(ConfigError, match=r"data\.global_batch_size=2400 is not divisible by world_size=7"):
        resolve_batch(cfg, 7)
    per_rank = load_config("cpu_demo", ["data.global_batch_size=null", "data.batch_size=3"])
    assert resolve_batch(per_rank, 2).data.global_batch_size == 6


def test_an_explicit_batch_size_must_agree_with_the_global_batch():
    """data.batch_size given next to data.global_batch_size is checked, not replaced: both keys and values
    are named, with the override that makes a per-rank batch train; agreeing values and a global batch
    alone (every recipe in configs/) resolve as before, and a phase's global batch replaces data's per-rank one."""
    demo = load_config("cpu_demo", ["data.batch_size=2"])  # the recipe sets data.global_batch_size: 8
    with pytest.raises(ConfigError, match=r"^data\.batch_size=2 and data\.global_batch_size=8 disagree: .* world_size=1 "
                                          r"x optim\.grad_accum=1 make 2 per step.*--opt data\.global_batch_size=null"):
        resolve_batch(demo, 1)
    with pytest.raises(ConfigError, match=r"data\.batch_size=2 and data\.global_batch_size=8 disagree"):
        preflight(load_config("cpu_demo", ["data.batch_size=2"]), 2)
    per_rank = resolve_batch(load_config("cpu_demo", ["data.batch_size=2", "data.global_batch_size=null"]), 1)
    assert (per_rank.data.batch_size, per_rank.data.global_batch_size) == (2, 2)
    both = load_config("cpu_demo", ["data.batch_size=2", "optim.grad_accum=2"])
    assert resolve_batch(both, 2).data.batch_size == 2  # 2 x 2 ranks x 2 micro-steps = 8
    assert load_config("cpu_demo").data.batch_size is None
    for name in ("cpu_demo", "vith384", "vjepa2_vitl"):
        assert resolve_batch(load_config(name), 8).data.batch_size == load_config(name).data.global_batch_size // 8
    assert resolve_batch(load_config("cpu_demo", ["data.global_batch_size=null"]), 2).data.batch_size == 10
    phased = plan(load_config("cpu_demo", ["data.batch_size=4", "phases=[{steps: 30}, {global_batch_size: 4}]"]), 2)
    assert [p.cfg.data.batch_size for p in phased] == [4, 2]


def test_missing_data_path_named(tmp_path):
    cfg = load_config("vith384")
    with pytest.raises(ConfigError, match=r"data\.datasets\[0\]\.path.*kinetics710_train\.txt.*does not exist"):
        check_data_paths(cfg)
    from helpers.videos import streamable_videos

    idx = tmp_path / "idx.txt"
    idx.write_text(f"{streamable_videos(tmp_path / 'v', 1)[0]} 0\n")  # pre-flight opens the first entries' files
    ok = load_config("vith384", [f"data.datasets=[{{path: {idx}}}]", "train.memory_check=false"])
    assert preflight(ok, 240).data.batch_size == 10
    with pytest.raises(ConfigError, match=r"train\.init_from: '/nonexistent/run' does not exist"):
        preflight(load_config("cpu_demo", ["train.init_from=/nonexistent/run"]), 2)


def test_an_index_of_images_and_videos_is_refused_unless_its_kind_is_set(tmp_path):
    """Its first entry would decide how all are decoded, skipping every entry of the other kind."""
    idx = tmp_path / "idx.txt"
    idx.write_text("a.mp4 0\nb.mp4 0\nc.JPG 1\n")
    for name in ("a.mp4", "c.jpg", "d.png"):
        (tmp_path / name).write_bytes(b"")
    with pytest.raises(ConfigError, match=r"data\.datasets\[0\]\.path: index file '.*idx\.txt' lists 1 images "
                                          r"\(first 'c\.JPG'\) and 2 other files \(first 'a\.mp4'\).*Put images and "
                                          r"videos in separate index files \(two data\.datasets entries\); setting "
                                          r"this dataset's kind does not mix them, it only skips this check: the other "
                                          r"kind's entries are then skipped \(kind: video reads an image as a "
                                          r"one-frame video: too_short"):
        check_data_paths(load_config("cpu_demo", ["data.backend=cpu", f"data.datasets=[{{path: {idx}}}]"]))
    check_data_paths(load_config("cpu_demo", ["data.backend=cpu", f"data.datasets=[{{path: {idx}, kind: video}}]"]))
    idx.write_text("c.jpg 1\nd.png 2\n")
    check_data_paths(load_config("cpu_demo", ["data.backend=cpu", f"data.datasets=[{{path: {idx}}}]"]))


@pytest.mark.parametrize("block, message", [
    ("{gradient_clipping: 1.0}", r"deepspeed\.gradient_clipping: set optim\.grad_clip instead"),
    ("{train_micro_batch_size_per_gpu: 2}", r"deepspeed\.train_micro_batch_size_per_gpu: set data\.batch_size"),
    ("{zero_optimization: {stage: 1}}", r"deepspeed\.zero_optimization\.stage: set zero\.stage instead"),
    ("{bf16: {enabled: true}}", r"deepspeed\.bf16\.enabled: set train\.precision instead"),
    ("{zero_optimisation: {sub_group_size: 7}}", r"deepspeed\.zero_optimisation: not a DeepSpeed config key; did you "
                                                 r"mean deepspeed\.zero_optimization\?"),
    ("{zero_optimization: {sub_grup_size: 7}}", r"deepspeed\.zero_optimization\.sub_grup_size: Extra inputs"),
    ("{zero_optimization: {compute_grad_norm: false}}", r"compute_grad_norm=false is supported only with ZeRO Stage 1"),
    # misspellings of keys the trainer owns: DeepSpeed would ignore them (no clipping, no bf16)
    ("{gradient_clip: 1.0}", r"deepspeed\.gradient_clip: .*did you mean deepspeed\.gradient_clipping\? That one is "
                             r"set from optim\.grad_clip"),
    ("{train_micro_batch: 2}", r"did you mean deepspeed\.train_micro_batch_size_per_gpu\?"),
    ("{bf16: {enable: true}}", r"deepspeed\.bf16: \['enable'\] looks like a misspelt `enabled`"),
])
def test_raw_deepspeed_keys_are_checked_before_any_work(block, message):
    """The raw `deepspeed:` block may not set what a typed key sets (config.yaml would record the
    typed value while DeepSpeed used another), nor misspell a section (DeepSpeed ignores unknown
    keys); DeepSpeed's own validation of zero_optimization runs in pre-flight, under the run's stage."""
    with pytest.raises(ConfigError, match=message):
        preflight(load_config("cpu_demo", [f"deepspeed={block}"]), 2)
    ok = ("{zero_optimization: {sub_group_size: 7}, bf16: {check_grad_overflow: true}, flops_profiler: {enabled: false}, "
          "communication_data_type: fp32, gradient_predivide_factor: 1.0, managed_gradient_accumulation: true}")
    assert preflight(load_config("cpu_demo", [f"deepspeed={ok}"]), 2).deepspeed["zero_optimization"]["sub_group_size"] == 7


def test_unreadable_datasets_refused_in_preflight(tmp_path):
    """An empty index, an empty folder and a folder of videos fail the pre-flight checks naming the path
    (not the first step's data load)."""
    (tmp_path / "empty.txt").write_text("# no entries\n\n")
    (tmp_path / "none").mkdir()
    (tmp_path / "clips").mkdir()
    (tmp_path / "clips" / "a.mp4").write_bytes(b"")
    cases = {"empty.txt": r"index file '.*empty\.txt' lists no videos",
             "none": r"folder '.*none' holds no files \(a folder is read as an image set",
             "clips": r"folder '.*clips' holds no \.jpg/\.jpeg/\.png images, subfolders included \(first of its 1 "
                      r"files: 'a\.mp4'\): a folder is read as an image set .*videos need an index file"}
    for name, message in cases.items():
        cfg = load_config("cpu_demo", ["data.backend=cpu", f"data.datasets=[{{path: {tmp_path / name}}}]"])
        with pytest.raises(ConfigError, match=r"data\.datasets\[0\]\.path: " + message):
            preflight(cfg, 1)
    # ImageNet's layout: images in class subfolders
    from vjepa_scale.data.index import read_index

    for cls in ("n01", "n02"):
        (tmp_path / "inet" / cls).mkdir(parents=True)
        (tmp_path / "inet" / cls / f"{cls}_1.JPEG").write_bytes(b"")
    (tmp_path / "inet" / "top.png").write_bytes(b"")
    (tmp_path / "elsewhere" / "n03").mkdir(parents=True)  # a subset built from linked class folders
    (tmp_path / "elsewhere" / "n03" / "n03_1.png").write_bytes(b"")
    (tmp_path / "inet" / "n03").symlink_to(tmp_path / "elsewhere" / "n03")
    (tmp_path / "inet" / "n01" / "loop").symlink_to(tmp_path / "inet")  # a link back: listed once, no loop
    paths, _ = read_index(tmp_path / "inet")
    assert [Path(p).relative_to((tmp_path / "inet").resolve()).as_posix() for p in paths] == \
        ["n01/n01_1.JPEG", "n02/n02_1.JPEG", "n03/n03_1.png", "top.png"]


def test_attention_backend_checked_for_the_device_and_dtype():
    """A backend the run's device cannot run is refused before any work, not in the first forward pass."""
    cpu = torch.device("cpu")
    with pytest.raises(ConfigError, match=r"model\.attention_backend: 'flash_attn' is not available on cpu; it needs CUDA"):
        check_attention_backend(load_config("cpu_demo", ["model.attention_backend=flash_attn"]), cpu)
    check_attention_backend(load_config("cpu_demo", ["model.attention_backend=padded"]), cpu)
    if not torch.cuda.is_available():  # preflight checks the device the run will use: the CPU here
        with pytest.raises(ConfigError, match=r"'cudnn' is not available on cpu"):
            preflight(load_config("cpu_demo", ["model.attention_backend=cudnn"]), 1)


def test_yaml_syntax_errors_name_the_file_position_or_override(tmp_path):
    bad = tmp_path / "broken.yaml"
    bad.write_text("model:\n  size: tiny\n  depth: [1, 2\ntrain:\n  seed: 1\n")
    with pytest.raises(ConfigError, match=r"broken\.yaml: invalid YAML at line 4, column 6: .*expected ',' or ']'"):
        load_config(bad)
    with pytest.raises(ConfigError, match=r"override 'data\.datasets=\[\{path: x': the value '\[\{path: x' is not "
                                          r"valid YAML \(.*expected ',' or '\}'.* at column 10\)"):
        load_config("cpu_demo", ["data.datasets=[{path: x"])


def test_deepspeed_config_blocks():
    cfg = load_config("vith384", ["zero.stage3_prefetch_bucket_size=123",
                                  "deepspeed={zero_optimization: {sub_group_size: 7}, wall_clock_breakdown: true}"])
    cfg = resolve_batch(cfg, 240)
    ds = deepspeed_config(cfg, 240)
    z = ds["zero_optimization"]
    assert z["stage"] == 3 and z["stage3_prefetch_bucket_size"] == 123 and z["sub_group_size"] == 7
    assert ds["wall_clock_breakdown"] is True  # the raw block is merged last
    assert ds["bf16"] == {"enabled": True}
    assert ds["train_batch_size"] == 2400 and ds["train_micro_batch_size_per_gpu"] == 10
    target = deepspeed_config(cfg, 240, with_optimizer=False)
    assert target["zero_optimization"]["stage3_param_persistence_threshold"] == 0
    assert target["wall_clock_breakdown"] is True  # the raw block is merged into both engines' configs
    plain = resolve_batch(load_config("vith384"), 240)
    assert deepspeed_config(plain, 240)["gradient_clipping"] == 10.0  # optim.grad_clip
    assert "gradient_clipping" not in deepspeed_config(plain, 240, with_optimizer=False)  # no optimizer: no clip
    assert "bf16" not in deepspeed_config(resolve_batch(load_config("cpu_demo"), 2), 2)  # fp32 on CPU
    z2 = resolve_batch(load_config("cpu_demo", ["zero.stage=2"]), 2)
    assert deepspeed_config(z2, 2)["zero_optimization"]["stage"] == 2
    assert deepspeed_config(z2, 2, with_optimizer=False)["zero_optimization"] == {"stage": 0}  # replicated target


def _assert_holds(loaded, raw, where):
    """Every value the YAML sets is in the loaded config (numbers compared as floats: YAML 1.1 reads
    1e-3 as a string)."""
    if isinstance(raw, dict):
        for k, v in raw.items():
            assert k in loaded, f"{where}.{k} missing"
            _assert_holds(loaded[k], v, f"{where}.{k}")
    elif isinstance(raw, list):
        assert len(loaded) == len(raw), where
        for i, (a, b) in enumerate(zip(loaded, raw)):
            _assert_holds(a, b, f"{where}[{i}]")
    elif isinstance(loaded, float) and not isinstance(raw, bool):
        assert loaded == float(raw), where
    else:
        assert loaded == raw, where


@pytest.mark.parametrize("name", sorted(p.name for p in (ROOT / "configs").glob("*.yaml")
                                        if not p.name.startswith("probe_")))
def test_every_training_recipe_loads_and_validates(name):
    raw = yaml.safe_load((ROOT / "configs" / name).read_text())
    cfg = load_config(name)
    _assert_holds(cfg.to_dict(), raw, name)
    m, d = raw["model"], raw["data"]
    g = d["crop_size"] // m["patch_size"]
    assert cfg.grid == (d["frames_per_clip"] // m["tubelet_size"], g, g)
    phases = raw.get("phases") or [{}]  # each phase's clip: its own keys, else data's
    assert len(cfg.phase_configs()) == len(phases)
    for p, c in zip(phases, cfg.phase_configs()):
        g = p.get("crop_size", d["crop_size"]) // m["patch_size"]
        assert c.grid == (p.get("frames_per_clip", d["frames_per_clip"]) // m["tubelet_size"], g, g), name


def test_bare_names_resolve_in_order(tmp_path):
    first, second = tmp_path / "a", tmp_path / "b"
    for folder, names in ((first, ["both", "only_a"]), (second, ["both", "only_b"])):
        folder.mkdir()
        for n in names:
            (folder / f"{n}.yaml").write_text(f"# {folder.name}\n")
    search = [first, second]
    assert resolve_config_path("both", search) == first / "both.yaml"
    assert resolve_config_path("both.yaml", search) == first / "both.yaml"
    assert resolve_config_path("only_b", search) == second / "only_b.yaml"
    assert resolve_config_path("both", [second, first]) == second / "both.yaml"
    given = tmp_path / "both.yaml"
    given.write_text("# given\n")
    assert resolve_config_path(given, search) == given  # an existing path wins over the folders
    with pytest.raises(ConfigError, match=r"'nope' not found .*known: \['both.yaml', 'only_a.yaml', 'only_b.yaml'\]"):
        resolve_config_path("nope", search)


def test_this_checkouts_recipes_come_first():
    """Bare names resolve into the checkout's configs/ first (a checkout whose package holds recipes too:
    integration/test_config_cli.py)."""
    assert config_search_path()[0] == ROOT / "configs"
    assert resolve_config_path("vith384") == ROOT / "configs" / "vith384.yaml"
    with pytest.raises(ConfigError, match=r"'vith385' not found .*'vith384.yaml'"):
        load_config("vith385")


def test_clip_grid():
    assert clip_grid(384, 16, ModelConfig()) == (8, 24, 24)
    assert clip_grid(64, 12, ModelConfig(patch_size=8, tubelet_size=4)) == (3, 8, 8)
    with pytest.raises(ConfigError, match=r"^data\.crop_size=40 is not divisible by model\.patch_size=16$"):
        clip_grid(40, 16, ModelConfig())
    with pytest.raises(ConfigError, match=r"^clip\.frames_per_clip=7 is not divisible by model\.tubelet_size=2$"):
        clip_grid(32, 7, ModelConfig(), prefix="clip")
    with pytest.raises(ConfigError, match=r"data\.crop_size=40 is not divisible by model\.patch_size=16"):
        load_config("cpu_demo", ["data.crop_size=40"])  # Config.validate checks it before any work
    with pytest.raises(ConfigError, match=r"data\.frames_per_clip=5 is not divisible by model\.tubelet_size=2"):
        load_config("cpu_demo", ["data.frames_per_clip=5"])


def test_sections_share_one_public_base():
    for top in (Config, EvalConfig):
        for f in dataclasses.fields(top):
            if f.name != "deepspeed":
                hint = typing.get_type_hints(top)[f.name]
                cls = next(a for a in (typing.get_args(hint) or (hint,)) if a is not type(None))
                assert issubclass(cls, Section), f"{top.__name__}.{f.name}"
    with pytest.raises(ConfigError, match=r"^model\.pred_depth must be > 0, got 0$"):
        ModelConfig(pred_depth=0).validate()
    assert to_plain({"a": (1, [2, (3,)])}) == {"a": [1, [2, [3]]]}


# --------------------------------------------------------------------------------------------------
# Phases (config.phases) and the V-JEPA 2 recipes
# --------------------------------------------------------------------------------------------------

TWO_PHASES = "phases=[{steps: 30, crop_size: 64, frames_per_clip: 4}, {crop_size: 96, frames_per_clip: 8}]"


@pytest.mark.parametrize("phases,message", [
    ("[{steps: 30}, {crop_size: 90}]", r"phases\[1\]\.crop_size=90 is not divisible by model\.patch_size=16"),
    ("[{steps: 30}, {frames_per_clip: 5}]", r"phases\[1\]\.frames_per_clip=5 is not divisible by model\.tubelet_size=2"),
    ("[{steps: 30}, {steps: 40}]", r"the phases' steps add up to 70, optim\.iterations=60"),
    ("[{crop_size: 64}, {steps: 30}]", r"phases\[0\]\.steps is missing"),
    ("[{steps: 60}, {crop_size: 96}]", r"leaving none of optim\.iterations=60 for phases\[1\]"),
    ("[{steps: 30}, {batch_size: 2, global_batch_size: 8}]", r"phases\[1\]: give batch_size .* or global_batch_size, not both"),
    ("[{steps: 30}, {crop: 96}]", r"unknown config key 'phases\[1\]\.crop'; did you mean 'phases\[1\]\.crop_size'"),
    ("[{steps: 30}, {steps: 0}]", r"phases\[1\]\.steps must be > 0"),
    ("[{steps: 30}, {optim: {cooldown: 10}}]", r"phases\[1\]\.optim\.cooldown=10 needs phases\[1\]\.optim\.lr_schedule: wsd"),
    ("[{steps: 30}, {optim: {lr_schedule: wsd, warmup: 10, cooldown: 40}}]",
     r"phases\[1\]\.optim\.warmup=10 \+ phases\[1\]\.optim\.cooldown=40 exceed .* = 37 steps"),
])
def test_phase_errors_name_the_phase(phases, message):
    with pytest.raises(ConfigError, match=message):
        load_config("cpu_demo", [f"phases={phases}"])


def test_phases_expand_into_single_phase_configs(tmp_path):
    cfg = load_config("cpu_demo", [TWO_PHASES, "optim.lr_schedule=wsd", "optim.warmup=5"])
    a, b = cfg.phase_configs()
    assert (a.grid, b.grid, cfg.grid) == ((2, 4, 4), (4, 6, 6), (2, 4, 4))
    assert (a.optim.iterations, b.optim.iterations) == (30, 30)  # the last phase runs to optim.iterations
    assert a.optim.lr_schedule == b.optim.lr_schedule == "wsd" and not a.phases and not b.phases
    assert load_config("cpu_demo").phase_configs()[0].optim.iterations == 60  # no phases: the config itself
    save_config(cfg, tmp_path / "c.yaml")
    assert load_config(tmp_path / "c.yaml").to_dict() == cfg.to_dict()


def test_overrides_index_into_lists_as_errors_name_them():
    """`--opt phases[1].steps=...` edits one element of a list (as errors name it), negative from the end;
    a bad index or a non-list is refused naming the override."""
    base = [TWO_PHASES]
    cfg = load_config("cpu_demo", [*base, "optim.iterations=50", "phases[1].steps=20", "phases[-1].optim.lr=1e-4",
                                   "phases[0].crop_size=96"])
    assert [(p.steps, p.crop_size, p.optim.lr) for p in cfg.phases] == [(30, 96, None), (20, 96, 1e-4)]
    cfg = load_config("cpu_demo", ["data.datasets=[{path: a.csv, weight: 1.0}, {path: b.csv, weight: 1.0}]",
                                   "data.datasets[1].weight=3.0"], validate=False)
    assert [d.weight for d in cfg.data.datasets] == [1.0, 3.0]
    for opt, message in [("phases[2].steps=5", r"phases\[2\] is out of range \(phases has 2 element\(s\)\)"),
                         ("optim[0].lr=1", r"optim is not a list"),
                         ("phases[1.steps=5", r"'phases\[1' is not a key or key\[index\]"),
                         ("phases[0][1]=5", r"phases\[0\] is not a list")]:
        with pytest.raises(ConfigError, match=message):
            load_config("cpu_demo", [*base, opt])
    with pytest.raises(ConfigError, match=r"phases is not set in the recipe \(its default applies\), so it has no "
                                          r"element 0 to change: give the whole list, phases=\[\.\.\.\]"):
        load_config("cpu_demo", ["phases[0].steps=5"])
    # a misspelt key (a dash for an underscore) is refused by name with a suggestion, like one in YAML
    with pytest.raises(ConfigError, match=r"unknown config key 'data.batch-size'; did you mean 'data.batch_size'\?"):
        load_config("cpu_demo", ["data.batch-size=4"])


def test_phase_batch_and_memory_checked_per_phase():
    from vjepa_scale.train.phases import plan

    cfg = load_config("cpu_demo", ["phases=[{steps: 30}, {global_batch_size: 6}]"])
    with pytest.raises(ConfigError, match=r"phases\[1\]\.global_batch_size=6 is not divisible by world_size=4"):
        plan(cfg, 4)
    assert [p.cfg.data.batch_size for p in plan(cfg, 2)] == [4, 3]
    with pytest.raises(ConfigError, match=r"phases\[1\]\.global_batch_size=6 is not divisible by world_size=4"):
        preflight(cfg, 4)
    huge = load_config("cpu_demo", ["phases=[{steps: 30}, {crop_size: 384, frames_per_clip: 64, "
                                    "global_batch_size: 200000}]"])
    with pytest.raises(ConfigError, match=r"phases\[1\] \(64 frames x 384 px, global batch 200000\): memory preflight"):
        preflight(huge, 2)
    preflight(load_config("cpu_demo", [TWO_PHASES]), 2)  # both phases fit


def test_init_from_optimizer_needs_a_training_run(tmp_path):
    with pytest.raises(ConfigError, match=r"train\.init_from_optimizer: true needs train\.init_from"):
        load_config("cpu_demo", ["train.init_from_optimizer=true"])
    f = tmp_path / "official.pt"
    f.write_bytes(b"")
    with pytest.raises(ConfigError, match=r"init_from_optimizer: true needs train\.init_from to be a training run"):
        preflight(load_config("cpu_demo", [f"train.init_from={f}", "train.init_from_optimizer=true"]), 2)
    assert load_config("cpu_demo").train.init_from_optimizer is False  # the documented default


def test_vjepa2_recipes():
    """V-JEPA 2's facts: RoPE, 12-head predictor, ViT-g with 22 heads, global batch 3072, 256 px x 16 frames with
    warmup + constant LR, then a 64-frame cooldown (linear decay over its 1.25x horizon); WD and EMA constant."""
    import torch

    from vjepa_scale.config import resolve_vit_size
    from vjepa_scale.train.memory import GiB, estimate_memory
    from vjepa_scale.train.phases import plan

    for name, size, heads in (("vjepa2_vitl", "large", 16), ("vjepa2_vitg", "giant_vjepa2", 22)):
        cfg = load_config(name)
        m, o = cfg.model, cfg.optim
        assert (m.size, resolve_vit_size(m).num_heads, m.pos_embed, m.pred_num_heads) == (size, heads, "rope", 12)
        assert m.activation_checkpointing and cfg.data.global_batch_size == 3072 and m.init == "vjepa2"
        assert m.mask_tokens == "shared"  # one predictor mask token for both mask types, as V-JEPA 2 trains
        assert (o.lr_schedule, o.warmup, o.cooldown, o.start_lr, o.lr) == ("wsd", 12_000, 0, 1e-4, 5.25e-4)
        assert (o.wd_schedule, o.weight_decay, o.ema_schedule, o.ema) == ("constant", 0.04, "constant", (0.99925,) * 2)
        pre, cool = plan(cfg, 128)
        assert (pre.start, pre.end, cool.end) == (0, 240_000, 252_000)
        assert (pre.cfg.grid, cool.cfg.grid) == ((8, 16, 16), (32, 16, 16))
        assert pre.schedule(100_000).lr == 5.25e-4 and cool.schedule(240_000).lr == 5.25e-4
        assert cool.schedule(240_000 + 7_500).lr == pytest.approx((5.25e-4 + 1e-6) / 2)  # horizon 15k
        assert pre.global_batch == cool.global_batch == 3072
        # sampled at 4 fps per video, short videos padded (nearly every 64-frame clip at 4 fps is short)
        assert all((c.data.fps, c.data.short_videos, c.data.frame_spacing) == (4.0, "pad", "linspace")
                   for c in (cfg, pre.cfg, cool.cfg))
        assert [d.weight for d in cfg.data.datasets] == [0.335, 0.100, 0.565]
    cool = load_config("vjepa2_vitg_cool384")
    assert cool.grid == (32, 24, 24) and cool.grid[0] * cool.grid[1] * cool.grid[2] == 18_432
    assert cool.train.init_from and cool.train.init_from_optimizer and not cool.phases
    assert cool.model.mask_tokens == "shared"
    assert load_config("vitl16").model.mask_tokens == "per_type"  # V-JEPA 1: one token per mask type
    with pytest.raises(ConfigError, match=r"model.mask_tokens must be one of \['per_type', 'shared'\], got 'one'"):
        load_config("vjepa2_vitl", ["model.mask_tokens=one"])
    assert (cool.optim.warmup, cool.optim.cooldown, cool.optim.iterations) == (0, 15_000, 12_000)
    assert (cool.data.fps, cool.data.short_videos, cool.data.frame_spacing) == (4.0, "pad", "linspace")
    # the 384 px x 64 frames cooldown fits an 80 GB card by the memory estimate at 6 and 12 clips per GPU
    for world in (512, 256):
        est = estimate_memory(resolve_batch(cool, world), world, torch.device("cuda"))
        assert est.total < 80e9 * 0.6, (world, est.describe())
    assert resolve_batch(cool, 512).data.batch_size == 6
    assert estimate_memory(resolve_batch(cool, 512), 512, torch.device("cuda")).total < 20 * GiB


def test_a_dataset_with_its_own_shape_keeps_it_in_every_phase_and_its_tokens_count():
    """Throughput counts the tokens of the clips trained on: a single dataset with its own shape is
    not data's shape, and a phase's crop / frames change data's shape only (the phase line says so)."""
    from vjepa_scale.config import clip_grid

    cfg = load_config("cpu_demo", ["data.backend=cpu", "data.datasets=[{path: x.txt, crop_size: 48, frames_per_clip: 8}]",
                                   "phases=[{steps: 30}, {crop_size: 64, frames_per_clip: 4}]"])
    own = math.prod(clip_grid(48, 8, cfg.model))
    phases = plan(cfg, 1)
    assert [p.tokens_per_clip for p in phases] == [own, own] and own != math.prod(phases[1].cfg.grid)
    assert "4 frames x 64 px (grid 2x4x4); datasets with their own shape keep it (8 x 48 px)" in phases[1].describe()

"""One frozen evaluation: load the encoder, encode the train and val videos (once, kept in host memory, or
on the fly for every pass when they do not fit: `run.features`), train one probe per seed, write
`result.json` (and tensorboard logs) to `run.output_dir`.

Runs as one process (CPU or one GPU) or under a launcher (`torchrun` / `deepspeed`): with
WORLD_SIZE > 1 it joins a process group (nccl on GPUs, gloo on CPU), shards the videos over ranks
and trains the probe with DDP.
"""
from __future__ import annotations

import json
import logging
import math
import statistics
import time
from pathlib import Path

import torch

from vjepa_scale.config import ConfigError, vit_size_name
from vjepa_scale.data.clips import clip_window
from vjepa_scale.data.index import check_first_entries
from vjepa_scale.distributed import compute_dtype, device_for, dist_env, init_distributed
from vjepa_scale.eval.config import EvalConfig
from vjepa_scale.eval.data import (AugmentedClips, EvalClips, check_disjoint, check_val_readable, per_class_subset,
                                   probe_classes, rank_share, read_labeled_index)
from vjepa_scale.eval.encoder import encoder_origin, eval_grid, load_frozen_encoder
from vjepa_scale.eval.features import (FeatureSet, effective_rank, extract_features, feature_bytes, store_dtype_for,
                                       top_pc_share)
from vjepa_scale.eval.probe import resolve_probe_heads
from vjepa_scale.eval.resume import STATE_FILE, clear_state, identity, load_state, save_state
from vjepa_scale.eval.stream import StreamedFeatures
from vjepa_scale.eval.train_probe import train_probe
from vjepa_scale.train import preempt

log = logging.getLogger("vjepa_scale.eval")


def run_eval(cfg: EvalConfig) -> dict:
    """The whole evaluation; returns (and on rank 0 writes) the result dict."""
    t0 = time.time()
    if cfg.run.num_threads:
        torch.set_num_threads(cfg.run.num_threads)
    device = device_for(name=cfg.run.device, key="run.device")
    dtype = compute_dtype(cfg.run.precision, device)
    world = dist_env().world_size
    if cfg.optim.batch_size % world:  # the probe's batch is global: every rank takes an equal share
        raise ConfigError(f"optim.batch_size={cfg.optim.batch_size} (samples per step over all ranks) does not "
                          f"divide over the {world} ranks: give a multiple of {world}")
    train_paths, train_labels = read_labeled_index(cfg.data.train_index, "data.train_index")
    val_paths, val_labels = read_labeled_index(cfg.data.val_index, "data.val_index")
    check_disjoint(train_paths, val_paths, cfg.data)
    subsets = {}  # label-efficient probes: a different balanced subset of the train index per seed
    if cfg.data.train_per_class is not None:
        subsets = {seed: per_class_subset(train_labels, cfg.data.train_per_class, cfg.data.subset_seed + seed)
                   for seed in cfg.run.seeds}
    num_classes = probe_classes(train_labels, val_labels, val_paths, cfg.data, warn=dist_env().rank == 0)
    for key, index in (("data.train_index", cfg.data.train_index), ("data.val_index", cfg.data.val_index)):
        check_first_entries(index, key)  # a few os.stat calls: entries that resolve to no file
    check_val_readable(val_paths, cfg.data.val_index)  # before the train features, not after them

    out, origin = Path(cfg.run.output_dir), encoder_origin(cfg)
    check_output_dir(out, origin, cfg.run.overwrite)  # every rank: all refuse alike, before any weights are read
    frozen = load_frozen_encoder(cfg)
    encoder, dims = frozen.encoder, frozen.encoder.dims
    heads = resolve_probe_heads(cfg.probe, encoder.embed_dim, dims.num_heads)
    check_head_fits(encoder.embed_dim, num_classes, cfg.data.num_classes is not None, device)
    env = init_distributed(device)
    rank, world = env.rank, env.world_size
    # few-shot: each rank trains on its share of every seed's subset, so it encodes just those videos
    shares = {seed: rank_share(chosen, rank, world, cfg.data.train_per_class) for seed, chosen in subsets.items()}
    train_positions = sorted(set().union(*shares.values())) if shares else None
    encoder.to(device)
    progress = cfg.run.progress_bar
    train_clips, val_clips = EvalClips(train_paths, train_labels, cfg.data), EvalClips(val_paths, val_labels, cfg.data)
    tokens = math.prod(eval_grid(cfg, frozen.model_cfg)) * cfg.data.num_clips
    most_train = (max(len(set().union(*(rank_share(chosen, r, world, cfg.data.train_per_class)
                                         for chosen in subsets.values()))) for r in range(world))
                  if subsets else -(-len(train_paths) // world))
    mode, need = feature_store(cfg.run.features, most_train + -(-len(val_paths) // world), cfg.data.num_views,
                               tokens, encoder.embed_dim, dtype, cfg.data.train_augment)
    # a stopped run of this evaluation is continued: the same settings, the same weights (checkpoint step
    # included), world size, precision and feature mode as resolved
    ident = identity(cfg.to_dict(), frozen.source, world, {"dtype": str(dtype), "features": mode})
    resumed = load_state(out, ident, cfg.run.overwrite)
    t_enc = time.time()
    if mode == "memory":
        train = extract_features(encoder, train_clips, cfg.data.batch_size, device, dtype, cfg.data.num_workers, rank,
                                 world, desc="train features", progress=progress, positions=train_positions)
        val = extract_features(encoder, val_clips, cfg.data.batch_size, device, dtype, cfg.data.num_workers, rank,
                               world, desc="val features", progress=progress)
        sample_XD = val.feats_MVND[:256, 0].flatten(0, 1).float()  # collapse diagnostics on this rank's share
        del encoder
        frozen.encoder = None  # the probes train on the features alone: free the device's copy
    else:
        def streamed(clips: EvalClips, positions: list[int], views: int = cfg.data.num_views) -> StreamedFeatures:
            return StreamedFeatures(encoder, clips, positions, views, cfg.data.batch_size, device, dtype,
                                    cfg.data.num_workers)

        val = streamed(val_clips, list(range(rank, len(val_paths), world)))
        val.bar = "val features" if progress and rank == 0 else ""
        sample = []
        for x_MVND, _ in val.videos(torch.device("cpu")):  # the first 256 of this rank's share
            sample.append(x_MVND[:, 0].flatten(0, 1))
            if sum(len(x) for x in sample) >= 256 * tokens:
                break
        sample_XD = torch.cat(sample)[:256 * tokens] if sample else None  # None: no usable val video here
        stream_train = {}
        for seed in cfg.run.seeds:
            positions = sorted(shares[seed]) if seed in shares else list(range(rank, len(train_paths), world))
            stream_train[seed] = (streamed(AugmentedClips(train_paths, train_labels, cfg.data, seed), positions, 1)
                                  if cfg.data.train_augment else streamed(train_clips, positions))
    t_feat = time.time() - t_enc
    feat_rank, feat_top_pc = ((effective_rank(sample_XD), top_pc_share(sample_XD)) if sample_XD is not None else
                              (math.nan, math.nan))

    writer = None
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        (out / preempt.MARKER).unlink(missing_ok=True)  # this evaluation runs again
        if resumed is None:
            clear_state(out)  # run.overwrite: a stopped evaluation's state is discarded
            for old in (out / "tb").glob("events.out.tfevents.*"):  # an earlier evaluation's curves: replaced
                old.unlink()
        else:
            cur = resumed["current"]
            print(f"eval: continuing the stopped evaluation in {out}: {len(resumed['runs'])} of "
                  f"{len(cfg.run.seeds)} probes done" + (f", seed {cur['seed']} from epoch {cur['epoch'] + 1} "
                                                          f"step {cur['step']}" if cur else ""), flush=True)
        if cfg.run.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            writer = SummaryWriter(str(out / "tb"))
    runs = list(resumed["runs"]) if resumed else []

    def met() -> dict:
        """{split: (skipped (path, reason) items, padded positions)} met so far, over all ranks (collective) and
        the passes before a resume (a streamed evaluation meets its videos again only in the passes it redoes)."""
        if mode == "memory":
            mine = {"train": (train.skipped, train.padded), "val": (val.skipped, val.padded)}
        else:  # every val video each epoch, every seed's train videos
            mine = {"train": ([kv for src in stream_train.values() for kv in src.skipped.items()],
                              [i for src in stream_train.values() for i in src.padded]),
                    "val": (list(val.skipped.items()), list(val.padded))}
        before = resumed["met"] if resumed and rank == 0 else {}
        return {name: (list(before.get(name, ([], []))[0]) + _all_ranks(list(items), world),
                       list(before.get(name, ([], []))[1]) + _all_ranks(list(pads), world))
                for name, (items, pads) in mine.items()}

    def save(current: dict, stop: str = "") -> Path:
        seen = met()  # every rank: a collective
        if rank == 0:
            save_state(out, {"identity": ident, "runs": runs, "current": current, "met": seen})
            if stop:  # for a requeue script: a launcher may not pass exit code 75 on (torchrun reports 1)
                preempt.write_marker(out, current["it"], out / STATE_FILE, stop)
        return out / STATE_FILE

    for seed in cfg.run.seeds[len(runs):]:
        if mode == "stream":
            data = stream_train[seed]
        else:
            data = train
            if seed in shares:
                keep = torch.isin(train.index_M, torch.tensor(shares[seed], dtype=torch.int64))
                data = FeatureSet(train.feats_MVND[keep], train.labels_M[keep], train.index_M[keep])
        current = resumed["current"] if resumed and resumed["current"] and resumed["current"]["seed"] == seed else None
        runs.append(train_probe(data, val, cfg.probe, cfg.optim, num_classes, heads, seed, device, dtype, writer,
                                tag=f"seed{seed}", progress=progress, save=save, resume=current))
        save(None)  # this seed done: its result kept, no probe in progress
    if writer is not None:
        writer.close()

    # (dict.fromkeys: with subsets, two ranks may encode the same train video)
    seen = met()
    skipped = {name: list(dict.fromkeys(tuple(kv) for kv in items)) for name, (items, _) in seen.items()}
    padded = {name: len(set(pads)) for name, (_, pads) in seen.items()}
    if rank == 0:
        report_left_out(skipped, padded, cfg.data)
    left_out = {i for i, p in enumerate(train_paths) if p in dict(skipped["train"])}  # train positions
    for run in runs:
        run["num_train_videos"] = len(set(subsets.get(run["seed"], range(len(train_paths)))) - left_out)
    tops = [r["val_top1"] for r in runs]
    result = {
        "encoder": frozen.source,
        "encoder_origin": origin,
        "encoder_step": frozen.step,
        "model": {"size": vit_size_name(dims.width, dims.depth, dims.num_heads, dims.mlp_ratio),  # or custom
                  "width": dims.width, "depth": dims.depth, "num_heads": dims.num_heads, "mlp_ratio": dims.mlp_ratio,
                  "pos_embed": frozen.model_cfg.pos_embed},
        "num_classes": num_classes,
        "num_train_videos": runs[0]["num_train_videos"],
        "train_per_class": cfg.data.train_per_class,
        "num_val_videos": len(val_paths) - len(skipped["val"]),
        "skipped_videos": {name: {p: r for p, r in items} for name, items in skipped.items()},
        "padded_videos": padded,  # encoded videos shorter than one clip window (last frame repeated)
        "val_top1_mean": statistics.fmean(tops),
        "val_top1_std": statistics.pstdev(tops) if len(tops) > 1 else 0.0,
        "val_top1_per_seed": {str(r["seed"]): r["val_top1"] for r in runs},
        "runs": runs,
        "val_feature_effective_rank": round(feat_rank, 2),
        "val_feature_top_pc_share": round(feat_top_pc, 4),
        "features": mode,  # run.features as resolved: memory (encoded once) or stream (encoded every pass)
        "feature_bytes_per_rank": need,  # what memory mode keeps on the rank with the most videos
        "feature_seconds": round(t_feat, 2) if mode == "memory" else None,
        "total_seconds": round(time.time() - t0, 2),
        "world_size": world,
        "device": str(device),
        "config": cfg.to_dict(),
    }
    if rank == 0:
        (out / "result.json").write_text(json.dumps(result, indent=1))
        clear_state(out)
    return result


def report_left_out(skipped: dict, padded: dict, d) -> None:
    """Print the unusable videos and warn about the padded ones (`d`: the eval data config)."""
    for name, items in skipped.items():
        for path, reason in items:
            print(f"eval: left out {name} video {path} ({reason})", flush=True)
    if any(padded.values()):
        steps = d.frames_per_clip - (d.frame_spacing == "exact")  # linspace spreads the clip over fpc x step frames
        span = (f"at data.fps={d.fps:g} spans {steps} frame steps of a video's own" if d.fps else
                f"at data.frame_step={d.frame_step} spans "
                f"{clip_window(d.frames_per_clip, d.frame_step, d.frame_spacing)} frames")
        log.warning("eval: %d train and %d val videos are shorter than one clip window (data.frames_per_clip=%d "
                    "%s): their clips repeat the last frame (result.json: padded_videos); lower data.frame_step "
                    "(data.fps) or data.frames_per_clip to sample only real frames",
                    padded["train"], padded["val"], d.frames_per_clip, span)


MEMORY_SHARE = 0.5  # run.features=auto keeps features in memory when they take at most this share of it


def feature_store(mode: str, videos: int, views: int, tokens: int, dim: int, dtype: torch.dtype,
                  augment: bool = False) -> tuple[str, int]:
    """(`memory` or `stream`, bytes memory mode keeps per rank) for `run.features=mode`; `videos`: train + val
    videos of the rank with the most. `auto` keeps them in memory when they take at most MEMORY_SHARE of the
    host memory one rank may use (unknown: memory), else streams, and streams with `augment`
    (`data.train_augment`); `memory` that does not fit is a ConfigError before any video is encoded. Every
    rank decides alike (the least memory of any rank). Rank 0 says which."""
    from vjepa_scale.train.memory import _gib, agreed_available_bytes, local_ranks

    need = feature_bytes(videos, views, 1, tokens, dim, dtype)
    avail, how = agreed_available_bytes(torch.device("cpu"), local_ranks())
    what = (f"{videos} videos x {views} views x {tokens} tokens x {dim} x {store_dtype_for(dtype).itemsize} bytes = "
            f"{_gib(need)} per rank")
    if mode == "memory" and avail is not None and need > avail:
        raise ConfigError(f"run.features=memory: the features take {what}, more than the {how} ({_gib(avail)}): "
                          f"set run.features=stream (or auto) to encode them on the fly every epoch instead")
    if mode == "auto" and augment:
        mode, why = "stream", "data.train_augment: new train crops every epoch"
    elif mode == "auto":
        mode = "memory" if avail is None or need <= MEMORY_SHARE * avail else "stream"
        why = f"{what}; {how}: {_gib(avail)}" if avail is not None else f"{what}; host memory unknown"
    else:
        why = f"run.features={mode}; {what}"
    if dist_env().rank == 0:
        print(f"eval: features {'kept in host memory' if mode == 'memory' else 'streamed (encoded every epoch)'} "
              f"({why})", flush=True)
    return mode, need


HEAD_BYTES_PER_PARAM = 16  # fp32 weight, gradient and AdamW's two moments


def check_head_fits(embed_dim: int, num_classes: int, given: bool, device: torch.device) -> None:
    """ConfigError before any video is encoded when the probe's linear head alone (`embed_dim` x `num_classes`,
    with its gradient and AdamW state) exceeds this rank's memory (`train.memory.available_bytes`; unknown:
    not checked): a label of 10^9 would otherwise fail allocating it after the feature extraction.
    `given`: num_classes is data.num_classes (else 1 + the largest label)."""
    from vjepa_scale.train.memory import _gib, available_bytes, local_ranks

    need = HEAD_BYTES_PER_PARAM * (embed_dim + 1) * num_classes
    avail, how = available_bytes(device, local_ranks())
    if avail is not None and need > avail:
        cause = (f"data.num_classes={num_classes}" if given else
                 f"{num_classes} classes: 1 + the largest label, {num_classes - 1}; number the classes 0, 1, ...")
        raise ConfigError(f"the probe head of {num_classes} outputs needs {_gib(need)} ({embed_dim + 1} x "
                          f"{num_classes} weights with gradient and AdamW state), more than {how} "
                          f"({_gib(avail)}): {cause}")


def check_output_dir(out: Path, origin: str, overwrite: bool) -> None:
    """Refuse (ConfigError) an output folder whose result.json belongs to another encoder (`origin`: where
    the weights come from, any step of the same run's encoder counts as the same) unless `overwrite`:
    the new result and tensorboard curves would replace or mix with it. A result of the same encoder
    is replaced (a re-run)."""
    old = out / "result.json"
    if overwrite or not old.is_file():
        return
    try:
        prev_origin = json.loads(old.read_text()).get("encoder_origin")
    except (OSError, ValueError, AttributeError):
        prev_origin = None
    if prev_origin is not None and prev_origin != origin:  # None: unreadable, or written before origins were
        raise ConfigError(f"run.output_dir: {old} holds the result of another encoder ({prev_origin}); this run "
                          f"evaluates {origin}: give another --output (run.output_dir), or run.overwrite=true to "
                          f"replace it")


def _all_ranks(items: list, world: int) -> list:
    """`items` of every rank, concatenated (this rank's alone without a process group)."""
    if world <= 1 or not torch.distributed.is_initialized():
        return list(items)
    parts = [None] * world
    torch.distributed.all_gather_object(parts, list(items))
    return [x for part in parts for x in part]

"""The V-JEPA training engine on DeepSpeed (ZeRO-3 by default) with a sharded EMA target.

One optimizer step = `optim.grad_accum` micro-batches, run by `train.step.StepCore` (the step the
benchmark times too). Per micro-batch: the target encoder (an optimizer-less ZeRO engine) encodes
the full clip without gradients, the online engine (encoder + predictor) returns the loss of both
mask types in one packed pass, DeepSpeed backpropagates and steps at the accumulation boundary
(with gradient clipping). Then the EMA updates the target shard-locally from the fp32 master shards. LR / WD / momentum are pure functions of the step.
A step with an inf/NaN loss or gradient norm changes neither weights nor EMA (`guard`); a phase that
stalls past `train.hang_timeout_s` ends the rank with a message (`watchdog`).

Phases (`config.phases`, `train.phases`): at a phase's first step `fit` rebuilds the data loader with
the phase's clip shape, batch and masker grid (positions follow the clip's grid inside the models),
takes the phase's schedule piece, and sizes the metrics (tokens per clip, FLOPs) to it. The
checkpoint records the phase a resume continues in; a run saves at every phase end too.

Data position: micro-step `step * grad_accum + i` is what `build_dataloader` is asked for, so a
resumed run sees exactly the batches (and masks) of an uninterrupted one; checkpoints record it in
global samples too (`samples_seen`), so a resume on another number of ranks (`train.elastic`) or
across a phase boundary continues the sample stream where it stopped. The loss is the global
per-mask-type token mean over all ranks (`global_type_norm`), not a mean of per-rank means.

`train.init_from` starts from another run's weights and EMA target (V-JEPA 2's cooldown); with
`train.init_from_optimizer: true` its optimizer state too (`load_checkpoint` of that checkpoint).
Either way this run's step, schedules and data position start at 0.
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Callable, Optional

import torch

from vjepa_scale.config import Config, ConfigError, save_config
from vjepa_scale.data import (Batch, agree_loaded, build_dataloader, dataset_clips, defer_skip_reports, report_skips,
                              skip_metrics, skip_totals)
from vjepa_scale.distributed import DistEnv, check_shared_dir, compute_dtype, device_for, from_rank0
from vjepa_scale.flops import device_peak_tflops, train_flops
from vjepa_scale.models import JEPA, make_target_encoder, set_activation_checkpointing
from vjepa_scale.models.vit import VisionTransformer3D
from vjepa_scale.train import checkpoint as ckpt_lib
from vjepa_scale.train import elastic, preempt, rng
from vjepa_scale.train import phases as phase_lib
from vjepa_scale.train.ema import ShardedEMA
from vjepa_scale.train.guard import DivergenceGuard, check_deepspeed_config
from vjepa_scale.train.housekeeping import check_resume_config, check_zero_stage, prepare_checkpoint_folder
from vjepa_scale.train.launch import deepspeed_config, join_process_group
from vjepa_scale.train.metrics import RunLogger, RunTotals, StepWindow, progress_postfix, run_banner
from vjepa_scale.train.optim import make_optimizer
from vjepa_scale.train.schedules import StepSchedule
from vjepa_scale.train.step import StepCore
from vjepa_scale.train.watchdog import Watchdog
from vjepa_scale.weights import load_init_state, resolve_checkpoint
from vjepa_scale.weights.run import (DamagedCheckpointError, checkpoint_problem, is_complete, latest_loadable,
                                     loadable_checkpoint, read_meta)


def _init_source(init_from: str) -> tuple[str, Optional[str], list[str]]:
    """(what to load, problem, notes) for `train.init_from`. A training run (or its `checkpoints` folder)
    gives its newest undamaged checkpoint, the notes naming each newer damaged one passed over, as
    `--resume RUN` does; a damaged checkpoint named as such, or a run with none loadable, is the problem
    (None: none). Other sources (an HF folder, an official file: read whole when loaded) as given."""
    try:
        resolve_checkpoint(Path(init_from).expanduser())
    except (FileNotFoundError, ValueError):
        return init_from, None, []
    try:
        ckpt, notes = loadable_checkpoint(init_from)
    except DamagedCheckpointError as e:
        return init_from, e.problem, []
    except FileNotFoundError as e:
        return init_from, str(e), []
    return str(ckpt), None, notes


def build_models(cfg: Config, seed: int, notes: Optional[list[str]] = None,
                 init_from: Optional[str] = None) -> tuple[JEPA, VisionTransformer3D]:
    """Online JEPA and its target encoder in fp32 on CPU, identical on every rank (same seed); a note
    naming what `train.init_from` loaded is appended to `notes` (when given).

    With `train.init_from` (read from `init_from` when given: the checkpoint `_init_source` picked), weights
    come from `vjepa_scale.weights.load_init_state` (strict load); weights that do not fit, or an unreadable
    source, raise ConfigError naming it.
    """
    torch.manual_seed(seed)
    jepa = JEPA(cfg)
    target_sd = None
    src = init_from or cfg.train.init_from
    if src:
        try:
            state = load_init_state(src, cfg)
        except (FileNotFoundError, ValueError) as e:  # its documented errors (CheckpointMismatchError is one)
            raise ConfigError(f"train.init_from: {e}") from None
        jepa.encoder.load_state_dict(state["encoder"], strict=True)
        if state.get("predictor") is not None:
            jepa.predictor.load_state_dict(state["predictor"], strict=True)
        target_sd = state.get("target_encoder")
        has_pred = state.get("predictor") is not None
        parts = ["online encoder"] + ["predictor"] * has_pred + ["EMA target"] * (target_sd is not None)
        absent = ["the predictor, which starts from random init"] * (not has_pred) + [
            "the EMA target, which starts as a copy of the online encoder"] * (target_sd is None)
        if notes is not None:
            notes.append(f"train.init_from: loaded {', '.join(parts)} from {src}"
                         + (f"; not in it: {' and '.join(absent)}" if absent else ""))
    target = make_target_encoder(jepa.encoder, target_sd)
    return jepa, target


class Trainer:
    """Builds engines, data and logging for one run; `fit()` trains to `optim.iterations`.

    cfg must already be batch-resolved (`launch.preflight`). `resume`: None, "auto" (latest
    complete checkpoint of `run_dir`, if any) or a checkpoint / run dir path.
    """

    def __init__(self, cfg: Config, run_dir: str | Path, resume: Optional[str] = None,
                 env: Optional[DistEnv] = None):
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.env = env or join_process_group(cfg.train.hang_timeout_s)
        self.started = time.monotonic()  # for the end-of-run summary's wall time
        self.rank, self.world = self.env.rank, self.env.world_size
        self.device = device_for(self.env)
        self.dtype = compute_dtype(cfg.train.precision, self.device)
        self.is_main = self.rank == 0
        # the watchdog bounds the setup too (a resume's load and conversion); fit() starts it again
        self.watchdog = Watchdog(cfg.train.hang_timeout_s, self.rank)
        with self.watchdog:
            self._setup(cfg, resume)

    def _setup(self, cfg: Config, resume: Optional[str]) -> None:
        """The run folder and what to resume; models, engines, EMA, guard and step core; then the
        optimizer state of `train.init_from` or the resumed checkpoint."""
        import deepspeed

        self._setup_step("preparing the run folder")
        # Leftovers of dead saves settled, room for a checkpoint checked; then the config compare.
        self.notes = prepare_checkpoint_folder(cfg, self.run_dir, self.rank)
        ckpt = self._resume_path(resume)
        self.saved_cfg = phase_lib.as_saved(cfg)  # config.yaml of the run and its checkpoints
        if ckpt is not None:
            self.notes += [n for n in [check_resume_config(ckpt, self.saved_cfg)] if n]
        init_src = None  # the source's checkpoint to load: a damaged one is named before any weights are read
        if ckpt is None and cfg.train.init_from:
            init_src, problem, passed = from_rank0(_init_source(cfg.train.init_from) if self.is_main else None)
            if problem is not None:
                raise ConfigError(f"train.init_from: {problem}")
            self.notes += passed
        # train.init_from_optimizer: the source checkpoint's optimizer state too (not when resuming)
        opt_src = resolve_checkpoint(init_src) if init_src and cfg.train.init_from_optimizer else None
        if opt_src is not None:
            check_zero_stage(opt_src, cfg.zero.stage, init_from=True)
        if self.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            save_config(self.saved_cfg, self.run_dir / "config.yaml")
        check_shared_dir(self.run_dir)
        self.phases = phase_lib.plan(cfg, self.world)  # [one phase made of cfg] without `phases`
        self.notes += phase_lib.warmup_notes(self.phases)

        self._setup_step("building the models and DeepSpeed engines")
        # the init_from note, unless a resume replaces these weights by the checkpoint's
        jepa, target = build_models(cfg, cfg.train.seed, notes=self.notes if ckpt is None else None, init_from=init_src)
        target_fp32 = {k: v.detach().clone() for k, v in target.named_parameters()}
        self.optimizer = make_optimizer(jepa, cfg.optim)
        ds_config = elastic.for_resume(deepspeed_config(cfg, self.world), ckpt or opt_src, self.world)
        check_deepspeed_config(ds_config)
        self.engine, _, _, _ = deepspeed.initialize(model=jepa, optimizer=self.optimizer, config=ds_config)
        self.target, _, _, _ = deepspeed.initialize(model=target,
                                                    config=deepspeed_config(cfg, self.world, with_optimizer=False))
        self.target.eval()
        self.ema = ShardedEMA(self.engine.module.encoder, self.target.module, target_fp32, self.rank, self.world)
        del target_fp32
        rng.seed_everything(cfg.train.seed, self.rank)  # per rank; a resume restores the saved states
        if opt_src is not None:
            self._setup_step(f"loading the optimizer state of train.init_from {opt_src}")
            self._init_from_optimizer(opt_src)

        self.step = 0
        self.guard = DivergenceGuard(cfg.train.max_bad_steps, cfg.optim)  # skips non-finite steps
        self.core = StepCore(self.engine, self.target, self.ema, self.device, self.dtype, guard=self.guard,
                             phase=self.watchdog.phase)  # the step shared with the benchmark
        self.sample_offset = 0  # sampler stream offset (elastic resume with another global batch)
        self.resumed_from: Optional[Path] = None
        # unusable files met before the current loader (sums over ranks; meta.json "data_skips"), and that loader
        self.skip_base: dict = {}
        self.data_loader = None
        if ckpt is not None:
            saved_world = int(read_meta(ckpt)["world_size"])
            self._setup_step(f"loading checkpoint {ckpt}" + (
                f" (saved on {saved_world} ranks: rank 0 converts it to a universal checkpoint first)"
                if saved_world != self.world else ""))
            self._restore(ckpt)
        self.use_phase_checkpointing(self.phase)
        self.peak_tflops = cfg.train.device_peak_tflops  # for MFU; None: unknown (no MFU logged)
        if self.peak_tflops is None:
            self.peak_tflops = device_peak_tflops(self.device)

    def _setup_step(self, what: str) -> None:
        """A step of the setup: the watchdog's phase, and a line on rank 0 (a load can take minutes)."""
        self.watchdog.phase(what)
        if self.is_main:
            print(f"setup: {what}", flush=True)

    def _init_from_optimizer(self, opt_src: Path) -> None:
        """`train.init_from_optimizer`: weights, EMA and optimizer state of another run's checkpoint
        (maybe read-only: resharded in this run's folder); this run's own RNG streams."""
        scratch = self.run_dir / elastic.INIT_UNIVERSAL
        ckpt_lib.load_checkpoint(opt_src, self.engine, self.ema, self.rank, self.world, universal_dir=scratch)
        elastic.remove_after_load(scratch, self.rank)
        rng.seed_everything(self.cfg.train.seed, self.rank)  # this run's own streams, not the source's
        self.notes.append(f"train.init_from_optimizer: weights, EMA target and optimizer state from {opt_src}; "
                          f"step, schedules and data start at 0")

    def _restore(self, ckpt: Path) -> None:
        """Resume `ckpt`: engines, EMA and RNG, then the step, the guard's state, the skip totals and the
        data position (another world size or global batch continues the sample stream)."""
        meta = ckpt_lib.load_checkpoint(ckpt, self.engine, self.ema, self.rank, self.world)
        self.step = int(meta["step"])
        self.guard.restore(meta)  # skipped steps, and the streak of bad steps in a row
        self.skip_base = meta.get("data_skips", {})  # global sums: the same on any world size
        self.resumed_from = ckpt
        if meta["world_size"] != self.world:
            self.notes.append(f"elastic resume: checkpoint of {meta['world_size']} ranks resharded "
                              f"onto {self.world}")
        self.sample_offset, note = phase_lib.resume_offset(ckpt, meta, self.phases)
        here = phase_lib.phase_at(self.phases, self.step)
        phase_lib.check_per_step_offsets(
            self.phases, self.sample_offset,
            cause=f"resuming {ckpt}, saved at {meta.get('global_batch_size')} per step on {meta['world_size']} "
                  f"rank(s), with {here.global_batch} per step on {self.world}")
        self.notes += [n for n in (note, phase_lib.check_phase_record(meta, self.phases)) if n]

    def use_phase_checkpointing(self, phase: phase_lib.Phase) -> None:
        """Recompute the share of blocks `phase` asks for (`auto` is resolved per phase by `plan`)."""
        set_activation_checkpointing(self.engine.module, phase.cfg.model.checkpoint_fraction)

    def _resume_path(self, resume: Optional[str]) -> Optional[Path]:
        """The checkpoint to resume: `auto`, or a run folder or its `checkpoints` folder given, the newest
        one there that can be loaded (damaged newer ones are passed over with a warning); one checkpoint
        given (a step folder or a `latest` file) must be loadable itself. Rank 0
        reads the files (once, not once per rank) and every rank takes its verdict."""
        if resume is None:
            return None
        ckpt, notes, error = from_rank0(self._find_resume(resume, self.run_dir) if self.is_main else None)
        if error is not None:
            raise ConfigError(error)
        self.notes += notes
        return None if ckpt is None else Path(ckpt)

    @staticmethod
    def _find_resume(resume: str, run_dir: Path) -> tuple[Optional[str], list[str], Optional[str]]:
        """(checkpoint, notes, error) for `--resume resume` (see `_resume_path`)."""
        try:
            if resume == "auto":
                ckpt, notes = latest_loadable(run_dir)
                if ckpt is None and preempt.marker_checkpoint(run_dir) is not None:
                    return Trainer._marker_resume(run_dir)
                stale = run_dir / f"{preempt.MARKER}.stale"
                if ckpt is None and stale.exists() and not (run_dir / preempt.MARKER).exists():
                    # not a silent fresh start either (a newer marker naming no checkpoint: a fresh start's)
                    return None, [], (f"--resume auto: {run_dir} has no checkpoint of its own, and {stale} names "
                                      f"one that cannot be resumed: give --resume PATH, or delete {stale.name} "
                                      f"to start the run afresh")
                return (None if ckpt is None else str(ckpt)), notes, None
            ckpt, notes = loadable_checkpoint(resume, verb=("resumed", "resuming"))  # a run or checkpoints
            # folder: its newest undamaged one, as for auto
        except DamagedCheckpointError as e:  # one checkpoint named (a step folder or a `latest` file)
            return None, [], f"--resume {resume}: {e.problem}; resume an earlier checkpoint of the run instead"
        except (FileNotFoundError, ValueError) as e:
            return None, [], f"--resume {resume}: {e}"
        return str(ckpt), notes, None

    @staticmethod
    def _marker_resume(run_dir: Path) -> tuple[Optional[str], list[str], Optional[str]]:
        """`--resume auto` in a run dir without a checkpoint of its own whose PREEMPTED marker names one:
        a run started with `--resume OTHER_CKPT` and preempted before its first save continues that
        checkpoint (never a silent fresh start); one that cannot be resumed is an error naming it, and
        the marker is renamed `PREEMPTED.stale` (a requeue script that tests the file must not loop)."""
        named = preempt.marker_checkpoint(run_dir)
        problem = checkpoint_problem(named) if is_complete(named) else "not a complete checkpoint (gone?)"
        if problem is not None:
            stale = run_dir / f"{preempt.MARKER}.stale"
            os.replace(run_dir / preempt.MARKER, stale)
            return None, [], (f"--resume auto: {run_dir} has no checkpoint of its own, and the one its "
                              f"{preempt.MARKER} file names cannot be resumed: {named}: {problem} (the file is "
                              f"now {stale.name}); give --resume PATH")
        return str(named), [f"--resume auto: no checkpoint in {run_dir} yet; resuming {named}, named by its "
                            f"{preempt.MARKER} file (the run was preempted before its first save)"], None

    # ----------------------------------------------------------------------------------------------

    @property
    def phase(self) -> phase_lib.Phase:
        """The phase that trains the next step (`self.step`)."""
        return phase_lib.phase_at(self.phases, self.step)

    def loader(self, num_steps: Optional[int] = None):
        """This rank's batches of the current phase from the current step on (micro-steps:
        step * grad_accum + i), with the phase's clip shape, batch and stream position."""
        a = self.cfg.optim.grad_accum
        phase = self.phase
        return build_dataloader(phase.cfg, self.rank, self.world, start_step=self.step * a,
                                num_steps=None if num_steps is None else num_steps * a,
                                sample_offset=phase_lib.sample_offset(self.phases, phase, self.sample_offset))

    def schedule(self, step: int) -> StepSchedule:
        """LR / WD / EMA momentum of optimizer step `step`: its phase's schedule piece."""
        return phase_lib.phase_at(self.phases, step).schedule(step)

    def _set_schedules(self, lr: float, wd: float) -> None:
        for g in self.optimizer.param_groups:
            g["lr"] = lr
            g["weight_decay"] = wd * g.get("wd_scale", 1.0)

    def micro_step(self, batch: Batch) -> torch.Tensor:
        """Forward + backward of one micro-batch; DeepSpeed steps at the accumulation boundary
        (which the divergence guard turns into a no-op when the step is non-finite)."""
        return self.core.micro_step(batch, self.step)

    def train_step(self, batches: list[Batch]) -> dict:
        """One optimizer step over `grad_accum` micro-batches, then the EMA update. Returns stats: the
        mean micro-batch loss, per-type loss (`loss_types`) and `target_std` (`StepCore.micro_step`), the
        step's LR, WD and EMA momentum. A non-finite step (see `guard`) updates neither the weights nor
        the EMA; the step still counts."""
        if len(batches) != self.cfg.optim.grad_accum:
            raise ValueError(f"train_step got {len(batches)} micro-batches; optim.grad_accum="
                             f"{self.cfg.optim.grad_accum}")
        s = self.schedule(self.step)
        self._set_schedules(s.lr, s.weight_decay)
        losses, micro = [], []
        for b in batches:
            losses.append(self.micro_step(b))
            micro.append(self.core.last_stats)
        self.core.end_step(s.momentum, self.step)  # EMA, unless the guard skipped the step
        self.step += 1
        return {"loss": torch.stack(losses).mean(), "lr": s.lr, "weight_decay": s.weight_decay,
                "momentum": s.momentum, **{k: torch.stack([x[k] for x in micro]).mean(0) for k in micro[0]}}

    def save(self) -> Path:
        return ckpt_lib.save_checkpoint(
            self.run_dir, self.step, self.engine, self.ema, self.saved_cfg, self.rank, self.world,
            extra={"micro_step": self.step * self.cfg.optim.grad_accum, **self.guard.state(),
                   "data_skips": skip_totals(self.data_loader, self.device, self.skip_base),  # a collective
                   **self.data_position(), **phase_lib.phase_record(self.phases, self.step)},
            keep_last=self.cfg.train.keep_last)

    def data_position(self) -> dict:
        """meta.json's data position in global samples (elastic resume continues from it)."""
        return {"samples_seen": self.sample_offset + phase_lib.samples_at(self.phases, self.step),
                "global_batch_size": self.phase.global_batch}

    def _window(self, phase: phase_lib.Phase) -> StepWindow:
        d = phase.cfg.data
        variable = d.is_mixed(phase.cfg.model.tubelet_size)  # clips / tokens per step vary
        return StepWindow(self.device, self.world, phase.global_batch, phase.tokens_per_clip, self.peak_tflops,
                          variable, num_datasets=0 if d.backend == "synthetic" else len(d.datasets), rank=self.rank)

    def _enter_phase(self, logger: RunLogger, first: bool) -> phase_lib.Phase:
        """At the run's start (`first`) or a phase boundary: name the phase (at the start the banner
        did), set its activation checkpointing, carry the finished phase's skip counts on and drop its
        loader. Returns the phase."""
        phase = self.phase
        if not first:
            logger.write(phase.describe())
        if phase.note:
            logger.write(phase.note)
        self.use_phase_checkpointing(phase)
        if self.data_loader is not None:  # the finished phase's skips carry on into the next
            self.skip_base = skip_totals(self.data_loader, self.device, self.skip_base)
        self.data_loader = None
        return phase

    def _stop_if_preempted_in_setup(self, logger: RunLogger) -> None:
        """Raise Preempted when a stop was asked for during setup (nothing new to save)."""
        self.watchdog.phase("preemption check before the first step")
        reason = preempt.stop_agreed(self.device)
        if reason is not None:
            logger.write(f"step {self.step}: preempted ({reason}) before training a step")
            if self.is_main:
                preempt.write_marker(self.run_dir, self.step, self.resumed_from, reason)
            raise preempt.Preempted(self.step, self.resumed_from, reason)

    def _log_window(self, window: StepWindow, stats: dict, phase: phase_lib.Phase, loader, logger: RunLogger) -> None:
        """A log point: the window's metrics over all ranks, skipped steps and the data skips (run totals)."""
        self.watchdog.phase(f"metrics all-reduce step {self.step}")
        left = phase_lib.steps_left(self.phases, self.step, self.step_costs)  # later phases at their own cost
        m = window.summary(stats, left, self.engine.get_global_grad_norm())
        m["skipped_steps"] = self.guard.skipped_steps
        m["samples_seen"] = self.data_position()["samples_seen"]  # global, as meta.json records it
        m.update(skip_metrics(loader, self.device, self.skip_base))  # data_skipped (+ per kind), run totals
        if len(self.phases) > 1:
            m["phase"] = phase.index
        self.totals.add(self.step, m)
        logger.log(self.step, m)
        logger.progress(self.step, progress_postfix(m), m["eta_s"])

    def _save_or_stop(self, phase: phase_lib.Phase, logger: RunLogger) -> None:
        """After a step: save at `train.checkpoint_every` and at the phase's end; then the preemption
        check, where a stop agreed by every rank saves (once) and raises Preempted."""
        path = None
        if self.step % self.cfg.train.checkpoint_every == 0 or self.step == phase.end:
            self.watchdog.phase(f"saving checkpoint step {self.step}")
            path = self.last_saved = self.save()
            logger.write(f"step {self.step}: saved {path}")
        self.watchdog.phase(f"preemption check after step {self.step}")
        reason = preempt.stop_agreed(self.device) if self.step < self.cfg.optim.iterations else None
        if reason is not None:
            self.watchdog.phase(f"saving checkpoint step {self.step} (preempted)")
            path = path or self.save()
            logger.write(f"step {self.step}: preempted ({reason}), saved {path}")
            if self.is_main:
                preempt.write_marker(self.run_dir, self.step, path, reason)
            raise preempt.Preempted(self.step, path, reason)

    def _banner(self, logger: RunLogger) -> None:
        """Rank 0's description of the run before its first step; a failure to describe it is a warning."""
        try:
            for line in run_banner(self.phases, self.phase, self.world, self.device, self.dtype, self.peak_tflops):
                logger.write(line)
        except Exception as e:  # the banner is information: it must never stop a run (or leave ranks waiting)
            logger.write(f"warning: could not describe the run ({type(e).__name__}: {e})")

    def fit(self, on_step: Optional[Callable[["Trainer", dict], None]] = None) -> None:
        """Train from the current step to `optim.iterations`, logging and checkpointing on the way; rank 0
        prints the run's banner before the first step and a summary once the last one is saved."""
        cfg = self.cfg
        total = cfg.optim.iterations
        if self.step >= total:  # nothing to train; a leftover PREEMPTED must not make a requeue loop forever
            if self.is_main:
                (self.run_dir / preempt.MARKER).unlink(missing_ok=True)
                print(f"the run is already complete at step {self.step} (optim.iterations={total}): "
                      f"nothing to train", flush=True)
            return
        first_step, fit_start = self.step + 1, time.monotonic()
        self.totals, self.last_saved = RunTotals(), None  # for the summary at the end
        a = cfg.optim.grad_accum
        phase, loader, it, window = None, None, None, None
        logger = RunLogger(self.run_dir, self.is_main, total, self.step, cfg.train.progress_bar)
        self.watchdog.start()
        try:
            if self.is_main:  # the banner; this run goes on: no longer preempted, and a stale marker is past
                self._banner(logger)
                for name in (preempt.MARKER, f"{preempt.MARKER}.stale"):
                    (self.run_dir / name).unlink(missing_ok=True)
            if self.resumed_from is not None:
                logger.write(f"resumed from {self.resumed_from} at step {self.step}")
            for note in self.notes:
                logger.write(note)
            # rank 0's ETA: model FLOPs per step of each phase, to price the steps of later phases
            multi = self.is_main and len(self.phases) > 1
            self.step_costs = [phase_lib.step_cost(p) for p in self.phases] if multi else None
            self._stop_if_preempted_in_setup(logger)
            while self.step < total:
                if phase is None or self.step == phase.end:  # run start, or a phase boundary
                    phase = self._enter_phase(logger, first=phase is None)
                    loader = it = None  # the previous phase's loader (and its workers) go first
                    window = self._window(phase)
                batches, error = [], None
                try:  # a data error is agreed on below, so that no rank is left waiting in a collective
                    if it is None:
                        self.watchdog.phase(f"starting the data loader of phase {phase.index} at step {self.step + 1}")
                        with rng.untouched():
                            loader = self.data_loader = self.loader(phase.end - self.step)
                            defer_skip_reports(loader)  # gathered below, once every rank has its batch
                            it = iter(loader)
                    self.watchdog.phase(f"loading batch for step {self.step + 1}")
                    t0 = time.perf_counter()
                    batches = [next(it) for _ in range(a)]
                except Exception as e:
                    error = e
                t1 = time.perf_counter()  # this rank's own data wait ends here; a wait for a slower rank
                self.watchdog.phase(f"agreeing that every rank loaded its batch for step {self.step + 1}")
                agree_loaded(error, self.step + 1, self.rank)  # is step time (see StepWindow: data_wait_max)
                report_skips(loader)  # the epochs these batches closed: a collective, now on every rank
                flops = sum(train_flops(phase.cfg, b.masks)["total"] for b in batches)
                stats = self.train_step(batches)
                if self.device.type == "cuda":
                    torch.cuda.synchronize(self.device)
                t2 = time.perf_counter()
                window.add(stats["loss"], t1 - t0, t2 - t0, flops, sum(b.num_clips for b in batches),
                           sum(b.num_tokens for b in batches), dataset_clips(loader, batches), stats["loss_types"],
                           stats["target_std"])
                if on_step is not None:
                    on_step(self, stats)
                bad = self.guard.describe_bad_step(self.step)
                if bad is not None:
                    logger.write(bad)
                if self.step % cfg.train.log_every == 0 or self.step == phase.end or self.guard.diverged:
                    self._log_window(window, stats, phase, loader, logger)
                    window = self._window(phase)
                self.guard.check(self.step)  # DivergenceError after train.max_bad_steps bad steps in a row
                try:
                    self._save_or_stop(phase, logger)
                except preempt.Preempted:  # every rank agreed to stop here: log the steps since the last
                    if window.losses:      # record, so that no step is missing from metrics.jsonl
                        self._log_window(window, stats, phase, loader, logger)
                    raise
        finally:
            self.watchdog.stop()
            logger.close()
        if self.is_main:  # finished (a stop raised: the error or preemption line says what happened)
            summary = self.totals.lines((first_step, self.step), time.monotonic() - self.started,
                                        fit_start - self.started, self.last_saved)
            print("\n".join(summary), flush=True)

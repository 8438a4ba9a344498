"""A run as a list of phases: step ranges, per-phase (batch-resolved) configs, the schedule piece
of each, and the data position in global samples across phase boundaries.

`plan(cfg, world_size)` expands `cfg.phases` (`Config.phase_configs`) into `Phase`s with their
optimizer-step range [start, end) and a batch-resolved config (`resolve_batch`, per phase).
A run without `phases` is one phase whose config is `cfg` itself, so everything below reduces to
the single-phase arithmetic (data position `step x global_batch`, schedules at the global step).

Data position: the sample stream is one sequence in global samples; phase k starts where phase
k-1 stopped, `samples_at(phases, step)` = sum of (steps done in each phase x its global batch).
Phase k's sampler (whose step s reads stream position `offset + s x global_batch_k`) gets
`sample_offset(k, base)` so that its first micro-step lands on that position. Micro-steps (and with
them the masks) are numbered globally (`step x grad_accum + i`), so they never repeat across phases.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from vjepa_scale.config import DEFAULT_BATCH_SIZE, Config, ConfigError
from vjepa_scale.train.schedules import StepSchedule, schedule_at


def resolve_batch(cfg: Config, world_size: int, prefix: str = "data") -> Config:
    """Return a copy of `cfg` whose `data.batch_size` is the per-rank micro-batch for this world.

    With `data.global_batch_size` G: G must be divisible by world_size x grad_accum, and a
    `data.batch_size` given too must equal G / (world_size x grad_accum) (ConfigError naming both
    otherwise). Without G: `data.batch_size` (DEFAULT_BATCH_SIZE when null) sets it. `prefix` names
    the section that set the batch in the error (`phases[i]` for a phase's own batch).
    """
    cfg = copy.deepcopy(cfg)
    # the batch keys as the user gave them (kept through later resolutions), for `as_saved`
    cfg.data._given_batch = getattr(cfg.data, "_given_batch", (cfg.data.batch_size, cfg.data.global_batch_size))
    accum = cfg.optim.grad_accum
    if cfg.data.tokens_per_batch is not None:
        # A token budget: batch_size is each rank's window of stream positions per micro-step (the
        # clips that fit vary; `data.sampler.BudgetStepSampler`); global_batch_size the stream positions per step.
        cfg.data.batch_size = cfg.budget_window()
        cfg.data.global_batch_size = cfg.data.batch_size * world_size * accum
        return cfg
    g, b, n = cfg.data.global_batch_size, cfg.data.batch_size, world_size * accum
    if g is None:
        cfg.data.batch_size = b = DEFAULT_BATCH_SIZE if b is None else b
        cfg.data.global_batch_size = b * n
        return cfg
    if b is not None and b * n != g:
        raise ConfigError(
            f"{prefix}.batch_size={b} and {prefix}.global_batch_size={g} disagree: {b} clips per rank on "
            f"world_size={world_size} x optim.grad_accum={accum} make {b * n} per step. Give one of them: "
            f"{prefix}.global_batch_size: null (--opt {prefix}.global_batch_size=null) to train {b} per rank, "
            f"or {prefix}.batch_size: null to derive it from the global batch")
    if g % n:
        raise ConfigError(
            f"{prefix}.global_batch_size={g} is not divisible by world_size={world_size} x "
            f"optim.grad_accum={accum} (= {n}); pick a multiple of {n} "
            f"or set {prefix}.global_batch_size: null and give {prefix}.batch_size per rank")
    cfg.data.batch_size = g // n
    return cfg


def as_saved(cfg: Config) -> Config:
    """`cfg` (batch-resolved) with the batch keys back as the user gave them, those `resolve_batch`
    derived set to null: what a run writes to its config.yaml, so that the file launches again on any
    world size. A given global batch stays (an elastic resume from the file continues exactly, and a
    per-rank batch given beside it is dropped); a given per-rank batch stays per rank (it is not turned
    into this world's global batch); a token budget derives both keys."""
    cfg = copy.deepcopy(cfg)
    b, g = getattr(cfg.data, "_given_batch", (None, cfg.data.global_batch_size))
    if cfg.data.tokens_per_batch is not None:
        b = g = None
    elif g is not None:
        b = None
    cfg.data.batch_size, cfg.data.global_batch_size = b, g
    return cfg


@dataclass(frozen=True)
class Phase:
    """Optimizer steps [start, end) of the run, trained with `cfg` (a single-phase config)."""

    index: int
    start: int
    end: int
    cfg: Config
    name: str = ""
    note: str = ""  # what `model.activation_checkpointing: auto` became for this phase, and why

    @property
    def steps(self) -> int:
        return self.end - self.start

    @property
    def global_batch(self) -> int:
        return self.cfg.data.global_batch_size

    @property
    def tokens_per_clip(self) -> int:
        """Full-clip tokens of one clip: of the datasets' one shape (a dataset with its own frames or
        crop keeps it in every phase), else of data's own shape."""
        tokens = set(self.cfg.dataset_tokens())
        if len(tokens) == 1:
            return tokens.pop()
        t, h, w = self.cfg.grid
        return t * h * w

    def schedule(self, step: int) -> StepSchedule:
        """LR / WD / EMA momentum of global optimizer step `step` (in this phase): the phase's piece
        at the step within the phase."""
        return schedule_at(self.cfg.optim, step - self.start)

    def describe(self) -> str:
        d = self.cfg.data
        label = f" ({self.name})" if self.name else ""
        own = sorted({(ds.frames_per_clip or d.frames_per_clip, ds.crop_size or d.crop_size) for ds in d.datasets
                      if not ds.is_image() and (ds.frames_per_clip or ds.crop_size)}
                     - {(d.frames_per_clip, d.crop_size)})  # video datasets that set their own shape
        kept = (f"; datasets with their own shape keep it ({', '.join(f'{f} x {c} px' for f, c in own)})"
                if own else "")
        batch = (f"token budget {d.tokens_per_batch} per rank (a window of {d.batch_size} stream positions)"
                 if d.tokens_per_batch is not None else
                 f"global batch {d.global_batch_size} ({d.batch_size} per rank)")
        return (f"phase {self.index}{label}: steps {self.start + 1}-{self.end}, {d.frames_per_clip} frames x "
                f"{d.crop_size} px (grid {'x'.join(map(str, self.cfg.grid))}){kept}, {batch}, lr schedule "
                f"{self.cfg.optim.lr_schedule}")


def warmup_notes(phases: list[Phase]) -> list[str]:
    """A warning per phase whose cosine warmup outlasts its schedule horizon (a short smoke run of a recipe,
    or a phase inheriting the run's warmup): its LR never reaches `lr`."""
    out = []
    for p in phases:
        o = p.cfg.optim
        if o.lr_schedule != "wsd" and o.warmup > o.horizon:
            where = f"phases[{p.index}]" if len(phases) > 1 else "the run"
            out.append(f"warning: optim.warmup={o.warmup} outlasts {where}'s schedule horizon ({o.horizon} steps): "
                       f"its LR rises from {o.start_lr:g} to only {p.schedule(p.end - 1).lr:.3g}, never optim.lr="
                       f"{o.lr:g}")
    return out


def plan(cfg: Config, world_size: Optional[int] = None) -> list[Phase]:
    """The run's phases; with `world_size`, each phase's batch is resolved for it (ConfigError naming
    `phases[i].global_batch_size` when it does not divide), and so is `model.activation_checkpointing:
    auto` for this device (`memory.resolve_checkpointing`: clip shapes and batches differ per phase)."""
    from vjepa_scale.train.memory import resolve_checkpointing

    out, start = [], 0
    for i, c in enumerate(cfg.phase_configs()):
        note = None
        if world_size is not None:
            c = resolve_batch(c, world_size, prefix=_batch_prefix(cfg, i))
            c, note = resolve_checkpointing(c, world_size)
        n = c.optim.iterations
        name = cfg.phases[i].name if cfg.phases else None
        out.append(Phase(i, start, start + n, c, name or "", note or ""))
        start += n
    return out


def _batch_prefix(cfg: Config, i: int) -> str:
    if not cfg.phases:
        return "data"
    p = cfg.phases[i]
    return f"phases[{i}]" if (p.global_batch_size is not None or p.batch_size is not None) else "data"


def phase_at(phases: list[Phase], step: int) -> Phase:
    """The phase that trains optimizer step `step` (0-based); the last one from its end on."""
    for p in phases:
        if step < p.end:
            return p
    return phases[-1]


def step_cost(phase: Phase, draws: int = 2) -> float:
    """Expected model FLOPs of one optimizer step of `phase` on one rank: `flops.train_flops` of the masks
    of `draws` steps drawn for the phase's clip grid and per-rank batch (a token budget: its window of
    stream positions; datasets with their own clip shape are priced at the phase's)."""
    from vjepa_scale.flops import train_flops
    from vjepa_scale.masks import MultiBlockMasker

    cfg = phase.cfg
    masker = MultiBlockMasker(cfg.mask, cfg.grid)
    flops = [train_flops(cfg, masker(cfg.data.batch_size, step=s))["total"] for s in range(draws)]
    return cfg.optim.grad_accum * sum(flops) / draws


def steps_left(phases: list[Phase], step: int, costs: Optional[list[float]] = None) -> float:
    """The optimizer steps after `step`, counted in steps of the phase `step` is in: a later phase's steps
    weigh its `costs[i] / costs[here]` (`step_cost` of each phase; None: every step alike), so an ETA of
    steps_left x the current step time prices a 64-frame cooldown at its own speed, not at 16 frames'.
    "here" is the phase of the step just trained (`step` is 1-based there), whose time the ETA uses: at a
    phase's last step that is the ending phase, not the next."""
    here = phase_at(phases, max(step - 1, 0))
    left = float(max(0, here.end - step))
    for p in phases[here.index + 1:]:
        left += p.steps * (1.0 if costs is None else costs[p.index] / costs[here.index])
    return left


def samples_at(phases: list[Phase], step: int) -> int:
    """Global samples consumed by the first `step` optimizer steps."""
    return sum(max(0, min(step, p.end) - p.start) * p.global_batch for p in phases)


def sample_offset(phases: list[Phase], phase: Phase, base: int = 0) -> int:
    """The sampler's `sample_offset` for `phase`: its stream position at step s is
    `offset + s x global_batch`, which must equal base + samples_at(s)."""
    return base + samples_at(phases, phase.start) - phase.start * phase.global_batch


def check_per_step_offsets(phases: list[Phase], base: int = 0, cause: str = "") -> None:
    """ConfigError when a `data.mixing: per_step` phase (several clip shapes) would need a sample
    offset: its per-shape streams advance per micro-step and cannot start at an arbitrary stream
    position, which a phase whose global batch differs from the earlier phases' (or, `cause`, an
    elastic resume with another global batch) asks for. Checked before any step is trained."""
    for p in phases:
        d = p.cfg.data
        if d.mixing != "per_step" or not d.several_shapes(p.cfg.model.tubelet_size):
            continue
        if sample_offset(phases, p, base):
            budget = d.tokens_per_batch is not None  # the batch is the budget's window: stream positions
            unit = "stream positions (token-budget windows)" if budget else "clips"
            where = cause or (f"phases[{p.index}] takes {p.global_batch} {unit} per step where the phases "
                              f"before it took {[q.global_batch for q in phases[:p.index]]}")
            keep = ("keep data.tokens_per_batch, the smallest clip shape (they set the window) and the number of "
                    "ranks the same in every phase and across resumes" if budget else
                    "keep the global batch (data.global_batch_size / phases[i].global_batch_size) the same in "
                    "every phase and across resumes")
            raise ConfigError(
                f"data.mixing: per_step continues each clip shape's sample stream per micro-step, so it cannot "
                f"continue the stream at another position: {where}. To run this, {keep}, or use data.mixing: "
                f"packed")


def resume_offset(ckpt: str | Path, meta: dict, phases: list[Phase]) -> tuple[int, Optional[str]]:
    """(base sample offset, a note or None) to continue checkpoint `ckpt` (its meta.json `meta`) with
    this plan: the stream continues at the checkpoint's `samples_seen`."""
    from vjepa_scale.train import elastic

    step = int(meta["step"])
    here = phase_at(phases, step)
    off, note = elastic.data_position(ckpt, meta, here.global_batch)  # samples_seen - step x G
    offset = off + step * here.global_batch - samples_at(phases, step)
    if len(phases) == 1:
        return offset, note
    seen = off + step * here.global_batch
    if offset == 0:
        return 0, None
    return offset, (f"the checkpoint consumed {seen} clips by step {step}; this run's phases would have "
                    f"consumed {samples_at(phases, step)}: continuing the sample stream at clip {seen}")


def phase_record(phases: list[Phase], step: int) -> dict:
    """meta.json's phase keys for a checkpoint at `step`: the phase a resume continues in (at a phase
    boundary, the next phase) and the steps done in it."""
    here = phase_at(phases, step)
    return {"phase": here.index, "phase_step": step - here.start, "phases": len(phases)}


def check_phase_record(meta: dict, phases: list[Phase]) -> Optional[str]:
    """A note when the checkpoint's recorded phase differs from where this plan puts its step."""
    if "phase" not in meta:
        return None
    here = phase_at(phases, int(meta["step"]))
    if int(meta["phase"]) != here.index:
        return (f"the checkpoint was saved in phase {meta['phase']} at step {meta['step']}; this run's phases "
                f"put that step in phase {here.index}")
    return None


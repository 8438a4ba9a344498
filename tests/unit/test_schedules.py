"""Schedule shapes (vjepa_scale.schedules) and their config mapping (train.schedules), per phase too."""
import dataclasses
import math

import pytest

from vjepa_scale.config import ConfigError, OptimConfig, load_config
from vjepa_scale.schedules import linear, warmup_constant_cooldown, warmup_cosine
from vjepa_scale.train.phases import phase_at, plan, samples_at, sample_offset
from vjepa_scale.train.schedules import StepSchedule, ema_momentum, horizon, learning_rate, schedule_at, weight_decay


def test_wsd_shape_warmup_constant_cooldown():
    f = lambda s: warmup_constant_cooldown(s, warmup=10, total=100, cooldown=20, start=1.0, peak=5.0, final=0.0)
    assert [f(s) for s in (0, 5, 10)] == [1.0, 3.0, 5.0]  # linear warmup
    assert all(f(s) == 5.0 for s in range(10, 81))  # constant up to total - cooldown
    assert [f(s) for s in (85, 90, 100)] == pytest.approx([3.75, 2.5, 0.0])  # linear cooldown
    assert f(150) == 0.0  # held after the horizon
    # no cooldown: warmup + constant; no warmup and a cooldown over everything: a linear decay
    assert warmup_constant_cooldown(99, 10, 100, 0, 1.0, 5.0, 0.0) == 5.0
    assert [warmup_constant_cooldown(s, 0, 4, 4, 1.0, 2.0, 0.0) for s in range(5)] == [2.0, 1.5, 1.0, 0.5, 0.0]


COS_QUARTER = 0.5 * (1 + math.cos(math.pi / 4))  # 0.8536 of the way back to the peak; linear: 0.75


def test_linear_and_cosine_shapes():
    assert [linear(s, 4, 0.5, 1.0) for s in (0, 2, 4, 9)] == [0.5, 0.75, 1.0, 1.0]
    f = lambda s: warmup_cosine(s, 10, 110, 0.2, 1.0, 0.0)
    assert [f(s) for s in (0, 5)] == pytest.approx([0.2, 0.6])  # linear warmup
    # the cosine over steps 10..110: at its midpoint cosine and linear agree, a quarter in they do not
    assert f(10) == 1.0 and f(60) == pytest.approx(0.5)
    assert f(35) == pytest.approx(COS_QUARTER, abs=1e-12) and f(35) == pytest.approx(0.853553, abs=1e-6)
    assert f(85) == pytest.approx(1 - COS_QUARTER, abs=1e-12)
    assert f(110) == f(200) == 0.0  # final, held after the horizon
    # a nonzero final: the cosine runs between peak and final
    assert warmup_cosine(35, 10, 110, 0.0, 2.0, 0.5) == pytest.approx(0.5 + 1.5 * COS_QUARTER, abs=1e-12)


def test_defaults_keep_cosine_wd_and_linear_ema():
    o = OptimConfig()
    assert (o.lr_schedule, o.cooldown, o.wd_schedule, o.ema_schedule) == ("cosine", 0, "cosine", "linear")
    H = horizon(o)
    assert (H, o.warmup, o.start_lr, o.lr, o.final_lr) == (112_500, 12_000, 2e-4, 6.25e-4, 1e-6)
    # LR: warmup 2e-4 -> 6.25e-4 over 12k steps, then cosine to 1e-6 over the 100.5k steps left
    assert [learning_rate(o, s) for s in (0, 6_000, 12_000)] == pytest.approx([2e-4, 4.125e-4, 6.25e-4], abs=1e-15)
    assert learning_rate(o, 12_000 + 25_125) == pytest.approx(1e-6 + 6.24e-4 * COS_QUARTER, abs=1e-15)
    assert learning_rate(o, 12_000 + 50_250) == pytest.approx(1e-6 + 6.24e-4 * 0.5, abs=1e-15)
    assert learning_rate(o, 12_000 + 75_375) == pytest.approx(1e-6 + 6.24e-4 * (1 - COS_QUARTER), abs=1e-15)
    assert learning_rate(o, H) == learning_rate(o, H + 1) == 1e-6
    # WD: cosine 0.04 -> 0.4 from step 0 (no warmup); a quarter in 0.0927 (linear: 0.13)
    assert weight_decay(o, 0) == pytest.approx(0.04, abs=1e-15) and weight_decay(o, H) == pytest.approx(0.4, abs=1e-15)
    assert weight_decay(o, H // 4) == pytest.approx(0.4 - 0.36 * COS_QUARTER, abs=1e-12)
    assert weight_decay(o, H // 4) == pytest.approx(0.092721, abs=1e-6)
    assert weight_decay(o, H // 2) == pytest.approx(0.22, abs=1e-12)
    assert weight_decay(o, 3 * H // 4) == pytest.approx(0.4 - 0.36 * (1 - COS_QUARTER), abs=1e-12)
    # EMA momentum: linear 0.998 -> 1.0 on the horizon, held after it
    assert [ema_momentum(o, s) for s in (0, H // 4, H // 2, H, 2 * H)] == pytest.approx(
        [0.998, 0.9985, 0.999, 1.0, 1.0], abs=1e-12)


def test_vjepa2_schedules_from_config():
    """wsd LR on the scaled horizon; constant WD and EMA hold their start values."""
    o = OptimConfig(iterations=1000, ipe_scale=1.25, warmup=100, cooldown=250, lr_schedule="wsd", start_lr=1e-4,
                    lr=5e-4, final_lr=1e-6, wd_schedule="constant", weight_decay=0.04, final_weight_decay=0.4,
                    ema_schedule="constant", ema=(0.99925, 1.0))
    o.validate()
    assert horizon(o) == 1250
    assert learning_rate(o, 0) == 1e-4 and learning_rate(o, 50) == pytest.approx(3e-4)
    assert learning_rate(o, 100) == learning_rate(o, 999) == learning_rate(o, 1000) == 5e-4  # cooldown at 1000
    assert learning_rate(o, 1125) == pytest.approx((5e-4 + 1e-6) / 2) and learning_rate(o, 1250) == 1e-6
    for s in (0, 500, 1250):
        assert weight_decay(o, s) == 0.04 and ema_momentum(o, s) == 0.99925
        assert schedule_at(o, s) == StepSchedule(learning_rate(o, s), 0.04, 0.99925)  # the three values of one step
    s = schedule_at(o, 1125)
    assert (s.lr, s.weight_decay, s.momentum) == pytest.approx(((5e-4 + 1e-6) / 2, 0.04, 0.99925))
    cos_wd = dataclasses.replace(o, wd_schedule="cosine")
    assert weight_decay(cos_wd, 625) == pytest.approx(0.22)
    assert weight_decay(dataclasses.replace(cos_wd, ipe_scale=1.0), 250) == pytest.approx(0.4 - 0.36 * COS_QUARTER)  # linear: 0.13


def test_schedule_config_errors_name_the_key():
    with pytest.raises(ConfigError, match=r"optim.cooldown=5 needs optim.lr_schedule: wsd"):
        OptimConfig(cooldown=5).validate()
    with pytest.raises(ConfigError, match=r"optim.warmup=100 \+ optim.cooldown=50 exceed .* 125 steps"):
        OptimConfig(iterations=100, warmup=100, cooldown=50, lr_schedule="wsd").validate()
    with pytest.raises(ConfigError, match=r"optim.lr_schedule must be one of \['cosine', 'wsd'\]"):
        load_config(None, ["data.backend=synthetic", "optim.lr_schedule=step"])


def test_phase_pieces_and_data_position():
    """Each phase is its own schedule piece (phase-local step); the stream continues in global samples."""
    cfg = load_config(None, [
        "data.backend=synthetic", "data.crop_size=64", "data.frames_per_clip=4", "data.global_batch_size=8",
        "optim.iterations=10", "optim.warmup=2", "optim.lr_schedule=wsd", "optim.lr=1.0", "optim.start_lr=0.0", "optim.final_lr=0.0",
        "phases=[{steps: 4}, {global_batch_size: 4, crop_size: 96, optim: {warmup: 0, cooldown: 6, ipe_scale: 1.0}}]"])
    ph = plan(cfg, world_size=2)
    assert [(p.start, p.end, p.global_batch, p.cfg.data.batch_size) for p in ph] == [(0, 4, 8, 4), (4, 10, 4, 2)]
    assert [phase_at(ph, s).index for s in (0, 3, 4, 9, 10)] == [0, 0, 1, 1, 1]
    assert [p.cfg.grid for p in ph] == [(2, 4, 4), (2, 6, 6)]
    lrs = [phase_at(ph, s).schedule(s).lr for s in range(10)]
    assert lrs == pytest.approx([0.0, 0.5, 1.0, 1.0] + [1.0 - i / 6 for i in range(6)])
    assert [samples_at(ph, s) for s in (0, 4, 5, 10)] == [0, 32, 36, 56]
    # phase 1's sampler reads stream position offset + s x 4 at step s: 32 at its first step (4)
    assert sample_offset(ph, ph[1]) + 4 * 4 == 32 and sample_offset(ph, ph[0], base=3) == 3


def test_no_phases_is_one_phase_of_the_config_itself():
    cfg = load_config("vith384")
    (p,) = plan(cfg)
    assert p.cfg is cfg and (p.start, p.end) == (0, 90_000)
    for s in (0, 12_000, 89_999):
        assert p.schedule(s) == schedule_at(cfg.optim, s)


def test_a_warmup_longer_than_the_horizon_is_warned_about():
    """Cosine warmup past the schedule horizon (a smoke run of a recipe, or a phase inheriting the run's
    warmup) is allowed, with a note naming how far the LR gets; a warmup within the horizon gets none."""
    from vjepa_scale.config import load_config
    from vjepa_scale.train.phases import plan, warmup_notes

    assert warmup_notes(plan(load_config("cpu_demo"))) == []
    (note,) = warmup_notes(plan(load_config("cpu_demo", ["optim.warmup=1000"])))
    assert note.startswith("warning: optim.warmup=1000 outlasts the run's schedule horizon (75 steps): its LR rises "
                           "from 0.0002 to only")
    phased = load_config("cpu_demo", ["optim.warmup=40", "phases=[{steps: 50}, {steps: 10, frames_per_clip: 8}]"])
    (note,) = warmup_notes(plan(phased))  # phase 1 (horizon 12) warms up again over 40 steps
    assert "outlasts phases[1]'s schedule horizon (12 steps)" in note

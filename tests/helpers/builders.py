"""Tiny configs, an in-process 1-rank process group, and comparing saved states (bitwise, and the
reference EMA of a run's checkpoints)."""
from __future__ import annotations

import os

import torch

from vjepa_scale.config import Config, DataConfig, MaskConfig, MaskSpec, ModelConfig

from .procs import free_port


def tiny_config(pos_embed: str = "sincos", backend: str = "auto", batch_size: int = 3, crop: int = 64,
                frames: int = 8, **model_kw) -> Config:
    model = dict(size="tiny", depth=2, pos_embed=pos_embed, attention_backend=backend,
                 pred_width=64, pred_depth=2, pred_num_heads=4)
    model.update(model_kw)
    masks = MaskConfig(types=[MaskSpec(num_blocks=4, spatial_scale=(0.15, 0.15)),
                              MaskSpec(num_blocks=1, spatial_scale=(0.5, 0.5))])
    return Config(model=ModelConfig(**model), mask=masks,
                  data=DataConfig(backend="synthetic", batch_size=batch_size, crop_size=crop,
                                  frames_per_clip=frames, num_workers=0)).validate()


def single_process_group():
    """Join a 1-rank process group (gloo on CPU) in this test process, through the trainer's own
    `launch.join_process_group`; later calls reuse it. Returns the `DistEnv`."""
    import torch.distributed as dist

    from vjepa_scale.train.launch import join_process_group

    if not dist.is_initialized():
        os.environ["MASTER_PORT"] = str(free_port())
        os.environ["MASTER_ADDR"] = "127.0.0.1"
    return join_process_group()


def equal_tensors(a: dict, b: dict) -> bool:
    """Same names, and every tensor bitwise equal (a state after a skipped step, a resumed run)."""
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def reference_ema(ckpts) -> dict:
    """Single-process fp32 EMA over a run's consolidated checkpoints 2..k, starting from checkpoint 1's
    target: step s's momentum applied to the online encoder after optimizer step s."""
    from vjepa_scale.train.schedules import ema_momentum
    from vjepa_scale.weights import load_consolidated

    o = load_consolidated(ckpts[0])["config"].optim
    shadow = load_consolidated(ckpts[0], "target")["encoder"]
    for c in ckpts[1:]:
        d = load_consolidated(c, "online")
        m = ema_momentum(o, d["step"] - 1)
        shadow = {k: m * shadow[k] + (1 - m) * d["encoder"][k] for k in shadow}
    return shadow

"""EMA target encoder sharded exactly like the online encoder (ZeRO-3), updated shard-locally.

Each rank holds, per parameter, the same flat slice that ZeRO-3 gives the online encoder:
an fp32 shadow (the true EMA state) and the target's working copy (`ds_tensor`, bf16 on GPU).
An update reads the optimizer's fp32 master shard of the online parameter and calls the fused
`ema_update_` kernel: shadow <- m * shadow + (1 - m) * master, then target <- cast(shadow).
No communication: the forward pass re-gathers the target from its shards as usual. `load_full`
reshards a consolidated shadow onto this rank (elastic resume). The DeepSpeed
specifics (shards, masters, slice arithmetic) come from `zero_compat`.
"""
from __future__ import annotations


import torch
import torch.nn as nn

from vjepa_scale.kernels import ema_update_
from vjepa_scale.train.zero_compat import fp32_master, is_partitioned, local_flat, partition_slice


class ShardedEMA:
    """fp32 EMA of `online` held in `target`'s partitioning.

    online: the online encoder inside the ZeRO-3 training engine (parameters with `ds_tensor`).
    target: the target encoder inside an optimizer-less ZeRO-3 engine (same module structure).
    full_fp32: the target's initial weights as full fp32 tensors by name (taken before partitioning,
        so a bf16 target does not round the initial shadow).
    Non-partitioned modules (ZeRO stage < 3, or world size 1 without ZeRO) work too: the "shard"
    is then the whole parameter and the master is the parameter itself.
    """

    def __init__(self, online: nn.Module, target: nn.Module, full_fp32: dict[str, torch.Tensor],
                 rank: int, world_size: int):
        on = dict(online.named_parameters())
        tg = dict(target.named_parameters())
        if set(on) != set(tg):
            missing = sorted(set(on) ^ set(tg))[:5]
            raise ValueError(f"online and target encoders differ in parameters, e.g. {missing}")
        self.names = list(tg)
        self.online = [on[n] for n in self.names]
        self.target = [tg[n] for n in self.names]
        self.partitioned = all(is_partitioned(p) for p in self.target)
        self.rank, self.world_size = rank, world_size
        self.shapes = {n: tuple(full_fp32[n].shape) for n in self.names}
        self.shadows: list[torch.Tensor] = []
        for n, t in zip(self.names, self.target):
            work = local_flat(t)
            if self.partitioned:
                shadow = partition_slice(full_fp32[n], rank, world_size).to(work.device)
                if shadow.numel() != work.numel():
                    raise RuntimeError(f"ZeRO-3 shard of {n} has {work.numel()} elements, expected "
                                       f"{shadow.numel()} (ceil(numel / world_size))")
            else:
                shadow = full_fp32[n].detach().float().reshape(-1).clone().to(work.device)
            self.shadows.append(shadow)
        self._write_targets()

    @torch.no_grad()
    def _write_targets(self) -> None:
        for s, t in zip(self.shadows, self.target):
            w = local_flat(t)
            if w.data_ptr() != s.data_ptr():
                w.copy_(s)

    @torch.no_grad()
    def update(self, momentum: float) -> None:
        """shadow <- momentum * shadow + (1 - momentum) * fp32 master; target <- shadow (cast)."""
        masters, shadows, targets = [], [], []
        for p, s, t in zip(self.online, self.shadows, self.target):
            m = fp32_master(p)
            n = min(m.numel(), s.numel())  # a master shard may omit the trailing zero padding
            masters.append(m[:n].float() if m.dtype != torch.float32 else m[:n])
            shadows.append(s[:n])
            targets.append(local_flat(t)[:n])
        ema_update_(shadows, masters, targets, momentum)

    def state_dict(self) -> dict:
        """This rank's shards: {name: fp32 flat shadow} plus the layout needed to reassemble them."""
        return {"shadows": {n: s.detach().cpu().clone() for n, s in zip(self.names, self.shadows)},
                "shapes": self.shapes, "rank": self.rank, "world_size": self.world_size,
                "partitioned": self.partitioned}

    @torch.no_grad()
    def load_state_dict(self, state: dict) -> None:
        """This rank's shards as saved by `state_dict()` at the same world size and partitioning."""
        if state["world_size"] != self.world_size or state["partitioned"] != self.partitioned:
            raise ValueError(f"EMA shards were saved with world_size={state['world_size']} "
                             f"(partitioned={state['partitioned']}); this run has {self.world_size} "
                             f"(partitioned={self.partitioned}): consolidate all ranks' shards "
                             f"(weights.consolidate_shards) and use load_full")
        for n, s in zip(self.names, self.shadows):
            s.copy_(state["shadows"][n].to(s.device))
        self._write_targets()

    @torch.no_grad()
    def load_full(self, full: dict[str, torch.Tensor]) -> None:
        """Set the shadows from full fp32 tensors by name (any saved world size): this rank's slice."""
        for n, s in zip(self.names, self.shadows):
            if tuple(full[n].shape) != self.shapes[n]:
                raise ValueError(f"EMA tensor {n} has shape {tuple(full[n].shape)}, the model {self.shapes[n]}")
            part = partition_slice(full[n], self.rank, self.world_size) if self.partitioned else full[n].reshape(-1)
            s.copy_(part.to(s.device, torch.float32))
        self._write_targets()


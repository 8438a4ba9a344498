"""EMA target encoder whose fp32 state is sharded the way the optimizer shards the online masters.

Per parameter, each rank keeps an fp32 shadow (the true EMA state) of the part whose fp32 master it
holds, and updates it with the fused `ema_update_` kernel from that master:
shadow <- m * shadow + (1 - m) * master, then the target's working copy <- cast(shadow).
Three layouts, by how the online engine keeps its masters (`layout`):

- `zero3`: ZeRO-3 flat slices (ceil(numel / world) per rank, zero-padded); the target is sharded the
  same way and its forward re-gathers it: no communication in the update.
- `fragments`: ZeRO-1/2. The masters are split into one contiguous range per rank of each param
  group's flat buffer (`zero_compat.master_fragment`); the target is replicated. Each rank updates its
  fragments, then one all-gather of the updated target values (target dtype) brings every rank's
  target up to date: (N-1)/N x 2E bytes per step in bf16, and the fp32 shadow takes 4E/N bytes per
  rank, instead of reading every full fp32 master (an all-reduce of 4E) into a replicated shadow.
  The target's parameters are views into one flat buffer ordered as DeepSpeed lays the masters out,
  so each rank's fragments form a few contiguous runs.
- `replicated`: no DeepSpeed optimizer (a plain module, e.g. the step benchmark's torch row): the
  whole parameter, read from the parameter itself.

`load_full` reshards a consolidated shadow onto this rank (elastic resume). The DeepSpeed specifics
(shards, masters, slice arithmetic) come from `zero_compat`.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn as nn

from vjepa_scale.kernels import ema_update_
from vjepa_scale.train.zero_compat import (fp32_master, has_master_fragments, is_partitioned, local_flat,
                                           master_fragment, partition_slice)


SYNC_LOG_NAME = "ema_target_all_gather"  # the fragments layout's all-gather, in DeepSpeed's comms logger


class ShardedEMA:
    """fp32 EMA of `online` held in the partitioning of its optimizer's masters (see the module docstring).

    online: the online encoder inside the training engine (or a plain module).
    target: the target encoder (ZeRO-3: inside an optimizer-less ZeRO-3 engine; else replicated).
    full_fp32: the target's initial weights as full fp32 tensors by name (taken before partitioning,
        so a bf16 target does not round the initial shadow).
    Building it is collective in the `fragments` layout with more than one rank (the ranks exchange
    their fragment tables once).
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
        self.rank, self.world_size = rank, world_size
        self.shapes = {n: tuple(full_fp32[n].shape) for n in self.names}
        if all(is_partitioned(p) for p in self.target):
            self.layout = "zero3"
        elif all(has_master_fragments(p) for p in self.online):
            self.layout = "fragments"
        else:
            self.layout = "replicated"
        # (start, numel) of each parameter's flat elements this rank's shadow covers
        self.fragments: list[tuple[int, int]] = []
        self.shadows: list[torch.Tensor] = []
        frags = [master_fragment(p) for p in self.online] if self.layout == "fragments" else None
        for i, (n, t) in enumerate(zip(self.names, self.target)):
            flat = full_fp32[n].detach().reshape(-1)
            if self.layout == "zero3":
                shadow = partition_slice(full_fp32[n], rank, world_size).to(local_flat(t).device)
                if shadow.numel() != local_flat(t).numel():
                    raise RuntimeError(f"ZeRO-3 shard of {n} has {local_flat(t).numel()} elements, expected "
                                       f"{shadow.numel()} (ceil(numel / world_size))")
                self.fragments.append((rank * shadow.numel(), shadow.numel()))
            elif self.layout == "fragments":
                f = frags[i]
                start, numel = (f.start, f.numel) if f is not None else (0, 0)
                self.fragments.append((start, numel))
                shadow = flat[start:start + numel].float().clone().to(t.device)
            else:
                self.fragments.append((0, flat.numel()))
                shadow = flat.float().clone().to(t.device)
            self.shadows.append(shadow)
        if self.layout == "fragments":
            self._build_flat_target(frags, full_fp32)
        self._write_targets()

    @property
    def partitioned(self) -> bool:
        """True when each rank holds only part of the EMA state (ZeRO-3 slices or ZeRO-1/2 fragments)."""
        return self.layout != "replicated"

    # -- fragments layout: the replicated target as one flat buffer ------------------------------

    def _build_flat_target(self, frags: list, full_fp32: dict[str, torch.Tensor]) -> None:
        """Re-point the target's parameters into one flat buffer, ordered like DeepSpeed's flat master
        groups (by each parameter's first fragment: group, rank, offset), and note where every rank's
        fragments lie in it, merged into contiguous runs."""
        mine = [(i, f.group, f.offset, f.start, f.numel) for i, f in enumerate(frags) if f is not None]
        tables = [mine]
        if self.world_size > 1:
            tables = [None] * self.world_size
            dist.all_gather_object(tables, mine)
        first: dict[int, tuple] = {}
        for r, table in enumerate(tables):
            for i, group, offset, start, numel in table:
                key = (group, r, offset - start)  # where the parameter would begin in the flat group
                first[i] = min(first.get(i, key), key)
        if sorted(first) != list(range(len(self.names))):
            lost = [self.names[i] for i in range(len(self.names)) if i not in first][:5]
            raise RuntimeError(f"EMA: no rank holds the fp32 master of {lost} (ZeRO-1/2 fragments)")
        order = sorted(first, key=first.get)
        base, at = {}, 0
        for i in order:
            base[i] = at
            at += self.target[i].numel()
        t0 = self.target[0]
        self._flat = torch.empty(at, dtype=t0.dtype, device=t0.device)
        for i in order:
            t = self.target[i]
            self._flat[base[i]:base[i] + t.numel()].copy_(full_fp32[self.names[i]].reshape(-1))
            t.data = self._flat[base[i]:base[i] + t.numel()].view_as(t)
        self._runs = [_merge([(base[i] + start, numel) for i, _, _, start, numel in sorted(table)])
                      for table in tables]

    def _sync_targets(self) -> None:
        """Every rank's updated fragments to every rank: one all-gather of the target values (through
        deepspeed.comm, so its communication logger counts it as `SYNC_LOG_NAME`)."""
        if self.world_size == 1:
            return
        from deepspeed import comm as ds_comm

        runs = self._runs
        longest = max(sum(n for _, n in rr) for rr in runs)
        send = torch.zeros(longest, dtype=self._flat.dtype, device=self._flat.device)
        at = 0
        for a, n in runs[self.rank]:
            send[at:at + n].copy_(self._flat[a:a + n])
            at += n
        recv = torch.empty(self.world_size * longest, dtype=send.dtype, device=send.device)  # rank r at r*longest
        ds_comm.all_gather_into_tensor(recv, send, log_name=SYNC_LOG_NAME)
        for r, rr in enumerate(runs):
            if r == self.rank:
                continue
            at = r * longest
            for a, n in rr:
                self._flat[a:a + n].copy_(recv[at:at + n])
                at += n

    # -- update, state ------------------------------------------------------------------------------

    def _target_view(self, i: int) -> torch.Tensor:
        start, numel = self.fragments[i]
        if self.layout == "zero3":
            return local_flat(self.target[i])
        return self.target[i].data.view(-1)[start:start + numel]

    @torch.no_grad()
    def _write_targets(self) -> None:
        for i, s in enumerate(self.shadows):
            w = self._target_view(i)
            if w.data_ptr() != s.data_ptr() and w.numel():
                w.copy_(s)
        if self.layout == "fragments":
            self._sync_targets()

    @torch.no_grad()
    def update(self, momentum: float) -> None:
        """shadow <- momentum * shadow + (1 - momentum) * fp32 master; target <- shadow (cast)."""
        masters, shadows, targets = [], [], []
        for i, (p, s) in enumerate(zip(self.online, self.shadows)):
            if self.layout == "fragments":  # looked up each time: a checkpoint load may swap the buffers
                f = master_fragment(p)
                if f is None:
                    continue
                m = f.master
            else:
                m = fp32_master(p)
            n = min(m.numel(), s.numel())  # a ZeRO-3 master shard may omit the trailing zero padding
            masters.append(m[:n].float() if m.dtype != torch.float32 else m[:n])
            shadows.append(s[:n])
            targets.append(self._target_view(i)[:n])
        ema_update_(shadows, masters, targets, momentum)
        if self.layout == "fragments":
            self._sync_targets()

    def state_dict(self) -> dict:
        """This rank's shards: {name: fp32 flat shadow} plus the layout needed to reassemble them
        (`fragments`: each shard's (start, numel) in the flattened parameter)."""
        return {"shadows": {n: s.detach().cpu().clone() for n, s in zip(self.names, self.shadows)},
                "shapes": self.shapes, "rank": self.rank, "world_size": self.world_size,
                "partitioned": self.layout == "zero3", "layout": self.layout,
                "fragments": dict(zip(self.names, self.fragments))}

    @torch.no_grad()
    def load_state_dict(self, state: dict) -> None:
        """This rank's shards as saved by `state_dict()` with the same layout; a replicated state (any
        rank's, or a checkpoint of the earlier ZeRO-1/2 layout) loads into any layout."""
        layout = state.get("layout", "zero3" if state["partitioned"] else "replicated")
        if layout == "replicated":
            self.load_full({n: v.reshape(self.shapes[n]) for n, v in state["shadows"].items()})
            return
        same = (layout == self.layout and state["world_size"] == self.world_size
                and (layout == "zero3" or state["fragments"] == dict(zip(self.names, self.fragments))))
        if not same:
            raise ValueError(f"EMA shards were saved with world_size={state['world_size']} (layout {layout}); "
                             f"this run has {self.world_size} (layout {self.layout}) or splits the masters "
                             f"differently: consolidate all ranks' shards (weights.consolidate_shards) and "
                             f"use load_full")
        for n, s in zip(self.names, self.shadows):
            s.copy_(state["shadows"][n].to(s.device))
        self._write_targets()

    @torch.no_grad()
    def load_full(self, full: dict[str, torch.Tensor]) -> None:
        """Set the shadows from full fp32 tensors by name (any saved world size): this rank's part."""
        for n, s, (start, numel) in zip(self.names, self.shadows, self.fragments):
            if tuple(full[n].shape) != self.shapes[n]:
                raise ValueError(f"EMA tensor {n} has shape {tuple(full[n].shape)}, the model {self.shapes[n]}")
            if self.layout == "zero3":
                part = partition_slice(full[n], self.rank, self.world_size)
            else:
                part = full[n].reshape(-1)[start:start + numel]
            s.copy_(part.to(s.device, torch.float32))
        self._write_targets()


def _merge(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """(start, length) spans sorted by start, adjacent ones joined; empty ones dropped."""
    out: list[tuple[int, int]] = []
    for a, n in sorted(spans):
        if n == 0:
            continue
        if out and out[-1][0] + out[-1][1] == a:
            out[-1] = (out[-1][0], out[-1][1] + n)
        else:
            out.append((a, n))
    return out

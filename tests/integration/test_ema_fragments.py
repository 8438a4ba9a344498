"""The EMA under ZeRO-1/2 on 2 CPU ranks (`train.ema`, fragments layout): each rank keeps the fp32
shadow of the masters it holds only, the replicated target is the same on every rank and equals the
consolidated shadow (cast), the shadow is the single-process fp32 EMA of the consolidated masters,
and a resume at the same world size continues bitwise.

The straight runs of both cases come from one launch (ema_fragments.py: one Trainer after the other);
each resume runs in a launch of its own."""
from pathlib import Path

import pytest
import torch

from helpers import assert_ok, launch, reference_ema, require
from vjepa_scale.weights import consolidate_shards, list_checkpoints, load_consolidated

require("deepspeed")
SCRIPT = Path(__file__).with_name("ema_fragments.py")
OPTS = ["model.depth=2", "data.crop_size=32", "data.global_batch_size=4", "optim.iterations=3", "optim.ema=[0.5,0.8]",
        "train.keep_last=5"]
CASES = [(1, "bf16"), (2, "fp32")]  # ZeRO stage, precision

pytestmark = pytest.mark.slow


def _opts(stage: int, precision: str) -> list[str]:
    return [f"zero.stage={stage}", f"train.precision={precision}"]


def _ranks(out: Path) -> list[dict]:
    return [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(2)]


def _run(out: Path, *opts: str, resume=None) -> list[dict]:
    first = ["--resume", str(resume)] if resume else []
    assert_ok(launch(SCRIPT, str(out), *first, *OPTS, *opts, nproc=2, timeout=600))
    return _ranks(out)


@pytest.fixture(scope="module")
def straight(tmp_path_factory) -> dict:
    """(stage, precision) -> the folder of that case's straight run (3 steps, a checkpoint after each),
    every case trained in one launch."""
    base = tmp_path_factory.mktemp("ema_fragments")
    outs = {case: base / f"straight_zero{case[0]}_{case[1]}" for case in CASES}
    runs = [[str(out), *OPTS, *_opts(*case)] for case, out in outs.items()]
    args = [a for i, run in enumerate(runs) for a in (["--then"] if i else []) + run]
    assert_ok(launch(SCRIPT, *args, nproc=2, timeout=600))
    return outs


@pytest.mark.parametrize("stage,precision", CASES)
def test_zero12_ema_follows_the_masters_split(straight, tmp_path, stage, precision):
    opts = _opts(stage, precision)
    ranks = _ranks(straight[stage, precision])
    emas = [r["ema"] for r in ranks]
    assert all(e["layout"] == "fragments" for e in emas)
    sizes = {n: torch.Size(s).numel() for n, s in emas[0]["shapes"].items()}
    held = [sum(e["fragments"][n][1] for n in sizes) for e in emas]
    assert sum(held) == sum(sizes.values()) and all(0 < h < sum(sizes.values()) for h in held)  # split, not copied

    shadow = consolidate_shards(emas)
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    for n, s in shadow.items():
        assert torch.equal(ranks[0]["target"][n], ranks[1]["target"][n]), n  # replicated after the gather
        assert torch.equal(ranks[0]["target"][n], s.to(dtype).float()), n  # = cast(shadow)

    # the single-process fp32 EMA of the consolidated masters of each step
    ckpts = list_checkpoints(straight[stage, precision] / "run")
    assert len(ckpts) == 3
    ref = reference_ema(ckpts)
    final = load_consolidated(ckpts[-1], "target")["encoder"]
    online = load_consolidated(ckpts[-1], "online")["encoder"]
    assert max((shadow[k] - ref[k]).abs().max().item() for k in shadow) <= 1e-6
    assert all(torch.equal(final[k], shadow[k]) for k in shadow)  # the checkpoint holds the same shards
    assert max((shadow[k] - online[k]).abs().max().item() for k in shadow) > 1e-5  # not a copy

    # resumed from step 2 at the same world size: the same shards, bitwise
    resumed = _run(tmp_path / "resumed", *opts, resume=ckpts[1])
    for a, b in zip(emas, (r["ema"] for r in resumed)):
        assert a["fragments"] == b["fragments"]
        assert all(torch.equal(a["shadows"][n], b["shadows"][n]) for n in sizes)

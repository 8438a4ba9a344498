"""The EMA under ZeRO-1/2 on 2 CPU ranks (`train.ema`, fragments layout): each rank keeps the fp32
shadow of the masters it holds only, the replicated target is the same on every rank and equals the
consolidated shadow (cast), the shadow is the single-process fp32 EMA of the consolidated masters,
and a resume at the same world size continues bitwise."""
from pathlib import Path

import pytest
import torch

from helpers import assert_ok, launch, reference_ema, require
from vjepa_scale.weights import consolidate_shards, list_checkpoints, load_consolidated

require("deepspeed")
SCRIPT = Path(__file__).with_name("ema_fragments.py")
OPTS = ["model.depth=2", "data.crop_size=32", "data.global_batch_size=4", "optim.iterations=3", "optim.ema=[0.5,0.8]",
        "train.keep_last=5"]

pytestmark = pytest.mark.slow


def _run(out: Path, *opts: str, resume=None) -> list[dict]:
    first = ["--resume", str(resume)] if resume else []
    assert_ok(launch(SCRIPT, str(out), *first, *OPTS, *opts, nproc=2, timeout=600))
    return [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(2)]


@pytest.mark.parametrize("stage,precision", [(1, "bf16"), (2, "fp32")])
def test_zero12_ema_follows_the_masters_split(tmp_path, stage, precision):
    opts = [f"zero.stage={stage}", f"train.precision={precision}"]
    ranks = _run(tmp_path / "straight", *opts)
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
    ckpts = list_checkpoints(tmp_path / "straight" / "run")
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

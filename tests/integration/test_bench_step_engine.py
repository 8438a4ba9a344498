"""`tools/bench.py --suite step` as a user runs it on CPU: the engine row runs the Trainer's own engines
(1-rank DeepSpeed, the recipe's ZeRO-3, synthetic data), and its first-step loss equals a Trainer's
first-step loss on the same batch, built here in-process, and the torch module row's; the reference-style row
runs beside it (the torch and reference rows alone: unit/test_bench.py)."""
import json

import pytest

from helpers import assert_ok, launch, require, single_process_group

require("deepspeed")
OPTS = ["model.depth=1", "data.crop_size=32"]


def test_engine_row_is_the_trainers_step(tmp_path):
    from vjepa_scale.bench.step import bench_config
    from vjepa_scale.train.engine import Trainer

    args = ["--device", "cpu", "--suite", "step", "--step-rows", "engine", "torch", "reference", "--batch-size", "2",
            "--steps", "1", "--out", str(tmp_path)] + [a for o in OPTS for a in ("--opt", o)]
    assert_ok(launch("tools/bench.py", *args, timeout=300))  # cpu_env(): no inherited group variables
    rows = json.loads((tmp_path / "bench_cpu.json").read_text())["rows"]
    engine, module, ref = rows
    assert engine["row"] == "engine" and engine["impl"] == "engine: DeepSpeed ZeRO-3, 1 rank, fp32"
    assert module["row"] == "torch" and module["impl"] == "torch module, fp32"
    # the same model, weights and batch: the engine and the torch module start from the same loss
    assert engine["first_loss"] == pytest.approx(module["first_loss"], rel=1e-5)
    for k in ("tflop_per_clip", "ctx_tokens_per_clip"):
        assert engine[k] == module[k], k
    assert ref["row"] == "reference" and ref["impl"].startswith("reference-style: batch_min, padded, 2 passes")
    assert engine["vs_reference"] == pytest.approx(engine["clips_per_s"] / ref["clips_per_s"])
    assert ref["ctx_tokens_per_clip"] <= engine["ctx_tokens_per_clip"]  # the reference drops context tokens

    _, _, cfg = bench_config("cpu", None, 2, OPTS)
    tr = Trainer(cfg, tmp_path / "run", env=single_process_group())
    first = next(iter(tr.loader(1)))
    assert float(tr.train_step([first])["loss"]) == pytest.approx(engine["first_loss"], rel=1e-6)

"""The bench suites on CPU (small sizes) and tools/bench.py's table and argument checks, in this process;
timings are not asserted (the command line end to end: integration/test_bench_cli.py)."""
import pytest

from helpers import load_tool
from vjepa_scale.bench import SUITES, get_suite, run_suite

bench_cli = load_tool("bench")


def test_markdown_formats_percent_and_missing():
    meta = {"device": "cpu", "device_name": "x", "time": "t", "torch": "1", "triton": "2", "copy_gbps": 3.0,
            "quick": True}
    md = bench_cli.markdown(meta, [{"suite": "s", "case": "c", "impl": "a", "time_ms": 2.0, "copy_frac": 0.5,
                                    "mfu": None, "clips_per_s": 1234.5}])
    assert "| c | a | 2 | 50.0% | - | 1,234 |" in md
    assert "| case | impl | time (ms) | % copy BW | mfu | clips_per_s |" in md


def test_unknown_suite_is_refused(capsys):
    with pytest.raises(SystemExit):
        bench_cli.main(["--device", "cpu", "--suite", "nope"])
    assert "unknown suite 'nope'" in capsys.readouterr().err
    with pytest.raises(ValueError, match="unknown bench suite 'nope'"):
        get_suite("nope")
    assert {"gather", "ema", "attention", "step", "data"} <= set(SUITES)


def test_bench_hides_zeros_deprecated_collective_warnings():
    """The step suite's engine row runs DeepSpeed's ZeRO, which calls torch's deprecated collectives every
    step: tools/bench.py filters their FutureWarnings as tools/train.py does (it did not)."""
    import warnings

    with pytest.raises(SystemExit):
        bench_cli.main(["--device", "cpu", "--suite", "nope"])  # the filter is set first thing
    with warnings.catch_warnings(record=True) as seen:
        for name in ("all_gather_into_tensor", "reduce_scatter_tensor"):
            warnings.warn(f"`torch.distributed.{name}` is deprecated. Please use ...", FutureWarning)
    assert not seen, [str(w.message) for w in seen]


def test_step_suite_reports_throughput_and_flops():
    """The torch and reference rows in process; the engine row (DeepSpeed) runs in
    integration/test_bench_step_engine.py, which also checks its loss against the torch row's."""
    from vjepa_scale.bench.step import reference_config
    from vjepa_scale.config import load_config, resolve_config_path
    from vjepa_scale.flops import train_flops
    from vjepa_scale.masks import MultiBlockMasker

    rows = run_suite("step", "cpu", True, batch_size=2, steps=3, unknown_option=5, rows=["torch", "reference"])
    assert [r["row"] for r in rows] == ["torch", "reference"]
    assert rows[0]["impl"] == "torch module, fp32" and rows[1]["impl"].startswith("reference-style")
    cfg = load_config(resolve_config_path("cpu_demo"), ["data.backend=synthetic"])
    # the timed steps alternate the two batches (0, 1, 0): per-clip figures average over them, as the rates do
    masks = [MultiBlockMasker(cfg.mask, cfg.grid)(2, step=s) for s in (0, 1, 0)]
    cut = [MultiBlockMasker(reference_config(cfg).mask, cfg.grid)(2, step=s) for s in (0, 1, 0)]
    for row, ms in zip(rows, [masks, cut]):
        assert row["suite"] == "step" and "cpu_demo B=2" in row["case"]
        assert row["clips_per_s"] > 0 and row["mfu"] is None  # no peak for a CPU
        assert row["tflop_per_clip"] == pytest.approx(sum(train_flops(cfg, m)["total"] for m in ms) / 3 / 2 / 1e12)
        assert row["tokens_per_s"] == pytest.approx(row["clips_per_s"] * cfg.grid[0] * cfg.grid[1] * cfg.grid[2])
        assert row["ctx_tokens_per_clip"] == pytest.approx(sum(sum(m.ctx_lengths) for m in ms) / 3 / 2)
        assert row["ctx_tokens_per_s"] == pytest.approx(row["ctx_tokens_per_clip"] * row["clips_per_s"])
        assert row["vs_reference"] == pytest.approx(row["clips_per_s"] / rows[1]["clips_per_s"])
        # the median of 3 timed steps after 2 warm-up steps, its range, and the CPU time per step
        assert (row["warmup_steps"], row["timed_steps"]) == (2, 3)
        assert row["time_ms_min"] <= row["time_ms"] <= row["time_ms_max"] and row["cpu_time_ms"] > 0
        assert row["cpu_vs_reference"] == pytest.approx(rows[1]["cpu_time_ms"] / row["cpu_time_ms"])


def test_step_suite_overrides_and_profile(tmp_path):
    from vjepa_scale.bench.step import categorize

    (row,) = run_suite("step", "cpu", True, batch_size=2, steps=1, opts=["model.activation_checkpointing=true"],
                       profile_dir=str(tmp_path), rows=["torch"])
    assert "+act-ckpt" in row["case"] and row["overrides"] == "model.activation_checkpointing=true"
    text = (tmp_path / "step_profile_cpu.txt").read_text()
    assert row["profile"] == str(tmp_path / "step_profile_cpu.txt") and "CPU op self time per step" in text
    shares = [float(line.split("|")[3].strip().rstrip("%")) for line in text.splitlines()
              if line.startswith("| ") and line.count("|") == 4 and "%" in line]
    assert sum(shares) == pytest.approx(100.0, abs=0.5) and "| matmul |" in text
    assert categorize("sm90_xmma_gemm_bf16bf16_bf16f32") == "matmul"
    assert categorize("pytorch_flash::flash_fwd_kernel<Flash_fwd_kernel_traits>") == "attention"
    assert categorize("_gather_bwd_kernel") == "triton kernels"
    assert categorize("void at::native::vectorized_elementwise_kernel<4, GeluCUDAKernelImpl>") == "elementwise"


def test_mixed_suite_runs_the_step_core_on_three_layouts():
    """Packed, padded to the largest shape, one shape per step: the same clips through the trainer's
    step core (named in the case); padding computes more tokens, per_step takes one step per shape."""
    rows = {r["impl"]: r for r in run_suite("mixed", "cpu", True)}
    assert set(rows) == {"packed", "padded", "per_step"}
    assert all("torch module, fp32" in r["case"] for r in rows.values())
    assert rows["padded"]["computed_tokens"] > rows["packed"]["computed_tokens"] == rows["per_step"]["computed_tokens"]
    assert (rows["packed"]["steps"], rows["padded"]["steps"], rows["per_step"]["steps"]) == (1, 1, 3)
    assert rows["padded"]["speedup"] == 1 and all(r["tokens_per_s"] > 0 for r in rows.values())
    for r in rows.values():  # the median of 5 timed passes after 2 warm-up passes
        assert (r["warmup_passes"], r["timed_passes"]) == (2, 5) and r["cpu_time_ms"] > 0
        assert r["time_ms_min"] <= r["time_ms"] <= r["time_ms_max"]


def test_step_suite_times_recipes_from_random_weights():
    """A recipe that starts from another run (V-JEPA 2's cooldown: train.init_from + init_from_optimizer)
    is benchmarked from random weights: its engine row must not look for that run."""
    from vjepa_scale.bench.step import bench_config
    from vjepa_scale.config import load_config

    assert load_config("vjepa2_vitg_cool384").train.init_from
    _, B, cfg = bench_config("cpu", "vjepa2_vitg_cool384", 1, ["model.activation_checkpointing=true"])
    assert B == 1 and cfg.train.init_from is None and not cfg.train.init_from_optimizer


def test_a_failing_step_row_leaves_the_others_and_is_written_as_it_goes(tmp_path, monkeypatch):
    """A row that fails (here: an attention backend this machine lacks, which the reference-style row
    does not use) becomes a FAILED row naming the error; the next row still runs, the JSON holds every
    row done so far after each row (a run killed at a time limit keeps them), and the exit code is 1."""
    import json

    import vjepa_scale.bench.step as step

    seen = []
    time_row = step._time

    def record(*args, **kwargs):  # what the JSON on disk holds when each timed row starts
        path = tmp_path / "bench_cpu.json"
        seen.append([r["row"] for r in json.loads(path.read_text())["rows"]] if path.exists() else [])
        return time_row(*args, **kwargs)

    monkeypatch.setattr(step, "_time", record)
    rc = bench_cli.main(["--device", "cpu", "--suite", "step", "--batch-size", "2", "--steps", "1",
                         "--step-rows", "torch", "reference", "engine",
                         "--opt", "model.attention_backend=cudnn", "--out", str(tmp_path)])
    rows = json.loads((tmp_path / "bench_cpu.json").read_text())["rows"]
    assert rc == 1 and [r["row"] for r in rows] == ["torch", "reference", "engine"]
    assert rows[0]["case"] == rows[2]["case"] == "FAILED" and "'cudnn' is not available on cpu" in rows[0]["error"]
    assert rows[1]["clips_per_s"] > 0 and rows[1]["vs_reference"] == 1 and "vs_reference" not in rows[0]
    assert seen == [[], ["torch"], ["torch", "reference"]]  # each row started with the earlier ones on disk

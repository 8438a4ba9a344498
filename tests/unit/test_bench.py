"""tools/bench.py and the bench suites on CPU (small sizes); timings are not asserted."""
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from vjepa_scale.bench import SUITES, get_suite, run_suite

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("vjepa_tools_bench", ROOT / "tools" / "bench.py")
bench_cli = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench_cli)


def test_bench_cli_writes_json_and_markdown(tmp_path):
    rc = bench_cli.main(["--device", "cpu", "--suite", "gather", "ema", "--out", str(tmp_path)])
    assert rc == 0
    data = json.loads((tmp_path / "bench_cpu.json").read_text())
    assert data["meta"]["device"] == "cpu" and data["meta"]["copy_gbps"] > 0
    rows = data["rows"]
    assert {r["suite"] for r in rows} == {"gather", "ema"}
    for r in rows:
        assert r["time_ms"] > 0 and r["gbps"] > 0 and 0 < r["copy_frac"]
    impls = {(r["suite"], r["impl"]) for r in rows}
    assert {("gather", "torch_baseline"), ("gather", "torch_ref"), ("ema", "torch_foreach"),
            ("ema", "torch_per_param"), ("ema", "torch_ref")} <= impls
    base = [r for r in rows if r["impl"] == "torch_baseline"]
    assert base and all(r["speedup"] == 1.0 for r in base)
    md = (tmp_path / "bench_cpu.md").read_text()
    assert "## gather" in md and "## ema" in md and "| case | impl | time (ms) | GB/s | % copy BW | speed-up |" in md


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


def test_step_suite_reports_throughput_and_flops():
    from vjepa_scale.config import load_config, resolve_config_path
    from vjepa_scale.flops import train_flops
    from vjepa_scale.masks import MultiBlockMasker

    (row,) = run_suite("step", "cpu", True, batch_size=2, steps=1, unknown_option=5)
    assert row["suite"] == "step" and "cpu_demo B=2" in row["case"]
    assert row["clips_per_s"] > 0 and row["mfu"] is None  # no peak for a CPU
    cfg = load_config(resolve_config_path("cpu_demo"), ["data.backend=synthetic"])
    masks = MultiBlockMasker(cfg.mask, cfg.grid)(2, step=0)
    assert row["tflop_per_clip"] == pytest.approx(train_flops(cfg, masks)["total"] / 2 / 1e12)
    assert row["tokens_per_s"] == pytest.approx(row["clips_per_s"] * cfg.grid[0] * cfg.grid[1] * cfg.grid[2])


def test_step_suite_overrides_and_profile(tmp_path):
    from vjepa_scale.bench.step import categorize

    (row,) = run_suite("step", "cpu", True, batch_size=2, steps=1, opts=["model.activation_checkpointing=true"],
                       profile_dir=str(tmp_path))
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


def test_bench_cli_refuses_bad_step_options(tmp_path):
    def bench(*args):
        return subprocess.run([sys.executable, "tools/bench.py", "--device", "cpu", "--out", str(tmp_path), *args],
                              cwd=ROOT, capture_output=True, text=True, timeout=120)

    r = bench("--suite", "step", "--opt", "model.nope=1")
    assert r.returncode == 2 and "--opt: unknown config key 'model.nope'" in r.stderr
    r = bench("--suite", "gather", "--profile")
    assert r.returncode == 2 and "add it with --suite step" in r.stderr
    assert not any(tmp_path.iterdir())  # refused before any work


@pytest.mark.slow
def test_bench_cpu_all_suites(tmp_path):
    """`python tools/bench.py --device cpu` as a user runs it: every suite, table written."""
    env = dict(os.environ, DS_ACCELERATOR="cpu", DS_SKIP_SHM_BUILD="1")
    proc = subprocess.run([sys.executable, "tools/bench.py", "--device", "cpu", "--out", str(tmp_path)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    md = (tmp_path / "bench_cpu.md").read_text()
    for s in ("gather", "ema", "attention", "step"):
        assert f"## {s}" in md
    rows = json.loads((tmp_path / "bench_cpu.json").read_text())["rows"]
    att = [r for r in rows if r["suite"] == "attention" and r["case"].startswith("varlen")]
    assert {r["impl"] for r in att} >= {"padded", "nested"} and all(r["pad_flop_ratio"] >= 1 for r in att)
    dense = [r for r in rows if r["suite"] == "attention" and r["case"].startswith("dense SDPA")]
    assert len(dense) == 6 and {r["impl"] for r in dense} == {"auto", "math"}  # 3 shapes x the CPU kernels
    assert all(r["tflops"] > 0 and (r["impl"] != "auto" or r["speedup"] == 1) for r in dense)


@pytest.mark.slow
def test_bench_triton_rows_under_interpreter(tmp_path):
    """The suites' Triton code path (what runs on a GPU) end to end, in the CPU interpreter."""
    pytest.importorskip("triton")
    env = dict(os.environ, TRITON_INTERPRET="1")
    proc = subprocess.run([sys.executable, "tools/bench.py", "--device", "cpu", "--suite", "gather",
                           "--out", str(tmp_path)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = json.loads((tmp_path / "bench_cpu.json").read_text())["rows"]
    triton_rows = [r for r in rows if r["impl"] == "triton"]
    assert len(triton_rows) == 4 and all(r["speedup"] > 0 for r in triton_rows)

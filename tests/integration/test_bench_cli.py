"""tools/bench.py as a user runs it on CPU (small sizes): tables written, bad options refused, every
suite, the Triton rows under the interpreter; timings are not asserted."""
import json
import os

import pytest

from helpers import assert_ok, cpu_env, launch, load_tool, require

bench_cli = load_tool("bench")


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


def test_bench_cli_refuses_bad_step_options(tmp_path):
    def bench(*args):
        return launch("tools/bench.py", "--device", "cpu", "--out", str(tmp_path), *args, timeout=120)

    r = bench("--suite", "step", "--opt", "model.nope=1")
    assert r.returncode == 2 and "--opt: unknown config key 'model.nope'" in r.stderr
    r = bench("--suite", "gather", "--profile")
    assert r.returncode == 2 and "add it with --suite step" in r.stderr
    assert not any(tmp_path.iterdir())  # refused before any work


@pytest.mark.parametrize("args,message", [
    (["--batch-size", "0"], "--batch-size: must be >= 1, got 0"),
    (["--steps", "0"], "--steps: must be >= 1, got 0"),
    (["--steps", "-2"], "--steps: must be >= 1, got -2"),
    (["--batch-size", "two"], "--batch-size: expected an integer, got 'two'"),
    (["--phase", "-1"], "--phase: must be >= 0, got -1"),
    (["--config", "no_such_recipe"], "--config: config file 'no_such_recipe' not found"),
    (["--config", "vjepa2_vitl", "--phase", "2"], "--phase 2: vjepa2_vitl has 2 phase(s)"),
])
def test_bench_cli_refuses_bad_counts_and_configs_up_front(tmp_path, capsys, args, message):
    """Non-positive counts (no silent default), a recipe that does not load and a phase it does not have
    are refused by the argument parser (exit 2) before any suite runs, not turned into FAILED rows."""
    with pytest.raises(SystemExit) as e:
        bench_cli.main(["--device", "cpu", "--suite", "step", "--out", str(tmp_path), *args])
    assert e.value.code == 2 and message in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_bench_suites_refuse_non_positive_counts():
    from vjepa_scale.bench import run_suite

    for suite in ("step", "data"):
        with pytest.raises(ValueError, match=f"{suite} suite: batch_size must be > 0, got 0"):
            run_suite(suite, "cpu", True, batch_size=0)


@pytest.mark.slow
def test_bench_cpu_all_suites(tmp_path):
    """`python tools/bench.py --device cpu` as a user runs it: every suite, table written."""
    # cpu_env: this environment without the test process's own group (MASTER_PORT would already be taken)
    assert_ok(launch("tools/bench.py", "--device", "cpu", "--out", str(tmp_path), env=cpu_env(OMP_NUM_THREADS=None),
                     timeout=600))
    meta = json.loads((tmp_path / "bench_cpu.json").read_text())["meta"]
    assert meta["omp_wait_policy"] == os.environ.get("OMP_WAIT_POLICY", "PASSIVE")  # set before torch loads OpenMP
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
    require("triton")
    env = cpu_env(TRITON_INTERPRET="1", OMP_NUM_THREADS=None)
    assert_ok(launch("tools/bench.py", "--device", "cpu", "--suite", "gather", "--out", str(tmp_path), env=env,
                     timeout=600))
    rows = json.loads((tmp_path / "bench_cpu.json").read_text())["rows"]
    triton_rows = [r for r in rows if r["impl"] == "triton"]
    assert len(triton_rows) == 4 and all(r["speedup"] > 0 for r in triton_rows)

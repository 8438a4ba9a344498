"""tools/device_check.sh (the one command a borrowed GPU machine runs) as a dry run on the CPU
(`DEVICE=cpu`): every bench stage's command line runs, the rows are gathered and packed for the
device tool, and carried wheels are installed from `WHEELS` first. Timings are not asserted."""
import json
import subprocess
import sys
import tarfile

import pytest

from helpers import cpu_env, run


def _tiny_wheel(tmp_path):
    """A pure-Python wheel with a console script, built offline (stands in for the carried DeepSpeed)."""
    src = tmp_path / "src"
    (src / "vjs_carried_probe").mkdir(parents=True)
    (src / "vjs_carried_probe" / "__init__.py").write_text("def main():\n    print('probe')\n")
    (src / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["setuptools"]\nbuild-backend = "setuptools.build_meta"\n'
        '[project]\nname = "vjs-carried-probe"\nversion = "0.1"\n'
        '[project.scripts]\nvjs-carried-probe = "vjs_carried_probe:main"\n')
    whl = tmp_path / "whl"
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                        "--no-index", "-w", str(whl), str(src)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    return whl


# A GPU machine has the checkout, not an install of it: the interpreters the script starts must find the
# package without the editable install this venv has (its import hook is taken out at start-up).
NOT_INSTALLED = """import sys
sys.meta_path[:] = [f for f in sys.meta_path if "__editable__" not in getattr(f, "__module__", "")]
"""


def _device_check(out, **env):
    out.mkdir()
    site = out.parent / f"{out.name}_site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(NOT_INSTALLED)
    r = run(["bash", "tools/device_check.sh"],
            env=cpu_env(PYTHON=sys.executable, OUT=str(out), PYTHONPATH=str(site), **env), timeout=900)
    return r, out


@pytest.mark.slow
def test_dry_run_on_cpu_runs_every_bench_stage_and_packs_the_results(tmp_path):
    """STEP_OPTS (here ZeRO-2) reach the step and compile stages, not the ckpt and zero1 stages."""
    whl = _tiny_wheel(tmp_path)
    r, out = _device_check(tmp_path / "out", DEVICE="cpu", STAGES="kernels step ckpt zero1 compile", WHEELS=str(whl),
                           STEP_OPTS="--opt zero.stage=2")
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    summary = (out / "summary.txt").read_text()
    assert "installed the carried wheels: vjs_carried_probe-0.1-py3-none-any.whl" in summary
    for stage in ("attention_preflight", "bench_kernels", "bench_step", "bench_step_ckpt", "bench_step_zero1",
                  "bench_step_compile"):
        assert f"{stage}: rc=0" in summary

    rows = json.loads((out / "device_check.json").read_text())["rows"]
    by_stage = {}
    for row in rows:
        by_stage.setdefault(row["stage"], []).append(row)
    assert set(by_stage) == {"kernels", "step", "step_ckpt", "step_zero1", "step_compile"}
    assert {r["suite"] for r in by_stage["kernels"]} == {"gather", "ema", "attention"}
    step = {r["row"]: r for r in by_stage["step"]}
    assert set(step) == {"engine", "torch", "reference"} and step["reference"]["vs_reference"] == 1
    assert step["engine"]["profile"].endswith("step_profile_cpu.txt") and "ZeRO-2" in step["engine"]["impl"]
    (ckpt,) = by_stage["step_ckpt"]
    assert ckpt["act_ckpt"] == 1 and ckpt["row"] == "engine" and "ZeRO-3" in ckpt["impl"]
    (z1,) = by_stage["step_zero1"]
    assert "ZeRO-1" in z1["impl"]
    (comp,) = by_stage["step_compile"]
    assert "model.compile=true" in comp["overrides"] and "zero.stage=2" in comp["overrides"]
    assert "ZeRO-2" in comp["impl"]

    with tarfile.open(out / "device_check.tgz") as tgz:
        names = set(tgz.getnames())
    assert {"./env.txt", "./summary.txt", "./device_check.md", "./step/step_profile_cpu.txt",
            "./bench_step.log", "./attention_preflight.log"} <= names
    assert "## step" in (out / "device_check.md").read_text()


@pytest.mark.slow
def test_a_failed_preflight_runs_the_step_stages_on_the_fallback_backend(tmp_path):
    """ATTENTION names the step stages' backend; its preflight failing (cudnn, which a CPU lacks) makes every
    step stage run the fallback (padded on a CPU, torch_varlen on CUDA) instead of failing each row."""
    r, out = _device_check(tmp_path / "out", DEVICE="cpu", STAGES="step", ATTENTION="cudnn",
                           STEP_OPTS="--steps 1 --step-rows engine")
    summary = (out / "summary.txt").read_text()
    assert "attention_preflight: rc=1" in summary and "the step stages run padded" in summary, summary
    assert "bench_step: rc=0" in summary and "bench_step_fallback" not in summary
    (row,) = json.loads((out / "device_check.json").read_text())["rows"]
    assert row["clips_per_s"] > 0 and row["overrides"].endswith("model.attention_backend=padded")


@pytest.mark.slow
def test_a_failed_step_row_is_retried_with_another_attention_backend(tmp_path):
    """STEP_OPTS reach the step stage; its rows that fail on their attention (here: cudnn, which a CPU lacks)
    leave the reference-style row and the stage fails, then the engine and torch rows run again in
    bench_step_fallback with the fallback backend (padded on a CPU, torch_varlen on CUDA)."""
    r, out = _device_check(tmp_path / "out", DEVICE="cpu", STAGES="step",
                           STEP_OPTS="--opt model.attention_backend=cudnn --steps 1")
    summary = (out / "summary.txt").read_text()
    assert r.returncode == 1 and "bench_step: rc=1" in summary and "bench_step_fallback: rc=0" in summary, summary
    rows = json.loads((out / "device_check.json").read_text())["rows"]
    got = {(row["stage"], row["row"]): row for row in rows}
    assert [got["step", w]["case"] for w in ("engine", "torch")] == ["FAILED", "FAILED"]
    assert got["step", "reference"]["clips_per_s"] > 0
    fallback = [got["step_fallback", w] for w in ("engine", "torch")]
    assert all(row["clips_per_s"] > 0 and row["overrides"].endswith("model.attention_backend=padded")
               for row in fallback)


def test_refuses_an_unknown_device_and_reports_a_failed_wheel_install(tmp_path):
    """An unknown DEVICE ends the script at once (exit 2); a carried wheel that does not install is
    reported and makes the run fail (exit 1), the script going on to its end. STAGES=" " (no stage:
    an empty STAGES means the default ones): the stages after a failed install are the dry run's
    business, and took most of this test's time."""
    r, _ = _device_check(tmp_path / "out1", DEVICE="tpu", STAGES="")
    assert r.returncode == 2 and "DEVICE must be cuda or cpu, got 'tpu'" in r.stdout
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "broken-0.1-py3-none-any.whl").write_bytes(b"not a zip")
    r, out = _device_check(tmp_path / "out2", DEVICE="cpu", STAGES=" ", WHEELS=str(bad))
    assert r.returncode == 1 and f"installing the carried wheels from {bad} failed" in r.stdout
    assert "status=1" in r.stdout and (out / "summary.txt").exists()  # went on to the end, results packed

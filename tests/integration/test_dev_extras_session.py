"""The dev-extras policy in a pytest session of its own: a throw-away checkout with this suite's
pytest.ini, conftest and helpers, a setup.py whose dev extra does not exist, and a test requiring a
module that does not exist. In CI the session stops (or the test fails) naming the package and the
install command; locally the test is skipped."""
import shutil
import sys

import pytest

from helpers import ROOT, cpu_env, run

TEST = '''from helpers import require


def test_present():
    assert require("json")


def test_absent():
    require("no_such_module_vjepa")
'''


def _checkout(tmp_path, dev: str):
    (tmp_path / "tests" / "unit").mkdir(parents=True)
    shutil.copy(ROOT / "pytest.ini", tmp_path)
    shutil.copy(ROOT / "tests" / "conftest.py", tmp_path / "tests")
    shutil.copytree(ROOT / "tests" / "helpers", tmp_path / "tests" / "helpers",
                    ignore=shutil.ignore_patterns("__pycache__"))
    (tmp_path / "setup.py").write_text("from setuptools import setup\n"
                                       f"setup(name='x', install_requires=['pytest'], extras_require={{'dev': {dev}}})\n")
    (tmp_path / "tests" / "unit" / "test_tiny.py").write_text(TEST)
    return tmp_path


def _pytest(repo, **env):
    return run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "tests"],
               cpu_env(**{"CI": None, "VJEPA_REQUIRE_EXTRAS": None, **env}), cwd=repo, timeout=120)


@pytest.mark.parametrize("switch", [{"CI": "true"}, {"VJEPA_REQUIRE_EXTRAS": "1"}])
def test_ci_stops_at_a_missing_dev_extra(tmp_path, switch):
    r = _pytest(_checkout(tmp_path, "['no-such-package-vjepa>=1']"), **switch)
    out = r.stdout + r.stderr
    assert r.returncode == pytest.ExitCode.USAGE_ERROR, out
    assert "dev extras missing: no-such-package-vjepa (import no_such_package_vjepa)" in out
    assert "pip install -e .[dev]" in out and "passed" not in out


def test_ci_fails_a_test_whose_module_is_missing(tmp_path):
    r = _pytest(_checkout(tmp_path, "['pytest']"), CI="true")
    out = r.stdout + r.stderr
    assert r.returncode == pytest.ExitCode.TESTS_FAILED, out
    assert "1 failed, 1 passed" in out
    assert "no_such_module_vjepa is not installed" in out and "pip install -e .[dev]" in out


def test_locally_a_missing_module_skips(tmp_path):
    r = _pytest(_checkout(tmp_path, "['no-such-package-vjepa>=1']"))
    out = r.stdout + r.stderr
    assert r.returncode == pytest.ExitCode.OK, out
    assert "1 passed, 1 skipped" in out and "no_such_module_vjepa is not installed" in out

"""Dev extras: what `pip install -e .[dev]` installs, and the one policy for a missing one.

Locally a test module whose extra is missing is skipped (`require`, `needs`). In CI (`CI=true`, set by
the CI runner, or `VJEPA_REQUIRE_EXTRAS=1`) a missing extra fails: the session stops at its start
(`check_dev_extras`, called by tests/conftest.py) naming the package and the install command, and
`require` / `needs` fail instead of skipping. The package list is read from setup.py, so a new dev
extra is covered without editing this file (non-obvious import names go in IMPORT_NAMES).
"""
from __future__ import annotations

import ast
import importlib
import importlib.util
import os
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
INSTALL = "pip install -e .[dev]"
IMPORT_NAMES = {"pyyaml": "yaml", "nvidia-dali": "nvidia.dali", "nvidia-cudnn-frontend": "cudnn"}  # pip name (prefix) -> import name


def extras_required() -> bool:
    """True in CI (CI=true) or with VJEPA_REQUIRE_EXTRAS=1: a missing dev extra is an error, not a skip."""
    def on(name: str) -> bool:
        return os.environ.get(name, "").strip().lower() not in ("", "0", "false", "no")

    return on("CI") or on("VJEPA_REQUIRE_EXTRAS")


def dev_requirements(setup_py: Path = ROOT / "setup.py") -> list[str]:
    """Pip names `.[dev]` installs: setup.py's install_requires plus extras_require['dev'] (read, not run)."""
    call = next(n for n in ast.walk(ast.parse(setup_py.read_text()))
                if isinstance(n, ast.Call) and getattr(n.func, "id", None) == "setup")
    kw = {k.arg: ast.literal_eval(k.value) for k in call.keywords if k.arg in ("install_requires", "extras_require")}
    reqs = [*kw.get("install_requires", []), *kw.get("extras_require", {}).get("dev", [])]
    return [re.split(r"[<>=!~;\[ ]", r, maxsplit=1)[0] for r in reqs]


def import_name(pip_name: str) -> str:
    name = pip_name.lower()
    for prefix, module in IMPORT_NAMES.items():
        if name.startswith(prefix):
            return module
    return name.replace("-", "_")


def importable(module: str) -> bool:
    """Installed (found by the import system), without importing it."""
    try:
        return importlib.util.find_spec(module) is not None
    except ImportError:  # a parent package (e.g. `nvidia` of nvidia.dali) is missing
        return False


def missing_dev_extras(setup_py: Path = ROOT / "setup.py") -> list[tuple[str, str]]:
    """(pip name, import name) of every `.[dev]` requirement that is not installed."""
    return [(p, import_name(p)) for p in dev_requirements(setup_py) if not importable(import_name(p))]


def check_dev_extras(setup_py: Path = ROOT / "setup.py") -> None:
    """At session start: in CI, stop the session if any `.[dev]` requirement is missing."""
    if not extras_required():
        return
    missing = missing_dev_extras(setup_py)
    if missing:
        names = ", ".join(f"{p} (import {m})" for p, m in missing)
        pytest.exit(f"dev extras missing: {names}; the CI suite needs them all: {INSTALL}",
                    returncode=pytest.ExitCode.USAGE_ERROR)


def _missing(module: str, err: Exception | str) -> None:
    msg = f"{module} is not installed ({err}): it is a dev extra, {INSTALL}"
    if extras_required():
        pytest.fail(msg, pytrace=False)
    pytest.skip(msg, allow_module_level=True)


def require(module: str):
    """Import and return `module`, a dev extra (use instead of pytest.importorskip). Missing: the test
    (or, at module level, the whole module) is skipped locally and fails in CI."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        _missing(module, e)


def needs(module: str) -> pytest.MarkDecorator:
    """A mark for tests that use `module`, a dev extra: skipped locally when it is missing; in CI the
    mark does nothing, so the test runs and fails on the import (after the session check already did)."""
    return pytest.mark.skipif(not importable(module) and not extras_required(),
                              reason=f"{module} is not installed: it is a dev extra, {INSTALL}")

"""Session set-up for the whole suite (layout and markers: tests/README.md).

DeepSpeed is pinned to the CPU for the CPU tests (GPU tests launch with `helpers.gpu_env()`), and in
CI a missing dev extra stops the session at its start (`helpers.check_dev_extras`).
"""
import os

os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("DS_SKIP_SHM_BUILD", "1")

from helpers import check_dev_extras  # noqa: E402  (after the environment defaults)


def pytest_sessionstart(session):
    check_dev_extras()


def pytest_sessionfinish(session, exitstatus):
    """Leave the 1-rank group that in-process tests joined (`helpers.single_process_group`): left to
    interpreter exit, gloo's threads can abort the process after every test passed."""
    from vjepa_scale.distributed import leave_process_group

    leave_process_group()

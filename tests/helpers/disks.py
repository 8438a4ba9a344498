"""Small filesystems for the disk-full and read-only checkpoint tests."""
from __future__ import annotations

import contextlib
import subprocess
import uuid
from pathlib import Path

import pytest


@contextlib.contextmanager
def tmpfs_mounts(base: Path):
    """Yields mount(size, ro=False) -> a fresh tmpfs mount point under `base` (root only: the test is
    skipped where mounting is not allowed); every mount is unmounted on exit."""
    mounted = []

    def mount(size: str, ro: bool = False) -> Path:
        mp = base / f"mnt_{uuid.uuid4().hex[:6]}"
        mp.mkdir()
        opts = f"size={size}" + (",ro" if ro else "")
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(mp)], capture_output=True, text=True)
        if r.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here ({r.stderr.strip()})")
        mounted.append(mp)
        return mp

    try:
        yield mount
    finally:
        for mp in mounted:
            subprocess.run(["umount", "-l", str(mp)], capture_output=True)

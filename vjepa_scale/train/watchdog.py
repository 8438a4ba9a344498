"""Per-rank hang watchdog: a phase that runs past `train.hang_timeout_s` ends the process loudly.

The trainer names what it is doing (`phase("forward/backward step 12")`, "saving checkpoint step
12", ...). A daemon thread checks the current phase's age; past the timeout it prints, to stderr,
the rank, host, pid, phase and elapsed time, dumps every thread's stack (faulthandler) and ends the
process with `os._exit(EXIT_HUNG)`, so the launcher (torchrun, deepspeed, srun) tears the job down
instead of every rank waiting forever. Typical cause: another rank died or stalled, and this one
blocks in a collective that waits for it. A timeout of 0 disables the watchdog.
"""
from __future__ import annotations

import faulthandler
import os
import socket
import sys
import threading
import time
import traceback
from typing import Optional

EXIT_HUNG = 4  # exit code of a rank ended by the watchdog (3: diverged, 75: preempted)


class Watchdog:
    """`start()` the thread, mark phases with `phase(name)`, `idle()` between phases that are not
    timed, `stop()` at the end (also a context manager)."""

    def __init__(self, timeout_s: float, rank: int, host: Optional[str] = None, exit_code: int = EXIT_HUNG):
        self.timeout_s = float(timeout_s)
        self.rank = rank
        self.host = host or socket.gethostname()
        self.exit_code = exit_code
        self._current: Optional[tuple[str, float]] = None  # (phase, monotonic start); one atomic store
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    @property
    def enabled(self) -> bool:
        return self.timeout_s > 0

    def phase(self, name: str) -> None:
        """From now on this rank is doing `name`; its clock starts."""
        self._current = (name, time.monotonic())

    def idle(self) -> None:
        """No timed phase (e.g. between runs)."""
        self._current = None

    def start(self) -> "Watchdog":
        if self.enabled and self._thread is None:
            self._stop.clear()
            poll = min(5.0, max(0.05, self.timeout_s / 20))
            self._thread = threading.Thread(target=self._watch, args=(poll,), name="hang-watchdog", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        self._current = None
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None

    def __enter__(self) -> "Watchdog":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _watch(self, poll: float) -> None:
        while not self._stop.wait(poll):
            cur = self._current
            if cur is not None and time.monotonic() - cur[1] > self.timeout_s:
                self._fire(cur[0], time.monotonic() - cur[1])

    def _fire(self, phase: str, elapsed: float) -> None:
        try:  # a closed or broken stderr must not keep the stalled rank alive
            err = sys.__stderr__ or sys.stderr
            err.write(f"\n[watchdog] rank {self.rank} on host {self.host} (pid {os.getpid()}) hung: "
                      f"'{phase}' has run for {elapsed:.0f} s, past train.hang_timeout_s={self.timeout_s:g}. "
                      f"Another rank has probably died or stalled (a collective waits for it), or this rank "
                      f"is stuck in I/O or a data worker. Ending this rank with exit code {self.exit_code} so "
                      f"the launcher stops the job. Stacks of this rank's threads:\n")
            err.flush()
            try:
                faulthandler.dump_traceback(file=err, all_threads=True)
            except (AttributeError, ValueError, OSError):  # a stream without a file descriptor
                for tid, frame in sys._current_frames().items():
                    err.write(f"Thread {tid}:\n{''.join(traceback.format_stack(frame))}")
            err.flush()
        except Exception:  # noqa: BLE001 - the rank ends whatever the message did
            pass
        finally:
            os._exit(self.exit_code)

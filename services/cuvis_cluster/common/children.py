"""Child processes that cannot outlive the process that started them, and an ordered way to stop them.

Used by ``cuvis-cluster up``/``demo`` (``localcluster``), the benchmarks and the test fixtures. Standard
library only.

Starting a child::

    proc = subprocess.Popen(argv, **popen_kwargs())

puts the child in a process group of its own (``start_new_session``: a Ctrl-C in the terminal reaches
the parent alone, which then stops the children in its own order) and, on Linux, sets
``PR_SET_PDEATHSIG(SIGKILL)`` in the child before ``exec``: the kernel SIGKILLs the child when the
*thread* that forked it exits. Spawn from the main thread (or a thread that lives as long as the child
should) or the child dies early. The death signal reaches the direct child only; its own children
(same process group) are covered by :class:`GroupWatchdog`, which is also the fallback where there is
no ``prctl`` (macOS, other Unixes):

    watchdog = GroupWatchdog.start()
    watchdog.watch(proc.pid)          # the child's process group id is its pid
    ...
    watchdog.close()                  # normal exit: the watchdog leaves quietly

The watchdog is a small Python process in its own session, holding the read end of a pipe. When the
parent dies in any way (SIGKILL included) the pipe reaches EOF without the "close" line and the
watchdog SIGKILLs every process group it was told about, then exits.

Stopping::

    stop_children([gateway], grace=10, kill_after=5)
    stop_children(workers, grace=10, kill_after=5)

sends SIGTERM to each child's group, waits up to ``grace`` seconds in all for the leaders, then
SIGKILLs each group (whatever outlived the grace, and leftover group members of a leader that did exit)
and waits up to ``kill_after`` more. Nothing here sleeps without a bound.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

__all__ = [
    "GroupWatchdog",
    "alive",
    "die_with_parent",
    "popen_kwargs",
    "signal_group",
    "stop_children",
]

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def _load_prctl() -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        prctl: Callable[..., int] = libc.prctl
        return prctl
    except (OSError, AttributeError):
        return None


_PRCTL = _load_prctl()  # looked up once in the parent: nothing to import or allocate after fork


def die_with_parent(sig: int = signal.SIGKILL, parent: int | None = None) -> bool:
    """Ask the kernel to send ``sig`` to this process when its parent (thread) exits; Linux only.

    ``parent`` is the pid the caller expects as parent: if it is no longer the parent (it died
    between ``fork`` and here, so the death signal would never come), this process kills itself.
    Returns False where the platform has no ``prctl`` (use :class:`GroupWatchdog` there).
    """
    if _PRCTL is None:
        return False
    if _PRCTL(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
        return False
    if parent is not None and os.getppid() != parent:
        os.kill(os.getpid(), signal.SIGKILL)
    return True


def popen_kwargs(*, pdeathsig: bool = True) -> dict[str, Any]:
    """Keyword arguments for :class:`subprocess.Popen`: own process group, death signal on Linux."""
    kwargs: dict[str, Any] = {"start_new_session": True}
    if pdeathsig and _PRCTL is not None:
        parent = os.getpid()

        def preexec() -> None:
            die_with_parent(signal.SIGKILL, parent)

        kwargs["preexec_fn"] = preexec
    return kwargs


def signal_group(proc: subprocess.Popen[Any], sig: int) -> bool:
    """Send ``sig`` to the process group led by ``proc`` (started with :func:`popen_kwargs`).

    Returns False when the group no longer exists. Also signals a leader that has exited but whose
    group still has members (grandchildren), which is what a stop needs.
    """
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def alive(proc: subprocess.Popen[Any]) -> bool:
    return proc.poll() is None


def _wait_all(procs: Iterable[subprocess.Popen[Any]], deadline: float) -> list[subprocess.Popen[Any]]:
    """Wait for each leader until ``deadline``; return the ones still running."""
    left = []
    for proc in procs:
        try:
            proc.wait(timeout=max(deadline - time.monotonic(), 0.0))
        except subprocess.TimeoutExpired:
            left.append(proc)
    return left


def stop_children(
    children: Sequence[subprocess.Popen[Any]],
    grace: float,
    kill_after: float = 5.0,
    *,
    sig: int = signal.SIGTERM,
) -> list[subprocess.Popen[Any]]:
    """Stop ``children`` together: ``sig`` to each group, ``grace`` s, then SIGKILL, ``kill_after`` s.

    Returns the children that had to be SIGKILLed (leaders still running after ``grace``). After the
    grace every group gets a SIGKILL anyway, so members left behind by a leader that exited go too.
    Children still running after ``kill_after`` (stuck in the kernel) are left; the return value
    includes them.
    """
    for proc in children:
        if alive(proc):
            signal_group(proc, sig)
    stubborn = _wait_all(children, time.monotonic() + grace)
    for proc in children:
        signal_group(proc, signal.SIGKILL)
    _wait_all(stubborn, time.monotonic() + kill_after)
    return stubborn


_WATCHDOG_CODE = r"""
import os, signal, sys
groups = set()
for line in sys.stdin:
    word = line.strip()
    if word == "close":
        sys.exit(0)
    if word.isdigit():
        groups.add(int(word))
    elif word.startswith("-") and word[1:].isdigit():
        groups.discard(int(word[1:]))
for pgid in groups:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except OSError:
        pass
"""


class GroupWatchdog:
    """A process that SIGKILLs the watched process groups if its parent dies without :meth:`close`.

    Started in its own session without a death signal, so it outlives the parent it guards, does
    its one job, and exits. Watch a group with :meth:`watch` right after starting its leader;
    :meth:`forget` a group once it is stopped (its id could be reused later).
    """

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self.proc = proc

    @classmethod
    def start(cls) -> GroupWatchdog:
        proc = subprocess.Popen(
            [sys.executable, "-S", "-c", _WATCHDOG_CODE],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            close_fds=True,
        )
        return cls(proc)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _send(self, line: str) -> None:
        if self.proc.stdin is None:
            return
        with contextlib.suppress(BrokenPipeError, OSError, ValueError):
            self.proc.stdin.write(line.encode() + b"\n")
            self.proc.stdin.flush()

    def watch(self, pgid: int) -> None:
        self._send(str(pgid))

    def forget(self, pgid: int) -> None:
        self._send(f"-{pgid}")

    def close(self, timeout: float = 5.0) -> None:
        """Dismiss the watchdog (the parent stopped its children itself) and reap it."""
        self._send("close")
        if self.proc.stdin is not None:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=timeout)

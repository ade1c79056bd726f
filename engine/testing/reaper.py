"""Process hygiene: the pytest process as child subreaper, the state of a
pid, and killing and reaping whatever a test leaves behind.

As subreaper, restored tasks whose engine parent exits are reparented to
the pytest process (not pid 1), so tests can wait for them and reap them.
"""
from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from engine.libc import PR_GET_CHILD_SUBREAPER, PR_SET_CHILD_SUBREAPER  # noqa: F401 - API


def pid_state(pid: int) -> str | None:
    """State letter from /proc/PID/stat, None when there is no such pid."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[0]


def task_gone(pid: int) -> bool:
    """No such process, or only a zombie left (nothing runs under that pid)."""
    state = pid_state(pid)
    return state is None or state == "Z"


def wait_gone(pid: int, timeout: float) -> bool:
    """Reap pid if it is our child; True once it is reaped or gone."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                return True
        except ChildProcessError:
            # Not (or not yet) our child: e.g. its engine parent still runs.
            # A zombie of another parent is as good as gone for us.
            if pid_state(pid) in (None, "Z"):
                return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)


def become_subreaper() -> None:
    """Orphans below us (restored tasks) get reparented to us, not pid 1."""
    import ctypes

    from engine import libc
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0):
        err = ctypes.get_errno()
        raise OSError(err, f"PR_SET_CHILD_SUBREAPER: {os.strerror(err)}")


def is_subreaper() -> bool:
    import ctypes

    from engine import libc
    flag = ctypes.c_int(0)
    libc.prctl(PR_GET_CHILD_SUBREAPER, ctypes.byref(flag), 0, 0, 0)
    return bool(flag.value)


def children() -> set[int]:
    """Pids whose parent is us (walks /proc: /proc/PID/task/*/children is
    not built into every kernel, this one included)."""
    me, found = os.getpid(), set()
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry.name}/stat").read_text()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == me:
            found.add(int(entry.name))
    return found


def kill_children(keep: set[int] = frozenset(), rounds: int = 50) -> list[int]:
    """SIGKILL and reap our children except keep, then the grandchildren
    reparented to us by their death, until none are left."""
    killed = []
    for _ in range(rounds):
        pids = children() - set(keep)
        if not pids:
            break
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            killed.append(pid)
        for pid in pids:
            wait_gone(pid, 5.0)
    return killed

"""Forking a task with a chosen pid: raw clone3 with set_tid (DESIGN §4).

Like fork(): the child returns 0 and runs on in Python. EEXIST means the pid
is taken. The engine is single-threaded, so no fork handlers are owed.
"""
from __future__ import annotations

import ctypes
import signal

from engine.tracer import binding as b


class CloneArgs(ctypes.Structure):
    _fields_ = [(n, ctypes.c_uint64) for n in (
        "flags", "pidfd", "child_tid", "parent_tid", "exit_signal", "stack", "stack_size",
        "tls", "set_tid", "set_tid_size", "cgroup")]


def clone_with_pid(pid: int) -> int:
    tids = (ctypes.c_int32 * 1)(pid)
    args = CloneArgs(exit_signal=signal.SIGCHLD, set_tid=ctypes.addressof(tids), set_tid_size=1)
    r = b.raw_syscall(b.SYS["clone3"], ctypes.byref(args), ctypes.sizeof(args))
    if r < 0:
        raise b.TracerError(ctypes.get_errno(), pid, "clone3 with set_tid")
    return r

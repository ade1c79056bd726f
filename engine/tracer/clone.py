"""Forking a task with a chosen pid: raw clone3 with set_tid (DESIGN §4).

Like fork(): the child returns 0 and runs on in Python. EEXIST means the pid
is taken. The engine is single-threaded, so no fork handlers are owed.
"""
from __future__ import annotations

import ctypes
import signal

from engine import libc
from engine.tracer import binding as b


CLONE_PARENT = 0x8000


class CloneArgs(ctypes.Structure):
    _fields_ = [(n, ctypes.c_uint64) for n in (
        "flags", "pidfd", "child_tid", "parent_tid", "exit_signal", "stack", "stack_size",
        "tls", "set_tid", "set_tid_size", "cgroup")]


def clone_with_pid(pid: int, python_hooks: bool = True, flags: int = 0,
                   tids: list[int] | None = None) -> int:
    """fork() with the child at `pid` (in this pid namespace): returns the
    pid in the parent, 0 in the child; TracerError (EEXIST: pid taken).
    `tids`: the child's pid at every level, innermost first (clone3's
    set_tid; its last is `pid`); `flags`: clone flags (CLONE_NEWPID, or
    CLONE_PARENT: a sibling of the caller, child of the caller's parent).

    With `python_hooks` the interpreter is told, as os.fork does
    (PyOS_BeforeFork / AfterFork_Child / AfterFork_Parent): locks and
    threading state are reset in the child, os.register_at_fork hooks run.
    """
    tids = tids or [pid]
    arr = (ctypes.c_int32 * len(tids))(*tids)
    # With CLONE_PARENT the child gets the caller's exit signal; clone3
    # refuses one given too.
    args = CloneArgs(flags=flags, exit_signal=0 if flags & CLONE_PARENT else signal.SIGCHLD,
                     set_tid=ctypes.addressof(arr), set_tid_size=len(tids))
    if python_hooks:
        libc.PyOS_BeforeFork()
    # The GIL held across clone3, as os.fork holds it: no other thread runs
    # Python between the clone and the child's PyOS_AfterFork_Child.
    r = libc.syscall_holding_gil("clone3", ctypes.byref(args), ctypes.sizeof(args))
    err = ctypes.get_errno()
    if python_hooks:
        (libc.PyOS_AfterFork_Child if r == 0 else libc.PyOS_AfterFork_Parent)()
    if r < 0:
        raise b.TracerError(err, pid, "clone3 with set_tid")
    return r

"""`engine check`: does this kernel give the engine what it needs?

Each check is a real probe (a syscall tried on a throwaway child or on the
engine itself), printed as one line; the exit code is non-zero if any fails.
"""
from __future__ import annotations

import ctypes
import errno
import os


def _clone3() -> str | None:
    from engine import libc
    # An empty clone_args fails with EINVAL on kernels that know clone3.
    r = libc.syscall("clone3", None, 0)
    return None if r == -1 and ctypes.get_errno() == errno.EINVAL else "clone3 missing"


def _ptrace_seize() -> str | None:
    import signal
    from engine import libc
    from engine.tracer.binding import PTRACE_DETACH, PTRACE_SEIZE
    pid = os.fork()
    if pid == 0:
        # It must still live when seized: an exiting task gives EPERM.
        while True:
            signal.pause()
    try:
        if libc.ptrace(PTRACE_SEIZE, pid, 0, 0) != 0:
            return f"PTRACE_SEIZE: {os.strerror(ctypes.get_errno())}"
        libc.ptrace(PTRACE_DETACH, pid, 0, 0)
        return None
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)


def _pidfd_getfd() -> str | None:
    from engine import libc
    pidfd = libc.syscall("pidfd_open", os.getpid(), 0)
    if pidfd < 0:
        return "pidfd_open missing"
    try:
        fd = libc.syscall("pidfd_getfd", pidfd, 0, 0)
        if fd < 0:
            return f"pidfd_getfd: {os.strerror(ctypes.get_errno())}"
        os.close(fd)
        return None
    finally:
        os.close(pidfd)


def _proc_file(path: str) -> str | None:
    return None if os.path.exists(path) else f"{path} missing"


CHECKS = {
    "clone3": _clone3,
    "ptrace seize": _ptrace_seize,
    "pidfd_getfd": _pidfd_getfd,
    "pagemap": lambda: _proc_file("/proc/self/pagemap"),
    "ns_last_pid": lambda: _proc_file("/proc/sys/kernel/ns_last_pid"),
}


def run_checks() -> int:
    failed = 0
    for name, probe in CHECKS.items():
        problem = probe()
        print(f"{'ok  ' if problem is None else 'FAIL'} {name}" + (f": {problem}" if problem else ""))
        failed += problem is not None
    return 1 if failed else 0

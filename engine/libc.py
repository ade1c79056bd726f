"""The C library, loaded once, with every function the engine calls declared once.

Each function below (and the few of Python's C API the tracer calls) has
its argtypes and restype fixed here and never changed after: a call shape
of its own gets a prototype of its own (the `syscall` entry point has two,
one holding the GIL for clone3). Raw syscalls are called by name through
`syscall(name, ...)`; SYS is the one table of their x86-64 numbers. Every
function sets errno (use_errno): `check` turns a -1 into
OSError("what: strerror").

Import cost is ctypes and one dlopen(NULL): modules import this where they
call it, so `python -m engine --help` does not load it.
"""
from __future__ import annotations

import ctypes
import os
from ctypes import c_char_p, c_int, c_long, c_size_t, c_ssize_t, c_uint, c_ulong, c_void_p

handle = ctypes.CDLL(None, use_errno=True)        # for in_dll (glibc's __rseq_offset)
# Through PyDLL the GIL stays held across the call, as os.fork holds it.
_gil_handle = ctypes.PyDLL(None, use_errno=True)

# x86-64 syscall numbers (arch/x86/entry/syscalls/syscall_64.tbl), by name.
SYS = {
    "read": 0, "write": 1, "open": 2, "close": 3, "mmap": 9, "mprotect": 10, "munmap": 11,
    "brk": 12, "rt_sigaction": 13, "mremap": 25, "madvise": 28, "getitimer": 36,
    "setitimer": 38, "getpid": 39, "kill": 62, "setgroups": 116, "setresuid": 117,
    "setresgid": 119, "setfsuid": 122, "setfsgid": 123, "capset": 126,
    "rt_sigqueueinfo": 129, "personality": 135, "sigaltstack": 131, "prctl": 157, "arch_prctl": 158,
    "set_tid_address": 218, "timer_create": 222, "timer_settime": 223,
    "timer_gettime": 224, "timer_getoverrun": 225, "openat": 257, "set_robust_list": 273,
    "get_robust_list": 274, "timerfd_create": 283, "timerfd_settime": 286,
    "signalfd4": 289, "rt_tgsigqueueinfo": 297, "prlimit64": 302,
    "process_vm_readv": 310, "process_vm_writev": 311, "kcmp": 312, "seccomp": 317,
    "renameat2": 316, "rseq": 334,
    "move_mount": 429, "fsopen": 430, "fsconfig": 431, "fsmount": 432, "pidfd_open": 434,
    "clone3": 435, "openat2": 437, "pidfd_getfd": 438, "mount_setattr": 442,
}

# prctl(2) options that several modules use (one module's own stay there)
PR_SET_PDEATHSIG = 1
PR_SET_NAME = 15
PR_SET_CHILD_SUBREAPER = 36
PR_GET_CHILD_SUBREAPER = 37


def _declare(lib, name: str, restype, *argtypes):
    fn = lib[name]          # lib[name] is a fresh function object: its prototype is its own
    fn.restype, fn.argtypes = restype, argtypes
    return fn


# A syscall argument is one register: an int (negative too), None, bytes or
# a pointer (byref, an array) all pass as c_void_p.
_ARGS = (c_void_p,) * 6
_syscall = _declare(handle, "syscall", c_long, c_long, *_ARGS)
_syscall_gil = _declare(_gil_handle, "syscall", c_long, c_long, *_ARGS)

ptrace = _declare(handle, "ptrace", c_long, c_long, c_int, c_void_p, c_void_p)
mmap = _declare(handle, "mmap", c_void_p, c_void_p, c_size_t, c_int, c_int, c_int, c_long)
munmap = _declare(handle, "munmap", c_int, c_void_p, c_size_t)
pause = _declare(handle, "pause", c_int)
# prctl's four arguments are integers or pointers (PR_GET_CHILD_SUBREAPER's int *)
prctl = _declare(handle, "prctl", c_int, c_int, c_void_p, c_void_p, c_void_p, c_void_p)
setns = _declare(handle, "setns", c_int, c_int, c_int)
unshare = _declare(handle, "unshare", c_int, c_int)
mount = _declare(handle, "mount", c_int, c_char_p, c_char_p, c_char_p, c_ulong, c_void_p)
setfsuid = _declare(handle, "setfsuid", c_int, c_uint)
setdomainname = _declare(handle, "setdomainname", c_int, c_char_p, c_size_t)
tee = _declare(handle, "tee", c_ssize_t, c_int, c_int, c_size_t, c_uint)
inotify_init1 = _declare(handle, "inotify_init1", c_int, c_int)
inotify_add_watch = _declare(handle, "inotify_add_watch", c_int, c_int, c_char_p, c_uint)
# (pid, local iovec array, count, remote iovec array, count, flags)
process_vm_readv = _declare(handle, "process_vm_readv", c_ssize_t,
                            c_int, c_void_p, c_ulong, c_void_p, c_ulong, c_ulong)
process_vm_writev = _declare(handle, "process_vm_writev", c_ssize_t,
                             c_int, c_void_p, c_ulong, c_void_p, c_ulong, c_ulong)


# --- Python's own C API (ctypes.pythonapi: the GIL held) ---

class PyBuffer(ctypes.Structure):
    _fields_ = [("buf", c_void_p), ("obj", c_void_p), ("len", c_ssize_t),
                ("itemsize", c_ssize_t), ("readonly", c_int), ("ndim", c_int),
                ("format", c_char_p), ("shape", c_void_p), ("strides", c_void_p),
                ("suboffsets", c_void_p), ("internal", c_void_p)]


PyObject_GetBuffer = _declare(ctypes.pythonapi, "PyObject_GetBuffer", c_int,
                              ctypes.py_object, ctypes.POINTER(PyBuffer), c_int)
PyBuffer_Release = _declare(ctypes.pythonapi, "PyBuffer_Release", None, ctypes.POINTER(PyBuffer))
# What os.fork calls around the fork, for clone3 (engine.tracer.clone)
PyOS_BeforeFork = _declare(ctypes.pythonapi, "PyOS_BeforeFork", None)
PyOS_AfterFork_Child = _declare(ctypes.pythonapi, "PyOS_AfterFork_Child", None)
PyOS_AfterFork_Parent = _declare(ctypes.pythonapi, "PyOS_AfterFork_Parent", None)


def syscall(name: str, *args) -> int:
    """syscall(2) of the call named `name` (a key of SYS): -1 and errno on failure."""
    return _syscall(SYS[name], *args, *(0,) * (6 - len(args)))


def syscall_holding_gil(name: str, *args) -> int:
    """syscall() with the GIL held across it: no other thread runs Python
    between a clone3 and the child's PyOS_AfterFork_Child."""
    return _syscall_gil(SYS[name], *args, *(0,) * (6 - len(args)))


def check(result: int, what: str) -> int:
    """`result`, or OSError(errno, "what: strerror") when it is -1 (any negative)."""
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return result

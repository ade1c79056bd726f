"""Thin binding: ptrace, process_vm_*, raw syscalls, cpuid.

Every failure raises TracerError(errno, pid, op), one line; a refusal of
something the tracer cannot do is a NotSupportedError. Nothing here knows
what a task state is; engine/tracer/task.py builds on this. The C functions
themselves are declared once, in engine.libc (here as `libc`).
"""
from __future__ import annotations

import contextlib
import ctypes
import errno
import mmap
import os
import signal
import struct
import time

from engine import libc
from engine.libc import SYS  # noqa: F401 - the tracer's name for the table

PTRACE_PEEKDATA = 2
PTRACE_POKEDATA = 5
PTRACE_CONT = 7
PTRACE_SINGLESTEP = 9
PTRACE_GETREGS = 12
PTRACE_SETREGS = 13
PTRACE_DETACH = 17
PTRACE_SETOPTIONS = 0x4200
PTRACE_O_TRACECLONE = 8
PTRACE_GETREGSET = 0x4204
PTRACE_SETREGSET = 0x4205
PTRACE_SEIZE = 0x4206
PTRACE_INTERRUPT = 0x4207
PTRACE_PEEKSIGINFO = 0x4209
PTRACE_GETSIGMASK = 0x420A
PTRACE_SETSIGMASK = 0x420B
PTRACE_GET_RSEQ_CONFIGURATION = 0x420F
NT_X86_XSTATE = 0x202
PTRACE_EVENT_STOP = 128
WALL = 0x40000000
# No tracer step may wait longer for its task to stop (issue 20: an image
# that made a task never stop hung the engine): a task that does not stop in
# time fails the restore, which kills and reaps it. Loops of steps that see
# only signals or events (a task faulting on every instruction) end too.
STOP_TIMEOUT = float(os.environ.get("ENGINE_STOP_TIMEOUT", "10"))
MAX_STOPS = 1000

IOV_MAX = 1024


class TracerError(OSError):
    """`op` on task `pid` failed with `err`: "OP of task PID: strerror".

    Without an errno (0) the op is the whole story, a sentence about the
    task: "task PID: OP"; without a pid (0) the task part is left out."""

    def __init__(self, err: int, pid: int, op: str):
        if err:
            text = f"{op} of task {pid}: {os.strerror(err)}" if pid else \
                f"{op}: {os.strerror(err)}"
        else:
            text = f"task {pid}: {op}" if pid else op
        super().__init__(err, text)
        self.pid, self.op = pid, op

    def __str__(self) -> str:
        return self.strerror


class NotSupportedError(TracerError):
    """The task holds something the tracer cannot dump or restore:
    "task PID: WHAT is not supported" (errno EOPNOTSUPP)."""

    def __init__(self, pid: int, what: str):
        super().__init__(0, pid, f"{what} is not supported")
        self.errno = errno.EOPNOTSUPP


class UserRegs(ctypes.Structure):
    # struct user_regs_struct, in CRIU's user_x86_regs_entry names
    _fields_ = [(n, ctypes.c_uint64) for n in (
        "r15", "r14", "r13", "r12", "bp", "bx", "r11", "r10", "r9", "r8", "ax", "cx",
        "dx", "si", "di", "orig_ax", "ip", "cs", "flags", "sp", "ss", "fs_base",
        "gs_base", "ds", "es", "fs", "gs")]


class IoVec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


def raw_syscall(name: str, *args) -> int:
    """syscall(2) of the call `name` (a SYS key) in the engine itself."""
    return libc.syscall(name, *args)


def ptrace(req: int, pid: int, addr=0, data=0, op: str = "ptrace") -> int:
    ctypes.set_errno(0)
    r = libc.ptrace(req, pid, addr, data)
    if r == -1 and ctypes.get_errno():
        raise TracerError(ctypes.get_errno(), pid, op)
    return r


def wait_stop(pid: int, timeout: float | None = None) -> int:
    """Wait for `pid` to stop, at most `timeout` seconds (STOP_TIMEOUT);
    return the raw status. Exits and timeouts are errors."""
    status = _wait_bounded(pid, STOP_TIMEOUT if timeout is None else timeout)
    if os.WIFEXITED(status) or os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status) if os.WIFSIGNALED(status) else 0
        raise TracerError(0, pid, f"exited (signal {sig}) while traced")
    return status


class _Late(Exception):
    """SIGALRM of a wait_stop past its deadline."""


_alarm = {"armed": False, "pid": 0}     # the handler's, per process


def _on_alarm(signum, frame):
    if _alarm["armed"]:
        raise _Late


def _wait_bounded(pid: int, timeout: float) -> int:
    """A blocking waitpid that an interval timer (SIGALRM) breaks at the
    deadline (a few µs a wait); outside the main thread, where no handler
    runs, polling."""
    if _alarm["pid"] != os.getpid():
        try:
            signal.signal(signal.SIGALRM, _on_alarm)
        except ValueError:             # not the main thread
            return _poll(pid, timeout)
        _alarm["pid"] = os.getpid()
    _alarm["armed"] = True
    signal.setitimer(signal.ITIMER_REAL, timeout)
    try:
        return os.waitpid(pid, WALL)[1]
    except _Late:
        raise TracerError(0, pid, f"did not stop within {timeout:g} s") from None
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        _alarm["armed"] = False


def _poll(pid: int, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got, status = os.waitpid(pid, WALL | os.WNOHANG)
        if got:
            return status
        time.sleep(0.0005)
    raise TracerError(0, pid, f"did not stop within {timeout:g} s")


def get_regs(pid: int) -> UserRegs:
    regs = UserRegs()
    ptrace(PTRACE_GETREGS, pid, 0, ctypes.addressof(regs), "PTRACE_GETREGS")
    return regs


def set_regs(pid: int, regs: UserRegs) -> None:
    ptrace(PTRACE_SETREGS, pid, 0, ctypes.addressof(regs), "PTRACE_SETREGS")


def get_xstate(pid: int, size: int = 4096) -> bytes:
    buf = ctypes.create_string_buffer(size)
    iov = IoVec(ctypes.addressof(buf), size)
    ptrace(PTRACE_GETREGSET, pid, NT_X86_XSTATE, ctypes.addressof(iov), "GETREGSET xstate")
    return buf.raw[:iov.len]


def set_xstate(pid: int, data: bytes) -> None:
    buf = ctypes.create_string_buffer(data, len(data))
    iov = IoVec(ctypes.addressof(buf), len(data))
    ptrace(PTRACE_SETREGSET, pid, NT_X86_XSTATE, ctypes.addressof(iov), "SETREGSET xstate")


def get_sigmask(pid: int) -> int:
    mask = ctypes.c_uint64()
    ptrace(PTRACE_GETSIGMASK, pid, 8, ctypes.addressof(mask), "PTRACE_GETSIGMASK")
    return mask.value


def set_sigmask(pid: int, mask: int) -> None:
    m = ctypes.c_uint64(mask)
    ptrace(PTRACE_SETSIGMASK, pid, 8, ctypes.addressof(m), "PTRACE_SETSIGMASK")


def peek_siginfo(pid: int, shared: bool) -> list[bytes]:
    """Every queued siginfo_t (128 bytes) of the thread, or of the process."""
    out: list[bytes] = []
    buf = ctypes.create_string_buffer(128 * 32)
    while True:
        args = struct.pack("<QIi", len(out), 1 if shared else 0, 32)
        a = ctypes.create_string_buffer(args, len(args))
        n = ptrace(PTRACE_PEEKSIGINFO, pid, ctypes.addressof(a), ctypes.addressof(buf),
                   "PTRACE_PEEKSIGINFO")
        out += [buf.raw[i * 128:(i + 1) * 128] for i in range(n)]
        if n < 32:
            return out


def get_rseq(pid: int) -> tuple[int, int, int]:
    """(abi pointer, size, signature) of the thread's registered rseq."""
    conf = (ctypes.c_uint64 * 3)()
    ptrace(PTRACE_GET_RSEQ_CONFIGURATION, pid, ctypes.sizeof(conf), ctypes.addressof(conf),
           "PTRACE_GET_RSEQ_CONFIGURATION")
    return conf[0], conf[1] & 0xFFFFFFFF, conf[1] >> 32


def _vm_io(fn: str, pid: int, pairs, op: str) -> int:
    """pairs: [(local address, remote address, length)]; all or error."""
    done = 0
    for i in range(0, len(pairs), IOV_MAX):
        chunk = pairs[i:i + IOV_MAX]
        local = (IoVec * len(chunk))(*[IoVec(l, n) for l, _, n in chunk])
        remote = (IoVec * len(chunk))(*[IoVec(r, n) for _, r, n in chunk])
        want = sum(n for _, _, n in chunk)
        got = raw_syscall(fn, pid, local, len(chunk), remote, len(chunk), 0)
        if got != want:
            err = ctypes.get_errno() if got < 0 else errno.EFAULT   # a short copy
            raise TracerError(err, pid, f"{op} at {chunk[0][1]:#x}")
        done += got
    return done


def read_mem(pid: int, pairs) -> int:
    return _vm_io("process_vm_readv", pid, pairs, "process_vm_readv")


def write_mem(pid: int, pairs) -> int:
    return _vm_io("process_vm_writev", pid, pairs, "process_vm_writev")


def peek(pid: int, addr: int, size: int) -> bytes:
    buf = ctypes.create_string_buffer(size)
    read_mem(pid, [(ctypes.addressof(buf), addr, size)])
    return buf.raw


def poke(pid: int, addr: int, data: bytes) -> None:
    buf = ctypes.create_string_buffer(data, len(data))
    write_mem(pid, [(ctypes.addressof(buf), addr, len(data))])


@contextlib.contextmanager
def buffer_address(obj):
    """The address of a ctypes array or of any buffer (a read-only mmap of
    a pages file too), held exported while the block runs."""
    if isinstance(obj, ctypes.Array):
        yield ctypes.addressof(obj)
        return
    view = libc.PyBuffer()
    if libc.PyObject_GetBuffer(obj, ctypes.byref(view), 0) != 0:   # PyBUF_SIMPLE: contiguous
        raise TypeError(f"{type(obj).__name__} has no contiguous buffer")
    try:
        yield view.buf or 0
    finally:
        libc.PyBuffer_Release(ctypes.byref(view))


_CPUID_CODE = bytes.fromhex("53" "89f8" "89f1" "4989d0" "0fa2" "418900" "41895804"
                            "41894808" "4189500c" "5b" "c3")
_cpuid_fn = None


def cpuid(leaf: int, subleaf: int = 0) -> tuple[int, int, int, int]:
    """Run the cpuid instruction (a 29-byte stub in an executable page)."""
    global _cpuid_fn
    if _cpuid_fn is None:
        page = mmap.mmap(-1, mmap.PAGESIZE, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
        page.write(_CPUID_CODE)
        addr = ctypes.addressof(ctypes.c_char.from_buffer(page))
        proto = ctypes.CFUNCTYPE(None, ctypes.c_uint32, ctypes.c_uint32, ctypes.c_void_p)
        _cpuid_fn = (proto(addr), page)
    out = (ctypes.c_uint32 * 4)()
    _cpuid_fn[0](leaf, subleaf, ctypes.addressof(out))
    return out[0], out[1], out[2], out[3]

"""Many remote syscalls in one stop: a run of `syscall`s written as code.

One injected syscall costs a SETREGS, a single step and two waits (~80 µs),
about ten times the work most of them do, and a task's restore needs ~60.
A Batch writes them into the scratch page as straight-line code, each one

    mov rdi..r9, ARGS; mov rax, NR; syscall; mov [slot], rax
    cmp rax, -4095; jb +1; int3            (checked calls only)

ending with `int3`, and runs it with one PTRACE_CONT: the task stops at the
final int3, or at the int3 of the first checked call that failed, whose rip
names it. Results are read back from their slots in one process_vm_readv.
Arguments that are bytes (or a function of the address they land at, for a
struct pointing into itself) are copied into the data area and passed by
address; At(n) is the address of the call's first such argument plus n,
Result(i) the result of call i (loaded from its slot when in this run).
Nothing is compiled: the code is these few fixed encodings, which
tests/engine/test_batch.py compares with what GNU as makes of them.
"""
from __future__ import annotations

import ctypes
import errno
import struct

from engine.tracer import binding as b

_MOV = (b"\x48\xb8", b"\x48\xbf", b"\x48\xbe", b"\x48\xba", b"\x49\xba", b"\x49\xb8",
        b"\x49\xb9")                      # movabs rax, rdi, rsi, rdx, r10, r8, r9
_FROM_RAX = (None, b"\x48\x89\xc7", b"\x48\x89\xc6", b"\x48\x89\xc2", b"\x49\x89\xc2",
             b"\x49\x89\xc0", b"\x49\x89\xc1")    # mov rdi..r9, rax
_LOAD = b"\x48\xa1"                       # movabs rax, [moffs64]
_SYSCALL = b"\x0f\x05"
_STORE = b"\x48\xa3"                      # movabs [moffs64], rax
_CHECK = b"\x48\x3d\x01\xf0\xff\xff\x72\x01\xcc"   # cmp rax, -4095; jb +1; int3
_INT3 = b"\xcc"
_MAX_CALL = 13 * 7 + 2 + 10 + len(_CHECK)


class At(int):
    """An argument: the address of the call's first data argument plus this."""


class Result:
    """An argument: the result of the call numbered `index` (an fd openat
    returned, passed on to mmap in the same run)."""

    def __init__(self, index: int):
        self.index = index


class Batch:
    """Syscalls queued with call(), run in the task by run().

    Runs by itself when its code or data area is full, so results of calls
    queued earlier may already be in when run() is called. run() returns
    the results of every call queued so far, indexed as call() numbered
    them; a failed checked call raises TracerError(errno, pid, "NAME what")
    and the calls after it have not run.
    """

    def __init__(self, tracee, code_at: int, code_size: int, data_at: int, data_size: int):
        self.t = tracee
        self.code_at, self.code_size = code_at, code_size
        self.data_at, self.data_size = data_at, data_size
        self.results: list[int] = []
        self._reset()

    def _reset(self) -> None:
        self._code = bytearray()
        self._data = bytearray()
        self._calls: list[tuple[int, int, str]] = []   # (trap end, slot offset, name)

    def __len__(self) -> int:
        return len(self.results) + len(self._calls)

    def call(self, nr: int | str, *args, what: str = "", check: bool = True) -> int:
        blobs = [a for a in args if not isinstance(a, (int, Result))]     # At is an int
        need = 8 + sum(_blob_size(a) + 8 for a in blobs)
        if (len(self._code) + _MAX_CALL + 1 > self.code_size
                or len(self._data) + need > self.data_size):
            self.run()
        if _MAX_CALL + 1 > self.code_size or need > self.data_size:
            raise b.TracerError(errno.E2BIG, self.t.pid, f"{nr}: arguments for the scratch page")
        regs: list = []
        base = None
        for a in args:
            if isinstance(a, Result):
                done = len(self.results)
                regs.append(self.results[a.index] if a.index < done
                            else self._calls[a.index - done][1])
                if a.index >= done:
                    regs[-1] = ("slot", regs[-1])
            elif isinstance(a, At):
                regs.append(-1 if base is None else base + a)
            elif isinstance(a, int):
                regs.append(a)
            else:
                regs.append(self._put(a))
                base = regs[-1] if base is None else base
        slot = self._alloc(8)
        code = self._code
        for i, value in enumerate(regs, 1):
            if isinstance(value, tuple):        # a result of this run: load it
                code += _LOAD + struct.pack("<Q", self.data_at + value[1]) + _FROM_RAX[i]
            else:
                code += _MOV[i] + struct.pack("<Q", value & 0xFFFFFFFFFFFFFFFF)
        code += _MOV[0] + struct.pack("<Q", b.SYS[nr] if isinstance(nr, str) else nr)
        code += _SYSCALL + _STORE + struct.pack("<Q", self.data_at + slot)
        if check:
            code += _CHECK
        name = f"{nr}{' ' + what if what else ''}"
        self._calls.append((len(code) if check else -1, slot, name))
        return len(self) - 1

    def run(self) -> list[int]:
        if self._calls:
            self._go()
        return self.results

    # --- helpers -----------------------------------------------------------------

    def _alloc(self, size: int) -> int:
        at = len(self._data)
        self._data += bytes(size + (-size % 8))
        return at

    def _put(self, blob) -> int:
        at = self._alloc(_blob_size(blob))
        data = blob(self.data_at + at) if callable(blob) else blob
        self._data[at:at + len(data)] = data
        return self.data_at + at

    def _go(self) -> None:
        t, pid = self.t, self.t.pid
        code = bytes(self._code) + _INT3
        cbuf = ctypes.create_string_buffer(code, len(code))
        dbuf = ctypes.create_string_buffer(bytes(self._data), len(self._data))
        b.write_mem(pid, [(ctypes.addressof(cbuf), self.code_at, len(code)),
                          (ctypes.addressof(dbuf), self.data_at, len(self._data))])
        end = t.run_code(self.code_at)
        out = t.read(self.data_at, len(self._data))
        calls = self._calls
        self._reset()
        for i, (trap, slot, name) in enumerate(calls):
            r = ctypes.c_int64(struct.unpack_from("<Q", out, slot)[0]).value
            if self.code_at + trap == end:
                raise b.TracerError(-r, pid, name)
            self.results.append(r)
        if end != self.code_at + len(code):
            raise b.TracerError(0, pid, f"its syscall batch stopped at {end:#x}, not at its end")


def _blob_size(blob) -> int:
    return len(blob(0)) if callable(blob) else len(blob)

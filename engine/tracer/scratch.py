"""The scratch page the tracer runs syscalls from, and what tasks inherit.

Layout: CODE_PAGES of code (`syscall; int3` at the start for single
injected syscalls, then batches, then wait_for_tracer's stub at the end),
then data pages for batch arguments and results. The engine maps it once
(prepare_forks) before it forks the tasks of a restore; each task inherits
a private copy, with the engine's vdso placement and rseq area, so the
tracer needs neither /proc/PID/maps of a task nor an injected mmap. A task
forked before that, or whose dump needs that place, gets one mapped by an
injected mmap at a free spot (setup_scratch), as before.
"""
from __future__ import annotations

import ctypes
import errno
import signal
import struct

from engine import libc
from engine.tracer import binding as b
from engine.tracer.task import Tracee

PAGE = 4096
TASK_SIZE = 0x7FFFFFFFF000
MMAP_MIN = 0x10000
MAP_PRIVATE, MAP_ANONYMOUS, MAP_FIXED_NOREPLACE = 2, 0x20, 0x100000
CODE_PAGES, SCRATCH_PAGES = 4, 8
SYSCALL_INT3 = b"\x0f\x05\xcc"
STUB_SIZE = 256                     # wait_for_tracer's stub, at the code pages' end
ARCH_GET_FS = 0x1003


# --- the task's side ---------------------------------------------------------

def wait_for_tracer() -> None:
    """Called in the forked task (clone_with_pid returned 0) once its
    task-side work is done: never returns. It blocks in pause(), where
    attach_stopped (polling /proc/PID/syscall for 34) seizes
    it and replaces the whole process image; only its fd table, cwd, creds
    and namespaces are kept. It must be single-threaded.

    A task forked after prepare_forks() first unmaps nearly all of itself
    (the stub in its scratch page: everything but the scratch page, the
    vdso and its rseq area), so that work, the bulk of a task's restore,
    runs here, beside the engine's, not in the tracer's serial path."""
    stub = _prepared.get("stub")
    if stub is not None:
        ctypes.CFUNCTYPE(None)(stub)()        # never returns
    while True:
        libc.pause()


# --- the engine's side -------------------------------------------------------

VDSO_NAMES = ("[vvar]", "[vvar_vclock]", "[vdso]")
_prepared: dict = {}


def prepare_forks() -> None:
    """Called in the engine before it forks the tasks of a restore: maps
    the scratch page (`syscall; int3`) that every task then inherits, a
    private copy each, and notes where the vdso is (tasks inherit that too).
    restore_memory then reads nothing of a task from /proc and injects no
    mmap for its scratch; a task whose dumped VMAs would overlap the
    inherited scratch gets a fresh one, as a task forked before this does."""
    _prepared.pop("zero_actions", None)
    if "scratch" in _prepared:
        return
    import mmap
    maps = read_maps("self")
    size = SCRATCH_PAGES * PAGE
    want = free_spot([(lo, hi) for lo, hi, _ in maps], size)
    got = libc.mmap(want, size, mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC,
                      MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0)
    if got != want:
        return                         # tasks map their own, as before
    ctypes.memmove(want, SYSCALL_INT3, len(SYSCALL_INT3))
    _prepared["scratch"] = want
    _prepared["specials"] = [(lo, hi, name) for lo, hi, name in maps if name in VDSO_NAMES]
    keep = [(want, want + size)]
    keep.append((min(lo for lo, _, _ in _prepared["specials"]),
                 max(hi for _, hi, _ in _prepared["specials"])))
    rseq = _own_rseq_page()
    if rseq is None:
        return
    if rseq:
        keep.append((rseq, rseq + PAGE))
    code = bytearray()
    for lo, hi in gaps(keep):          # munmap(lo, hi - lo): no stack needed
        code += b"\x48\xbf" + struct.pack("<Q", lo) + b"\x48\xbe" + struct.pack("<Q", hi - lo)
        code += b"\x48\xb8" + struct.pack("<Q", 11) + b"\x0f\x05"
    code += b"\xb8\x22\x00\x00\x00\x0f\x05\xeb\xf7"     # pause(), forever
    if len(code) > STUB_SIZE:
        return
    stub = want + CODE_PAGES * PAGE - STUB_SIZE
    ctypes.memmove(stub, bytes(code), len(code))
    _prepared["stub"] = stub


def _own_rseq_page() -> int | None:
    """The page of this thread's rseq area (kept mapped until the tracer
    unregisters it: the kernel writes there), 0 without rseq, None if
    unknown (no stub then)."""
    try:
        offset = ctypes.c_long.in_dll(libc.handle, "__rseq_offset").value
        size = ctypes.c_uint.in_dll(libc.handle, "__rseq_size").value
    except ValueError:
        return None
    if not size:
        return 0
    tp = ctypes.c_ulong()
    if libc.syscall("arch_prctl", ARCH_GET_FS, ctypes.byref(tp)) != 0:
        return None
    area = tp.value + offset
    if area // PAGE != (area + 31) // PAGE:
        return None
    return area & ~(PAGE - 1)


def inherited_scratch(t: Tracee, vmas):
    """(scratch, vdso maps) the task inherited from prepare_forks(), or
    (None, None) when it has none or the dump needs that place."""
    at = _prepared.get("scratch")
    if at is None or any(v.start < at + SCRATCH_PAGES * PAGE and at < v.end for v in vmas):
        return None, None
    try:
        if t.read(at, len(SYSCALL_INT3)) != SYSCALL_INT3:
            return None, None
    except b.TracerError:
        return None, None
    t.syscall_at = at
    return at, _prepared["specials"]


def engine_vdso():
    """(start, offset of a `syscall` insn) of the engine's own vdso."""
    if "vdso" not in _prepared:
        found = None
        for lo, hi, name in read_maps("self"):
            if name == "[vdso]":
                at = ctypes.string_at(lo, hi - lo).find(b"\x0f\x05")
                found = (lo, at) if at >= 0 else None
        _prepared["vdso"] = found
    return _prepared["vdso"]


def engine_zero_actions() -> frozenset[int]:
    """The engine's signals whose action is all-zero (SIGCHLD left out),
    asked once per restore run by the engine (prepare_forks() forgets
    them; the engine sets no handler while it restores), else every time."""
    if "zero_actions" not in _prepared or "scratch" not in _prepared:
        out = set()
        old = (ctypes.c_uint64 * 4)()
        for sig in range(1, 65):
            if sig != signal.SIGCHLD and libc.syscall("rt_sigaction", sig, 0, old, 8) == 0 \
                    and not any(old):
                out.add(sig)
        _prepared["zero_actions"] = frozenset(out)
    return _prepared["zero_actions"]


def read_maps(pid: int | str) -> list[tuple[int, int, str]]:
    out = []
    with open(f"/proc/{pid}/maps") as f:
        for line in f:
            parts = line.split()
            lo, hi = (int(x, 16) for x in parts[0].split("-"))
            out.append((lo, hi, parts[5] if len(parts) > 5 else ""))
    return out


def free_spot(taken, size: int) -> int:
    for k in range(1, 256):
        lo = 0x7E0000000000 - k * 0x40000000
        if all(hi <= lo or lo + size <= s for s, hi in taken):
            return lo
    raise b.TracerError(errno.ENOMEM, 0, "finding a free address for the scratch page")


def scratch_batch(t: Tracee, scratch: int):
    data = scratch + CODE_PAGES * PAGE
    return t.batch(scratch + 8, CODE_PAGES * PAGE - 8 - STUB_SIZE, data,
                   (SCRATCH_PAGES - CODE_PAGES) * PAGE)


def setup_scratch(t: Tracee, vmas, maps) -> int:
    taken = [(lo, hi) for lo, hi, _ in maps] + [(v.start, v.end) for v in vmas]
    want = free_spot(taken, SCRATCH_PAGES * PAGE)
    addr = t.checked("mmap", want, SCRATCH_PAGES * PAGE, 7,
                     MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0, what="scratch")
    t.write(addr, SYSCALL_INT3)
    t.syscall_at = addr
    return addr


def gaps(keep):
    lo = MMAP_MIN
    for s, e in sorted(keep):
        if s > lo:
            yield lo, s
        lo = max(lo, e)
    if lo < TASK_SIZE:
        yield lo, TASK_SIZE

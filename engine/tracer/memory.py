"""Swapping a dumped task's address space into a forked, seized task.

By syscalls run from the scratch page the task inherited (batched:
engine/tracer/batch.py), in the order of DESIGN §4 and §7: rseq off,
everything but the scratch page and the vdso unmapped, vvar/vdso moved to
the dumped address, every VMA mapped (files opened in the task or given
as fds it holds), pages written from the pages file, protections and
madvise, PR_SET_MM_MAP. What the task holds besides its memory is set
after, by the plugins' tracer nodes (engine/tracer/restore.py).
"""
from __future__ import annotations

import errno
import struct

from engine.tracer import binding as b
from engine.tracer import model as m
from engine.tracer.batch import Result
from engine.tracer.scratch import (PAGE, SCRATCH_PAGES, VDSO_NAMES, engine_vdso, free_spot,
                                   gaps, inherited_scratch, read_maps, scratch_batch,
                                   setup_scratch)
from engine.tracer.task import Tracee

MAP_FIXED, MAP_ANONYMOUS, MAP_GROWSDOWN = 0x10, 0x20, 0x100
MAP_SHARED, MAP_PRIVATE = 1, 2
MAP_LOCKED, MAP_NORESERVE = 0x2000, 0x4000
PROT_WRITE = 2
MREMAP_MAYMOVE, MREMAP_FIXED = 1, 2
PR_SET_MM, PR_SET_MM_MAP = 35, 14
RSEQ_FLAG_UNREGISTER = 1
AT_FDCWD = -100
O_RDONLY, O_RDWR = 0, 2
MADV_MERGEABLE, MADV_HUGEPAGE, MADV_NOHUGEPAGE = 12, 14, 15
SPECIAL = m.VMA_AREA_VVAR | m.VMA_AREA_VDSO | m.VMA_AREA_VSYSCALL


def restore_memory(t: Tracee, mm: m.MmState, pages, shared_anon=None, file_fds=None,
                   shared_extents=None) -> None:
    """Replace the task's address space with the dumped one.

    `pages` has .runs() -> (vaddr, length, offset) and .buffer (a ctypes
    array or any buffer, e.g. an mmap of the pages file) that the runs index.
    `file_fds` (VMA index or path -> fd already open in the task) are used
    for file mappings and the exe instead of opening the path by an injected
    openat; like those, they are closed in the task once mapped.

    `shared_anon` (shmid -> (pid, start, pgoff) of the task that mapped it
    first) is filled and used across the tasks of one restore, so a
    MAP_SHARED|MAP_ANONYMOUS region stays one object: later tasks map the
    first one's through /proc/PID/map_files (criu/shmem.c does the same
    with its own fds). `shared_extents` (shmid -> (lowest pgoff, highest
    end offset) over all the tasks) sizes that object. Leaves t.scratch
    set: the plugins' batches run there.
    """
    shared_anon = {} if shared_anon is None else shared_anon
    scratch, bt = _clear(t, mm)
    given = dict(file_fds or {})
    fds = _map_all(bt, mm, given, shared_anon, shared_extents or {})
    if pages.buffer is not None:
        with b.buffer_address(pages.buffer) as base:
            # CRIU dumps the vdso's pages too; ours is the running kernel's.
            special = [(v.start, v.end) for v in mm.vmas if v.status & SPECIAL]
            pairs = [(base + off, vaddr, length) for vaddr, length, off in pages.runs()
                     if not any(lo <= vaddr < hi for lo, hi in special)]
            _write_pages(t.pid, pairs)
    _protect_and_set_mm(bt, mm, given, fds)
    t.scratch = scratch


def _clear(t: Tracee, mm: m.MmState):
    """rseq off, all but the scratch page and the vdso unmapped, the vdso
    moved where the dump had it; (scratch, its batch, queued)."""
    scratch, specials = inherited_scratch(t, mm.vmas)
    if scratch is None:            # a task forked before prepare_forks()
        maps = read_maps(t.pid)
        scratch = setup_scratch(t, mm.vmas, maps)
        specials = [(lo, hi, name) for lo, hi, name in maps if name in VDSO_NAMES]
    bt = scratch_batch(t, scratch)
    rseq = b.get_rseq(t.pid)
    if rseq[0]:
        bt.call("rseq", rseq[0], rseq[1], RSEQ_FLAG_UNREGISTER, rseq[2], what="unregister")
    keep = [(scratch, scratch + SCRATCH_PAGES * PAGE)]
    keep.append((min(lo for lo, _, _ in specials), max(hi for _, hi, _ in specials)))
    for lo, hi in gaps(keep):
        bt.call("munmap", lo, hi - lo, what=f"{lo:#x}-{hi:#x}")
    # Only the scratch page and the vdso are left: the vdso moves freely.
    t.vdso_syscall = _move_vdso(bt, mm.vmas, specials, avoid=keep[0])
    return scratch, bt


def _map_all(bt, mm: m.MmState, given: dict, shared_anon, extents) -> dict:
    """Files first, then every VMA: one run, the fds passed on as Results;
    (path, mode) -> fd of each file opened in the task."""
    fds: dict = {}                 # (path, mode) -> batch index of its openat
    made = _make_shared_objects(bt, mm, shared_anon, extents)
    for i, v in enumerate(mm.vmas):
        if not v.status & SPECIAL and given.get(i, given.get(v.path)) is None:
            key = _file_of(v, shared_anon)
            if key is not None and key not in fds:
                fds[key] = _open(bt, key)
    if mm.exe and given.get(mm.exe) is None and (mm.exe, O_RDONLY) not in fds:
        fds[mm.exe, O_RDONLY] = _open(bt, (mm.exe, O_RDONLY))
    for i, v in enumerate(mm.vmas):
        if not v.status & SPECIAL:
            _map_vma(bt, v, given.get(i, given.get(v.path)), fds, shared_anon)
    for shmid, (lo, hi) in made.items():
        # every piece maps the object now: the whole one can go, and the
        # tasks after this one map it from one of the pieces
        bt.call("munmap", lo, hi - lo, what=f"shared object {shmid} at {lo:#x}")
        v = next(v for v in mm.vmas if v.shmid == shmid and v.status & m.VMA_ANON_SHARED)
        shared_anon[shmid] = (bt.t.pid, v.start, v.end, shared_anon[shmid][3])
    results = bt.run()
    return {key: results[i] for key, i in fds.items()}


def _make_shared_objects(bt, mm: m.MmState, shared_anon, extents) -> dict:
    """Map each MAP_SHARED|MAP_ANONYMOUS object this task is the first to
    restore whole, at a free spot, so all its pieces (cut by munmap or
    mprotect, in any task) map it by offset: a piece's own anonymous mapping
    would be an object the size of that piece only (criu/shmem.c sizes it
    the same way). shmid -> (start, end) of the whole mapping."""
    seen: dict = {}
    for v in mm.vmas:
        if v.status & m.VMA_ANON_SHARED and v.shmid not in shared_anon:
            lo, hi = seen.get(v.shmid, (v.pgoff, v.pgoff + v.end - v.start))
            seen[v.shmid] = (min(lo, v.pgoff), max(hi, v.pgoff + v.end - v.start))
    made = {}
    taken = [(v.start, v.end) for v in mm.vmas] + [(lo, hi) for lo, hi, _ in read_maps(bt.t.pid)]
    for shmid, (lo, hi) in seen.items():
        lo, hi = extents.get(shmid, (lo, hi))
        at = free_spot(taken, hi - lo)
        taken.append((at, at + hi - lo))
        bt.call("mmap", at, hi - lo, PROT_WRITE | 1, MAP_FIXED | MAP_SHARED | MAP_ANONYMOUS,
                -1, 0, what=f"shared object {shmid} ({hi - lo:#x} bytes)")
        shared_anon[shmid] = (bt.t.pid, at, at + hi - lo, lo)
        made[shmid] = (at, at + hi - lo)
    return made


def _protect_and_set_mm(bt, mm: m.MmState, given: dict, fds: dict) -> None:
    """Protections and madvise once the pages are in, PR_SET_MM_MAP, and
    the files' fds closed."""
    madvised = []
    for v in mm.vmas:
        if not v.status & SPECIAL and _map_prot(v) != v.prot:
            bt.call("mprotect", v.start, v.end - v.start, v.prot,
                    what=f"vma {v.start:#x}-{v.end:#x}")
        if v.madv and not v.status & SPECIAL:
            madvised += _madvise(bt, v)
    exe_fd = given.get(mm.exe, fds.get((mm.exe, O_RDONLY), -1)) if mm.exe else -1
    set_mm = _set_mm_map(bt, mm, exe_fd)
    for fd in set(fds.values()) | set(given.values()):
        bt.call("close", fd, check=False)
    results = bt.run()
    for i, advice, v in madvised:
        r = results[i]
        # EINVAL for KSM/THP advice: that kernel feature is not built in
        if r < 0 and not (r == -errno.EINVAL and advice in (MADV_MERGEABLE, MADV_HUGEPAGE,
                                                             MADV_NOHUGEPAGE)):
            raise b.TracerError(-r, bt.t.pid, f"madvise {advice} vma {v.start:#x}-{v.end:#x}")
    r = results[set_mm]
    if r == -errno.EBUSY and exe_fd != -1:
        # The old exe is still mapped: the task runs the engine's own
        # interpreter binary (a python target of this python), which stays
        # its exe. Queued before run(): run() hands back the results so far.
        set_mm = _set_mm_map(bt, mm, -1)
        r = bt.run()[set_mm]
    if r < 0:
        raise b.TracerError(-r, bt.t.pid, "prctl PR_SET_MM_MAP")


def _move_vdso(bt, vmas, specials, avoid) -> int | None:
    """Move [vvar]..[vdso] where the dump had them, once nothing else but
    the scratch page is mapped; return the address of a `syscall` in the
    moved vdso, if known (_engine_vdso)."""
    ours = {name: (lo, hi) for lo, hi, name in specials}
    theirs = [v for v in vmas if v.status & (m.VMA_AREA_VVAR | m.VMA_AREA_VDSO)]
    if "[vdso]" not in ours:
        raise b.NotSupportedError(bt.t.pid, "restore without a vdso")
    if not theirs:
        # The program had unmapped its own: it stays gone (the tracer's
        # last syscalls run from another executable mapping).
        for lo, hi in ours.values():
            bt.call("munmap", lo, hi - lo, what=f"special mapping {lo:#x}")
        return None
    lo, hi = min(s for s, _ in ours.values()), max(e for _, e in ours.values())
    dlo, dhi = min(v.start for v in theirs), max(v.end for v in theirs)
    dvdso = next((v.start for v in theirs if v.status & m.VMA_AREA_VDSO), None)
    if dhi - dlo != hi - lo or dvdso - dlo != ours["[vdso]"][0] - lo:
        raise b.NotSupportedError(bt.t.pid, f"a vdso laid out unlike the dump's "
                                            f"({dhi - dlo:#x} bytes, vdso at +{dvdso - dlo:#x}; "
                                            f"here {hi - lo:#x}, +{ours['[vdso]'][0] - lo:#x})")
    engine = engine_vdso()
    at = None
    if engine is not None and engine[0] == ours["[vdso]"][0]:
        at = dvdso + engine[1]         # the same vdso as the engine's, moved
    if dlo == lo:
        return at
    parts = sorted(ours.values())
    if not (dhi <= lo or hi <= dlo):
        # Overlapping move: go through a free spot first.
        via = free_spot([avoid, (lo, hi), (dlo, dhi)], hi - lo)
        parts = _mremap_all(bt, parts, lo, via)
        lo = via
    _mremap_all(bt, parts, lo, dlo)
    return at


def _mremap_all(bt, parts, old_base: int, new_base: int):
    moved = []
    for s, e in parts:
        dest = new_base + (s - old_base)
        bt.call("mremap", s, e - s, e - s, MREMAP_MAYMOVE | MREMAP_FIXED, dest,
                what=f"special mapping {s:#x} -> {dest:#x}")
        moved.append((dest, dest + e - s))
    return moved


def _write_pages(pid: int, pairs) -> None:
    """process_vm_writev, split in two halves written from two threads: the
    cost is the target's page faults, which then run on both cores."""
    total = sum(n for _, _, n in pairs)
    if total < (64 << 20):
        if pairs:
            b.write_mem(pid, pairs)
        return
    half, acc, cut = total // 2, 0, len(pairs)
    for i, (_, _, n) in enumerate(pairs):
        acc += n
        if acc >= half:
            cut = i + 1
            break
    from concurrent.futures import ThreadPoolExecutor
    with ThreadPoolExecutor(2) as pool:
        for f in [pool.submit(b.write_mem, pid, part) for part in (pairs[:cut], pairs[cut:])]:
            f.result()


def _map_prot(v: m.Vma) -> int:
    """Mapped writable first so the pages can be written in, unless it is a
    shared file mapping (its content is the file, never written by us)."""
    return v.prot if v.status & m.VMA_FILE_SHARED else v.prot | PROT_WRITE


def _madvise(bt, v: m.Vma) -> list:
    """CRIU's madv is a mask of 1 << MADV_* (criu/pie/restorer.c applies
    each); returns (batch index, advice, vma) to check once run."""
    return [(bt.call("madvise", v.start, v.end - v.start, advice, check=False), advice, v)
            for advice in range(64) if v.madv >> advice & 1]


def _file_of(v: m.Vma, shared_anon):
    """(path, open mode) a VMA is mapped from, or None (anonymous)."""
    if v.path is not None and v.status & (m.VMA_FILE_PRIVATE | m.VMA_FILE_SHARED):
        mode = O_RDWR if v.status & m.VMA_FILE_SHARED and v.prot & PROT_WRITE else O_RDONLY
        return v.path, mode
    first = shared_anon.get(v.shmid) if v.status & m.VMA_ANON_SHARED else None
    if first is not None:
        pid, start, end, _ = first
        return f"/proc/{pid}/map_files/{start:x}-{end:x}", O_RDWR
    return None


def _map_vma(bt, v: m.Vma, given, fds, shared_anon) -> None:
    flags = MAP_FIXED | (MAP_SHARED if v.flags & MAP_SHARED else MAP_PRIVATE)
    flags |= v.flags & (MAP_GROWSDOWN | MAP_LOCKED | MAP_NORESERVE)
    fd, off = -1, 0
    key = _file_of(v, shared_anon)
    if key is not None:
        if given is None and key not in fds:
            # A region this task mapped first, a moment ago: map it again
            # through its map_files link, so that mapping must exist now.
            bt.run()
            fds[key] = _open(bt, key)
        fd = given if given is not None else Result(fds[key])
        first = shared_anon.get(v.shmid) if v.status & m.VMA_ANON_SHARED else None
        off = v.pgoff - first[3] if key[0].startswith("/proc/") and first else v.pgoff
    else:
        flags |= MAP_ANONYMOUS
        if v.status & m.VMA_ANON_SHARED:
            shared_anon[v.shmid] = (bt.t.pid, v.start, v.end, v.pgoff)
    # MAP_FIXED lands at v.start or fails: the result needs no other check.
    bt.call("mmap", v.start, v.end - v.start, _map_prot(v), flags, fd, off,
            what=f"vma {v.start:#x}-{v.end:#x}{' ' + v.path if v.path else ''}")


def _open(bt, key) -> int:
    """Queue an openat of `key` = (path, mode); returns its batch index."""
    path, mode = key
    return bt.call("openat", AT_FDCWD, path.encode() + b"\0", mode, 0, what=path)


def _set_mm_map(bt, mm: m.MmState, exe_fd: int) -> int:
    """Queue PR_SET_MM_MAP (unchecked: EBUSY is retried); its batch index."""
    auxv = struct.pack(f"<{len(mm.auxv)}Q", *mm.auxv)
    size = struct.calcsize("<11QQII")

    def head(at: int) -> bytes:
        return struct.pack("<11QQII", mm.mm_start_code, mm.mm_end_code, mm.mm_start_data,
                           mm.mm_end_data, mm.mm_start_brk, mm.mm_brk, mm.mm_start_stack,
                           mm.mm_arg_start, mm.mm_arg_end, mm.mm_env_start, mm.mm_env_end,
                           at + size, len(auxv), exe_fd & 0xFFFFFFFF) + auxv
    return bt.call("prctl", PR_SET_MM, PR_SET_MM_MAP, head, size, 0, check=False)

"""Swapping a dumped task's memory and registers into a forked task.

The forked task (a copy of the engine) closes what it does not keep and
blocks in pause() (`wait_for_tracer`); the engine seizes it
(`attach_stopped`) and, by syscalls injected through a scratch page holding
`syscall`, replaces its whole address space (DESIGN §4 and §7, in that
order): rseq off, vvar/vdso moved to the dumped address, everything else
unmapped, every VMA mapped, pages written from the pages file, protections,
PR_SET_MM_MAP; then signal state, and the registers last. `release` lets
all tasks go at once.
"""
from __future__ import annotations

import ctypes
import struct
import time

from engine.tracer import binding as b
from engine.tracer import model as m
from engine.tracer.task import Tracee
from engine.tracer.xstate import to_xstate

PAGE = 4096
TASK_SIZE = 0x7FFFFFFFF000
MMAP_MIN = 0x10000
MAP_FIXED, MAP_ANONYMOUS, MAP_GROWSDOWN, MAP_FIXED_NOREPLACE = 0x10, 0x20, 0x100, 0x100000
MAP_SHARED, MAP_PRIVATE = 1, 2
MAP_LOCKED, MAP_NORESERVE = 0x2000, 0x4000
PROT_WRITE = 2
MREMAP_MAYMOVE, MREMAP_FIXED = 1, 2
PR_SET_MM, PR_SET_MM_MAP = 35, 14
PR_SET_NAME = 15
PR_CAPBSET_DROP, PR_SET_SECUREBITS, PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE = 24, 28, 47, 2
SECBIT_NO_SETUID_FIXUP = 1 << 2
# what pthread_create passes: one mm, fs, fd table and signal handlers
CLONE_THREAD_FLAGS = 0x100 | 0x200 | 0x400 | 0x800 | 0x10000 | 0x40000
RSEQ_FLAG_UNREGISTER = 1
AT_FDCWD = -100
O_RDONLY, O_RDWR = 0, 2
SIGKILL, SIGSTOP = 9, 19
SPECIAL = m.VMA_AREA_VVAR | m.VMA_AREA_VDSO | m.VMA_AREA_VSYSCALL
SCRATCH_PAGES = 2                   # code page (`syscall`) + data page


# --- the task's side ---------------------------------------------------------

def wait_for_tracer() -> None:
    """Called in the forked task (clone_with_pid returned 0) once its
    task-side work is done: never returns. It blocks in pause(), where
    attach_stopped / restore_task (polling /proc/PID/syscall for 34) seize
    it and replace the whole process image; only its fd table, cwd, creds
    and namespaces are kept. It must be single-threaded."""
    while True:
        b.libc.pause()


# --- the engine's side -------------------------------------------------------

def attach_stopped(pid: int, timeout: float = 10.0) -> Tracee:
    """Seize a task once it sits in pause() (syscall 34)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with open(f"/proc/{pid}/syscall") as f:
                if f.read().startswith("34 "):
                    break
        except OSError as e:
            raise b.TracerError(e.errno or 3, pid, "waiting for the task to stop") from None
        if time.monotonic() > deadline:
            raise b.TracerError(62, pid, "waiting for the task to stop")
        time.sleep(0.0005)
    t = Tracee.seize(pid)
    t.syscall_at = t.saved.ip - 2        # pause()'s own `syscall` insn
    return t


def restore_memory(t: Tracee, mm: m.MmState, pages, shared_anon=None, file_fds=None) -> None:
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
    with its own fds).
    """
    shared_anon = {} if shared_anon is None else shared_anon
    pid = t.pid
    maps = _maps(pid)             # the forked task's own layout, read once
    scratch = _setup_scratch(t, mm.vmas, maps)
    data = scratch + PAGE
    rseq = b.get_rseq(pid)
    if rseq[0]:
        t.checked("rseq", rseq[0], rseq[1], RSEQ_FLAG_UNREGISTER, rseq[2], what="unregister")
    keep = [(scratch, scratch + SCRATCH_PAGES * PAGE)]
    keep.append(_move_vdso(t, mm.vmas, maps, avoid=keep[0]))
    for lo, hi in _gaps(keep):
        t.checked("munmap", lo, hi - lo, what=f"{lo:#x}-{hi:#x}")
    fds: dict = {}
    given = dict(file_fds or {})
    try:
        for i, v in enumerate(mm.vmas):
            if not v.status & SPECIAL:
                fds["given"] = given.get(i, given.get(v.path))
                _map_vma(t, v, fds, data, shared_anon)
        fds["given"] = given.get(mm.exe)
        if pages.buffer is not None:
            with b.buffer_address(pages.buffer) as base:
                # CRIU dumps the vdso's pages too; ours is the running kernel's.
                special = [(v.start, v.end) for v in mm.vmas if v.status & SPECIAL]
                pairs = [(base + off, vaddr, length) for vaddr, length, off in pages.runs()
                         if not any(lo <= vaddr < hi for lo, hi in special)]
                _write_pages(pid, pairs)
        for v in mm.vmas:
            if not v.status & SPECIAL and _map_prot(v) != v.prot:
                t.checked("mprotect", v.start, v.end - v.start, v.prot,
                          what=f"vma {v.start:#x}-{v.end:#x}")
            if v.madv and not v.status & SPECIAL:
                _madvise(t, v)
        _set_mm_map(t, mm, fds, data)
    finally:
        fds.pop("given", None)
        for fd in set(fds.values()) | set(given.values()):
            t.syscall("close", fd)
    t.scratch = scratch


def restore_threads(t: Tracee, sigactions, threads, shared_signals=(), creds=None) -> None:
    """Signal state, the other threads, and registers; the scratch page goes."""
    by_tid = {th.tid: th for th in threads}
    if t.pid not in by_tid:
        raise b.TracerError(0, t.pid, "restore: the thread list lacks the task itself")
    data = t.scratch + PAGE
    untouched = _untouched_signals(t.pid)
    for sig, sa in enumerate(sigactions, 1):
        if sig in (SIGKILL, SIGSTOP) or (sa == m.SigAction() and sig in untouched):
            continue
        t.write(data, struct.pack("<4Q", sa.sigaction, sa.flags, sa.restorer, sa.mask))
        t.checked("rt_sigaction", sig, data, 0, 8, what=f"signal {sig}")
    others = [th for th in threads if th.tid != t.pid]
    if others:
        b.ptrace(b.PTRACE_SETOPTIONS, t.pid, 0, b.PTRACE_O_TRACECLONE, "PTRACE_SETOPTIONS")
    for th in others:
        t.others.append(_clone_thread(t, th.tid, data))
    tracees = t.others + [t]
    for tracee in tracees:
        _thread_signal_state(tracee, t.pid, by_tid[tracee.pid], data)
    for info in shared_signals:
        t.write(data, info)
        sig = struct.unpack_from("<i", info)[0]
        t.checked("rt_sigqueueinfo", t.pid, sig, data, what=f"signal {sig}")
    if creds is not None:
        for tracee in tracees:          # credentials are per thread in the kernel
            _set_creds(tracee, creds, data)
    # The scratch page goes through a `syscall` of the restored vdso.
    t.syscall_at = t.find_syscall_in_vdso()
    t.checked("munmap", t.scratch, SCRATCH_PAGES * PAGE, what="scratch page")
    for tracee in tracees:
        th = by_tid[tracee.pid]
        regs = b.UserRegs()
        for name in m.REG_NAMES:
            setattr(regs, name, th.regs[name] & 0xFFFFFFFFFFFFFFFF)
        regs.orig_ax = 0xFFFFFFFFFFFFFFFF      # no syscall restart on resume
        tracee.set_regs(regs)
        b.set_xstate(tracee.pid, to_xstate(th.fpregs))
        tracee.saved = None                    # detach must not put old registers back


def _untouched_signals(pid: int) -> set[int]:
    """Signals whose action in the forked task is all-zero, so an all-zero
    image entry needs no syscall. The task's handler comes from the kernel
    (SigCgt/SigIgn: faulthandler's C handlers are invisible to
    signal.getsignal); flags and mask, which it inherited from the engine,
    from the engine's own rt_sigaction. SIGCHLD is always set: its flags
    (SA_NOCLDWAIT) matter even under SIG_DFL."""
    caught = 0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(("SigCgt:", "SigIgn:")):
                caught |= int(line.split()[1], 16)
    out = set()
    old = (ctypes.c_uint64 * 4)()
    for sig in range(1, 65):
        if caught >> (sig - 1) & 1 or sig == 17:
            continue
        if b.raw_syscall(b.SYS["rt_sigaction"], sig, 0, old, 8) == 0 and not any(old):
            out.add(sig)
    return out


def _set_creds(tr: Tracee, c: m.Creds, data: int) -> None:
    """Credentials last, as criu/pie/restorer.c restore_creds does: keep
    capabilities across the uid change (SECBIT_NO_SETUID_FIXUP), shrink the
    bounding set, groups, gids, uids, then securebits and capabilities."""
    # What is already as dumped is left alone: an unprivileged engine (no
    # CAP_SETPCAP, CAP_SETGID) may not even set a value to what it is.
    now = _status(tr.pid)
    fixup = tr.syscall("prctl", PR_SET_SECUREBITS, SECBIT_NO_SETUID_FIXUP, 0, 0, 0) == 0
    bnd = c.cap_bnd[0] | c.cap_bnd[1] << 32
    for cap in range(_cap_last() + 1):
        if not bnd >> cap & 1 and int(now["CapBnd"][0], 16) >> cap & 1:
            tr.checked("prctl", PR_CAPBSET_DROP, cap, 0, 0, 0, what=f"drop cap {cap}")
    if c.groups is not None:            # None: setgroups is denied (user namespace)
        tr.write(data, struct.pack(f"<{len(c.groups)}I", *c.groups))
        r = tr.syscall("setgroups", len(c.groups), data)
        # EPERM for the very groups it has (in our view: the same unless in
        # another user namespace, where the call is allowed) is no failure.
        if r < 0 and not (r == -1 and sorted(c.groups) == sorted(map(int, now["Groups"]))):
            raise b.TracerError(-r, tr.pid, "setgroups restore")
    tr.checked("setresgid", c.gid, c.egid, c.sgid)
    tr.syscall("setfsgid", c.fsgid)
    tr.checked("setresuid", c.uid, c.euid, c.suid)
    tr.syscall("setfsuid", c.fsuid)
    if fixup or c.secbits:
        tr.checked("prctl", PR_SET_SECUREBITS, c.secbits, 0, 0, 0, what="securebits")
    # struct __user_cap_header_struct (version 3, this thread), then two
    # __user_cap_data_struct {effective, permitted, inheritable}
    tr.write(data, struct.pack("<Ii6I", 0x20080522, 0, c.cap_eff[0], c.cap_prm[0], c.cap_inh[0],
                               c.cap_eff[1], c.cap_prm[1], c.cap_inh[1]))
    tr.checked("capset", data, data + 8, what="restore")
    amb = c.cap_amb[0] | c.cap_amb[1] << 32
    for cap in range(_cap_last() + 1):
        if amb >> cap & 1:
            tr.checked("prctl", PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, cap, 0, 0,
                       what=f"ambient cap {cap}")


def _status(pid: int) -> dict[str, list[str]]:
    with open(f"/proc/{pid}/status") as f:
        return {k: v.split() for k, _, v in (line.partition(":") for line in f)}


def _cap_last() -> int:
    with open("/proc/sys/kernel/cap_last_cap") as f:
        return int(f.read())


def _clone_thread(t: Tracee, tid: int, data: int) -> Tracee:
    """A new thread with the dumped tid, by clone3 injected in the leader.

    PTRACE_O_TRACECLONE attaches it stopped before it runs a single
    instruction; its registers are set later like the leader's.
    """
    set_tid = data + 128
    t.write(set_tid, struct.pack("<i", tid))
    t.write(data, struct.pack("<11Q", CLONE_THREAD_FLAGS, 0, 0, 0, 0, 0, 0, 0, set_tid, 1, 0))
    t.checked("clone3", data, 88, what=f"thread {tid}")
    b.wait_stop(tid)
    new = Tracee(tid)
    new.saved, new.syscall_at = b.get_regs(tid), t.syscall_at
    return new


def _thread_signal_state(tr: Tracee, tgid: int, th: m.ThreadState, data: int) -> None:
    """What each thread holds for itself, set from inside that thread."""
    tr.write(data, struct.pack("<Qi4xQ", th.ss_sp, th.ss_flags, th.ss_size))
    tr.checked("sigaltstack", data, 0, what="restore")
    tr.checked("set_tid_address", th.clear_tid_addr)
    if th.comm:
        tr.write(data, th.comm.encode()[:15] + b"\0")
        tr.checked("prctl", PR_SET_NAME, data, 0, 0, 0, what="PR_SET_NAME")
    if th.futex_rla_len:
        tr.checked("set_robust_list", th.futex_rla, th.futex_rla_len)
    if th.rseq_abi_pointer:
        tr.checked("rseq", th.rseq_abi_pointer, th.rseq_abi_size, 0, th.rseq_signature,
                   what="register")
    # Mask first, so queued signals stay pending instead of being delivered
    # while we step (the kernel lets a thread queue any siginfo to itself).
    b.set_sigmask(tr.pid, th.blk_sigset)
    for info in th.signals_p:
        tr.write(data, info)
        sig = struct.unpack_from("<i", info)[0]
        tr.checked("rt_tgsigqueueinfo", tgid, tr.pid, sig, data, what=f"signal {sig}")


def restore_task(pid: int, task: m.TaskState, pages, file_fds=None,
                 shared_anon=None, timeout: float = 10.0) -> Tracee:
    """The whole of DESIGN §4 step 4 for one forked task sitting in
    wait_for_tracer(): memory, signal state, threads, credentials, registers.

    Leaves it stopped under ptrace and returns its Tracee; `release` lets it
    go. On failure the half-built task is killed (the caller reaps it, it is
    the caller's child) and TracerError names the step:
    "restore: mmap vma 0x7f..-0x7f.. of 30001: File exists".
    """
    t = attach_stopped(pid, timeout)
    try:
        restore_memory(t, task.mm, pages, shared_anon, file_fds)
        restore_threads(t, task.sigactions, task.threads, task.signals_s, task.creds)
    except BaseException as e:
        _kill_quietly(t)
        if isinstance(e, b.TracerError):
            raise b.TracerError(e.errno or 0, pid, f"restore: {e.op}") from e
        raise
    t.release_signal = SIGSTOP if task.stopped else 0
    _restored[pid] = t
    return t


_restored: dict[int, Tracee] = {}       # restore_task's tracees, for release(pids)


def _kill_quietly(t: Tracee) -> None:
    import os
    try:
        os.kill(t.pid, SIGKILL)
    except OSError:
        pass
    t.saved, t.detached = None, True     # a killed tracee needs no detach


def release(tracees, leave_stopped: bool = False) -> None:
    """Let every task run (or stop, with `leave_stopped`) at once. Takes
    Tracees, or pids of tasks restore_task restored."""
    for t in tracees:
        if isinstance(t, int):
            t = _restored.pop(t)
        else:
            _restored.pop(t.pid, None)
        t.saved = None
        t.detach(SIGSTOP if leave_stopped else t.release_signal)


# --- steps -------------------------------------------------------------------

def _maps(pid: int) -> list[tuple[int, int, str]]:
    out = []
    with open(f"/proc/{pid}/maps") as f:
        for line in f:
            parts = line.split()
            lo, hi = (int(x, 16) for x in parts[0].split("-"))
            out.append((lo, hi, parts[5] if len(parts) > 5 else ""))
    return out


def _free_spot(taken, size: int) -> int:
    for k in range(1, 256):
        lo = 0x7E0000000000 - k * 0x40000000
        if all(hi <= lo or lo + size <= s for s, hi in taken):
            return lo
    raise b.TracerError(12, 0, "no free address for the scratch page")


def _setup_scratch(t: Tracee, vmas, maps) -> int:
    taken = [(lo, hi) for lo, hi, _ in maps] + [(v.start, v.end) for v in vmas]
    want = _free_spot(taken, SCRATCH_PAGES * PAGE)
    addr = t.checked("mmap", want, SCRATCH_PAGES * PAGE, 7,
                     MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0, what="scratch")
    t.write(addr, b"\x0f\x05\xcc")
    t.syscall_at = addr
    return addr


def _move_vdso(t: Tracee, vmas, maps, avoid) -> tuple[int, int]:
    """Move [vvar]..[vdso] where the dump had them; return the block kept."""
    ours = {name: (lo, hi) for lo, hi, name in maps
            if name in ("[vvar]", "[vvar_vclock]", "[vdso]")}
    theirs = [v for v in vmas if v.status & (m.VMA_AREA_VVAR | m.VMA_AREA_VDSO)]
    if not ours or not theirs:
        raise b.TracerError(0, t.pid, "restore without a vdso is not supported")
    lo, hi = min(s for s, _ in ours.values()), max(e for _, e in ours.values())
    dlo, dhi = min(v.start for v in theirs), max(v.end for v in theirs)
    dvdso = next((v.start for v in theirs if v.status & m.VMA_AREA_VDSO), None)
    if dhi - dlo != hi - lo or dvdso - dlo != ours["[vdso]"][0] - lo:
        raise b.TracerError(0, t.pid, f"vdso layout differs from the dump "
                                      f"({dhi - dlo:#x} bytes, vdso at +{dvdso - dlo:#x}; "
                                      f"here {hi - lo:#x}, +{ours['[vdso]'][0] - lo:#x})")
    if dlo == lo:
        return lo, hi
    parts = sorted(ours.values())
    if not (dhi <= lo or hi <= dlo):
        # Overlapping move: go through a free spot first.
        via = _free_spot([(s, e) for s, e, _ in maps] + [avoid, (dlo, dhi)], hi - lo)
        parts = _mremap_all(t, parts, lo, via)
        lo = via
    _mremap_all(t, parts, lo, dlo)
    return dlo, dhi


def _mremap_all(t: Tracee, parts, old_base: int, new_base: int):
    moved = []
    for s, e in parts:
        dest = new_base + (s - old_base)
        t.checked("mremap", s, e - s, e - s, MREMAP_MAYMOVE | MREMAP_FIXED, dest,
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


def _gaps(keep):
    lo = MMAP_MIN
    for s, e in sorted(keep):
        if s > lo:
            yield lo, s
        lo = max(lo, e)
    if lo < TASK_SIZE:
        yield lo, TASK_SIZE


def _map_prot(v: m.Vma) -> int:
    """Mapped writable first so the pages can be written in, unless it is a
    shared file mapping (its content is the file, never written by us)."""
    return v.prot if v.status & m.VMA_FILE_SHARED else v.prot | PROT_WRITE


def _madvise(t: Tracee, v: m.Vma) -> None:
    """CRIU's madv is a mask of 1 << MADV_* (criu/pie/restorer.c applies each)."""
    for advice in range(64):
        if v.madv >> advice & 1:
            r = t.syscall("madvise", v.start, v.end - v.start, advice)
            # EINVAL for KSM/THP advice: that kernel feature is not built in
            if r < 0 and not (r == -22 and advice in (12, 14, 15)):
                raise b.TracerError(-r, t.pid, f"madvise {advice} vma {v.start:#x}-{v.end:#x}")


def _map_vma(t: Tracee, v: m.Vma, fds, data: int, shared_anon) -> None:
    flags = MAP_FIXED | (MAP_SHARED if v.flags & MAP_SHARED else MAP_PRIVATE)
    flags |= v.flags & (MAP_GROWSDOWN | MAP_LOCKED | MAP_NORESERVE)
    fd, off = -1, 0
    first = shared_anon.get(v.shmid) if v.status & m.VMA_ANON_SHARED else None
    if v.path is not None and v.status & (m.VMA_FILE_PRIVATE | m.VMA_FILE_SHARED):
        mode = O_RDWR if v.status & m.VMA_FILE_SHARED and v.prot & PROT_WRITE else O_RDONLY
        fd, off = _open(t, v.path, mode, fds, data), v.pgoff
    elif first is not None:
        pid, start, end, pgoff = first
        fd = _open(t, f"/proc/{pid}/map_files/{start:x}-{end:x}", O_RDWR, fds, data)
        off = v.pgoff - pgoff
    else:
        flags |= MAP_ANONYMOUS
        if v.status & m.VMA_ANON_SHARED:
            shared_anon[v.shmid] = (t.pid, v.start, v.end, v.pgoff)
    got = t.checked("mmap", v.start, v.end - v.start, _map_prot(v), flags, fd, off,
                    what=f"vma {v.start:#x}-{v.end:#x}{' ' + v.path if v.path else ''}")
    if got != v.start:
        raise b.TracerError(0, t.pid, f"mmap vma {v.start:#x} landed at {got:#x}")


def _open(t: Tracee, path: str, mode: int, fds, data: int) -> int:
    """An fd on `path` in the task: the one the task pre-opened for this
    mapping (fds["given"]) or one opened here by an injected openat."""
    if fds.get("given") is not None:
        return fds["given"]
    key = (path, mode)
    if key not in fds:
        t.write(data, path.encode() + b"\0")
        fds[key] = t.checked("openat", AT_FDCWD, data, mode, 0, what=path)
    return fds[key]


def _set_mm_map(t: Tracee, mm: m.MmState, fds, data: int) -> None:
    exe_fd = _open(t, mm.exe, O_RDONLY, fds, data) if mm.exe else -1
    auxv = struct.pack(f"<{len(mm.auxv)}Q", *mm.auxv)
    auxv_at = data + 256
    head = struct.pack("<11QQII", mm.mm_start_code, mm.mm_end_code, mm.mm_start_data,
                       mm.mm_end_data, mm.mm_start_brk, mm.mm_brk, mm.mm_start_stack,
                       mm.mm_arg_start, mm.mm_arg_end, mm.mm_env_start, mm.mm_env_end,
                       auxv_at, len(auxv), exe_fd & 0xFFFFFFFF)
    t.write(data, head)
    t.write(auxv_at, auxv)
    r = t.syscall("prctl", PR_SET_MM, PR_SET_MM_MAP, data, len(head), 0)
    if r == -16 and exe_fd != -1:          # EBUSY: the old exe is still mapped
        t.write(data, head[:-4] + struct.pack("<I", 0xFFFFFFFF))
        r = t.syscall("prctl", PR_SET_MM, PR_SET_MM_MAP, data, len(head), 0)
    if r < 0:
        raise b.TracerError(-r, t.pid, "prctl PR_SET_MM_MAP")

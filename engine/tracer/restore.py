"""Swapping a dumped task's memory and registers into a forked task.

The forked task (a copy of the engine) closes what it does not keep and
waits (`wait_for_tracer`, engine/tracer/scratch.py); the engine seizes it
(`attach_stopped`) and, by syscalls run from a scratch page it inherited
(batched: engine/tracer/batch.py), replaces its whole address space
(DESIGN §4 and §7, in that order): rseq off, everything but the scratch
page and the vdso unmapped, vvar/vdso moved to the dumped address, every
VMA mapped, pages written from the pages file, protections, PR_SET_MM_MAP;
then signal state, and the registers last. `release` lets all tasks go at
once.
"""
from __future__ import annotations

import ctypes
import os
import struct
import time

from engine.tracer import binding as b
from engine.tracer import model as m
from engine.tracer.batch import At, Result
from engine.tracer.scratch import (  # noqa: F401 - wait_for_tracer, prepare_forks: API
    PAGE, SCRATCH_PAGES, VDSO_NAMES, engine_vdso, engine_zero_actions, free_spot, gaps,
    inherited_scratch, prepare_forks, read_maps, scratch_batch, setup_scratch, wait_for_tracer)
from engine.tracer.task import Tracee
from engine.tracer.xstate import to_xstate

MAP_FIXED, MAP_ANONYMOUS, MAP_GROWSDOWN, MAP_FIXED_NOREPLACE = 0x10, 0x20, 0x100, 0x100000
MAP_SHARED, MAP_PRIVATE = 1, 2
MAP_LOCKED, MAP_NORESERVE = 0x2000, 0x4000
PROT_WRITE = 2
MREMAP_MAYMOVE, MREMAP_FIXED = 1, 2
PR_SET_MM, PR_SET_MM_MAP = 35, 14
PR_SET_NAME = 15
PR_CAPBSET_DROP, PR_SET_SECUREBITS, PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE = 24, 28, 47, 2
PR_GET_SECUREBITS = 27
SECBIT_NO_SETUID_FIXUP = 1 << 2
# what pthread_create passes: one mm, fs, fd table and signal handlers
CLONE_THREAD_FLAGS = 0x100 | 0x200 | 0x400 | 0x800 | 0x10000 | 0x40000
RSEQ_FLAG_UNREGISTER = 1
PR_SET_PDEATHSIG = 1
PR_TIMER_CREATE_RESTORE_IDS = 77
ALL_SIGNALS = (1 << 64) - 1         # the kernel leaves SIGKILL and SIGSTOP out
AT_FDCWD = -100
O_RDONLY, O_RDWR = 0, 2
SIGKILL, SIGSTOP = 9, 19
SPECIAL = m.VMA_AREA_VVAR | m.VMA_AREA_VDSO | m.VMA_AREA_VSYSCALL


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
    scratch, specials = inherited_scratch(t, mm.vmas)
    if scratch is None:            # a task forked before prepare_forks()
        maps = read_maps(pid)
        scratch = setup_scratch(t, mm.vmas, maps)
        specials = [(lo, hi, name) for lo, hi, name in maps if name in VDSO_NAMES]
    bt = scratch_batch(t, scratch)
    rseq = b.get_rseq(pid)
    if rseq[0]:
        bt.call("rseq", rseq[0], rseq[1], RSEQ_FLAG_UNREGISTER, rseq[2], what="unregister")
    keep = [(scratch, scratch + SCRATCH_PAGES * PAGE)]
    keep.append((min(lo for lo, _, _ in specials), max(hi for _, hi, _ in specials)))
    for lo, hi in gaps(keep):
        bt.call("munmap", lo, hi - lo, what=f"{lo:#x}-{hi:#x}")
    # Only the scratch page and the vdso are left: the vdso moves freely.
    t.vdso_syscall = _move_vdso(bt, mm.vmas, specials, avoid=keep[0])
    given = dict(file_fds or {})
    # Files first, then every VMA: one run, the fds passed on as Results.
    fds: dict = {}                 # (path, mode) -> batch index of its openat
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
    results = bt.run()
    fds = {key: results[i] for key, i in fds.items()}
    if pages.buffer is not None:
        with b.buffer_address(pages.buffer) as base:
            # CRIU dumps the vdso's pages too; ours is the running kernel's.
            special = [(v.start, v.end) for v in mm.vmas if v.status & SPECIAL]
            pairs = [(base + off, vaddr, length) for vaddr, length, off in pages.runs()
                     if not any(lo <= vaddr < hi for lo, hi in special)]
            _write_pages(pid, pairs)
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
        if r < 0 and not (r == -22 and advice in (12, 14, 15)):
            raise b.TracerError(-r, t.pid, f"madvise {advice} vma {v.start:#x}-{v.end:#x}")
    r = results[set_mm]
    if r == -16 and exe_fd != -1:          # EBUSY: the old exe is still mapped
        r = bt.run()[_set_mm_map(bt, mm, -1)]
    if r < 0:
        raise b.TracerError(-r, t.pid, "prctl PR_SET_MM_MAP")
    t.scratch = scratch


def restore_threads(t: Tracee, sigactions, threads, shared_signals=(), creds=None,
                    parent_restored: bool = True, itimers=(), posix_timers=(),
                    rlimits=()) -> None:
    """Signal state, the other threads, interval timers, and registers; the
    scratch page goes.

    Without `parent_restored` (the task's parent is not in the tree: the
    engine stands in for it until it exits, which would send it) no thread
    gets its dumped parent-death signal. `itimers`: (interval s, us, value
    s, us) for ITIMER_REAL, _VIRTUAL and _PROF, as TaskState has them;
    `posix_timers`: model.PosixTimer, made with their dumped ids; `rlimits`:
    (RLIMIT_*, soft, hard) to set."""
    by_tid = {th.tid: th for th in threads}
    if t.pid not in by_tid:
        raise b.TracerError(0, t.pid, "restore: the thread list lacks the task itself")
    # The dump side's /proc readers, loaded by the tracers only (not into
    # the engine the tasks are forked from).
    from engine.tracer.dump import proc_status
    bt = scratch_batch(t, t.scratch)
    status = proc_status(t.pid)         # read once: signal dispositions and credentials
    untouched = _untouched_signals(status)
    no_action = m.SigAction()
    for sig, sa in enumerate(sigactions, 1):
        if sig in (SIGKILL, SIGSTOP) or (sa == no_action and sig in untouched):
            continue
        bt.call("rt_sigaction", sig, struct.pack("<4Q", sa.sigaction, sa.flags, sa.restorer,
                                                 sa.mask), 0, 8, what=f"signal {sig}")
    others = [th for th in threads if th.tid != t.pid]
    if others:
        b.ptrace(b.PTRACE_SETOPTIONS, t.pid, 0, b.PTRACE_O_TRACECLONE, "PTRACE_SETOPTIONS")
    for th in others:
        _clone_thread(bt, th.tid)
    if others:
        bt.run()
    for th in others:
        b.wait_stop(th.tid)
        new = Tracee(th.tid)
        new.saved, new.syscall_at = b.get_regs(th.tid), t.syscall_at
        t.others.append(new)
    # Threads inherit the credentials of the leader, still the engine's:
    # nothing to do when the dumped ones are those.
    # Only comparable in our own user namespace: inside another, the image
    # holds ids as that namespace sees them, /proc shows them as we do.
    if creds is not None and _same_userns(t.pid) and creds == _creds_now(status):
        creds = None
    for tracee in t.others + [t]:
        tb = bt if tracee is t else scratch_batch(tracee, t.scratch)
        _thread_signal_state(tb, t.pid, by_tid[tracee.pid])
        if tracee is t:
            for info in shared_signals:
                sig = struct.unpack_from("<i", info)[0]
                tb.call("rt_sigqueueinfo", t.pid, sig, info, what=f"signal {sig}")
        if tracee is t:                 # before the credentials may drop capabilities
            for res, soft, hard in rlimits:
                tb.call("prlimit64", 0, res, struct.pack("<2Q", soft, hard), 0,
                        what=f"rlimit {res}")
        if creds is not None:           # credentials are per thread in the kernel
            _set_creds(tb, creds)
        pdeath = by_tid[tracee.pid].pdeath_sig if parent_restored else 0
        if tracee is t:
            t.pdeath_signal = pdeath    # set at release: until then ctx.spawn's holds
            # Last of the task's own state: the timers count from here.
            for which, timer in enumerate(itimers):
                if any(timer):
                    tb.call("setitimer", which, struct.pack("<4q", *timer), 0,
                            what=f"itimer {which}")
            if posix_timers:
                _posix_timers(tb, posix_timers)
        elif pdeath:                    # after the credentials: changing them clears it
            tb.call("prctl", PR_SET_PDEATHSIG, pdeath, 0, 0, 0, what="parent-death signal")
        tb.run()
    tracees = t.others + [t]
    # The scratch page goes through a `syscall` of the restored vdso.
    t.syscall_at = t.vdso_syscall or t.find_syscall_in_vdso()
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


def _untouched_signals(status: dict[str, list[str]]) -> set[int]:
    """Signals whose action in the forked task is all-zero, so an all-zero
    image entry needs no syscall. The task's handler comes from the kernel
    (SigCgt/SigIgn: faulthandler's C handlers are invisible to
    signal.getsignal); flags and mask, which it inherited from the engine,
    from the engine's own rt_sigaction. SIGCHLD is always set: its flags
    (SA_NOCLDWAIT) matter even under SIG_DFL."""
    caught = int(status["SigCgt"][0], 16) | int(status["SigIgn"][0], 16)
    return {sig for sig in engine_zero_actions() if not caught >> (sig - 1) & 1}


def _same_userns(pid: int) -> bool:
    return os.stat(f"/proc/{pid}/ns/user").st_ino == os.stat("/proc/self/ns/user").st_ino


def _creds_now(status: dict[str, list[str]]) -> m.Creds:
    """The task's credentials, from its /proc status; securebits are the
    engine's (it inherited them)."""
    from engine.tracer.dump import creds_from_status
    return creds_from_status(status, b.libc.prctl(PR_GET_SECUREBITS, 0, 0, 0, 0))


def _set_creds(tb, c: m.Creds) -> None:
    """Credentials last, as criu/pie/restorer.c restore_creds does: keep
    capabilities across the uid change (SECBIT_NO_SETUID_FIXUP), shrink the
    bounding set, groups, gids, uids, then securebits and capabilities."""
    # What is already as dumped is left alone: an unprivileged engine (no
    # CAP_SETPCAP, CAP_SETGID) may not even set a value to what it is.
    from engine.tracer.dump import proc_status
    now = proc_status(tb.t.pid)
    fix = tb.call("prctl", PR_SET_SECUREBITS, SECBIT_NO_SETUID_FIXUP, 0, 0, 0, check=False)
    fixup = tb.run()[fix] == 0
    bnd = c.cap_bnd[0] | c.cap_bnd[1] << 32
    for cap in range(_cap_last() + 1):
        if not bnd >> cap & 1 and int(now["CapBnd"][0], 16) >> cap & 1:
            tb.call("prctl", PR_CAPBSET_DROP, cap, 0, 0, 0, what=f"drop cap {cap}")
    if c.groups is not None:            # None: setgroups is denied (user namespace)
        # EPERM for the very groups it has (in our view: the same unless in
        # another user namespace, where the call is allowed) is no failure.
        same = sorted(c.groups) == sorted(map(int, now["Groups"]))
        tb.call("setgroups", len(c.groups), struct.pack(f"<{len(c.groups)}I", *c.groups) or 0,
                what="restore", check=not same)
    tb.call("setresgid", c.gid, c.egid, c.sgid)
    tb.call("setfsgid", c.fsgid, check=False)
    tb.call("setresuid", c.uid, c.euid, c.suid)
    tb.call("setfsuid", c.fsuid, check=False)
    if fixup or c.secbits:
        tb.call("prctl", PR_SET_SECUREBITS, c.secbits, 0, 0, 0, what="securebits")
    # struct __user_cap_header_struct (version 3, this thread), then two
    # __user_cap_data_struct {effective, permitted, inheritable}
    tb.call("capset", struct.pack("<Ii6I", 0x20080522, 0, c.cap_eff[0], c.cap_prm[0],
                                  c.cap_inh[0], c.cap_eff[1], c.cap_prm[1], c.cap_inh[1]),
            At(8), what="restore")
    amb = c.cap_amb[0] | c.cap_amb[1] << 32
    for cap in range(_cap_last() + 1):
        if amb >> cap & 1:
            tb.call("prctl", PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, cap, 0, 0,
                    what=f"ambient cap {cap}")


def _cap_last() -> int:
    with open("/proc/sys/kernel/cap_last_cap") as f:
        return int(f.read())


def _posix_timers(tb, timers) -> None:
    """timer_create with each dumped id (PR_TIMER_CREATE_RESTORE_IDS, Linux
    6.17: the kernel takes the id from *timerid), then timer_settime. After
    the threads exist: a SIGEV_THREAD_ID timer names one."""
    tb.call("prctl", PR_TIMER_CREATE_RESTORE_IDS, 1, 0, 0, 0, what="PR_TIMER_CREATE_RESTORE_IDS")
    for pt in timers:
        # struct sigevent: sigev_value, sigev_signo, sigev_notify, _tid; 64 bytes
        event = struct.pack("<Qiii", pt.sival_ptr, pt.signo, pt.notify, pt.notify_tid)
        tb.call("timer_create", pt.clock_id, event.ljust(64, b"\0"), struct.pack("<i", pt.it_id),
                what=f"posix timer {pt.it_id}")
        if any(pt.value):
            tb.call("timer_settime", pt.it_id, 0, struct.pack("<4q", *pt.interval, *pt.value), 0,
                    what=f"posix timer {pt.it_id}")
    tb.call("prctl", PR_TIMER_CREATE_RESTORE_IDS, 0, 0, 0, 0, what="PR_TIMER_CREATE_RESTORE_IDS")


def _clone_thread(bt, tid: int) -> None:
    """Queue a clone3 in the leader for a new thread with the dumped tid.

    PTRACE_O_TRACECLONE attaches it stopped before it runs a single
    instruction; its registers are set later like the leader's.
    """
    args = struct.pack("<11Q", CLONE_THREAD_FLAGS, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0)
    bt.call("clone3", lambda at: args[:64] + struct.pack("<Q", at + 88) + args[72:]
            + struct.pack("<i", tid), 88, what=f"thread {tid}")


def _thread_signal_state(tb, tgid: int, th: m.ThreadState) -> None:
    """What each thread holds for itself, set from inside that thread."""
    # Every signal blocked until release (then the dumped mask): queued ones
    # and those the restored timers send stay pending with their siginfo,
    # instead of stopping a batch and being sent again without it.
    b.set_sigmask(tb.t.pid, ALL_SIGNALS)
    tb.t.sigmask = th.blk_sigset
    tb.call("sigaltstack", struct.pack("<Qi4xQ", th.ss_sp, th.ss_flags, th.ss_size), 0,
            what="restore")
    tb.call("set_tid_address", th.clear_tid_addr)
    if th.comm:
        tb.call("prctl", PR_SET_NAME, th.comm.encode()[:15] + b"\0", 0, 0, 0,
                what="PR_SET_NAME")
    if th.futex_rla_len:
        tb.call("set_robust_list", th.futex_rla, th.futex_rla_len)
    if th.rseq_abi_pointer:
        tb.call("rseq", th.rseq_abi_pointer, th.rseq_abi_size, 0, th.rseq_signature,
                what="register")
    for info in th.signals_p:
        sig = struct.unpack_from("<i", info)[0]
        tb.call("rt_tgsigqueueinfo", tgid, tb.t.pid, sig, info, what=f"signal {sig}")


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
        # The parent-death signal ctx.spawn set gives way to the dumped one
        # last of all: until the release, an engine killed midway takes every
        # task along. The final registers go back after.
        final = t.regs()
        t.saved = None
        t.checked("prctl", PR_SET_PDEATHSIG, t.pdeath_signal, 0, 0, 0,
                  what="parent-death signal")
        t.set_regs(final)
        for tracee in [t] + t.others:   # nothing runs in the task after this
            if tracee.sigmask is not None:
                b.set_sigmask(tracee.pid, tracee.sigmask)
        t.detach(SIGSTOP if leave_stopped else t.release_signal)


# --- steps -------------------------------------------------------------------

def _move_vdso(bt, vmas, specials, avoid) -> int | None:
    """Move [vvar]..[vdso] where the dump had them, once nothing else but
    the scratch page is mapped; return the address of a `syscall` in the
    moved vdso, if known (_engine_vdso)."""
    ours = {name: (lo, hi) for lo, hi, name in specials}
    theirs = [v for v in vmas if v.status & (m.VMA_AREA_VVAR | m.VMA_AREA_VDSO)]
    if "[vdso]" not in ours or not theirs:
        raise b.TracerError(0, bt.t.pid, "restore without a vdso is not supported")
    lo, hi = min(s for s, _ in ours.values()), max(e for _, e in ours.values())
    dlo, dhi = min(v.start for v in theirs), max(v.end for v in theirs)
    dvdso = next((v.start for v in theirs if v.status & m.VMA_AREA_VDSO), None)
    if dhi - dlo != hi - lo or dvdso - dlo != ours["[vdso]"][0] - lo:
        raise b.TracerError(0, bt.t.pid, f"vdso layout differs from the dump "
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

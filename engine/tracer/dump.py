"""Reading a frozen task: registers, xstate, signal state, VMAs, pages.

What only the task knows (sigactions, brk, clear_tid address, sigaltstack)
comes from syscalls injected at a `syscall` instruction of its own vdso,
writing into a scratch page the tracer maps in the task and unmaps after;
nothing of the task's own memory is changed (DESIGN §5).
"""
from __future__ import annotations

import array
import ctypes
import errno
import mmap
import os
import re
import struct

from engine.tracer import binding as b
from engine.tracer import model as m
from engine.tracer.proc import creds_from_status, proc_status
from engine.tracer.task import Tracee
from engine.tracer.xstate import from_xstate

PAGE = 4096
ERESTARTSYS, ERESTARTNOINTR, ERESTARTNOHAND, ERESTART_RESTARTBLOCK = 512, 513, 514, 516
PR_GET_TID_ADDRESS = 40
PR_GET_PDEATHSIG = 2
ITIMERS = (0, 1, 2)       # ITIMER_REAL, ITIMER_VIRTUAL, ITIMER_PROF: process-wide
PR_GET_SECUREBITS = 27
PM_PRESENT, PM_SWAP, PM_FILE = 1 << 63, 1 << 62, 1 << 61
CHUNK = 64 << 20          # bytes read per process_vm_readv batch
MAP_GROWSDOWN = 0x100
SPECIAL = m.VMA_AREA_VSYSCALL | m.VMA_AREA_VVAR | m.VMA_AREA_VDSO
PTRACE_O_SUSPEND_SECCOMP = 1 << 21


def zombie_status(pid: int) -> int | None:
    """The wait status of a zombie (as waitpid reports it), None if alive."""
    stat = _stat(pid)
    return int(stat[52 - 3]) if stat[0] == "Z" else None


def freeze(pid: int, interrupted: frozenset = frozenset()) -> Tracee:
    """Seize and stop every thread of the task; registers kept as they were.
    `interrupted`: tids the caller seized and interrupted already.

    Threads still running may start more, so /proc/PID/task is read again
    until every thread listed is ours.
    """
    stopped = _stat(pid)[0] == "T"         # group-stopped (SIGSTOP) before we came
    leader = Tracee.seize(pid, pid in interrupted)
    leader.was_stopped = stopped
    try:
        _suspend_seccomp(leader)
        seen = {pid}
        while True:
            new = [t for t in sorted(int(x) for x in os.listdir(f"/proc/{pid}/task"))
                   if t not in seen]
            if not new:
                return leader
            for tid in new:
                seen.add(tid)
                try:
                    leader.others.append(Tracee.seize(tid, tid in interrupted))
                except b.TracerError as e:
                    if e.errno != errno.ESRCH:    # the thread exited meanwhile
                        raise
                    continue
                _suspend_seccomp(leader.others[-1])
    except BaseException:
        leader.detach()
        raise


def _suspend_seccomp(t: Tracee) -> None:
    """A thread under seccomp (strict mode or filters) runs the syscalls the
    dump injects unfiltered (PTRACE_O_SUSPEND_SECCOMP, as CRIU's compel
    does): a filter may kill or fail them. Until the detach; the option
    needs CAP_SYS_ADMIN, without which the dump is refused."""
    with open(f"/proc/{t.pid}/status") as f:
        mode = next((line.split()[1] for line in f if line.startswith("Seccomp:")), "0")
    if mode == "0":
        return
    try:
        b.ptrace(b.PTRACE_SETOPTIONS, t.pid, 0, PTRACE_O_SUSPEND_SECCOMP,
                 "PTRACE_O_SUSPEND_SECCOMP")
    except b.TracerError as e:
        if e.errno != errno.EPERM:
            raise
        raise b.NotSupportedError(t.pid, f"seccomp (mode {mode}) without CAP_SYS_ADMIN to "
                                         "suspend it while the dump runs") from e


def collect_task(t: Tracee) -> m.TaskState:
    """Everything of the frozen task but its pages, as plain data.

    On failure the task is let go exactly as it was (its registers put
    back, signals that arrived meanwhile re-sent) and the error raised.
    """
    try:
        return _collect(t)
    except BaseException:
        t.detach()
        raise


def _collect(t: Tracee) -> m.TaskState:
    pid = t.pid
    stat = _stat(pid)
    thread = _thread_state(t, pid)
    scratch = t.checked("mmap", 0, PAGE, 3, 0x22, -1, 0, what="scratch page")
    try:
        sigactions = []
        for sig in range(1, 65):
            # SIGKILL/SIGSTOP give EINVAL: they have no action (criu dump_sigact)
            if t.syscall("rt_sigaction", sig, 0, scratch, 8) == 0:
                h, fl, rest, mask = struct.unpack("<4Q", t.read(scratch, 32))
                sigactions.append(m.SigAction(h, fl, rest, mask))
            else:
                sigactions.append(m.SigAction())
        itimers = []
        for which in ITIMERS:
            t.checked("getitimer", which, scratch, what=f"itimer {which}")
            itimers.append(struct.unpack("<4q", t.read(scratch, 32)))
        posix_timers = []
        for it_id, clock_id, signo, sival_ptr, notify, tid in _posix_timers(pid):
            t.checked("timer_gettime", it_id, scratch, what=f"posix timer {it_id}")
            isec, insec, vsec, vnsec = struct.unpack("<4q", t.read(scratch, 32))
            overrun = t.checked("timer_getoverrun", it_id, what=f"posix timer {it_id}")
            posix_timers.append(m.PosixTimer(it_id, clock_id, signo, notify, sival_ptr, tid,
                                             (isec, insec), (vsec, vnsec), overrun))
        threads = [thread] + [_thread_state(o, o.pid) for o in t.others]
        for tracee, th in zip([t] + t.others, threads):
            # Per-thread values only the thread itself can ask for.
            tracee.checked("prctl", PR_GET_TID_ADDRESS, scratch, 0, 0, 0)
            (th.clear_tid_addr,) = struct.unpack("<Q", tracee.read(scratch, 8))
            tracee.checked("sigaltstack", 0, scratch)
            th.ss_sp, th.ss_size, th.ss_flags = _stack_t(tracee.read(scratch, 24))
            tracee.checked("prctl", PR_GET_PDEATHSIG, scratch, 0, 0, 0)
            (th.pdeath_sig,) = struct.unpack("<i", tracee.read(scratch, 4))
        brk = t.checked("brk", 0)
        secbits = t.checked("prctl", PR_GET_SECUREBITS, 0, 0, 0, 0)
    finally:
        t.syscall("munmap", scratch, PAGE)
    mm = _mm_state(pid, stat, brk, t.saved.sp)
    return m.TaskState(pid=pid, comm=_read(f"/proc/{pid}/comm").strip(),
                       personality=int(_read(f"/proc/{pid}/personality"), 16),
                       flags=int(stat[9 - 3]), exit_signal=int(stat[38 - 3]), mm=mm,
                       sigactions=sigactions, threads=threads, creds=_creds(pid, secbits),
                       itimers=itimers, posix_timers=posix_timers, rlimits=_rlimits(pid),
                       oom_score_adj=int(_read(f"/proc/{pid}/oom_score_adj")),
                       signals_s=b.peek_siginfo(pid, shared=True),
                       stopped=t.was_stopped)


def _stack_t(raw: bytes) -> tuple[int, int, int]:
    sp, flags, size = struct.unpack("<Qi4xQ", raw)
    return sp, size, flags


def _thread_state(t: Tracee, tid: int) -> m.ThreadState:
    regs = b.UserRegs.from_buffer_copy(t.saved)
    ax = ctypes.c_int64(regs.ax).value
    if ctypes.c_int64(regs.orig_ax).value >= 0:
        # Stopped inside a syscall: make it restart or fail as the kernel
        # would on a signal (criu/arch/x86/crtools.c).
        if ax == -ERESTART_RESTARTBLOCK:
            regs.ax = ctypes.c_uint64(-errno.EINTR).value
        elif ax in (-ERESTARTSYS, -ERESTARTNOINTR, -ERESTARTNOHAND):
            regs.ax = regs.orig_ax
            regs.ip -= 2
    fp = from_xstate(b.get_xstate(tid))
    head, length = ctypes.c_uint64(), ctypes.c_size_t()
    if b.raw_syscall("get_robust_list", tid, ctypes.byref(head), ctypes.byref(length)):
        raise b.TracerError(ctypes.get_errno(), tid, "get_robust_list")
    rseq = b.get_rseq(tid)
    state = m.ThreadState(tid=tid, regs=m.Regs.from_user_regs(regs), fpregs=fp,
                          blk_sigset=b.get_sigmask(tid), futex_rla=head.value,
                          futex_rla_len=length.value, rseq_abi_pointer=rseq[0],
                          rseq_abi_size=rseq[1], rseq_signature=rseq[2],
                          comm=_read(f"/proc/{tid}/comm").strip(),
                          signals_p=b.peek_siginfo(tid, shared=False))
    return state


def _stat(pid: int) -> list[str]:
    # fields after "(comm)"; index 0 is field 3 (state)
    return _read(f"/proc/{pid}/stat").rsplit(")", 1)[1].split()


# /proc/PID/timers names sigev_notify without SIGEV_THREAD_ID, then "tid" for it.
SIGEV_BY_NAME = {"signal": 0, "none": 1, "thread": 2}


def _posix_timers(pid: int) -> list[tuple[int, int, int, int, int, int]]:
    """(id, clock, signal, sival_ptr, sigev_notify, tid or 0) of each timer
    in /proc/PID/timers (blocks of ID, signal, notify and ClockID lines)."""
    out, fields = [], {}
    for line in _read(f"/proc/{pid}/timers").splitlines():
        name, _, value = line.partition(": ")
        fields[name] = value
        if name != "ClockID":
            continue
        signo, _, ptr = fields["signal"].partition("/")
        how, _, target = fields["notify"].partition("/")
        kind, _, who = target.partition(".")
        notify = SIGEV_BY_NAME[how] | (m.SIGEV_THREAD_ID if kind == "tid" else 0)
        out.append((int(fields["ID"]), int(value), int(signo), int(ptr, 16), notify,
                    int(who) if kind == "tid" else 0))
        fields = {}
    return out


def _rlimits(pid: int) -> list[tuple[int, int]]:
    """(soft, hard) of every RLIMIT_*, in order, from /proc/PID/limits: its
    columns are fixed (a 25-character name), and unlike prlimit() it needs
    no CAP_SYS_RESOURCE for a task of another user."""
    out = []
    for line in _read(f"/proc/{pid}/limits").splitlines()[1:]:
        soft, hard = line[26:].split()[:2]
        out.append(tuple(m.RLIM_INFINITY if v == "unlimited" else int(v) for v in (soft, hard)))
    return out


def _read(path: str) -> str:
    with open(path) as f:
        return f.read()


def _creds(pid: int, secbits: int) -> m.Creds:
    return creds_from_status(proc_status(pid), secbits)


def _mm_state(pid: int, stat: list[str], brk: int, sp: int) -> m.MmState:
    def f(n: int) -> int:                # field n of proc(5)'s /proc/PID/stat
        return int(stat[n - 3])
    auxv_raw = open(f"/proc/{pid}/auxv", "rb").read()
    auxv = list(array.array("Q", auxv_raw))
    try:
        exe = os.readlink(f"/proc/{pid}/exe")
    except OSError:
        exe = None
    return m.MmState(mm_start_code=f(26), mm_end_code=f(27), mm_start_stack=f(28),
                     mm_start_data=f(45), mm_end_data=f(46), mm_start_brk=f(47), mm_brk=brk,
                     mm_arg_start=f(48), mm_arg_end=f(49), mm_env_start=f(50),
                     mm_env_end=f(51), auxv=auxv, exe=exe, vmas=list(_vmas(pid, sp)))


# smaps VmFlags -> mmap flags and madvise bits, as criu/proc_parse.c
# parse_vmflags() reads them (CRIU's madv is a mask of 1 << MADV_*).
VMFLAG_MAP = {"gd": 0x100, "lo": 0x2000, "nr": 0x4000}       # GROWSDOWN LOCKED NORESERVE
VMFLAG_MADV = {"sr": 2, "rr": 1, "dc": 10, "dd": 16, "mg": 12, "hg": 14, "nh": 15, "wf": 18}
VMFLAG_REFUSED = {"io": "VM_IO", "pf": "VM_PFNMAP", "ht": "hugetlb"}


def _vmas(pid: int, sp: int = 0):
    """VMAs from /proc/PID/smaps, classified as CRIU does (criu/proc_parse.c);
    the one holding the stack pointer is the stack (criu mark_stack_vma)."""
    vma = None
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            head = line.split(None, 5)
            if "-" in head[0] and len(head) >= 5 and not head[0].endswith(":"):
                if vma is not None:
                    yield vma
                vma = _vma_from_maps_line(pid, head)
                if vma.start <= sp < vma.end or "[stack]" in line:
                    vma.status |= m.VMA_AREA_STACK
            elif head[0] == "VmFlags:" and vma is not None:
                for flag in line.split()[1:]:
                    vma.flags |= VMFLAG_MAP.get(flag, 0)
                    if flag in VMFLAG_MADV:
                        vma.madv |= 1 << VMFLAG_MADV[flag]
                    if flag in VMFLAG_REFUSED and not vma.status & SPECIAL:
                        raise b.NotSupportedError(pid, f"VMA {vma.start:#x}-{vma.end:#x}: "
                                                       f"a {VMFLAG_REFUSED[flag]} mapping")
    if vma is not None:
        yield vma


def _vma_from_maps_line(pid: int, head) -> m.Vma:
    lo, hi = (int(x, 16) for x in head[0].split("-"))
    perms, offset, inode = head[1], int(head[2], 16), int(head[4])
    name = head[5].strip() if len(head) > 5 else ""
    prot = ((perms[0] == "r") * mmap.PROT_READ | (perms[1] == "w") * mmap.PROT_WRITE
            | (perms[2] == "x") * mmap.PROT_EXEC)
    shared = perms[3] == "s"
    v = m.Vma(start=lo, end=hi, pgoff=offset, prot=prot,
              flags=mmap.MAP_SHARED if shared else mmap.MAP_PRIVATE)
    if name == "[vsyscall]":
        v.status, v.flags = m.VMA_AREA_VSYSCALL | m.VMA_ANON_PRIVATE, v.flags | mmap.MAP_ANONYMOUS
    elif name in ("[vvar]", "[vvar_vclock]"):
        v.status = m.VMA_AREA_REGULAR | m.VMA_ANON_PRIVATE | m.VMA_AREA_VVAR
        v.flags |= mmap.MAP_ANONYMOUS
    elif name == "[vdso]":
        v.status = m.VMA_AREA_REGULAR | m.VMA_AREA_VDSO | m.VMA_ANON_PRIVATE
        v.flags |= mmap.MAP_ANONYMOUS
    elif inode == 0 or name.startswith("[") or name.startswith("/dev/zero") \
            or name.startswith("/SYSV"):
        v.flags |= mmap.MAP_ANONYMOUS
        if not shared:
            v.pgoff = 0           # a shared one keeps its offset in the shmem object
        if shared:
            v.status = m.VMA_AREA_REGULAR | m.VMA_ANON_SHARED
            v.shmid = inode
        else:
            v.status = m.VMA_AREA_REGULAR | m.VMA_ANON_PRIVATE
            if name == "[heap]":
                v.status |= m.VMA_AREA_HEAP
    else:
        # Deleted (a memfd's name always reads so): kept as named, for the
        # plugins to claim (files: a ghost; memfd) or refuse.
        v.path = name
        v.status = m.VMA_AREA_REGULAR | (m.VMA_FILE_SHARED if shared else m.VMA_FILE_PRIVATE)
    return v


def _needs_pages(v: m.Vma) -> bool:
    """vvar/vsyscall have no content of the task's, the vdso is the running
    kernel's, a shared file mapping's content is the file (criu/mem.c)."""
    if v.status & SPECIAL:
        return False
    return not v.status & m.VMA_FILE_SHARED


def dump_pages(t: Tracee, vmas, sink) -> int:
    """Call sink.add(vaddr, memoryview) for every run of pages the task owns;
    return the bytes dumped.

    Runs come from /proc/PID/pagemap (present or swapped; in a private file
    mapping only the anonymous copies). Up to IOV_MAX runs are read with one
    process_vm_readv into a reused CHUNK-byte buffer, so the memoryview is
    valid only during the add() call. On failure the task is let go as it
    was (DESIGN §5) and the error raised.
    """
    pid = t.pid
    total = 0
    buf = None
    try:
        fd = os.open(f"/proc/{pid}/pagemap", os.O_RDONLY)
        try:
            batch: list[tuple[int, int]] = []
            filled = 0
            for vaddr, length, readable in _all_runs(fd, vmas):
                if not readable:
                    # process_vm_readv honours protections (EFAULT on a
                    # PROT_NONE page); /proc/PID/mem reads with FOLL_FORCE,
                    # as CRIU's parasite reads after mprotect (criu/mem.c).
                    total += _read_forced(pid, vaddr, length, sink)
                    continue
                if buf is None:
                    buf = mmap.mmap(-1, CHUNK)
                    base = ctypes.addressof(ctypes.c_char.from_buffer(buf))
                    view = memoryview(buf)
                if filled + length > CHUNK or len(batch) == b.IOV_MAX:
                    total += _flush(pid, base, view, batch, sink)
                    batch, filled = [], 0
                batch.append((vaddr, length))
                filled += length
            total += _flush(pid, base, view, batch, sink) if batch else 0
        finally:
            os.close(fd)
    except BaseException:
        t.detach()
        raise
    finally:
        if buf is not None:
            view.release()
            buf.close()
    return total


def _flush(pid: int, base: int, view: memoryview, batch, sink) -> int:
    pairs, off = [], 0
    for vaddr, length in batch:
        pairs.append((base + off, vaddr, length))
        off += length
    b.read_mem(pid, pairs)
    off = 0
    for vaddr, length in batch:
        with view[off:off + length] as data:
            sink.add(vaddr, data)
        off += length
    return off


def _read_forced(pid: int, vaddr: int, length: int, sink) -> int:
    with open(f"/proc/{pid}/mem", "rb", buffering=0) as mem:
        data = os.pread(mem.fileno(), length, vaddr)
    if len(data) != length:
        raise b.TracerError(errno.EIO, pid, f"reading /proc/{pid}/mem at {vaddr:#x} (short)")
    sink.add(vaddr, memoryview(data))
    return length


def _all_runs(fd: int, vmas):
    """Runs of wanted pages over all VMAs, none longer than CHUNK, with
    whether the task may read them (PROT_READ)."""
    for v in vmas:
        if not _needs_pages(v):
            continue
        readable = bool(v.prot & mmap.PROT_READ)
        for vaddr, length in _present_runs(fd, v):
            while length:
                n = min(length, CHUNK)
                yield vaddr, n, readable
                vaddr, length = vaddr + n, length - n


# The top byte of a pagemap entry holds present (bit 7), swapped (6) and
# file-page/shared-anon (5). translate() maps it to b"1" for a page to dump,
# so runs are found by a regex in C, not by a Python loop per page.
_WANT_ANY = bytes(0x31 if x & 0xC0 else 0x30 for x in range(256))
_WANT_ANON = bytes(0x31 if x & 0xC0 and not x & 0x20 else 0x30 for x in range(256))
_RUN = re.compile(rb"1+")
PAGEMAP_SPAN = 1 << 20          # pages per pagemap read (8 MiB of entries)


def _present_runs(fd: int, v: m.Vma) -> list[tuple[int, int]]:
    # a private file page is ours only once written (an anon COW copy)
    table = _WANT_ANON if v.status & m.VMA_FILE_PRIVATE else _WANT_ANY
    runs: list[tuple[int, int]] = []
    first = v.start // PAGE
    for lo in range(first, v.end // PAGE, PAGEMAP_SPAN):
        n = min(PAGEMAP_SPAN, v.end // PAGE - lo)
        raw = os.pread(fd, n * 8, lo * 8)
        if len(raw) != n * 8:
            raise b.TracerError(errno.EIO, 0, f"reading pagemap at {lo * PAGE:#x} (short)")
        for match in _RUN.finditer(raw[7::8].translate(table)):
            start, length = (lo + match.start()) * PAGE, (match.end() - match.start()) * PAGE
            if runs and runs[-1][0] + runs[-1][1] == start:
                runs[-1] = (runs[-1][0], runs[-1][1] + length)
            else:
                runs.append((start, length))
    return runs

"""Reading a frozen task: registers, xstate, signal state, VMAs, pages.

What only the task knows (sigactions, brk, clear_tid address, sigaltstack)
comes from syscalls injected at a `syscall` instruction of its own vdso,
writing into a scratch page the tracer maps in the task and unmaps after;
nothing of the task's own memory is changed (DESIGN §5).
"""
from __future__ import annotations

import array
import ctypes
import mmap
import os
import struct

from engine.tracer import binding as b
from engine.tracer import model as m
from engine.tracer.task import Tracee
from engine.tracer.xstate import from_xstate

PAGE = 4096
ERESTARTSYS, ERESTARTNOINTR, ERESTARTNOHAND, ERESTART_RESTARTBLOCK = 512, 513, 514, 516
EINTR = 4
PR_GET_TID_ADDRESS = 40
PR_GET_SECUREBITS = 27
PM_PRESENT, PM_SWAP, PM_FILE = 1 << 63, 1 << 62, 1 << 61
CHUNK = 64 << 20          # bytes read per process_vm_readv batch
MAP_GROWSDOWN = 0x100


def zombie_status(pid: int) -> int | None:
    """The wait status of a zombie (as waitpid reports it), None if alive."""
    stat = _stat(pid)
    return int(stat[52 - 3]) if stat[0] == "Z" else None


def freeze(pid: int) -> Tracee:
    """Seize and stop every thread of the task; registers kept as they were.

    Threads still running may start more, so /proc/PID/task is read again
    until every thread listed is ours.
    """
    stopped = _stat(pid)[0] == "T"         # group-stopped (SIGSTOP) before we came
    leader = Tracee.seize(pid)
    leader.was_stopped = stopped
    try:
        seen = {pid}
        while True:
            new = [t for t in sorted(int(x) for x in os.listdir(f"/proc/{pid}/task"))
                   if t not in seen]
            if not new:
                return leader
            for tid in new:
                leader.others.append(Tracee.seize(tid))
                seen.add(tid)
    except BaseException:
        leader.detach()
        raise


def collect_task(t: Tracee) -> m.TaskState:
    pid = t.pid
    stat = _stat(pid)
    thread = _thread_state(t, pid)
    scratch = t.checked("mmap", 0, PAGE, 3, 0x22, -1, 0, what="scratch page")
    try:
        sigactions = []
        for sig in range(1, 65):
            if t.syscall("rt_sigaction", sig, 0, scratch, 8) == 0:
                h, fl, rest, mask = struct.unpack("<4Q", t.read(scratch, 32))
                sigactions.append(m.SigAction(h, fl, rest, mask))
            else:
                sigactions.append(m.SigAction())
        threads = [thread] + [_thread_state(o, o.pid) for o in t.others]
        for tracee, th in zip([t] + t.others, threads):
            # Per-thread values only the thread itself can ask for.
            tracee.checked("prctl", PR_GET_TID_ADDRESS, scratch, 0, 0, 0)
            (th.clear_tid_addr,) = struct.unpack("<Q", tracee.read(scratch, 8))
            tracee.checked("sigaltstack", 0, scratch)
            th.ss_sp, th.ss_size, th.ss_flags = _stack_t(tracee.read(scratch, 24))
        brk = t.checked("brk", 0)
        secbits = t.checked("prctl", PR_GET_SECUREBITS, 0, 0, 0, 0)
    finally:
        t.syscall("munmap", scratch, PAGE)
    mm = _mm_state(pid, stat, brk)
    return m.TaskState(pid=pid, comm=_read(f"/proc/{pid}/comm").strip(),
                       personality=int(_read(f"/proc/{pid}/personality"), 16),
                       flags=int(stat[9 - 3]), exit_signal=int(stat[38 - 3]), mm=mm,
                       sigactions=sigactions, threads=threads, creds=_creds(pid, secbits),
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
            regs.ax = ctypes.c_uint64(-EINTR).value
        elif ax in (-ERESTARTSYS, -ERESTARTNOINTR, -ERESTARTNOHAND):
            regs.ax = regs.orig_ax
            regs.ip -= 2
    fp = from_xstate(b.get_xstate(tid))
    head, length = ctypes.c_uint64(), ctypes.c_size_t()
    b.raw_syscall(b.SYS["get_robust_list"], tid, ctypes.byref(head), ctypes.byref(length))
    rseq = b.get_rseq(tid)
    state = m.ThreadState(tid=tid, regs={n: getattr(regs, n) for n in m.REG_NAMES}, fpregs=fp,
                          blk_sigset=b.get_sigmask(tid), futex_rla=head.value,
                          futex_rla_len=length.value, rseq_abi_pointer=rseq[0],
                          rseq_abi_size=rseq[1], rseq_signature=rseq[2],
                          comm=_read(f"/proc/{tid}/comm").strip(),
                          signals_p=b.peek_siginfo(tid, shared=False))
    return state


def _stat(pid: int) -> list[str]:
    # fields after "(comm)"; index 0 is field 3 (state)
    return _read(f"/proc/{pid}/stat").rsplit(")", 1)[1].split()


def _read(path: str) -> str:
    with open(path) as f:
        return f.read()


def _creds(pid: int, secbits: int) -> m.Creds:
    status = {}
    for line in _read(f"/proc/{pid}/status").splitlines():
        key, _, value = line.partition(":")
        status[key] = value.split()
    uid = [int(x) for x in status["Uid"]]
    gid = [int(x) for x in status["Gid"]]

    def caps(key):
        v = int(status[key][0], 16)
        return [v & 0xFFFFFFFF, v >> 32]
    return m.Creds(uid=uid[0], euid=uid[1], suid=uid[2], fsuid=uid[3],
                   gid=gid[0], egid=gid[1], sgid=gid[2], fsgid=gid[3],
                   cap_inh=caps("CapInh"), cap_prm=caps("CapPrm"), cap_eff=caps("CapEff"),
                   cap_bnd=caps("CapBnd"), cap_amb=caps("CapAmb"), secbits=secbits,
                   groups=[int(g) for g in status.get("Groups", [])])


def _mm_state(pid: int, stat: list[str], brk: int) -> m.MmState:
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
                     mm_env_end=f(51), auxv=auxv, exe=exe, vmas=list(_vmas(pid)))


def _vmas(pid: int):
    """VMAs from /proc/PID/smaps, classified as CRIU does (criu/proc_parse.c)."""
    vma = None
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            head = line.split(None, 5)
            if "-" in head[0] and len(head) >= 5 and not head[0].endswith(":"):
                if vma is not None:
                    yield vma
                vma = _vma_from_maps_line(head)
            elif head[0] == "VmFlags:" and vma is not None:
                flags = line.split()[1:]
                if "gd" in flags:
                    vma.flags |= MAP_GROWSDOWN
    if vma is not None:
        yield vma


def _vma_from_maps_line(head) -> m.Vma:
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
        if name.endswith(" (deleted)"):
            raise b.TracerError(0, 0, f"VMA {lo:#x}-{hi:#x}: mapped file {name} is deleted "
                                      "(not supported yet)")
        v.path = name
        v.status = m.VMA_AREA_REGULAR | (m.VMA_FILE_SHARED if shared else m.VMA_FILE_PRIVATE)
    return v


def _needs_pages(v: m.Vma) -> bool:
    if v.status & (m.VMA_AREA_VSYSCALL | m.VMA_AREA_VVAR | m.VMA_AREA_VDSO):
        return False
    return not v.status & m.VMA_FILE_SHARED


def dump_pages(t: Tracee, vmas, sink) -> int:
    """Write every page the task owns to sink.add(vaddr, data); return bytes."""
    pid = t.pid
    total = 0
    buf = None
    fd = os.open(f"/proc/{pid}/pagemap", os.O_RDONLY)
    try:
        for v in vmas:
            if not _needs_pages(v):
                continue
            runs = _present_runs(fd, v)
            for vaddr, length in runs:
                while length:
                    n = min(length, CHUNK)
                    if buf is None:
                        buf = mmap.mmap(-1, CHUNK)
                    addr = ctypes.addressof(ctypes.c_char.from_buffer(buf))
                    b.read_mem(pid, [(addr, vaddr, n)])
                    sink.add(vaddr, memoryview(buf)[:n])
                    total += n
                    vaddr += n
                    length -= n
    finally:
        os.close(fd)
        if buf is not None:
            buf.close()
    return total


def _present_runs(fd: int, v: m.Vma) -> list[tuple[int, int]]:
    npages = (v.end - v.start) // PAGE
    raw = os.pread(fd, npages * 8, (v.start // PAGE) * 8)
    entries = array.array("Q", raw)
    private_file = bool(v.status & m.VMA_FILE_PRIVATE)
    runs: list[tuple[int, int]] = []
    start = None
    for i, e in enumerate(entries):
        # a private file page is ours only once written (an anon COW copy)
        keep = e & (PM_PRESENT | PM_SWAP) and not (private_file and e & PM_FILE)
        if keep and start is None:
            start = i
        elif not keep and start is not None:
            runs.append((v.start + start * PAGE, (i - start) * PAGE))
            start = None
    if start is not None:
        runs.append((v.start + start * PAGE, (npages - start) * PAGE))
    return runs

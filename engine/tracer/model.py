"""Plain data the tracer produces on dump and consumes on restore.

Field names are CRIU's (core-x86.proto, mm.proto, vma.proto, sa.proto,
rseq.proto), so a plugin converts to and from protobuf by name.
"""
from __future__ import annotations

from typing import NamedTuple

import attrs

# CRIU's VMA status bits (criu/include/image.h)
VMA_AREA_REGULAR = 1 << 0
VMA_AREA_STACK = 1 << 1
VMA_AREA_VSYSCALL = 1 << 2
VMA_AREA_VDSO = 1 << 3
VMA_AREA_HEAP = 1 << 5
VMA_FILE_PRIVATE = 1 << 6
VMA_FILE_SHARED = 1 << 7
VMA_ANON_SHARED = 1 << 8
VMA_ANON_PRIVATE = 1 << 9
VMA_AREA_VVAR = 1 << 12

REG_NAMES = ("r15", "r14", "r13", "r12", "bp", "bx", "r11", "r10", "r9", "r8", "ax", "cx",
             "dx", "si", "di", "orig_ax", "ip", "cs", "flags", "sp", "ss", "fs_base",
             "gs_base", "ds", "es", "fs", "gs")
U64 = (1 << 64) - 1


@attrs.define
class Regs:
    """struct user_regs_struct under user_x86_regs_entry's names, u64 each."""
    r15: int = 0
    r14: int = 0
    r13: int = 0
    r12: int = 0
    bp: int = 0
    bx: int = 0
    r11: int = 0
    r10: int = 0
    r9: int = 0
    r8: int = 0
    ax: int = 0
    cx: int = 0
    dx: int = 0
    si: int = 0
    di: int = 0
    orig_ax: int = 0
    ip: int = 0
    cs: int = 0
    flags: int = 0
    sp: int = 0
    ss: int = 0
    fs_base: int = 0
    gs_base: int = 0
    ds: int = 0
    es: int = 0
    fs: int = 0
    gs: int = 0

    @classmethod
    def from_user_regs(cls, regs) -> "Regs":
        """The registers of a ctypes UserRegs (PTRACE_GETREGS)."""
        return cls(**{n: getattr(regs, n) & U64 for n in REG_NAMES})


@attrs.define
class FpRegs:
    """The xsave area as CRIU splits it (user_x86_fpregs_entry + xsave);
    engine.tracer.xstate converts it to and from the kernel's buffer."""
    cwd: int = 0x37F
    swd: int = 0
    twd: int = 0
    fop: int = 0
    rip: int = 0
    rdp: int = 0
    mxcsr: int = 0x1F80
    mxcsr_mask: int = 0
    st_space: list[int] = attrs.field(factory=lambda: [0] * 32)
    xmm_space: list[int] = attrs.field(factory=lambda: [0] * 64)
    padding: list[int] = attrs.field(factory=lambda: [0] * 24)
    xstate_bv: int = 3
    ymmh_space: list[int] = attrs.field(factory=list)
    opmask_reg: list[int] = attrs.field(factory=list)
    zmm_upper: list[int] = attrs.field(factory=list)
    hi16_zmm: list[int] = attrs.field(factory=list)
    pkru: list[int] = attrs.field(factory=list)           # 2 words, as CRIU (pkru_state)
    bndreg_state: list[int] = attrs.field(factory=list)   # MPX, absent on this CPU
    bndcsr_state: list[int] = attrs.field(factory=list)


@attrs.define
class ThreadState:
    tid: int
    regs: Regs
    fpregs: FpRegs
    blk_sigset: int = 0
    clear_tid_addr: int = 0
    futex_rla: int = 0
    futex_rla_len: int = 0
    rseq_abi_pointer: int = 0
    rseq_abi_size: int = 0
    rseq_signature: int = 0
    ss_sp: int = 0
    ss_size: int = 0
    ss_flags: int = 2                    # SS_DISABLE
    comm: str = ""
    signals_p: list[bytes] = attrs.field(factory=list)   # queued siginfo_t, this thread
    pdeath_sig: int = 0                  # PR_SET_PDEATHSIG: sent when its parent dies


@attrs.define
class SigAction:
    sigaction: int = 0
    flags: int = 0
    restorer: int = 0
    mask: int = 0


@attrs.define
class Vma:
    start: int
    end: int
    pgoff: int = 0
    prot: int = 0
    flags: int = 0
    status: int = 0
    madv: int = 0
    shmid: int = 0
    path: str | None = None


@attrs.define
class MmState:
    mm_start_code: int = 0
    mm_end_code: int = 0
    mm_start_data: int = 0
    mm_end_data: int = 0
    mm_start_stack: int = 0
    mm_start_brk: int = 0
    mm_brk: int = 0
    mm_arg_start: int = 0
    mm_arg_end: int = 0
    mm_env_start: int = 0
    mm_env_end: int = 0
    auxv: list[int] = attrs.field(factory=list)
    exe: str | None = None
    vmas: list[Vma] = attrs.field(factory=list)


@attrs.define
class Creds:
    uid: int = 0
    gid: int = 0
    euid: int = 0
    egid: int = 0
    suid: int = 0
    sgid: int = 0
    fsuid: int = 0
    fsgid: int = 0
    cap_inh: list[int] = attrs.field(factory=lambda: [0, 0])
    cap_prm: list[int] = attrs.field(factory=lambda: [0, 0])
    cap_eff: list[int] = attrs.field(factory=lambda: [0, 0])
    cap_bnd: list[int] = attrs.field(factory=lambda: [0, 0])
    cap_amb: list[int] = attrs.field(factory=lambda: [0, 0])
    secbits: int = 0
    groups: list[int] = attrs.field(factory=list)


SIGEV_THREAD_ID = 4                      # sigev_notify: to one thread (with SIGEV_SIGNAL)
RLIM_INFINITY = (1 << 64) - 1            # as images (u64) and /proc/PID/limits mean it


class PosixTimer(NamedTuple):
    """One timer_create() timer, as /proc/PID/timers and timer_gettime show it."""
    it_id: int
    clock_id: int
    signo: int
    notify: int                          # SIGEV_SIGNAL 0, _NONE 1, | SIGEV_THREAD_ID 4
    sival_ptr: int
    notify_tid: int                      # with SIGEV_THREAD_ID: the thread signalled
    interval: tuple[int, int]            # (s, ns)
    value: tuple[int, int]               # (s, ns) left; (0, 0) disarmed
    overrun: int = 0


@attrs.define
class TaskState:
    pid: int
    comm: str
    personality: int
    flags: int
    exit_signal: int
    mm: MmState
    sigactions: list[SigAction]          # index 0 is signal 1
    threads: list[ThreadState]
    creds: Creds
    oom_score_adj: int = 0
    loginuid: int = 0xFFFFFFFF
    signals_s: list[bytes] = attrs.field(factory=list)   # queued siginfo_t, whole process
    stopped: bool = False                # in group-stop (SIGSTOP) when dumped
    # ITIMER_REAL, _VIRTUAL, _PROF: (interval s, us, value s, us) each; [] none
    itimers: list[tuple[int, int, int, int]] = attrs.field(factory=list)
    posix_timers: list[PosixTimer] = attrs.field(factory=list)
    rlimits: list[tuple[int, int]] = attrs.field(factory=list)   # (soft, hard) by RLIMIT_*

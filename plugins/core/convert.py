"""core_entry (CRIU's protobuf) <-> the tracer's TaskState / ThreadState, by name.

The dump writes every field of the task core here; the restore reads the
registers back (thread_state), the other task-state plugins their own fields.
"""
from __future__ import annotations

from engine.images import ImageError
from engine.tracer import model as m

TASK_ALIVE, TASK_DEAD, TASK_STOPPED = 1, 2, 3     # CRIU's task_state values
FP_LEGACY = ("cwd", "swd", "twd", "fop", "rip", "rdp", "mxcsr", "mxcsr_mask",
             "st_space", "xmm_space", "padding")
FP_XSAVE = ("ymmh_space", "opmask_reg", "zmm_upper", "hi16_zmm", "pkru")
ITIMER_NAMES = ("real", "virt", "prof")    # task_timers_entry, in ITIMER_* order
# Segment selectors a native x86_64 task may hold (arch/x86/include/asm/
# segment.h): __USER_CS and __USER_DS; 0 or __USER_DS in ds/es; fs/gs may
# also hold a TLS slot's (set_thread_area: GDT 12-14, RPL 3). Anything else
# is a 32-bit code segment (cs 0x23: the task would run x86_64 code as i386
# and the tracer's injected syscalls never return, issue 20), an LDT entry
# (not restored) or one the kernel refuses (PTRACE_SETREGS: EIO).
USER_CS, USER_DS = 0x33, 0x2B
TLS_SELECTORS = (12 * 8 + 3, 13 * 8 + 3, 14 * 8 + 3)
SELECTORS = {"cs": (USER_CS,), "ss": (USER_DS,), "ds": (0, USER_DS), "es": (0, USER_DS),
             "fs": (0, USER_DS, *TLS_SELECTORS), "gs": (0, USER_DS, *TLS_SELECTORS)}
TASK_SIZE_MAX = (1 << 47) - 4096      # fs_base/gs_base at or past it: PTRACE_SETREGS EIO
VSYSCALL = range(0xFFFFFFFFFF600000, 0xFFFFFFFFFF601000)   # the one page above it code runs in


def core_entry(state: m.TaskState, th: m.ThreadState, leader: bool):
    from engine.images.proto import core_pb2
    core = core_pb2.core_entry(mtype=core_pb2.core_entry.X86_64)
    ti = core.thread_info
    ti.clear_tid_addr = th.clear_tid_addr
    for name in m.REG_NAMES:
        setattr(ti.gpregs, name, getattr(th.regs, name))
    ti.gpregs.mode = core_pb2.NATIVE
    fp = th.fpregs
    for name in FP_LEGACY:
        value = getattr(fp, name)
        if isinstance(value, list):
            getattr(ti.fpregs, name).extend(value)
        else:
            setattr(ti.fpregs, name, value)
    ti.fpregs.xsave.xstate_bv = fp.xstate_bv
    for name in FP_XSAVE:
        getattr(ti.fpregs.xsave, name).extend(getattr(fp, name))
    if leader:
        tc = core.tc
        tc.task_state = TASK_STOPPED if state.stopped else TASK_ALIVE
        tc.exit_code = 0
        tc.personality, tc.flags = state.personality, state.flags
        tc.blk_sigset, tc.comm = th.blk_sigset, state.comm
        tc.loginuid, tc.oom_score_adj = state.loginuid, state.oom_score_adj
        for info in state.signals_s:
            tc.signals_s.signals.add(siginfo=info)
        # CRIU fills its itimer_entry as it_interval (i) and it_value (v).
        for name, timer in zip(ITIMER_NAMES, state.itimers):
            e = getattr(tc.timers, name)
            e.isec, e.iusec, e.vsec, e.vusec = timer
        for soft, hard in state.rlimits:
            tc.rlimits.rlimits.add(cur=soft, max=hard)
        for pt in state.posix_timers:
            e = tc.timers.posix.add(it_id=pt.it_id, clock_id=pt.clock_id, si_signo=pt.signo,
                                    it_sigev_notify=pt.notify, sival_ptr=pt.sival_ptr,
                                    overrun=pt.overrun)
            (e.isec, e.insec), (e.vsec, e.vnsec) = pt.interval, pt.value
            if pt.notify & m.SIGEV_THREAD_ID:
                e.notify_thread_id = pt.notify_tid
        # CRIU writes 62 entries: SIGKILL and SIGSTOP have no action.
        for sig, sa in enumerate(state.sigactions, 1):
            if sig in (9, 19):
                continue
            tc.sigactions.add(sigaction=sa.sigaction, flags=sa.flags, restorer=sa.restorer,
                              mask=sa.mask, compat_sigaction=False)
    tcore = core.thread_core
    tcore.futex_rla, tcore.futex_rla_len = th.futex_rla, th.futex_rla_len
    tcore.blk_sigset, tcore.comm = th.blk_sigset, th.comm
    tcore.sas.ss_sp, tcore.sas.ss_size, tcore.sas.ss_flags = th.ss_sp, th.ss_size, th.ss_flags
    for info in th.signals_p:
        tcore.signals_p.signals.add(siginfo=info)
    if th.pdeath_sig:
        tcore.pdeath_sig = th.pdeath_sig
    if th.rseq_abi_pointer:
        r = tcore.rseq_entry
        r.rseq_abi_pointer, r.rseq_abi_size = th.rseq_abi_pointer, th.rseq_abi_size
        r.signature = th.rseq_signature
    c = state.creds
    cr = tcore.creds
    for name in ("uid", "gid", "euid", "egid", "suid", "sgid", "fsuid", "fsgid", "secbits"):
        setattr(cr, name, getattr(c, name))
    for name in ("cap_inh", "cap_prm", "cap_eff", "cap_bnd", "cap_amb", "groups"):
        getattr(cr, name).extend(getattr(c, name))
    return core


def zombie_core(pid: int, status: int):
    """A dead task: only its exit status (CRIU writes the same for zombies)."""
    from engine.images.proto import core_pb2
    core = core_pb2.core_entry(mtype=core_pb2.core_entry.X86_64)
    tc = core.tc
    tc.task_state, tc.exit_code, tc.personality, tc.flags, tc.blk_sigset = \
        TASK_DEAD, status, 0, 0, 0
    tc.comm = _comm(pid)
    return core


def _comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return ""


def thread_state(core, tid: int, image: str) -> m.ThreadState:
    """A thread's registers and FPU/xsave state (what else its image holds
    is the other task-state plugins')."""
    ti = core.thread_info
    if not core.HasField("thread_info"):
        raise ImageError(image, "thread_info missing")
    fp = m.FpRegs(**{n: (list(getattr(ti.fpregs, n)) if n in ("st_space", "xmm_space", "padding")
                         else getattr(ti.fpregs, n)) for n in FP_LEGACY})
    if ti.fpregs.HasField("xsave"):
        fp.xstate_bv = ti.fpregs.xsave.xstate_bv
        for name in FP_XSAVE:
            setattr(fp, name, list(getattr(ti.fpregs.xsave, name)))
    if len(fp.st_space) != 32 or len(fp.xmm_space) != 64:
        raise ImageError(image, f"thread_info.fpregs: st_space/xmm_space have "
                                f"{len(fp.st_space)}/{len(fp.xmm_space)} words, want 32/64")
    gp = ti.gpregs          # Regs' fields are REG_NAMES, in order; u64 in the image
    _check_gpregs(gp, image)
    return m.ThreadState(tid=tid, regs=m.Regs(*[getattr(gp, n) for n in m.REG_NAMES]),
                         fpregs=fp)


def _check_gpregs(gp, image: str) -> None:
    """Refuse register values the kernel will not take, or that would make
    the task run as something else than a native x86_64 task."""
    for name, allowed in SELECTORS.items():
        value = getattr(gp, name)
        if value not in allowed:
            want = " or ".join(f"{v:#x}" for v in allowed)
            raise ImageError(image, f"thread_info.gpregs.{name} {value:#x} is not a native "
                                    f"x86_64 selector ({want})")
    if gp.ip >= TASK_SIZE_MAX and gp.ip not in VSYSCALL:
        raise ImageError(image, f"thread_info.gpregs.ip {gp.ip:#x} is past the end "
                                f"of user space ({TASK_SIZE_MAX:#x})")
    for name in ("fs_base", "gs_base"):
        value = getattr(gp, name)
        if value >= TASK_SIZE_MAX:
            raise ImageError(image, f"thread_info.gpregs.{name} {value:#x} is past the end "
                                    f"of user space ({TASK_SIZE_MAX:#x})")

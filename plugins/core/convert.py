"""core_entry (CRIU's protobuf) <-> the tracer's TaskState / ThreadState, by name."""
from __future__ import annotations

from engine.tracer import model as m

TASK_ALIVE, TASK_DEAD, TASK_STOPPED = 1, 2, 3     # CRIU's task_state values
FP_LEGACY = ("cwd", "swd", "twd", "fop", "rip", "rdp", "mxcsr", "mxcsr_mask",
             "st_space", "xmm_space", "padding")
FP_XSAVE = ("ymmh_space", "opmask_reg", "zmm_upper", "hi16_zmm", "pkru")
ITIMER_NAMES = ("real", "virt", "prof")    # task_timers_entry, in ITIMER_* order
SIGEV_NOTIFY = (0, 1, 4)                   # SIGNAL, NONE, THREAD_ID (SIGEV_THREAD is libc's)
CLOCKS = range(12)                         # CLOCK_REALTIME .. CLOCK_TAI
RLIM_NLIMITS = 16


def core_entry(state: m.TaskState, th: m.ThreadState, leader: bool):
    from engine.images.proto import core_pb2
    core = core_pb2.core_entry(mtype=core_pb2.core_entry.X86_64)
    ti = core.thread_info
    ti.clear_tid_addr = th.clear_tid_addr
    for name in m.REG_NAMES:
        setattr(ti.gpregs, name, th.regs[name])
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


def creds(core, image: str) -> m.Creds | None:
    """The task's credentials, or None when the image holds none."""
    if not core.thread_core.HasField("creds"):
        return None
    cr = core.thread_core.creds
    out = m.Creds(**{n: getattr(cr, n) for n in ("uid", "gid", "euid", "egid", "suid", "sgid",
                                                 "fsuid", "fsgid", "secbits")})
    for name in ("cap_inh", "cap_prm", "cap_eff", "cap_bnd", "cap_amb"):
        words = list(getattr(cr, name)) or [0, 0]
        if len(words) != 2:
            raise ValueError(f"{image}: thread_core.creds.{name} has {len(words)} words, want 2")
        setattr(out, name, words)
    out.groups = list(cr.groups)
    return out


def creds_in_userns(c: m.Creds, pid: int, image: str) -> m.Creds:
    """Images hold ids as the dumping engine saw them; a task in another user
    namespace sets them as that namespace sees them (its maps, read from
    here, go from its ids to ours). Where setgroups is denied the groups
    were set before the task entered it (plugins/userns): None, not set."""
    import os

    import attrs
    if os.stat(f"/proc/{pid}/ns/user").st_ino == os.stat("/proc/self/ns/user").st_ino:
        return c
    maps = {}
    for kind in ("uid", "gid"):
        with open(f"/proc/{pid}/{kind}_map") as f:
            maps[kind] = [tuple(map(int, line.split())) for line in f if line.strip()]

    def inside(kind, name, value):
        for first, lower, count in maps[kind]:
            if lower <= value < lower + count:
                return first + value - lower
        raise ValueError(f"{image}: thread_core.creds.{name} {value} is not mapped "
                         f"in the user namespace of task {pid}")
    out = attrs.evolve(c, **{n: inside("gid" if "gid" in n else "uid", n, getattr(c, n))
                             for n in ("uid", "gid", "euid", "egid", "suid", "sgid",
                                       "fsuid", "fsgid")})
    with open(f"/proc/{pid}/setgroups") as f:
        deny = f.read().strip() == "deny"
    out.groups = None if deny else [inside("gid", "groups", g) for g in c.groups]
    return out


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
    ti = core.thread_info
    if not core.HasField("thread_info"):
        raise ValueError(f"{image}: thread_info missing")
    fp = m.FpRegs(**{n: (list(getattr(ti.fpregs, n)) if n in ("st_space", "xmm_space", "padding")
                         else getattr(ti.fpregs, n)) for n in FP_LEGACY})
    if ti.fpregs.HasField("xsave"):
        fp.xstate_bv = ti.fpregs.xsave.xstate_bv
        for name in FP_XSAVE:
            setattr(fp, name, list(getattr(ti.fpregs.xsave, name)))
    if len(fp.st_space) != 32 or len(fp.xmm_space) != 64:
        raise ValueError(f"{image}: thread_info.fpregs: st_space/xmm_space have "
                         f"{len(fp.st_space)}/{len(fp.xmm_space)} words, want 32/64")
    tc = core.thread_core
    gp = ti.gpregs          # Regs' fields are REG_NAMES, in order; u64 in the image
    th = m.ThreadState(tid=tid, regs=m.Regs(*[getattr(gp, n) for n in m.REG_NAMES]),
                       fpregs=fp, clear_tid_addr=ti.clear_tid_addr,
                       futex_rla=tc.futex_rla, futex_rla_len=tc.futex_rla_len)
    # The sigmask lives in thread_core (per thread) or, in older images, tc.
    th.blk_sigset = tc.blk_sigset if tc.HasField("blk_sigset") else core.tc.blk_sigset
    if tc.HasField("sas"):
        th.ss_sp, th.ss_size, th.ss_flags = tc.sas.ss_sp, tc.sas.ss_size, tc.sas.ss_flags
    if tc.HasField("rseq_entry"):
        r = tc.rseq_entry
        th.rseq_abi_pointer, th.rseq_abi_size = r.rseq_abi_pointer, r.rseq_abi_size
        th.rseq_signature = r.signature
    th.comm = tc.comm or core.tc.comm
    th.signals_p = _siginfos(tc.signals_p, image, "thread_core.signals_p")
    if not 0 <= tc.pdeath_sig <= 64:
        raise ValueError(f"{image}: thread_core.pdeath_sig {tc.pdeath_sig} is not a signal")
    th.pdeath_sig = tc.pdeath_sig
    return th


def itimers(core, image: str) -> list[tuple[int, int, int, int]]:
    """tc.timers as (interval s, us, value s, us) per ITIMER_*; [] when absent."""
    if not core.tc.HasField("timers"):
        return []
    out = []
    for name in ITIMER_NAMES:
        e = getattr(core.tc.timers, name)
        for field in ("isec", "iusec", "vsec", "vusec"):
            value = getattr(e, field)
            if value >= (1_000_000 if field.endswith("usec") else 1 << 63):
                raise ValueError(f"{image}: tc.timers.{name}.{field} {value} is out of range")
        out.append((e.isec, e.iusec, e.vsec, e.vusec))
    return out


def rlimits(core, image: str) -> list[tuple[int, int]]:
    """tc.rlimits as (soft, hard) by RLIMIT_*; [] when absent. A soft limit
    above its hard one is refused, as setrlimit would."""
    out = []
    for i, r in enumerate(core.tc.rlimits.rlimits):
        if r.cur > r.max:
            raise ValueError(f"{image}: tc.rlimits.rlimits[{i}]: cur {r.cur} is above max {r.max}")
        out.append((r.cur, r.max))
    if len(out) > RLIM_NLIMITS:
        raise ValueError(f"{image}: tc.rlimits has {len(out)} entries, this kernel {RLIM_NLIMITS}")
    return out


def posix_timers(core, image: str, tids) -> list[m.PosixTimer]:
    """tc.timers.posix, checked: what timer_create would refuse is refused
    now, before anything starts, naming the entry."""
    if not core.tc.HasField("timers"):
        return []
    out = []
    for i, e in enumerate(core.tc.timers.posix):
        where = f"{image}: tc.timers.posix[{i}]"
        if e.it_id >= 1 << 31:
            raise ValueError(f"{where}: it_id {e.it_id} is out of range")
        if e.clock_id not in CLOCKS:
            raise ValueError(f"{where}: clock_id {e.clock_id} is not a supported clock")
        if e.it_sigev_notify not in SIGEV_NOTIFY:
            raise ValueError(f"{where}: it_sigev_notify {e.it_sigev_notify} is not supported")
        if e.si_signo > 64 or (e.it_sigev_notify != 1 and not e.si_signo):
            raise ValueError(f"{where}: si_signo {e.si_signo} is not a signal")
        if e.insec >= 1_000_000_000 or e.vnsec >= 1_000_000_000 or max(e.isec, e.vsec) >> 63:
            raise ValueError(f"{where}: isec/insec/vsec/vnsec {e.isec}/{e.insec}/{e.vsec}/"
                             f"{e.vnsec} are out of range")
        tid = e.notify_thread_id if e.it_sigev_notify & m.SIGEV_THREAD_ID else 0
        if e.it_sigev_notify & m.SIGEV_THREAD_ID and tid not in tids:
            raise ValueError(f"{where}: notify_thread_id {tid} is not a thread of the task")
        out.append(m.PosixTimer(e.it_id, e.clock_id, e.si_signo, e.it_sigev_notify,
                                e.sival_ptr, tid, (e.isec, e.insec), (e.vsec, e.vnsec),
                                e.overrun))
    return out


def shared_signals(core, image: str) -> list[bytes]:
    return _siginfos(core.tc.signals_s, image, "tc.signals_s")


def _siginfos(queue, image: str, field: str) -> list[bytes]:
    out = []
    for i, s in enumerate(queue.signals):
        if len(s.siginfo) != 128:
            raise ValueError(f"{image}: {field}[{i}]: siginfo of {len(s.siginfo)} bytes, want 128")
        out.append(bytes(s.siginfo))
    return out


def sigactions(core, image: str) -> list[m.SigAction]:
    sas = core.tc.sigactions
    if len(sas) not in (0, 62, 64):
        raise ValueError(f"{image}: tc.sigactions has {len(sas)} entries, want 64 or 62")
    out = [m.SigAction(sa.sigaction, sa.flags, sa.restorer, sa.mask) for sa in sas]
    if len(out) == 62:
        # CRIU skips SIGKILL and SIGSTOP (criu/cr-dump.c dump_sigact).
        out.insert(8, m.SigAction())
        out.insert(18, m.SigAction())
    return out + [m.SigAction()] * (64 - len(out))

"""fates: every piece of a task's kernel state is restored, refused or dropped on purpose.

The ledger (plugins/fates/ledger.py, issue 15) lists every kind of state a
task can hold, each in one of three lists: restored (by the plugin named),
refused at dump, or dropped on purpose with the reason.

Dump: for every frozen task, before the other plugins write its images,
this plugin refuses what the ledger says it refuses and the task holds, in
one line naming the task and the state ("task 1234: I/O priority (class
2, level 7): not supported yet"); the engine then lets the tree go untouched.
What nothing restores comes back as the engine's own value (a restored task
is a fork of it), so a per-task attribute is refused when it differs from
the dumping engine's: sessionid, resctrl group, LSM label, cgroup
namespace (plugins sched, oom, loginuid and mmflags restore
scheduling, affinity, timer slack, oom_score_adj, login uid, coredump
filter, THP and dumpable; plugins.file_locks the file locks;
plugins.cgroup the cgroups, plugins.timens time namespaces). What only the task can
ask (prctl: TSC, machine-check policy, I/O flusher, speculation control,
MDWE, KSM) is asked by remote syscalls in the leader; other threads are
checked through their /proc status (speculation) and scheduling (uclamp,
core scheduling cookie). plugins.seccomp restores seccomp and no_new_privs.
Restore: nothing (the plugin owns no image). Essential: disabling it would
drop the refusals silently.
"""
from __future__ import annotations

import logging
import os

from engine import hookimpl
from engine.stash import StashKey
from plugins.fates import ledger

log = logging.getLogger("engine.plugins.fates")

# The states this plugin refuses: a check whose state the ledger no longer
# lists as refused here (a plugin restores it now) stays quiet.
REFUSES = {f.what for _, _, f in ledger.every_fate() if f.fate == "refused" and f.by == "fates"}

PAGE = 4096
PR_GET_TSC, PR_MCE_KILL_GET = 25, 34
PR_GET_SPECULATION_CTRL, PR_GET_IO_FLUSHER = 52, 58
PR_SCHED_CORE, PR_SCHED_CORE_GET = 62, 0
PR_GET_MDWE, PR_GET_MEMORY_MERGE = 66, 68
PR_TIMER_CREATE_RESTORE_IDS, PR_TIMER_CREATE_RESTORE_IDS_GET = 77, 2
SPECULATION_KINDS = (0, 1, 2)          # PR_SPEC_STORE_BYPASS, _INDIRECT_BRANCH, _L1D_FLUSH
PTRACE_GET_SYSCALL_USER_DISPATCH_CONFIG = 0x4211
PIDTYPE_PID = 0
# Not in engine/libc.SYS (x86-64 numbers, arch/x86/entry/syscalls/syscall_64.tbl)
SYS_IOPRIO_GET, IOPRIO_WHO_PROCESS = 252, 1
IOPRIO_DEFAULT = 0                      # IOPRIO_CLASS_NONE: follows nice
SYSVIPC = ("shm", "sem", "msg")
# /proc/PID/status keys compared with the engine's, per thread: state -> keys
STATUS_LIKE_ENGINE = {
    "tagged addresses (LAM, ARCH_ENABLE_TAGGED_ADDR)": ("untag_mask",),
    "speculation control (PR_SET_SPECULATION_CTRL)": ("Speculation_Store_Bypass",
                                                      "SpeculationIndirectBranch"),
    "x86 thread features (shadow stack)": ("x86_Thread_features",
                                           "x86_Thread_features_locked"),
}
# /proc/PID files compared with the engine's: state -> file
PROC_LIKE_ENGINE = {
    "personality": "personality", "audit session id": "sessionid",
    "resctrl group": "cpu_resctrl_groups", "LSM label": "attr/current",
}
NS_LIKE_ENGINE = {"cgroup namespace": ("cgroup",)}


class Engine:
    """The dumping engine's own values (a restored task would inherit them)
    and the tree-wide facts read once per dump."""

    def __init__(self):
        self.status = _status("self")
        self.proc = {what: _read_or_none(f"/proc/self/{name}")
                     for what, name in PROC_LIKE_ENGINE.items()}
        self.ns = {kind: _ns_inode("self", kind) for kinds in NS_LIKE_ENGINE.values()
                   for kind in kinds}
        self.prctl = _prctls(lambda *args: _local_prctl(*args))
        self.uclamp = _uclamp("self")
        self.sched_core = _sched_core(os.getpid())
        self.ipc_ns_checked: set[int] = {_ns_inode("self", "ipc")}


_ENGINE: StashKey[Engine] = StashKey()


# --- dump ----------------------------------------------------------------

@hookimpl
def engine_dump_task(ctx, task):
    if task.zombie is not None:
        return               # a zombie holds nothing but its exit status
    engine = ctx.stash.get(_ENGINE, None)
    if engine is None:
        engine = ctx.stash[_ENGINE] = Engine()
    pid = task.pid
    tids = [t.tid for t in task.state.threads] or [pid]
    for tid in tids:
        status = _status(pid if tid == pid else f"{pid}/task/{tid}")
        who = pid if tid == pid else f"{pid} (thread {tid})"
        _check_status(who, status, engine)
        _check_user_dispatch(who, tid)
        if engine.sched_core is not None and _sched_core(tid) != engine.sched_core:
            _refuse(who, "core scheduling cookie (PR_SCHED_CORE)")
        if engine.uclamp and _uclamp(tid) != engine.uclamp:
            _refuse(who, "utilization clamp", f"{_uclamp(tid)}, the engine's {engine.uclamp}")
    _check_proc_files(pid, engine)
    _check_maps(pid)
    _check_prctls(pid, task.tracee, engine)
    _check_sysvipc(pid, engine)


# --- checks -----------------------------------------------------------------------

def _refuse(who, what: str, detail: str = "") -> None:
    if what not in REFUSES:
        return               # the ledger says another plugin takes it now
    detail = f" ({detail})" if detail else ""
    raise ValueError(f"task {who}: {what}{detail}: not supported yet")


def _check_status(who, status: dict[str, str], engine: Engine) -> None:
    if status.get("VmPin", "0 kB") != "0 kB":
        _refuse(who, "pinned pages (VmPin)", status["VmPin"])
    if status.get("Kthread", "0") != "0":
        _refuse(who, "a kernel thread")
    for what, keys in STATUS_LIKE_ENGINE.items():
        for key in keys:
            if status.get(key) != engine.status.get(key):
                _refuse(who, what, f"{key} {status.get(key)}, the engine's {engine.status.get(key)}")


def _check_user_dispatch(who, tid: int) -> None:
    import ctypes
    from engine import libc
    config = (ctypes.c_uint64 * 4)()
    if libc.ptrace(PTRACE_GET_SYSCALL_USER_DISPATCH_CONFIG, tid, ctypes.sizeof(config),
                   ctypes.addressof(config)) == 0 and config[0]:
        _refuse(who, "syscall user dispatch", f"mode {config[0]}")


def _check_proc_files(pid: int, engine: Engine) -> None:
    for what, name in PROC_LIKE_ENGINE.items():
        ours = engine.proc[what]
        if ours is None:
            continue             # not on this kernel (attr/current without an LSM)
        theirs = _read_or_none(f"/proc/{pid}/{name}")
        if theirs != ours:
            _refuse(pid, what, f"{name} {_short(theirs)}, the engine's {_short(ours)}")
    for what, kinds in NS_LIKE_ENGINE.items():
        for kind in kinds:
            if _ns_inode(pid, kind) != engine.ns[kind]:
                _refuse(pid, what, f"ns/{kind} is not the engine's")
    if _ns_inode(pid, "user") != _ns_inode("self", "user"):
        # a user namespace of the tree comes back with uid and gid maps only
        projid = _read_or_none(f"/proc/{pid}/projid_map")
        if projid:
            _refuse(pid, "project id map", _short(projid))
    autogroup = _read_or_none(f"/proc/{pid}/autogroup") or ""
    if autogroup and not autogroup.rstrip().endswith(" nice 0"):
        _refuse(pid, "autogroup nice", autogroup.strip())
    ksm = _read_or_none(f"/proc/{pid}/ksm_stat") or ""
    if "ksm_merge_any: yes" in ksm:
        _refuse(pid, "KSM for the whole process (PR_SET_MEMORY_MERGE)")
    for line in (_read_or_none(f"/proc/{pid}/numa_maps") or "").splitlines():
        policy = line.split(None, 2)[1]
        if policy != "default":
            _refuse(pid, "NUMA memory policy", f"{line.split()[0]} {policy}")


def _check_maps(pid: int) -> None:
    with open(f"/proc/{pid}/maps") as f:
        for line in f:
            head = line.split(None, 5)
            name = head[5].strip() if len(head) > 5 else ""
            if name.startswith("/SYSV"):
                _refuse(pid, "System V shared memory attached", f"{head[0]} key {name[5:13]}")
            elif name == "[aio]" or name.startswith("/[aio]"):
                _refuse(pid, "AIO context", f"ring at {head[0]}")
            elif name.startswith(("[anon:", "[anon_shmem:")):
                _refuse(pid, "named anonymous memory", f"{head[0]} {name}")


def _check_prctls(pid: int, tracee, engine: Engine) -> None:
    ioprio = tracee.syscall(SYS_IOPRIO_GET, IOPRIO_WHO_PROCESS, 0)
    if ioprio >= 0 and ioprio != IOPRIO_DEFAULT:
        _refuse(pid, "I/O priority", f"class {ioprio >> 13}, level {ioprio & 0x1FFF}")
    theirs = _prctls(lambda *args: _remote_prctl(tracee, *args))
    for what, (value, ours) in _pairs(theirs, engine.prctl).items():
        if value != ours:
            _refuse(pid, what, f"{value}, the engine's {ours}")


def _check_sysvipc(pid: int, engine: Engine) -> None:
    """Objects of an IPC namespace of the tree (ipcns restores its sysctls
    only); those of the engine's own namespace are not the tree's."""
    from engine import ns
    inode = _ns_inode(pid, "ipc")
    if inode in engine.ipc_ns_checked:
        return
    engine.ipc_ns_checked.add(inode)
    counts = ns.run_in(pid, ("ipc",), _sysvipc_counts)
    held = ", ".join(f"{n} {kind}" for kind, n in counts.items() if n)
    if held:
        _refuse(pid, "System V IPC objects in its IPC namespace", held)


def _sysvipc_counts() -> dict[str, int]:
    out = {}
    for kind in SYSVIPC:
        with open(f"/proc/sysvipc/{kind}") as f:
            out[kind] = len(f.readlines()) - 1      # a header line first
    return out


def _pairs(theirs: dict, ours: dict) -> dict:
    return {what: (theirs[what], ours[what]) for what in theirs
            if ours.get(what) is not None and theirs[what] is not None}


# --- reading ---------------------------------------------------------------------

def _prctls(call) -> dict:
    """state -> value of the prctl options only the task can ask, through
    `call(option, arg2)` (None: the kernel refused the question)."""
    out = {
        "machine-check kill policy (PR_MCE_KILL)": call(PR_MCE_KILL_GET, 0),
        "I/O flusher (PR_SET_IO_FLUSHER)": call(PR_GET_IO_FLUSHER, 0),
        "memory-deny-write-execute (PR_SET_MDWE)": call(PR_GET_MDWE, 0),
        "KSM for the whole process (PR_SET_MEMORY_MERGE)": call(PR_GET_MEMORY_MERGE, 0),
        "PR_TIMER_CREATE_RESTORE_IDS on": call(PR_TIMER_CREATE_RESTORE_IDS,
                                               PR_TIMER_CREATE_RESTORE_IDS_GET),
        "rdtsc faulting (PR_SET_TSC)": call(PR_GET_TSC, "int"),
    }
    spec = tuple(call(PR_GET_SPECULATION_CTRL, which) for which in SPECULATION_KINDS)
    out["speculation control (PR_SET_SPECULATION_CTRL)"] = spec
    return out


def _local_prctl(option: int, arg):
    import ctypes
    from engine import libc
    if arg == "int":
        value = ctypes.c_int()
        r = libc.prctl(option, ctypes.addressof(value), 0, 0, 0)
        return value.value if r == 0 else None
    r = libc.prctl(option, arg, 0, 0, 0)
    return r if r >= 0 else None


def _remote_prctl(tracee, option: int, arg):
    if arg == "int":
        scratch = tracee.checked("mmap", 0, PAGE, 3, 0x22, -1, 0, what="scratch page")
        try:
            if tracee.syscall("prctl", option, scratch, 0, 0, 0) != 0:
                return None
            return int.from_bytes(tracee.read(scratch, 4), "little", signed=True)
        finally:
            tracee.syscall("munmap", scratch, PAGE)
    r = tracee.syscall("prctl", option, arg, 0, 0, 0)
    return r if r >= 0 else None


def _uclamp(tid) -> tuple[str, ...]:
    """The uclamp lines of /proc/TID/sched; () on a kernel without them."""
    text = _read_or_none(f"/proc/{tid}/sched") or ""
    return tuple(line.split()[-1] for line in text.splitlines() if line.startswith("uclamp."))


def _sched_core(tid: int) -> int | None:
    """The task's core scheduling cookie; None on a kernel without it."""
    import ctypes
    from engine import libc
    cookie = ctypes.c_uint64()
    if libc.prctl(PR_SCHED_CORE, PR_SCHED_CORE_GET, tid, PIDTYPE_PID,
                  ctypes.addressof(cookie)) != 0:
        return None
    return cookie.value


def _status(pid) -> dict[str, str]:
    with open(f"/proc/{pid}/status") as f:
        return {k: v.strip() for k, _, v in (line.partition(":") for line in f)}


def _ns_inode(pid, kind: str) -> int | None:
    try:
        return os.stat(f"/proc/{pid}/ns/{kind}").st_ino
    except OSError:
        return None


def _read_or_none(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None


def _short(text: str | None) -> str:
    if text is None:
        return "unreadable"
    return " ".join(text.split())[:80]

"""The ledger: every kind of kernel state a task can hold, and its fate.

Each key is in exactly one of three lists (STYLE habit 18, issue 15):
``restored`` (by the plugin named), ``refused`` at dump (by the plugin
named, with the words of its one-line refusal), or ``dropped`` on purpose
(with the reason). tests/plugins/test_fates.py reads what this kernel shows
(/proc/PID/status keys, /proc/PID entries, fdinfo lines of every fd kind the
engine handles, the prctl options it knows) and fails on a key that is in no
list; the README's "What does not come back" is generated from here.

A per-task value nothing restores comes back as the engine's own (a restored
task is forked from the engine and inherits it), so ``refused`` here means:
refused when the task's value is not the engine's (or, for what only the
task can ask, not the kernel's default), which is what `plugins.fates`
checks.
"""
from __future__ import annotations

from typing import NamedTuple


class Fate(NamedTuple):
    fate: str          # "restored" | "refused" | "dropped"
    by: str            # the plugin restoring or refusing it; "" when dropped
    what: str          # refused: the state as the refusal names it; dropped: why


def restored(plugin: str) -> Fate:
    return Fate("restored", plugin, "")


def refused(what: str, by: str = "fates") -> Fate:
    return Fate("refused", by, what)


def dropped(why: str) -> Fate:
    return Fate("dropped", "", why)



COUNTER = "a counter the kernel keeps and offers no way to set"
RESIDENCY = ("which pages sit in RAM, swap or page tables is the kernel's choice, not the "
             "program's; their contents come back (mem)")
DIFFERENT_ARCH = "not on x86-64: this kernel returns EINVAL"

# --- /proc/PID/status, every key Linux 6.18 prints on x86-64 --------------------
STATUS = {
    "Name": restored("threads"),
    "Umask": restored("fs"),
    "State": restored("core"),            # stopped comes back stopped; zombies: pstree
    "Tgid": restored("pstree"),
    "Ngid": dropped("the NUMA balancing group, which the kernel forms from page faults; "
                    "no call sets it"),
    "Pid": restored("pstree"),
    "PPid": restored("pstree"),
    "TracerPid": refused("traced by another process", by="engine"),   # PTRACE_SEIZE: EPERM
    "Uid": restored("creds"),
    "Gid": restored("creds"),
    "FDSize": dropped("the fd table's allocated size, which the kernel grows on demand; "
                      "every fd comes back at its number (files)"),
    "Groups": restored("creds"),
    "NStgid": restored("pidns"),
    "NSpid": restored("pidns"),
    "NSpgid": restored("pstree"),
    "NSsid": restored("pstree"),
    "Kthread": refused("a kernel thread", by="engine"),             # PTRACE_SEIZE: EPERM
    "VmPeak": dropped("a high-water mark: " + COUNTER),
    "VmSize": restored("mem"),
    "VmLck": restored("mem"),             # VM_LOCKED mappings come back MAP_LOCKED
    "VmPin": refused("pinned pages (VmPin)"),
    "VmHWM": dropped("a high-water mark: " + COUNTER),
    "VmRSS": dropped(RESIDENCY),
    "RssAnon": dropped(RESIDENCY),
    "RssFile": dropped(RESIDENCY),
    "RssShmem": dropped(RESIDENCY),
    "VmData": restored("mem"),
    "VmStk": restored("mem"),
    "VmExe": restored("mem"),
    "VmLib": restored("mem"),
    "VmPTE": dropped(RESIDENCY),
    "VmSwap": dropped(RESIDENCY),
    "HugetlbPages": refused("a hugetlb mapping", by="mem"),
    "CoreDumping": dropped("set only while the kernel writes the task's core file, "
                           "after which the task dies"),
    "THP_enabled": restored("mmflags"),
    "untag_mask": refused("tagged addresses (LAM, ARCH_ENABLE_TAGGED_ADDR)"),
    "Threads": restored("threads"),
    "SigQ": restored("threads"),          # the signals queued; the limit is rlimits'
    "SigPnd": restored("threads"),
    "ShdPnd": restored("threads"),
    "SigBlk": restored("threads"),
    "SigIgn": restored("threads"),
    "SigCgt": restored("threads"),
    "CapInh": restored("creds"),
    "CapPrm": restored("creds"),
    "CapEff": restored("creds"),
    "CapBnd": restored("creds"),
    "CapAmb": restored("creds"),
    "NoNewPrivs": restored("seccomp"),
    "Seccomp": restored("seccomp"),
    "Seccomp_filters": restored("seccomp"),
    "Speculation_Store_Bypass": refused("speculation control (PR_SET_SPECULATION_CTRL)"),
    "SpeculationIndirectBranch": refused("speculation control (PR_SET_SPECULATION_CTRL)"),
    "Cpus_allowed": restored("sched"),
    "Cpus_allowed_list": restored("sched"),
    "Mems_allowed": restored("cgroup"),    # a cpuset's memory nodes
    "Mems_allowed_list": restored("cgroup"),
    "voluntary_ctxt_switches": dropped(COUNTER),
    "nonvoluntary_ctxt_switches": dropped(COUNTER),
    # Printed by kernels built with x86 user shadow stacks
    "x86_Thread_features": refused("x86 thread features (shadow stack)"),
    "x86_Thread_features_locked": refused("x86 thread features (shadow stack)"),
}

# --- /proc/PID/fdinfo/N lines, by the fd kinds the engine handles ----------------
FDINFO_COMMON = {
    "pos": restored("files"),
    "flags": restored("files"),
    "mnt_id": restored("files"),          # the file is reopened by its path
    "ino": restored("files"),
    "lock": restored("file_locks"),
}
FDINFO = {
    "regular file": {},
    "pipe": {},
    "unix socket": {"scm_fds": restored("unix")},
    "tcp socket": {},
    "udp socket": {},
    "eventfd": {"eventfd-count": restored("eventfd"), "eventfd-semaphore": restored("eventfd"),
                "eventfd-id": dropped("an id the kernel allocates for the fdinfo file; "
                                      "no call chooses it")},
    "epoll": {"tfd": restored("epoll")},
    "signalfd": {"sigmask": restored("signalfd")},
    "timerfd": {"clockid": restored("timerfd"), "ticks": restored("timerfd"),
                "settime flags": restored("timerfd"), "it_value": restored("timerfd"),
                "it_interval": restored("timerfd")},
}

# --- fd kinds (the link of /proc/PID/fd/N) ----------------------------------------
UNKNOWN_FD = "an fd no plugin can dump"
FD_KINDS = {
    "regular file": restored("files"),
    "directory": restored("files"),
    "device": restored("files"),
    "pipe": restored("pipes"),
    "FIFO": restored("pipes"),
    "unix socket": restored("unix"),
    "tcp socket": restored("sk_inet"),
    "udp socket": restored("sk_inet"),
    "eventfd": restored("eventfd"),
    "epoll": restored("epoll"),
    "signalfd": restored("signalfd"),
    "timerfd": restored("timerfd"),
    "memfd": restored("memfd"),
    "io_uring": refused(UNKNOWN_FD, by="files"),
    "inotify": refused(UNKNOWN_FD, by="files"),
    "fanotify": refused(UNKNOWN_FD, by="files"),
    "pidfd": refused(UNKNOWN_FD, by="files"),
    "perf_event": refused(UNKNOWN_FD, by="files"),
    "bpf": refused(UNKNOWN_FD, by="files"),
    "userfaultfd": refused(UNKNOWN_FD, by="files"),
    "netlink socket": restored("sk_netlink"),
    "packet socket": restored("sk_packet"),
    "raw socket": restored("sk_inet"),
    "ICMP ping socket": restored("sk_inet"),
    "other sockets (UDP-Lite, SCTP, vsock, ...)": refused(UNKNOWN_FD, by="files"),
}

# --- what sockets hold beyond their kind ---------------------------------------------
DATAGRAMS_QUEUED = ("as CRIU: a datagram queued for a raw, ping or packet socket cannot be "
                    "handed back to the kernel, and what arrives while the tree is frozen "
                    "is lost anyway (UDP's, not kept yet, are the same)")
PACKET_OPTION = "a packet socket with an option its image cannot hold"
SOCKETS = {
    "netlink messages not yet read": refused("a netlink socket with unread messages",
                                             by="sk_netlink"),
    "a netlink dump being read (NDIAG_FLAG_CB_RUNNING)":
        refused("a netlink socket in the middle of a dump", by="sk_netlink"),
    "TPACKET rings (PACKET_RX_RING, PACKET_TX_RING)":
        refused("a packet socket with a TPACKET ring mapped", by="sk_packet"),
    "PACKET_QDISC_BYPASS": refused(PACKET_OPTION, by="sk_packet"),
    "PACKET_IGNORE_OUTGOING": refused(PACKET_OPTION, by="sk_packet"),
    "PACKET_TX_HAS_OFF": refused(PACKET_OPTION, by="sk_packet"),
    "PACKET_FANOUT_CBPF, PACKET_FANOUT_EBPF":
        refused("a packet fanout group steered by a BPF program", by="sk_packet"),
    "a packet membership added twice (pdmc_count)":
        refused("a packet membership added more than once", by="sk_packet"),
    "IPV6_CHECKSUM on a raw IPv6 socket (not ICMPv6)":
        refused("a raw IPv6 socket with IPV6_CHECKSUM set", by="sk_inet"),
    "a netlink, packet or raw socket made in another network namespace":
        refused("a socket of another network namespace than its task's", by="sk_netlink"),
    "SO_LOCK_FILTER": refused("a locked socket filter", by="sk_netlink"),
    "datagrams queued on raw, ping and packet sockets": dropped(DATAGRAMS_QUEUED),
    "PACKET_STATISTICS": dropped(COUNTER + " (reading it resets it)"),
    "PACKET_TX_TIMESTAMP": dropped("no getsockopt reads it back"),
}

# --- file locks, as /proc/locks names them ---------------------------------------
LOCKS = {
    "POSIX": restored("file_locks"),
    "FLOCK": restored("file_locks"),
    "OFDLCK": restored("file_locks"),
    "LEASE": refused("file lease or delegation", by="file_locks"),
    "DELEG": refused("file lease or delegation", by="file_locks"),
    "a waiter (F_SETLKW, F_OFD_SETLKW, flock without LOCK_NB)":
        refused("blocked waiting for a file lock", by="file_locks"),
    "a lock whose open file no fd holds (a mapping or a unix queue does)":
        refused("a file lock that no fd of the tree shows", by="file_locks"),
}

# --- mappings (/proc/PID/maps) that are more than memory ----------------------------
MAPPINGS = {
    "SysV shared memory (/SYSV*)": restored("mem"),
    "AIO ring ([aio])": refused("AIO context"),
    "named anonymous memory ([anon:NAME], PR_SET_VMA)": refused("named anonymous memory"),
    "hugetlb": refused("a hugetlb mapping", by="mem"),
    "VM_IO, VM_PFNMAP": refused("a VM_IO or VM_PFNMAP mapping", by="mem"),
    "memfd mapping": restored("memfd"),
    "deleted mapped file": restored("files"),
    "deleted file both mapped and held open": refused("a deleted file both mapped and held open",
                                                      by="files"),
    "NUMA memory policy (mbind, set_mempolicy)": refused("NUMA memory policy"),
}

# --- prctl(2) options this kernel may know: number -> (name, fate) ----------------
PRCTL = {
    1: ("PR_SET_PDEATHSIG", restored("creds")),
    2: ("PR_GET_PDEATHSIG", restored("creds")),
    3: ("PR_GET_DUMPABLE", restored("mmflags")),
    4: ("PR_SET_DUMPABLE", restored("mmflags")),
    5: ("PR_GET_UNALIGN", dropped(DIFFERENT_ARCH)),
    6: ("PR_SET_UNALIGN", dropped(DIFFERENT_ARCH)),
    7: ("PR_GET_KEEPCAPS", restored("creds")),          # SECBIT_KEEP_CAPS of securebits
    8: ("PR_SET_KEEPCAPS", restored("creds")),
    9: ("PR_GET_FPEMU", dropped(DIFFERENT_ARCH)),
    10: ("PR_SET_FPEMU", dropped(DIFFERENT_ARCH)),
    11: ("PR_GET_FPEXC", dropped(DIFFERENT_ARCH)),
    12: ("PR_SET_FPEXC", dropped(DIFFERENT_ARCH)),
    13: ("PR_GET_TIMING", dropped("one value exists (PR_TIMING_STATISTICAL)")),
    14: ("PR_SET_TIMING", dropped("one value exists (PR_TIMING_STATISTICAL)")),
    15: ("PR_SET_NAME", restored("threads")),
    16: ("PR_GET_NAME", restored("threads")),
    19: ("PR_GET_ENDIAN", dropped(DIFFERENT_ARCH)),
    20: ("PR_SET_ENDIAN", dropped(DIFFERENT_ARCH)),
    21: ("PR_GET_SECCOMP", restored("seccomp")),
    22: ("PR_SET_SECCOMP", restored("seccomp")),
    23: ("PR_CAPBSET_READ", restored("creds")),
    24: ("PR_CAPBSET_DROP", restored("creds")),
    25: ("PR_GET_TSC", refused("rdtsc faulting (PR_SET_TSC)")),
    26: ("PR_SET_TSC", refused("rdtsc faulting (PR_SET_TSC)")),
    27: ("PR_GET_SECUREBITS", restored("creds")),
    28: ("PR_SET_SECUREBITS", restored("creds")),
    29: ("PR_SET_TIMERSLACK", restored("sched")),
    30: ("PR_GET_TIMERSLACK", restored("sched")),
    31: ("PR_TASK_PERF_EVENTS_DISABLE", refused(UNKNOWN_FD, by="files")),   # perf_event fds
    32: ("PR_TASK_PERF_EVENTS_ENABLE", refused(UNKNOWN_FD, by="files")),
    33: ("PR_MCE_KILL", refused("machine-check kill policy (PR_MCE_KILL)")),
    34: ("PR_MCE_KILL_GET", refused("machine-check kill policy (PR_MCE_KILL)")),
    35: ("PR_SET_MM", restored("mem")),
    36: ("PR_SET_CHILD_SUBREAPER", restored("pstree")),
    37: ("PR_GET_CHILD_SUBREAPER", restored("pstree")),
    38: ("PR_SET_NO_NEW_PRIVS", restored("seccomp")),
    39: ("PR_GET_NO_NEW_PRIVS", restored("seccomp")),
    40: ("PR_GET_TID_ADDRESS", restored("threads")),
    41: ("PR_SET_THP_DISABLE", restored("mmflags")),
    42: ("PR_GET_THP_DISABLE", restored("mmflags")),
    43: ("PR_MPX_ENABLE_MANAGEMENT", dropped("removed from Linux in 5.4")),
    44: ("PR_MPX_DISABLE_MANAGEMENT", dropped("removed from Linux in 5.4")),
    45: ("PR_SET_FP_MODE", dropped(DIFFERENT_ARCH)),
    46: ("PR_GET_FP_MODE", dropped(DIFFERENT_ARCH)),
    47: ("PR_CAP_AMBIENT", restored("creds")),
    50: ("PR_SVE_SET_VL", dropped(DIFFERENT_ARCH)),
    51: ("PR_SVE_GET_VL", dropped(DIFFERENT_ARCH)),
    52: ("PR_GET_SPECULATION_CTRL", refused("speculation control (PR_SET_SPECULATION_CTRL)")),
    53: ("PR_SET_SPECULATION_CTRL", refused("speculation control (PR_SET_SPECULATION_CTRL)")),
    54: ("PR_PAC_RESET_KEYS", dropped(DIFFERENT_ARCH)),
    55: ("PR_SET_TAGGED_ADDR_CTRL", dropped(DIFFERENT_ARCH)),   # x86: LAM, see untag_mask
    56: ("PR_GET_TAGGED_ADDR_CTRL", dropped(DIFFERENT_ARCH)),
    57: ("PR_SET_IO_FLUSHER", refused("I/O flusher (PR_SET_IO_FLUSHER)")),
    58: ("PR_GET_IO_FLUSHER", refused("I/O flusher (PR_SET_IO_FLUSHER)")),
    59: ("PR_SET_SYSCALL_USER_DISPATCH", refused("syscall user dispatch")),
    60: ("PR_PAC_SET_ENABLED_KEYS", dropped(DIFFERENT_ARCH)),
    61: ("PR_PAC_GET_ENABLED_KEYS", dropped(DIFFERENT_ARCH)),
    62: ("PR_SCHED_CORE", refused("core scheduling cookie (PR_SCHED_CORE)")),
    63: ("PR_SME_SET_VL", dropped(DIFFERENT_ARCH)),
    64: ("PR_SME_GET_VL", dropped(DIFFERENT_ARCH)),
    65: ("PR_SET_MDWE", refused("memory-deny-write-execute (PR_SET_MDWE)")),
    66: ("PR_GET_MDWE", refused("memory-deny-write-execute (PR_SET_MDWE)")),
    67: ("PR_SET_MEMORY_MERGE", refused("KSM for the whole process (PR_SET_MEMORY_MERGE)")),
    68: ("PR_GET_MEMORY_MERGE", refused("KSM for the whole process (PR_SET_MEMORY_MERGE)")),
    69: ("PR_RISCV_V_SET_CONTROL", dropped(DIFFERENT_ARCH)),
    70: ("PR_RISCV_V_GET_CONTROL", dropped(DIFFERENT_ARCH)),
    71: ("PR_RISCV_SET_ICACHE_FLUSH_CTX", dropped(DIFFERENT_ARCH)),
    72: ("PR_PPC_GET_DEXCR", dropped(DIFFERENT_ARCH)),
    73: ("PR_PPC_SET_DEXCR", dropped(DIFFERENT_ARCH)),
    74: ("PR_GET_SHADOW_STACK_STATUS", dropped(DIFFERENT_ARCH)),   # x86: arch_prctl, status
    75: ("PR_SET_SHADOW_STACK_STATUS", dropped(DIFFERENT_ARCH)),
    76: ("PR_LOCK_SHADOW_STACK_STATUS", dropped(DIFFERENT_ARCH)),
    77: ("PR_TIMER_CREATE_RESTORE_IDS", refused("PR_TIMER_CREATE_RESTORE_IDS on")),
    78: ("PR_FUTEX_HASH", dropped("the private futex hash's size: the kernel sizes it from "
                                  "the thread count, as it does again after restore; "
                                  "futexes behave the same at any size")),
    0x59616D61: ("PR_SET_PTRACER", dropped("Yama's ptrace exception: write-only (no call "
                                           "reads it back) and it names a pid outside the "
                                           "tree")),
    0x53564D41: ("PR_SET_VMA", refused("named anonymous memory")),
}

# --- scheduling and the rest of a task's attributes ---------------------------------
SCHED = {
    "policy": restored("sched"),
    "reset-on-fork": restored("sched"),
    "rt_priority": restored("sched"),
    "nice": restored("sched"),
    # the image has no field for them (criu/cr-dump.c refuses it too)
    "deadline runtime, deadline, period": refused("SCHED_DEADLINE", by="sched"),
    "util_min, util_max (uclamp)": refused("utilization clamp"),
    "cpu affinity": restored("sched"),
    "ioprio": refused("I/O priority"),
    "autogroup nice": refused("autogroup nice"),
}

# --- /proc/PID entries: every one, by the state it shows ----------------------------
PROC = {
    "arch_status": dropped("AVX-512 use as the kernel last saw it on a context switch"),
    "attr": refused("LSM label"),
    "autogroup": refused("autogroup nice"),
    "auxv": restored("mem"),
    "cgroup": restored("cgroup"),
    "clear_refs": dropped("write-only: clears the kernel's referenced and soft-dirty bits"),
    "cmdline": restored("mem"),
    "comm": restored("threads"),
    "coredump_filter": restored("mmflags"),
    "cpu_resctrl_groups": refused("resctrl group"),
    "cpuset": restored("cgroup"),
    "cwd": restored("fs"),
    "environ": restored("mem"),
    "exe": restored("mem"),
    "fail-nth": dropped("fault injection for kernel testing"),
    "fd": restored("files"),
    "fdinfo": restored("files"),
    "gid_map": restored("userns"),
    "io": dropped(COUNTER),
    "ksm_merging_pages": dropped(COUNTER),
    "ksm_stat": refused("KSM for the whole process (PR_SET_MEMORY_MERGE)"),
    "latency": dropped("latency tracing for kernel debugging"),
    "limits": restored("rlimits"),
    "loginuid": restored("loginuid"),
    "make-it-fail": dropped("fault injection for kernel testing"),
    "map_files": restored("mem"),
    "maps": restored("mem"),
    "mem": restored("mem"),
    "mountinfo": restored("mntns"),
    "mounts": restored("mntns"),
    "mountstats": restored("mntns"),
    "net": restored("netns"),
    "ns": restored("pidns"),              # each namespace by its plugin: see NAMESPACES
    "numa_maps": refused("NUMA memory policy"),
    "oom_adj": restored("oom"),                # derived from oom_score_adj
    "oom_score": dropped("computed by the kernel from memory use and oom_score_adj"),
    "oom_score_adj": restored("oom"),
    "pagemap": restored("mem"),
    "patch_state": dropped("kernel live patching's transition state"),
    "personality": restored("personality"),
    "projid_map": refused("project id map"),
    "root": refused("a root other than / (chroot)", by="fs"),   # / itself: restored
    "sched": restored("sched"),           # uclamp lines: see SCHED
    "schedstat": dropped(COUNTER),
    "sessionid": refused("audit session id"),
    "setgroups": restored("userns"),
    "smaps": restored("mem"),
    "smaps_rollup": restored("mem"),
    "stack": dropped("the kernel stack of a blocked task; its syscall is restarted (core)"),
    "stat": restored("core"),             # each field is a status or sched key above
    "statm": restored("mem"),
    "status": restored("core"),           # each key: see STATUS
    "syscall": restored("core"),          # an interrupted syscall is restarted
    "task": restored("threads"),
    "timens_offsets": restored("timens"),
    "timers": restored("timers"),
    "timerslack_ns": restored("sched"),
    "uid_map": restored("userns"),
    "wchan": dropped("where in the kernel a blocked task waits; its syscall is restarted"),
}

NAMESPACES = {
    "uts": restored("utsns"), "ipc": restored("ipcns"), "net": restored("netns"),
    "mnt": restored("mntns"), "pid": restored("pidns"), "pid_for_children": restored("pidns"),
    "user": restored("userns"),
    "cgroup": refused("cgroup namespace"),
    "time": restored("timens"),
    "time_for_children": refused("a time namespace for children not its own", by="timens"),
}

SYSV_IPC = {
    "objects in a dumped IPC namespace (ipcs: shm, sem, msg)": restored("ipcns"),
    "segments the tree attached in the engine's IPC namespace": restored("ipcns"),
    "the engine's namespace's objects the tree has not attached": dropped(
        "not the tree's state: they outlive it there"),
    "a segment attached from an offset (part of it unmapped)":
        refused("System V segment attached from an offset", by="mem"),
    "SHM_LOCK'd segments": refused("SHM_LOCK'd", by="ipcns"),
    "semaphore undo lists (SEM_UNDO semadj)": dropped(
        "no file or call reads a task's semadj values, nor tells an empty undo list from "
        "one with values: its exit will not undo its semops"),
    "pids and times of last use (shm_lpid, sem_otime, msg_stime...)": dropped(
        "no call sets them"),
}

# Every table, by name (the README and the tests walk them).
TABLES = {"status": STATUS, "fdinfo (every fd)": FDINFO_COMMON, "fd kinds": FD_KINDS,
          "sockets": SOCKETS,
          "file locks": LOCKS, "mappings": MAPPINGS, "sched": SCHED, "/proc/PID": PROC,
          "namespaces": NAMESPACES, "System V IPC": SYSV_IPC,
          **{f"fdinfo ({kind})": keys for kind, keys in FDINFO.items()},
          "prctl": {name: fate for name, fate in PRCTL.values()}}


def every_fate():
    """(table, key, Fate) of every entry."""
    for table, entries in TABLES.items():
        for key, fate in entries.items():
            yield table, key, fate


def refused_states() -> list[str]:
    """What the dump refuses, each once, as its refusal names it."""
    return sorted({f.what for _, _, f in every_fate() if f.fate == "refused"}, key=str.lower)


def dropped_states() -> dict[str, list[str]]:
    """reason -> the keys dropped for it."""
    out: dict[str, list[str]] = {}
    for table, key, f in every_fate():
        if f.fate == "dropped":
            out.setdefault(f.what, []).append(f"{key} ({table})")
    return out


def readme_text() -> str:
    """The README's "What does not come back" part, as the ledger says it
    (tests/plugins/test_fates.py checks the README holds it word for word)."""
    lines = ["Refused at dump (the dump fails naming the task and the state, and",
             "leaves the tree running untouched); a per-task attribute when it",
             "is not the engine's own, which a restored task inherits:", ""]
    lines += _wrap(", ".join(refused_states()) + ".")
    lines += ["", "Dropped on purpose:", ""]
    for why, keys in sorted(dropped_states().items(), key=lambda item: item[1][0].lower()):
        lines += _wrap(f"- {', '.join(keys)}: {why}.", indent="  ")
    return "\n".join(lines) + "\n"


def _wrap(text: str, indent: str = "") -> list[str]:
    import textwrap
    return textwrap.wrap(text, width=72, subsequent_indent=indent, break_on_hyphens=False)

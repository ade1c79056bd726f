"""seccomp: strict mode, filters and no_new_privs of every thread (issues 15, 20).

The kernel keeps all three per thread. Images, as CRIU 4.x writes them
(criu/seccomp.c): thread_core.seccomp_mode of core-TID.img (strict or
filter), thread_core.seccomp_filter (the index in seccomp.img of the
thread's oldest filter; each filter's `prev` names the one installed after
it, the newest has none), seccomp.img's filters (the classic BPF program,
flags: SECCOMP_FILTER_FLAG_LOG as PTRACE_SECCOMP_GET_METADATA says, TSYNC)
and thread_core.creds.no_new_privs (field 18, set only when on).

Dump: each thread's filters through PTRACE_SECCOMP_GET_FILTER, oldest
first (the engine suspended the thread's seccomp when it froze it, so the
syscalls the dump injects are not filtered; a dump without CAP_SYS_ADMIN,
which can do neither, is refused there). Threads with identical chains
are written as CRIU does (try_use_tsync): the leader's chain with
SECCOMP_FILTER_FLAG_TSYNC, the other threads without one (the leader's
TSYNC gives it back to them); identical chains of several tasks are
written once. Refused at dump, naming the thread: a filter that may return
SECCOMP_RET_USER_NOTIF (a user-notification listener, whose holder the
restored filter would not have: a return of that action or of the
accumulator), and a filter installed without no_new_privs in a thread that
no longer holds CAP_SYS_ADMIN (the kernel takes one or the other to
install it, after the credentials are back).

Restore, in the tracer, last of the task's own state (after creds,
rlimits, personality, timers: a filter may refuse the calls they inject;
hooks.toml), in every thread, the leader last: PR_SET_NO_NEW_PRIVS where it
was set, then strict mode (PR_SET_SECCOMP) or each filter, oldest first
(SECCOMP_SET_MODE_FILTER with its flags), from one buffer mapped in the
task for the programs (a filter may be 32 KiB, the scratch page's data
area 16 KiB) and unmapped after. The leader then runs unfiltered
(PTRACE_O_SUSPEND_SECCOMP) for what the tracer still injects there (the
scratch page's munmap, the parent-death signal at release), until the
tracer lets it go. That option needs CAP_SYS_ADMIN in the initial user
namespace: `--rootless` restores no_new_privs but refuses strict mode and
filters, naming the task.
Refused before anything starts (one line naming image and field): a mode
that is not Linux's, a filter mode with no filter, an index or `prev` out
of seccomp.img, a chain that loops or is longer than the kernel takes, a
program SECCOMP_SET_MODE_FILTER would refuse (plugins/seccomp/bpf.py),
flags other than TSYNC, LOG and SPEC_ALLOW, no_new_privs other than 0 or
1, a filter without no_new_privs for a task without CAP_SYS_ADMIN.
Essential: disabling it would let a sandboxed task out of its sandbox.
"""
from __future__ import annotations

import logging
import os
import struct
from typing import NamedTuple

from engine import hookimpl
from engine.graph import Node
from engine.images import ImageError
from engine.stash import StashKey
from plugins.seccomp import bpf

log = logging.getLogger("engine.plugins.seccomp")

MODE_DISABLED, MODE_STRICT, MODE_FILTER = 0, 1, 2          # seccomp_mode of core.proto
PTRACE_SECCOMP_GET_FILTER, PTRACE_SECCOMP_GET_METADATA = 0x420C, 0x420D
PTRACE_O_TRACECLONE, PTRACE_O_SUSPEND_SECCOMP = 8, 1 << 21
SECCOMP_SET_MODE_FILTER = 1
PR_SET_SECCOMP, PR_SET_NO_NEW_PRIVS = 22, 38
FLAG_TSYNC, FLAG_LOG, FLAG_SPEC_ALLOW = 1, 2, 4            # SECCOMP_FILTER_FLAG_*
RESTORABLE_FLAGS = FLAG_TSYNC | FLAG_LOG | FLAG_SPEC_ALLOW
CAP_SYS_ADMIN = 21
PAGE = 4096
PROT_RW, MAP_PRIVATE_ANON = 3, 0x22
SECCOMP_MODE_FIELD = 11                                      # thread_core_entry.seccomp_mode
FPROG = struct.Struct("<H6xQ")                               # struct sock_fprog


class ThreadSeccomp(NamedTuple):
    mode: int                  # MODE_*
    nnp: bool                  # no_new_privs
    chain: tuple = ()          # ((program, flags), ...), oldest first


_DUMPED: StashKey[dict[int, dict[int, ThreadSeccomp]]] = StashKey()   # pid -> tid -> state


# --- registration ---------------------------------------------------------

@hookimpl
def engine_register_images(registry):
    from engine.images.kinds import ImageKind
    registry.register(ImageKind("seccomp", "seccomp.img", 0x64413049,
                                "engine.images.proto.tree_pb2", "seccomp_entry",
                                magic_name="SECCOMP"))


# --- dump ----------------------------------------------------------------

@hookimpl
def engine_dump_task(ctx, task):
    if task.zombie is not None:
        return
    threads = {}
    for tracee in [task.tracee] + task.tracee.others:
        tid = tracee.pid
        who = task.pid if tid == task.pid else f"{task.pid} (thread {tid})"
        status = _status(f"/proc/{task.pid}/task/{tid}/status")
        mode, nnp = int(status.get("Seccomp", "0")), status.get("NoNewPrivs", "0") == "1"
        chain = ()
        if mode == MODE_FILTER:
            chain = _filters(tid, who)
            if not nnp and not int(status["CapEff"], 16) >> CAP_SYS_ADMIN & 1:
                raise ValueError(f"task {who}: a seccomp filter without no_new_privs, in a "
                                 "thread without CAP_SYS_ADMIN: restoring it needs one or "
                                 "the other")
        elif mode not in (MODE_DISABLED, MODE_STRICT):
            raise ValueError(f"task {who}: seccomp mode {mode} is not supported")
        if mode or nnp:
            threads[tid] = ThreadSeccomp(mode, nnp, chain)
    if threads:
        ctx.stash.setdefault(_DUMPED, {})[task.pid] = threads


@hookimpl
def engine_dump_finish(ctx):
    """seccomp.img, and each thread's fields in the core-TID.img core wrote."""
    from engine.images.proto import tree_pb2
    dumped = ctx.stash.get(_DUMPED, None)
    if not dumped:
        return
    filters: list = []
    placed: dict[tuple, int] = {}            # a chain -> its oldest filter's index
    for pid, threads in dumped.items():
        for tid, state in sorted(_tsync(pid, threads).items()):
            core = ctx.images.read_one("core", id=tid)
            tc = core.thread_core
            if state.mode:
                tc.seccomp_mode = state.mode
            if state.mode == MODE_FILTER:
                tc.seccomp_filter = _place(state.chain, filters, placed)
            if state.nnp:
                tc.creds.no_new_privs = 1
            ctx.images.write("core", [core], id=tid)
    if filters:
        ctx.images.write("seccomp", [tree_pb2.seccomp_entry(seccomp_filters=filters)])
    log.debug("seccomp: %d filters for %d chains", len(filters), len(placed))


# --- restore -----------------------------------------------------------------

@hookimpl
def engine_restore_collect(ctx, graph):
    chains = _Chains(ctx)
    for task in ctx.provided("tasks").alive:
        leader = ctx.read_one("core", id=task.pid)
        threads = {}
        for tid in task.threads or [task.pid]:
            state = _thread_state(ctx.read_one("core", id=tid), f"core-{tid}.img", chains,
                                  leader)
            if state.mode or state.nnp:
                threads[tid] = state
        if threads:
            graph.add(Node(key=f"seccomp:{task.pid}", plugin="seccomp", pid=task.pid,
                           data=threads, label=f"seccomp and no_new_privs of {task.pid}"))


@hookimpl
def engine_restore_node(ctx, node):
    from engine.tracer import task_batch, task_threads
    threads: dict[int, ThreadSeccomp] = node.data
    leader = ctx.tracees[node.pid]
    programs, size = _layout(threads)
    buffer = None
    if programs:
        bt = task_batch(leader)
        call = bt.call("mmap", 0, size, PROT_RW, MAP_PRIVATE_ANON, -1, 0,
                       what="for the seccomp filters")
        buffer = bt.run()[call]
        leader.write(buffer, b"".join(FPROG.pack(len(p) // bpf.INSN.size, buffer + at + FPROG.size)
                                      + p for p, at in programs.items()))
    for thread in task_threads(leader):               # the leader last
        state = threads.get(thread.pid)
        if state is None:
            continue
        bt = task_batch(leader, thread)
        if state.nnp:
            bt.call("prctl", PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0,
                    what=f"no_new_privs of thread {thread.pid}")
        if state.mode == MODE_STRICT:
            bt.call("prctl", PR_SET_SECCOMP, MODE_STRICT, 0, 0, 0,
                    what=f"strict mode of thread {thread.pid}")
        for n, (program, flags) in enumerate(state.chain):
            bt.call("seccomp", SECCOMP_SET_MODE_FILTER, flags, buffer + programs[program],
                    what=f"filter {n} of thread {thread.pid}")
        bt.run()
    if any(state.mode for state in threads.values()):
        _unfiltered(leader)
    if buffer is not None:
        leader.checked("munmap", buffer, size, what="the seccomp filters' buffer")
    return True


# --- dump helpers ------------------------------------------------------------

def _status(path: str) -> dict[str, str]:
    out = {}
    with open(path) as f:
        for line in f:
            key, _, value = line.partition(":")
            out[key] = value.strip()
    return out


def _filters(tid: int, who) -> tuple:
    """((program, flags), ...) of a thread, oldest first."""
    import ctypes
    import errno
    from engine.tracer import binding as b
    buf = ctypes.create_string_buffer(bpf.MAXINSNS * bpf.INSN.size)
    meta = (ctypes.c_uint64 * 2)()                 # struct seccomp_metadata
    chain = []
    for index in range(bpf.MAX_INSNS_PER_PATH):
        try:
            count = b.ptrace(PTRACE_SECCOMP_GET_FILTER, tid, index, ctypes.addressof(buf),
                             "PTRACE_SECCOMP_GET_FILTER")
        except b.TracerError as e:
            if e.errno == errno.ENOENT:
                break                              # past the newest
            raise
        program = buf.raw[:count * bpf.INSN.size]
        meta[0], meta[1] = index, 0
        b.ptrace(PTRACE_SECCOMP_GET_METADATA, tid, ctypes.sizeof(meta), ctypes.addressof(meta),
                 "PTRACE_SECCOMP_GET_METADATA")
        if bpf.may_notify(program):
            raise ValueError(f"task {who}: seccomp filter {index} may return "
                             "SECCOMP_RET_USER_NOTIF (a user-notification listener): "
                             "not supported")
        chain.append((program, meta[1] & FLAG_LOG))
    return tuple(chain)


def _tsync(pid: int, threads: dict) -> dict:
    """criu/seccomp.c try_use_tsync: when every thread has the leader's
    chain, the leader's gets TSYNC and the others none (they take it from
    the leader's at restore, as the kernel shares one chain)."""
    leader = threads.get(pid)
    if leader is None or leader.mode != MODE_FILTER:
        return threads
    for tid in (int(t) for t in os.listdir(f"/proc/{pid}/task")):
        other = threads.get(tid, ThreadSeccomp(MODE_DISABLED, False))
        if (other.mode, other.chain) != (leader.mode, leader.chain):
            return threads
    out = {tid: state._replace(mode=MODE_DISABLED, chain=()) for tid, state in threads.items()}
    out[pid] = leader._replace(chain=tuple((p, f | FLAG_TSYNC) for p, f in leader.chain))
    return out


def _place(chain: tuple, filters: list, placed: dict) -> int:
    """The index of the chain's oldest filter in seccomp.img, writing the
    chain (newest first, each older one's prev naming the next newer) the
    first time it comes."""
    from engine.images.proto import tree_pb2
    if chain not in placed:
        newer = None
        for program, flags in reversed(chain):
            entry = tree_pb2.seccomp_filter(filter=program, flags=flags)
            if newer is not None:
                entry.prev = newer
            newer = len(filters)
            filters.append(entry)
        placed[chain] = newer
    return placed[chain]


# --- restore helpers -----------------------------------------------------------

class _Chains:
    """seccomp.img's filters, read and checked once each."""

    def __init__(self, ctx):
        self.ctx = ctx
        self.entries = None
        self.checked: dict[int, tuple[bytes, int]] = {}

    def chain(self, index: int, image: str) -> tuple:
        if self.entries is None:
            if not self.ctx.images.exists("seccomp"):
                raise ImageError(image, "thread_core.seccomp_filter: seccomp.img is missing")
            self.entries = self.ctx.read_one("seccomp").seccomp_filters
        held = len(self.entries)
        if index >= held:
            raise ImageError(image, f"thread_core.seccomp_filter {index}: seccomp.img holds "
                                    f"{held} filters")
        chain, seen, total = [], set(), 0
        while True:
            seen.add(index)
            chain.append(self._filter(index))
            total += len(chain[-1][0]) // bpf.INSN.size + bpf.PATH_PENALTY
            entry = self.entries[index]
            if not entry.HasField("prev"):
                break
            if entry.prev >= held:
                raise ImageError("seccomp.img", f"seccomp_filters[{index}].prev {entry.prev}: "
                                                f"seccomp.img holds {held} filters")
            if entry.prev in seen:
                raise ImageError("seccomp.img", f"seccomp_filters[{index}].prev {entry.prev}: "
                                                "the chain loops")
            index = entry.prev
        if total > bpf.MAX_INSNS_PER_PATH:
            raise ImageError(image, f"thread_core.seccomp_filter: a chain of {total} "
                                    f"instructions, more than {bpf.MAX_INSNS_PER_PATH}")
        return tuple(chain)

    def _filter(self, index: int) -> tuple[bytes, int]:
        if index not in self.checked:
            entry = self.entries[index]
            why = bpf.problem(entry.filter)
            if why:
                raise ImageError("seccomp.img", f"seccomp_filters[{index}].filter: {why}")
            if entry.flags & ~RESTORABLE_FLAGS:
                raise ImageError("seccomp.img", f"seccomp_filters[{index}].flags "
                                                f"{entry.flags:#x}: only TSYNC, LOG and "
                                                "SPEC_ALLOW come back")
            self.checked[index] = (bytes(entry.filter), entry.flags)
        return self.checked[index]


def _thread_state(core, image: str, chains: _Chains, leader) -> ThreadSeccomp:
    tc = core.thread_core
    if any(field.field_number == SECCOMP_MODE_FIELD for field in _unknown(tc)):
        raise ImageError(image, "thread_core.seccomp_mode is not a mode Linux has")
    mode = tc.seccomp_mode if tc.HasField("seccomp_mode") else MODE_DISABLED
    nnp = tc.creds.no_new_privs if tc.HasField("creds") else 0
    if nnp not in (0, 1):
        raise ImageError(image, f"thread_core.creds.no_new_privs {nnp} is not 0 or 1")
    chain = ()
    if mode == MODE_FILTER:
        if not tc.HasField("seccomp_filter"):
            raise ImageError(image, "thread_core.seccomp_filter: missing for filter mode")
        chain = chains.chain(tc.seccomp_filter, image)
        # The filter goes in after the credentials (the leader's, in every thread).
        if not nnp and not _sys_admin(leader):
            raise ImageError(image, "thread_core.seccomp_filter: without creds.no_new_privs, "
                                    "installing it needs CAP_SYS_ADMIN, not in creds.cap_eff")
    return ThreadSeccomp(mode, bool(nnp), chain)


def _sys_admin(core) -> bool:
    """CAP_SYS_ADMIN in the effective set the task gets back (none in the
    image: the engine's own, which is root's)."""
    tc = core.thread_core
    if not tc.HasField("creds"):
        return True
    words = list(tc.creds.cap_eff)
    return bool(words) and bool(words[0] >> CAP_SYS_ADMIN & 1)


def _unknown(message) -> list:
    from google.protobuf import unknown_fields
    return list(unknown_fields.UnknownFieldSet(message))


def _layout(threads: dict) -> tuple[dict[bytes, int], int]:
    """Where each distinct program goes in the buffer (after its sock_fprog),
    and the buffer's size in pages."""
    at, size = {}, 0
    for state in threads.values():
        for program, _ in state.chain:
            if program not in at:
                at[program] = size
                size += FPROG.size + len(program)
    return at, -(-size // PAGE) * PAGE


def _unfiltered(leader) -> None:
    """PTRACE_O_SUSPEND_SECCOMP on the leader: what the tracer injects after
    (the scratch page's munmap, the parent-death signal) is not filtered."""
    import errno
    from engine.tracer import binding as b
    try:
        b.ptrace(b.PTRACE_SETOPTIONS, leader.pid, 0,
                 PTRACE_O_TRACECLONE | PTRACE_O_SUSPEND_SECCOMP, "PTRACE_O_SUSPEND_SECCOMP")
    except b.TracerError as e:
        if e.errno != errno.EPERM:
            raise
        raise b.TracerError(e.errno, leader.pid, "seccomp: PTRACE_O_SUSPEND_SECCOMP (the "
                            "tracer injects calls after the filters; it needs CAP_SYS_ADMIN "
                            "of the initial user namespace, which --rootless has not)") from e

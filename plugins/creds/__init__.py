"""creds: a task's credentials and each thread's parent-death signal.

Dump: core writes them into core-TID.img (thread_core.creds: uids, gids,
the five capability sets, securebits, groups; thread_core.pdeath_sig).
Restore, in the tracer, in every thread (credentials are per thread in the
kernel), after the task's threads exist (plugin threads) and after its
resource limits (plugin rlimits: raising a hard limit takes the
CAP_SYS_RESOURCE these may drop). In criu/pie/restorer.c restore_creds
order: capabilities kept across the uid change (SECBIT_NO_SETUID_FIXUP),
the bounding set shrunk, groups, gids, uids, securebits, capabilities,
ambient ones. Ids are set as the task's user namespace sees them (its
maps); what already is as dumped (the engine's own credentials, which the
task inherited) is left alone: an unprivileged engine may not even set a
value to what it is.
The parent-death signal comes after (a change of credentials clears it):
in each other thread now; the leader's on its Tracee (`pdeath_signal`), set
at release, until when ctx.spawn's holds (an engine killed midway takes the
task along). A task whose parent is not in the tree gets none: the engine
stands in for that parent until it exits, which would send it.
Refused before anything starts: a capability set of other than two words,
a parent-death signal that is no signal, an id the task's user namespace
does not map.
Essential: every task has credentials, so disabling this plugin would give
every task the engine's, silently.
"""
from __future__ import annotations

import os
import struct
from typing import NamedTuple

from engine import hookimpl
from engine.graph import Node
from engine.images import ImageError

PR_CAPBSET_DROP, PR_SET_SECUREBITS, PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE = 24, 28, 47, 2
PR_GET_SECUREBITS = 27
SECBIT_NO_SETUID_FIXUP = 1 << 2
LINUX_CAPABILITY_VERSION_3 = 0x20080522
ID_NAMES = ("uid", "gid", "euid", "egid", "suid", "sgid", "fsuid", "fsgid")
CAP_NAMES = ("cap_inh", "cap_prm", "cap_eff", "cap_bnd", "cap_amb")
MAX_SIGNAL = 64


class TaskCreds(NamedTuple):
    creds: object                        # engine.tracer.model.Creds, or None: the engine's
    pdeath: dict                         # tid -> its parent-death signal (0: none)


# --- restore ---------------------------------------------------------------

@hookimpl
def engine_restore_collect(ctx, graph):
    tasks = ctx.provided("tasks")
    in_tree = {e.pid for e in tasks.entries}
    for task in tasks.alive:
        pdeath = {}
        for tid in task.threads or [task.pid]:
            image = f"core-{tid}.img"
            sig = ctx.read_one("core", id=tid).thread_core.pdeath_sig
            if not 0 <= sig <= MAX_SIGNAL:
                raise ImageError(image, f"thread_core.pdeath_sig {sig} is not a signal")
            # its parent out of the tree: the engine stands in for it and exits
            pdeath[tid] = sig if task.ppid in in_tree else 0
        image = f"core-{task.pid}.img"
        data = TaskCreds(_creds(ctx.read_one("core", id=task.pid), image), pdeath)
        graph.add(Node(key=f"creds:{task.pid}", plugin="creds", pid=task.pid, data=data,
                       label=f"credentials of {task.pid}"))


@hookimpl
def engine_restore_node(ctx, node):
    d: TaskCreds = node.data
    creds = d.creds
    if creds is not None:
        creds = _in_userns(creds, node.pid, f"core-{node.pid}.img")
    restore_creds(ctx.tracees[node.pid], creds, d.pdeath)
    return True


def restore_creds(t, creds, pdeath: dict) -> None:
    """Into every thread of the seized task `t`: `creds` (model.Creds, or
    None to keep the engine's), then the parent-death signal of `pdeath`
    (tid -> signal), the leader's left for release."""
    from engine import libc
    from engine.tracer import task_batch, task_threads
    from engine.tracer.proc import proc_status
    # Only comparable in our own user namespace: inside another, the image
    # holds ids as that namespace sees them, /proc shows them as we do.
    if creds is not None and _same_userns(t.pid) and creds == _creds_now(proc_status(t.pid)):
        creds = None
    for thread in task_threads(t):
        tb = task_batch(t, thread)
        if creds is not None:
            _set_creds(tb, creds)
        sig = pdeath.get(thread.pid, 0)
        if thread is t:
            t.pdeath_signal = sig          # set at release: until then ctx.spawn's holds
        elif sig:
            tb.call("prctl", libc.PR_SET_PDEATHSIG, sig, 0, 0, 0, what="parent-death signal")
        tb.run()


# --- helpers -----------------------------------------------------------------

def _creds(core, image: str):
    """The task's credentials, or None when the image holds none."""
    from engine.tracer import model as m
    if not core.thread_core.HasField("creds"):
        return None
    cr = core.thread_core.creds
    out = m.Creds(**{n: getattr(cr, n) for n in ID_NAMES + ("secbits",)})
    for name in CAP_NAMES:
        words = list(getattr(cr, name)) or [0, 0]
        if len(words) != 2:
            raise ImageError(image, f"thread_core.creds.{name} has {len(words)} words, want 2")
        setattr(out, name, words)
    out.groups = list(cr.groups)
    return out


def _in_userns(c, pid: int, image: str):
    """Images hold ids as the dumping engine saw them; a task in another user
    namespace sets them as that namespace sees them (its maps, read from
    here, go from its ids to ours). Where setgroups is denied the groups
    were set before the task entered it (plugins/userns): None, not set."""
    import attrs
    if _same_userns(pid):
        return c
    maps = {}
    for kind in ("uid", "gid"):
        with open(f"/proc/{pid}/{kind}_map") as f:
            maps[kind] = [tuple(map(int, line.split())) for line in f if line.strip()]

    def inside(kind, name, value):
        for first, lower, count in maps[kind]:
            if lower <= value < lower + count:
                return first + value - lower
        raise ImageError(image, f"thread_core.creds.{name} {value} is not mapped "
                                f"in the user namespace of task {pid}")
    out = attrs.evolve(c, **{n: inside("gid" if "gid" in n else "uid", n, getattr(c, n))
                             for n in ID_NAMES})
    with open(f"/proc/{pid}/setgroups") as f:
        deny = f.read().strip() == "deny"
    out.groups = None if deny else [inside("gid", "groups", g) for g in c.groups]
    return out


def _same_userns(pid: int) -> bool:
    return os.stat(f"/proc/{pid}/ns/user").st_ino == os.stat("/proc/self/ns/user").st_ino


def _creds_now(status: dict[str, list[str]]):
    """The task's credentials, from its /proc status; securebits are the
    engine's (it inherited them)."""
    from engine import libc
    from engine.tracer.proc import creds_from_status
    return creds_from_status(status, libc.prctl(PR_GET_SECUREBITS, 0, 0, 0, 0))


def _set_creds(tb, c) -> None:
    """Credentials as criu/pie/restorer.c restore_creds sets them: keep
    capabilities across the uid change (SECBIT_NO_SETUID_FIXUP), shrink the
    bounding set, groups, gids, uids, then securebits and capabilities."""
    from engine.tracer.batch import At
    from engine.tracer.proc import proc_status
    # What is already as dumped is left alone: an unprivileged engine (no
    # CAP_SETPCAP, CAP_SETGID) may not even set a value to what it is.
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
    tb.call("capset", struct.pack("<Ii6I", LINUX_CAPABILITY_VERSION_3, 0, c.cap_eff[0],
                                  c.cap_prm[0], c.cap_inh[0], c.cap_eff[1], c.cap_prm[1],
                                  c.cap_inh[1]), At(8), what="restore")
    amb = c.cap_amb[0] | c.cap_amb[1] << 32
    for cap in range(_cap_last() + 1):
        if amb >> cap & 1:
            tb.call("prctl", PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, cap, 0, 0,
                    what=f"ambient cap {cap}")


def _cap_last() -> int:
    with open("/proc/sys/kernel/cap_last_cap") as f:
        return int(f.read())

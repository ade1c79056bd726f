"""loginuid: a task's audit login uid (tc.loginuid of core-PID.img).

Dump: into core-PID.img (core wrote it first: this plugin is listed after
core in hooks.toml), tc.loginuid from /proc/PID/loginuid (4294967295:
never set), as CRIU does. The kernel keeps one per thread, CRIU's image
one per task: a thread whose login uid is not its leader's is refused at
dump. The audit session id cannot be set: the kernel hands out a new one
with every login uid written (an unset one with an unset login uid). So a
task whose session id is not the engine's is refused at dump (plugin
fates), and a restore that sets the login uid gives the task the session
id that comes with it.
Restore, in the tracer, by every thread itself (only a thread can write
its own /proc/thread-self/loginuid), after the threads exist (each clone
took the engine's) and before the credentials (plugin creds comes after
this resource: changing a login uid already set takes CAP_AUDIT_CONTROL,
which the restored credentials may drop). Only when it differs from the
engine's, which the task inherited. Without CAP_AUDIT_CONTROL, when the
engine's is set, the restore fails before anything starts, naming it; a
kernel that refuses anyway (audit's loginuid_immutable, a user namespace)
fails the restore naming the task.
Essential: disabling it would hand the engine's login uid to the tree
without a word.
"""
from __future__ import annotations

import os

from engine import hookimpl
from engine.errors import RestoreError
from engine.graph import Node

AUDIT_UID_UNSET = 0xFFFFFFFF
CAP_AUDIT_CONTROL = 30
AT_FDCWD = -100
O_WRONLY, O_CLOEXEC = 0o1, 0o2000000


@hookimpl
def engine_dump_task(ctx, task):
    if task.zombie is not None:
        return
    value = _read(task.pid)
    for thread in task.state.threads:
        theirs = _read(f"{task.pid}/task/{thread.tid}")
        if theirs != value:
            raise ValueError(f"task {task.pid}: thread {thread.tid} has audit login uid "
                             f"{theirs}, its leader {value}: one per task is all the image "
                             "holds")
    core = ctx.images.read_one("core", id=task.pid)
    core.tc.loginuid = value
    ctx.images.write("core", [core], id=task.pid)


@hookimpl
def engine_restore_collect(ctx, graph):
    from engine import ns
    ours = _read("self")
    privileged = bool(ns.effective_caps() >> CAP_AUDIT_CONTROL & 1)
    for task in ctx.provided("tasks").alive:
        tc = ctx.read_one("core", id=task.pid).tc
        if not tc.HasField("loginuid") or tc.loginuid == ours:
            continue
        if ours != AUDIT_UID_UNSET and not privileged:
            raise RestoreError(f"core-{task.pid}.img: tc.loginuid {tc.loginuid}: changing the "
                               f"engine's login uid ({ours}) takes CAP_AUDIT_CONTROL, which "
                               "the engine lacks")
        graph.add(Node(key=f"loginuid:{task.pid}", plugin="loginuid", pid=task.pid,
                       data=tc.loginuid, label=f"login uid {tc.loginuid} of {task.pid}"))


@hookimpl
def engine_restore_node(ctx, node):
    from engine.tracer import task_threads
    leader = ctx.tracees[node.pid]
    for thread in task_threads(leader):     # the kernel keeps one per thread
        _write(leader, thread, node.pid, node.data)
    return True


def _write(leader, thread, pid: int, value: int) -> None:
    """/proc/thread-self/loginuid, by the thread itself (no other may)."""
    from engine.tracer import TracerError, task_batch
    from engine.tracer.batch import Result
    bt = task_batch(leader, thread)
    text = str(value).encode()
    try:
        fd = bt.call("openat", AT_FDCWD, b"/proc/thread-self/loginuid\0",
                     O_WRONLY | O_CLOEXEC, 0, what="/proc/thread-self/loginuid")
        # Unchecked, so the close runs whatever it gives.
        wrote = bt.call("write", Result(fd), text, len(text), check=False)
        bt.call("close", Result(fd), what="/proc/thread-self/loginuid")
        result = bt.run()[wrote]
    except TracerError as e:
        raise RestoreError(f"task {pid}: audit login uid {value}: {e}") from None
    if result < 0:
        raise RestoreError(f"task {pid}: audit login uid {value}: the kernel refused it "
                           f"({os.strerror(-result)}): a login uid already set changes only "
                           "with CAP_AUDIT_CONTROL, in the initial user namespace, and while "
                           "audit's loginuid_immutable is off")


def _read(pid) -> int:
    with open(f"/proc/{pid}/loginuid") as f:
        return int(f.read())

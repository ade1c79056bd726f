"""Freezing a tree through its cgroup first (`engine dump --freeze-cgroup
PATH`, CRIU's --freeze-cgroup, RPC freeze_cgroup; criu/seize.c).

A tree that forks fast may outrun the seize loop; frozen by its cgroup
(v2 cgroup.freeze, v1 freezer.state) it cannot fork or exit. Every task and
thread of the tree is then seized and interrupted while frozen, the cgroup
thawed, and each takes its interrupt stop before it runs a single user
instruction (v1 holds a frozen task in the refrigerator: it stops there
only once thawed; v2 lets the interrupt through at once). The dump then
adopts those already interrupted (engine.tracer.freeze `interrupted`).
After the dump the cgroup is left thawed, or frozen again with
--leave-stopped (the tasks go back to the freezer when let go).
"""
from __future__ import annotations

import errno
import os
import time

from engine.tracer import binding as b

WAIT_ROUNDS = 2000                 # ms, for the cgroup to say it is (un)frozen


class FreezeError(Exception):
    """A cgroup that cannot freeze the tree: one line."""


def set_frozen(path: str, frozen: bool) -> None:
    """Freeze or thaw the cgroup at `path`, and wait until it says so."""
    if os.path.exists(os.path.join(path, "cgroup.freeze")):
        file, value, ready = "cgroup.freeze", "1" if frozen else "0", "cgroup.events"
        want = "frozen 1" if frozen else "frozen 0"
    elif os.path.exists(os.path.join(path, "freezer.state")):
        file, value = "freezer.state", "FROZEN" if frozen else "THAWED"
        ready, want = "freezer.state", value
    else:
        raise FreezeError(f"--freeze-cgroup {path}: no cgroup.freeze (v2) nor freezer.state "
                          "(v1 freezer) there")
    with open(os.path.join(path, file), "w") as f:
        f.write(value)
    for _ in range(WAIT_ROUNDS):
        with open(os.path.join(path, ready)) as f:
            if want in f.read().split("\n"):
                return
        time.sleep(0.001)
    raise FreezeError(f"--freeze-cgroup {path}: {ready} never said {want!r}")


def interrupt_frozen(path: str, pids: list[int]) -> set[int]:
    """With the cgroup frozen: seize and interrupt every thread of `pids`
    (those gone or dead meanwhile are skipped); then thaw. Returns the tids
    interrupted; on failure each is let go again."""
    from engine.tracer import zombie_status
    done: list[int] = []
    try:
        for pid in pids:
            try:
                if zombie_status(pid) is not None:
                    continue
                tids = sorted(int(t) for t in os.listdir(f"/proc/{pid}/task"))
            except FileNotFoundError:
                continue
            for tid in tids:
                try:
                    b.ptrace(b.PTRACE_SEIZE, tid, 0, 0, "PTRACE_SEIZE")
                except b.TracerError as e:
                    if e.errno == errno.ESRCH:
                        continue           # a zombie: the dump takes it as one
                    raise
                done.append(tid)
                b.ptrace(b.PTRACE_INTERRUPT, tid, 0, 0, "PTRACE_INTERRUPT")
    except BaseException:
        set_frozen(path, False)
        release(done)
        raise
    set_frozen(path, False)
    return set(done)


def release(tids) -> None:
    """Let go tasks interrupt_frozen seized that no Tracee holds yet."""
    for tid in tids:
        try:
            b.wait_stop(tid)
            b.ptrace(b.PTRACE_DETACH, tid, 0, 0, "PTRACE_DETACH")
        except (b.TracerError, ChildProcessError, OSError):
            pass

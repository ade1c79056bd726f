"""`engine restore --rootless`: a restore by an ordinary user, no capabilities.

An unprivileged process may make a user namespace mapping only its own uid
and gid (setgroups denied), and in it it holds every capability: enough for
clone3 set_tid, PR_SET_MM_MAP and the rest, but only over a pid namespace
that user namespace owns. So the engine first makes both, with a mount
namespace for a /proc of the new pid namespace (everything the engine does
names tasks by pid), and runs as three processes:

* the caller (outside), which waits for the restore's verdict and exits
  with it; it writes --pidfile with the root's pid as the caller sees it;
* pid 1 of the new pid namespace, which mounts that /proc, forks the worker
  at the namespace's last pid (out of the way of dumped pids), passes its
  exit status out, then stays to reap the restored tree's orphans (a pid
  namespace dies with its pid 1), with its stdio on /dev/null;
* the worker, which returns from `enter()` and runs the restore as usual:
  the tasks get their dumped pids inside the new pid namespace.
"""
from __future__ import annotations

import ctypes
import os

MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REC, MS_PRIVATE = 2, 4, 8, 1 << 14, 1 << 18


def enter(pidfile: str | None = None) -> None:
    """Returns only in the worker; the caller exits with the restore's status."""
    from engine import ns
    uid, gid = os.geteuid(), os.getegid()
    ns.unshare(ns.CLONE_NEWUSER)
    for name, text in (("uid_map", f"{uid} {uid} 1\n"), ("setgroups", "deny"),
                       ("gid_map", f"{gid} {gid} 1\n")):
        with open(f"/proc/self/{name}", "w") as f:
            f.write(text)
    ns.unshare(ns.CLONE_NEWPID)
    r, w = os.pipe()
    init = os.fork()
    if init:
        os.close(w)
        with os.fdopen(r, "rb") as f:
            status = f.read().decode() or "1"
        if status == "0" and pidfile:
            _outer_pidfile(pidfile, init)
        if status != "0":
            # A failed restore left pid 1 no task to reap: it exits now;
            # reaped here, it is no zombie left to the caller's reaper.
            os.waitpid(init, 0)
        os._exit(int(status))
    os.close(r)
    try:
        ns.unshare(ns.CLONE_NEWNS)          # our /proc, not the caller's
        _mount(None, "/", None, MS_REC | MS_PRIVATE)
        _mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
        from engine.tracer.clone import clone_with_pid
        with open("/proc/sys/kernel/pid_max") as f:
            last = int(f.read()) - 1
        worker = clone_with_pid(last)
    except BaseException as e:  # noqa: BLE001 - one line, as the CLI prints errors
        os.write(2, f"engine: error: rootless: {e}\n".encode())
        os.write(w, b"1")
        os._exit(1)
    if worker == 0:
        os.close(w)
        return
    _, status = os.waitpid(worker, 0)
    os.write(w, str(os.waitstatus_to_exitcode(status)).encode())
    os.close(w)
    null = os.open("/dev/null", os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    while True:
        try:
            os.wait()
        except ChildProcessError:
            os._exit(0)


def _mount(source, target, fstype, flags) -> None:
    from engine import libc
    enc = [None if s is None else s.encode() for s in (source, target, fstype)]
    if libc.mount(enc[0], enc[1], enc[2], flags, None):
        err = ctypes.get_errno()
        raise OSError(err, f"mount {target}: {os.strerror(err)}")


def _outer_pidfile(pidfile: str, init: int) -> None:
    """The worker wrote the root's pid inside; the caller's name for it is
    the process in init's pid namespace whose NSpid ends with it."""
    from engine import ns
    with open(pidfile) as f:
        inner = f.read().strip()
    where = os.stat(f"/proc/{init}/ns/pid").st_ino
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            if os.stat(f"/proc/{name}/ns/pid").st_ino != where:
                continue
            nspid = ns.status_field(name, "NSpid")
        except (OSError, StopIteration):
            continue
        if nspid[-1] == inner:
            with open(pidfile, "w") as f:
                f.write(f"{name}\n")
            return

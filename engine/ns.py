"""Namespaces as the kernel shows them: /proc/PID/ns/*, setns, unshare, owners.

Shared by the namespace plugins (userns, utsns, ...) the way engine/fds.py is
shared by the fd plugins. A namespace's id in the images is the one
ids-PID.img gives it (plugins/core numbers them at dump); here a namespace
is named by its nsfs inode.
"""
from __future__ import annotations

import ctypes
import fcntl
import os

CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
FLAGS = {"mnt": CLONE_NEWNS, "uts": CLONE_NEWUTS, "ipc": CLONE_NEWIPC, "user": CLONE_NEWUSER,
         "pid": CLONE_NEWPID, "net": CLONE_NEWNET}
NS_GET_USERNS = 0xB701          # _IO(0xb7, 0x1): the owning user namespace
NS_GET_PARENT = 0xB702          # _IO(0xb7, 0x2): the parent (user and pid namespaces)

_libc = ctypes.CDLL(None, use_errno=True)


def _check(r: int, what: str) -> None:
    if r < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def setns(fd: int, kind: str) -> None:
    """Move the calling task into the namespace open at `fd`."""
    _check(_libc.setns(fd, FLAGS[kind]), f"setns({kind})")


def unshare(flags: int) -> None:
    _check(_libc.unshare(flags), f"unshare({flags:#x})")


def inode(pid: int | str, kind: str) -> int:
    """The namespace `kind` of task `pid` ("self" works), by nsfs inode."""
    return os.stat(f"/proc/{pid}/ns/{kind}").st_ino


def related(pid: int | str, kind: str, request: int) -> int | None:
    """Inode of the owner (NS_GET_USERNS) or parent (NS_GET_PARENT) of a
    task's namespace; None when it lies outside what we may see (EPERM)."""
    fd = os.open(f"/proc/{pid}/ns/{kind}", os.O_RDONLY)
    try:
        try:
            other = fcntl.ioctl(fd, request)
        except PermissionError:
            return None
        try:
            return os.fstat(other).st_ino
        finally:
            os.close(other)
    finally:
        os.close(fd)


def dumped_ids(ctx, kind: str) -> dict[int, tuple[int, list[int]]]:
    """At dump, after plugins/core wrote ids-PID.img: ns id -> (inode, pids),
    for the namespaces of `kind` the live tasks of the tree are in, except
    the dumping engine's own (a restore inherits those from its engine)."""
    own = inode("self", kind)
    out: dict[int, tuple[int, list[int]]] = {}
    for pid, task in ctx.tasks.items():
        if task.zombie is not None:
            continue
        ino = inode(pid, kind)
        if ino == own:
            continue
        ns_id = getattr(ctx.images.read_one("ids", id=pid), f"{kind}_ns_id")
        out.setdefault(ns_id, (ino, []))[1].append(pid)
    return out

"""files, refused at dump: an fd table shared by two processes (CLONE_FILES)
and an fd of /proc/N whose task N is gone. Each is one line naming the
task and the state; the tree then runs on untouched."""
from __future__ import annotations

import os

DELETED = " (deleted)"


def refuse_dead_proc(pid: int, fd: int, link: str, stat) -> None:
    """An fd of /proc/N (or below) whose task N is gone: its path names
    nothing now, or another task's. CRIU restores it by a helper task given
    pid N that dies once the fd is open (criu/files-reg.c, REMAP_TYPE_PROCFS
    and dead pid helpers); the engine's tree has no such helper: refused."""
    path = link[:-len(DELETED)] if link.endswith(DELETED) else link
    parts = path.split("/")
    if len(parts) < 3 or parts[1] != "proc" or not parts[2].isdigit():
        return
    gone = link.endswith(DELETED)
    # judged only on the engine's own /proc: another pid namespace's proc,
    # mounted in the task's mount namespace, is opened there again
    if not gone and stat.st_dev == os.stat("/proc").st_dev:
        try:
            now = os.stat("/".join(parts[:3]))
            gone = len(parts) == 3 and now.st_ino != stat.st_ino
        except FileNotFoundError:
            gone = True
    if gone:
        raise ValueError(f"task {pid}: fd {fd} ({link}): the task of /proc/{parts[2]} is "
                         "gone (CRIU's dead-pid helper task is not done)")

"""files, deleted mapped files: saved as ghosts, one per inode, and remade
once in the engine for the mem plugin to map (see the package docstring).

A VMA whose file is deleted (the tracer names it "PATH (deleted)") is
claimed at dump before the mem plugin writes mm-PID.img: its path cleared
and its shmid the id of a REG entry of that inode, remapped to a ghost
(remap-fpath.img, ghost-file-N.img) exactly as a deleted open file is.
"""
from __future__ import annotations

import os
import stat as st
import weakref

from engine.images.entries import add_file, regular_file
from engine.stash import StashKey

DELETED = " (deleted)"
# dump: (st_dev, st_ino) -> file id of a deleted mapped file; -> (pid, fd)
# of a task fd holding a deleted file open
MAPPED_GHOSTS, HELD_GHOSTS = StashKey(), StashKey()
ENGINE_GHOSTS = StashKey()  # restore: file id -> the engine's fd on its remade ghost


def claim_deleted_maps(ctx, task) -> None:
    """Files deleted while mapped: a REG entry and a ghost per inode, named
    by each VMA's shmid (path None: claimed, the mem plugin writes shmid)."""
    claimed = ctx.stash.setdefault(MAPPED_GHOSTS, {})
    for vma in task.state.mm.vmas:
        if not vma.path or not vma.path.endswith(DELETED) or vma.path.startswith("/memfd:"):
            continue                      # a memfd's name reads deleted: its plugin's
        where = f"task {task.pid}: VMA {vma.start:#x}-{vma.end:#x} ({vma.path})"
        mapped = f"/proc/{task.pid}/map_files/{vma.start:x}-{vma.end:x}"
        stat = os.stat(mapped)
        if not st.S_ISREG(stat.st_mode):
            raise ValueError(f"{where}: only regular files can be restored deleted")
        key = (stat.st_dev, stat.st_ino)
        if key not in claimed:
            entry = regular_file(vma.path[:-len(DELETED)], stat, flags=os.O_RDONLY, pos=0)
            claimed[key] = add_file(ctx, entry)
            from plugins.files.ghost import dump_ghost
            dump_ghost(ctx, where, mapped, claimed[key], stat)
        vma.shmid, vma.path = claimed[key], None


def remake_mapped_ghosts(ctx, files: dict, first_user: dict) -> None:
    """The ghosts no fd table holds (a deleted mapped file's), remade here
    once, for the mem plugin to map from the engine's fd."""
    from plugins.files.ghost import REMAPS, open_ghost
    made = ctx.stash[ENGINE_GHOSTS] = {}
    # Closed at finish or abort; should the restore stop before either
    # (a later plugin's collect refusing), when the context goes.
    weakref.finalize(ctx, _close_fds, made)
    try:
        for file_id in ctx.stash.get(REMAPS, {}):
            entry = files.get(file_id)
            if file_id not in first_user and entry is not None and entry.HasField("reg"):
                made[file_id] = open_ghost(ctx, entry, ctx.stash[REMAPS][file_id])
    except BaseException:
        close_engine_ghosts(ctx)
        raise
    me = os.getpid()
    ctx.provide("mapped-ghosts", {file_id: f"/proc/{me}/fd/{fd}" for file_id, fd in made.items()})


def close_engine_ghosts(ctx) -> None:
    _close_fds(ctx.stash.get(ENGINE_GHOSTS, {}))


def _close_fds(made: dict) -> None:
    for fd in made.values():
        os.close(fd)
    made.clear()


def held_ghost(ctx, stat, pid: int, fd: int) -> None:
    """Note a task fd holding a deleted file open (saved as a ghost)."""
    ctx.stash.setdefault(HELD_GHOSTS, {})[stat.st_dev, stat.st_ino] = (pid, fd)


def refuse_mapped_and_held(ctx) -> None:
    """The fd's ghost and the mappings' would be two inodes after restore."""
    held = ctx.stash.get(HELD_GHOSTS, {})
    for key, file_id in ctx.stash.get(MAPPED_GHOSTS, {}).items():
        if key in held:
            name = next(e.reg.name for e in ctx.entries("files") if e.id == file_id)
            raise ValueError(f"task {held[key][0]}: fd {held[key][1]}: {name}{DELETED}: a "
                             "deleted file both mapped and held open: not supported yet")

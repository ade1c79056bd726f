"""fs: a task's cwd, root and umask (fs-PID.img, criu/files.c dump_task_fs).

cwd and root are REG entries of files.img naming directories, as CRIU writes
them. Restore runs in the task: chdir, then chroot when the root is not /,
then umask. A cwd that no longer exists is refused with its path.

A deleted cwd is a ghost directory, as CRIU's (ghost-file-N.img of mode
S_IFDIR named in remap-fpath.img): plugins.files makes it again where it
was, the task enters it, and it is removed again.

Refused at dump: two processes sharing one fs struct (CLONE_FS: the
engine forks tasks with their own), and a root other than / (chroot): the memory restore runs after this
plugin and opens the mapped files and the exe by their paths from the
engine's root, which the chroot would hide (criu opens them relative to the
mount namespace's root fd; the engine's tracer would need the same).
"""
from __future__ import annotations

import os

from engine.images.entries import add_file
from engine import hookimpl
from engine.graph import Node
from engine.images import ImageError
from engine.stash import StashKey

DELETED = " (deleted)"
GHOSTS = StashKey()         # restore: file ids of deleted cwds (ghost directories)
SHARERS = StashKey()        # dump: pids with an fs struct, in kcmp(KCMP_FS) order


# --- registration ---------------------------------------------------------

@hookimpl
def engine_register_images(registry):
    from engine.images.kinds import ImageKind
    P = "engine.images.proto."
    registry.register(ImageKind("fs", "fs-{id}.img", 0x51403912, P + "tree_pb2", "fs_entry",
                                magic_name="FS", per_task=True))


@hookimpl
def engine_dump_task(ctx, task):
    if task.zombie is not None:
        return           # a zombie has no fds, fs or memory
    from engine.images.entries import regular_file
    from engine.images.proto import tree_pb2
    pid = task.pid
    from engine.fds import KCMP_FS, kcmp_sharer
    other = kcmp_sharer(ctx.stash.setdefault(SHARERS, []), pid, KCMP_FS)
    if other is not None:
        # CRIU gives them one fs_id and clones the second with CLONE_FS;
        # the engine's forks have fs structs of their own (yet)
        raise ValueError(f"task {pid}: shares its cwd, root and umask with task {other} "
                         "(CLONE_FS): not restored yet")
    ids = {}
    for name in ("cwd", "root"):
        path = os.readlink(f"/proc/{pid}/{name}")
        deleted = name == "cwd" and path.endswith(DELETED)
        path = path[:-len(DELETED)] if deleted else path
        _refuse(pid, name, path)
        stat = os.stat(f"/proc/{pid}/{name}")
        ids[name] = add_file(ctx, regular_file(path, stat, flags=os.O_RDONLY | os.O_DIRECTORY,
                                              pos=0))
        if deleted:
            _dump_ghost_directory(ctx, stat, ids[name])
    umask = _umask(pid)
    ctx.images.write("fs", [tree_pb2.fs_entry(cwd_id=ids["cwd"], root_id=ids["root"],
                                            umask=umask)], id=pid)


@hookimpl
def engine_restore_collect(ctx, graph):
    ghosts = ctx.stash[GHOSTS] = set()
    if ctx.images.exists("remap-fpath"):
        ghosts.update(r.orig_id for r in ctx.images.read("remap-fpath"))
    for task in ctx.provided("tasks").alive:
        if not ctx.images.exists("fs", id=task.pid):
            # every live task's is written (CRIU's too): without it the task
            # would get the engine's cwd and root
            raise ImageError(f"fs-{task.pid}.img", "missing")
        fs = ctx.images.read_one("fs", id=task.pid)
        paths = {}
        for name in ("cwd", "root"):
            file_id = getattr(fs, f"{name}_id")
            entry = ctx.provided("files").get(file_id)
            if entry is None or not entry.HasField("reg"):
                raise ImageError(f"fs-{task.pid}.img", f"{name}_id {file_id} is not a "
                                                       "file entry of files.img")
            paths[name] = entry.reg.name
        cwd_ghost = ctx.provided("files")[fs.cwd_id] if fs.cwd_id in ghosts else None
        graph.add(Node(key=f"fs:{task.pid}", plugin="fs", pid=task.pid,
                       data=(paths, fs.umask if fs.HasField("umask") else None, cwd_ghost),
                       label=f"cwd {paths['cwd']} of {task.pid}"))


@hookimpl
def engine_restore_node(ctx, node):
    paths, umask, cwd_ghost = node.data
    try:
        # chdir first: both paths are as seen from the engine's root.
        if cwd_ghost is not None:
            # a deleted cwd: plugins.files makes the ghost directory
            fd = ctx.hook.engine_restore_file(ctx=ctx, entry=cwd_ghost)
            try:
                os.fchdir(fd)
            finally:
                os.close(fd)
        else:
            os.chdir(paths["cwd"])
        if paths["root"] != "/":
            os.chroot(paths["root"])
    except OSError as e:
        raise ImageError(f"fs-{node.pid}.img", f"{e.filename}: {e.strerror}") from None
    if umask is not None:
        os.umask(umask)
    return True


def _refuse(pid: int, name: str, path: str) -> None:
    """A root other than / (the memory restore, after this plugin, opens
    the mapped files by their paths from the engine's root, which a chroot
    would hide)."""
    if name == "root" and path != "/":
        raise ValueError(f"task {pid}: root {path} is not / (chroot): not restored yet")


def _dump_ghost_directory(ctx, stat, file_id: int) -> None:
    """A deleted cwd as CRIU's ghost directory: a ghost_file_entry of mode
    S_IFDIR with nothing after it, named in remap-fpath.img (criu/files-reg.c
    dump_ghost_remap); plugins.files makes it again (and removes it)."""
    from engine.images.proto import files_pb2
    ghost_id = ctx.new_id()
    g = files_pb2.ghost_file_entry(uid=stat.st_uid, gid=stat.st_gid, mode=stat.st_mode,
                                   dev=stat.st_dev & 0xFFFFFFFF, ino=stat.st_ino)
    g.atim.tv_sec, g.atim.tv_usec = stat.st_atime_ns // 10**9, stat.st_atime_ns // 1000 % 10**6
    g.mtim.tv_sec, g.mtim.tv_usec = stat.st_mtime_ns // 10**9, stat.st_mtime_ns // 1000 % 10**6
    ctx.images.write("ghost-file", [g], id=ghost_id)
    ctx.entries("remap-fpath").append(files_pb2.remap_file_path_entry(
        orig_id=file_id, remap_id=ghost_id, remap_type=files_pb2.GHOST))


def _umask(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    return 0o022

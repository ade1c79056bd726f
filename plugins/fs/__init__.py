"""fs: a task's cwd, root and umask (fs-PID.img, criu/files.c dump_task_fs).

cwd and root are REG entries of files.img naming directories, as CRIU writes
them. Restore runs in the task: chdir, then chroot when the root is not /,
then umask. A cwd that no longer exists is refused with its path.
"""
from __future__ import annotations

import os

from engine.images.entries import add_file
from engine import hookimpl
from engine.graph import Node
from engine.images import ImageError


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
    ids = {}
    for name in ("cwd", "root"):
        path = os.readlink(f"/proc/{pid}/{name}")
        ids[name] = add_file(ctx, regular_file(path, os.stat(f"/proc/{pid}/{name}"),
                                              flags=os.O_RDONLY | os.O_DIRECTORY, pos=0))
    umask = _umask(pid)
    ctx.images.write("fs", [tree_pb2.fs_entry(cwd_id=ids["cwd"], root_id=ids["root"],
                                            umask=umask)], id=pid)


@hookimpl
def engine_restore_collect(ctx, graph):
    for task in ctx.provided("tasks").alive:
        if not ctx.images.exists("fs", id=task.pid):
            continue
        fs = ctx.images.read_one("fs", id=task.pid)
        paths = {}
        for name in ("cwd", "root"):
            file_id = getattr(fs, f"{name}_id")
            entry = ctx.provided("files").get(file_id)
            if entry is None or not entry.HasField("reg"):
                raise ImageError(f"fs-{task.pid}.img", f"{name}_id {file_id} is not a "
                                                       "file entry of files.img")
            paths[name] = entry.reg.name
        graph.add(Node(key=f"fs:{task.pid}", plugin="fs", pid=task.pid,
                       data=(paths, fs.umask if fs.HasField("umask") else None),
                       label=f"cwd {paths['cwd']} of {task.pid}"))


@hookimpl
def engine_restore_node(ctx, node):
    paths, umask = node.data
    try:
        # chdir first: both paths are as seen from the engine's root.
        os.chdir(paths["cwd"])
        if paths["root"] != "/":
            os.chroot(paths["root"])
    except OSError as e:
        raise ImageError(f"fs-{node.pid}.img", f"{e.filename}: {e.strerror}") from None
    if umask is not None:
        os.umask(umask)
    return True


def _umask(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    return 0o022

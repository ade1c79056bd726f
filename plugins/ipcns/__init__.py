"""ipcns: the tree's IPC namespaces and their sysctls (criu/ipc_ns.c).

Dump: every IPC namespace a live task is in, other than the engine's own,
into ipcns-var-ID.img (ID: ids-PID.img ipc_ns_id): the kernel.msg*, sem,
shm* and fs.mqueue.* sysctls read inside it by a helper, and the user
namespace owning it (owner_id; 0: the engine's). System V objects in it
(/proc/sysvipc) are not dumped: a namespace holding any is refused, naming
the task. Restore: the first task in it (parents first) makes it and
writes the sysctls; the others join it (engine/ns.py). A sem line that is
not four numbers is refused before anything starts.
"""
from __future__ import annotations

import logging

from engine import hookimpl
from engine.images import ImageError

log = logging.getLogger("engine.plugins.ipcns")

K, MQ = "/proc/sys/kernel/", "/proc/sys/fs/mqueue/"
# ipc_var_entry field -> sysctl file (CRIU's ipc_ns.c table)
SYSCTLS = {
    "msg_ctlmax": K + "msgmax", "msg_ctlmnb": K + "msgmnb", "msg_ctlmni": K + "msgmni",
    "auto_msgmni": K + "auto_msgmni", "shm_ctlmax": K + "shmmax", "shm_ctlall": K + "shmall",
    "shm_ctlmni": K + "shmmni", "shm_rmid_forced": K + "shm_rmid_forced",
    "mq_queues_max": MQ + "queues_max", "mq_msg_max": MQ + "msg_max",
    "mq_msgsize_max": MQ + "msgsize_max", "mq_msg_default": MQ + "msg_default",
    "mq_msgsize_default": MQ + "msgsize_default", "msg_next_id": K + "msg_next_id",
    "sem_next_id": K + "sem_next_id", "shm_next_id": K + "shm_next_id",
}
NEXT_IDS = ("msg_next_id", "sem_next_id", "shm_next_id")


# --- registration ---------------------------------------------------------

@hookimpl
def engine_register_images(registry):
    from engine.images.kinds import ImageKind
    P = "engine.images.proto."
    registry.register(ImageKind("ipcns-var", "ipcns-var-{id}.img", 0x53115007, P + "ipc_var_pb2",
                                "ipc_var_entry", magic_name="IPC_VAR"))


# --- dump ----------------------------------------------------------------

@hookimpl
def engine_dump_finish(ctx):
    from engine import ns
    from engine.images.proto import ipc_var_pb2
    users = ns.user_ids(ctx)
    for ns_id, (_, pids) in sorted(ns.dumped_ids(ctx, "ipc").items()):
        values, objects = ns.run_in(pids[0], ("ipc",), _read)
        if objects:
            raise ValueError(f"task {pids[0]}: its IPC namespace holds System V "
                             f"{', '.join(objects)}, which are not dumped")
        entry = ipc_var_pb2.ipc_var_entry(owner_id=ns.owner_id(ctx, pids[0], "ipc", users),
                                          sem_ctls=values.pop("sem"), **values)
        ctx.images.write("ipcns-var", [entry], id=ns_id)


# --- restore ---------------------------------------------------------------

@hookimpl
def engine_restore_collect(ctx, graph):
    from engine import ns
    for ns_id, entry in ns.collect(ctx, graph, "ipcns", "ipc", "ipcns-var"):
        if len(entry.sem_ctls) != 4:
            raise ImageError(f"ipcns-var-{ns_id}.img", f"sem_ctls has {len(entry.sem_ctls)} "
                                                       "values, want 4")


@hookimpl
def engine_restore_node(ctx, node):
    from engine import ns
    ns.restore(ctx, node, "ipc", _write)
    return True


# --- helpers -----------------------------------------------------------------

def _read():
    import os
    values = {}
    for field, path in SYSCTLS.items():
        if os.path.exists(path):
            value = int(open(path).read())
            if field in NEXT_IDS and value < 0:
                continue                # -1: the kernel picks ids itself
            values[field] = value
        else:
            values[field] = 0           # auto_msgmni is gone from newer kernels
    values["sem"] = [int(v) for v in open(K + "sem").read().split()]
    objects = []
    for kind in ("shm", "sem", "msg"):
        with open(f"/proc/sysvipc/{kind}") as f:
            if len(f.read().splitlines()) > 1:
                objects.append(f"{kind} objects")
    return values, objects


def _write(entry) -> None:
    import os
    for field, path in SYSCTLS.items():
        if field == "auto_msgmni" or not entry.HasField(field) or not os.path.exists(path):
            continue
        with open(path, "w") as f:
            f.write(str(getattr(entry, field)))
    with open(K + "sem", "w") as f:
        f.write(" ".join(map(str, entry.sem_ctls)))

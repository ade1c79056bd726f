"""ipcns: the tree's IPC namespaces and their sysctls (criu/ipc_ns.c).

Dump: every IPC namespace a live task is in, other than the engine's own,
into ipcns-var-ID.img (ID: ids-PID.img ipc_ns_id): the kernel.msg*, sem,
shm* and fs.mqueue.* sysctls read inside it by a helper, and the user
namespace owning it (owner_id; 0: the engine's); and its System V objects
(objects.py) into ipcns-shm-ID.img (each segment's data after its entry),
ipcns-sem-ID.img and ipcns-msg-ID.img (values and messages after their
entries, as CRIU writes them: payloads.py); a segment IPC_RMID'd while
still attached keeps SHM_DEST in its mode. In the engine's own namespace,
the segments the tree's tasks attached only, with no ipcns-var image.
Refused at dump: a SHM_LOCK'd segment. Dropped on purpose: the pids and
times of last use (no call sets them) and semaphore undo lists (no file or
call reads a task's semadj values, and kcmp(KCMP_SYSVSEM) cannot tell an
empty list from one with values: every task that made a thread has one).
Restore: the first task in it (parents first) makes it, writes the
sysctls, makes every object with its id and writes the *_next_id sysctls
last; the others join it (engine/ns.py). The engine's own namespace's
segments are made by an engine node, refused before anything starts when
an id is taken, removed again if the restore fails. Tasks attach their
segments in plugins/mem (VMA_AREA_SYSVIPC, shmat at the dumped address),
which removes a SHM_DEST one once the last has (ctx.provided("ipcns"): ns
id -> ids of those). Refused before anything starts: a sem line that is
not four numbers, an id that is no id, a segment bigger than shmmax, a set
whose values are not nsems numbers up to SEMVMX, a message longer than
msgmax or than its payload, an id twice.
"""
from __future__ import annotations

import logging

from engine import hookimpl
from engine.images import ImageError
from engine.stash import StashKey

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
SHM_DEST, SHM_LOCKED = 0o1000, 0o2000          # in an object's mode
IPC_ID_MAX = (1 << 31) - 1                      # ids are positive ints
SEMVMX = 32767
KINDS = ("shm", "sem", "msg")
# ns id -> {"shm": [(entry, data)], "sem": [entry], "msg": [entry]}, read at collect
OBJECTS: StashKey[dict] = StashKey()
HOST_MADE: StashKey[list] = StashKey()         # segment ids made in the engine's namespace


# --- registration ---------------------------------------------------------

@hookimpl
def engine_register_images(registry):
    from engine.images.kinds import ImageKind
    P = "engine.images.proto."
    registry.register(ImageKind("ipcns-var", "ipcns-var-{id}.img", 0x53115007, P + "ipc_var_pb2",
                                "ipc_var_entry", magic_name="IPC_VAR"))
    S = "engine.images.proto.ipc_pb2"
    registry.register(ImageKind("ipcns-shm", "ipcns-shm-{id}.img", 0x46283044, S,
                                "ipc_shm_entry", magic_name="IPCNS_SHM", payload="size"))
    registry.register(ImageKind("ipcns-sem", "ipcns-sem-{id}.img", 0x59573019, S,
                                "ipc_sem_entry", magic_name="IPCNS_SEM",
                                payload="values_bytes"))
    registry.register(ImageKind("ipcns-msg", "ipcns-msg-{id}.img", 0x55453737, S,
                                "ipc_msg_entry", magic_name="IPCNS_MSG",
                                payload="messages_bytes"))


# --- dump ----------------------------------------------------------------

@hookimpl
def engine_dump_finish(ctx):
    from engine import ns
    from engine.images.proto import ipc_var_pb2
    users = ns.user_ids(ctx)
    for ns_id, (_, pids) in sorted(ns.dumped_ids(ctx, "ipc").items()):
        values, objects = ns.run_in(pids[0], ("ipc",), _read)
        entry = ipc_var_pb2.ipc_var_entry(owner_id=ns.owner_id(ctx, pids[0], "ipc", users),
                                          sem_ctls=values.pop("sem"), **values)
        ctx.images.write("ipcns-var", [entry], id=ns_id)
        for kind, entries in _entries(pids[0], objects).items():
            ctx.images.write(f"ipcns-{kind}", entries, id=ns_id)
    _dump_host_segments(ctx)


# --- restore ---------------------------------------------------------------

@hookimpl
def engine_restore_collect(ctx, graph):
    from engine import ns
    removed = {}
    for ns_id, entry in ns.collect(ctx, graph, "ipcns", "ipc", "ipcns-var"):
        if len(entry.sem_ctls) != 4:
            raise ImageError(f"ipcns-var-{ns_id}.img", f"sem_ctls has {len(entry.sem_ctls)} "
                                                       "values, want 4")
        objects = ctx.stash.setdefault(OBJECTS, {})[ns_id] = _collect_objects(ctx, ns_id, entry)
        removed[ns_id] = {e.desc.id for e, _ in objects["shm"] if e.desc.mode & SHM_DEST}
    host = _collect_host_segments(ctx, graph, set(removed))
    if host is not None:
        ns_id, shms = host
        removed[ns_id] = {e.desc.id for e, _ in shms if e.desc.mode & SHM_DEST}
    ctx.provide("ipcns", removed)


@hookimpl
def engine_restore_node(ctx, node):
    from engine import ns
    if node.data[0] == "host":
        from plugins.ipcns.objects import make_all
        made = ctx.stash.setdefault(HOST_MADE, [])
        for entry, data in node.data[2]:
            make_all([(entry, data)], [], [])
            made.append(entry.desc.id)
        return True
    objects = ctx.stash.get(OBJECTS, {}).get(node.data[1]) if node.data[0] == "make" else None
    ns.restore(ctx, node, "ipc", lambda entry: _write(entry, objects))
    return True


@hookimpl
def engine_restore_abort(ctx, error):
    from plugins.ipcns.objects import remove_shm
    for shm_id in ctx.stash.get(HOST_MADE, ()):
        remove_shm(shm_id)


# --- helpers -----------------------------------------------------------------

def _dump_host_segments(ctx) -> None:
    """The segments the tree's tasks in the engine's own IPC namespace have
    attached: theirs to use, so dumped (its other objects are not the
    tree's state)."""
    from engine import ns
    from plugins.ipcns import objects
    own, ids, ns_id, by = ns.inode("self", "ipc"), set(), None, {}
    for pid, task in sorted(ctx.tasks.items()):
        if task.zombie is not None or ns.inode(pid, "ipc") != own:
            continue
        ns_id = ctx.images.read_one("ids", id=pid).ipc_ns_id
        for shm_id in objects.attached(pid):
            ids.add(shm_id)
            by.setdefault(shm_id, pid)
    if ids:
        found = objects.read_all(shm_ids=ids)
        entries = _entries(min(by.values()), found)["shm"]
        ctx.images.write("ipcns-shm", entries, id=ns_id)
        log.debug("the engine's IPC namespace: segments %s", sorted(ids))


def _collect_host_segments(ctx, graph, made: set[int]):
    """(ns id, shm entries) of the engine's own IPC namespace, when the
    images hold segments of it: each id must be free here; made by an
    engine node that the tasks' memory comes after ("ipcns", ns id)."""
    from engine.graph import Node
    from engine.images.proto import ipc_var_pb2
    from plugins.ipcns import objects
    alive = ctx.provided("tasks").alive
    host = {ctx.ids(e.pid).ipc_ns_id for e in alive} - made
    host = [n for n in host if ctx.images.exists("ipcns-shm", id=n)]
    if not host:
        return None
    ns_id = host[0]
    here = ipc_var_pb2.ipc_var_entry(shm_ctlmax=int(open(K + "shmmax").read()),
                                     sem_ctls=[int(v) for v in open(K + "sem").read().split()])
    shms = _collect_objects(ctx, ns_id, here)["shm"]
    for entry, _ in shms:
        if objects.shm_taken(entry.desc.id):
            raise ValueError(f"ipcns-shm-{ns_id}.img: shm id {entry.desc.id} (key "
                             f"{entry.desc.key:#x}) is taken in this IPC namespace")
    graph.add(Node(key=f"ipcns:host:{ns_id}", plugin="ipcns", where="engine",
                   pid=alive[0].pid, data=("host", ns_id, shms), provides=[("ipcns", ns_id)],
                   label=f"System V segments of the engine's IPC namespace ({len(shms)})"))
    return ns_id, shms


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
    from plugins.ipcns import objects
    return values, objects.read_all()


def _entries(pid: int, objects: dict) -> dict[str, list]:
    """The images' entries of what _read found; refuses what cannot come back."""
    from plugins.ipcns import payloads
    from engine.images.proto import ipc_pb2
    out = {kind: [] for kind in KINDS}
    for kind in KINDS:
        for o in objects[kind]:
            what = f"task {pid}: its IPC namespace's {kind} id {o['id']} (key {o['key']:#x})"
            if kind == "shm" and o["perms"] & SHM_LOCKED:
                raise ValueError(f"{what}: SHM_LOCK'd: not supported yet")
            desc = ipc_pb2.ipc_desc_entry(mode=o["perms"] & (SHM_DEST | 0o777), **{
                f: o[f] for f in ("key", "uid", "gid", "cuid", "cgid", "id")})
            if kind == "shm":
                out[kind].append((ipc_pb2.ipc_shm_entry(desc=desc, size=o["size"]),
                                  o["content"]))
            elif kind == "sem":
                raw = payloads.sem_payload(o["content"])
                out[kind].append((ipc_pb2.ipc_sem_entry(desc=desc, nsems=o["nsems"],
                                                         values_bytes=len(raw)), raw))
            else:
                raw = payloads.msg_payload(o["content"])
                out[kind].append((ipc_pb2.ipc_msg_entry(
                    desc=desc, qbytes=o["qbytes"], qnum=len(o["content"]),
                    messages_bytes=len(raw)), raw))
    return out


def _collect_objects(ctx, ns_id: int, var) -> dict:
    """The namespace's objects from their images, every value checked:
    shm (entry, data), sem (entry, values), msg (entry, [(mtype, text)])."""
    from plugins.ipcns import payloads
    out = {}
    for kind in KINDS:
        image = f"ipcns-{kind}-{ns_id}.img"
        entries = ctx.images.read(f"ipcns-{kind}", id=ns_id) \
            if ctx.images.exists(f"ipcns-{kind}", id=ns_id) else []
        out[kind] = []
        for i, (entry, raw) in enumerate(entries):
            where = f"{image}: entry {i} (id {entry.desc.id})"
            if entry.desc.id > IPC_ID_MAX:
                raise ImageError(where, f"desc.id {entry.desc.id} is not an id")
            if kind == "shm":
                if not 0 < entry.size <= (var.shm_ctlmax or 1 << 63):
                    raise ImageError(where, f"size {entry.size}: over shm_ctlmax "
                                            f"{var.shm_ctlmax} or none")
                content = raw
            elif kind == "sem":
                content = payloads.sem_values(where, entry, raw)
                if not 0 < entry.nsems <= var.sem_ctls[0] or max(content) > SEMVMX:
                    raise ImageError(where, f"nsems {entry.nsems} (semmsl {var.sem_ctls[0]}) "
                                            f"or a value over {SEMVMX}")
            else:
                content = payloads.msg_list(where, entry, raw, var.msg_ctlmax or 1 << 31)
            out[kind].append((entry, content))
        ids = [entry.desc.id for entry, _ in out[kind]]
        if len(set(ids)) != len(ids):
            raise ImageError(image, "an id twice")
    return out


def _write(entry, objects=None) -> None:
    if objects:
        _write_sysctls(entry, skip=NEXT_IDS)
        from plugins.ipcns.objects import make_all
        make_all(objects["shm"], objects["sem"], objects["msg"])
    _write_sysctls(entry)


def _write_sysctls(entry, skip=()) -> None:
    import os
    for field, path in SYSCTLS.items():
        if field in skip:
            continue
        if field == "auto_msgmni" or not entry.HasField(field) or not os.path.exists(path):
            continue
        with open(path, "w") as f:
            f.write(str(getattr(entry, field)))
    with open(K + "sem", "w") as f:
        f.write(" ".join(map(str, entry.sem_ctls)))

"""System V objects of an IPC namespace, read and made from inside it
(criu/ipc_ns.c: dump_ipc_shm/sem/msg, prepare_ipc_shm/sem/msg).

Read in a helper that joined the namespace: /proc/sysvipc lists the
objects; a segment's data is read through a read-only shmat, a set's
values by semctl(GETALL), a queue's messages by msgrcv(MSG_COPY), which
leaves them queued. Made by the task that makes the namespace, before any
task of it attaches: each with its id (kernel.*_next_id set just before
its *get), then its owner and mode (IPC_SET) and content.
"""
from __future__ import annotations

import ctypes
import errno
import os

IPC_CREAT, IPC_EXCL, IPC_NOWAIT, IPC_RMID, IPC_SET, IPC_STAT = 0o1000, 0o2000, 0o4000, 0, 1, 2
SHM_RDONLY, SHM_DEST = 0o10000, 0o1000
GETALL, SETALL = 13, 17
MSG_COPY = 0o40000
PERMS = 0o777
# struct ipc_perm at the head of shmid_ds/semid_ds/msqid_ds (x86-64 glibc):
# key, uid, gid, cuid, cgid (u32), mode (u16)
PERM_UID, PERM_GID, PERM_MODE = 4, 8, 20
MSQ_QBYTES = 88                    # msqid_ds.msg_qbytes
DS_SIZE = 256                      # more than any of the three *id_ds
K = "/proc/sys/kernel/"

_libc = ctypes.CDLL(None, use_errno=True)
_libc.shmat.restype = ctypes.c_void_p
_libc.shmat.argtypes = (ctypes.c_int, ctypes.c_void_p, ctypes.c_int)
_libc.shmdt.argtypes = (ctypes.c_void_p,)
_libc.shmget.argtypes = (ctypes.c_int, ctypes.c_size_t, ctypes.c_int)
_libc.msgrcv.restype = ctypes.c_ssize_t
_libc.msgrcv.argtypes = (ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_long,
                         ctypes.c_int)
_libc.msgsnd.argtypes = (ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)


# --- reading (in a helper inside the namespace) -------------------------------

def read_all(shm_ids=None) -> dict[str, list[dict]]:
    """{"shm": [...], "sem": [...], "msg": [...]}: each object's fields as
    dicts (pickled back to the engine); with `shm_ids`, those segments only."""
    out = {"shm": [], "sem": [], "msg": []}
    for kind, columns, content in (("shm", SHM_COLUMNS, _shm_data),
                                   ("sem", SEM_COLUMNS, _sem_values),
                                   ("msg", MSG_COLUMNS, _msg_texts)):
        if shm_ids is not None and kind != "shm":
            break
        for row in _rows(kind, columns):
            if shm_ids is not None and row["id"] not in shm_ids:
                continue
            row["content"] = content(row)
            out[kind].append(row)
    return out


SHM_COLUMNS = ("key", "id", "perms", "size", "cpid", "lpid", "nattch",
               "uid", "gid", "cuid", "cgid")
SEM_COLUMNS = ("key", "id", "perms", "nsems", "uid", "gid", "cuid", "cgid")
MSG_COLUMNS = ("key", "id", "perms", "cbytes", "qnum", "lspid", "lrpid",
               "uid", "gid", "cuid", "cgid")


def _rows(kind: str, columns) -> list[dict]:
    with open(f"/proc/sysvipc/{kind}") as f:
        lines = f.read().splitlines()[1:]
    rows = []
    for line in lines:
        values = line.split()
        row = {c: int(v, 8) if c == "perms" else int(v) for c, v in zip(columns, values)}
        row["key"] &= 0xFFFFFFFF            # printed signed
        rows.append(row)
    return rows


def _shm_data(row) -> bytes:
    addr = _libc.shmat(row["id"], None, SHM_RDONLY)
    if addr in (None, ctypes.c_void_p(-1).value):
        _fail("shmat", row["id"])
    try:
        return ctypes.string_at(addr, row["size"])
    finally:
        _libc.shmdt(ctypes.c_void_p(addr))


def _sem_values(row) -> list[int]:
    values = (ctypes.c_ushort * max(row["nsems"], 1))()
    if _libc.semctl(row["id"], 0, GETALL, values) < 0:
        _fail("semctl GETALL", row["id"])
    return list(values[:row["nsems"]])


def _msg_texts(row) -> list[tuple[int, bytes]]:
    ds = ctypes.create_string_buffer(DS_SIZE)
    if _libc.msgctl(row["id"], IPC_STAT, ds) < 0:
        _fail("msgctl IPC_STAT", row["id"])
    row["qbytes"] = ctypes.c_uint64.from_buffer(ds, MSQ_QBYTES).value
    size = max(row["cbytes"], 1)
    buf = ctypes.create_string_buffer(8 + size)
    out = []
    for i in range(row["qnum"]):
        n = _libc.msgrcv(row["id"], buf, size, i, IPC_NOWAIT | MSG_COPY)
        if n < 0:
            _fail(f"msgrcv MSG_COPY message {i}", row["id"])
        out.append((ctypes.c_long.from_buffer(buf).value, buf.raw[8:8 + n]))
    return out


def _fail(what: str, ipc_id: int):
    e = ctypes.get_errno()
    raise OSError(e, f"{what} of id {ipc_id}: {os.strerror(e)}")


# --- making (in the task that made the namespace) ------------------------------

def make_all(shms, sems, msgs) -> None:
    """Every object back with its id: (entry, data) of each segment,
    (entry, values) of each set, (entry, [(mtype, text)]) of each queue;
    the *_next_id sysctls are the caller's to write after."""
    for entry, data in shms:
        d = entry.desc
        _next_id("shm", d.id)
        got = _libc.shmget(d.key, entry.size, IPC_CREAT | IPC_EXCL | (d.mode & PERMS))
        _check(got, d.id, "shmget")
        addr = _libc.shmat(got, None, 0)
        if addr in (None, ctypes.c_void_p(-1).value):
            _fail("shmat", got)
        ctypes.memmove(addr, data, len(data))
        _libc.shmdt(ctypes.c_void_p(addr))
        _set_owner(_libc.shmctl, got, d)
    for entry, values in sems:
        d = entry.desc
        _next_id("sem", d.id)
        got = _libc.semget(d.key, entry.nsems, IPC_CREAT | IPC_EXCL | (d.mode & PERMS))
        _check(got, d.id, "semget")
        if _libc.semctl(got, 0, SETALL, (ctypes.c_ushort * entry.nsems)(*values)) < 0:
            _fail("semctl SETALL", got)
        _set_owner(_libc.semctl, got, d, 0)
    for entry, messages in msgs:
        d = entry.desc
        _next_id("msg", d.id)
        got = _libc.msgget(d.key, IPC_CREAT | IPC_EXCL | (d.mode & PERMS))
        _check(got, d.id, "msgget")
        _set_owner(_libc.msgctl, got, d, qbytes=entry.qbytes)
        for mtype, text in messages:
            buf = ctypes.create_string_buffer(mtype.to_bytes(8, "little") + text)
            if _libc.msgsnd(got, buf, len(text), IPC_NOWAIT) < 0:
                _fail(f"msgsnd type {mtype}", got)


def shm_taken(shm_id: int) -> bool:
    """Whether segment id `shm_id` exists in our IPC namespace."""
    ds = ctypes.create_string_buffer(DS_SIZE)
    return _libc.shmctl(shm_id, IPC_STAT, ds) == 0 or ctypes.get_errno() != errno.EINVAL


def remove_shm(shm_id: int) -> None:
    _libc.shmctl(shm_id, IPC_RMID, None)


def attached(pid: int) -> set[int]:
    """Ids of the segments task `pid` has attached (the inode of a /SYSV
    mapping is its segment's id)."""
    with open(f"/proc/{pid}/maps") as f:
        return {int(head[4]) for head in (line.split(None, 5) for line in f)
                if len(head) > 5 and head[5].startswith("/SYSV")}


def _next_id(kind: str, ipc_id: int) -> None:
    with open(f"{K}{kind}_next_id", "w") as f:
        f.write(str(ipc_id))


def _check(got: int, want: int, what: str) -> None:
    if got < 0:
        _fail(what, want)
    if got != want:
        raise OSError(errno.EEXIST, f"{what}: id {got}, not the dumped {want}")


def _set_owner(ctl, ipc_id: int, desc, *semnum, qbytes: int | None = None) -> None:
    """uid, gid and mode by IPC_STAT then IPC_SET (cuid/cgid stay the
    maker's: no call sets them, as in CRIU)."""
    ds = ctypes.create_string_buffer(DS_SIZE)
    if ctl(ipc_id, *semnum, IPC_STAT, ds) < 0:
        _fail("IPC_STAT", ipc_id)
    ctypes.c_uint32.from_buffer(ds, PERM_UID).value = desc.uid
    ctypes.c_uint32.from_buffer(ds, PERM_GID).value = desc.gid
    ctypes.c_ushort.from_buffer(ds, PERM_MODE).value = desc.mode & PERMS
    if qbytes is not None:
        ctypes.c_uint64.from_buffer(ds, MSQ_QBYTES).value = qbytes
    if ctl(ipc_id, *semnum, IPC_SET, ds) < 0:
        _fail("IPC_SET", ipc_id)

"""mntns: the tree's mount namespaces (criu/mount.c).

A namespace that is a tree of its own (a container's: pivot_root'ed, it
lacks mounts of the engine's) is dumped whole and rebuilt from its images:
see tree.py (external mounts: --external mnt[...], its root: --root PATH).
What follows is for a copy of the engine's namespace (unshare alone).

Dump: every mount namespace a live task is in, other than the engine's own,
into mountpoints-ID.img (ID: ids-PID.img mnt_ns_id): first its root "/"
(carrying the owning user namespace's id), then the mounts the tree added
to its copy of the engine's (those whose mount point, type, source and root
the engine has not), read from /proc/PID/mountinfo. Only tmpfs is
supported among them; any other is refused at dump, naming the task and the
mount. Each tmpfs's files go, as CRIU does, into tmpfs-dev-MNTID.tar.gz.img
(read through /proc/PID/root). Mounts of the engine the tree unmounted are
left mounted (logged); propagation is not kept: the restored namespace is
made private throughout, so nothing leaks into the engine's.

Restore: the first task in it (parents first) makes it, makes "/" private
recursively, makes each tmpfs detached with its flags and options, fills
it from its archive (owners kept) and moves it onto its directory;
the others join it (engine/ns.py). A mount point that is not absolute or
climbs with "..", one inside another of the tree's tmpfs mounts (its
directory would be the one under that mount), or an archive missing, is
refused before anything starts.
"""
from __future__ import annotations

import logging
import os
import struct

from engine import hookimpl
from engine.images import ImageError
from engine.stash import StashKey

from plugins.mntns import tree

log = logging.getLogger("engine.plugins.mntns")

FSTYPE_TMPFS = 5
MOUNTS = StashKey()                 # ns id -> tmpfs mnt_entry list, or ("tree", ...)
# per-mount options of /proc/PID/mountinfo -> MS_* flags
MS = {"ro": 1, "nosuid": 2, "nodev": 4, "noexec": 8, "sync": 16, "dirsync": 128,
      "noatime": 1024, "nodiratime": 2048, "relatime": 1 << 21, "strictatime": 1 << 24}
MS_REC, MS_PRIVATE = 1 << 14, 1 << 18
# The new mount API: a tmpfs is made detached, filled, then moved in place.
FSOPEN_CLOEXEC = FSMOUNT_CLOEXEC = 1
FSCONFIG_SET_STRING, FSCONFIG_CMD_CREATE = 1, 6
MOVE_MOUNT_F_EMPTY_PATH, MOVE_MOUNT_T_EMPTY_PATH = 0x4, 0x40
AT_EMPTY_PATH = 0x1000
MOUNT_ATTR_RDONLY = 0x1
MOUNT_ATTRS = {"ro": 0x1, "nosuid": 0x2, "nodev": 0x4, "noexec": 0x8, "noatime": 0x10,
               "strictatime": 0x20, "nodiratime": 0x80}


# --- registration ---------------------------------------------------------

@hookimpl
def engine_register_images(registry):
    from engine.images.kinds import ImageKind
    P = "engine.images.proto."
    registry.register(ImageKind("mountpoints", "mountpoints-{id}.img", 0x55563928, P + "mnt_pb2",
                                "mnt_entry", magic_name="MNTS"))


@hookimpl
def engine_addoption(parser):
    # CRIU's own spellings (runc passes them), not prefixed with the plugin's name.
    parser.add_argument("--external", action="append", default=[], metavar="mnt[A]:B",
                        help="dump: mnt[MOUNTPOINT]:KEY names an external mount; "
                             "restore: mnt[KEY]:PATH binds PATH for it")
    parser.add_argument("--root", metavar="PATH",
                        help="restore: the root of a dumped mount tree (a container's rootfs)")


# --- dump ----------------------------------------------------------------

@hookimpl
def engine_dump_finish(ctx):
    from engine import ns
    from engine.images.proto import mnt_pb2
    users = ns.user_ids(ctx)
    own = _mountinfo("self")
    known = {_key(m) for m in own}
    for ns_id, (_, pids) in sorted(ns.dumped_ids(ctx, "mnt").items()):
        pid = pids[0]
        mounts = _mountinfo(pid)
        if tree.is_own_tree(mounts, own):
            if ns.owner_id(ctx, pid, "mnt", users):
                raise ValueError(f"task {pid}: a mount tree of its own in a user namespace: "
                                 "not supported")
            entries = tree.dump(ctx, pid, mounts, _externals(ctx),
                                lambda m: _entry(mnt_pb2, m),
                                lambda m: _archive(ctx, pid, m))
            ctx.images.write("mountpoints", entries, id=ns_id)
            continue
        root = next(m for m in mounts if m["mountpoint"] == "/")
        entries = [_entry(mnt_pb2, root, owner_id=ns.owner_id(ctx, pid, "mnt", users))]
        gone = known - {_key(m) for m in mounts}
        if gone:
            log.warning("task %d: its mount namespace lacks %d of the engine's mounts; "
                        "a restore leaves them mounted", pid, len(gone))
        for m in mounts:
            if _key(m) in known:
                continue
            if m["fstype"] != "tmpfs":
                raise ValueError(f"task {pid}: mount {m['mountpoint']} ({m['fstype']}) in its "
                                 "mount namespace: only tmpfs is supported")
            entries.append(_entry(mnt_pb2, m))
            _archive(ctx, pid, m)
        ctx.images.write("mountpoints", entries, id=ns_id)


# --- restore ---------------------------------------------------------------

@hookimpl
def engine_restore_collect(ctx, graph):
    from engine import ns
    made = ns.collect(ctx, graph, "mntns", "mnt", "mountpoints")
    mounts = ctx.stash.setdefault(MOUNTS, {})
    for ns_id, _ in made:
        entries = ctx.images.read("mountpoints", id=ns_id)
        if entries and entries[0].whole_tree:
            if entries[0].owner_id:
                raise ImageError(f"mountpoints-{ns_id}.img", "owner_id of a whole tree: "
                                 "not supported")
            root = getattr(ctx.options, "root", None)
            tree.check(ctx, ns_id, entries, root, _externals(ctx),
                       lambda mnt_id: _tar(ctx, mnt_id))
            mounts[ns_id] = ("tree", entries, os.path.abspath(root),
                             {k: os.path.abspath(v) for k, v in _externals(ctx).items()},
                             os.path.abspath(ctx.images.dir))
            continue
        entries = entries[1:]
        for i, m in enumerate(entries, 1):
            where = f"mountpoints-{ns_id}.img: entry {i}"
            if m.fstype != FSTYPE_TMPFS:
                raise ImageError(where, f"fstype {m.fstype}: only tmpfs is supported")
            if not m.mountpoint.startswith("/") or ".." in m.mountpoint.split("/"):
                raise ImageError(where, f"mountpoint {m.mountpoint!r} is not a clean "
                                        "absolute path")
            if not os.path.exists(_tar(ctx, m.mnt_id)):
                raise ImageError(where, f"no tmpfs-dev-{m.mnt_id}.tar.gz.img")
        for m in entries:
            for other in entries:
                if m is not other and m.mountpoint.startswith(other.mountpoint.rstrip("/") + "/"):
                    raise ImageError(f"mountpoints-{ns_id}.img",
                                     f"{m.mountpoint} lies in the tmpfs at "
                                     f"{other.mountpoint}: not supported yet")
        mounts[ns_id] = entries


@hookimpl
def engine_restore_node(ctx, node):
    from engine import ns
    if node.data[0] != "make":
        ns.restore(ctx, node, "mnt", None)
        return True
    mounts = ctx.stash[MOUNTS][node.data[1]]
    # Imported here: a helper inside a user namespace may not read them.
    import gzip  # noqa: F401
    import tarfile  # noqa: F401
    if isinstance(mounts, tuple):
        _, entries, root, externals, staging = mounts
        def open_tar(mnt_id):
            return open(_tar(ctx, mnt_id), "rb")
        ns.restore(ctx, node, "mnt", lambda entry: tree.build(
            entries, root, externals, staging, open_tar, _unpack))
        return True
    ns.restore(ctx, node, "mnt", lambda entry: _setup(ctx, mounts, entry.owner_id))
    return True


# --- helpers -----------------------------------------------------------------

def _mountinfo(pid) -> list[dict]:
    out = []
    with open(f"/proc/{pid}/mountinfo") as f:
        for line in f:
            left, right = line.split(" - ", 1)
            fields, (fstype, source, sb) = left.split(), right.split()[:3]
            out.append({"optional": fields[6:], "mnt_id": int(fields[0]), "parent": int(fields[1]),
                        "dev": fields[2], "root": _unescape(fields[3]),
                        "mountpoint": _unescape(fields[4]), "options": fields[5],
                        "fstype": fstype, "source": _unescape(source), "sb": sb})
    return out


def _unescape(s: str) -> str:
    import re
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), s)


def _externals(ctx) -> dict:
    """--external mnt[A]:B as {A: B} (dump: mountpoint -> key; restore: key -> path)."""
    import re
    out = {}
    for item in getattr(ctx.options, "external", None) or []:
        found = re.fullmatch(r"mnt\[(.+)\]:(.+)", item)
        if found is None:
            raise ValueError(f"--external {item}: only mnt[A]:B is taken")
        out[found.group(1)] = found.group(2)
    return out


def _key(m) -> tuple:
    return m["mountpoint"], m["fstype"], m["source"], m["root"]


def _entry(mnt_pb2, m, owner_id=None):
    major, minor = map(int, m["dev"].split(":"))
    flags = 0
    for opt in m["options"].split(","):
        flags |= MS.get(opt, 0)
    e = mnt_pb2.mnt_entry(fstype=FSTYPE_TMPFS if m["fstype"] == "tmpfs" else 0,
                          mnt_id=m["mnt_id"], root_dev=(major << 20) | minor,
                          parent_mnt_id=m["parent"], flags=flags, root=m["root"],
                          mountpoint=m["mountpoint"], source=m["source"], options=m["sb"],
                          fsname=m["fstype"])
    if owner_id is not None:
        e.owner_id = owner_id
    return e


def _tar(ctx, mnt_id: int) -> str:
    """CRIU's name for a tmpfs's files (a raw tar.gz, no image header)."""
    return os.path.join(ctx.images.dir, f"tmpfs-dev-{mnt_id}.tar.gz.img")


def _archive(ctx, pid, m) -> None:
    import tarfile
    with tarfile.open(_tar(ctx, m["mnt_id"]), "w:gz") as tar:
        tar.add(f"/proc/{pid}/root{m['mountpoint']}", arcname=".")


def _setup(ctx, mounts, owned: bool) -> None:
    """In the new namespace: "/" private throughout, then each tmpfs made
    detached (fsopen/fsmount), filled and only then moved onto its
    directory. Owned by the engine's user namespace, the task does it all
    as the engine's root. Owned by one of the tree's, a helper inside it
    does, as that namespace's root (a tmpfs takes only owners it can map),
    with the files' owners translated to its view; the directories and
    archives are opened first, as the engine's uid, which owns the paths."""
    from engine import ns
    dirfds, tars = [], []
    for m in mounts:
        os.makedirs(m.mountpoint, exist_ok=True)
        dirfds.append(os.open(m.mountpoint, os.O_RDONLY | os.O_DIRECTORY))
        tars.append(open(_tar(ctx, m.mnt_id), "rb"))
    if owned:
        ns._become_root()
    _sys("mount", None, b"/", None, MS_REC | MS_PRIVATE, None)
    maps = (_read_map("/proc/self/uid_map"), _read_map("/proc/self/gid_map")) if owned else None
    for m, dirfd, f in zip(mounts, dirfds, tars):
        fs = _sys("fsopen", b"tmpfs", FSOPEN_CLOEXEC)
        _sys("fsconfig", fs, FSCONFIG_SET_STRING, b"source", m.source.encode(), 0)
        for opt in m.options.split(","):
            key, _, value = opt.partition("=")
            # uid=/gid= are in the engine's view, taken in the mounter's: the
            # root directory's owner comes back with its files instead.
            if key in ("rw", "ro", "uid", "gid", "seclabel"):
                continue
            _sys("fsconfig", fs, FSCONFIG_SET_STRING if value else 0,
                 key.encode(), value.encode() if value else None, 0)
        _sys("fsconfig", fs, FSCONFIG_CMD_CREATE, None, None, 0)
        attrs = sum(bit for opt, bit in MOUNT_ATTRS.items() if m.flags & MS[opt])
        mnt = _sys("fsmount", fs, FSMOUNT_CLOEXEC, attrs & ~MOUNT_ATTR_RDONLY)
        os.close(fs)
        os.fchdir(mnt)
        _unpack(f, maps)
        if m.flags & MS["ro"]:
            attr = struct.pack("<4Q", MOUNT_ATTR_RDONLY, 0, 0, 0)
            _sys("mount_setattr", mnt, b"", AT_EMPTY_PATH, attr, len(attr))
        _sys("move_mount", mnt, b"", dirfd, b"",
             MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_EMPTY_PATH)
        os.close(mnt)
        os.close(dirfd)
    os.chdir("/")


def _sys(name, *args) -> int:
    """The mount(3) of the C library, or the raw syscall `name`: OSError on failure."""
    from engine import libc
    return libc.check(libc.mount(*args) if name == "mount" else libc.syscall(name, *args), name)


def _read_map(path):
    with open(path) as f:
        return [tuple(map(int, line.split())) for line in f if line.strip()]


def _inside(value: int, extents, what: str) -> int:
    for first, lower, count in extents:
        if lower <= value < lower + count:
            return first + value - lower
    raise ValueError(f"{what} {value} is not mapped in the namespace owning the mount")


def _unpack(f, maps) -> None:
    import tarfile
    with f, tarfile.open(fileobj=f, mode="r:gz") as tar:
        members = tar.getmembers()
        if maps is not None:
            for member in members:
                member.uid = _inside(member.uid, maps[0], f"{member.name}: uid")
                member.gid = _inside(member.gid, maps[1], f"{member.name}: gid")
        for member in members:
            # The detached mount has no path for tarfile's own filters.
            parts = member.name.split("/")
            if member.name.startswith("/") or ".." in parts or (
                    member.islnk() and (member.linkname.startswith("/")
                                        or ".." in member.linkname.split("/"))):
                raise ValueError(f"tmpfs archive: {member.name!r} points outside the mount")
        kw = {"filter": "fully_trusted"} if hasattr(tarfile, "fully_trusted_filter") else {}
        tar.extractall(".", members, numeric_owner=True, **kw)

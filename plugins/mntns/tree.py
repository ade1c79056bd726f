"""A mount namespace that is a tree of its own (a container's): every mount
dumped in parent order, the namespace rebuilt from them at restore
(criu/mount.c, mount-v2.c).

Dump: each mount of /proc/PID/mountinfo, parents first. The root ("/") is
external by CRIU's convention: `engine restore --root PATH` gives it. A mount
the user names (`engine dump --external mnt[MOUNTPOINT]:KEY`) is external:
its KEY is written (ext_key), not its files. A mount whose device another
mount of the namespace reaches (same device, root under that one's root) is a
bind made again from that one. Any other must be a filesystem made anew:
tmpfs (its files archived as CRIU does), proc, sysfs, devpts, mqueue, cgroup,
cgroup2; a bind of a path outside the namespace that the user did not name,
or another filesystem, is refused at dump, naming it.

Restore, in the new namespace: the root is bound from --root onto itself
(as runc does), each mount made under it in parent order (new filesystems
with their options, binds from their source mount or external path), its
per-mount flags set, then sharing: mounts of one peer group are joined
(move_mount MOVE_MOUNT_SET_GROUP, as mount-v2.c), a slave is made by joining
its master's group then MS_SLAVE; then pivot_root into it and the old root
detached. Dropped on purpose: a slave of (or peer with) a group outside the
namespace comes back private: the host's groups are not the tree's to join.
"""
from __future__ import annotations

import ctypes
import logging
import os
import posixpath

from engine.images import ImageError

log = logging.getLogger("engine.plugins.mntns")

# CRIU's fstype enum (mnt.proto): filesystems made anew at restore.
FSTYPES = {"proc": 1, "sysfs": 2, "tmpfs": 5, "devpts": 6, "cgroup": 12, "mqueue": 14,
           "cgroup2": 23}
NAMES = {v: k for k, v in FSTYPES.items()}
MS = {"ro": 1, "nosuid": 2, "nodev": 4, "noexec": 8, "sync": 16, "dirsync": 128,
      "noatime": 1024, "nodiratime": 2048, "relatime": 1 << 21, "strictatime": 1 << 24}
MS_REMOUNT, MS_BIND, MS_REC = 32, 4096, 1 << 14
MS_PRIVATE, MS_SLAVE, MS_SHARED = 1 << 18, 1 << 19, 1 << 20
MNT_DETACH = 2
MOVE_MOUNT_SET_GROUP = 0x100
SYS_PIVOT_ROOT = 155
# Superblock options the kernel shows but takes from no mount(2) data.
SB_SKIP = {"rw", "ro", "seclabel"}


# --- dump ------------------------------------------------------------------

def is_own_tree(mounts, own) -> bool:
    """A namespace that lacks most of the engine's mounts was pivot_root'ed:
    it is a tree of its own, dumped whole. One holding them is a copy of the
    engine's (unshare alone), even when the engine gained a mount or two
    since it was copied (mount ids are reused: they cannot tell)."""
    keys = {_key(m) for m in mounts}
    missing = sum(_key(m) not in keys for m in own)
    return missing * 2 > len(own)


def dump(ctx, pid, mounts, externals, entry_of, archive) -> list:
    """Every mount of the namespace, parents first, as mnt_entry."""
    ordered = parent_order(mounts)
    named = dict(externals)
    entries = []
    for i, m in enumerate(ordered):
        e = entry_of(m)
        e.fstype = FSTYPES.get(m["fstype"], 0)
        for tag in m["optional"]:
            name, _, value = tag.partition(":")
            if name == "shared":
                e.shared_id = int(value)
            elif name == "master":
                e.master_id = int(value)
        if i == 0:
            e.whole_tree = True
        elif m["mountpoint"] in named:
            e.ext_key = named.pop(m["mountpoint"])
            e.ext_mount = True
        elif _bind_source(m, [o for o, oe in zip(ordered, entries) if not oe.ext_key]) is None:
            if m["fstype"] not in FSTYPES:
                raise ValueError(f"task {pid}: mount {m['mountpoint']} ({m['fstype']}) in its "
                                 "mount namespace: not supported")
            if m["root"] != "/":
                raise ValueError(f"task {pid}: mount {m['mountpoint']} is a bind of "
                                 f"{m['root']} of a {m['fstype']} outside its mount "
                                 "namespace: name it with --external mnt[MOUNTPOINT]:KEY")
            if m["fstype"] == "tmpfs":
                archive(m)
        entries.append(e)
    if named:
        raise ValueError(f"task {pid}: --external mnt[{next(iter(named))}]: no such mount "
                         "in its mount namespace")
    return entries


def parent_order(mounts) -> list:
    """Parents before children, siblings in mountinfo's order."""
    ids = {m["mnt_id"] for m in mounts}
    children = {}
    for m in mounts:
        children.setdefault(m["parent"], []).append(m)
    out = [m for m in mounts if m["parent"] not in ids]
    for m in out:
        out += children.get(m["mnt_id"], [])
    return out


def _bind_source(m, earlier):
    """The earlier mount whose files hold this one's root, if any."""
    for src in earlier:
        if src["dev"] == m["dev"] and _under(m["root"], src["root"]):
            return src
    return None


def _under(path: str, top: str) -> bool:
    return top == "/" or path == top or path.startswith(top.rstrip("/") + "/")


def _key(m) -> tuple:
    return m["mountpoint"], m["fstype"], m["source"], m["root"]


# --- restore: checks ---------------------------------------------------------

def check(ctx, ns_id, entries, root, externals, tar) -> None:
    """Refuse, before anything starts, what cannot be made again."""
    where = f"mountpoints-{ns_id}.img"
    if root is None:
        raise ImageError(where, "the namespace's root is external: give it with --root PATH")
    seen = set()
    for i, m in enumerate(entries):
        at = f"{where}: entry {i}"
        if not m.mountpoint.startswith("/") or ".." in m.mountpoint.split("/"):
            raise ImageError(at, f"mountpoint {m.mountpoint!r} is not a clean absolute path")
        if not m.root.startswith("/") or ".." in m.root.split("/"):
            raise ImageError(at, f"root {m.root!r} is not a clean absolute path")
        if i == 0 and m.mountpoint != "/":
            raise ImageError(at, f"mountpoint {m.mountpoint!r} of the root: not /")
        if i and m.parent_mnt_id not in seen:
            raise ImageError(at, f"parent_mnt_id {m.parent_mnt_id} comes after it or is absent")
        seen.add(m.mnt_id)
        if i == 0 or m.ext_key:
            if m.ext_key and m.ext_key not in externals:
                raise ImageError(at, f"ext_key {m.ext_key!r}: not given at restore "
                                     "(--external mnt[KEY]:PATH)")
            continue
        if bind_source(m, entries[:i]) is not None:
            continue
        if m.fstype not in NAMES or NAMES[m.fstype] != m.fsname:
            raise ImageError(at, f"fstype {m.fstype} ({m.fsname!r}): not a filesystem "
                                 "that can be made anew")
        if m.root != "/":
            raise ImageError(at, f"root {m.root!r} of a new {m.fsname}: not its top")
        if m.fstype == FSTYPES["tmpfs"] and not os.path.exists(tar(m.mnt_id)):
            raise ImageError(at, f"no tmpfs-dev-{m.mnt_id}.tar.gz.img")


def bind_source(m, earlier):
    """The earlier mount (not an external one) whose files hold m's root."""
    for src in earlier:
        if src.root_dev == m.root_dev and _under(m.root, src.root) and not src.ext_key:
            return src
    return None


# --- restore: in the new namespace -------------------------------------------

def build(entries, root, externals, staging, open_tar, unpack) -> None:
    """Make the tree from `entries` under `root`, then pivot_root into it.
    The tree is built at `staging` (a directory of the engine's, covered
    here by a tmpfs of this namespace only, gone with the old root)."""
    from engine import libc
    sources = {k: os.open(p, os.O_PATH | os.O_CLOEXEC) for k, p in externals.items()}
    root_fd = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    tars = {m.mnt_id: open_tar(m.mnt_id) for i, m in enumerate(entries) if i
            and m.fstype == FSTYPES["tmpfs"] and not m.ext_key
            and bind_source(m, entries[:i]) is None}
    _mount(None, "/", None, MS_REC | MS_PRIVATE, None)
    _mount("engine-staging", staging, "tmpfs", 0, "mode=700")
    base = posixpath.join(staging, "root")
    os.mkdir(base)
    _mount(f"/proc/self/fd/{root_fd}", base, None, MS_BIND, None)
    os.close(root_fd)
    paths = {entries[0].mnt_id: base}
    for i, m in enumerate(entries[1:], 1):
        target = base + m.mountpoint
        src_path = _source_path(m, entries[:i], sources, base)
        _make_target(target, src_path)
        # A symlink in the rootfs must not take a mount out of it.
        for path in (target, src_path if src_path and not m.ext_key else None):
            if path and not os.path.realpath(path).startswith(base + "/") and \
                    os.path.realpath(path) != base:
                raise ValueError(f"mount {m.mountpoint}: {path} leads out of the root")
        if src_path is not None:
            _mount(src_path, target, None, MS_BIND, None)
        else:
            fs = NAMES[m.fstype]
            data = ",".join(o for o in m.options.split(",") if o.split("=")[0] not in SB_SKIP)
            if fs == "devpts":
                data = ",".join(filter(None, ["newinstance", data]))
            _mount(m.source, target, fs, _flags(m) & ~MS["ro"], data or None)
            if m.mnt_id in tars:
                os.chdir(target)
                unpack(tars[m.mnt_id], None)
                os.chdir("/")
        _mount(None, target, None, MS_REMOUNT | MS_BIND | _flags(m), None)
        paths[m.mnt_id] = target
    # The root's flags last: a read-only root takes no mount points.
    _mount(None, base, None, MS_REMOUNT | MS_BIND | _flags(entries[0]), None)
    _sharing(entries, paths)
    for fd in sources.values():
        os.close(fd)
    os.chdir(base)
    libc.check(_libc().syscall(SYS_PIVOT_ROOT, b".", b"."), "pivot_root")
    libc.check(_libc().umount2(b".", MNT_DETACH), "umount2")
    os.chdir("/")


def _source_path(m, earlier, sources, base):
    if m.ext_key:
        return f"/proc/self/fd/{sources[m.ext_key]}"
    src = bind_source(m, earlier)
    if src is None:
        return None
    rest = m.root[len(src.root.rstrip("/")):] if src.root != "/" else m.root
    return base + src.mountpoint.rstrip("/") + rest if src.mountpoint != "/" else base + rest


def _make_target(target, src_path) -> None:
    """A file is bound onto a file (a masked path: /dev/null), else a directory."""
    if os.path.lexists(target):
        return
    if src_path is not None and not os.path.isdir(src_path):
        os.makedirs(os.path.dirname(target), exist_ok=True)
        os.close(os.open(target, os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC, 0o644))
    else:
        os.makedirs(target, exist_ok=True)


def _flags(m) -> int:
    return m.flags & sum(MS.values())


def _sharing(entries, paths) -> None:
    """Peer groups and masters inside the namespace, as mount-v2.c: the
    first mount of a group made shared, the others joined to it; a slave
    joined to its master's group, then made a slave of it."""
    first = {}
    for m in entries:
        if m.shared_id and m.shared_id not in first:
            first[m.shared_id] = m
            _mount(None, paths[m.mnt_id], None, MS_SHARED, None)
    for m in entries:
        if m.master_id:
            master = first.get(m.master_id)
            if master is None:
                log.info("mount %s: its master group %d is outside the namespace: private",
                         m.mountpoint, m.master_id)
            else:
                _set_group(paths[master.mnt_id], paths[m.mnt_id])
                _mount(None, paths[m.mnt_id], None, MS_SLAVE, None)
        if m.shared_id and first[m.shared_id] is not m:
            _set_group(paths[first[m.shared_id].mnt_id], paths[m.mnt_id])


def _set_group(src: str, dst: str) -> None:
    from engine import libc
    libc.check(libc.syscall("move_mount", -100, src.encode(), -100, dst.encode(),
                            MOVE_MOUNT_SET_GROUP), f"move_mount(SET_GROUP {dst})")


def _mount(source, target, fstype, flags, data) -> None:
    from engine import libc
    enc = (lambda s: s.encode() if isinstance(s, str) else s)
    libc.check(libc.mount(enc(source), enc(target), enc(fstype), flags, enc(data)),
               f"mount {target}")


_LIBC = []


def _libc():
    """pivot_root(2) and umount2(2): not in engine.libc's table."""
    if not _LIBC:
        lib = ctypes.CDLL(None, use_errno=True)
        lib.syscall.restype = ctypes.c_long
        lib.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
        _LIBC.append(lib)
    return _LIBC[0]

"""userns: the tree's user namespaces, with their maps (criu/namespaces.c).

Dump: every user namespace a live task of the tree is in, other than the
engine's own, into userns-ID.img (ID: ids-PID.img user_ns_id): uid_map and
gid_map as its parent namespace sees them (what a restore writes back),
setgroups "deny", and its parent's id (0: the engine's own). A parent that
is neither in the tree nor the engine's own is refused.

Restore: each namespace is made by the engine, parents first (a helper
forked by the engine unshares it, inside the parent when the parent is one
of the tree's; the maps are written from the parent namespace). Each task
joins its own namespace last of all its task-side work, so its fds, cwd and
children are made with the engine's privileges; the tracer then sets its
credentials as its namespace sees them (plugins/core). Refused before any
task exists (criu/namespaces.c and the kernel's map_write rules): an empty,
wrapping or overlapping extent, more than 340 lines, lower ids the
restoring engine does not hold (with CAP_SETUID/CAP_SETGID: outside its own
maps or the parent's; without: anything but its own euid/egid, and gid_map
without setgroups "deny"), a parent missing or a cycle.
"""
from __future__ import annotations

import logging
import os

from engine import hookimpl
from engine.graph import Node
from engine.images import ImageError
from engine.stash import StashKey

log = logging.getLogger("engine.plugins.userns")

MAX_EXTENTS = 340                    # UID_GID_MAP_MAX_EXTENTS
CAP_SETGID, CAP_SETUID = 6, 7
NS_FDS = StashKey()                  # userns id -> fd held by the engine


# --- registration ---------------------------------------------------------

@hookimpl
def engine_register_images(registry):
    from engine.images.kinds import ImageKind
    P = "engine.images.proto."
    registry.register(ImageKind("userns", "userns-{id}.img", 0x55474906, P + "userns_pb2", "userns_entry",
                                magic_name="USERNS"))


# --- dump ----------------------------------------------------------------

@hookimpl
def engine_dump_finish(ctx):
    from engine import ns
    from engine.images.proto import userns_pb2
    found = ns.dumped_ids(ctx, "user")
    by_inode = {ino: ns_id for ns_id, (ino, _) in found.items()}
    own = ns.inode("self", "user")
    composed = {}                    # ns id -> maps as the engine sees them
    for ns_id, (_, pids) in found.items():
        pid = pids[0]
        composed[ns_id] = (_read_map(f"/proc/{pid}/uid_map"), _read_map(f"/proc/{pid}/gid_map"))
    for ns_id, (ino, pids) in sorted(found.items()):
        pid = pids[0]
        parent = ns.related(pid, "user", ns.NS_GET_PARENT)
        if parent != own and parent not in by_inode:
            raise ValueError(f"task {pid}: the parent of its user namespace is neither "
                             "in the tree nor the engine's")
        parent_id = 0 if parent == own else by_inode[parent]
        entry = userns_pb2.userns_entry(parent_id=parent_id)
        with open(f"/proc/{pid}/setgroups") as f:
            entry.setgroups_deny = f.read().strip() == "deny"
        for i, field in enumerate(("uid_map", "gid_map")):
            extents = composed[ns_id][i]
            if parent_id:
                # Seen from the engine the lower ids are the engine's; the
                # image wants them as the parent sees them.
                extents = _relative(extents, composed[parent_id][i], pid)
            for first, lower, count in extents:
                getattr(entry, field).add(first=first, lower_first=lower, count=count)
        ctx.images.write("userns", [entry], id=ns_id)


# --- restore ---------------------------------------------------------------

@hookimpl
def engine_restore_collect(ctx, graph):
    tasks = {}
    for e in ctx.provided("tasks").alive:
        ns_id = ctx.ids(e.pid).user_ns_id
        if ns_id and ctx.images.exists("userns", id=ns_id):
            tasks.setdefault(ns_id, []).append(e.pid)
    images = ctx.images.ids("userns")
    if not tasks and not images:
        return
    entries = {ns_id: ctx.images.read_one("userns", id=ns_id) for ns_id in images}
    for ns_id in entries:
        _check_chain(ns_id, entries)
    held = {"uid_map": _read_map("/proc/self/uid_map"), "gid_map": _read_map("/proc/self/gid_map")}
    for ns_id, entry in entries.items():
        _check_maps(ns_id, entry, entries, held)
    for ns_id in _parents_first(entries):
        entry = entries[ns_id]
        after = [f"userns:make:{entry.parent_id}"] if entry.parent_id else []
        graph.add(Node(key=f"userns:make:{ns_id}", plugin="userns", where="engine",
                       data=(ns_id, entry), after=after, provides=[("userns", ns_id)],
                       label=f"user namespace {ns_id} (maps written from its parent)"))
    # A task joins its namespace after every other node of its own
    # (hooks.toml: after_in_task = ["*"]): until then it keeps the engine's
    # privileges.
    for ns_id, pids in tasks.items():
        for pid in pids:
            graph.add(Node(key=f"userns:join:{pid}", plugin="userns", pid=pid,
                           data=(ns_id, _groups(ctx, pid), entries[ns_id].setgroups_deny),
                           after=[f"userns:make:{ns_id}"],
                           label=f"task {pid} joins user namespace {ns_id}"))


@hookimpl
def engine_restore_node(ctx, node):
    from engine import ns
    if node.key.startswith("userns:make:"):
        ns_id, entry = node.data
        fds = ctx.stash.setdefault(NS_FDS, {})
        parent = ctx.graph.nodes[f"userns:make:{entry.parent_id}"].data[1] \
            if entry.parent_id else None
        fd = _make(entry, fds.get(entry.parent_id), parent)
        fds[ns_id] = fd
        # Tasks reopen it through /proc/ENGINE/fd (engine/ns.py open_published).
        ctx.publish_fd(("userns", ns_id), fd)
        return True
    ns_id, groups, deny = node.data
    if deny and sorted(os.getgroups()) != sorted(groups):
        # setgroups(2) is refused inside for good: take the groups now.
        os.setgroups(groups)
    fd = ns.open_published(ctx, ("userns", ns_id))
    try:
        ns.setns(fd, "user")
    finally:
        os.close(fd)
    return True


@hookimpl
def engine_restore_finish(ctx):
    _close_fds(ctx)


@hookimpl
def engine_restore_abort(ctx, error):
    _close_fds(ctx)


# --- helpers -----------------------------------------------------------------

def _read_map(path: str) -> list[tuple[int, int, int]]:
    with open(path) as f:
        return [tuple(map(int, line.split())) for line in f if line.strip()]


def _relative(extents, parent, pid):
    """Lower ids seen from the engine -> as the parent namespace sees them
    (the parent maps its ids to the engine's; invert it, splitting ranges)."""
    out = []
    for first, lower, count in extents:
        done = 0
        for p_first, p_lower, p_count in sorted(parent, key=lambda e: e[1]):
            lo, hi = max(lower, p_lower), min(lower + count, p_lower + p_count)
            if lo < hi:
                out.append((first + lo - lower, p_first + lo - p_lower, hi - lo))
                done += hi - lo
        if done != count:
            raise ValueError(f"task {pid}: its user namespace maps ids its parent does not hold")
    return sorted(out)


def _check_chain(ns_id, entries) -> None:
    seen, cur = set(), ns_id
    while cur:
        if cur in seen:
            raise ImageError(f"userns-{ns_id}.img", "parent_id: the parents form a cycle")
        seen.add(cur)
        parent = entries[cur].parent_id
        if parent and parent not in entries:
            raise ImageError(f"userns-{cur}.img", f"parent_id: no userns-{parent}.img")
        cur = parent


def _parents_first(entries) -> list[int]:
    depth = {}

    def level(ns_id):
        if ns_id not in depth:
            parent = entries[ns_id].parent_id
            depth[ns_id] = 0 if not parent else level(parent) + 1
        return depth[ns_id]
    return sorted(entries, key=lambda i: (level(i), i))


def _check_maps(ns_id, entry, entries, held) -> None:
    """The kernel's map_write rules, checked before anything is forked."""
    from engine import ns
    image = f"userns-{ns_id}.img"
    caps = ns.effective_caps()
    for field, cap, own in (("uid_map", CAP_SETUID, os.geteuid()),
                            ("gid_map", CAP_SETGID, os.getegid())):
        extents = [(e.first, e.lower_first, e.count) for e in getattr(entry, field)]
        where = f"{image}: {field}"
        if not extents:
            raise ImageError(where, "empty")
        if len(extents) > MAX_EXTENTS:
            raise ImageError(where, f"{len(extents)} lines, the kernel takes {MAX_EXTENTS}")
        for i, (first, lower, count) in enumerate(extents):
            if count == 0 or first + count > 1 << 32 or lower + count > 1 << 32:
                raise ImageError(where, f"line {i} ({first} {lower} {count}) is empty or wraps")
            for j, (f2, l2, c2) in enumerate(extents[:i]):
                if first < f2 + c2 and f2 < first + count:
                    raise ImageError(where, f"lines {j} and {i} overlap (ids inside)")
                if lower < l2 + c2 and l2 < lower + count:
                    raise ImageError(where, f"lines {j} and {i} overlap (ids outside)")
        if entry.parent_id:
            parent = [(e.first, e.lower_first, e.count)
                      for e in getattr(entries[entry.parent_id], field)]
            whose = f"its parent userns-{entry.parent_id}.img"
        elif caps >> cap & 1:
            parent, whose = held[field], "the restoring engine"
        else:
            if extents != [(extents[0][0], own, 1)]:
                raise ImageError(where, "maps ids the restoring user does not hold "
                                        f"(unprivileged: only its own id {own}, one id)")
            if field == "gid_map" and not entry.setgroups_deny:
                raise ImageError(image, "setgroups_deny: an unprivileged gid_map "
                                        "needs setgroups denied")
            continue
        for i, (first, lower, count) in enumerate(extents):
            if not _covered(lower, count, parent):
                raise ImageError(where, f"line {i} maps ids {lower}-{lower + count - 1}, "
                                        f"which {whose} does not hold")


def _covered(lower, count, parent) -> bool:
    left = count
    for first, _, pcount in parent:
        lo, hi = max(lower, first), min(lower + count, first + pcount)
        if lo < hi:
            left -= hi - lo
    return left == 0


def _groups(ctx, pid) -> list[int]:
    core = ctx.read_one("core", id=pid)
    return list(core.thread_core.creds.groups)


def _make(entry, parent_fd: int | None, parent=None) -> int:
    """A new user namespace with the entry's maps; an fd on it, ours.

    A helper unshares it (after joining the parent, when that is one of the
    tree's, as an id the parent maps: the kernel refuses an unmapped euid);
    the maps are written from the parent namespace: by the engine, or by a
    second helper that joined the parent.
    """
    from engine import ns

    def make() -> None:
        if parent_fd is not None:
            ns.setns(parent_fd, "user")
            gid, uid = _mapped_id(parent.gid_map), _mapped_id(parent.uid_map)
            os.setresgid(gid, gid, gid)
            os.setresuid(uid, uid, uid)
        ns.unshare(ns.CLONE_NEWUSER)

    with ns.helper(make, "user namespace helper") as (helper, _):
        if parent_fd is None:
            _write_maps(helper, entry)
        else:
            _write_maps_from(parent_fd, helper, entry)
        return os.open(f"/proc/{helper}/ns/user", os.O_RDONLY | os.O_CLOEXEC)


def _mapped_id(extents) -> int:
    """0 when the namespace maps it, else its lowest mapped id."""
    firsts = sorted(e.first for e in extents)
    return 0 if any(e.first == 0 for e in extents) else firsts[0]


def _write_maps(pid: int, entry) -> None:
    def lines(extents):
        return "".join(f"{e.first} {e.lower_first} {e.count}\n" for e in extents)
    for name, text in (("uid_map", lines(entry.uid_map)),
                       ("setgroups", "deny" if entry.setgroups_deny else None),
                       ("gid_map", lines(entry.gid_map))):
        if text is None:
            continue
        try:
            with open(f"/proc/{pid}/{name}", "w") as f:
                f.write(text)
        except OSError as e:
            raise OSError(e.errno, f"writing /proc/{pid}/{name}: {e.strerror}") from None


def _write_maps_from(parent_fd: int, pid: int, entry) -> None:
    """The kernel takes maps only from the namespace or its parent."""
    from engine import ns
    r, w = os.pipe()
    writer = os.fork()
    if writer == 0:
        try:
            os.close(r)
            ns.setns(parent_fd, "user")
            _write_maps(pid, entry)
            os.write(w, b"ok")
        except BaseException as e:  # noqa: BLE001 - reported to the engine
            os.write(w, str(e).encode()[:4000])
        finally:
            os._exit(0)
    os.close(w)
    try:
        msg = os.read(r, 4096).decode()
    finally:
        os.close(r)
        os.waitpid(writer, 0)
    if msg != "ok":
        raise OSError(msg or f"map writer {writer} died")


def _close_fds(ctx) -> None:
    for fd in ctx.stash.get(NS_FDS, {}).values():
        os.close(fd)
    ctx.stash[NS_FDS] = {}

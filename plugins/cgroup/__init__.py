"""cgroup: the cgroups every task lives in, and their properties (criu/cgroup.c).

Dump: every live task's cgroups, one line per hierarchy of /proc/PID/cgroup
(v1 controllers, named v1 hierarchies, the v2 hierarchy: a hybrid layout
has all three), as a set; equal sets are one cg_set_entry of cgroup.img and
core-TID.img thread_core.cg_set (as CRIU 4.x; tc.cg_set too, for older
readers) names each thread's. Set 1 is the dumping engine's own (inventory
root_cg_set; listed only when a task is in it, as CRIU): its tasks stay in
the restoring engine's cgroups. Per hierarchy a task's path differs from the
engine's in, the directories down to each task's, each with the properties
hierarchy.py lists (pids.max, memory.max / memory.limit_in_bytes, cpu.max,
cpuset.cpus...) as the files show them; directories the engine itself sits
in are listed without properties (they are the restoring engine's too).
Refused at dump: a thread in other cgroups than its leader (v1 `tasks`).
Dropped on purpose: properties outside the list (statistics, events) and
the directories' owners and modes (written by root).
Restore (--manage-cgroups, CRIU's modes; default soft): the directories are
made in the engine before any task is forked, then each task, once forked,
writes itself into its cgroup.procs in every hierarchy (a child forked
before its parent moved moves itself all the same: no order between the
two is needed); the threads it starts later follow it. Modes: ignore
(nothing), none (directories must exist; no property written), props (must
exist; every property written), soft (made when missing; properties only
of those it made), full (made when missing; every property written),
strict (must not exist; made and every property written). --cgroup-root
[HIERARCHY:]PATH puts the root task's cgroup of that hierarchy (every one
without HIERARCHY) at PATH, its descendants under it. Refused before
anything starts, naming cgroup.img: a path or directory with "." or "..", a
property name with "/" or outside the list, a hierarchy not mounted here,
a task's cgroup outside the root task's when --cgroup-root moves it.
Directories the restore made are removed again when it fails.
"""
from __future__ import annotations

import errno
import logging
import os

from engine import hookimpl
from engine.images import ImageError
from engine.stash import StashKey
from plugins.cgroup import hierarchy as h

log = logging.getLogger("engine.plugins.cgroup")

MODES = ("ignore", "none", "props", "soft", "full", "strict")
DEFAULT_MODE = "soft"
ENGINE_SET = 1                           # inventory root_cg_set: the dumping engine's
IMAGE = "cgroup.img"

_SETS: StashKey[dict] = StashKey()       # dump: set (tuple of items) -> id
_USED: StashKey[set] = StashKey()        # dump: the ids of sets a task is in
_MADE: StashKey[list] = StashKey()       # restore, engine: directories made, in order


# --- registration ---------------------------------------------------------

@hookimpl
def engine_register_images(registry):
    from engine.images.kinds import ImageKind
    registry.register(ImageKind("cgroup", IMAGE, 0x59383330, "engine.images.proto.cgroup_pb2",
                                "cgroup_entry", magic_name="CGROUP"))


@hookimpl
def engine_addoption(parser):
    parser.add_argument("--manage-cgroups", nargs="?", const=DEFAULT_MODE, default=DEFAULT_MODE,
                        choices=MODES, metavar="MODE",
                        help="cgroups, as CRIU's modes: ignore, none, props, soft (default), "
                             "full, strict")
    parser.add_argument("--cgroup-root", action="append", default=[],
                        metavar="[HIERARCHY:]PATH",
                        help="restore: put the root task's cgroup (of HIERARCHY, or of every "
                             "one) at PATH, the tree's others under it")


# --- dump ----------------------------------------------------------------

@hookimpl
def engine_dump_task(ctx, task):
    if task.zombie is not None or _mode(ctx) == "ignore":
        return
    sets = ctx.stash.get(_SETS, None)
    if sets is None:
        sets = ctx.stash[_SETS] = {_key(h.task_set("self")): ENGINE_SET}
    own = h.task_set(task.pid)
    for thread in task.state.threads:
        if thread.tid != task.pid and h.task_set(f"{task.pid}/task/{thread.tid}") != own:
            raise ValueError(f"task {task.pid} (thread {thread.tid}): in other cgroups than "
                             "its leader: not supported yet")
    set_id = sets.setdefault(_key(own), len(sets) + 1)
    ctx.stash.setdefault(_USED, set()).add(set_id)
    for tid in [t.tid for t in task.state.threads] or [task.pid]:
        # CRIU 4.x reads thread_core's first; tc's is what older ones read.
        core = ctx.images.read_one("core", id=tid)
        core.thread_core.cg_set = set_id
        if tid == task.pid:
            core.tc.cg_set = set_id
        ctx.images.write("core", [core], id=tid)


@hookimpl
def engine_dump_finish(ctx):
    from engine.images.proto import cgroup_pb2
    sets = ctx.stash.get(_SETS, None)
    if sets is None:
        return
    entry = cgroup_pb2.cgroup_entry()
    used = set(ctx.stash[_USED])
    for key, set_id in sorted(sets.items(), key=lambda kv: kv[1]):
        if set_id not in used:
            continue                    # the engine's, when no task is in it (as CRIU)
        entry.sets.add(id=set_id, ctls=[cgroup_pb2.cg_member_entry(name=n, path=p)
                                        for n, p in key])
    engine_set = dict(next(k for k, v in sets.items() if v == ENGINE_SET))
    mounts = h.mounts()
    for name in sorted({n for key in sets for n, _ in key}):
        paths = {dict(key)[name] for key in sets} - {engine_set[name]}
        if not paths or name not in mounts:
            continue
        ctl = entry.controllers.add(cnames=h.controllers(name) or [name])
        _dump_dirs(ctl.dirs, mounts[name], name, "/", sorted(paths), engine_set[name])
    ctx.images.write("cgroup", [entry])


@hookimpl
def engine_dump_inventory(ctx, inventory):
    if ctx.stash.get(_SETS, None) is not None:
        inventory.root_cg_set = ENGINE_SET


# --- restore ---------------------------------------------------------------

@hookimpl
def engine_restore_collect(ctx, graph):
    from engine.graph import Node
    mode = _mode(ctx)
    if mode == "ignore" or not ctx.images.exists("cgroup"):
        return
    entry = ctx.read_one("cgroup")
    sets = _check_sets(entry)
    props = _check_dirs(entry)
    tasks = ctx.provided("tasks")
    root_set = _cg_set(ctx, tasks.entries[0].pid)
    # The dumping engine's own set (CRIU: criu's): its tasks stay in the
    # restoring engine's cgroups.
    root_cg_set = ctx.read_one("inventory").root_cg_set
    mounts, own = h.mounts(), h.task_set("self")
    place = _placer(ctx, sets.get(root_set, {}))
    moves: dict[int, list[str]] = {}
    dirs: dict[tuple[str, str], list] = {}       # (mount, new path) -> dumped props
    for e in tasks.alive:
        set_id = _cg_set(ctx, e.pid)
        if set_id == 0 or set_id == root_cg_set:
            continue                             # the engine's own: inherited
        if set_id not in sets:
            raise ImageError(f"core-{e.pid}.img", f"cg_set {set_id} is not in {IMAGE}")
        for name, path in sets[set_id].items():
            new = place(name, path)
            if new == own.get(name):
                continue                         # where the restoring engine is
            if name not in mounts:
                raise ImageError(IMAGE, f"hierarchy {name or 'v2'!r} is not mounted here")
            parts = [p for p in new.split("/") if p]
            for i in range(1, len(parts) + 1):
                sub = "/" + "/".join(parts[:i])
                dumped = props.get((name, place.unplace(name, sub)), [])
                dirs.setdefault((mounts[name], sub), dumped)
            moves.setdefault(e.pid, []).append(os.path.join(mounts[name], new.lstrip("/"),
                                                            "cgroup.procs"))
    if not moves:
        return
    graph.add(Node(key="cgroup:dirs", plugin="cgroup", where="engine",
                   data=(mode, list(dirs.items())),
                   label=f"cgroups: {len(dirs)} directories ({mode})"))
    for pid, procs in moves.items():
        graph.add(Node(key=f"cgroup:move:{pid}", plugin="cgroup", where="task", pid=pid,
                       data=procs, after=[("task", pid), "cgroup:dirs"],
                       label=f"task {pid} joins its cgroups"))


@hookimpl
def engine_restore_node(ctx, node):
    if node.key == "cgroup:dirs":
        mode, dirs = node.data
        made = ctx.stash.setdefault(_MADE, [])
        for (mount, path), props in dirs:
            _make_dir(mount, path, props, mode, made)
    else:
        for procs in node.data:
            h._write(procs, "0")                 # 0: the writer itself
    return True


@hookimpl
def engine_restore_abort(ctx, error):
    for path in reversed(ctx.stash.get(_MADE, [])):
        try:
            os.rmdir(path)
        except OSError as e:
            log.warning("cgroup %s left behind: %s", path, e)


# --- helpers -----------------------------------------------------------------

def _mode(ctx) -> str:
    return getattr(ctx.options, "manage_cgroups", None) or DEFAULT_MODE


def _cg_set(ctx, pid: int) -> int:
    core = ctx.read_one("core", id=pid)
    if core.HasField("thread_core") and core.thread_core.HasField("cg_set"):
        return core.thread_core.cg_set
    return core.tc.cg_set


def _key(cg_set: dict[str, str]) -> tuple:
    return tuple(sorted(cg_set.items()))


def _dump_dirs(out, mount: str, name: str, parent: str, paths: list[str], engine_path: str):
    """The directories under `parent` on the way to `paths`, nested."""
    from engine.images.proto import cgroup_pb2
    below = sorted({p[len(parent):].lstrip("/").split("/")[0] for p in paths
                    if p != parent and p.startswith(parent.rstrip("/") + "/")})
    for child in below:
        path = parent.rstrip("/") + "/" + child
        d = out.add(dir_name=child)
        on_engine_path = engine_path == path or engine_path.startswith(path + "/")
        if not on_engine_path:
            d.properties.extend(cgroup_pb2.cgroup_prop_entry(name=k, value=v) for k, v in
                                h.read_props(os.path.join(mount, path.lstrip("/")), name))
        _dump_dirs(d.children, mount, name, path, paths, engine_path)


def _check_sets(entry) -> dict[int, dict[str, str]]:
    out = {}
    for s in entry.sets:
        members = {}
        for m in s.ctls:
            why = h.check_path(m.path)
            if why:
                raise ImageError(IMAGE, f"set {s.id}: path {m.path!r} of {m.name!r} {why}")
            members[m.name] = m.path
        out[s.id] = members
    return out


def _check_dirs(entry) -> dict[tuple[str, str], list]:
    """(hierarchy, path) -> its properties, every name and value checked."""
    out: dict[tuple[str, str], list] = {}

    def walk(name, parent, dirs):
        for d in dirs:
            why = h.check_dir_name(d.dir_name)
            if why:
                raise ImageError(IMAGE, f"directory {d.dir_name!r} under {parent!r} {why}")
            if not d.dir_name:
                # The hierarchy's root (CRIU lists it): the host's, never written.
                walk(name, parent, d.children)
                continue
            path = parent.rstrip("/") + "/" + d.dir_name
            for p in d.properties:
                why = h.check_prop(p.name, p.value)
                if why:
                    raise ImageError(IMAGE, f"{path}: property {p.name!r} {why}")
            skipped = sorted({p.name for p in d.properties} - h.ALLOWED - h.LISTED_EMPTY)
            if skipped:
                log.warning("%s: %s:%s: %s not restored (not in hierarchy.py's list)", IMAGE,
                            name or "v2", path, ", ".join(skipped))
            out[(name, path)] = [(p.name, p.value) for p in d.properties
                                 if p.name in h.ALLOWED]
            walk(name, path, d.children)

    for ctl in entry.controllers:
        names = list(ctl.cnames)
        # The hierarchy as /proc/PID/cgroup names it: "" for v2 ([""]).
        walk(",".join(names), "/", ctl.dirs)
    return out


def _placer(ctx, root_members: dict[str, str]):
    """new path of (hierarchy, dumped path), as --cgroup-root asks."""
    roots: dict[str | None, str] = {}
    for item in getattr(ctx.options, "cgroup_root", None) or []:
        name, sep, path = item.rpartition(":") if not item.startswith("/") else ("", "", item)
        why = h.check_path(path)
        if why:
            raise ValueError(f"--cgroup-root {item}: {path!r} {why}")
        roots[name if sep else None] = path.rstrip("/") or "/"

    def place(name: str, path: str) -> str:
        root = roots.get(name, roots.get(None))
        if root is None:
            return path
        old = root_members.get(name, "/")
        if path != old and not path.startswith(old.rstrip("/") + "/"):
            raise ImageError(IMAGE, f"cgroup {path} of {name!r} is not under the root task's "
                                    f"{old}: --cgroup-root cannot place it")
        return (root.rstrip("/") + path[len(old.rstrip("/")):]) or "/"

    def unplace(name: str, new: str) -> str | None:
        """The dumped path a new one comes from; None above the new root."""
        root = roots.get(name, roots.get(None))
        if root is None:
            return new
        old = root_members.get(name, "/")
        if new != root and not new.startswith(root.rstrip("/") + "/"):
            return None
        return (old.rstrip("/") + new[len(root.rstrip("/")):]) or "/"

    place.unplace = unplace
    return place


def _make_dir(mount: str, path: str, props: list, mode: str, made: list) -> None:
    full = os.path.join(mount, path.lstrip("/"))
    exists = os.path.isdir(full)
    if mode in ("none", "props") and not exists:
        raise ValueError(f"cgroup {full} does not exist (--manage-cgroups {mode})")
    if mode == "strict" and exists:
        raise ValueError(f"cgroup {full} exists already (--manage-cgroups strict)")
    if not exists:
        try:
            os.mkdir(full)
            made.append(full)
        except FileExistsError:
            exists = True
    if mode == "none" or (mode == "soft" and exists):
        return
    for name, value in props:
        try:
            h.write_prop(full, name, value)
        except OSError as e:
            raise ValueError(f"cgroup {full}: {name} = {value!r}: "
                             f"{errno.errorcode.get(e.errno, e.errno)}") from None

"""The cgroup hierarchies as this machine mounts them (v1, v2 or both, as a
hybrid layout has them), and the properties the engine dumps and restores.

A hierarchy is named as /proc/PID/cgroup names it: a v1 line's controller
list ("memory", "cpu,cpuacct", "name=systemd"), "" for the v2 hierarchy.
"""
from __future__ import annotations

import errno
import os
import re

# Properties dumped per controller, in the order they are written back (a
# quota after its period; a cpuset's cpus and mems before any task joins).
# Only files the directory has are dumped. (CRIU: criu/cgroup-props.c.)
V1_PROPS = {
    "cpu": ("cpu.shares", "cpu.cfs_period_us", "cpu.cfs_quota_us"),
    "cpuset": ("cpuset.cpus", "cpuset.mems", "cpuset.cpu_exclusive", "cpuset.mem_exclusive"),
    "memory": ("memory.limit_in_bytes", "memory.memsw.limit_in_bytes",
               "memory.soft_limit_in_bytes", "memory.swappiness"),
    "pids": ("pids.max",),
    "blkio": ("blkio.weight",),
    "net_cls": ("net_cls.classid",),
    "devices": ("devices.list",),
}
V2_PROPS = ("cgroup.subtree_control", "cpuset.cpus", "cpuset.mems", "cpu.max", "cpu.weight",
            "memory.min", "memory.low", "memory.high", "memory.max", "memory.swap.max",
            "pids.max", "io.weight")
# Also written when an image has them: what CRIU 4.2 dumps besides.
CRIU_PROPS = ("cpu.rt_period_us", "cpu.rt_runtime_us", "notify_on_release",
              "cgroup.clone_children", "memory.use_hierarchy", "memory.move_charge_at_immigrate",
              "cpuset.memory_migrate", "cpuset.mem_hardwall", "cpuset.memory_spread_page",
              "cpuset.memory_spread_slab", "cpuset.sched_load_balance",
              "cpuset.sched_relax_domain_level", "cgroup.max.descendants", "cgroup.max.depth",
              "net_prio.ifpriomap")
# What a restore writes: nothing else, whatever an image says (a property
# named cgroup.procs or release_agent would move or run anything).
ALLOWED = (frozenset(p for props in V1_PROPS.values() for p in props) | frozenset(V2_PROPS)
           | frozenset(CRIU_PROPS))
# Listed empty by CRIU (it reads every file of the directory): never written.
LISTED_EMPTY = frozenset(("cgroup.procs", "tasks", "cgroup.threads"))
# Never written, and refused with a value: they move, kill, freeze or run.
HOSTILE = LISTED_EMPTY | frozenset(("release_agent", "cgroup.kill", "cgroup.freeze",
                                    "freezer.state", "cgroup.type", "devices.allow",
                                    "devices.deny"))
NAME_RE = re.compile(r"^[a-z0-9_]+(\.[a-z0-9_]+)*$")
V2 = ""                                  # the v2 hierarchy's name in /proc/PID/cgroup


def task_set(pid: int | str) -> dict[str, str]:
    """hierarchy name -> path, from /proc/PID/cgroup."""
    out = {}
    with open(f"/proc/{pid}/cgroup") as f:
        for line in f:
            _, name, path = line.rstrip("\n").split(":", 2)
            out[name] = path
    return out


def mounts() -> dict[str, str]:
    """hierarchy name -> a mount point of its root, from /proc/self/mountinfo."""
    out: dict[str, str] = {}
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            sep = fields.index("-")
            fstype, options = fields[sep + 1], fields[sep + 3].split(",")
            if fields[3] != "/":
                continue                 # a bind of a sub-directory
            point = fields[4].replace("\\040", " ")
            if fstype == "cgroup2":
                out.setdefault(V2, point)
            elif fstype == "cgroup":
                names = [o for o in options if o not in ("rw", "ro") and "=" not in o
                         and not o.startswith(("no", "xattr", "clone_children", "cpuset_v2"))]
                names += [o for o in options if o.startswith("name=")]
                for name in _hierarchy_names(names):
                    out.setdefault(name, point)
    return out


def _hierarchy_names(options: list[str]) -> list[str]:
    """The hierarchy as /proc/PID/cgroup lists it: its controllers, in the
    kernel's order, joined by ","."""
    controllers = sorted(o for o in options if not o.startswith("name="))
    named = [o for o in options if o.startswith("name=")]
    return [",".join(controllers + named)] if controllers or named else []


def controllers(name: str) -> list[str]:
    return [c for c in name.split(",") if c and not c.startswith("name=")]


def props_of(name: str) -> tuple[str, ...]:
    if name == V2:
        return V2_PROPS
    return tuple(p for c in controllers(name) for p in V1_PROPS.get(c, ()))


def read_props(directory: str, name: str) -> list[tuple[str, str]]:
    out = []
    for prop in props_of(name):
        try:
            with open(os.path.join(directory, prop)) as f:
                value = f.read().rstrip("\n")
        except (FileNotFoundError, PermissionError):
            continue                     # not in this directory (the root's limits)
        except OSError as e:
            if e.errno in (errno.EINVAL, errno.ENODEV, errno.EOPNOTSUPP):
                continue
            raise
        out.append((prop, value))
    return out


def write_prop(directory: str, prop: str, value: str) -> None:
    """Write one property back, as its file takes it."""
    path = os.path.join(directory, prop)
    if prop == "cgroup.subtree_control":
        lines = [" ".join(f"+{c}" for c in value.split())] if value.strip() else []
    elif prop == "devices.list":
        # Whatever was allowed: deny all, then allow each listed rule.
        _write(os.path.join(directory, "devices.deny"), "a")
        lines, path = value.splitlines(), os.path.join(directory, "devices.allow")
    else:
        lines = [value]
    for line in lines:
        _write(path, line)


def _write(path: str, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def check_path(path: str) -> str | None:
    """Why a cgroup path from an image is not one to follow, or None."""
    if not path.startswith("/"):
        return "is not absolute"
    if "\0" in path or "\n" in path:
        return "holds a NUL or a newline"
    if any(part in (".", "..") for part in path.split("/")):
        return "holds '.' or '..'"
    return None


def check_dir_name(name: str) -> str | None:
    """CRIU writes a chain of directories with one task-less entry as one
    name ("a/b"); "" is the hierarchy's root."""
    parts = name.split("/")
    if "\0" in name or "\n" in name or (name and any(p in ("", ".", "..") for p in parts)):
        return "is not a relative directory path"
    return None


def check_prop(name: str, value: str) -> str | None:
    if "/" in name or not NAME_RE.match(name):
        return "is not a property file name"
    if "\0" in value:
        return "holds a NUL"
    if name in HOSTILE and not (name in LISTED_EMPTY and value == ""):
        return "is not a property the engine writes"
    return None

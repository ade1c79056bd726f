"""Namespaces as the kernel shows them: /proc/PID/ns/*, setns, unshare, owners.

Shared by the namespace plugins (userns, utsns, ...) the way engine/fds.py is
shared by the fd plugins. A namespace's id in the images is the one
ids-PID.img gives it (plugins/core numbers them at dump); here a namespace
is named by its nsfs inode.
"""
from __future__ import annotations

import contextlib
import fcntl
import os

CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
CLONE_NEWTIME = 0x00000080
FLAGS = {"mnt": CLONE_NEWNS, "uts": CLONE_NEWUTS, "ipc": CLONE_NEWIPC, "user": CLONE_NEWUSER,
         "pid": CLONE_NEWPID, "net": CLONE_NEWNET, "time": CLONE_NEWTIME}
# Every kind of namespace ids-PID.img names (task_kobj_ids_entry: KIND_ns_id).
KINDS = ("pid", "net", "ipc", "uts", "mnt", "user", "cgroup", "time")
NS_GET_USERNS = 0xB701          # _IO(0xb7, 0x1): the owning user namespace
NS_GET_PARENT = 0xB702          # _IO(0xb7, 0x2): the parent (user and pid namespaces)

def setns(fd: int, kind: str) -> None:
    """Move the calling task into the namespace open at `fd`."""
    from engine import libc
    libc.check(libc.setns(fd, FLAGS[kind]), f"setns({kind})")


def unshare(flags: int) -> None:
    from engine import libc
    libc.check(libc.unshare(flags), f"unshare({flags:#x})")


def inode(pid: int | str, kind: str) -> int:
    """The namespace `kind` of task `pid` ("self" works), by nsfs inode."""
    return os.stat(f"/proc/{pid}/ns/{kind}").st_ino


def related(pid: int | str, kind: str, request: int) -> int | None:
    """Inode of the owner (NS_GET_USERNS) or parent (NS_GET_PARENT) of a
    task's namespace; None when it lies outside what we may see (EPERM)."""
    fd = os.open(f"/proc/{pid}/ns/{kind}", os.O_RDONLY)
    try:
        try:
            other = fcntl.ioctl(fd, request)
        except PermissionError:
            return None
        try:
            return os.fstat(other).st_ino
        finally:
            os.close(other)
    finally:
        os.close(fd)


# --- dump: which namespaces, what is inside ---------------------------------

def dumped_ids(ctx, kind: str) -> dict[int, tuple[int, list[int]]]:
    """At dump, after plugins/core wrote ids-PID.img: ns id -> (inode, pids),
    for the namespaces of `kind` the live tasks of the tree are in, except
    the dumping engine's own (a restore inherits those from its engine)."""
    own = inode("self", kind)
    out: dict[int, tuple[int, list[int]]] = {}
    for pid, task in ctx.tasks.items():
        if task.zombie is not None:
            continue
        ino = inode(pid, kind)
        if ino == own:
            continue
        ns_id = getattr(ctx.images.read_one("ids", id=pid), f"{kind}_ns_id")
        out.setdefault(ns_id, (ino, []))[1].append(pid)
    return out


def run_in(pid: int, kinds: tuple[str, ...], fn):
    """fn() run in a child of ours that joined task `pid`'s namespaces of
    `kinds` (a dump reads what only the inside shows: hostname, ipc sysctls,
    links); its result, pickled back, or its error raised here."""
    import pickle
    fds = [os.open(f"/proc/{pid}/ns/{kind}", os.O_RDONLY | os.O_CLOEXEC) for kind in kinds]
    # setns wants CAP_SYS_ADMIN where we are too: an engine without it (a
    # user dumping its own tree) first joins the owning user namespace,
    # where, as its owner, it has it.
    owner = fcntl.ioctl(fds[0], NS_GET_USERNS)
    r, w = os.pipe()
    child = os.fork()
    if child == 0:
        try:
            os.close(r)
            if os.fstat(owner).st_ino != inode("self", "user") and not _has_sys_admin():
                setns(owner, "user")
            for fd, kind in zip(fds, kinds):
                setns(fd, kind)
            out = (True, fn())
        except BaseException as e:  # noqa: BLE001 - sent to the parent
            out = (False, f"{type(e).__name__}: {e}")
        try:
            os.write(w, pickle.dumps(out))
        finally:
            os._exit(0)
    os.close(w)
    for fd in fds + [owner]:
        os.close(fd)
    chunks = []
    while chunk := os.read(r, 1 << 16):
        chunks.append(chunk)
    os.close(r)
    os.waitpid(child, 0)
    if not chunks:
        raise OSError(f"task {pid}: the helper reading its {'/'.join(kinds)} namespace died")
    ok, value = pickle.loads(b"".join(chunks))
    if not ok:
        raise OSError(f"task {pid}: in its {'/'.join(kinds)} namespace: {value}")
    return value


def owner_id(ctx, pid: int, kind: str, user_ids: dict[int, int]) -> int:
    """At dump: the id of the user namespace owning task `pid`'s namespace
    of `kind` (0: the engine's own); `user_ids` maps userns inodes to ids."""
    owner = related(pid, kind, NS_GET_USERNS)
    if owner == inode("self", "user"):
        return 0
    if owner not in user_ids:
        raise ValueError(f"task {pid}: its {kind} namespace is owned by a user namespace "
                         "outside the tree")
    return user_ids[owner]


def user_ids(ctx) -> dict[int, int]:
    """At dump: userns inode -> id, for the tree's user namespaces."""
    return {ino: ns_id for ns_id, (ino, _) in dumped_ids(ctx, "user").items()}


# --- restore: one maker per namespace, everyone else joins ------------------

def collect(ctx, graph, plugin: str, kind: str, image: str) -> list:
    """Nodes restoring the tree's namespaces of `kind`, whose images are
    IMAGE-ID.img. The first task of a namespace (parents first) makes it,
    in graph order after the user namespace owning it; every other task in
    it joins it (setns through the maker's /proc/PID/ns), as does a task
    back in the engine's own namespace under a parent that is not. Returns
    the (ns id, entry) made, for the plugin to check."""
    from engine.graph import Node
    ns_of, made, out = {}, {}, []
    alive = ctx.provided("tasks").alive
    for e in alive:
        ns_id = getattr(ctx.ids(e.pid), f"{kind}_ns_id")
        ns_of[e.pid] = ns_id if ns_id and ctx.images.exists(image, id=ns_id) else 0
    for e in alive:
        ns_id, born = ns_of[e.pid], ("task", e.pid)
        if ns_id and ns_id not in made:
            entries = ctx.images.read(image, id=ns_id)
            if not entries:
                raise ValueError(f"{ctx.images.kinds.get(image).filename(ns_id)}: no entry")
            entry = entries[0]              # the first says who owns it
            made[ns_id] = e.pid
            owner = getattr(entry, "owner_id", 0)
            after = [born] + ([("userns", owner)] if owner else [])
            graph.add(Node(key=f"{plugin}:make:{ns_id}", plugin=plugin, pid=e.pid,
                           data=("make", ns_id, entry), after=after,
                           label=f"task {e.pid} makes {kind} namespace {ns_id}"))
            out.append((ns_id, entry))
        elif ns_id:
            graph.add(Node(key=f"{plugin}:join:{e.pid}", plugin=plugin, pid=e.pid,
                           data=("join", made[ns_id]),
                           after=[born, f"{plugin}:make:{ns_id}"],
                           label=f"task {e.pid} joins {kind} namespace {ns_id}"))
        elif ns_of.get(e.ppid):
            graph.add(Node(key=f"{plugin}:join:{e.pid}", plugin=plugin, pid=e.pid,
                           data=("join", os.getpid()), after=[born],
                           label=f"task {e.pid} back in the engine's {kind} namespace"))
    return out


def restore(ctx, node, kind: str, setup) -> None:
    """Run a node `collect` made, in its task. A maker unshares the
    namespace itself, or, when a user namespace of the tree owns it, has a
    helper child join that one, unshare it and set it up, then joins the
    helper's: the task keeps the engine's privileges until it joins its own
    user namespace, last (plugins/userns). `setup(entry)` fills the new
    namespace (hostname, links...) from inside it."""
    if node.data[0] == "join":
        fd = os.open(f"/proc/{node.data[1]}/ns/{kind}", os.O_RDONLY | os.O_CLOEXEC)
        try:
            setns(fd, kind)
        finally:
            os.close(fd)
        return
    _, ns_id, entry = node.data
    owner = getattr(entry, "owner_id", 0)
    if not owner:
        unshare(FLAGS[kind])
        setup(entry)
        return
    user_fd = open_published(ctx, ("userns", owner))

    def make() -> bytes:
        setns(user_fd, "user")
        if kind != "mnt":
            # Mounts are made as the engine's uid: it owns the paths.
            _become_root()
        unshare(FLAGS[kind])
        setup(entry)
        # Its pid as /proc names it: fork's is wrong in a nested pid ns.
        return os.readlink("/proc/self").encode()

    try:
        with helper(make, f"{kind} namespace {ns_id}") as (_, pid):
            fd = os.open(f"/proc/{int(pid)}/ns/{kind}", os.O_RDONLY | os.O_CLOEXEC)
            try:
                setns(fd, kind)
            finally:
                os.close(fd)
    finally:
        os.close(user_fd)


@contextlib.contextmanager
def helper(work, what: str):
    """Fork a helper child that runs `work()` (namespaces it makes live as
    long as it does) and then waits; yield (its pid, the bytes `work`
    returned) while it waits; release and reap it when the block ends. An
    exception in the helper is raised here as one OSError line naming `what`.
    """
    ready_r, ready_w = os.pipe()
    go_r, go_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(ready_r)
            os.close(go_w)
            report = work() or b""
            os.write(ready_w, b"\x01" + report)
            os.read(go_r, 1)
        except BaseException as e:  # noqa: BLE001 - reported to the caller
            os.write(ready_w, b"\x00" + str(e).encode()[:4000])
        finally:
            os._exit(0)
    os.close(ready_w)
    os.close(go_r)
    try:
        msg = os.read(ready_r, 4096)
        if not msg.startswith(b"\x01"):
            raise OSError(f"{what}: {msg[1:].decode() or 'its helper died'}")
        yield pid, msg[1:]
    finally:
        os.close(ready_r)
        os.close(go_w)
        os.waitpid(pid, 0)


def _has_sys_admin() -> bool:
    return bool(effective_caps() >> 21 & 1)        # CAP_SYS_ADMIN


def status_field(pid: int | str, name: str) -> list[str]:
    """The values of one /proc/PID/status line (NSpid, NSpgid, CapEff...);
    NSpid and NSpgid list the outermost pid namespace first."""
    with open(f"/proc/{pid}/status") as f:
        return next(line.split()[1:] for line in f if line.startswith(name + ":"))


def effective_caps() -> int:
    return int(status_field("self", "CapEff")[0], 16)


def pid_depth() -> int:
    """How many pid namespaces the calling process is below /proc's (the
    engine's mount). Restoring tasks ask for every file they take and every
    group they join; /proc/self/status costs ~0.2 ms a read, the namespace's
    inode ~10 µs. Kept by inode, so forks inherit it (a task the engine
    forks in its own namespace never reads status)."""
    ino = os.stat("/proc/self/ns/pid").st_ino
    depth = _depths.get(ino)
    if depth is None:
        depth = _depths[ino] = len(status_field("self", "NSpid")) - 1
    return depth


_depths: dict[int, int] = {}       # pid namespace inode -> its pid_depth()


def init_level(pid: int | str) -> int:
    """When task `pid` is the init (pid 1) of a pid namespace other than
    the caller's, that namespace's level in its NSpid (how many namespaces
    it is below /proc's); else 0. A tree with such a root is imaged at
    that level, as CRIU does (plugins/pstree)."""
    levels = status_field(pid, "NSpid")
    return len(levels) - 1 if levels[-1] == "1" and len(levels) - 1 > pid_depth() else 0


def pid_here(pid: int) -> int | None:
    """`pid`, as /proc (the engine's mount) names it, as the calling task's
    own pid namespace names it; None when it is outside that namespace."""
    depth = pid_depth()
    if not depth:
        return pid
    try:
        levels = status_field(pid, "NSpid")
    except OSError:
        return None
    return int(levels[depth]) if len(levels) > depth else None


def open_published(ctx, key) -> int:
    """A namespace fd the engine published (ctx.shared_fds), reopened
    through /proc/PID/fd: unlike pidfd_getfd, this works from inside a
    nested pid namespace (/proc is the engine's) and gives the same
    namespace."""
    pid, fd = ctx.shared_fds[key]
    return os.open(f"/proc/{pid}/fd/{fd}", os.O_RDONLY | os.O_CLOEXEC)


def _become_root() -> None:
    """Root of the user namespace just joined, when it maps uid 0: sysctls
    of a namespace it owns belong to that root (ipc, net)."""
    try:
        os.setresgid(0, 0, 0)
        os.setresuid(0, 0, 0)
    except OSError:
        pass

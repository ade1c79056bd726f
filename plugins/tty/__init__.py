"""tty: pseudo-terminal pairs, /dev/tty, and the controlling terminal of a
session (criu/tty.c).

Dump: an fd of /dev/ptmx (a pty master) or /dev/pts/N (a slave) becomes a
TTY file entry naming a tty_info entry, as CRIU writes them: id N*2+1 for
the master of pty N, N*2 for its slave, a REG entry with the path it was
opened by (regf_id). tty-info.img holds each pty's state, read through a
copy of one of its fds: termios and locked termios, window size, packet
mode, pty lock, exclusive mode, and the session and foreground group it
is the controlling terminal of. The bytes the slave side wrote and the
master has not read yet go to tty-data.img (read from the master, then
written back when the tree runs on). An fd of /dev/tty is a CTTY entry.
A task's controlling terminal is /proc/PID/stat's tty_nr.

Restore: the first task holding an end of a pty (or the session leader
whose controlling terminal it is, if it comes first) opens /dev/ptmx until
the kernel hands out index N, as CRIU does (the indexes below it are held
meanwhile), opens each slave file through TIOCGPTPEER, sets the state and
writes the unread bytes back through the slave with output processing off,
then publishes every end for the tasks that share them. The session leader
makes the pty its controlling terminal (TIOCSCTTY) after its setsid and
before it forks its children, which inherit it at birth only (pstree forks
them after ("ctty", leader)); once the foreground group exists, it sets it
(TIOCSPGRP). /dev/tty fds are opened after that, in their session.

A terminal whose master is not in the tree (the terminal a shell job was
started from) is reopened by its name, as CRIU's --shell-job does.

Refused at dump: other terminals as a controlling terminal of a session
the tree leads (consoles, virtual consoles, serial lines), a slave whose
master is closed, input typed and not yet read by the slave side, a
controlling terminal in a nested pid namespace, a task that left its
session's controlling terminal (TIOCNOTTY) or holds it without descending
from the session leader (no fork can give it then).
Dropped on purpose: a foreground group with no task left (the shell gets
the terminal back when it next waits) comes back as the leader's group.
"""
from __future__ import annotations

import fcntl
import logging
import os
import stat as st
import struct
import termios

from engine import hookimpl
from engine.fds import claiming_fdinfo, park, pidfd_getfd
from engine.graph import Node
from engine.images import ImageError
from engine.stash import StashKey

log = logging.getLogger("engine.plugins.tty")

PTS_MAJORS = range(136, 144)           # UNIX98_PTY_SLAVE_MAJOR, 8 majors of 256
PTMX = os.makedev(5, 2)
DEV_TTY = os.makedev(5, 0)
CTTY_INFO_ID = 0xFFFFFFFE              # /dev/tty's tty_info (even: no pty's master)
TIOCGPTN, TIOCSPTLCK, TIOCGPTLCK = 0x80045430, 0x40045431, 0x80045439
TIOCGPKT, TIOCGEXCL, TIOCGPTPEER = 0x80045438, 0x80045440, 0x5441
TIOCGLCKTRMIOS, TIOCSLCKTRMIOS = 0x5456, 0x5457
TERMIOS = struct.Struct("IIIIB19s")    # the kernel's struct termios (TCGETS)
NCCS = 19
MAX_OPENS = 64                         # ptmx opens tried to reach an index (CRIU: 32)

DUMP = StashKey()         # dump: the ptys and ctty facts of the tree
PTYS = StashKey()         # restore: index -> Pty
CTTYS = StashKey()        # restore: session leader pid -> (index or None, path, pgrp)
LOCKS = StashKey()        # restore: [(index, (pid, fd) of its master)] to lock at the end


class Pty:
    """One pty pair of the image, at restore."""

    def __init__(self, index: int):
        self.index = index
        self.master_files: list[int] = []
        self.slave_files: list[int] = []
        self.master_info = None
        self.slave_info = None
        self.data = b""
        self.path = "/dev/ptmx"

    @property
    def info(self):
        return self.master_info or self.slave_info


# --- registration ---------------------------------------------------------

@hookimpl
def engine_register_images(registry):
    from engine.images.kinds import ImageKind
    P = "engine.images.proto.tty_pb2"
    registry.register(ImageKind("tty-info", "tty-info.img", 0x59453036, P, "tty_info_entry",
                                magic_name="TTY_INFO"))
    registry.register(ImageKind("tty-data", "tty-data.img", 0x59413026, P, "tty_data_entry",
                                magic_name="TTY_DATA"))


def is_pty_or_ctty(stat) -> bool:
    return st.S_ISCHR(stat.st_mode) and (os.major(stat.st_rdev) in PTS_MAJORS
                                         or stat.st_rdev in (PTMX, DEV_TTY))


def pts_index(rdev: int) -> int:
    return (os.major(rdev) - PTS_MAJORS.start) * 256 + os.minor(rdev)


# --- dump ----------------------------------------------------------------

class _Dump:
    def __init__(self):
        self.holders: dict[int, dict] = {}   # index -> {"master": (pid, fd), "slave": ...}
        self.infos: set[int] = set()         # tty_info ids files name
        self.tasks: dict[int, tuple] = {}    # pid -> (ppid, pgid, sid, tty_nr, nested, tpgid)
        self.ctty_files = False


@hookimpl
def engine_dump_fd(ctx, task, fd, link, stat):
    if not link.startswith("/") or not is_pty_or_ctty(stat):
        return None
    from engine.images.entries import add_file, regular_file
    from engine.images.proto import files_pb2
    d = ctx.stash.setdefault(DUMP, _Dump())
    flags = claiming_fdinfo(ctx, task.pid, fd)["flags"] & ~os.O_CLOEXEC
    if link.endswith(" (deleted)"):
        raise ValueError(f"task {task.pid}: fd {fd} ({link}): a pty slave whose master is "
                         "closed (hung up) cannot be restored")
    if stat.st_rdev == DEV_TTY:
        info_id = CTTY_INFO_ID
        d.ctty_files = True
    elif stat.st_rdev == PTMX:
        from engine.images import fdinfo
        index = fdinfo.read(task.pid, fd).get("tty-index")
        if index is None:
            raise ValueError(f"task {task.pid}: fd {fd} ({link}): no tty-index in its fdinfo")
        info_id = index * 2 + 1
        d.holders.setdefault(index, {}).setdefault("master", (task.pid, fd))
    else:
        index = pts_index(stat.st_rdev)
        info_id = index * 2
        d.holders.setdefault(index, {}).setdefault("slave", (task.pid, fd))
    d.infos.add(info_id)
    regf_id = add_file(ctx, regular_file(link, stat, flags=flags, pos=0))
    entry = files_pb2.file_entry(type=files_pb2.TTY, id=0)
    entry.tty.id, entry.tty.tty_info_id, entry.tty.flags, entry.tty.regf_id = \
        0, info_id, flags, regf_id
    f = entry.tty.fown
    f.uid = f.euid = f.signum = f.pid_type = f.pid = 0
    return entry


@hookimpl
def engine_dump_task(ctx, task):
    with open(f"/proc/{task.pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    ppid, pgid, sid, tty_nr, tpgid = (int(x) for x in fields[1:6])
    nested = False
    if tty_nr:
        with open(f"/proc/{task.pid}/status") as f:
            nested = any(line.startswith("NSsid:") and len(line.split()) > 2 for line in f)
    ctx.stash.setdefault(DUMP, _Dump()).tasks[task.pid] = (ppid, pgid, sid, tty_nr, nested,
                                                           tpgid)


@hookimpl
def engine_dump_finish(ctx):
    d = ctx.stash.get(DUMP, None)
    if d is None:
        return
    sessions = _check_cttys(d)
    infos, data = [], []
    for index, held in sorted(d.holders.items()):
        if "master" not in held:
            # The other end is outside the tree: reopened by name (a shell job).
            infos.append(_external_slave_info(index, held["slave"], sessions))
            continue
        state, pending = _pty_state(index, held, sessions)
        for info_id in (index * 2, index * 2 + 1):
            if info_id in d.infos or (info_id % 2 == 0 and state["sid"]):
                infos.append(_info_entry(info_id, state))
        if pending:
            from engine.images.proto import tty_pb2
            data.append(tty_pb2.tty_data_entry(tty_id=index * 2, data=pending))
    if d.ctty_files:
        from engine.images.proto import tty_pb2
        infos.append(tty_pb2.tty_info_entry(id=CTTY_INFO_ID, type=tty_pb2.CTTY, locked=False,
                                            exclusive=False, packet_mode=False, sid=0, pgrp=0,
                                            rdev=DEV_TTY))
    if infos:
        ctx.images.write("tty-info", infos)
    if data:
        ctx.images.write("tty-data", data)


def _check_cttys(d: _Dump) -> dict[int, tuple[int, int]]:
    """index -> (session leader pid, foreground group), for the ptys of the tree that are some
    tree-led session's controlling terminal; refuses what no restore can
    give back."""
    out: dict[int, tuple[int, int]] = {}
    tasks = d.tasks
    for pid, (ppid, pgid, sid, tty_nr, nested, _) in sorted(tasks.items()):
        if sid not in tasks:
            # A session outside the tree: the restored task inherits the
            # engine's, and with it its terminal (CRIU's --shell-job).
            continue
        leader_tty = tasks[sid][3]
        if tty_nr != leader_tty:
            what = "left its session's controlling terminal (TIOCNOTTY)" if leader_tty \
                else f"has a controlling terminal ({_dev(tty_nr)}) its session leader {sid} lacks"
            raise ValueError(f"task {pid}: {what}: cannot be restored")
        if not tty_nr:
            continue
        if nested:
            raise ValueError(f"task {pid}: a controlling terminal in a nested pid namespace "
                             "is not supported")
        if os.major(tty_nr) not in PTS_MAJORS:
            raise ValueError(f"task {pid}: controlling terminal {_dev(tty_nr)} is not a pty: "
                             "not supported")
        walk = pid
        while walk != sid:
            walk = tasks.get(walk, (None,))[0]
            if walk not in tasks:
                raise ValueError(f"task {pid}: its controlling terminal {_dev(tty_nr)} comes "
                                 f"from session leader {sid}, which is not its ancestor: "
                                 "no fork can give it back")
        out[pts_index(tty_nr)] = (sid, tasks[sid][5])
    return out


def _dev(tty_nr: int) -> str:
    major = os.major(tty_nr)
    return f"/dev/pts/{pts_index(tty_nr)}" if major in PTS_MAJORS else \
        f"tty {major}:{os.minor(tty_nr)}"


def _pty_state(index: int, held: dict, sessions: dict) -> tuple[dict, bytes]:
    """What the kernel keeps for pty `index`, read through a copy of its
    master (and of a slave, or one opened for the purpose), and the bytes
    the slave side wrote that its master has not read (taken, then put back
    so a tree left running reads them)."""
    pid, fd = held["master"]
    master = pidfd_getfd(pid, fd)
    slave = pidfd_getfd(*held["slave"]) if "slave" in held else \
        _ioctl_fd(master, TIOCGPTPEER, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
    try:
        tios = _termios(slave, termios.TCGETS)
        state = {
            "index": index, "termios": tios,
            "termios_locked": _termios(slave, TIOCGLCKTRMIOS),
            "winsize": struct.unpack("HHHH", fcntl.ioctl(master, termios.TIOCGWINSZ, bytes(8))),
            "packet_mode": _int_ioctl(master, TIOCGPKT),
            "locked": _int_ioctl(master, TIOCGPTLCK),
            "exclusive": _int_ioctl(slave, TIOCGEXCL),
            "rdev": os.fstat(slave).st_rdev, "dev": os.fstat(slave).st_dev,
            "uid": os.fstat(slave).st_uid, "gid": os.fstat(slave).st_gid,
            "sid": 0, "pgrp": 0,
        }
        if index in sessions:
            state["sid"], state["pgrp"] = sessions[index]
        typed = _int_ioctl(slave, termios.FIONREAD)
        if typed:
            raise ValueError(f"task {pid}: pty {index}: {typed} bytes of input not yet read "
                             "by its slave side cannot be restored")
        pending = _drain(master)
        if pending:
            _write_through_slave(slave, tios, pending)
        return state, pending
    finally:
        os.close(master)
        os.close(slave)


def _drain(master: int) -> bytes:
    """What the master can read now, without waiting (packet mode's leading
    status byte is the kernel's, not the data's: read with it off)."""
    packet = _int_ioctl(master, TIOCGPKT)
    if packet:
        fcntl.ioctl(master, termios.TIOCPKT, struct.pack("i", 0))
    flags = fcntl.fcntl(master, fcntl.F_GETFL)
    fcntl.fcntl(master, fcntl.F_SETFL, flags | os.O_NONBLOCK)
    out = bytearray()
    try:
        while True:
            try:
                chunk = os.read(master, 65536)
            except BlockingIOError:
                break
            if not chunk:
                break
            out += chunk
    finally:
        fcntl.fcntl(master, fcntl.F_SETFL, flags)
        if packet:
            fcntl.ioctl(master, termios.TIOCPKT, struct.pack("i", 1))
    return bytes(out)


def _write_through_slave(slave: int, tios: tuple, data: bytes) -> None:
    """Queue `data` for the master to read, as it was: written by the slave
    side with output processing (OPOST: ONLCR...) off for the while."""
    iflag, oflag, cflag, lflag, line, cc = tios
    raw = TERMIOS.pack(iflag, oflag & ~termios.OPOST, cflag, lflag, line, cc)
    fcntl.ioctl(slave, termios.TCSETS, raw)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(slave, view):]
    finally:
        fcntl.ioctl(slave, termios.TCSETS, TERMIOS.pack(*tios))


def _external_slave_info(index: int, holder: tuple[int, int], sessions: dict):
    copy = pidfd_getfd(*holder)
    try:
        s = os.fstat(copy)
        state = {"index": index, "termios": _termios(copy, termios.TCGETS),
                 "termios_locked": None,
                 "winsize": struct.unpack("HHHH", fcntl.ioctl(copy, termios.TIOCGWINSZ,
                                                               bytes(8))),
                 "packet_mode": 0, "locked": 0, "exclusive": _int_ioctl(copy, TIOCGEXCL),
                 "rdev": s.st_rdev, "dev": s.st_dev, "uid": s.st_uid, "gid": s.st_gid,
                 "sid": 0, "pgrp": 0}
    finally:
        os.close(copy)
    if index in sessions:
        state["sid"], state["pgrp"] = sessions[index]
    return _info_entry(index * 2, state)


def _info_entry(info_id: int, state: dict):
    from engine.images.proto import tty_pb2
    e = tty_pb2.tty_info_entry(id=info_id, type=tty_pb2.PTY, locked=bool(state["locked"]),
                               exclusive=bool(state["exclusive"]),
                               packet_mode=bool(state["packet_mode"]),
                               sid=state["sid"], pgrp=state["pgrp"],
                               rdev=PTMX if info_id % 2 else state["rdev"],
                               dev=state["dev"] & 0xFFFFFFFF, uid=state["uid"],
                               gid=state["gid"])
    _fill_termios(e.termios, state["termios"])
    if state["termios_locked"] is not None:
        _fill_termios(e.termios_locked, state["termios_locked"])
    w = state["winsize"]
    e.winsize.ws_row, e.winsize.ws_col, e.winsize.ws_xpixel, e.winsize.ws_ypixel = w
    e.pty.index = state["index"]
    return e


def _fill_termios(msg, tios: tuple) -> None:
    """CRIU copies the C library's c_cc (32 bytes) into its 19 uint32
    c_cc: the bytes packed four to a number, little-endian; written the same
    way so either side reads the other's."""
    msg.c_iflag, msg.c_oflag, msg.c_cflag, msg.c_lflag, msg.c_line = tios[:5]
    msg.c_ispeed = msg.c_ospeed = 0
    packed = tios[5].ljust(32, b"\0")
    msg.c_cc.extend(list(struct.unpack("<8I", packed)) + [0] * (NCCS - 8))


def _termios(fd: int, request: int) -> tuple:
    return TERMIOS.unpack(fcntl.ioctl(fd, request, bytes(TERMIOS.size)))


def _int_ioctl(fd: int, request: int) -> int:
    return struct.unpack("i", fcntl.ioctl(fd, request, bytes(4)))[0]


def _ioctl_fd(fd: int, request: int, arg: int) -> int:
    return fcntl.ioctl(fd, request, arg)


# --- restore ---------------------------------------------------------------

@hookimpl
def engine_restore_collect(ctx, graph):
    files = ctx.provided("files")
    tty_files = {fid: e for fid, e in files.items() if e.HasField("tty")}
    if not tty_files:
        return
    infos = _read_infos(ctx)
    ptys: dict[int, Pty] = {}
    for fid, e in sorted(tty_files.items()):
        where = f"files.img: TTY id {fid}"
        info = infos.get(e.tty.tty_info_id)
        if info is None:
            raise ImageError(where, f"tty_info_id {e.tty.tty_info_id} is not in tty-info.img")
        reg = files.get(e.tty.regf_id)
        if reg is None or not reg.HasField("reg"):
            raise ImageError(where, f"regf_id {e.tty.regf_id} is not a REG entry")
        if e.tty.flags & ~_OPEN_FLAGS:
            raise ImageError(where, f"flags {e.tty.flags:#o} hold more than a tty keeps")
        if info.type == _type("CTTY"):
            continue
        pty = ptys.setdefault(info.pty.index, Pty(info.pty.index))
        if info.id % 2:
            pty.master_files.append(fid)
            pty.master_info = info
            pty.path = reg.reg.name
        else:
            pty.slave_files.append(fid)
            pty.slave_info = info
    for index, pty in ptys.items():
        if len(pty.master_files) > 1:
            raise ImageError("files.img", f"pty {index}: {len(pty.master_files)} open files "
                                          "of one master (a pty has one)")
        if pty.path not in ("/dev/ptmx", "/dev/pts/ptmx"):
            raise ImageError("files.img", f"pty {index}: master opened as {pty.path!r}, "
                                          "not /dev/ptmx")
    if ctx.images.exists("tty-data"):
        for i, d in enumerate(ctx.images.read("tty-data")):
            pty = ptys.get(d.tty_id // 2)
            if pty is None or not pty.master_files or d.tty_id % 2:
                raise ImageError("tty-data.img", f"entry {i}: tty_id {d.tty_id} names no "
                                                 "pty slave of the image with its master")
            pty.data = d.data
    ctx.stash[PTYS] = ptys
    _nodes(ctx, graph, ptys, infos, tty_files)


# Status flags an open tty keeps (0o100000: O_LARGEFILE, which the kernel
# sets on every open of a 64-bit task and Python spells 0).
_OPEN_FLAGS = (os.O_ACCMODE | os.O_NONBLOCK | os.O_APPEND | fcntl.FASYNC | 0o100000
               | os.O_NOCTTY | os.O_SYNC | os.O_DSYNC | os.O_CLOEXEC)


def _type(name: str) -> int:
    from engine.images.proto import tty_pb2
    return tty_pb2.TtyType.Value(name)


def _read_infos(ctx) -> dict:
    if not ctx.images.exists("tty-info"):
        raise ImageError("tty-info.img", "missing, but files.img holds TTY entries")
    out = {}
    max_ptys = int(open("/proc/sys/kernel/pty/max").read())
    for i, e in enumerate(ctx.images.read("tty-info")):
        where = f"tty-info.img: entry {i} (id {e.id})"
        if e.id in out:
            raise ImageError(where, "a second entry with this id")
        if e.type == _type("CTTY"):
            out[e.id] = e
            continue
        if e.type != _type("PTY"):
            raise ImageError(where, f"type {e.type}: only ptys and /dev/tty are restored")
        if not e.HasField("pty") or e.pty.index >= max_ptys or e.id // 2 != e.pty.index:
            raise ImageError(where, f"pty index {e.pty.index if e.HasField('pty') else None} "
                                    f"does not match id {e.id} or is over kernel.pty.max")
        for name in ("termios", "termios_locked"):
            if e.HasField(name) and len(getattr(e, name).c_cc) > NCCS:
                raise ImageError(where, f"{name}.c_cc has {len(getattr(e, name).c_cc)} values")
        if e.HasField("winsize") and max(e.winsize.ws_row, e.winsize.ws_col, e.winsize.ws_xpixel,
                                         e.winsize.ws_ypixel) > 0xFFFF:
            raise ImageError(where, "winsize over 65535")
        out[e.id] = e
    return out


def _nodes(ctx, graph, ptys: dict, infos: dict, tty_files: dict) -> None:
    tables = ctx.provided("fds").tables
    order = list(tables)                      # pstree order: parents first
    holders: dict[int, list[int]] = {}        # index -> pids holding an end
    file_pty = {fid: idx for idx, p in ptys.items() for fid in p.master_files + p.slave_files}
    ctty_files = [fid for fid, e in tty_files.items() if fid not in file_pty]
    for pid, table in tables.items():
        for _, fid, _ in table:
            if fid in file_pty:
                holders.setdefault(file_pty[fid], [])
                if pid not in holders[file_pty[fid]]:
                    holders[file_pty[fid]].append(pid)
    alive = {t.pid for t in ctx.provided("tasks").alive}
    cttys = {}
    for index, pty in ptys.items():
        info = pty.slave_info or pty.master_info
        if info.sid:
            if info.sid not in alive:
                raise ImageError("tty-info.img", f"pty {index}: sid {info.sid} is no live "
                                                 "task of the tree")
            cttys[info.sid] = (index, info.pgrp)
        if not pty.master_files:
            continue                          # reopened by name in its fd table
        users = holders.get(index, [])
        if not users and info.sid not in alive:
            raise ImageError("files.img", f"pty {index}: held by no task (only in flight)")
        maker = min(users + ([info.sid] if info.sid in alive else []), key=order.index)
        graph.add(Node(key=f"tty:make:{index}", plugin="tty", where="task", pid=maker,
                       data=index,
                       provides=[("file", f) for f in pty.master_files + pty.slave_files],
                       label=f"pty {index} made by {maker}"))
    ctx.stash[CTTYS] = cttys
    # A locked pty lets no open pass (its slave, /dev/tty): locked once every
    # fd is open, through the fd of a task holding its master.
    ctx.stash[LOCKS] = [(index, next((pid, fd) for pid, table in tables.items()
                                     for fd, fid, _ in table if fid in pty.master_files))
                        for index, pty in ptys.items() if pty.master_files and pty.info.locked]
    groups = {e.pgid for e in ctx.provided("tasks").entries}
    for sid, (index, pgrp) in cttys.items():
        pty = ptys[index]
        made = [("file", (pty.master_files + pty.slave_files)[0])] if pty.master_files else []
        graph.add(Node(key=f"tty:ctty:{sid}", plugin="tty", where="task", pid=sid,
                       data=("ctty", index), after=[("session", sid)] + made,
                       provides=[("ctty", sid)] + [("file", f) for f in ctty_files],
                       label=f"{sid} takes pty {index} as its controlling terminal"))
        if pgrp and pgrp != sid and pgrp not in groups:
            log.info("pty %d: foreground group %d has no task left: the leader's kept",
                     index, pgrp)
        elif pgrp and pgrp != sid:
            graph.add(Node(key=f"tty:fg:{sid}", plugin="tty", where="task", pid=sid,
                           data=("fg", index, pgrp),
                           # `made` too: it takes the slave its maker keeps
                           # (the maker stays until its takers are done).
                           after=[f"tty:ctty:{sid}", ("group", pgrp)] + made,
                           label=f"pty {index}: foreground group {pgrp}"))


@hookimpl
def engine_restore_node(ctx, node):
    if node.key.startswith("tty:make:"):
        _make_pty(ctx, ctx.stash[PTYS][node.data])
    elif node.data[0] == "ctty":
        fd = _slave_fd(ctx, ctx.stash[PTYS][node.data[1]])
        try:
            fcntl.ioctl(fd, termios.TIOCSCTTY, 0)
        except OSError as e:
            raise ImageError("tty-info.img", f"pty {node.data[1]}: sid {ctx.self_pid}: "
                                             f"TIOCSCTTY: {e.strerror}") from None
        finally:
            os.close(fd)
    else:
        _, index, pgrp = node.data
        fd = _slave_fd(ctx, ctx.stash[PTYS][index])
        try:
            fcntl.ioctl(fd, termios.TIOCSPGRP, struct.pack("i", pgrp))
        except OSError as e:
            raise ImageError("tty-info.img", f"pty {index}: pgrp {pgrp}: TIOCSPGRP: "
                                             f"{e.strerror}") from None
        finally:
            os.close(fd)
    return True


@hookimpl
def engine_restore_ready(ctx):
    from engine import ns
    for index, (pid, fd) in ctx.stash.get(LOCKS, ()):
        copy = pidfd_getfd(ns.pid_here(pid) or pid, fd)
        try:
            fcntl.ioctl(copy, TIOCSPTLCK, struct.pack("i", 1))
        finally:
            os.close(copy)


def _slave_fd(ctx, pty: Pty) -> int:
    """An fd of the pty's slave in this task, ours to close."""
    if not pty.master_files:
        return os.open(f"/dev/pts/{pty.index}", os.O_RDWR | os.O_NOCTTY)
    # Made by its maker before it locked the pty (no open passes the lock).
    return ctx.take_fd(("tty-slave", pty.index))


def _make_pty(ctx, pty: Pty) -> None:
    files = ctx.provided("files")
    info = pty.info
    master = park(ctx, _open_ptmx(pty))
    fcntl.ioctl(master, TIOCSPTLCK, struct.pack("i", 0))
    slaves = [park(ctx, _ioctl_fd(master, TIOCGPTPEER,
                                  (files[f].tty.flags & ~fcntl.FASYNC) | os.O_NOCTTY))
              for f in pty.slave_files]
    probe = slaves[0] if slaves else _ioctl_fd(master, TIOCGPTPEER, os.O_RDWR | os.O_NOCTTY)
    # For the session leader to take as its controlling terminal.
    spare = park(ctx, _ioctl_fd(master, TIOCGPTPEER, os.O_RDWR | os.O_NOCTTY)) \
        if info.sid else None
    try:
        tios = _image_termios(info.termios) if info.HasField("termios") else None
        if pty.data:
            if tios is None:
                raise ImageError("tty-info.img", f"pty {pty.index}: data without termios")
            _write_through_slave(probe, tios, pty.data)
        if tios is not None:
            fcntl.ioctl(probe, termios.TCSETS, TERMIOS.pack(*tios))
        if info.HasField("termios_locked") and any(
                _image_termios(info.termios_locked)[:4]):
            fcntl.ioctl(probe, TIOCSLCKTRMIOS, TERMIOS.pack(*_image_termios(info.termios_locked)))
        if info.HasField("winsize"):
            w = info.winsize
            fcntl.ioctl(master, termios.TIOCSWINSZ,
                        struct.pack("HHHH", w.ws_row, w.ws_col, w.ws_xpixel, w.ws_ypixel))
        if info.packet_mode:
            fcntl.ioctl(master, termios.TIOCPKT, struct.pack("i", 1))
        if info.exclusive:
            fcntl.ioctl(probe, termios.TIOCEXCL)
    except OSError as e:
        raise ImageError("tty-info.img", f"pty {pty.index}: {e.strerror}") from None
    finally:
        if not slaves:
            os.close(probe)
    for fid, fd in [(f, master) for f in pty.master_files] + list(zip(pty.slave_files, slaves)):
        _set_status(fd, files[fid].tty.flags)
        ctx.publish_fd(fid, fd)
    if info.sid:
        ctx.publish_fd(("tty-slave", pty.index), spare)


def _open_ptmx(pty: Pty) -> int:
    """Open /dev/ptmx until the kernel hands out index N: the indexes below
    it are held meanwhile (criu/tty.c __pty_open_ptmx_index)."""
    held: list[int] = []
    try:
        for _ in range(MAX_OPENS):
            fd = os.open(pty.path, os.O_RDWR | os.O_NOCTTY)
            got = _int_ioctl(fd, TIOCGPTN)
            if got == pty.index:
                return fd
            held.append(fd)
            if got > pty.index:
                break
        raise ImageError("tty-info.img", f"pty {pty.index}: /dev/pts/{pty.index} is in use "
                                         f"(the kernel gave index {got})")
    finally:
        for fd in held:
            os.close(fd)


def _image_termios(msg) -> tuple:
    packed = struct.pack(f"<{len(msg.c_cc)}I", *msg.c_cc)[:NCCS].ljust(NCCS, b"\0")
    return (msg.c_iflag, msg.c_oflag, msg.c_cflag, msg.c_lflag, msg.c_line & 0xFF, packed)


def _set_status(fd: int, flags: int) -> None:
    """O_NONBLOCK and O_ASYNC as dumped (F_SETFL arms SIGIO)."""
    keep = os.O_NONBLOCK | fcntl.FASYNC | os.O_APPEND
    status = fcntl.fcntl(fd, fcntl.F_GETFL)
    fcntl.fcntl(fd, fcntl.F_SETFL, (status & ~keep) | (flags & keep))


@hookimpl
def engine_restore_file(ctx, entry):
    """A /dev/tty fd (opened in its session, after its leader took the
    terminal), or a slave whose master is outside the tree (by name)."""
    if not entry.HasField("tty"):
        return None
    reg = ctx.provided("files")[entry.tty.regf_id].reg
    flags = (entry.tty.flags & ~fcntl.FASYNC) | os.O_NOCTTY
    if entry.tty.tty_info_id == CTTY_INFO_ID or reg.name == "/dev/tty":
        path = "/dev/tty"
    else:
        path = f"/dev/pts/{entry.tty.tty_info_id // 2}"
    try:
        fd = os.open(path, flags)
    except OSError as e:
        raise ImageError("files.img", f"TTY id {entry.id} ({path}): {e.strerror}") from None
    _set_status(fd, entry.tty.flags)
    return fd

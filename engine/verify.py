"""The state audit: `engine dump` fingerprints every task, `engine restore
--verify` checks the restored tree against it before release.

The fingerprint is what the kernel shows of each task in /proc, read the
same way at both ends, never what a plugin believes it dumped: credentials,
signal dispositions, scheduling, limits, prctl-visible state, the maps with
a checksum of every mapping's contents, the fd table (kind, flags, offset
and each kind's own fdinfo lines, locks included), cwd and root, timers,
threads with their names and scheduling, and which tasks share a namespace, a pipe or a
socket. Numbers the kernel hands out afresh (inodes of pipes, sockets and
namespaces, mount ids) are replaced by their order of first appearance in
the tree, so sharing is compared, not the numbers. It is stored beside the
images as FINGERPRINT (JSON, not a CRIU image: crit and CRIU pass it by).

Left out, on purpose, because they legitimately differ: the task's run
state, tracer, context switch counts, memory use (RSS: the restore maps what
the dump saw present), pending signals (a restored timer may fire while the
tree waits for release), the blocked mask (every signal stays blocked until
release, then the dumped one is set), the root's parent, and time values of
timers and timerfds (they run).

A tree whose root is the init of a pid namespace of its own (a container's)
is restored with the pids it had in that namespace and host pids the
kernel had free: its fingerprint names tasks, threads, parents, groups and
sessions by their pids at the root's level (NSpid etc. without the outer
levels), read the same way at both ends.
"""
from __future__ import annotations

import json
import os
import re
import zlib

from engine.ns import KINDS, init_level

FINGERPRINT = "engine-fingerprint.json"
VERSION = 1

# /proc/PID/status lines compared (the others are counters, sizes, run state)
STATUS_KEYS = (
    "Name", "Umask", "Uid", "Gid", "Groups", "NStgid", "NSpid", "NSpgid", "NSsid", "Threads",
    "SigIgn", "SigCgt", "CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb", "NoNewPrivs",
    "Seccomp", "Seccomp_filters", "Speculation_Store_Bypass", "SpeculationIndirectBranch",
    "Cpus_allowed_list", "Mems_allowed_list", "THP_enabled", "untag_mask", "CoreDumping",
)
# /proc/PID/stat fields (1-based, as proc(5) numbers them) compared
STAT_FIELDS = {"pgrp": 5, "session": 6, "tty_nr": 7, "tpgid": 8, "priority": 18, "nice": 19,
               "exit_signal": 38, "rt_priority": 40, "policy": 41}
# ... of them, those the kernel keeps per thread (each thread's too)
THREAD_STAT = ("priority", "nice", "rt_priority", "policy")
# per-task /proc files compared as text
TEXT_FILES = ("limits", "timers", "oom_score_adj", "loginuid", "sessionid", "personality",
              "coredump_filter", "timerslack_ns")
# fdinfo lines that change by themselves or name numbers given afresh
VOLATILE_FDINFO = {"mnt_id", "ino", "it_value", "ticks", "eventfd-id"}
VOLATILE_TOKENS = re.compile(r"\s*\b(ino|sdev|pos|fhandle-bytes|fhandle-type|f_handle|mnt_id)"
                             r":\s*\S+")
# pseudo-files whose contents are the kernel's own, not the task's
NO_CHECKSUM = ("[vvar]", "[vvar_vclock]", "[vsyscall]")


class Canon:
    """Numbers the kernel hands out afresh, by order of first appearance."""

    def __init__(self) -> None:
        self.seen: dict[str, int] = {}
        own = {}
        for kind in KINDS:
            try:
                own[kind] = os.stat(f"/proc/self/ns/{kind}").st_ino
            except OSError:
                pass
        self.own = own

    def name(self, key: str) -> str:
        return f"#{self.seen.setdefault(key, len(self.seen))}"

    def ns(self, kind: str, ino: int) -> str:
        return "the engine's" if self.own.get(kind) == ino else self.name(f"{kind}:{ino}")


def fingerprint_tree(pids: list[int], root: int, volatile: dict) -> dict:
    """Every task's fingerprint, in tree order (parents first). `volatile`:
    pid -> [(address, length)] of memory the kernel writes by itself (each
    thread's rseq area: the CPU it last ran on), left out of checksums."""
    canon = Canon()
    level = init_level(root)
    names = {pid: _pid_at(pid, level) for pid in pids} if level else {p: p for p in pids}
    tasks = {}
    for pid in pids:
        found = task_fingerprint(pid, canon, pid == root, volatile.get(pid, ()))
        tasks[str(names[pid])] = _at_level(found, pid, level, names) if level else found
    return {"version": VERSION, "volatile": {str(names[p]): v for p, v in volatile.items()},
            "tasks": tasks}


def check_restored(dumped: dict, root: int) -> list[str]:
    """The differences of the restored tree under `root` (its host pid)
    from the fingerprint `dumped`, whose tasks are named at the root's
    level when it is the init of its own pid namespace."""
    level = init_level(root)
    keys = [int(p) for p in dumped["tasks"]]
    host = _descendants_at(root, level) if level else {p: p for p in keys}
    volatile = {host[int(p)]: [tuple(r) for r in v]
                for p, v in dumped.get("volatile", {}).items() if int(p) in host}
    return compare(dumped, fingerprint_tree([host[k] for k in keys if k in host],
                                            root if level else keys[0], volatile))


def _pid_at(pid: int, level: int, task: str = "") -> int:
    """Task (or thread `task`/TID) `pid`'s pid at `level` (NSpid)."""
    return int(_status(f"{pid}{task}")["NSpid"].split()[level])


def _descendants_at(root: int, level: int) -> dict[int, int]:
    """pid at `level` -> host pid, of `root` and every task under it."""
    kids: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                ppid = int(_read(f"/proc/{name}/stat").rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            kids.setdefault(ppid, []).append(int(name))
    out, queue = {}, [root]
    while queue:
        pid = queue.pop()
        try:
            out[_pid_at(pid, level)] = pid
        except (OSError, IndexError, KeyError, ValueError):
            continue
        queue += kids.get(pid, [])
    return out


def _at_level(out: dict, pid: int, level: int, names: dict[int, int]) -> dict:
    """A task's fingerprint with its pid-valued fields at `level`."""
    status = out["status"]
    for key in ("NStgid", "NSpid", "NSpgid", "NSsid"):
        if status.get(key):
            status[key] = " ".join(status[key].split()[level:])
    stat = out.get("stat")
    if stat is not None:
        stat["pgrp"], stat["session"] = (status[k].split()[0] for k in ("NSpgid", "NSsid"))
        if "ppid" in stat:
            stat["ppid"] = str(names.get(int(stat["ppid"]), "outside the tree"))
    if "threads" in out:
        out["threads"] = {str(_pid_at(pid, level, f"/task/{tid}")): comm
                          for tid, comm in out["threads"].items()}
    return out


def task_fingerprint(pid: int, canon: Canon, is_root: bool = False, volatile=()) -> dict:
    proc = f"/proc/{pid}"
    out: dict = {}
    status = _status(pid)
    out["status"] = {k: status.get(k) for k in STATUS_KEYS}
    if status.get("State", "").startswith("Z"):
        # A dead task's signal dispositions are no one's to see (CRIU's
        # zombie core holds none); its name and ids are.
        out["zombie"] = True
        for key in ("SigIgn", "SigCgt"):
            out["status"].pop(key)
        return out
    stat = _read(f"{proc}/stat").rsplit(")", 1)[1].split()
    out["stat"] = {name: stat[i - 3] for name, i in STAT_FIELDS.items()}
    if not is_root:
        out["stat"]["ppid"] = stat[1]
    for name in TEXT_FILES:
        out[name] = _read(f"{proc}/{name}", default=None)
    if out["timers"]:
        # listed newest first: the order they were made in, not state
        out["timers"] = sorted(out["timers"].split("ID: ")[1:])
    out["ns"] = {}
    for kind in KINDS:
        try:
            out["ns"][kind] = canon.ns(kind, os.stat(f"{proc}/ns/{kind}").st_ino)
        except OSError:
            pass
    out["cwd"], out["root"] = (_link(f"{proc}/{name}") for name in ("cwd", "root"))
    out["mounts"] = _mounts(pid, canon)
    out["threads"] = {tid: _thread(pid, tid)
                      for tid in sorted(os.listdir(f"{proc}/task"), key=int)}
    out["maps"] = _maps(pid, volatile)
    out["fds"] = _fds(pid, canon)
    return out


def _mounts(pid: int, canon: Canon):
    """A mount tree of the task's own (plugins/mntns: one lacking some of
    the engine's mounts), canonical: each mount point with its per-mount
    options and propagation, peer groups numbered afresh; ids and what an
    external mount holds are the restore's own. None for the engine's
    namespace or a copy of it (whose other mounts are the host's)."""
    mine = _read(f"/proc/{pid}/mountinfo", default="")
    if canon.own.get("mnt") == os.stat(f"/proc/{pid}/ns/mnt").st_ino:
        return None
    points = {line.split()[4] for line in mine.splitlines()}
    own = {line.split()[4] for line in _read("/proc/self/mountinfo").splitlines()}
    if own <= points:
        return None
    out = []
    groups = {tag.split(":")[1] for line in mine.splitlines()
              for tag in line.split(" - ")[0].split()[6:] if tag.startswith("shared:")}
    for line in sorted(mine.splitlines(), key=lambda line: line.split()[4]):
        fields = line.split(" - ")[0].split()
        # A master outside the tree is not the tree's: it comes back private.
        tags = [f"{tag.split(':')[0]}:{canon.name('peer:' + tag.split(':')[1])}"
                for tag in fields[6:] if ":" in tag and tag.split(":")[1] in groups]
        out.append(" ".join([fields[4], fields[5], *tags]))
    return out


def _thread(pid: int, tid: str) -> dict:
    """A thread's name and what the kernel keeps per thread of its
    scheduling: the task's own lines above are its leader's."""
    stat = _read(f"/proc/{pid}/task/{tid}/stat").rsplit(")", 1)[1].split()
    out = {"comm": _read(f"/proc/{pid}/task/{tid}/comm").strip(),
           "Cpus_allowed_list": _status(f"{pid}/task/{tid}").get("Cpus_allowed_list"),
           "timerslack_ns": _read(f"/proc/{tid}/timerslack_ns", default=None)}
    out.update((name, stat[STAT_FIELDS[name] - 3]) for name in THREAD_STAT)
    return out


def _maps(pid: int, volatile) -> dict:
    """Each mapping by its range: protections, offset, name, and a CRC-32
    of the pages that are the task's own (_crc). Read through
    /proc/PID/mem (PROT_NONE ones too). Neighbours the kernel may or may
    not merge (same protections and name, offsets that follow: merged
    after mprotect at restore, kept apart at dump by an anon_vma) count as
    one mapping."""
    merged: list[list] = []          # [lo, hi, perms, offset, name, used]
    for head, used in _smaps(pid):
        parts = head.split(None, 5)
        lo, hi = (int(x, 16) for x in parts[0].split("-"))
        perms, offset, name = parts[1], int(parts[2], 16), parts[5] if len(parts) > 5 else ""
        last = merged[-1] if merged else None
        if last is not None and last[1] == lo and last[2] == perms and last[4] == name \
                and (not name.startswith("/") or last[3] + (last[1] - last[0]) == offset):
            last[1], last[5] = hi, last[5] or used
        else:
            merged.append([lo, hi, perms, offset, name, used])
    out = {}
    mem = os.open(f"/proc/{pid}/mem", os.O_RDONLY | os.O_CLOEXEC)
    pagemap = os.open(f"/proc/{pid}/pagemap", os.O_RDONLY | os.O_CLOEXEC)
    try:
        for lo, hi, perms, offset, name, used in merged:
            crc = None if name in NO_CHECKSUM else 0 if not used else \
                _crc(mem, pagemap, lo, hi, name.startswith(SHARED_ANON),
                     [(a, n) for a, n in volatile if lo <= a < hi])
            out[f"{lo:x}-{hi:x}"] = [perms, f"{offset:x}", name, crc]
    finally:
        os.close(mem)
        os.close(pagemap)
    return out


def _smaps(pid: int):
    """(maps line, whether any of its pages is resident or swapped)."""
    head, used = None, False
    for line in _read(f"/proc/{pid}/smaps").splitlines():
        first = line.split(None, 1)[0]
        if not first.endswith(":"):
            if head is not None:
                yield head, used
            head, used = line, False
        elif first in ("Rss:", "Swap:") and line.split()[1] != "0":
            used = True
    if head is not None:
        yield head, used


PAGE = os.sysconf("SC_PAGE_SIZE")
ZERO = bytes(PAGE)
PM_PRESENT, PM_SWAP, PM_FILE = 1 << 63, 1 << 62, 1 << 61
# shared memory whose pages are the tree's own (made by the restore); a
# memfd's are its file's, like any file's: which of them a task has faulted
# in is not restored (plugins/memfd), its private copies are
SHARED_ANON = ("/dev/zero", "/SYSV", "[shmem]")


def _crc(mem: int, pagemap: int, lo: int, hi: int, shared_anon: bool, volatile,
         chunk: int = 1 << 18):
    """CRC-32 over (address, contents) of the task's own pages in [lo, hi):
    resident or swapped, not all zeros (a page the restore leaves
    unpopulated reads as the zeros it held), and not a page of a file's
    cache (which the file, not the task, holds: a page of a private file
    mapping counts once written, when it is the task's copy)."""
    import struct
    crc = 0
    try:
        for at in range(lo, hi, chunk * PAGE):
            count = min(chunk, (hi - at) // PAGE)
            entries = struct.unpack(f"<{count}Q", os.pread(pagemap, count * 8,
                                                           at // PAGE * 8))
            run = None
            for i, e in enumerate(entries + (0,)):
                if e & (PM_PRESENT | PM_SWAP) and i < count and \
                        (shared_anon or not e & PM_FILE):
                    run = i if run is None else run
                    continue
                if run is not None:
                    start = at + run * PAGE
                    data = os.pread(mem, (i - run) * PAGE, start)
                    if volatile:
                        data = bytearray(data)
                        for addr, length in volatile:
                            if start <= addr < start + len(data):
                                data[addr - start:addr - start + length] = bytes(length)
                        data = bytes(data)
                    for k in range(0, len(data), PAGE):
                        page = data[k:k + PAGE]
                        if page != ZERO:
                            crc = zlib.crc32(page, zlib.crc32(
                                (at + run * PAGE + k).to_bytes(8, "little"), crc))
                    run = None
    except OSError as e:
        return f"unreadable: {e.strerror}"
    return crc


def _fds(pid: int, canon: Canon) -> dict:
    out = {}
    try:
        names = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return out
    for name in sorted(names, key=int):
        link = _link(f"/proc/{pid}/fd/{name}")
        m = re.fullmatch(r"(\w+):\[(\d+)\]", link or "")
        if m:                              # pipe:[123], socket:[456]: shared or not
            link = f"{m.group(1)}:{canon.name(link)}"
        info = []
        for line in _read(f"/proc/{pid}/fdinfo/{name}", default="").splitlines():
            key = line.split(":", 1)[0]
            if key in VOLATILE_FDINFO:
                continue
            # tfd:, inotify wd:, fanotify lines hold several key:value pairs
            info.append(" ".join(VOLATILE_TOKENS.sub("", line).split())
                        if line.count(":") > 1 else line)
        # tfd:, inotify lines come in the kernel's tree order (addresses)
        out[name] = [link, [line for line in info if line.count(":") <= 1]
                     + sorted(line for line in info if line.count(":") > 1)]
    return out


def compare(dumped: dict, restored: dict) -> list[str]:
    """One line per difference, naming the task and the field."""
    lines = []
    for pid, want in dumped["tasks"].items():
        got = restored["tasks"].get(pid)
        if got is None:
            lines.append(f"task {pid}: not restored")
            continue
        lines += _diff(f"task {pid}", want, got)
    return lines


def _diff(where: str, want, got) -> list[str]:
    if isinstance(want, dict) and isinstance(got, dict):
        lines = []
        for key in sorted(set(want) | set(got), key=str):
            if key not in got:
                lines.append(f"{where}: {key}: dumped {_short(want[key])}, not restored")
            elif key not in want:
                lines.append(f"{where}: {key}: restored {_short(got[key])}, not dumped")
            else:
                lines += _diff(f"{where}: {key}", want[key], got[key])
        return lines
    if want != got:
        return [f"{where}: dumped {_short(want)}, restored {_short(got)}"]
    return []


def _short(value) -> str:
    text = json.dumps(value)
    return text if len(text) <= 200 else text[:197] + "..."


def write(images_dir: str, pids: list[int], root: int, volatile: dict) -> None:
    with open(os.path.join(images_dir, FINGERPRINT), "w") as f:
        json.dump(fingerprint_tree(pids, root, volatile), f)


def read(images_dir: str) -> dict:
    path = os.path.join(images_dir, FINGERPRINT)
    try:
        with open(path) as f:
            data = json.load(f)
    except FileNotFoundError:
        raise ValueError(f"{FINGERPRINT}: missing: the dump wrote no fingerprint, "
                         "--verify cannot check the restore") from None
    except (OSError, ValueError) as e:
        raise ValueError(f"{FINGERPRINT}: unreadable: {e}") from None
    if not isinstance(data, dict) or data.get("version") != VERSION \
            or not isinstance(data.get("tasks"), dict):
        raise ValueError(f"{FINGERPRINT}: version: not a fingerprint this engine reads")
    if not data["tasks"] or not all(p.isdigit() for p in data["tasks"]):
        raise ValueError(f"{FINGERPRINT}: tasks: not a list of pids")
    volatile = data.get("volatile", {})
    if not isinstance(volatile, dict) or not all(
            p.isdigit() and isinstance(ranges, list) and all(
                isinstance(r, list) and len(r) == 2 and all(isinstance(n, int) and n >= 0
                                                            for n in r) for r in ranges)
            for p, ranges in volatile.items()):
        raise ValueError(f"{FINGERPRINT}: volatile: not (address, length) pairs by pid")
    return data


def _status(pid: int) -> dict[str, str]:
    out = {}
    for line in _read(f"/proc/{pid}/status").splitlines():
        key, _, value = line.partition(":")
        out[key] = " ".join(value.split())
    return out


_RAISE = object()


def _read(path: str, default=_RAISE):
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        if default is _RAISE:
            raise
        return default


def _link(path: str) -> str | None:
    try:
        return os.readlink(path)
    except OSError:
        return None

"""fates: the ledger against what this kernel shows, and the refusals at dump.

A key this kernel shows (a /proc/PID/status key, a /proc/PID entry, an
fdinfo line of an fd kind the engine handles, a prctl option it knows) that
is in none of the ledger's three lists fails here: a newer kernel's new
state shows up as a failing test, not as silent loss (issue 15).
"""
import ctypes
import errno
import fcntl
import os
import select
import socket
from pathlib import Path

import pytest

from engine.registry import load_specs
from engine.testing import engine_fails, task_gone
from plugins.fates import ledger

ROOT = Path(__file__).resolve().parents[2]
FATES = {"restored", "refused", "dropped"}


def _status_keys(pid) -> set[str]:
    with open(f"/proc/{pid}/status") as f:
        return {line.partition(":")[0] for line in f}


def _fdinfo_keys(fd: int) -> set[str]:
    with open(f"/proc/self/fdinfo/{fd}") as f:
        return {line.partition(":")[0] for line in f if line.strip()}


# --- the ledger is whole -------------------------------------------------------

def test_every_entry_has_one_fate_and_names_who_or_why():
    plugins = set(load_specs()) | {"engine"}
    for table, key, fate in ledger.every_fate():
        assert fate.fate in FATES, (table, key)
        if fate.fate == "dropped":
            assert fate.what and not fate.by, f"{table} {key}: dropped needs a reason"
        else:
            assert fate.by in plugins, f"{table} {key}: no plugin {fate.by!r}"
        if fate.fate == "refused":
            assert fate.what, f"{table} {key}: a refusal names the state"


def test_every_state_the_plugin_refuses_has_a_check():
    """Each refusal the ledger gives this plugin is raised by its code."""
    source = (ROOT / "plugins/fates/__init__.py").read_text()
    missing = [what for what in sorted(ledger.refused_states())
               if any(f.by == "fates" and f.what == what for _, _, f in ledger.every_fate())
               and f'"{what}"' not in source]
    assert not missing, f"refused by fates in the ledger, never refused in code: {missing}"


def test_status_keys_of_this_kernel_have_a_fate(build_target, target_runner):
    """/proc/self/status and a real target's (a C program, frozen and
    dumped with --leave-running) against the ledger."""
    from engine.testing import engine_cli
    target = target_runner.start(build_target("counter"))
    engine_cli("dump", "-t", str(target.pid), "-D", str(target.workdir / "img"),
               "--leave-running")
    keys = _status_keys("self") | _status_keys(target.pid)
    assert not keys - set(ledger.STATUS), f"status keys in no list: {keys - set(ledger.STATUS)}"
    assert target.verdict() == "PASS"


def test_proc_entries_of_this_kernel_have_a_fate():
    entries = set(os.listdir("/proc/self"))
    assert not entries - set(ledger.PROC), f"/proc/PID entries in no list: {entries - set(ledger.PROC)}"
    namespaces = set(os.listdir("/proc/self/ns"))
    assert not namespaces - set(ledger.NAMESPACES), namespaces - set(ledger.NAMESPACES)


def _every_fd_kind(tmp_path):
    """kind -> fd, one of every kind the engine handles, made here."""
    from engine import libc
    keep, fds = [], {}
    f = open(tmp_path / "locked", "w+")
    fcntl.lockf(f, fcntl.LOCK_EX)            # a `lock:` line too
    keep.append(f)
    fds["regular file"] = f.fileno()
    r, w = os.pipe()
    fds["pipe"] = r
    a, b = socket.socketpair()
    keep += [a, b]
    fds["unix socket"] = a.fileno()
    listener = socket.create_server(("127.0.0.1", 0))
    conn = socket.create_connection(listener.getsockname())
    keep += [listener, conn]
    fds["tcp socket"] = conn.fileno()
    udp = socket.socket(type=socket.SOCK_DGRAM)
    keep.append(udp)
    fds["udp socket"] = udp.fileno()
    fds["eventfd"] = os.eventfd(7)
    ep = select.epoll()
    ep.register(r, select.EPOLLIN)
    keep.append(ep)
    fds["epoll"] = ep.fileno()
    mask = (ctypes.c_uint64 * 16)(1 << (10 - 1))
    fds["signalfd"] = libc.check(libc.handle.signalfd(-1, mask, 0), "signalfd")
    fds["timerfd"] = libc.check(libc.handle.timerfd_create(1, 0), "timerfd_create")
    return fds, keep, [w]


def test_fdinfo_keys_of_every_fd_kind_have_a_fate(tmp_path):
    fds, keep, extra = _every_fd_kind(tmp_path)
    try:
        assert set(fds) == set(ledger.FDINFO), "one fd of every kind the ledger lists"
        for kind, fd in fds.items():
            known = set(ledger.FDINFO_COMMON) | set(ledger.FDINFO[kind])
            keys = _fdinfo_keys(fd)
            assert not keys - known, f"{kind}: fdinfo keys in no list: {keys - known}"
        assert "lock" in _fdinfo_keys(fds["regular file"])
    finally:
        for kind in ("eventfd", "signalfd", "timerfd", "pipe"):
            os.close(fds[kind])
        for fd in extra:
            os.close(fd)
        for obj in keep:
            obj.close()


def _known_to_kernel(option: int) -> bool:
    """Whether this kernel knows prctl `option`: an unknown one gives EINVAL
    whatever its arguments. Asked in a child, which any option may change
    (PR_SET_SECCOMP may kill it: known too)."""
    from engine import libc
    pid = os.fork()
    if pid == 0:
        buf = ctypes.create_string_buffer(64)
        addr = ctypes.addressof(buf)
        known = 0
        for args in ((0, 0, 0, 0), (1, 0, 0, 0), (0, addr, 0, 0), (1, addr, 0, 0),
                     (2, addr, 0, 0)):
            if libc.prctl(option, *args) != -1 or ctypes.get_errno() != errno.EINVAL:
                known = 1
                break
        os._exit(known)
    _, status = os.waitpid(pid, 0)
    return not (os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0)


def test_prctl_options_of_this_kernel_have_a_fate():
    """Every option the kernel knows, up to 64 past the ledger's highest."""
    small = [n for n in ledger.PRCTL if n < 0x1000]
    probe = list(range(0, max(small) + 64)) + [n for n in ledger.PRCTL if n >= 0x1000]
    unknown = [n for n in probe if n not in ledger.PRCTL and _known_to_kernel(n)]
    assert not unknown, f"prctl options this kernel knows, in no list: {unknown}"


def test_readme_lists_what_does_not_come_back():
    readme = (ROOT / "README.md").read_text()
    assert ledger.readme_text() in readme, \
        "README's 'What does not come back' differs from plugins.fates.ledger.readme_text()"


# --- refused at dump, the target left running as it was -------------------------

def _refused(target, tmp_path) -> str:
    line = engine_fails("dump", "-t", str(target.pid), "-D", str(tmp_path / "img"))
    assert not task_gone(target.pid), "a refused dump must leave the target running"
    return line


def _set_nice(pid):
    os.setpriority(os.PRIO_PROCESS, pid, 7)


def _set_oom(pid):
    Path(f"/proc/{pid}/oom_score_adj").write_text("123")


def _set_affinity(pid):
    os.sched_setaffinity(pid, {0})


def _set_batch(pid):
    os.sched_setscheduler(pid, os.SCHED_BATCH, os.sched_param(0))


def _set_coredump_filter(pid):
    Path(f"/proc/{pid}/coredump_filter").write_text("0x7")


def _set_timerslack(pid):
    Path(f"/proc/{pid}/timerslack_ns").write_text("12345")


@pytest.mark.parametrize("change", [_set_nice, _set_oom, _set_affinity, _set_batch,
                                    _set_coredump_filter, _set_timerslack])
def test_task_attributes_once_refused_now_come_back(build_target, target_runner, dump_restore,
                                                    tmp_path, change):
    """Set from outside, as a launcher would: refused at dump until plugins
    sched, oom and mmflags restored them; --verify compares each."""
    if change is _set_affinity and len(os.sched_getaffinity(0)) < 2:
        pytest.skip("one CPU: no other affinity to give")
    target = target_runner.start(build_target("counter"))
    change(target.pid)
    assert dump_restore(target, tmp_path / "img") == "PASS"

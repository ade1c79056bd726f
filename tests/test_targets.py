"""Every target is a valid test: it passes when left alone, and each of its
checks can fail, shown by disturbing its state from outside (memory with
process_vm_writev, fds with pidfd_getfd, registers and sigmask with ptrace)
the way a faulty restore would. No engine is involved here."""
import ctypes
import fcntl
import os
import signal
import struct
import subprocess
import time
from contextlib import contextmanager

import pytest

from engine import libc
from engine.testing import (children, is_subreaper, kill_children,
                            list_targets, parse_header)

# Target args for the pass test; bigmem keeps its default 256 MiB there.
CASES = [pytest.param(s.name, v, (), id=f"{s.name}-{v}" if v else s.name)
         for s in list_targets() for v in (s.variants or [None])]
CASES += [pytest.param("sighandler", None, ("--pending",),
                       id="sighandler-pending")]


@pytest.mark.parametrize("name,variant,args", CASES)
def test_passes_untouched(build_target, target_runner, name, variant, args):
    t = target_runner.start(build_target(name, variant), *args)
    time.sleep(0.1)  # let its loop run: counters must have moved
    assert t.verdict() == "PASS", t.log()
    t.assert_gone()


def test_close_stdio(build_target, target_runner):
    t = target_runner.start(build_target("counter"), close_stdio=True)
    deadline = time.monotonic() + 5
    while os.listdir(f"/proc/{t.pid}/fd") and time.monotonic() < deadline:
        time.sleep(0.01)
    assert os.listdir(f"/proc/{t.pid}/fd") == []
    assert t.verdict() == "PASS"


# --- poking at a live target ---

PTRACE_GETFPREGS, PTRACE_SETFPREGS, PTRACE_DETACH = 14, 15, 17
PTRACE_SEIZE, PTRACE_INTERRUPT = 0x4206, 0x4207
PTRACE_SETSIGMASK = 0x420B
WALL = 0x40000000


class IoVec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


def _check(ret, what):
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return ret


def poke(pid, addr, data: bytes):
    buf = ctypes.create_string_buffer(data, len(data))
    local = IoVec(ctypes.cast(buf, ctypes.c_void_p), len(data))
    remote = IoVec(addr, len(data))
    n = _check(libc.process_vm_writev(pid, ctypes.byref(local), 1,
                                      ctypes.byref(remote), 1, 0),
               "process_vm_writev")
    assert n == len(data)


def peek_u64(pid, addr):
    buf = ctypes.create_string_buffer(8)
    local = IoVec(ctypes.cast(buf, ctypes.c_void_p), 8)
    remote = IoVec(addr, 8)
    _check(libc.process_vm_readv(pid, ctypes.byref(local), 1,
                                 ctypes.byref(remote), 1, 0),
           "process_vm_readv")
    return struct.unpack("<Q", buf.raw)[0]


def pidfd_getfd(pid, fd):
    pidfd = os.pidfd_open(pid)
    try:
        return _check(libc.syscall("pidfd_getfd", pidfd, fd, 0),
                      "pidfd_getfd")
    finally:
        os.close(pidfd)


def _ptrace(req, pid, addr=0, data=0):
    return _check(libc.ptrace(req, pid, addr, data), f"ptrace({req})")


@contextmanager
def ptrace_stopped(pid, in_syscall=False):
    """The target stopped under ptrace; with in_syscall, only while it
    sleeps in a syscall, so it cannot be halfway through a store we poke."""
    for _ in range(200):
        _ptrace(PTRACE_SEIZE, pid)
        _ptrace(PTRACE_INTERRUPT, pid)
        _, status = os.waitpid(pid, WALL)
        assert os.WIFSTOPPED(status), status
        nr = open(f"/proc/{pid}/syscall").read().split()[0]
        if not in_syscall or nr.isdigit():
            break
        _ptrace(PTRACE_DETACH, pid)
        time.sleep(0.001)
    else:
        pytest.fail("target never caught in a syscall")
    try:
        yield
    finally:
        _ptrace(PTRACE_DETACH, pid)


def assert_fails(t, *expected):
    verdict = t.verdict()
    assert verdict.startswith("FAIL"), verdict
    assert any(e in verdict for e in expected), verdict
    return verdict


# --- each check can fail ---

def test_counter_detects_lost_memory(build_target, target_runner):
    t = target_runner.start(build_target("counter"))
    with ptrace_stopped(t.pid, in_syscall=True):
        poke(t.pid, t.addr("mirror"), struct.pack("<Q", 0x1234))
    time.sleep(0.05)
    assert_fails(t, "mirror")


def test_counter_detects_other_pid(build_target, target_runner):
    t = target_runner.start(build_target("counter", "static-nopie"))
    poke(t.pid, t.addr("pid0"), struct.pack("<i", t.pid + 1))
    assert_fails(t, "getpid")


@pytest.mark.parametrize("where", ["buf", "hole", "heap", "stack"])
def test_bigmem_detects_corruption(build_target, target_runner, where):
    t = target_runner.start(build_target("bigmem"), "--mib", "16")
    offset = {"buf": 5 * 4096 + 128, "hole": 63 * 4096 + 8}.get(where, 100)
    base = t.addr("buf" if where == "hole" else where)
    # Flip the byte that is there: a fixed value could equal the pattern.
    old = peek_u64(t.pid, base + offset) & 0xFF
    poke(t.pid, base + offset, bytes([old ^ 0xFF]))
    assert_fails(t, {"buf": "buffer:", "hole": "buffer:"}.get(where,
                                                          where + ":"))


def test_files_detects_lost_append(build_target, target_runner):
    t = target_runner.start(build_target("files"))
    fd = pidfd_getfd(t.pid, t.addr("fd_app"))
    try:  # F_SETFL acts on the open file description we now share
        fcntl.fcntl(fd, fcntl.F_SETFL,
                    fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_APPEND)
    finally:
        os.close(fd)
    assert_fails(t, "append fd: F_GETFL")


def test_files_detects_moved_offset(build_target, target_runner):
    t = target_runner.start(build_target("files"))
    fd = pidfd_getfd(t.pid, t.addr("fd_data"))
    os.lseek(fd, 100, os.SEEK_SET)
    os.close(fd)
    assert_fails(t, "data fd offset 100")


def test_files_detects_other_content(build_target, target_runner):
    t = target_runner.start(build_target("files"))
    with open(t.workdir / "data.txt", "r+b") as f:
        f.seek(5000)
        f.write(b"\0\0")
    assert_fails(t, "byte at offset 5000")


def test_sighandler_detects_extra_signal(build_target, target_runner):
    t = target_runner.start(build_target("sighandler"))
    os.kill(t.pid, signal.SIGUSR1)
    assert_fails(t, "ran 1 times before raise")


def test_sighandler_detects_other_sigmask(build_target, target_runner):
    t = target_runner.start(build_target("sighandler"))
    mask = ctypes.c_uint64((1 << (signal.SIGUSR2 - 1))
                           | (1 << (signal.SIGQUIT - 1)))
    with ptrace_stopped(t.pid):
        _ptrace(PTRACE_SETSIGMASK, t.pid, 8, ctypes.addressof(mask))
    assert_fails(t, f"sigmask differs from {{SIGUSR2}} at signal "
                    f"{int(signal.SIGQUIT)}")


# user_fpregs_struct (FXSAVE layout): cwd at 0, mxcsr at 24, xmm0 at 160.
@pytest.mark.parametrize("field,offset,fmt,value,expected", [
    ("xmm3", 160 + 3 * 16, "<Q", None, "ymm3 changed"),
    ("xmm15", 160 + 15 * 16 + 8, "<Q", None, "ymm15 changed"),
    ("mxcsr", 24, "<I", 0x1F80, "MXCSR changed"),
    ("cw", 0, "<H", 0x037F, "x87 control word changed"),
])
def test_fpu_detects_register_change(build_target, target_runner, field,
                                     offset, fmt, value, expected):
    t = target_runner.start(build_target("fpu"))
    iters = t.addr("iters")
    while not peek_u64(t.pid, iters):  # wait until in the register loop
        time.sleep(0.001)
    regs = ctypes.create_string_buffer(512)
    with ptrace_stopped(t.pid):
        _ptrace(PTRACE_GETFPREGS, t.pid, 0, ctypes.addressof(regs))
        old = struct.unpack_from(fmt, regs, offset)[0]
        new = old ^ 1 if value is None else value
        assert new != old
        struct.pack_into(fmt, regs, offset, new)
        _ptrace(PTRACE_SETFPREGS, t.pid, 0, ctypes.addressof(regs))
    assert_fails(t, expected)


def test_readpipe_detects_early_return(build_target, target_runner):
    t = target_runner.start(build_target("readpipe"))
    with open(f"/proc/{t.pid}/fd/{t.addr('wfd')}", "wb") as w:
        w.write(b"Z")
    time.sleep(0.05)  # let it return from read before SIGTERM comes
    assert_fails(t, "read returned 'Z' before SIGTERM")


def test_readpipe_detects_lost_queue(build_target, target_runner):
    t = target_runner.start(build_target("readpipe", "static-nopie"))
    fd = os.open(f"/proc/{t.pid}/fd/{t.addr('queue_rfd')}",
                 os.O_RDONLY | os.O_NONBLOCK)
    assert os.read(fd, 100) == b"queued pipe data\n"
    os.close(fd)
    assert_fails(t, "queued pipe holds")


def test_python_counter_detects_tampering(build_target, target_runner):
    t = target_runner.start(build_target("counter.py"))
    end = time.monotonic() + 0.1
    while time.monotonic() < end:
        (t.workdir / "counter.txt").write_text("garbage\n")
        time.sleep(0.001)
    assert_fails(t, "counter file holds")


# --- the harness itself ---

def test_dying_target_fails_with_its_stderr(build_target, target_runner):
    with pytest.raises(pytest.fail.Exception, match="not a number: lots"):
        target_runner.start(build_target("bigmem"), "--mib", "lots")


def test_header_parsing(tmp_path):
    src = tmp_path / "t.c"
    src.write_text("/* engine-target: variants=static-pie ; flags=-O2 -pthread"
                   " ;\n * needs=root ;\n * what: x; y: z */\nint main;\n")
    spec = parse_header(src)
    assert spec.variants == ("static-pie",)
    assert spec.flags == ("-O2", "-pthread")
    assert spec.needs == ("root",)
    assert spec.what == "x; y: z"
    src.write_text("/* engine-target: colour=blue */\n")
    with pytest.raises(ValueError, match="unknown header keys"):
        parse_header(src)


def test_we_are_a_subreaper_and_reap_orphans():
    assert is_subreaper()
    before = children()
    # The shell exits at once; its sleep is orphaned and must come to us.
    out = subprocess.run(["sh", "-c", "sleep 100 >/dev/null 2>&1 & echo $!"],
                         capture_output=True, text=True, check=True).stdout
    orphan = int(out)
    assert orphan in children()
    assert kill_children(keep=before) == [orphan]
    with pytest.raises(ProcessLookupError):
        os.kill(orphan, 0)


def test_engine_cli_failure_shows_output(engine_cli):
    with pytest.raises(pytest.fail.Exception) as info:
        engine_cli("no-such-command")
    assert "exit status" in str(info.value)
    assert "--- stderr" in str(info.value)
    assert os.environ["ENGINE_DISABLE_PLUGIN_AUTOLOAD"] == "1"


def test_target_gone_after_kill(build_target, target_runner):
    t = target_runner.start(build_target("counter", "dynamic-nopie"))
    os.kill(t.pid, signal.SIGKILL)
    t.reap()
    t.assert_gone()
    with pytest.raises(pytest.fail.Exception, match="does not exist"):
        t.verdict()

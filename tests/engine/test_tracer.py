"""engine.tracer on real processes: dump to plain data, kill, restore with
the same pid into a forked child of this test, and the target runs on.

The restore is the tracer nodes' path without the graph: the tracer's
memory restore, the threads plugin's threads and signal state, the
registers as core sets them (credentials, limits and timers are the
engine's own here, as the dumped target's were: no plugin of theirs runs).

The target (tracer_targets/state.c) checks its own state after SIGTERM and
writes PASS or FAIL. This process is a child subreaper and reaps every
task it starts; leftovers are killed on failure.
"""
from __future__ import annotations

import difflib
import errno
import mmap
import os
import signal
import statistics
import subprocess
import time
from pathlib import Path

import pytest

from engine import libc
from engine.tracer import NotSupportedError, TracerError
from engine.tracer import model as m
from engine.tracer.clone import clone_with_pid
from engine.tracer.dump import collect_task, dump_pages, freeze
from engine.tracer.restore import (attach_stopped, release, restore_memory, set_registers,
                                   wait_for_tracer)
from engine.tracer.xstate import COMPONENTS, from_xstate, to_xstate
from plugins.threads import restore_threads

TARGETS = Path(__file__).parent / "tracer_targets"
VARIANTS = {"dynamic-pie": [], "dynamic-nopie": ["-no-pie"], "static": ["-static"],
            "static-pie": ["-static-pie"]}


# --- harness -------------------------------------------------------------------

@pytest.fixture(scope="module", autouse=True)
def _subreaper():
    assert libc.prctl(libc.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0


@pytest.fixture(scope="module")
def binaries(tmp_path_factory):
    out = tmp_path_factory.mktemp("tracer_targets")
    built = {}
    for name, flags in VARIANTS.items():
        exe = out / f"state-{name}"
        subprocess.run(["gcc", "-O1", "-Wall", *flags, "-o", str(exe),
                        str(TARGETS / "state.c")], check=True)
        built[name] = exe
    return built


class MemSink:
    """What dump_pages feeds, and the `pages` restore_memory reads: runs of
    (vaddr, length, offset) into one mmap (as PagemapReader offers)."""

    def __init__(self):
        self._chunks: list[tuple[int, bytes]] = []
        self._runs: list[tuple[int, int, int]] = []
        self.buffer = None

    def add(self, vaddr: int, data) -> None:
        self._chunks.append((vaddr, bytes(data)))

    def seal(self) -> "MemSink":
        total = sum(len(d) for _, d in self._chunks)
        self.buffer = mmap.mmap(-1, max(total, mmap.PAGESIZE))
        off = 0
        for vaddr, data in self._chunks:
            self.buffer[off:off + len(data)] = data
            self._runs.append((vaddr, len(data), off))
            off += len(data)
        self._chunks = []
        return self

    def runs(self):
        return iter(self._runs)

    def read(self, vaddr: int, size: int) -> bytes:
        for start, length, off in self._runs:
            if start <= vaddr and vaddr + size <= start + length:
                return self.buffer[off + vaddr - start:off + vaddr - start + size]
        raise KeyError(hex(vaddr))


class Target:
    def __init__(self, exe: Path, tmp: Path, *args: str, pass_fds=()):
        self.ready, self.result = tmp / "ready", tmp / "result"
        self.mapped = tmp / "mapped"
        if not self.mapped.exists():
            self.mapped.write_bytes(bytes(range(256)) * 64)          # 4 pages
        self.proc = subprocess.Popen([str(exe), str(self.ready), str(self.result),
                                      str(self.mapped), *args], pass_fds=pass_fds,
                                     stdin=subprocess.DEVNULL)
        self.pid = self.proc.pid
        _wait_file(self.ready, self.proc)

    def verdict(self, timeout: float = 10.0) -> str:
        os.kill(self.pid, signal.SIGTERM)
        text = _wait_file(self.result, None, timeout)
        _reap(self.pid, timeout)
        return text.strip()


def _wait_file(path: Path, proc, timeout: float = 10.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            return path.read_text()
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"target exited with {proc.returncode} before {path.name}")
        time.sleep(0.005)
    raise AssertionError(f"no {path.name} after {timeout} s ({_where(path)})")


def _where(path: Path) -> str:
    """What the target is doing, for the failure message."""
    for d in Path("/proc").iterdir():
        try:
            if d.name.isdigit() and str(path.parent) in (d / "cmdline").read_text():
                return f"pid {d.name}: {(d / 'stat').read_text().split()[2]}, " \
                       f"syscall {(d / 'syscall').read_text().strip()} " + " ".join(
                           x for x in (d / "status").read_text().splitlines()
                           if x.startswith(("Sig", "Shd", "TracerPid")))
        except OSError:
            pass
    return "no process left"


def _reap(pid: int, timeout: float = 10.0) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got, status = os.waitpid(pid, os.WNOHANG)
        if got == pid:
            return status
        time.sleep(0.002)
    os.kill(pid, signal.SIGKILL)
    return os.waitpid(pid, 0)[1]


def dump(target: Target) -> tuple[m.TaskState, MemSink]:
    """freeze + collect + pages, then kill and reap the target.

    A target caught between two syscalls of its wait loop (rare, more so on
    a loaded machine) is let go and frozen again: the tests expect it in
    the syscall it waits in."""
    for _ in range(50):
        t = freeze(target.pid)
        if t.saved.orig_ax != 0xFFFFFFFFFFFFFFFF:
            break
        t.detach()
    state = collect_task(t)
    sink = MemSink()
    dump_pages(t, state.mm.vmas, sink)
    t.kill()                                    # still traced: nothing runs after the dump
    target.proc.wait()
    return state, sink.seal()


def restore(state: m.TaskState, pages, prepare=None, file_fds=None):
    """Fork a child with the dumped pid; it waits for the tracer; restore it."""
    pid = clone_with_pid(state.pid)
    if pid == 0:                                # the task, a copy of this process
        try:
            null = os.open("/dev/null", os.O_RDWR)
            for fd in (0, 1, 2):
                os.dup2(null, fd)
            if prepare is not None:
                prepare()
            wait_for_tracer()
        finally:
            os._exit(99)
    assert pid == state.pid
    try:
        t = attach_stopped(pid)
        try:
            restore_memory(t, state.mm, pages, None, file_fds)
            restore_threads(t, state.sigactions, state.threads, state.signals_s)
            set_registers(t, state.threads)
        except BaseException:
            t.kill()
            raise
    except BaseException:
        os.kill(pid, signal.SIGKILL)
        _reap(pid)
        raise
    t.release_signal = signal.SIGSTOP if state.stopped else 0
    return t


def _maps(pid: int) -> list[tuple]:
    """/proc/PID/maps with neighbours the kernel may merge once restored
    (same file, perms and contiguous offsets, e.g. libc's RELRO) merged."""
    out: list[list] = []
    with open(f"/proc/{pid}/maps") as f:
        for line in f:
            p = line.split(None, 5)
            lo, hi = (int(x, 16) for x in p[0].split("-"))
            name = p[5].strip() if len(p) > 5 else ""
            off = int(p[2], 16)
            if out and out[-1][1] == lo and out[-1][2:4] == [p[1], name] \
                    and name and not name.startswith("[") and out[-1][4] + hi - lo == off + hi - lo \
                    and out[-1][4] == off:
                out[-1][1] = hi
                out[-1][4] = off + hi - lo
                continue
            out.append([lo, hi, p[1], name, off + hi - lo])
    return [(f"{lo:x}-{hi:x}", perms, name) for lo, hi, perms, name, _ in out]


def _merged(vmas) -> list[m.Vma]:
    out: list[m.Vma] = []
    for v in vmas:
        if v.status & m.VMA_ANON_SHARED:
            v = m.attrs.evolve(v, shmid=0)      # a new shmem object: a new inode
        p = out[-1] if out else None
        if p and p.end == v.start and p.path and p.path == v.path and \
                (p.prot, p.flags, p.status) == (v.prot, v.flags, v.status) and \
                p.pgoff + p.end - p.start == v.pgoff:
            out[-1] = m.attrs.evolve(p, end=v.end)
        else:
            out.append(v)
    return out


# --- tests --------------------------------------------------------------------

@pytest.mark.serial     # under load its target may be seized before nanosleep
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_dump_kill_restore_runs_on(binaries, tmp_path, variant):
    target = Target(binaries[variant], tmp_path)
    maps = _maps(target.pid)
    state, pages = dump(target)
    assert state.pid == target.pid and state.comm.startswith("state-")
    assert len(state.sigactions) == 64 and len(state.threads) == 1
    th = state.threads[0]
    assert th.regs.orig_ax == 35                   # stopped in nanosleep
    assert th.ss_size == 64 * 1024 and th.blk_sigset & (1 << (signal.SIGUSR2 - 1))
    assert th.fpregs.mxcsr & 0xFFC0 == 0x7F80 and len(th.fpregs.ymmh_space) == 64
    assert any(v.status & m.VMA_AREA_HEAP for v in state.mm.vmas)
    assert any(v.status & m.VMA_AREA_STACK and v.flags & 0x100 for v in state.mm.vmas)
    assert any(v.status & m.VMA_ANON_SHARED for v in state.mm.vmas)
    assert any(v.madv == 1 << 16 and v.prot == 1 for v in state.mm.vmas)   # MADV_DONTDUMP
    assert any(v.madv == 1 << 18 for v in state.mm.vmas)                   # MADV_WIPEONFORK

    # The mapped file comes from an fd the task opened itself (fd 200),
    # which restore_memory closes once mapped.
    mapped = str(target.mapped)
    assert any(v.path == mapped for v in state.mm.vmas)
    tracee = restore(state, pages, prepare=lambda: os.dup2(os.open(mapped, os.O_RDONLY), 200),
                     file_fds={mapped: 200})
    assert not os.path.exists(f"/proc/{state.pid}/fd/200")
    now_maps = _maps(state.pid)
    assert now_maps == maps, "\n".join(difflib.unified_diff(
        [str(x) for x in maps], [str(x) for x in now_maps], lineterm=""))
    release([tracee])
    assert tracee.detached

    again = freeze(state.pid)                   # what the kernel now says about it
    try:
        now = collect_task(again)
    finally:
        again.detach()
    for name in ("mm_start_code", "mm_end_code", "mm_start_data", "mm_end_data",
                 "mm_start_stack", "mm_start_brk", "mm_brk", "mm_arg_start", "mm_arg_end",
                 "mm_env_start", "mm_env_end", "auxv", "exe"):
        assert getattr(now.mm, name) == getattr(state.mm, name), name
    assert _merged(now.mm.vmas) == _merged(state.mm.vmas)
    assert now.sigactions == state.sigactions
    for name in ("blk_sigset", "clear_tid_addr", "futex_rla", "futex_rla_len",
                 "rseq_abi_pointer", "rseq_abi_size", "rseq_signature", "ss_sp", "ss_size",
                 "ss_flags", "comm"):
        assert getattr(now.threads[0], name) == getattr(th, name), name
    assert target.verdict() == "PASS"


def test_blocking_read_on_a_pipe_restarts(binaries, tmp_path):
    r, w = os.pipe()
    try:
        target = Target(binaries["dynamic-pie"], tmp_path, "pipe", str(r), pass_fds=(r,))
        time.sleep(0.05)                        # let it block in read()
        state, pages = dump(target)
        regs = state.threads[0].regs
        # -ERESTARTSYS turned into "run read again" (DESIGN §7)
        assert regs.orig_ax == 0 and regs.ax == 0
        release([restore(state, pages)])        # the child inherits r as fd r
        os.write(w, b"hello")
        assert target.verdict() == "PASS"
    finally:
        os.close(r)
        os.close(w)


def test_failed_restore_names_the_step_and_kills_the_task(binaries, tmp_path):
    target = Target(binaries["dynamic-nopie"], tmp_path)
    state, pages = dump(target)
    gone = tmp_path / "gone"
    bad = next(v for v in state.mm.vmas if v.path == str(target.mapped))
    bad.path = str(gone)
    with pytest.raises(TracerError) as info:
        restore(state, pages)
    assert str(info.value) == f"openat {gone} of task {state.pid}: No such file or directory"
    assert not os.path.exists(f"/proc/{state.pid}")       # killed and reaped


class FailingSink:
    def __init__(self, after: int):
        self.left = after

    def add(self, vaddr, data):
        self.left -= 1
        if self.left < 0:
            raise OSError(28, "No space left on device")


def test_failed_dump_leaves_the_target_running(binaries, tmp_path):
    target = Target(binaries["dynamic-pie"], tmp_path)
    t = freeze(target.pid)
    state = collect_task(t)
    with pytest.raises(OSError, match="No space"):
        dump_pages(t, state.mm.vmas, FailingSink(after=3))
    status = Path(f"/proc/{target.pid}/status").read_text()
    assert "TracerPid:\t0" in status
    time.sleep(0.05)                            # it runs on: ymm and counters still checked
    assert target.verdict() == "PASS"


def test_taken_pid_is_refused(binaries):
    with pytest.raises(TracerError) as info:
        clone_with_pid(os.getpid())
    assert info.value.errno == errno.EEXIST and "\n" not in str(info.value)


def test_tracer_errors_read_as_sentences():
    assert str(TracerError(errno.ESRCH, 42, "PTRACE_SEIZE")) == \
        "PTRACE_SEIZE of task 42: No such process"
    assert str(TracerError(0, 42, "exited (signal 9) while traced")) == \
        "task 42: exited (signal 9) while traced"
    refused = NotSupportedError(42, "restore without a vdso")
    assert str(refused) == "task 42: restore without a vdso is not supported"
    assert isinstance(refused, TracerError) and refused.errno == errno.EOPNOTSUPP


def test_xstate_split_and_rebuilt(binaries, tmp_path):
    target = Target(binaries["dynamic-pie"], tmp_path)
    t = freeze(target.pid)
    try:
        raw = t.get_xstate()
    finally:
        t.detach()
    fp = from_xstate(raw)
    assert fp.xstate_bv & 0b110 == 0b110        # SSE + AVX in use
    assert to_xstate(fp) == raw
    # An image without the components the task never used (as CRIU writes
    # on a CPU without them) gives the same buffer: their xstate_bv bit is
    # clear, so the kernel inits them either way.
    unused = [name for comp, (name, _, _) in COMPONENTS.items()
              if not fp.xstate_bv & (1 << comp)]
    criu = m.FpRegs(**{k: v for k, v in m.attrs.asdict(fp).items() if k not in unused})
    assert to_xstate(criu) == raw
    assert target.verdict() == "PASS"


def test_256mib_restored_over_itself_three_times(binaries, tmp_path, capsys):
    target = Target(binaries["static"], tmp_path, "big", "256")
    state, pages = dump(target)
    assert sum(n for _, n, _ in pages.runs()) >= 256 << 20
    times = []
    for i in range(3):
        start = time.perf_counter()
        tracee = restore(state, pages)
        times.append(time.perf_counter() - start)
        if i < 2:
            os.kill(state.pid, signal.SIGKILL)
            _reap(state.pid)
    release([tracee])
    with capsys.disabled():
        print(f"\nrestore of 256 MiB: median {statistics.median(times) * 1000:.0f} ms "
              f"({', '.join(f'{x * 1000:.0f}' for x in times)})")
    assert target.verdict() == "PASS"


# --- bounds: no task can hang the tracer (issue 20) ---------------------------------

_BOUND_SCRIPT = """
import os, subprocess, sys, time
from engine.tracer import TracerError
from engine.tracer.task import Tracee
p = subprocess.Popen(["sleep", "100"])
t = Tracee.seize(p.pid)
start = time.monotonic()
try:
    if sys.argv[1] == "faults":        # every instruction at ip faults (unmapped)
        t.run_code(0x10000)
    else:                              # `jmp .`: runs on, never stops
        at = t.saved.ip & ~0xFFF
        t.poke_text(at, b"\\xeb\\xfe")
        t.run_code(at)
    print("returned")
except TracerError as e:
    print(f"{time.monotonic() - start:.1f} {e}")
finally:
    p.kill()
"""


@pytest.mark.parametrize("how, want", [
    ("faults", "never reached its int3 in 1000 stops (signals [11, 11, 11])"),
    ("loops", "did not stop within 1 s"),
])
def test_a_task_that_never_stops_fails_in_bounded_time(how, want):
    """Code that faults on every instruction (a 32-bit cs: the tracer spun
    forever) or never stops: the tracer step fails in bounded time, naming
    the task."""
    import sys
    env = dict(os.environ, ENGINE_STOP_TIMEOUT="1")
    out = subprocess.run([sys.executable, "-c", _BOUND_SCRIPT, how], capture_output=True,
                         text=True, timeout=30, env=env)
    assert out.returncode == 0, out.stderr
    seconds, line = out.stdout.split(" ", 1)
    assert want in line and "task " in line, out.stdout
    assert float(seconds) < 5, out.stdout

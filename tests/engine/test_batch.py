"""The hand-assembled code of engine/tracer/batch.py.

Two checks: the bytes a Batch writes are what GNU as makes of the
instructions its docstring promises, and run in a real traced task they
make the syscalls (the task's fd table shows them), chain results, return
-errno unchecked and stop at the first checked failure.
"""
from __future__ import annotations

import errno
import os
import shutil
import subprocess

import pytest

from engine.tracer.batch import At, Batch, Result
from engine.tracer.binding import TracerError
from engine.tracer.scratch import PAGE, SCRATCH_PAGES, read_maps, scratch_batch, setup_scratch
from engine.tracer.task import Tracee

AT_FDCWD = -100
DATA = 0x20000

# What a Batch with DATA as its data area must emit for the calls queued in
# _queue: data offsets are 8-byte aligned, each call's result slot follows
# its byte arguments.
EXPECTED = f"""
    movabs $39, %rax
    syscall
    movabs %rax, {DATA:#x}
    cmp $-4095, %rax
    jb 1f
    int3
1:  movabs $-100, %rdi
    movabs ${DATA + 8:#x}, %rsi
    movabs $1, %rdx
    movabs $0, %r10
    movabs $257, %rax
    syscall
    movabs %rax, {DATA + 24:#x}
    cmp $-4095, %rax
    jb 2f
    int3
2:  movabs {DATA + 24:#x}, %rax
    mov %rax, %rdi
    movabs ${DATA + 32:#x}, %rsi
    movabs $5, %rdx
    movabs $1, %rax
    syscall
    movabs %rax, {DATA + 40:#x}
    cmp $-4095, %rax
    jb 3f
    int3
3:  movabs $-100, %rdi
    movabs ${DATA + 48:#x}, %rsi
    movabs $0, %rdx
    movabs $0, %r10
    movabs $257, %rax
    syscall
    movabs %rax, {DATA + 64:#x}
    movabs {DATA:#x}, %rax
    mov %rax, %rdi
    movabs $0, %rsi
    movabs $62, %rax
    syscall
    movabs %rax, {DATA + 72:#x}
    cmp $-4095, %rax
    jb 4f
    int3
4:  movabs {DATA + 24:#x}, %rax
    mov %rax, %rdi
    movabs ${DATA + 80:#x}, %rsi
    movabs ${DATA + 82:#x}, %rdx
    movabs $3, %rax
    syscall
    movabs %rax, {DATA + 88:#x}
"""


def _queue(batch: Batch) -> None:
    batch.call("getpid")                                         # 0
    batch.call("openat", AT_FDCWD, b"/dev/null\0", os.O_WRONLY, 0)  # 1
    batch.call("write", Result(1), b"hello", 5)                  # 2
    batch.call("openat", AT_FDCWD, b"/nonexistent\0", 0, 0, check=False)   # 3: -ENOENT
    batch.call("kill", Result(0), 0)                             # 4: signal 0 to itself
    # close ignores the arguments after the fd: here to see At point into b"abc"
    batch.call("close", Result(1), b"abc", At(2), check=False)   # 5


def _assemble(source: str, tmp_path) -> bytes:
    (tmp_path / "x.s").write_text(".text\n" + source)
    subprocess.run(["as", "--64", "-o", tmp_path / "x.o", tmp_path / "x.s"], check=True)
    subprocess.run(["objcopy", "-O", "binary", "-j", ".text", tmp_path / "x.o",
                    tmp_path / "x.bin"], check=True)
    return (tmp_path / "x.bin").read_bytes()


@pytest.mark.skipif(not shutil.which("as") or not shutil.which("objcopy"),
                    reason="needs GNU as and objcopy")
def test_the_code_is_what_as_assembles(tmp_path):
    batch = Batch(None, code_at=0x10000, code_size=4096, data_at=DATA, data_size=4096)
    _queue(batch)
    # as hex, so that a difference shows where it is
    assert bytes(batch._code).hex(" ") == _assemble(EXPECTED, tmp_path).hex(" ")


@pytest.fixture
def tracee():
    """A sleeping child, seized, with a scratch page for batches."""
    proc = subprocess.Popen(["sleep", "60"])
    t = Tracee.seize(proc.pid)
    try:
        scratch = setup_scratch(t, [], read_maps(proc.pid))
        yield t, scratch
        t.checked("munmap", scratch, SCRATCH_PAGES * PAGE)
    finally:
        t.detach()
        proc.kill()
        proc.wait()


def _fd_target(pid: int, fd: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/fd/{fd}")
    except FileNotFoundError:
        return None


def test_a_batch_runs_its_syscalls_in_the_task(tracee):
    t, scratch = tracee
    batch = scratch_batch(t, scratch)
    batch.call("getpid")
    batch.call("openat", AT_FDCWD, b"/dev/null\0", os.O_WRONLY, 0)
    batch.call("write", Result(1), b"hello", 5)
    batch.call("openat", AT_FDCWD, b"/nonexistent\0", 0, 0, check=False)
    batch.call("kill", Result(0), 0)
    pid, fd, written, missing, killed = batch.run()
    assert pid == t.pid
    assert _fd_target(t.pid, fd) == "/dev/null"       # the child's fd table, not ours
    assert (written, missing, killed) == (5, -errno.ENOENT, 0)
    # A result of an earlier run is passed as a plain value.
    batch.call("close", Result(1))
    assert batch.run()[5] == 0
    assert _fd_target(t.pid, fd) is None


def test_a_checked_failure_stops_the_batch_and_names_the_call(tracee):
    t, scratch = tracee
    batch = scratch_batch(t, scratch)
    batch.call("getpid")
    batch.call("close", 9999, what="fd 9999")
    batch.call("openat", AT_FDCWD, b"/dev/null\0", 0, 0)
    with pytest.raises(TracerError) as info:
        batch.run()
    assert info.value.errno == errno.EBADF
    assert str(info.value) == f"close fd 9999 of task {t.pid}: {os.strerror(errno.EBADF)}"
    assert batch.results == [t.pid]                   # the openat after it never ran
    assert not any(_fd_target(t.pid, fd) == "/dev/null" for fd in range(3, 64))

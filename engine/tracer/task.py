"""A stopped task under ptrace: registers and remote syscalls.

A remote syscall sets the registers to `syscall` at an address holding that
instruction (one already in the task's vdso on dump, a scratch page on
restore), single-steps it and reads rax. orig_ax is -1 on every injection so
the kernel's syscall-restart logic never rewrites what we set (DESIGN §7).
"""
from __future__ import annotations

import ctypes
import os
import signal

from engine.tracer import binding as b

SYSCALL_INSN = b"\x0f\x05"


class Tracee:
    def __init__(self, pid: int):
        self.pid = pid
        self.saved: b.UserRegs | None = None     # registers at freeze time
        self.syscall_at: int | None = None       # address of a `syscall` insn
        self.pending_signals: list[int] = []     # delivered while we stepped
        self.others: list["Tracee"] = []         # the other threads (leader only)
        self.was_stopped = False                 # group-stopped before we seized it
        self.release_signal = 0                  # sent on the final detach (SIGSTOP)
        self.pdeath_signal = 0                   # restore: the leader's dumped one, set at release
        self.sigmask: int | None = None          # restore: the dumped mask, set at release
        self.detached = False
        self.scratch: int | None = None          # restore: the scratch page, until unmapped
        self.vdso_syscall: int | None = None     # restore: a `syscall` in the moved vdso

    # --- attaching ---------------------------------------------------------

    @classmethod
    def seize(cls, pid: int, interrupted: bool = False) -> "Tracee":
        """Seize and stop it; `interrupted`: the caller seized and
        interrupted it already (the cgroup freezer held it meanwhile)."""
        if not interrupted:
            b.ptrace(b.PTRACE_SEIZE, pid, 0, 0, "PTRACE_SEIZE")
        t = cls(pid)
        try:
            if not interrupted:
                b.ptrace(b.PTRACE_INTERRUPT, pid, 0, 0, "PTRACE_INTERRUPT")
            t._wait_trap()
            t.saved = b.get_regs(pid)
        except BaseException:
            t.detach()
            raise
        return t

    def _wait_trap(self, interrupt: bool = False) -> None:
        """Wait for the PTRACE_INTERRUPT stop; keep signals that arrive
        meanwhile (they are suppressed now and re-sent on detach)."""
        for _ in range(b.MAX_STOPS):
            status = b.wait_stop(self.pid)
            if status >> 16 == b.PTRACE_EVENT_STOP:
                return
            self.pending_signals.append(os.WSTOPSIG(status))
            b.ptrace(b.PTRACE_CONT, self.pid, 0, 0, "PTRACE_CONT")
        raise b.TracerError(0, self.pid, f"no interrupt stop in {b.MAX_STOPS} stops")

    def _step(self, expected_ip: int) -> None:
        """Single-step until rip is `expected_ip` (the insn ran); a task
        that never gets there (its code faults on every step) is an error."""
        for _ in range(b.MAX_STOPS):
            b.ptrace(b.PTRACE_SINGLESTEP, self.pid, 0, 0, "PTRACE_SINGLESTEP")
            status = b.wait_stop(self.pid)
            sig, event = os.WSTOPSIG(status), status >> 16
            if sig == signal.SIGTRAP and event == 0:
                return
            if event not in (0, b.PTRACE_EVENT_STOP):
                continue        # e.g. PTRACE_EVENT_CLONE inside the syscall: go on
            if event == 0:
                self.pending_signals.append(sig)
            if self.regs().ip == expected_ip:
                return
        raise b.TracerError(0, self.pid, f"never reached {expected_ip:#x} in "
                                         f"{b.MAX_STOPS} steps (signals {self.pending_signals[:3]})")

    # --- registers and memory ------------------------------------------------

    def regs(self) -> b.UserRegs:
        return b.get_regs(self.pid)

    def set_regs(self, regs: b.UserRegs) -> None:
        b.set_regs(self.pid, regs)

    def get_xstate(self) -> bytes:
        """The NT_X86_XSTATE buffer (PTRACE_GETREGSET)."""
        return b.get_xstate(self.pid)

    def set_xstate(self, data: bytes) -> None:
        b.set_xstate(self.pid, data)

    def read(self, addr: int, size: int) -> bytes:
        return b.peek(self.pid, addr, size)

    def write(self, addr: int, data: bytes) -> None:
        b.poke(self.pid, addr, data)

    def poke_text(self, addr: int, data: bytes) -> None:
        """Write into memory the task cannot write itself (PTRACE_POKEDATA)."""
        data = data + b"\0" * (-len(data) % 8)
        for i in range(0, len(data), 8):
            word = int.from_bytes(data[i:i + 8], "little")
            b.ptrace(b.PTRACE_POKEDATA, self.pid, addr + i, ctypes.c_uint64(word).value,
                     "PTRACE_POKEDATA")

    # --- remote syscalls -----------------------------------------------------

    def find_syscall_in_vdso(self) -> int:
        """A `syscall` instruction of the task's: in its vdso, or, for a
        program that unmapped or moved its own, in any executable mapping
        (CRIU's parasite brings its own; the bytes 0f 05 run as `syscall`
        wherever they start)."""
        for start, end, name in _special_maps(self.pid):
            if name == "[vdso]":
                at = self.read(start, end - start).find(SYSCALL_INSN)
                if at >= 0:
                    return start + at
        at = _syscall_in_code(self.pid)
        if at is None:
            raise b.NotSupportedError(self.pid, "a task without a syscall instruction in "
                                                "its vdso or any executable mapping")
        return at

    def syscall(self, nr: int | str, *args: int) -> int:
        """Run syscall `nr` (a number or a binding.SYS name) in the task;
        return rax as a signed value (-errno on failure, never raises for it)."""
        if self.syscall_at is None:
            self.syscall_at = self.find_syscall_in_vdso()
        regs = b.UserRegs.from_buffer_copy(self.saved or self.regs())
        regs.ax = b.SYS[nr] if isinstance(nr, str) else nr
        regs.orig_ax = ctypes.c_uint64(-1).value
        regs.ip = self.syscall_at
        for reg, value in zip(("di", "si", "dx", "r10", "r8", "r9"), args):
            setattr(regs, reg, ctypes.c_uint64(value).value)
        self.set_regs(regs)
        self._step(self.syscall_at + len(SYSCALL_INSN))
        return ctypes.c_int64(self.regs().ax).value

    def run_code(self, ip: int) -> int:
        """Run the task from `ip` (the saved registers otherwise) until it
        hits an int3; return rip there. Signals that arrive meanwhile are
        kept for detach, events (a clone) passed over."""
        regs = b.UserRegs.from_buffer_copy(self.saved or self.regs())
        regs.orig_ax = ctypes.c_uint64(-1).value
        regs.ip = ip
        self.set_regs(regs)
        for _ in range(b.MAX_STOPS):
            b.ptrace(b.PTRACE_CONT, self.pid, 0, 0, "PTRACE_CONT")
            status = b.wait_stop(self.pid)
            sig, event = os.WSTOPSIG(status), status >> 16
            if sig == signal.SIGTRAP and event == 0:
                return self.regs().ip
            if event == 0:
                self.pending_signals.append(sig)
        raise b.TracerError(0, self.pid, f"code at {ip:#x} never reached its int3 in "
                                         f"{b.MAX_STOPS} stops (signals {self.pending_signals[:3]})")

    def batch(self, code_at: int, code_size: int, data_at: int, data_size: int):
        """A Batch of syscalls run from code written at `code_at`."""
        from engine.tracer.batch import Batch
        return Batch(self, code_at, code_size, data_at, data_size)

    def checked(self, name: int | str, *args: int, what: str = "") -> int:
        """syscall(), raising TracerError(errno, pid, "NAME what") on failure."""
        r = self.syscall(name, *args)
        if -4096 < r < 0:
            raise b.TracerError(-r, self.pid, f"{name}{' ' + what if what else ''}")
        return r

    # --- letting go ------------------------------------------------------------

    def resume(self) -> None:
        """Let the task run on under ptrace (PTRACE_CONT) with its saved
        registers put back; it stays attached (detach() lets go)."""
        if self.saved is not None:
            self.set_regs(self.saved)
        b.ptrace(b.PTRACE_CONT, self.pid, 0, 0, "PTRACE_CONT")

    def kill(self) -> None:
        """SIGKILL the task while we hold it (nothing of it runs again); the
        tracee needs no detach after. The caller reaps it if it is its child."""
        try:
            os.kill(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.detached, self.others, self.pending_signals = True, [], []

    def detach(self, sig: int = 0) -> None:
        """Put the saved registers back and let go of every thread; signals
        that arrived while we held the task are sent again. Idempotent."""
        if self.detached:
            return
        self.detached = True
        for other in self.others:
            try:
                other.detach(sig)
            except b.TracerError:
                pass
        self.others = []
        try:
            if self.saved is not None:
                self.set_regs(self.saved)
            b.ptrace(b.PTRACE_DETACH, self.pid, 0, sig, "PTRACE_DETACH")
        finally:
            for s in self.pending_signals:
                try:
                    os.kill(self.pid, s)
                except ProcessLookupError:
                    pass
            self.pending_signals = []


def _special_maps(pid: int):
    with open(f"/proc/{pid}/maps") as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 6 and parts[5].startswith("["):
                lo, hi = (int(x, 16) for x in parts[0].split("-"))
                yield lo, hi, parts[5]


def _syscall_in_code(pid: int) -> int | None:
    """The first `syscall` in an executable, not writable mapping, read
    through /proc/PID/mem (an execute-only mapping too)."""
    with open(f"/proc/{pid}/maps") as maps, open(f"/proc/{pid}/mem", "rb", buffering=0) as mem:
        for line in maps:
            parts = line.split()
            # not the engine's own scratch page (rwx): it goes before the end
            if "x" not in parts[1] or "w" in parts[1] or parts[-1] == "[vsyscall]":
                continue
            lo, hi = (int(x, 16) for x in parts[0].split("-"))
            try:
                at = os.pread(mem.fileno(), hi - lo, lo).find(SYSCALL_INSN)
            except OSError:
                continue          # not backed (a file truncated under it)
            if at >= 0:
                return lo + at
    return None

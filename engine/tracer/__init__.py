"""Everything that touches a process through ptrace, process_vm_* or clone3.

Dump: `freeze(pid) -> Tracee`, `collect_task(tracee) -> TaskState`,
`dump_pages(tracee, vmas, sink)`. Restore: `clone_with_pid`,
`wait_for_tracer` (in the task), `attach_stopped`, `restore_memory`,
`restore_threads`, `release`. Errors are `TracerError`, one line.
Loaded lazily: importing this package imports nothing heavy.
"""
from engine.tracer.binding import TracerError

__all__ = ["TracerError", "freeze", "collect_task", "dump_pages", "restore_memory",
           "restore_threads"]


def __getattr__(name):
    if name in ("freeze", "collect_task", "dump_pages", "zombie_status"):
        from engine.tracer import dump
        return getattr(dump, name)
    if name in ("restore_memory", "restore_threads", "attach_stopped", "release"):
        from engine.tracer import restore
        return getattr(restore, name)
    raise AttributeError(name)

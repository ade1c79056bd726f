"""Everything that touches a process through ptrace, process_vm_* or clone3.

Dump: `freeze(pid) -> Tracee`, `collect_task(tracee) -> TaskState`,
`dump_pages(tracee, vmas, sink)`. Restore: `clone_with_pid`,
`wait_for_tracer` (in the task), then `attach_stopped`, `restore_memory`,
the plugins' batches (`task_threads`, `task_batch`; `clone_threads`),
`set_registers`, `release` (engine/tracer/restore.py says how).
Errors are `TracerError(errno, pid, op)`, one line ("OP of task PID:
strerror"); what the tracer cannot do is a `NotSupportedError(pid, what)`
("task PID: WHAT is not supported"). Data is plain attrs
classes (engine.tracer.model) under CRIU's names; no images here.
Loaded lazily: importing this package imports nothing heavy.
"""
from engine.tracer.binding import NotSupportedError, TracerError

__all__ = ["TracerError", "NotSupportedError", "freeze", "collect_task", "dump_pages",
           "zombie_status", "clone_with_pid", "wait_for_tracer", "restore_memory",
           "attach_stopped", "task_threads", "task_batch", "clone_threads", "set_registers",
           "release"]


def __getattr__(name):
    if name in ("freeze", "collect_task", "dump_pages", "zombie_status"):
        from engine.tracer import dump
        return getattr(dump, name)
    if name == "clone_with_pid":
        from engine.tracer.clone import clone_with_pid
        return clone_with_pid
    if name in ("restore_memory", "attach_stopped", "task_threads", "task_batch",
                "clone_threads", "set_registers", "release", "wait_for_tracer"):
        from engine.tracer import restore
        return getattr(restore, name)
    raise AttributeError(name)

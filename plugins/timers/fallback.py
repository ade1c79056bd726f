"""timers' fallback, registered instead of it by ``--disable timers``.

Timers are not dropped: a set whose tasks hold an armed interval timer or
any POSIX timer is refused before anything starts, naming the image and
the resource; a set without timers restores as it would with the plugin.
"""
from __future__ import annotations

from engine import hookimpl
from engine.images import ImageError
from plugins.timers import task_timers


@hookimpl
def engine_restore_collect(ctx, graph):
    for task in ctx.provided("tasks").alive:
        image = f"core-{task.pid}.img"
        held = task_timers(ctx.read_one("core", id=task.pid), image, task.threads or [task.pid])
        if any(map(any, held.itimers)) or held.posix:
            raise ImageError(image, "tc.timers: needs timers, provided by plugin timers, "
                                    "which is disabled")

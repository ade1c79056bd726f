"""stamp: a third-party plugin, installed through the engine.plugins entry point.

Dump: stamp.img, an image kind of its own (one pstree_entry per task it
saw). Restore: one node per task,
run inside the task, appending "task PID CWD" to the file given with
--stamp-file (so a test can see the hook ran in the restored task's own
context) and logging a warning (which must reach the engine's stderr, not
the task's restored one); "finish" or "abort: ERROR" when the restore ends.
With --stamp-hang its nodes never end.
"""
import logging
import os

from engine import hookimpl
from engine.graph import Node


@hookimpl
def engine_register_images(registry):
    from engine.images.kinds import ImageKind
    registry.register(ImageKind("stamp", "stamp.img", 0x57A3F001, "engine.images.proto.tree_pb2",
                                "pstree_entry", magic_name="STAMP"))


@hookimpl
def engine_dump_finish(ctx):
    from engine.images.proto import tree_pb2
    ctx.images.write("stamp", [tree_pb2.pstree_entry(pid=pid, ppid=0, pgid=0, sid=0)
                               for pid in ctx.tasks])


@hookimpl
def engine_addoption(parser):
    parser.add_argument("--stamp-file", help="where the stamp plugin writes")
    parser.add_argument("--stamp-hang", action="store_true",
                        help="its nodes never end (for the engine's bound on them)")


@hookimpl
def engine_restore_collect(ctx, graph):
    for task in ctx.provided("tasks").alive:
        graph.add(Node(key=f"stamp:{task.pid}", plugin="stamp", pid=task.pid,
                       label=f"stamp {task.pid}"))


@hookimpl
def engine_restore_node(ctx, node):
    if ctx.options.stamp_hang:
        import time
        time.sleep(3600)
    _write(ctx, f"task {os.getpid()} {os.getcwd()}")
    logging.getLogger("engine.plugins.stamp").warning("stamped task %d", os.getpid())
    return True


@hookimpl
def engine_restore_finish(ctx):
    _write(ctx, "finish")


@hookimpl
def engine_restore_abort(ctx, error):
    _write(ctx, f"abort: {error}")


def _write(ctx, line):
    if ctx.options.stamp_file:
        with open(ctx.options.stamp_file, "a") as f:
            f.write(line + "\n")

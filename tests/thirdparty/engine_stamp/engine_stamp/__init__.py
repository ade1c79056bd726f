"""stamp: a third-party plugin, installed through the engine.plugins entry point.

Dump: nothing but a note that it saw each task. Restore: one node per task,
run inside the task, appending "task PID CWD" to the file given with
--stamp-file (so a test can see the hook ran in the restored task's own
context); "finish" or "abort: ERROR" when the restore ends.
"""
import os

from engine import hookimpl
from engine.graph import Node


@hookimpl
def engine_addoption(parser):
    parser.add_argument("--stamp-file", help="where the stamp plugin writes")


@hookimpl
def engine_restore_collect(ctx, graph):
    for task in ctx.pstree:
        graph.add(Node(key=f"stamp:{task.pid}", plugin="stamp", pid=task.pid,
                       label=f"stamp {task.pid}"))


@hookimpl
def engine_restore_node(ctx, node):
    if node.plugin != "stamp":
        return None
    _write(ctx, f"task {os.getpid()} {os.getcwd()}")
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

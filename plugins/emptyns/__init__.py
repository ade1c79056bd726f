"""emptyns: a fresh network namespace for the restored tree (`engine restore
--empty-ns net`, CRIU's --empty-ns, RPC empty_ns with CLONE_NEWNET as runc
sets it).

The tasks that were in the dumping engine's own network namespace (no
netns-ID.img names theirs) are restored into a new, empty one instead of
the restoring engine's: the first of them (parents first) unshares it, the
others join it, before any socket of theirs is made. Empty as the kernel
makes it (loopback down), for the caller to set up, as CRIU leaves it (runc
does so at its setup-namespaces notify). Tasks in a network namespace of
their own get it back as dumped (plugins/netns): it is a new one already.
No image of its own.
"""
from __future__ import annotations

import logging
import os

from engine import hookimpl

log = logging.getLogger("engine.plugins.emptyns")

KINDS = ("net",)


@hookimpl
def engine_addoption(parser):
    parser.add_argument("--empty-ns", action="append", default=[], choices=KINDS,
                        help="restore: the tasks in the dumping engine's namespace of this "
                             "kind get a fresh, empty one (net)")


@hookimpl
def engine_restore_collect(ctx, graph):
    from engine.graph import Node
    if "net" not in (getattr(ctx.options, "empty_ns", None) or []):
        return
    maker = None
    for e in ctx.provided("tasks").alive:
        ns_id = ctx.ids(e.pid).net_ns_id
        if ns_id and _has_image(ctx, ns_id):
            continue                     # its own, restored by netns
        born = ("task", e.pid)
        if maker is None:
            maker = e.pid
            graph.add(Node(key="emptyns:make", plugin="emptyns", pid=e.pid, data=None,
                           after=[born], label=f"task {e.pid} makes a fresh network namespace"))
        else:
            graph.add(Node(key=f"emptyns:join:{e.pid}", plugin="emptyns", pid=e.pid,
                           data=maker, after=[born, "emptyns:make"],
                           label=f"task {e.pid} joins the fresh network namespace"))


@hookimpl
def engine_restore_node(ctx, node):
    from engine import ns
    if node.data is None:
        ns.unshare(ns.CLONE_NEWNET)
        return True
    fd = os.open(f"/proc/{node.data}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        ns.setns(fd, "net")
    finally:
        os.close(fd)
    return True


def _has_image(ctx, ns_id: int) -> bool:
    try:
        return ctx.images.exists("netns", id=ns_id)
    except KeyError:
        return False

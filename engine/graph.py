"""The restore graph: nodes from plugins, edges from hooks.toml and from nodes.

Three kinds of edges: resource-level ones (a plugin's ``after`` in hooks.toml:
every node of that plugin comes after every node of the plugins providing the
named resources), task-level ones (its ``after_in_task``: the same, but only
the providers' nodes in the node's own task) and node-level ones
(``Node.after``: a pipe end after the task that opens it). The order is
graphlib's, with nodes inserted in hooks.toml order and then in the order
plugins added them, so it is stable. A cycle is
reported with its path (mkosi's habit); a resource that no enabled plugin
provides is reported before anything starts.
"""
from __future__ import annotations

import graphlib
from typing import Any

import attrs

WHERE = ("engine", "task", "tracer")
ALL = "\0all:"          # edges(): stands for every node of the plugin named after it


class GraphError(Exception):
    """The graph cannot run: one line, naming the node or the cycle."""


@attrs.define(eq=False)
class Node:
    key: str                       # unique, e.g. "files:fd:30001:3"
    plugin: str                    # the plugin whose engine_restore_node runs it
    where: str | None = None       # None: the plugin's runs_in from hooks.toml
    pid: int | None = None         # the task it belongs to (task/tracer nodes)
    data: Any = None               # plugin-private payload
    after: list[str] = attrs.field(factory=list)   # keys of nodes to run first
    needs: list[str] = attrs.field(factory=list)   # resources it cannot do without
    label: str = ""                # for `engine plan`
    # Names of state a tracer node shares with other tasks' tracer nodes
    # (a shared mapping the first maps): all run in one tracer process.
    tracer_shares: list[str] = attrs.field(factory=list)
    # Its task replies right after it, so the nodes of other tasks it
    # unblocks start at once, not after the task's whole batch.
    yields: bool = False

    def __str__(self) -> str:
        return self.label or self.key


@attrs.define
class Graph:
    registry: Any
    nodes: dict[str, Node] = attrs.field(factory=dict)

    def add(self, node: Node) -> Node:
        if node.key in self.nodes:
            raise GraphError(f"node {node.key} added twice")
        spec = self.registry.specs.get(node.plugin)
        if spec is None:
            raise GraphError(f"node {node.key}: unknown plugin {node.plugin}")
        if node.where is None:
            node.where = spec.runs_in
        if node.where not in WHERE:
            raise GraphError(f"node {node.key}: where={node.where!r} is not one of {WHERE}")
        if node.where != "engine" and node.pid is None:
            raise GraphError(f"node {node.key}: runs in {node.where} but names no task")
        self.nodes[node.key] = node
        return node

    def by_plugin(self, plugin: str) -> list[Node]:
        return [n for n in self.nodes.values() if n.plugin == plugin]

    def check_needs(self) -> None:
        """Every resource a node needs has an enabled provider."""
        reg = self.registry
        for node in self.nodes.values():
            for resource in node.needs:
                provider = reg.provider_of(resource)
                if provider is None:
                    raise GraphError(f"{node}: needs {resource}, which no plugin provides")
                if not reg.is_enabled(provider.name) and provider.fallback is None:
                    raise GraphError(f"{node}: needs {resource}, provided by plugin "
                                     f"{provider.name}, which is disabled")

    def predecessors(self) -> dict[str, list[str]]:
        """Every node's keys it comes after: edges() with each ALL stand-in
        expanded into the nodes it stands for."""
        edges = self.edges()
        return {key: [k for b in before for k in (edges[b] if b.startswith(ALL) else (b,))]
                for key, before in edges.items() if not key.startswith(ALL)}

    def _ordered(self) -> list[Node]:
        rank = {name: i for i, name in enumerate(self.registry.enabled)}
        return sorted(self.nodes.values(), key=lambda n: rank.get(n.plugin, len(rank)))

    def edges(self) -> dict[str, list[str]]:
        """What each node comes after.

        A resource-level edge (`after`) is set through one stand-in key per
        plugin (ALL + name, done once all its nodes are): 50 fd tables after
        100 pstree nodes are 150 edges, not 5000. An `after_in_task` edge
        names the provider's nodes in the node's own task (and its engine
        nodes). A tracer node also comes after every node of its task and
        every node of another task that comes after one of them: that node
        may take a file from the task, which closes what it does not keep
        when it stops for the tracer. Indexed once: looked up per node,
        these made the graph O(nodes^2) (~12 ms of a 50-task restore)."""
        reg = self.registry
        providers: dict[str, list[str]] = {}
        for name in reg.enabled:
            for resource in reg.specs[name].provides:
                providers.setdefault(resource, []).append(name)
        keys_of: dict[str, list[str]] = {}
        in_task: dict[tuple[str, int | None], list[str]] = {}   # engine nodes: pid None
        task_keys: dict[int, list[str]] = {}
        for n in self.nodes.values():
            keys_of.setdefault(n.plugin, []).append(n.key)
            in_task.setdefault((n.plugin, None if n.where == "engine" else n.pid),
                               []).append(n.key)
            if n.where == "task":
                task_keys.setdefault(n.pid, []).append(n.key)
        deps: dict[str, list[str]] = {}
        plugin_before: dict[str, tuple[list[str], list[str]]] = {}
        for node in self._ordered():
            if node.plugin not in plugin_before:
                spec = reg.specs[node.plugin]
                alls = []
                for resource in spec.after:
                    for provider in providers.get(resource, ()):
                        if provider != node.plugin and provider in keys_of:
                            alls.append(ALL + provider)
                            deps[ALL + provider] = keys_of[provider]
                own = [p for resource in spec.after_in_task
                       for p in providers.get(resource, ()) if p != node.plugin]
                plugin_before[node.plugin] = (alls, own)
            alls, own = plugin_before[node.plugin]
            before = list(alls)
            for provider in own:
                before += in_task.get((provider, None), ())
                if node.where != "engine":
                    before += in_task.get((provider, node.pid), ())
            for key in node.after:
                if key not in self.nodes:
                    raise GraphError(f"{node}: comes after {key}, which is not in the graph")
                before.append(key)
            deps[node.key] = before
        takers: dict[int, set[str]] = {}     # pid -> nodes of other tasks after its own
        for node in self.nodes.values():
            if node.where == "task":
                for key in node.after:
                    other = self.nodes[key]
                    if other.where == "task" and other.pid != node.pid:
                        takers.setdefault(other.pid, set()).add(node.key)
        for node in self.nodes.values():
            if node.where == "tracer":
                deps[node.key] += task_keys.get(node.pid, [])
                deps[node.key] += sorted(takers.get(node.pid, ()))
        return deps

    def sorter(self) -> graphlib.TopologicalSorter:
        """A prepared sorter over edges(): its ALL keys are not nodes."""
        ts = graphlib.TopologicalSorter()
        for key, before in self.edges().items():
            ts.add(key, *before)
        try:
            ts.prepare()
        except graphlib.CycleError as e:
            raise GraphError("restore graph has a cycle: " + " => ".join(
                f"every node of {k[len(ALL):]}" if k.startswith(ALL) else str(self.nodes[k])
                for k in e.args[1])) from None
        return ts

    def order(self) -> list[Node]:
        """A full serial order (what `engine plan` prints and restore follows)."""
        self.check_needs()
        ts = self.sorter()
        out: list[Node] = []
        rank = self._rank()
        while ts.is_active():
            ready, found = [], ts.get_ready()
            while found:                 # an ALL key is done as soon as it is ready
                ready += [k for k in found if k in self.nodes]
                alls = [k for k in found if k not in self.nodes]
                ts.done(*alls)
                found = ts.get_ready() if alls else ()
            for key in sorted(ready, key=rank):
                out.append(self.nodes[key])
                ts.done(key)
        return out

    def _rank(self):
        index = {key: i for i, key in enumerate(n.key for n in self._ordered())}
        return lambda key: index[key]

    def tree(self) -> list[str]:
        """An indented tree, `tox depends` style: each node under what it waits for."""
        deps = self.predecessors()
        lines = []
        for node in self.order():
            lines.append(f"{node}  [{node.plugin}, {node.where}]")
            direct = [k for k in deps[node.key] if k in node.after]
            for key in direct:
                lines.append(f"    after {self.nodes[key]}")
        return lines

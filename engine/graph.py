"""The restore graph: nodes from plugins, edges from hooks.toml and from nodes.

Three kinds of edges: resource-level ones (a plugin's ``after`` in hooks.toml:
every node of that plugin comes after every node of the plugins providing the
named resources), task-level ones (its ``after_in_task``: the same, but only
the providers' nodes in the node's own task; ``"*"`` names every plugin that
runs in tasks or the engine) and node-level ones. A node names what it comes
after as (resource, id) pairs, such as ``("task", 42)`` or ``("file", 7)``,
which the engine resolves to the nodes that declare them in their
``provides``, whatever plugin made them; a pair no node provides is already
there (a file the task opens itself, a pid namespace nobody makes), so adds
no edge. A node names another node by key only within its own plugin: no
plugin reads or edits another's nodes. The order is graphlib's, with nodes
inserted in hooks.toml order and then in the order plugins added them, so it
is stable. A cycle is reported with its path (mkosi's habit); a resource that
no enabled plugin provides is reported before anything starts. `engine plan
--tree` prints every edge with where it came from (``edges(origins)``).
"""
from __future__ import annotations

import graphlib
from typing import Any

import attrs

WHERE = ("engine", "task", "tracer")
ALL = "\0all:"          # edges(): stands for every node of the plugin named after it
EVERY = "*"             # in after_in_task: every plugin running in tasks or the engine


class GraphError(Exception):
    """The graph cannot run: one line, naming the node or the cycle."""


@attrs.define(eq=False)
class Node:
    key: str                       # unique, e.g. "files:fd:30001:3"
    plugin: str                    # the plugin whose engine_restore_node runs it
    where: str | None = None       # None: the plugin's runs_in from hooks.toml
    pid: int | None = None         # the task it belongs to (task/tracer nodes)
    data: Any = None               # plugin-private payload
    # What it comes after: (resource, id) pairs that other nodes provide,
    # or keys of nodes of its own plugin.
    after: list = attrs.field(factory=list)
    # (resource, id) pairs it makes: ("task", 42) for the fork of task 42.
    provides: list[tuple] = attrs.field(factory=list)
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
    # The edges() the last order() followed: the restore runs by them too
    # (taking them anew cost ~1 ms of a 50-task restore). Not to be changed.
    ordered_edges: dict[str, list[str]] | None = attrs.field(default=None, init=False,
                                                             repr=False)

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

    def edges(self, origins: dict | None = None) -> dict[str, list[str]]:
        """What each node comes after.

        A resource-level edge (`after`) is set through one stand-in key per
        plugin (ALL + name, done once all its nodes are): 50 fd tables after
        100 pstree nodes are 150 edges, not 5000. An `after_in_task` edge
        names the provider's nodes in the node's own task (and its engine
        nodes). A tracer node also comes after every node of its task and
        every node of another task that comes after one of them: that node
        may take a file from the task, which closes what it does not keep
        when it stops for the tracer. Indexed once: looked up per node,
        these made the graph O(nodes^2) (~12 ms of a 50-task restore).
        With `origins`, it is filled with key -> [(key before, why)]."""
        reg = self.registry
        providers: dict[str, list[str]] = {}
        for name in reg.enabled:
            for resource in reg.specs[name].provides:
                providers.setdefault(resource, []).append(name)
        keys_of: dict[str, list[str]] = {}
        in_task: dict[tuple[str, int | None], list[str]] = {}   # engine nodes: pid None
        task_keys: dict[int, list[str]] = {}
        made_by: dict[tuple, list[str]] = {}     # (resource, id) -> keys providing it
        for n in self.nodes.values():
            keys_of.setdefault(n.plugin, []).append(n.key)
            in_task.setdefault((n.plugin, None if n.where == "engine" else n.pid),
                               []).append(n.key)
            if n.where == "task":
                task_keys.setdefault(n.pid, []).append(n.key)
            for pair in n.provides:
                made_by.setdefault(tuple(pair), []).append(n.key)
        deps: dict[str, list[str]] = {}
        plugin_before: dict[str, tuple[list, list]] = {}
        for node in self._ordered():
            if node.plugin not in plugin_before:
                plugin_before[node.plugin] = self._plugin_edges(node.plugin, providers,
                                                                keys_of, deps)
            alls, own = plugin_before[node.plugin]
            before = [k for k, _ in alls]
            why = list(alls) if origins is not None else None
            for provider, reason in own:
                found = list(in_task.get((provider, None), ()))
                if node.where != "engine":
                    found += in_task.get((provider, node.pid), ())
                before += found
                if why is not None:
                    why += [(k, reason) for k in found]
            for item in node.after:
                found = self._resolve(node, item, made_by)
                before += found
                if why is not None:
                    why += [(k, f"node: after {item!r}") for k in found]
            deps[node.key] = before
            if why is not None:
                origins[node.key] = why
        takers: dict[int, set[str]] = {}     # pid -> nodes of other tasks after its own
        for node in self.nodes.values():
            if node.where == "task":
                for key in deps[node.key]:
                    other = self.nodes.get(key)
                    if other is not None and other.where == "task" and other.pid != node.pid:
                        takers.setdefault(other.pid, set()).add(node.key)
        for node in self.nodes.values():
            if node.where == "tracer":
                extra = task_keys.get(node.pid, []) + sorted(takers.get(node.pid, ()))
                deps[node.key] += extra
                if origins is not None:
                    origins[node.key] += [
                        (k, "tracer: after its task's own nodes" if k in task_keys.get(
                            node.pid, ()) else "tracer: after a node taking from its task")
                        for k in extra]
        return deps

    def _plugin_edges(self, plugin: str, providers, keys_of, deps):
        """A plugin's hooks.toml edges: [(ALL key, why)] for `after` and
        [(provider, why)] for `after_in_task`."""
        spec = self.registry.specs[plugin]
        alls = []
        for resource in spec.after:
            for provider in providers.get(resource, ()):
                if provider != plugin and provider in keys_of:
                    alls.append((ALL + provider, f"hooks.toml {plugin}.after {resource!r}"))
                    deps[ALL + provider] = keys_of[provider]
        own = []
        for resource in spec.after_in_task:
            why = f"hooks.toml {plugin}.after_in_task {resource!r}"
            if resource == EVERY:
                own += [(p, why) for p in self.registry.enabled if p != plugin
                        and self.registry.specs[p].runs_in != "tracer"]
            else:
                own += [(p, why) for p in providers.get(resource, ()) if p != plugin]
        return alls, own

    def _resolve(self, node: Node, item, made_by) -> list[str]:
        """The keys a Node.after item stands for."""
        if isinstance(item, tuple):
            return [k for k in made_by.get(item, ()) if k != node.key]
        other = self.nodes.get(item)
        if other is None:
            raise GraphError(f"{node}: comes after {item}, which is not in the graph")
        if other.plugin != node.plugin:
            raise GraphError(f"{node}: names node {item} of plugin {other.plugin}: a node "
                             "names another plugin's work by a (resource, id) pair")
        return [item]

    def sorter(self, edges: dict[str, list[str]] | None = None) -> graphlib.TopologicalSorter:
        """A prepared sorter over `edges` (edges() by default): its ALL keys
        are not nodes."""
        ts = graphlib.TopologicalSorter()
        for key, before in (self.edges() if edges is None else edges).items():
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
        self.ordered_edges = self.edges()
        ts = self.sorter(self.ordered_edges)
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
        """An indented tree, `tox depends` style: each node under what it
        waits for, each edge with where it came from (hooks.toml, the node's
        own declaration, or the tracer's rule). A plugin-wide edge is shown
        once, as `every node of PLUGIN`."""
        origins: dict = {}
        self.edges(origins)
        lines = []
        for node in self.order():
            lines.append(f"{node}  [{node.plugin}, {node.where}]")
            for key, why in origins[node.key]:
                what = (f"every node of {key[len(ALL):]}" if key.startswith(ALL)
                        else str(self.nodes[key]))
                lines.append(f"    after {what}  ({why})")
        return lines

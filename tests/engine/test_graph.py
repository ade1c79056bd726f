"""The restore graph: order from hooks.toml, node edges, cycles, providers."""
import pytest

from engine import registry
from engine.graph import Graph, GraphError, Node

TOML = """
[plugins.pstree]
module = "plugins.pstree"
provides = ["tasks"]
runs_in = "task"
[plugins.files]
module = "plugins.files"
provides = ["fds", "file:REG"]
after = ["tasks"]
runs_in = "task"
[plugins.fs]
module = "plugins.fs"
provides = ["fs"]
after = ["fds"]
runs_in = "task"
"""


def _hooks_toml(tmp_path, text):
    path = tmp_path / "hooks.toml"
    path.write_text(text)
    return path


@pytest.fixture
def reg(tmp_path):
    path = _hooks_toml(tmp_path, TOML)
    return lambda *disable: registry.build(disable=disable, hooks_toml=path)


def test_resource_order_comes_from_hooks_toml_not_insertion(reg):
    g = Graph(reg())
    g.add(Node("fs:1", "fs", pid=1))
    g.add(Node("files:1", "files", pid=1))
    g.add(Node("pstree:1", "pstree", pid=1))
    assert [n.key for n in g.order()] == ["pstree:1", "files:1", "fs:1"]


def test_node_edges_and_stable_order(reg):
    g = Graph(reg())
    for pid in (3, 2, 1):
        g.add(Node(f"pstree:{pid}", "pstree", pid=pid,
                   after=[] if pid == 1 else [f"pstree:{pid - 1}"]))
    assert [n.key for n in g.order()] == ["pstree:1", "pstree:2", "pstree:3"]


def test_cycle_is_named(reg):
    g = Graph(reg())
    g.add(Node("pstree:a", "pstree", pid=1, after=["pstree:b"], label="a"))
    g.add(Node("pstree:b", "pstree", pid=1, after=["pstree:a"], label="b"))
    with pytest.raises(GraphError, match=r"cycle: (a => b => a|b => a => b)"):
        g.order()


def test_need_of_a_disabled_plugin_names_it(reg):
    g = Graph(reg("files"))
    g.add(Node("fs:1", "fs", pid=1, needs=["file:REG"], label="cwd of 1"))
    with pytest.raises(GraphError, match="cwd of 1: needs file:REG, provided by plugin "
                                         "files, which is disabled"):
        g.order()


def test_need_nobody_provides(reg):
    g = Graph(reg())
    g.add(Node("fs:1", "fs", pid=1, needs=["file:TUNF"]))
    with pytest.raises(GraphError, match="needs file:TUNF, which no plugin provides"):
        g.order()


def test_task_node_without_task_is_refused(reg):
    with pytest.raises(GraphError, match="names no task"):
        Graph(reg()).add(Node("fs:x", "fs"))


def test_after_unknown_node_is_refused(reg):
    g = Graph(reg())
    g.add(Node("fs:1", "fs", pid=1, after=["nope"]))
    with pytest.raises(GraphError, match="nope, which is not in the graph"):
        g.order()


IN_TASK_TOML = """
[plugins.pstree]
module = "plugins.pstree"
provides = ["tasks"]
runs_in = "task"
[plugins.files]
module = "plugins.files"
provides = ["fds"]
after_in_task = ["tasks"]
runs_in = "task"
[plugins.mem]
module = "plugins.mem"
provides = ["memory"]
after_in_task = ["fds"]
runs_in = "tracer"
[plugins.core]
module = "plugins.core"
provides = ["registers"]
after = ["tasks"]
after_in_task = ["memory"]
runs_in = "tracer"
"""


@pytest.fixture
def in_task_graph(tmp_path):
    g = Graph(registry.build(hooks_toml=_hooks_toml(tmp_path, IN_TASK_TOML)))
    g.add(Node("pstree:fork:1", "pstree", where="engine"))
    for pid in (1, 2):
        g.add(Node(f"pstree:ids:{pid}", "pstree", pid=pid, after=["pstree:fork:1"]))
        g.add(Node(f"files:{pid}", "files", pid=pid))
        g.add(Node(f"mem:{pid}", "mem", pid=pid))
        g.add(Node(f"core:{pid}", "core", pid=pid))
    return g


def test_after_in_task_waits_only_for_its_own_task(in_task_graph):
    deps = in_task_graph.predecessors()
    assert sorted(deps["files:2"]) == ["pstree:fork:1", "pstree:ids:2"]
    assert "files:1" not in deps["mem:2"] and "files:2" in deps["mem:2"]
    # `after` stays global: no registers before every task's pstree nodes
    assert {"pstree:ids:1", "pstree:ids:2", "mem:2"} <= set(deps["core:2"])


def test_tracer_node_waits_for_nodes_that_take_from_its_task(in_task_graph):
    in_task_graph.nodes["files:2"].after.append("files:1")   # takes a file of task 1
    deps = in_task_graph.predecessors()
    assert "files:2" in deps["mem:1"]
    assert "files:1" not in deps["mem:2"]
    order = [n.key for n in in_task_graph.order()]
    assert order.index("files:2") < order.index("mem:1")


def test_after_in_task_is_a_list_of_strings(tmp_path):
    path = _hooks_toml(tmp_path, IN_TASK_TOML.replace('after_in_task = ["tasks"]',
                                                      'after_in_task = "tasks"'))
    with pytest.raises(registry.PluginError, match="plugin files: after_in_task must be a list"):
        registry.build(hooks_toml=path)


def test_pairs_resolve_to_the_nodes_providing_them(reg):
    """A node names another plugin's work by (resource, id); the pair goes to
    whichever nodes provide it, and a pair nobody provides adds no edge."""
    g = Graph(reg())
    g.add(Node("pstree:fork:7", "pstree", pid=1, provides=[("task", 7)]))
    g.add(Node("fs:7", "fs", pid=7, after=[("task", 7), ("file", 99)]))
    origins = {}
    deps = g.edges(origins)
    assert "pstree:fork:7" in deps["fs:7"]
    assert ("pstree:fork:7", "node: after ('task', 7)") in origins["fs:7"]
    assert [n.key for n in g.order()] == ["pstree:fork:7", "fs:7"]


def test_a_node_cannot_name_another_plugins_node(reg):
    g = Graph(reg())
    g.add(Node("pstree:fork:7", "pstree", pid=1))
    g.add(Node("fs:7", "fs", pid=7, after=["pstree:fork:7"]))
    with pytest.raises(GraphError, match="names node pstree:fork:7 of plugin pstree: a node "
                                         r"names another plugin's work by a \(resource, id\)"):
        g.order()


EVERY_TOML = IN_TASK_TOML + """
[plugins.userns]
module = "plugins.userns"
provides = ["userns"]
after_in_task = ["*"]
runs_in = "task"
"""


def test_every_plugin_in_the_task_comes_first_with_a_star(tmp_path):
    """after_in_task = ["*"]: after every other plugin's nodes in its own task
    (and the engine's), never after a tracer node (those come after it)."""
    g = Graph(registry.build(hooks_toml=_hooks_toml(tmp_path, EVERY_TOML)))
    g.add(Node("pstree:fork:1", "pstree", where="engine"))
    for pid in (1, 2):
        g.add(Node(f"pstree:ids:{pid}", "pstree", pid=pid, after=["pstree:fork:1"]))
        g.add(Node(f"files:{pid}", "files", pid=pid))
        g.add(Node(f"mem:{pid}", "mem", pid=pid))
        g.add(Node(f"userns:join:{pid}", "userns", pid=pid))
    origins = {}
    deps = g.edges(origins)
    assert sorted(deps["userns:join:2"]) == ["files:2", "pstree:fork:1", "pstree:ids:2"]
    assert ("files:2", "hooks.toml userns.after_in_task '*'") in origins["userns:join:2"]
    assert "userns:join:2" in g.predecessors()["mem:2"]

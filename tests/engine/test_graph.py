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


@pytest.fixture
def reg(tmp_path):
    path = tmp_path / "hooks.toml"
    path.write_text(TOML)
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

"""The plugin registry: hooks.toml schema, --plugins, --disable, essentials."""
import os

import pytest

from engine import registry
from engine.registry import PluginError


def _toml(tmp_path, text):
    path = tmp_path / "hooks.toml"
    path.write_text(text)
    return path


def test_default_set_is_every_hooks_toml_plugin():
    reg = registry.build()
    assert reg.enabled == list(registry.load_specs())
    assert {"pstree", "mem", "core", "files", "fs"} <= set(reg.enabled)


def test_disable_blocks_the_plugin():
    reg = registry.build(disable=("fs",))
    assert not reg.is_enabled("fs")
    assert reg.pm.is_blocked("fs")
    assert all(getattr(impl, "plugin_name", None) != "fs"
               for impl in reg.hook.engine_restore_node.get_hookimpls())


@pytest.mark.parametrize("name", ["pstree", "mem", "core"])
def test_essential_plugins_refuse_to_be_disabled(name):
    with pytest.raises(PluginError, match=f"plugin {name} cannot be disabled"):
        registry.build(disable=(name,))


def test_unknown_plugin_name_is_an_error():
    with pytest.raises(PluginError, match="unknown plugin 'nosuch'"):
        registry.build("default,nosuch")


def test_unknown_key_in_hooks_toml_is_an_error(tmp_path):
    path = _toml(tmp_path, '[plugins.x]\nmodule = "plugins.fs"\nprovied = ["a"]\n')
    with pytest.raises(PluginError, match="plugin x: unknown key 'provied'"):
        registry.load_specs(path)


def test_bad_runs_in_is_an_error(tmp_path):
    path = _toml(tmp_path, '[plugins.x]\nmodule = "plugins.fs"\nruns_in = "kernel"\n')
    with pytest.raises(PluginError, match="plugin x"):
        registry.load_specs(path)


def test_missing_module_is_an_error(tmp_path):
    path = _toml(tmp_path, '[plugins.x]\nprovides = ["a"]\n')
    with pytest.raises(PluginError, match="missing key 'module'"):
        registry.load_specs(path)


def test_hooks_toml_parse_is_kept_only_for_the_same_bytes(tmp_path):
    """load_specs keeps tomllib's parse in __pycache__ and takes it again
    only while hooks.toml holds exactly the bytes it was made from: an
    edit of the same size (and mtime, as a fast editor may leave) is read
    anew, and a spoilt copy is parsed over."""
    path = _toml(tmp_path, '[plugins.fs]\nmodule = "plugins.fs"\nruns_in = "task"\n')
    kept = tmp_path / "__pycache__" / "hooks.toml.marshal"
    assert registry.load_specs(path)["fs"].runs_in == "task"
    assert kept.exists()
    assert registry.load_specs(path)["fs"].runs_in == "task"       # from the copy
    stat = path.stat()
    path.write_text('[plugins.fs]\nmodule = "plugins.fs"\nruns_in = "engi"\n')
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert path.stat().st_size == stat.st_size
    with pytest.raises(PluginError, match="plugin fs"):     # "engi": read anew, refused
        registry.load_specs(path)
    kept.write_bytes(b"spoilt")
    path.write_text('[plugins.fs]\nmodule = "plugins.fs"\nruns_in = "engine"\n')
    assert registry.load_specs(path)["fs"].runs_in == "engine"


def test_non_default_plugin_is_off_until_named(tmp_path):
    path = _toml(tmp_path, '[plugins.fs]\nmodule = "plugins.fs"\ndefault = false\n'
                           '[plugins.files]\nmodule = "plugins.files"\n')
    assert registry.build("default", hooks_toml=path).enabled == ["files"]
    assert registry.build("default,fs", hooks_toml=path).enabled == ["fs", "files"]


def test_misnamed_hook_is_an_error(tmp_path, monkeypatch):
    """Only engine_* globals are hooks; a marked function named otherwise
    is still found, and refused."""
    (tmp_path / "misnamed_plugin.py").write_text(
        "import os\nfrom engine import hookimpl\n\n"
        "@hookimpl\ndef restore_node(ctx, node):\n    return None\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    path = _toml(tmp_path, '[plugins.pstree]\nmodule = "plugins.pstree"\nessential = true\n'
                           '[plugins.odd]\nmodule = "misnamed_plugin"\n')
    with pytest.raises(Exception, match="unknown hook 'restore_node'"):
        registry.build(hooks_toml=path)


def test_a_node_goes_to_its_plugin_and_through_every_wrapper():
    """restore_node calls only the owner's hookimpl, but a wrapper of any
    plugin (a third-party tracer of nodes, say) still sees every node."""
    import types

    from engine import hookimpl
    from engine.graph import Node
    seen = []

    def restore(node):
        return True if node.plugin == "owner" else None

    @hookimpl(wrapper=True)
    def watch(ctx, node):
        result = yield
        seen.append((node.key, result))
        return result

    reg = registry.build()
    owner, watcher = types.ModuleType("owner"), types.ModuleType("watcher")
    owner.engine_restore_node, watcher.engine_restore_node = hookimpl(restore), watch
    reg.pm.register(owner, name="owner")
    reg.pm.register(watcher, name="watcher")
    assert reg.restore_node(None, Node(key="owner:1", plugin="owner")) is True
    assert reg.restore_node(None, Node(key="nobody:1", plugin="nobody")) is None
    assert seen == [("owner:1", True), ("nobody:1", None)]

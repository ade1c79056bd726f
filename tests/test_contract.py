"""Meta-tests (datasette's habit): the hook contract and the plugin layout.

Every hook is documented with the three fixed fields, every hook has a
test named test_hook_<name> somewhere under tests/, every hooks.toml plugin
has a folder, and every plugin folder has a hooks.toml entry.
"""
import inspect
import re
from pathlib import Path

import pytest

from engine import hookspecs
from engine.registry import load_specs

ROOT = Path(__file__).resolve().parent.parent
HOOKS = [name for name, fn in inspect.getmembers(hookspecs, inspect.isfunction)
         if name.startswith("engine_")]


def test_every_hook_is_prefixed():
    stray = [n for n, f in inspect.getmembers(hookspecs, inspect.isfunction)
             if hasattr(f, "engine_spec") and not n.startswith("engine_")]
    assert not stray


@pytest.mark.parametrize("name", HOOKS)
def test_hook_is_documented(name):
    doc = inspect.getdoc(getattr(hookspecs, name)) or ""
    assert doc.splitlines()[0].startswith("Called"), f"{name}: first line must say when it runs"
    for param in inspect.signature(getattr(hookspecs, name)).parameters:
        assert f":param {param}:" in doc, f"{name}: :param {param}: missing"
    for field in ("Runs in:", "May touch:", "Returns:"):
        assert field in doc, f"{name}: {field} missing"
    spec = getattr(hookspecs, name).engine_spec
    if spec.get("firstresult"):
        assert "Stops at first non-None result" in doc


@pytest.mark.parametrize("name", HOOKS)
def test_hook_has_a_test(name):
    pattern = re.compile(rf"def test_hook_{name}\b")
    found = any(pattern.search(p.read_text()) for p in (ROOT / "tests").rglob("test_*.py"))
    assert found, f"no test_hook_{name} under tests/"


def test_every_plugin_has_a_folder_and_every_folder_an_entry():
    specs = load_specs()
    folders = {p.name for p in (ROOT / "plugins").iterdir()
               if p.is_dir() and (p / "__init__.py").exists()}
    assert set(specs) == folders
    for name, spec in specs.items():
        assert spec.module == f"plugins.{name}", "one name everywhere"

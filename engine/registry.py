"""The plugin manager: hooks.toml, entry points, --plugins and --disable.

Load order (STYLE habit 7): parse hooks.toml; block every disabled name;
register the built-ins; load the ``engine.plugins`` entry points (pluggy skips
blocked names); ``check_pending``. One name everywhere: the folder, the
hooks.toml key, the pluggy name and the ``--disable`` argument are the same.
"""
from __future__ import annotations

import importlib
import os

import attrs
import pluggy

from engine import hookspecs

# A str, not a pathlib.Path: pathlib (and urllib.parse with it) is ~3 ms of
# every command. Paths given to load_specs/build may be either.
HOOKS_TOML = os.path.join(os.path.dirname(os.path.dirname(os.path.realpath(__file__))),
                          "hooks.toml")
ENTRY_POINT_GROUP = "engine.plugins"
RUNS_IN = ("engine", "task", "tracer")


class PluginError(Exception):
    """A plugin set that cannot work: one line, naming the plugin."""


def _str_list(inst, attribute, value):
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise PluginError(f"plugin {inst.name}: {attribute.name} must be a list of strings")


@attrs.frozen
class PluginSpec:
    """One plugin as hooks.toml declares it."""

    name: str
    module: str = attrs.field(validator=attrs.validators.instance_of(str))
    provides: list[str] = attrs.field(factory=list, validator=_str_list)
    after: list[str] = attrs.field(factory=list, validator=_str_list)
    # Like `after`, but only within one task: its node in task P comes after
    # the nodes in P (and in the engine) of the providers, not those of every
    # task, so each task goes through its own nodes without waiting for the
    # others; what it takes from another task is a node edge (Node.after).
    after_in_task: list[str] = attrs.field(factory=list, validator=_str_list)
    runs_in: str = attrs.field(default="engine", validator=attrs.validators.in_(RUNS_IN))
    default: bool = attrs.field(default=True, validator=attrs.validators.instance_of(bool))
    essential: bool = attrs.field(default=False, validator=attrs.validators.instance_of(bool))
    # The module registered in a disabled plugin's place (as NAME.fallback),
    # whose docstring documents what the plugin's resources become (e.g.
    # sockets restored closed). None: no fallback, disabling it refuses
    # images that need its resources.
    fallback: str | None = None
    # The image files (ImageKind patterns: "ghost-file-{id}.img") a restore
    # needs this plugin for: a set holding one is refused while it is
    # disabled, read from here without importing the plugin.
    images: list[str] = attrs.field(factory=list, validator=_str_list)
    description: str = ""
    origin: str = "hooks.toml"

    @classmethod
    def from_table(cls, name: str, table: dict, origin: str) -> "PluginSpec":
        known = {a.name for a in attrs.fields(cls)} - {"name", "origin"}
        unknown = sorted(set(table) - known)
        if unknown:
            raise PluginError(f"{origin}: plugin {name}: unknown key {unknown[0]!r}")
        if "module" not in table:
            raise PluginError(f"{origin}: plugin {name}: missing key 'module'")
        try:
            return cls(name=name, origin=origin, **table)
        except (TypeError, ValueError) as e:
            raise PluginError(f"{origin}: plugin {name}: {e}") from None


def load_specs(path: str | os.PathLike = HOOKS_TOML) -> dict[str, PluginSpec]:
    name = os.path.basename(path)
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise PluginError(f"{name}: {e}") from None
    tables = _parsed(os.fspath(path), raw).get("plugins", {})
    return {key: PluginSpec.from_table(key, t, name) for key, t in tables.items()}


def _parsed(path: str, raw: bytes) -> dict:
    """The TOML document `raw` (the bytes of `path`): tomllib's parse, or
    the copy of it kept beside the file (__pycache__/NAME.marshal) when
    that copy was made from these very bytes. Importing tomllib (it
    compiles its regexes) and parsing hooks.toml took ~5 ms of every
    command; the copy loads in ~0.1 ms. Kept whatever
    PYTHONDONTWRITEBYTECODE says: it is data, not byte-code, and is checked
    against the whole file, so an edited hooks.toml is parsed again."""
    import marshal
    kept = os.path.join(os.path.dirname(path), "__pycache__", os.path.basename(path) + ".marshal")
    try:
        with open(kept, "rb") as f:
            source, data = marshal.load(f)
        if source == raw:
            return data
    except (OSError, EOFError, ValueError, TypeError):
        pass                            # none yet, or spoilt: parsed again
    import tomllib
    try:
        data = tomllib.loads(raw.decode())
    except tomllib.TOMLDecodeError as e:
        raise PluginError(f"{os.path.basename(path)}: {e}") from None
    _keep(kept, marshal, raw, data)
    return data


def _keep(kept: str, marshal, raw: bytes, data: dict) -> None:
    """Write the parse beside the file (atomically: commands run at once);
    nothing when it cannot be (a read-only tree, a TOML date)."""
    tmp = f"{kept}.{os.getpid()}"
    try:
        blob = marshal.dumps((raw, data))
        os.makedirs(os.path.dirname(kept), exist_ok=True)
        with open(tmp, "wb") as f:
            f.write(blob)
        os.replace(tmp, kept)
    except (OSError, ValueError):
        try:
            os.unlink(tmp)
        except OSError:
            pass


def _entry_point_spec(ep) -> PluginSpec:
    """A third-party plugin declares itself in a hooks.toml in its package
    (found without importing it, so a plugin that is off is never run)."""
    import importlib.util
    found = importlib.util.find_spec(ep.module)
    origin = found.origin if found and found.origin else None
    toml = os.path.join(os.path.dirname(origin), "hooks.toml") if origin else None
    if toml is not None and os.path.exists(toml):
        specs = load_specs(toml)
        if ep.name in specs:
            return attrs.evolve(specs[ep.name], origin=f"entry point {ep.value}")
    return PluginSpec(name=ep.name, module=ep.value, default=False,
                      origin=f"entry point {ep.value}")


@attrs.define
class Registry:
    """The resolved plugin set of one run."""

    pm: pluggy.PluginManager
    specs: dict[str, PluginSpec]      # every known plugin, enabled or not
    enabled: list[str]                # in hooks.toml order, then entry points
    _node_callers: dict = attrs.field(factory=dict, init=False)

    @property
    def hook(self):
        return self.pm.hook

    def restore_node(self, ctx, node):
        """engine_restore_node for one node, called on its owner's hookimpl
        and every wrapper only (hookspecs): the other plugins are not asked
        about a node not theirs, and each call of them all writes to (so
        copies, in a forked task) some 60 more pages of the engine."""
        return self.node_caller(node.plugin)(ctx=ctx, node=node)

    def node_caller(self, owner: str):
        """pluggy's subset hook caller of engine_restore_node without the
        plain hookimpls of every plugin but `owner` (a plugin's wrapper stays:
        a module holds one function per hook name, so a plugin that wraps
        owns no nodes). Cached; prepare_node_calls() fills the cache for the
        enabled plugins before the forks."""
        caller = self._node_callers.get(owner)
        if caller is None:
            others = [impl.plugin for impl in self.pm.hook.engine_restore_node.get_hookimpls()
                      if not (impl.wrapper or impl.hookwrapper) and impl.plugin_name != owner]
            caller = self._node_callers[owner] = self.pm.subset_hook_caller(
                "engine_restore_node", remove_plugins=others)
        return caller

    def prepare_node_calls(self) -> None:
        for name in self.enabled:
            self.node_caller(name)

    def provider_of(self, resource: str) -> PluginSpec | None:
        for spec in self.specs.values():
            if resource in spec.provides:
                return spec
        return None

    def is_enabled(self, name: str) -> bool:
        return name in self.enabled


def _selection(plugins: str, specs: dict[str, PluginSpec]) -> set[str]:
    chosen: set[str] = set()
    for word in filter(None, (w.strip() for w in plugins.split(","))):
        if word == "default":
            chosen |= {n for n, s in specs.items() if s.default}
        else:
            chosen.add(word)
    return chosen


def build(plugins: str = "default", disable: tuple[str, ...] = (),
          hooks_toml: str | os.PathLike = HOOKS_TOML) -> Registry:
    specs = load_specs(hooks_toml)
    pm = _PluginManager("engine")
    pm.add_hookspecs(hookspecs)

    eps = []
    if not os.environ.get("ENGINE_DISABLE_PLUGIN_AUTOLOAD") and _may_have_entry_points():
        from importlib.metadata import entry_points
        eps = list(entry_points(group=ENTRY_POINT_GROUP))

    chosen = _selection(plugins, specs)
    known = set(specs) | {ep.name for ep in eps}
    for name in sorted(chosen | set(disable)):
        if name not in known:
            raise PluginError(f"unknown plugin {name!r} (known: {', '.join(sorted(known))})")
    for name in disable:
        if name in specs and specs[name].essential:
            raise PluginError(f"plugin {name} cannot be disabled")
        chosen.discard(name)
    for name, spec in specs.items():
        if spec.essential:
            chosen.add(name)

    # (name, module) in the order their hooks are to run: hooks.toml's,
    # then the entry points'. pluggy calls the plugin registered last
    # first, so they are registered in reverse: every hook (dump claims,
    # collect, finish) then runs in hooks.toml order, with no
    # tryfirst/trylast to read elsewhere.
    ordered: list[tuple[str, object]] = []
    enabled = []
    for name, spec in specs.items():
        if name not in chosen:
            pm.set_blocked(name)
            if spec.fallback:
                ordered.append((f"{name}.fallback", _import(name, spec.fallback)))
            continue
        ordered.append((name, _import(name, spec.module)))
        enabled.append(name)

    for ep in eps:
        if ep.name in specs:
            raise PluginError(f"entry point {ep.value}: plugin name {ep.name!r} is taken")
        specs[ep.name] = _entry_point_spec(ep)
        if ep.name not in chosen:
            pm.set_blocked(ep.name)
            continue
        ordered.append((ep.name, ep.load()))
        enabled.append(ep.name)

    for name, module in reversed(ordered):
        pm.register(module, name=name)
    pm.check_pending()
    if os.environ.get("ENGINE_TRACE_HOOKS"):
        _trace_hooks(pm)
    return Registry(pm=pm, specs=specs, enabled=enabled)


def _may_have_entry_points() -> bool:
    """Whether an installed distribution may declare an engine.plugins entry
    point. Importing importlib.metadata costs ~15 ms of every command
    (email, zipfile, csv...), so the entry_points.txt files on sys.path are
    looked at first; anything but a plain directory on it (a zip) counts as
    maybe."""
    import sys
    head = f"[{ENTRY_POINT_GROUP}]"
    for entry in sys.path:
        path = entry or "."
        if not os.path.isdir(path):
            if os.path.exists(path):
                return True
            continue
        try:
            names = os.listdir(path)
        except OSError:
            continue
        for name in names:
            if name.endswith((".dist-info", ".egg-info")):
                try:
                    with open(os.path.join(path, name, "entry_points.txt")) as f:
                        if head in f.read():
                            return True
                except OSError:
                    pass
    return False


class _PluginManager(pluggy.PluginManager):
    """Every hook is named engine_*: the other globals of a plugin module
    (its imports, helpers, constants) are passed over with a plain look for
    the hookimpl mark (a misnamed hook still reaches check_pending), not
    inspected one by one."""

    def parse_hookimpl_opts(self, plugin, name):
        if not name.startswith("engine_"):
            value = getattr(plugin, "__dict__", {}).get(name)
            if value is None or not hasattr(value, "engine_impl"):
                return None
        return super().parse_hookimpl_opts(plugin, name)


def _import(name: str, module_name: str):
    try:
        return importlib.import_module(module_name)
    except ImportError as e:
        raise PluginError(f"plugin {name}: cannot import {module_name}: {e}") from None


def _trace_hooks(pm: pluggy.PluginManager) -> None:
    import sys

    def before(name, impls, kwargs):
        print(f"hook {name} -> {[i.plugin_name for i in impls]}", file=sys.stderr)

    def after(outcome, name, impls, kwargs):
        pass

    pm.add_hookcall_monitoring(before, after)

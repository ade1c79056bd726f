"""Image kinds: file name pattern, magic, message (criu/include/magic.h).

Every CRIU image starts with IMG_COMMON_MAGIC then its own magic, except
inventory.img (its magic alone) and raw images such as pages-N.img (no
header at all). The engine registers only its own kinds (ENGINE); each
plugin registers the kinds it writes and reads through
``engine_register_images(registry)``, and lists in its hooks.toml `images`
those a restore needs it for. A disabled plugin registers nothing: its
`images` become declared() kinds, so that a set holding one is refused
naming the resource (engine.restore checks ImageKind.resource).
"""
from __future__ import annotations

import importlib

import attrs

IMG_COMMON_MAGIC = 0x54564319
IMG_SERVICE_MAGIC = 0x55105940


@attrs.define
class ImageKind:
    name: str                 # "core"
    pattern: str              # "core-{id}.img"
    magic: int
    module: str               # "engine.images.proto.core_pb2"
    message: str              # "core_entry"
    head: str | None = None   # a different message for the first entry (pagemap)
    common: bool = True       # IMG_COMMON_MAGIC before the magic
    magic_name: str = ""
    # The resource a set holding this image needs restored: that of the
    # plugin whose hooks.toml `images` lists its pattern (plugin_kinds), or
    # None for images a restore does without (cpuinfo) or always reads.
    resource: str | None = None
    # Name of the entry field giving the length of raw bytes that follow
    # each entry (pipes-data.img: `bytes`), a tuple of them when several
    # buffers follow back to back (tcp-stream: inq_len, outq_len), or None.
    payload: str | tuple[str, ...] | None = None
    # The disabled plugin a declared() kind stands for; None otherwise.
    plugin: str | None = None
    # One image per task or thread, named by its pid (core-PID.img): named
    # by the pid of the image set's level (ImageDir.pid_alias).
    per_task: bool = False

    def message_class(self, first: bool = False):
        mod = importlib.import_module(self.module)
        return getattr(mod, self.head if first and self.head else self.message)

    def filename(self, id=None) -> str:
        return self.pattern.format(id=id)

    @property
    def id_base(self) -> int:
        return 16 if "{id:x}" in self.pattern else 10

    def id_of(self, fname: str) -> int | None:
        """The id in `fname` if it is an image of this kind (one with an id
        in its pattern), else None."""
        parts = _pattern_parts(self.pattern)
        return None if parts is None else _id_between(fname, *parts, self.id_base)


P = "engine.images.proto."
# The engine's own kinds: what the engine itself reads or writes whatever
# plugins are on. files.img holds every fd plugin's file_entry bodies and
# is read while the restore graph is built; fdinfo-N.img (the fd tables,
# the files plugin's) is read by the engine's fd sharing (engine.fds.park)
# and by every fd plugin, and must decode when files is disabled, for the
# refusal to name the resource. Every other kind is registered by its
# plugin (engine_register_images).
ENGINE = [
    ImageKind("inventory", "inventory.img", 0x58313116, P + "tree_pb2", "inventory_entry",
              common=False, magic_name="INVENTORY"),
    ImageKind("files", "files.img", 0x56303138, P + "files_pb2", "file_entry",
              magic_name="FILES"),
    ImageKind("fdinfo", "fdinfo-{id}.img", 0x56213732, P + "files_pb2", "fdinfo_entry",
              magic_name="FDINFO"),
]


def kind_name(pattern: str) -> str:
    """The kind a file name pattern names: "ghost-file-{id}.img" -> "ghost-file"."""
    head, brace, rest = pattern.partition("{")
    base = head + rest.partition("}")[2] if brace else pattern
    return base.removesuffix(".img").rstrip("-")


def declared(pattern: str, plugin: str, resource: str | None) -> ImageKind:
    """A kind known only by its file name, from a disabled plugin's hooks.toml
    `images`: enough to refuse a set holding one; reading it fails."""
    return ImageKind(kind_name(pattern), pattern, 0, "", "", plugin=plugin, resource=resource)


_ID_DIGITS = {10: frozenset("0123456789"), 16: frozenset("0123456789abcdef")}


def _pattern_parts(pattern: str) -> tuple[str, str] | None:
    """What comes before and after the {id} of a pattern; None if it has none."""
    head, brace, rest = pattern.partition("{")
    return (head, rest.partition("}")[2]) if brace else None


def _id_between(fname: str, head: str, tail: str, base: int) -> int | None:
    # {id:x}: CRIU names some images by a hex id (tcp-stream-%x.img).
    if not fname.startswith(head) or not fname.endswith(tail):
        return None
    digits = fname[len(head):len(fname) - len(tail)]
    if not digits or not _ID_DIGITS[base].issuperset(digits):
        return None
    return int(digits, base)


class KindRegistry:
    def __init__(self, kinds=()):
        self._kinds: dict[str, ImageKind] = {}
        self._index = None
        for kind in kinds:
            self.register(kind)

    def register(self, kind: ImageKind, replace: bool = False) -> None:
        known = self._kinds.get(kind.name)
        if known is not None and not replace:
            # The same kind again (a test registering a plugin's kinds into
            # a full registry) is no conflict; resource is stamped later.
            if attrs.evolve(kind, resource=known.resource) == known:
                return
            raise ValueError(f"image kind {kind.name} registered twice")
        self._kinds[kind.name] = kind
        self._index = None

    def get(self, name: str) -> ImageKind:
        return self._kinds[name]

    def __iter__(self):
        return iter(self._kinds.values())

    def for_filename(self, fname: str):
        """(kind, id or None) of an image file name, the kind registered
        first if several match; None if no kind does. Every file of an
        image set goes through here: a name is looked up by its fixed
        part, not matched against every kind's pattern."""
        fixed, by_head, head_sizes = self._index or self._build_index()
        found = [fixed[fname]] if fname in fixed else []
        for size in head_sizes:
            for order, kind, tail in by_head.get(fname[:size], ()):
                found_id = _id_between(fname, fname[:size], tail, kind.id_base)
                if found_id is not None:
                    found.append((order, kind, found_id))
        if not found:
            return None
        _, kind, found_id = min(found, key=lambda f: f[0])
        return kind, found_id

    def _build_index(self):
        # fixed names -> (order, kind, None); the part before {id} -> [(order, kind, after)]
        fixed, by_head = {}, {}
        for order, kind in enumerate(self._kinds.values()):
            parts = _pattern_parts(kind.pattern)
            if parts is None:
                fixed.setdefault(kind.pattern, (order, kind, None))
            else:
                by_head.setdefault(parts[0], []).append((order, kind, parts[1]))
        self._index = (fixed, by_head, sorted({len(head) for head in by_head}))
        return self._index


def engine_registry() -> KindRegistry:
    """The engine's own kinds only."""
    return KindRegistry(attrs.evolve(k) for k in ENGINE)


def plugin_kinds(reg, decode_all: bool = False) -> KindRegistry:
    """The kinds of one run: the engine's, every enabled plugin's
    (engine_register_images), and, for each disabled plugin, a declared()
    kind per pattern of its hooks.toml `images` (no import: a plugin that is
    off is never run), so that a restore refuses a set needing it. Each kind
    a plugin's `images` lists needs that plugin's resource.

    decode_all (`engine show`): a disabled built-in plugin's kinds are
    registered as if it were on, so every image decodes."""
    kinds = engine_registry()
    reg.hook.engine_register_images.call_historic(kwargs={"registry": kinds})
    for name, spec in reg.specs.items():
        if decode_all and not reg.is_enabled(name) and spec.origin == "hooks.toml":
            _register_from(spec.module, kinds)
    _add_needs(reg.specs, kinds)
    return kinds


def _add_needs(specs: dict, kinds: KindRegistry) -> None:
    """Each pattern of a plugin's `images` needs the plugin's own resource
    (the first it provides that no plugin before it does); a pattern no
    registered kind has becomes a declared() kind."""
    providers: dict[str, str] = {}
    for name, spec in specs.items():
        for resource in spec.provides:
            providers.setdefault(resource, name)
    by_pattern = {k.pattern: k for k in kinds}
    for name, spec in specs.items():
        own = next((r for r in spec.provides if providers[r] == name), None)
        for pattern in spec.images:
            kind = by_pattern.get(pattern)
            if kind is None:
                kinds.register(declared(pattern, name, own))
            elif kind.resource is None:
                kinds.register(attrs.evolve(kind, resource=own), replace=True)


def _register_from(module_name: str, kinds: KindRegistry) -> None:
    import importlib
    hook = getattr(importlib.import_module(module_name), "engine_register_images", None)
    if hook is not None:
        hook(registry=kinds)


_BUILTIN_KINDS: list[ImageKind] | None = None


def default_registry() -> KindRegistry:
    """Every kind engine knows without a plugin manager (tests, `engine.testing`,
    a reader of an image set): the engine's and every hooks.toml plugin's,
    each needing the resource of the plugin whose `images` lists it."""
    global _BUILTIN_KINDS
    if _BUILTIN_KINDS is None:
        from engine.registry import load_specs
        specs = load_specs()
        kinds = engine_registry()
        for spec in specs.values():
            _register_from(spec.module, kinds)
        _add_needs(specs, kinds)
        _BUILTIN_KINDS = list(kinds)
    return KindRegistry(attrs.evolve(k) for k in _BUILTIN_KINDS)

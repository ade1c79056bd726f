"""Image kinds: file name pattern, magic, message (criu/include/magic.h).

Every CRIU image starts with IMG_COMMON_MAGIC then its own magic, except
inventory.img (its magic alone) and raw images such as pages-N.img (no
header at all). A plugin adds kinds of its own through
``engine_register_images(registry)``.
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
    # The resource a set holding this image needs restored (hooks.toml
    # `provides`); None for images every restore reads.
    resource: str | None = None
    # Name of the entry field giving the length of raw bytes that follow
    # each entry (pipes-data.img: `bytes`), a tuple of them when several
    # buffers follow back to back (tcp-stream: inq_len, outq_len), or None.
    payload: str | tuple[str, ...] | None = None

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
BUILTIN = [
    ImageKind("inventory", "inventory.img", 0x58313116, P + "tree_pb2", "inventory_entry",
              common=False, magic_name="INVENTORY"),
    ImageKind("pstree", "pstree.img", 0x50273030, P + "tree_pb2", "pstree_entry",
              magic_name="PSTREE", resource="tasks"),
    ImageKind("core", "core-{id}.img", 0x55053847, P + "core_pb2", "core_entry",
              magic_name="CORE", resource="registers"),
    ImageKind("ids", "ids-{id}.img", 0x54432030, P + "core_pb2", "task_kobj_ids_entry",
              magic_name="IDS"),
    ImageKind("mm", "mm-{id}.img", 0x57492820, P + "mm_pb2", "mm_entry", magic_name="MM",
              resource="memory"),
    ImageKind("pagemap", "pagemap-{id}.img", 0x56084025, P + "mm_pb2", "pagemap_entry",
              head="pagemap_head", magic_name="PAGEMAP", resource="memory"),
    ImageKind("fs", "fs-{id}.img", 0x51403912, P + "tree_pb2", "fs_entry", magic_name="FS",
              resource="fs"),
    ImageKind("files", "files.img", 0x56303138, P + "files_pb2", "file_entry",
              magic_name="FILES"),
    ImageKind("fdinfo", "fdinfo-{id}.img", 0x56213732, P + "files_pb2", "fdinfo_entry",
              magic_name="FDINFO", resource="fds"),
    ImageKind("pipes-data", "pipes-data.img", 0x56453709, P + "files_pb2", "pipe_data_entry",
              magic_name="PIPES_DATA", payload="bytes"),
    ImageKind("fifo-data", "fifo-data.img", 0x59333054, P + "files_pb2", "pipe_data_entry",
              magic_name="FIFO_DATA", payload="bytes"),
    ImageKind("sk-queues", "sk-queues.img", 0x56264026, P + "sockets_pb2", "sk_packet_entry",
              magic_name="SK_QUEUES", payload="length"),
    ImageKind("remap-fpath", "remap-fpath.img", 0x59133954, P + "files_pb2",
              "remap_file_path_entry", magic_name="REMAP_FPATH"),
    ImageKind("ghost-file", "ghost-file-{id}.img", 0x52583605, P + "files_pb2",
              "ghost_file_entry", magic_name="GHOST_FILE", payload="size"),
    ImageKind("seccomp", "seccomp.img", 0x64413049, P + "tree_pb2", "seccomp_entry",
              magic_name="SECCOMP"),
    ImageKind("timens", "timens-{id}.img", 0x43114433, P + "tree_pb2", "timens_entry",
              magic_name="TIMENS"),
    ImageKind("cpuinfo", "cpuinfo.img", 0x61404013, P + "cpuinfo_pb2", "cpuinfo_entry",
              magic_name="CPUINFO"),
    ImageKind("userns", "userns-{id}.img", 0x55474906, P + "userns_pb2", "userns_entry",
              magic_name="USERNS", resource="userns"),
    ImageKind("utsns", "utsns-{id}.img", 0x54473203, P + "utsns_pb2", "utsns_entry",
              magic_name="UTSNS", resource="utsns"),
    ImageKind("ipcns-var", "ipcns-var-{id}.img", 0x53115007, P + "ipc_var_pb2", "ipc_var_entry",
              magic_name="IPC_VAR", resource="ipcns"),
    ImageKind("netns", "netns-{id}.img", 0x55933752, P + "netdev_pb2", "netns_entry",
              magic_name="NETNS", resource="netns"),
    ImageKind("netdev", "netdev-{id}.img", 0x57373951, P + "netdev_pb2", "net_device_entry",
              magic_name="NETDEV", resource="netns"),
    ImageKind("mountpoints", "mountpoints-{id}.img", 0x55563928, P + "mnt_pb2", "mnt_entry",
              magic_name="MNTS", resource="mntns"),
    ImageKind("pidns", "pidns-{id}.img", 0x61157326, P + "pidns_pb2", "pidns_entry",
              magic_name="PIDNS", resource="pidns"),
]


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

    def register(self, kind: ImageKind) -> None:
        if kind.name in self._kinds:
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


def default_registry() -> KindRegistry:
    return KindRegistry(BUILTIN)

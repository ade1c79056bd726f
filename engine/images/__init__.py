"""CRIU-compatible image I/O: one ImageDir per image set.

Cheap to import: the protobuf modules load when a kind is first read or
written.
"""
from __future__ import annotations

import os

from engine.images.framing import ImageError, read_entries, write_entries
from engine.images.kinds import KindRegistry, default_registry

__all__ = ["ImageDir", "ImageError", "IMG_VERSION"]

IMG_VERSION = 2           # CRIU_IMG_VERSION: images with per-id fdinfo and ns


class ImageDir:
    def __init__(self, path, registry: KindRegistry | None = None):
        self.dir = str(path)
        self.kinds = registry or default_registry()
        # The engine's pid (as /proc names it) -> the pid in the images, for
        # per_task kinds: a tree whose root is the init of its own pid
        # namespace is imaged at that namespace's level, as CRIU does
        # (plugins/pstree sets it).
        self.pid_alias: dict[int, int] = {}

    def path(self, name: str, id=None) -> str:
        kind = self.kinds.get(name)
        if kind.per_task and self.pid_alias:
            id = self.pid_alias.get(id, id)
        return os.path.join(self.dir, kind.filename(id))

    def exists(self, name: str, id=None) -> bool:
        return os.path.exists(self.path(name, id))

    def ids(self, name: str) -> list[int]:
        """The ids of the images of kind `name` in the set, in order."""
        kind = self.kinds.get(name)
        found = (i for i in map(kind.id_of, os.listdir(self.dir)) if i is not None)
        if kind.per_task and self.pid_alias:
            engine_pid = {image: mine for mine, image in self.pid_alias.items()}
            found = (engine_pid.get(i, i) for i in found)
        return sorted(found)

    def read(self, name: str, id=None) -> list:
        return read_entries(self.path(name, id), self.kinds.get(name))

    def read_one(self, name: str, id=None):
        return self.only(name, self.read(name, id), id)

    def only(self, name: str, entries: list, id=None):
        """The one entry of image `name` (id) that `entries` were read from."""
        if len(entries) != 1:
            raise ImageError(self.kinds.get(name).filename(id),
                             f"{len(entries)} entries, want exactly 1")
        return entries[0]

    def write(self, name: str, messages, id=None) -> None:
        path = self.path(name, id)
        write_entries(path, self.kinds.get(name), messages)
        if os.path.exists(os.path.join(self.dir, "engine-images.json")):
            from engine.images import manifest
            manifest.note(self.dir, os.path.basename(path))

    def message(self, name: str, first: bool = False):
        """The protobuf class of an image kind's entries."""
        return self.kinds.get(name).message_class(first)

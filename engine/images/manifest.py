"""engine-images.json: the size of every image file a dump wrote.

A dump writes it just before inventory.img; a restore checks it before
reading anything else, so an image set that was cut (a file truncated at an
entry boundary still parses), lost a file or gained one is refused in one
line naming the file, rather than restoring part of a tree. Sets without it
(CRIU's) are read as before. The engine's own image writer (ImageDir.write)
keeps it up to date, so a tool rewriting an image through it is not refused;
what the check is for is damage, not hostility: every value an image holds
is validated by the plugin that reads it, whatever this file says.
"""
from __future__ import annotations

import json
import os

from engine.images.framing import ImageError

MANIFEST = "engine-images.json"
VERSION = 1
INVENTORY = "inventory.img"        # the completion marker, checked on its own


def _images(images_dir: str) -> dict[str, int]:
    out = {}
    with os.scandir(images_dir) as entries:
        for e in entries:
            if e.name.endswith(".img") and e.name != INVENTORY and e.is_file():
                out[e.name] = e.stat().st_size
    return out


def write(images_dir: str) -> None:
    with open(os.path.join(images_dir, MANIFEST), "w") as f:
        json.dump({"version": VERSION, "sizes": _images(images_dir)}, f, sort_keys=True)


def note(images_dir: str, name: str) -> None:
    """Image `name` was rewritten by the engine's writer: record its size."""
    if name == INVENTORY:
        return
    path = os.path.join(images_dir, MANIFEST)
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, ValueError):
        return
    data.setdefault("sizes", {})[name] = os.path.getsize(os.path.join(images_dir, name))
    with open(path, "w") as f:
        json.dump(data, f, sort_keys=True)


def check(images_dir: str) -> None:
    """Refuse a set whose image files are not those the dump wrote."""
    path = os.path.join(images_dir, MANIFEST)
    try:
        with open(path) as f:
            data = json.load(f)
    except FileNotFoundError:
        return
    except (OSError, ValueError) as e:
        raise ImageError(MANIFEST, f"unreadable: {e}") from None
    sizes = data.get("sizes") if isinstance(data, dict) else None
    if data.get("version") != VERSION or not isinstance(sizes, dict) or not all(
            isinstance(k, str) and isinstance(v, int) for k, v in sizes.items()):
        raise ImageError(MANIFEST, "version: not a manifest this engine reads")
    found = _images(images_dir)
    for name, size in sorted(sizes.items()):
        if name not in found:
            raise ImageError(name, f"missing: the dump wrote it ({size} bytes)")
        if found[name] != size:
            raise ImageError(name, f"{found[name]} bytes, but the dump wrote {size}: "
                                   "cut or changed since")
    for name in sorted(set(found) - set(sizes)):
        raise ImageError(name, "not written by the dump (engine-images.json does not list it)")

"""CRIU image framing: magic header(s), then entries of u32 LE size + protobuf.

A broken image is an ImageError whose text is one line naming the file and
what is wrong with it: a wrong magic, a truncated entry, a message that does
not parse, a required field missing.
"""
from __future__ import annotations

import struct

from engine.images.kinds import IMG_COMMON_MAGIC, IMG_SERVICE_MAGIC, ImageKind

U32 = struct.Struct("<I")


class ImageError(ValueError):
    """An image that cannot be read or restored: "IMAGE: what is wrong",
    IMAGE naming the file (and the entry or field, when one is at fault).
    A ValueError, as the checks that raise it were before it existed."""

    def __init__(self, image: str, what: str):
        super().__init__(f"{image}: {what}")
        self.image = image
        self.what = what


def read_entries(path, kind: ImageKind) -> list:
    """The entries of an image; for a kind with a payload, (entry, bytes) pairs."""
    name = str(path).rsplit("/", 1)[-1]
    if not kind.module:
        raise ImageError(name, f"read by plugin {kind.plugin}, which is disabled")
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise ImageError(name, "missing") from None
    except OSError as e:
        raise ImageError(name, e.strerror) from None
    pos = _check_magic(name, data, kind)
    entries = []
    head, rest = kind.message_class(first=True), kind.message_class()
    while pos < len(data):
        i = len(entries)
        if pos + 4 > len(data):
            raise ImageError(name, f"entry {i}: truncated size")
        (size,) = U32.unpack_from(data, pos)
        pos += 4
        if pos + size > len(data):
            raise ImageError(name, f"entry {i}: truncated (need {size} bytes, "
                                   f"have {len(data) - pos})")
        msg = head() if i == 0 else rest()
        try:
            msg.ParseFromString(data[pos:pos + size])
        except Exception as e:  # noqa: BLE001 - protobuf's DecodeError and friends
            raise ImageError(name, f"entry {i}: does not parse as "
                                   f"{msg.DESCRIPTOR.name}: {e}") from None
        if not msg.IsInitialized():
            missing = ", ".join(msg.FindInitializationErrors())
            raise ImageError(name, f"entry {i}: required field missing: {missing}")
        pos += size
        # a head entry (ghost_file_entry before its chunks) has no payload
        if kind.payload and not (i == 0 and kind.head):
            fields = (kind.payload,) if isinstance(kind.payload, str) else kind.payload
            length = sum(getattr(msg, f) for f in fields)
            if pos + length > len(data):
                raise ImageError(name, f"entry {i}: {'+'.join(fields)}={length}: payload "
                                       f"truncated (have {len(data) - pos})")
            entries.append((msg, data[pos:pos + length]))
            pos += length
        else:
            entries.append(msg)
    return entries


def _check_magic(name: str, data: bytes, kind: ImageKind) -> int:
    if len(data) < 4:
        raise ImageError(name, "truncated magic")
    (first,) = U32.unpack_from(data, 0)
    pos = 4
    if first in (IMG_COMMON_MAGIC, IMG_SERVICE_MAGIC):
        if len(data) < 8:
            raise ImageError(name, "truncated magic")
        (first,) = U32.unpack_from(data, 4)
        pos = 8
    if first != kind.magic:
        raise ImageError(name, f"wrong magic {first:#x}, want {kind.magic:#x} ({kind.name})")
    return pos


def encode_entries(kind: ImageKind, messages) -> bytes:
    parts = [U32.pack(IMG_COMMON_MAGIC)] if kind.common else []
    parts.append(U32.pack(kind.magic))
    for i, item in enumerate(messages):
        msg, payload = (item if kind.payload and not (i == 0 and kind.head)
                        else (item, b""))
        body = msg.SerializeToString()
        parts += [U32.pack(len(body)), body, payload]
    return b"".join(parts)


def write_entries(path, kind: ImageKind, messages) -> None:
    with open(path, "wb") as f:
        f.write(encode_entries(kind, messages))

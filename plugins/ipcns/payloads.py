"""The raw bytes CRIU writes after each ipcns-sem and ipcns-msg entry
(criu/ipc_ns.c), and their checks on the way back.

A set: its values, u16 each, padded to 8 bytes. A queue: for each message
a u32 size, an ipc_msg (mtype, msize) and its text padded to 8 bytes. The
engine's framing reads a payload whose length an entry field gives: the
entries carry it in a field of the engine's (values_bytes, messages_bytes;
CRIU ignores it), so the engine's images are CRIU's.
"""
from __future__ import annotations

import struct

from engine.images import ImageError

U32 = struct.Struct("<I")


def _pad(n: int) -> int:
    return -n % 8


def sem_payload(values) -> bytes:
    raw = struct.pack(f"<{len(values)}H", *values)
    return raw + b"\0" * _pad(len(raw))


def msg_payload(messages) -> bytes:
    """messages: (mtype, text) in queue order."""
    from engine.images.proto.ipc_pb2 import ipc_msg
    out = []
    for mtype, text in messages:
        head = ipc_msg(mtype=mtype, msize=len(text)).SerializeToString()
        out += [U32.pack(len(head)), head, text, b"\0" * _pad(len(text))]
    return b"".join(out)


def sem_values(where: str, entry, payload: bytes) -> list[int]:
    want = entry.nsems * 2 + _pad(entry.nsems * 2)
    if len(payload) != want:
        raise ImageError(where, f"values_bytes {len(payload)}, want {want} for nsems "
                                f"{entry.nsems}")
    return list(struct.unpack_from(f"<{entry.nsems}H", payload))


def msg_list(where: str, entry, payload: bytes, msgmax: int) -> list[tuple[int, bytes]]:
    """The messages, each checked: size within the payload, msize up to
    `msgmax`, mtype positive."""
    from engine.images.proto.ipc_pb2 import ipc_msg
    out, pos = [], 0
    while pos < len(payload):
        j = len(out)
        if pos + 4 > len(payload):
            raise ImageError(where, f"message {j}: truncated size")
        (size,) = U32.unpack_from(payload, pos)
        head = ipc_msg()
        try:
            head.ParseFromString(payload[pos + 4:pos + 4 + size])
        except Exception as e:  # noqa: BLE001 - protobuf's DecodeError and friends
            raise ImageError(where, f"message {j}: does not parse: {e}") from None
        if not head.IsInitialized() or pos + 4 + size > len(payload):
            raise ImageError(where, f"message {j}: truncated or incomplete ipc_msg")
        if head.msize > msgmax:
            raise ImageError(where, f"message {j}: msize {head.msize}, over msg_ctlmax {msgmax}")
        if not 0 < head.mtype < 1 << 63:
            raise ImageError(where, f"message {j}: mtype {head.mtype} is not positive")
        pos += 4 + size
        end = pos + head.msize
        if end > len(payload):
            raise ImageError(where, f"message {j}: msize {head.msize} past messages_bytes "
                                    f"{len(payload)}")
        out.append((head.mtype, payload[pos:end]))
        pos = end + _pad(head.msize)
    if len(out) != entry.qnum:
        raise ImageError(where, f"qnum {entry.qnum}, {len(out)} messages")
    total = sum(len(text) for _, text in out)
    if total > entry.qbytes:
        raise ImageError(where, f"messages of {total} bytes, over qbytes {entry.qbytes}")
    return out

"""`engine show DIR`: every image of a set as JSON (what crit decode prints)."""
from __future__ import annotations

import os

from engine.images.framing import ImageError, read_entries
from engine.images.kinds import default_registry


def image_dir_to_json(path, registry=None) -> dict:
    from google.protobuf.json_format import MessageToDict
    kinds = registry or default_registry()
    out: dict = {}
    for fname in sorted(os.listdir(path)):
        full = os.path.join(path, fname)
        if fname.startswith("pages-"):
            out[fname] = {"raw_pages_bytes": os.path.getsize(full)}
            continue
        if not fname.endswith(".img"):
            continue                   # not an image (the fingerprint, a log)
        found = kinds.for_filename(fname)
        if found is None:
            out[fname] = {"error": "unknown image kind"}
            continue
        kind, _ = found
        try:
            entries = read_entries(full, kind)
        except ImageError as e:
            out[fname] = {"error": str(e)}
            continue
        out[fname] = {"magic": kind.magic_name or kind.name.upper(),
                      "entries": [_entry(kind, e, MessageToDict) for e in entries]}
    return out


def _entry(kind, item, to_dict) -> dict:
    """One entry as a dict; raw bytes after it (queues, pipe data) are counted."""
    if not kind.payload or not isinstance(item, tuple):    # a head has no payload
        return to_dict(item, preserving_proto_field_name=True)
    msg, data = item
    return {**to_dict(msg, preserving_proto_field_name=True), "payload_bytes": len(data)}

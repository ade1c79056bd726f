"""Builders for entries several plugins write (a REG file_entry names the
exe, a mapped file, a cwd, or an open fd alike; criu/files-reg.c), and
files.img itself, which every plugin holding an open file adds to."""
from __future__ import annotations

import os


def regular_file(path: str, stat: os.stat_result, flags: int, pos: int):
    from engine.images.proto import files_pb2
    entry = files_pb2.file_entry(type=files_pb2.REG, id=0)
    reg = entry.reg
    reg.id, reg.flags, reg.pos, reg.name = 0, flags, pos, path
    reg.fown.uid = reg.fown.euid = reg.fown.signum = reg.fown.pid_type = reg.fown.pid = 0
    reg.size, reg.mode = stat.st_size, stat.st_mode
    return entry


def add_file(ctx, entry) -> int:
    """Add a file_entry to the dump's files.img (written by the engine once
    every dump_finish ran); its id, and its typed body's, is set here."""
    file_id = ctx.new_id()
    entry.id = file_id
    # CRIU repeats the id inside the typed sub-entry (reg.id, pipe.id...).
    for field, value in entry.ListFields():
        if field.message_type is not None and "id" in field.message_type.fields_by_name:
            value.id = file_id
    ctx.entries("files").append(entry)
    return file_id

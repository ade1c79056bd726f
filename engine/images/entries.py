"""Builders for entries several plugins write (a REG file_entry names the
exe, a mapped file, a cwd, or an open fd alike; criu/files-reg.c), and
files.img itself, which every plugin holding an open file adds to."""
from __future__ import annotations

import os


def file_entry(fd_type: str, body: str, **fields):
    """A file_entry of `fd_type` (the fd_types name: "EVENTFD") with its
    typed `body` ("efd") set from `fields`; its ids are given by add_file,
    and a body with an owner gets an empty one (fown's fields are required:
    the files plugin fills it for an fd that has an owner)."""
    from engine.images.proto import files_pb2
    entry = files_pb2.file_entry(type=files_pb2.fd_types.Value(fd_type), id=0)
    sub = getattr(entry, body)
    sub.id = 0
    for name, value in fields.items():
        setattr(sub, name, value)
    if "fown" in sub.DESCRIPTOR.fields_by_name:
        no_owner(sub.fown)
    return entry


def no_owner(fown) -> None:
    """An owner-less fown_entry (its fields are required)."""
    fown.uid = fown.euid = fown.signum = fown.pid_type = fown.pid = 0


def regular_file(path: str, stat: os.stat_result, flags: int, pos: int):
    return file_entry("REG", "reg", flags=flags, pos=pos, name=path, size=stat.st_size,
                      mode=stat.st_mode)


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

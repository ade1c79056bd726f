"""Builders for entries several plugins write (a REG file_entry names the
exe, a mapped file, a cwd, or an open fd alike; criu/files-reg.c)."""
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

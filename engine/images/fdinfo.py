"""/proc/PID/fdinfo/N, every line format the kernel writes, parsed once.

Every fd's file starts with ``pos``, ``flags`` (octal), ``mnt_id`` and
``ino`` (fs/proc/fd.c); then its file's own ``show_fdinfo`` adds lines:

- eventfd: ``eventfd-count`` (hex), ``eventfd-id``, ``eventfd-semaphore``;
- epoll: one ``tfd: N events: X data: X pos:N ino:X sdev:X`` line per
  watched fd (fs/eventpoll.c);
- signalfd: ``sigmask`` (hex);
- timerfd: ``clockid``, ``ticks``, ``settime flags`` (octal),
  ``it_value: (sec, nsec)``, ``it_interval: (sec, nsec)``;
- inotify: one ``inotify wd:X ino:X sdev:X mask:X ignored_mask:X
  fhandle-bytes:X fhandle-type:X f_handle:HEX`` line per watch, all hex
  (fs/notify/fdinfo.c);
- fanotify: ``fanotify flags:X event-flags:X`` for the group, then one
  ``fanotify ino:X ...``, ``fanotify mnt_id:X ...`` or ``fanotify sdev:X ...``
  line per mark (inode, mount or filesystem), all hex;
- pidfd: ``Pid`` and ``NSpid`` (-1 once the process is gone);
- pty master: ``tty-index``; BPF map: ``map_type``, ``map_flags`` (0x...) ...;
- any file with a lock: one ``lock:`` line per lock (kept as text).

``parse`` returns a dict: each ``key: value`` line under the kernel's key,
typed as the kernel printed it (a line not listed here stays a string), and
the repeated lines as lists of dicts: ``tfd``, ``inotify``,
``fanotify-marks``, and ``lock`` (strings). ``fanotify`` is the group's dict.
"""
from __future__ import annotations

import os
import re


def _dec(v: str) -> int:
    return int(v, 10)


def _hex(v: str) -> int:
    return int(v, 16)


def _oct(v: str) -> int:
    return int(v, 8)


def _c_int(v: str) -> int:
    # printf's %#x: "0x1f", or "0" (no prefix for zero)
    return int(v, 0)


def _pair(v: str) -> tuple[int, int]:
    sec, nsec = v.strip("()").split(",")
    return int(sec), int(nsec)


def _dec_list(v: str) -> list[int]:
    return [int(x) for x in v.split()]


# key: value lines, by the printf format the kernel uses for each.
LINE_FORMATS = {
    "pos": _dec, "flags": _oct, "mnt_id": _dec, "ino": _dec,
    "eventfd-count": _hex, "eventfd-id": _dec, "eventfd-semaphore": _dec,
    "sigmask": _hex,
    "clockid": _dec, "ticks": _dec, "settime flags": _oct,
    "it_value": _pair, "it_interval": _pair,
    "Pid": _dec, "NSpid": _dec_list,
    "tty-index": _dec,
    "map_type": _dec, "key_size": _dec, "value_size": _dec, "max_entries": _dec,
    "map_flags": _c_int, "map_extra": _c_int, "memlock": _dec, "map_id": _dec,
    "frozen": _dec,
}

# The fields of each repeated line (a field not listed stays a string).
TFD_FIELDS = {"tfd": _dec, "events": _hex, "data": _hex, "pos": _dec, "ino": _hex,
              "sdev": _hex}
INOTIFY_FIELDS = {"wd": _hex, "ino": _hex, "sdev": _hex, "mask": _hex, "ignored_mask": _hex,
                  "fhandle-bytes": _hex, "fhandle-type": _hex, "f_handle": bytes.fromhex}
FANOTIFY_FIELDS = {"flags": _hex, "event-flags": _hex, "ino": _hex, "mnt_id": _hex,
                   "sdev": _hex, "mflags": _hex, "mask": _hex, "ignored_mask": _hex,
                   "fhandle-bytes": _hex, "fhandle-type": _hex, "f_handle": bytes.fromhex}

# "key:value" pairs of a repeated line; epoll pads values with spaces.
_PAIRS = re.compile(r"([^\s:]+):\s*(\S+)")
_COMMON = {b"pos": "pos", b"flags": "flags", b"mnt_id": "mnt_id"}


def parse(text: bytes | str) -> dict:
    """Every line of one fdinfo file (see the module docstring)."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "surrogateescape")
    out: dict = {}
    for line in text.splitlines():
        if line.startswith("tfd:"):
            out.setdefault("tfd", []).append(_fields(line, TFD_FIELDS))
        elif line.startswith("inotify "):
            out.setdefault("inotify", []).append(_fields(line[8:], INOTIFY_FIELDS))
        elif line.startswith("fanotify "):
            entry = _fields(line[9:], FANOTIFY_FIELDS)
            if "event-flags" in entry:
                out["fanotify"] = entry
            else:
                out.setdefault("fanotify-marks", []).append(entry)
        elif line.startswith("lock:"):
            out.setdefault("lock", []).append(line[5:].strip())
        else:
            key, colon, value = line.partition(":")
            if colon:
                value = value.strip()
                convert = LINE_FORMATS.get(key)
                out[key] = convert(value) if convert is not None else value
    return out


def _fields(text: str, formats: dict) -> dict:
    entry = {}
    for key, value in _PAIRS.findall(text):
        convert = formats.get(key)
        entry[key] = convert(value) if convert is not None else value
    return entry


def read(pid: int, fd: int) -> dict:
    """parse() of /proc/PID/fdinfo/FD, read to its end (an epoll watching
    many fds writes more than a page)."""
    h = os.open(f"/proc/{pid}/fdinfo/{fd}", os.O_RDONLY | os.O_CLOEXEC)
    try:
        chunks = []
        while chunk := os.read(h, 65536):
            chunks.append(chunk)
    finally:
        os.close(h)
    return parse(b"".join(chunks))


def read_common(pid: int, fd: int) -> dict[str, int]:
    """pos, flags and mnt_id of one fd: the fast path a dump takes for
    every fd. One open, read and close of the raw bytes (a Python text file
    costs several times the syscalls), and only the first three lines,
    which are these in every kernel since 3.15."""
    h = os.open(f"/proc/{pid}/fdinfo/{fd}", os.O_RDONLY | os.O_CLOEXEC)
    try:
        text = os.read(h, 4096)
    finally:
        os.close(h)
    out = {}
    for line in text.split(b"\n", 3)[:3]:
        key, _, value = line.partition(b":")
        if key in _COMMON:
            out[_COMMON[key]] = int(value, 8 if key == b"flags" else 10)
    return out

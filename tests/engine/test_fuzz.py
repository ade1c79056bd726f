"""Spoilt images (issue 20): a seeded, bounded fuzz of a small rich image set
(tests/targets/fuzzmix.c: two tasks, a pipe with bytes, a bound unix socket
with a queued datagram, a deleted file).

Each round spoils one image of a pristine copy: truncated, a byte flipped, a
length prefix changed, a field of an entry set to a hostile value (through
the protobuf classes), or an image deleted. Each restore must end within
BOUND seconds, with exit 0 and a tree that passes --verify and then its own
check, or a non-zero exit with one error line and no traceback; either way
nothing may be left behind: no task, no file beside the target's own, no
live socket. ENGINE_FUZZ_ROUNDS and ENGINE_FUZZ_SEED run it longer or
otherwise (`-s` with ENGINE_FUZZ_SHOW=1 prints refusals naming no image).
"""
from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from engine.images.framing import read_entries, write_entries
from engine.images.kinds import IMG_COMMON_MAGIC, IMG_SERVICE_MAGIC, default_registry
from engine.testing import dump_to, engine_command, task_gone
from engine.testing.reaper import children, kill_children

ROUNDS = int(os.environ.get("ENGINE_FUZZ_ROUNDS", "150"))
SEED = int(os.environ.get("ENGINE_FUZZ_SEED", "20"))
BOUND = 30.0                  # seconds a restore may take, spoilt or not
CONTENT = " (content)"
HOSTILE_INTS = (0, 1, -1, 7, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF, 1 << 32, (1 << 63) - 1,
                1 << 63, (1 << 64) - 1)
HOSTILE_STRINGS = ("", "..", "../../../../etc/shadow", "/etc/shadow", "a\0b", "x" * 4097)
# (min, max) of each protobuf integer type
_SIGNED = {"TYPE_INT32": (-(1 << 31), (1 << 31) - 1), "TYPE_SINT32": (-(1 << 31), (1 << 31) - 1),
           "TYPE_SFIXED32": (-(1 << 31), (1 << 31) - 1), "TYPE_UINT32": (0, (1 << 32) - 1),
           "TYPE_FIXED32": (0, (1 << 32) - 1), "TYPE_INT64": (-(1 << 63), (1 << 63) - 1),
           "TYPE_SINT64": (-(1 << 63), (1 << 63) - 1), "TYPE_SFIXED64": (-(1 << 63), (1 << 63) - 1),
           "TYPE_UINT64": (0, (1 << 64) - 1), "TYPE_FIXED64": (0, (1 << 64) - 1)}


# --- spoiling ---------------------------------------------------------------------

def _truncate(rng, path: Path, data: bytes) -> str:
    cut = rng.randrange(len(data)) if data else 0
    path.write_bytes(data[:cut])
    return f"{path.name} cut at {cut} of {len(data)}"


def _flip(rng, path: Path, data: bytes) -> str:
    if not data:
        return _delete(rng, path, data)
    at = rng.randrange(len(data))
    spoilt = bytearray(data)
    spoilt[at] ^= rng.randrange(1, 256)
    path.write_bytes(bytes(spoilt))
    return f"{path.name} byte {at} flipped{_content(path, data, at) or _unchecked(path, data)}"


def _length_prefix(rng, path: Path, data: bytes) -> str:
    """The size of one entry (u32 after the magic, or after an earlier entry
    when the kind has no payload) set to something else."""
    first = int.from_bytes(data[:4], "little")
    pos = 8 if first in (IMG_COMMON_MAGIC, IMG_SERVICE_MAGIC) else 4
    prefixes = []
    while pos + 4 <= len(data):
        size = int.from_bytes(data[pos:pos + 4], "little")
        prefixes.append((pos, size))
        pos += 4 + size
        if pos > len(data):
            break
    if not prefixes:
        return _flip(rng, path, data)
    at, size = rng.choice(prefixes[:8])
    new = rng.choice((0, 1, size - 1, size + 1, size * 2, 0x7FFFFFFF, 0xFFFFFFFF)) & 0xFFFFFFFF
    spoilt = bytearray(data)
    spoilt[at:at + 4] = new.to_bytes(4, "little")
    path.write_bytes(bytes(spoilt))
    return (f"{path.name} length prefix at {at}: {size} -> {new}"
            f"{_content(path, data, at) or _unchecked(path, data)}")


def _content(path: Path, data: bytes, at: int) -> str:
    """CONTENT when byte `at` is data the format keeps no check of (pages,
    queued bytes, a ghost's content): a restore may then succeed and the
    target find its data changed, as with CRIU."""
    found = default_registry().for_filename(path.name)
    if found is None or not found[0].module:
        return CONTENT
    kind = found[0]
    if not kind.payload:
        return ""
    first = int.from_bytes(data[:4], "little")
    pos = 8 if first in (IMG_COMMON_MAGIC, IMG_SERVICE_MAGIC) else 4
    fields = (kind.payload,) if isinstance(kind.payload, str) else kind.payload
    i = 0
    while pos + 4 <= len(data):
        size = int.from_bytes(data[pos:pos + 4], "little")
        msg = kind.message_class(first=i == 0)()
        try:
            msg.ParseFromString(data[pos + 4:pos + 4 + size])
        except Exception:  # noqa: BLE001 - not an entry: stop here
            return ""
        pos += 4 + size
        length = sum(getattr(msg, f) for f in fields)
        if pos <= at < pos + length:
            return CONTENT
        pos += length
        i += 1
    return ""


def _free(name: str) -> bool:
    """A field whose every value the kernel takes and no check can tell
    from the dumped one: registers and FPU state, the mm's own addresses."""
    return name.startswith(("thread_info.gpregs.", "thread_info.fpregs.", "mm_"))


def _unchecked(path: Path, before: bytes) -> str:
    """CONTENT when the image still parses and only _free fields changed."""
    found = default_registry().for_filename(path.name)
    if found is None or not found[0].module:
        return ""
    kind, copy = found[0], _scratch(path, before)
    try:
        old, new = read_entries(copy, kind), read_entries(path, kind)
    except Exception:  # noqa: BLE001 - it no longer parses: the engine must say so
        return ""
    finally:
        copy.unlink()
    if len(old) != len(new):
        return ""
    changed = set()
    for a, b in zip(old, new):
        a, b = (a[0], b[0]) if kind.payload else (a, b)
        values = {n: (str(getattr(o, f.name))) for o, f, n in _leaves(a)}
        changed |= {n for o, f, n in _leaves(b) if values.get(n) != str(getattr(o, f.name))}
    return CONTENT if changed and all(map(_free, changed)) else ""


def _scratch(path: Path, data: bytes) -> Path:
    copy = path.parent.parent / f"{path.name}.orig"
    copy.write_bytes(data)
    return copy


def _delete(rng, path: Path, data: bytes) -> str:
    path.unlink()
    return f"{path.name} deleted"


def _leaves(msg, prefix=""):
    """(message, field, name) of every scalar field a message could hold."""
    for field in msg.DESCRIPTOR.fields:
        name = f"{prefix}{field.name}"
        if field.message_type is not None:
            if field.label == field.LABEL_REPEATED:
                for i, sub in enumerate(getattr(msg, field.name)):
                    yield from _leaves(sub, f"{name}[{i}].")
            elif msg.HasField(field.name):
                yield from _leaves(getattr(msg, field.name), f"{name}.")
        else:
            yield msg, field, name


def _hostile_value(rng, field):
    kind = field.type
    names = {v: k for k, v in vars(type(field)).items() if k.startswith("TYPE_")}
    type_name = names.get(kind, "")
    if type_name == "TYPE_BOOL":
        return rng.choice((True, False))
    if type_name == "TYPE_STRING":
        return rng.choice(HOSTILE_STRINGS)
    if type_name == "TYPE_BYTES":
        return rng.choice((b"", b"\0" * 200, os.urandom(rng.randrange(1, 64))))
    if type_name == "TYPE_ENUM":
        return rng.choice([v.number for v in field.enum_type.values])
    if type_name in ("TYPE_DOUBLE", "TYPE_FLOAT"):
        return rng.choice((0.0, -1.0, 1e300))
    lo, hi = _SIGNED.get(type_name, (0, (1 << 32) - 1))
    return min(hi, max(lo, rng.choice(HOSTILE_INTS)))


def _field(rng, path: Path, data: bytes) -> str:
    found = default_registry().for_filename(path.name)
    if found is None:
        return _flip(rng, path, data)
    kind, _ = found
    entries = read_entries(path, kind)
    if not entries:
        return _flip(rng, path, data)
    i = rng.randrange(len(entries))
    msg = entries[i][0] if kind.payload else entries[i]
    leaves = list(_leaves(msg))
    if not leaves:
        return _flip(rng, path, data)
    owner, field, name = rng.choice(leaves)
    value = _hostile_value(rng, field)
    if field.label == field.LABEL_REPEATED:
        values = getattr(owner, field.name)
        if values and rng.random() < 0.7:
            values[rng.randrange(len(values))] = value
        else:
            values.append(value)
    else:
        setattr(owner, field.name, value)
    write_entries(path, kind, entries)
    return f"{path.name} entry {i}: {name} = {value!r:.40}{CONTENT if _free(name) else ''}"


SPOILERS = (_truncate, _flip, _length_prefix, _field, _field, _field, _delete)


# --- judging ---------------------------------------------------------------------

def _socket_is_live(path: Path) -> bool:
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        probe.connect(str(path))
        return True
    except OSError:
        return False
    finally:
        probe.close()


def _leftovers(workdir: Path, before: set[str], pids: list[int]) -> list[str]:
    found = [f"task {pid} left" for pid in pids if not task_gone(pid)]
    found += [f"process {pid} left" for pid in children()]
    now = {p.name for p in workdir.iterdir()}
    found += [f"file {name} left" for name in sorted(now - before - {"mix.sock", "result"})]
    sock = workdir / "mix.sock"
    if sock.exists() and _socket_is_live(sock):
        found.append("live socket mix.sock left")
    return found


def _end_restored(pids: list[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    kill_children()


@pytest.mark.slow
def test_spoilt_images_never_hang_leak_or_crash(build_target, target_runner, tmp_path):
    target = target_runner.start(build_target("fuzzmix"))
    pristine = tmp_path / "pristine"
    images = dump_to(target, pristine)
    pids = [e.pid for e in images.read("pstree")]
    before = {p.name for p in target.workdir.iterdir()} - {"mix.sock"}
    names = sorted(p.name for p in pristine.iterdir() if p.name.endswith(".img"))
    rng = random.Random(SEED)
    work = tmp_path / "img"
    cmd, env = engine_command("restore", "-D", work, "--verify")
    problems, outcomes = [], {"refused": 0, "restored": 0}
    started = time.monotonic()
    for round_ in range(ROUNDS):
        shutil.rmtree(work, ignore_errors=True)
        shutil.copytree(pristine, work)
        path = work / rng.choice(names)
        spoiler = rng.choice(SPOILERS)
        try:
            what = spoiler(rng, path, path.read_bytes())
        except Exception as e:  # noqa: BLE001 - a spoil protobuf itself refuses
            what = f"{path.name}: {spoiler.__name__} not applied ({e})"
        (target.workdir / "result").unlink(missing_ok=True)
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=BOUND)
        except subprocess.TimeoutExpired:
            problems.append(f"round {round_} ({what}): restore still running after {BOUND} s")
            _end_restored(pids)
            continue
        # --verify logs each difference on a line of its own before the error
        lines = [line for line in proc.stderr.strip().splitlines()
                 if not line.startswith("engine: engine.restore: verify: ")]
        if proc.returncode == 0:
            outcomes["restored"] += 1
            os.kill(target.pid, signal.SIGTERM)
            verdict = _verdict(target.workdir / "result")
            if verdict != "PASS" and not what.endswith(CONTENT):
                problems.append(f"round {round_} ({what}): restored, but the target says "
                                f"{verdict!r}")
            _end_restored(pids)
        else:
            outcomes["refused"] += 1
            if os.environ.get("ENGINE_FUZZ_SHOW") and lines and ".img" not in lines[0]:
                print(f"UNNAMED {what} -> {lines[0][:300]}")
            if (len(lines) != 1 or not lines[0].startswith("engine: error: ")
                    or "Traceback" in proc.stderr):
                problems.append(f"round {round_} ({what}): exit {proc.returncode}, "
                                f"stderr {proc.stderr[-400:]!r}")
        left = _leftovers(target.workdir, before, pids)
        if left:
            problems.append(f"round {round_} ({what}): {', '.join(left)}")
            _end_restored(pids)
    elapsed = time.monotonic() - started
    assert not problems, f"{len(problems)} of {ROUNDS} rounds ({outcomes}, {elapsed:.0f} s):\n" \
        + "\n".join(problems[:20])


def _verdict(result: Path, timeout: float = 10.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            text = result.read_text().strip()
        except FileNotFoundError:
            text = ""
        if text:
            return text
        time.sleep(0.01)
    return "(no result)"

"""Image I/O: CRIU's own images decode fully, ours round-trip, bad ones fail."""
import os
from pathlib import Path

import pytest

from engine.images import ImageDir, ImageError
from engine.images.framing import read_entries
from engine.images.kinds import default_registry
from engine.images.pagemap import PagemapReader, PagemapWriter

from tests.test_criu_fixtures import FIXTURES

needs_fixtures = pytest.mark.skipif(not FIXTURES.is_dir(), reason=f"no fixtures at {FIXTURES}")


def _unknown_fields(msg, path=""):
    from google.protobuf.unknown_fields import UnknownFieldSet
    found = [f"{path}#{f.field_number}" for f in UnknownFieldSet(msg)]
    for field, value in msg.ListFields():
        if field.message_type is None:
            continue
        values = value if field.is_repeated else [value]
        for i, v in enumerate(values):
            found += _unknown_fields(v, f"{path}.{field.name}[{i}]")
    return found


# Fields CRIU 4.2 writes that engine neither reads nor writes, kept as unknown
# fields (protobuf writes them back untouched): xsave field 9 (a message of
# two varints, zero in every image here) and inventory fields 12 (empty) and
# 13 (a UUID string naming the dump).
KNOWN_UNKNOWN = {".thread_info[0].fpregs[0].xsave[0]#9", "#12", "#13"}
TYPED = {"inventory", "pstree", "core", "ids", "mm", "pagemap", "fs", "fdinfo", "seccomp",
         "timens", "pipes-data"}


@needs_fixtures
@pytest.mark.parametrize("mode", ["counter", "files", "pipe"])
def test_criu_images_decode_with_nothing_unknown(mode):
    kinds = default_registry()
    for path in sorted((FIXTURES / mode / "images").iterdir()):
        found = kinds.for_filename(path.name)
        if path.name.startswith("pages-") or found is None or found[0].name not in TYPED:
            continue
        for entry in read_entries(path, found[0]):
            msg = entry[0] if isinstance(entry, tuple) else entry
            unknown = set(_unknown_fields(msg)) - KNOWN_UNKNOWN
            assert not unknown, f"{path.name}: {sorted(unknown)}"


@needs_fixtures
def test_pagemap_offsets_add_up_to_the_pages_file():
    reader = PagemapReader(FIXTURES / "counter" / "images", 30001)
    try:
        runs = list(reader.runs())
        assert sum(length for _, length, _ in runs) == len(reader.buffer)
        assert [off for _, _, off in runs] == sorted(off for _, _, off in runs)
    finally:
        reader.close()


def test_pagemap_round_trip_64_mib(tmp_path):
    writer = PagemapWriter(tmp_path, 42, 7)
    chunk = bytes(range(256)) * (4096 * 16 // 256)          # 64 KiB
    for i in range(1024):
        # a hole every 8 runs: separate pagemap entries
        writer.add(0x10000000 + (i + i // 8) * len(chunk), chunk)
    writer.close()
    reader = PagemapReader(tmp_path, 42)
    runs = list(reader.runs())
    assert len(runs) == 128 and sum(r[1] for r in runs) == 64 << 20
    assert reader.buffer[runs[5][2]:runs[5][2] + 256] == bytes(range(256))
    reader.close()


def test_write_then_read_round_trips(tmp_path):
    from engine.images.proto import tree_pb2
    images = ImageDir(tmp_path)
    images.write("pstree", [tree_pb2.pstree_entry(pid=7, ppid=0, pgid=7, sid=7, threads=[7])])
    assert images.read_one("pstree").threads == [7]


@pytest.mark.parametrize("damage, words", [
    (lambda b: b[:3], "truncated magic"),
    (lambda b: b[:4] + b"\0\0\0\0" + b[8:], "wrong magic"),
    (lambda b: b[:-2], "truncated"),
    (lambda b: b[:8] + b"\x05\0\0\0\xff\xff\xff\xff\xff", "does not parse"),
])
def test_damaged_image_names_file_and_fault(tmp_path, damage, words):
    from engine.images.proto import tree_pb2
    images = ImageDir(tmp_path)
    images.write("pstree", [tree_pb2.pstree_entry(pid=7, ppid=0, pgid=7, sid=7)])
    path = Path(images.path("pstree"))
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(ImageError) as err:
        images.read("pstree")
    assert str(err.value).startswith("pstree.img: ") and words in str(err.value)
    assert "\n" not in str(err.value)


def test_missing_image_is_named(tmp_path):
    with pytest.raises(ImageError, match="^core-5.img: missing$"):
        ImageDir(tmp_path).read("core", id=5)
    assert not os.path.exists(tmp_path / "core-5.img")


def test_file_names_are_told_apart_by_kind_and_id():
    from engine.images.kinds import ImageKind
    kinds = default_registry()                   # tcp-stream, hex ids, is sk_inet's
    # A kind registered later whose pattern also matches: the first one wins.
    kinds.register(ImageKind("core-shadow", "core-{id}.img", 2, "m", "e"))
    found = {name: kinds.for_filename(name) for name in (
        "core-12.img", "ipcns-var-5.img", "tcp-stream-1a.img", "pipes-data.img",
        "core-.img", "core-1a.img", "tcp-stream-1A.img", "core-1.img.bak", "xcore-1.img",
        "pages-1.img")}
    assert {n: (f[0].name, f[1]) for n, f in found.items() if f} == {
        "core-12.img": ("core", 12), "ipcns-var-5.img": ("ipcns-var", 5),
        "tcp-stream-1a.img": ("tcp-stream", 0x1a), "pipes-data.img": ("pipes-data", None)}
    assert kinds.get("userns").id_of("userns-7.img") == 7
    assert kinds.get("userns").id_of("userns-x.img") is None


def test_per_task_images_are_named_by_the_sets_pids(tmp_path):
    """ImageDir.pid_alias: a task the engine knows as host pid 32000 is
    core-4.img in a set imaged at its pid namespace's level; images of
    other kinds keep their ids."""
    from engine.images.proto import core_pb2
    images = ImageDir(str(tmp_path))
    images.pid_alias = {32000: 4}
    images.write("ids", [core_pb2.task_kobj_ids_entry(vm_id=7, files_id=1, fs_id=1,
                                                      sighand_id=1)], id=32000)
    images.write("fdinfo", [], id=32000)
    assert sorted(os.listdir(tmp_path)) == ["fdinfo-32000.img", "ids-4.img"]
    assert images.read_one("ids", id=32000).vm_id == 7
    assert images.ids("ids") == [32000]
    assert ImageDir(str(tmp_path)).ids("ids") == [4]


# --- who registers which kind --------------------------------------------------

# Images a restore does without when their plugin is off (hooks.toml says why).
NOT_NEEDED = {"cpuinfo.img"}


def _own_kinds(spec):
    from engine.images.kinds import KindRegistry, _register_from
    kinds = KindRegistry()
    _register_from(spec.module, kinds)
    return kinds


def test_each_plugin_lists_the_images_it_registers():
    """hooks.toml `images` (read for a disabled plugin, without importing it)
    says what the plugin's engine_register_images says, kind names included."""
    from engine.images.kinds import ENGINE, kind_name
    from engine.registry import load_specs
    engine_patterns = {k.pattern for k in ENGINE}
    for name, spec in load_specs().items():
        kinds = list(_own_kinds(spec))
        assert all(k.name == kind_name(k.pattern) for k in kinds), name
        registered = {k.pattern for k in kinds} - NOT_NEEDED
        # A plugin may list an engine kind it needs (files: fdinfo-N.img).
        assert registered == set(spec.images) - engine_patterns, name


def test_a_disabled_plugins_images_are_declared_needing_its_resource():
    from engine.registry import build
    from engine.images.kinds import plugin_kinds
    kinds = plugin_kinds(build(disable=("pipes", "files")))
    kind, _ = kinds.for_filename("pipes-data.img")
    assert (kind.resource, kind.plugin) == ("file:PIPE", "pipes")
    with pytest.raises(ImageError, match="^pipes-data.img: read by plugin pipes, which is "
                                         "disabled$"):
        read_entries("/nonexistent/pipes-data.img", kind)
    # An engine kind a disabled plugin lists still decodes, needing its resource.
    fdinfo = kinds.get("fdinfo")
    assert fdinfo.module and fdinfo.resource == "fds"
    assert kinds.get("cpuinfo").resource is None
    enabled = plugin_kinds(build())
    assert enabled.get("pipes-data").module and enabled.get("pipes-data").resource == "file:PIPE"


def test_restore_refuses_a_disabled_plugins_image_naming_the_resource(dumped_counter):
    from engine.testing import engine_fails, task_gone
    target, img = dumped_counter
    line = engine_fails("restore", "-D", img, "--disable", "fs")
    assert line.endswith(f"fs-{target.pid}.img: needs fs, provided by plugin fs, "
                         "which is disabled"), line
    assert task_gone(target.pid)


def test_show_decodes_every_image_of_a_dump_whatever_is_disabled(dumped_counter, engine_cli):
    import json
    target, img = dumped_counter
    shown = json.loads(engine_cli("show", img, "--disable", "fs").stdout)
    assert sorted(shown) == sorted(p.name for p in img.glob("*.img"))
    assert not {name: s["error"] for name, s in shown.items() if "error" in s}
    assert shown[f"fs-{target.pid}.img"]["entries"][0]["umask"] is not None


def _filled(msg):
    """`msg` with every required field set (zero values), recursively."""
    for field in msg.DESCRIPTOR.fields:
        if not field.is_required:
            continue
        if field.message_type is not None:
            _filled(getattr(msg, field.name))
        elif field.enum_type is not None:
            setattr(msg, field.name, field.enum_type.values[0].number)
        else:
            setattr(msg, field.name, field.default_value)
    return msg


def test_every_file_entry_body_decodes_with_crit(tmp_path):
    """CRIU's decoder reads each body of our file_entry under the same name:
    same field numbers and wire types (Debian's crit 3.17 predates pidfd,
    which it keeps as an unknown field)."""
    import json
    import subprocess
    from engine.images.proto import files_pb2
    bodies = [f for f in files_pb2.file_entry.DESCRIPTOR.fields if f.message_type is not None]
    entries = []
    for i, field in enumerate(bodies):
        entry = files_pb2.file_entry(type=files_pb2.UND, id=i)
        _filled(getattr(entry, field.name)).id = i
        entries.append(entry)
    ImageDir(tmp_path).write("files", entries)
    out = subprocess.run(["crit", "decode", "-i", str(tmp_path / "files.img")],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    decoded = json.loads(out.stdout)["entries"]
    assert [set(e) - {"type", "id"} for e in decoded] == [
        set() if f.name == "pidfd" else {f.name} for f in bodies]

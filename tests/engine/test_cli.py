"""The `engine` command end to end: show, plan, plugins, and bad input.

Bad input gets one line on stderr naming the image and what is wrong, a
non-zero exit, and no process left behind.
"""
import json
import os
import struct
import subprocess

import pytest

from engine.testing import engine_fails, task_gone


@pytest.fixture
def dumped(dumped_counter):
    return dumped_counter


def test_show_prints_every_image_as_json(dumped, engine_cli):
    target, img = dumped
    shown = json.loads(engine_cli("show", img).stdout)
    assert shown["pstree.img"]["entries"][0]["pid"] == target.pid
    assert f"core-{target.pid}.img" in shown


def test_our_images_decode_with_crit(dumped):
    """Debian's crit (CRIU's own decoder) reads every image we wrote."""
    target, img = dumped
    for path in sorted(img.iterdir()):
        if path.name.startswith("pages-") or path.suffix != ".img":
            continue
        out = subprocess.run(["crit", "decode", "-i", str(path)], capture_output=True, text=True)
        assert out.returncode == 0, f"{path.name}: {out.stderr}"
        decoded = json.loads(out.stdout)
        assert decoded["entries"], path.name
    pstree = json.loads(subprocess.run(["crit", "decode", "-i", str(img / "pstree.img")],
                                       capture_output=True, text=True).stdout)
    assert pstree["entries"][0]["pid"] == target.pid


def test_plan_prints_the_order(dumped, engine_cli):
    target, img = dumped
    out = engine_cli("plan", "-D", img).stdout.splitlines()
    keys = [line.split("[")[1].split(";")[0] for line in out]
    assert keys.index("pstree") < keys.index("files") < keys.index("mem") < keys.index("core")


def test_plugins_lists_origin_and_state(engine_cli):
    out = engine_cli("plugins", "--disable", "fs").stdout
    assert any(line.split()[:2] == ["fs", "off"] for line in out.splitlines())
    assert any(line.split()[:2] == ["mem", "on"] for line in out.splitlines())


def test_disabling_a_needed_plugin_fails_before_anything_starts(dumped, engine_cli):
    target, img = dumped
    line = engine_fails("restore", "-D", img, "--disable", "files")
    assert "fdinfo-" in line and "needs fds" in line and "files, which is disabled" in line
    assert task_gone(target.pid)


def test_truncated_image(dumped, engine_cli):
    target, img = dumped
    core = img / f"core-{target.pid}.img"
    core.write_bytes(core.read_bytes()[:-10])
    line = engine_fails("restore", "-D", img)
    assert f"core-{target.pid}.img" in line
    assert task_gone(target.pid)


def test_wrong_magic(dumped, engine_cli):
    target, img = dumped
    mm = img / f"mm-{target.pid}.img"
    data = bytearray(mm.read_bytes())
    data[4:8] = struct.pack("<I", 0x12345678)
    mm.write_bytes(bytes(data))
    line = engine_fails("restore", "-D", img)
    assert f"mm-{target.pid}.img" in line and "magic" in line
    assert task_gone(target.pid)


def test_missing_required_field(dumped, engine_cli):
    """A pstree entry without its required pid field."""
    target, img = dumped
    pstree = img / "pstree.img"
    data = pstree.read_bytes()
    from engine.images.proto import tree_pb2
    entry = tree_pb2.pstree_entry()
    entry.ParseFromString(data[12:])
    entry.ClearField("pid")
    body = entry.SerializePartialToString()
    pstree.write_bytes(data[:8] + struct.pack("<I", len(body)) + body)
    from engine.images import manifest
    manifest.note(str(img), "pstree.img")         # as a tool rewriting it would
    line = engine_fails("restore", "-D", img)
    assert "pstree.img" in line and "pid" in line
    assert task_gone(target.pid)


def test_pid_in_use(dumped, engine_cli):
    target, img = dumped
    from engine.images import ImageDir
    images = ImageDir(str(img))
    tree = images.read("pstree")
    tree[0].pid = os.getpid()            # surely taken: it is us
    tree[0].threads[:] = [os.getpid()]
    images.write("pstree", tree)
    line = engine_fails("restore", "-D", img)
    assert "pstree.img" in line and f"pid {os.getpid()} is in use" in line


def test_missing_image_dir(engine_cli, tmp_path):
    line = engine_fails("restore", "-D", tmp_path / "nope")
    assert "nope" in line


def test_dump_of_missing_pidengine_fails(tmp_path):
    line = engine_fails("dump", "-t", "999999", "-D", tmp_path / "img")
    assert "999999" in line


def test_check_probes_the_kernel(engine_cli):
    """Every probe runs for real on this kernel; each prints one line."""
    out = engine_cli("check").stdout.splitlines()
    assert len(out) == 5 and all(line.startswith("ok ") for line in out), out


def test_output_is_flushed_and_a_profile_written(tmp_path):
    """The command leaves with os._exit for speed: what it printed is all
    there (through a pipe), and under cProfile it exits normally, so the
    profile is written."""
    import sys
    out = subprocess.run([sys.executable, "-m", "engine", "plugins"], capture_output=True,
                         text=True, check=True).stdout
    assert out.splitlines()[-1].strip().startswith("provides:")
    assert out.count("provides:") >= 10
    prof = tmp_path / "engine.prof"
    subprocess.run([sys.executable, "-m", "cProfile", "-o", str(prof), "-m", "engine",
                    "plugins"], capture_output=True, check=True)
    assert prof.stat().st_size > 0

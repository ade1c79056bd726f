"""eventfd: counters, semaphore mode, flags, one in flight; hostile images."""
import pytest

from engine.testing import dump_to


@pytest.mark.parametrize("variant", ["dynamic-pie", "static-nopie"])
def test_eventfd_counters_and_semaphore(build_target, target_runner, dump_restore, tmp_path,
                                        variant):
    """0x1234567, a counter past 2^32, a semaphore of 3, a dup and one in a
    unix queue: each counter, mode and flag comes back."""
    target = target_runner.start(build_target("eventfd", variant))
    assert dump_restore(target, tmp_path / "img") == "PASS"


@pytest.mark.parametrize("field, value, want", [
    ("counter", 0xFFFFFFFFFFFFFFFF, "counter 0xffffffffffffffff is over the largest an "
                                    "eventfd holds (0xfffffffffffffffe)"),
    ("flags", 0o2 | 0o100, "flags 0o102 hold unknown bits 0o100"),
])
def test_hostile_eventfd_is_refused(build_target, target_runner, engine_cli, tmp_path,
                                    field, value, want):
    """files.img edited with the protobuf classes: one line naming the image,
    the entry and the field; no task left."""
    from engine.testing import engine_fails, task_gone
    target = target_runner.start(build_target("eventfd"))
    img = tmp_path / "img"
    images = dump_to(target, img)
    files = images.read("files")
    victim = next(e for e in files if e.HasField("efd"))
    setattr(victim.efd, field, value)
    images.write("files", files)
    line = engine_fails("restore", "-D", img)
    assert f"files.img: EVENTFD id {victim.id}: {want}" in line, line
    assert task_gone(target.pid)


def test_crit_decodes_eventfd(build_target, target_runner, tmp_path):
    """Debian's crit decodes files.img with the efd bodies: counter as dumped."""
    import json
    import shutil
    import subprocess
    if shutil.which("crit") is None:
        pytest.skip("crit is not installed")
    target = target_runner.start(build_target("eventfd"))
    img = tmp_path / "img"
    dump_to(target, img)
    target.kill()
    out = subprocess.run(["crit", "decode", "-i", str(img / "files.img")],
                         capture_output=True, text=True, check=True).stdout
    bodies = [e["efd"] for e in json.loads(out)["entries"] if "efd" in e]
    assert sorted(b["counter"] for b in bodies) == sorted([0x1234567, 0x123456789ab, 3, 0x42])
    assert any(b["flags"] & 1 for b in bodies)      # the semaphore bit


def test_disabled_plugin_refuses_the_image(build_target, target_runner, engine_cli, tmp_path):
    """--disable eventfd: an image holding eventfds is refused before
    anything starts, naming the resource; no task left."""
    from engine.testing import engine_fails, task_gone
    target = target_runner.start(build_target("eventfd"))
    img = tmp_path / "img"
    dump_to(target, img)
    line = engine_fails("restore", "--disable", "eventfd", "-D", img)
    assert "file:EVENTFD" in line, line
    assert task_gone(target.pid)

"""personality: the execution domain's flags of every thread (issue 15)."""
import pytest

from engine.images import ImageDir
from engine.testing import dump_to, engine_fails, task_gone


@pytest.mark.parametrize("variant", ["dynamic-pie", "static-nopie"])
def test_each_thread_keeps_its_personality(build_target, target_runner, dump_restore,
                                           tmp_path, variant):
    """UNAME26|ADDR_NO_RANDOMIZE in both threads: each reads it back, uname
    says 2.6 (and --verify compares /proc/PID/personality)."""
    target = target_runner.start(build_target("personality", variant))
    assert dump_restore(target, tmp_path / "img") == "PASS"


def test_threads_with_different_personalities_are_refused(build_target, target_runner,
                                                          engine_cli, tmp_path):
    """CRIU's image holds one personality per task: the dump refuses, naming
    the thread, and the target runs on untouched."""
    target = target_runner.start(build_target("personality", "static-nopie"), "--split")
    line = engine_fails("dump", "-t", target.pid, "-D", tmp_path / "img")
    assert line.startswith(f"engine: error: task {target.pid}: thread ")
    assert line.endswith("has personality 0x200000, its leader 0x60000: one per task is "
                         "all the image holds")
    assert target.verdict() == "PASS"


@pytest.mark.parametrize("value, want", [
    (0x0008, "tc.personality 0x8: execution domain 0x8 is not PER_LINUX"),
    (0x10000000, "tc.personality 0x10000000: flags 0x10000000 are not Linux's"),
])
def test_hostile_personality_is_refused(build_target, target_runner, tmp_path, value, want):
    target = target_runner.start(build_target("personality", "static-nopie"))
    img = tmp_path / "img"
    dump_to(target, img)
    images = ImageDir(str(img))
    core = images.read_one("core", id=target.pid)
    core.tc.personality = value
    images.write("core", [core], id=target.pid)
    assert engine_fails("restore", "-D", img) == f"engine: error: core-{target.pid}.img: {want}"
    assert task_gone(target.pid)

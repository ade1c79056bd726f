"""timens: time namespaces and their clocks (issue 18, item 4)."""
import pytest

from engine.testing import dump_restore, dump_to, engine_fails, task_gone


@pytest.mark.parametrize("variant", ["dynamic-pie", "static-nopie"])
def test_time_namespace_clocks_go_on(build_target, target_runner, tmp_path, variant):
    """CLOCK_MONOTONIC 400 days ahead inside: after restore the clocks go on
    from their dumped values, in the task and its child."""
    target = target_runner.start(build_target("timens", variant))
    assert dump_restore(target, tmp_path / "img") == "PASS"


def test_hostile_timens_image_is_refused(build_target, target_runner, tmp_path):
    target = target_runner.start(build_target("timens", "static-nopie"))
    images = dump_to(target, tmp_path / "img")
    ns_id = images.read_one("ids", id=target.pid).time_ns_id
    entry = images.read_one("timens", id=ns_id)
    entry.monotonic.tv_nsec = 2_000_000_000
    images.write("timens", [entry], id=ns_id)
    assert engine_fails("restore", "-D", tmp_path / "img") == (
        f"engine: error: timens-{ns_id}.img: monotonic.tv_nsec is not below 10^9")
    assert task_gone(target.pid)


def test_time_namespace_clock_beyond_the_kernels_fails_naming_it(build_target, target_runner,
                                                                 tmp_path):
    """A dumped clock far beyond what the kernel keeps (2^62 s): it refuses
    the offset and the restore fails in one line."""
    target = target_runner.start(build_target("timens", "static-nopie"))
    images = dump_to(target, tmp_path / "img")
    ns_id = images.read_one("ids", id=target.pid).time_ns_id
    entry = images.read_one("timens", id=ns_id)
    entry.monotonic.tv_sec = 1 << 62
    images.write("timens", [entry], id=ns_id)
    message = engine_fails("restore", "-D", tmp_path / "img")
    assert "timens offsets" in message and "\n" not in message, message
    assert task_gone(target.pid)

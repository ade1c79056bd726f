"""unix: AF_UNIX socket pairs with their queues, and what is refused."""
import pytest


@pytest.mark.parametrize("variant", ["dynamic-pie", "static-nopie"])
def test_socketpairs_with_queued_messages(build_target, target_runner, dump_restore, tmp_path,
                                          variant):
    target = target_runner.start(build_target("unixpair", variant))
    assert dump_restore(target, tmp_path / "img") == "PASS"


def test_absurd_buffer_size_is_refused(build_target, target_runner, engine_cli, tmp_path):
    from engine.images import ImageDir
    from engine.testing import engine_fails, task_gone
    target = target_runner.start(build_target("unixpair"))
    img = tmp_path / "img"
    engine_cli("dump", "-t", target.pid, "-D", img)
    target.reap()
    images = ImageDir(str(img))
    files = images.read("files")
    usk = next(e for e in files if e.HasField("usk"))
    usk.usk.opts.so_sndbuf = 0xFFFFFFFF
    images.write("files", files)
    line = engine_fails("restore", "-D", img)
    assert "files.img: unix socket id" in line and "so_sndbuf" in line
    assert task_gone(target.pid)


def test_queue_for_a_non_socket_is_refused(build_target, target_runner, engine_cli, tmp_path):
    from engine.images import ImageDir
    from engine.testing import engine_fails
    target = target_runner.start(build_target("unixpair"))
    img = tmp_path / "img"
    engine_cli("dump", "-t", target.pid, "-D", img)
    target.reap()
    images = ImageDir(str(img))
    packets = images.read("sk-queues")
    packets[0][0].id_for = 1             # the first files.img entry: a regular file
    images.write("sk-queues", packets)
    line = engine_fails("restore", "-D", img)
    assert "sk-queues.img: entry 0: id_for 1" in line


@pytest.mark.parametrize("variant", ["dynamic-pie", "static-nopie"])
def test_named_listening_and_connected_sockets(build_target, target_runner, dump_restore,
                                               tmp_path, variant):
    target = target_runner.start(build_target("unixbound", variant))
    assert dump_restore(target, tmp_path / "img") == "PASS"

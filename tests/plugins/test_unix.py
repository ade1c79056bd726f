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


@pytest.mark.parametrize("variant", ["dynamic-pie", "static-nopie"])
def test_fds_in_flight(build_target, target_runner, dump_restore, tmp_path, variant):
    target = target_runner.start(build_target("unixscm", variant))
    assert dump_restore(target, tmp_path / "img") == "PASS"


def _outside_socket(path):
    import socket
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    return sock


def test_external_peer_needs_the_option_and_is_reconnected(build_target, target_runner,
                                                            dump_restore, tmp_path):
    import socket
    from engine.testing import engine_fails
    outside = _outside_socket(tmp_path / "ext.sock")
    target = target_runner.start(build_target("unixext"), "--peer", tmp_path / "ext.sock")
    assert outside.recv(64) == b"before"
    line = engine_fails("dump", "-t", target.pid, "-D", tmp_path / "refused")
    assert "outside the dumped tree" in line and "--ext-unix-sk" in line
    assert dump_restore(target, tmp_path / "img", dump_args=("--ext-unix-sk",)) == "PASS"
    assert outside.recv(64, socket.MSG_DONTWAIT) == b"after"


def test_external_peer_gone_at_restore_is_refused(build_target, target_runner, engine_cli,
                                                  tmp_path):
    from engine.testing import engine_fails, task_gone
    outside = _outside_socket(tmp_path / "ext.sock")
    target = target_runner.start(build_target("unixext"), "--peer", tmp_path / "ext.sock")
    engine_cli("dump", "-t", target.pid, "-D", tmp_path / "img", "--ext-unix-sk")
    target.reap()
    outside.close()
    (tmp_path / "ext.sock").unlink()
    line = engine_fails("restore", "-D", tmp_path / "img")
    assert "external peer" in line and "ext.sock" in line
    assert task_gone(target.pid)

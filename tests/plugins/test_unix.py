"""unix: AF_UNIX socket pairs with their queues, and what is refused."""
import pytest

from engine.testing import dump_to


@pytest.mark.parametrize("variant", ["dynamic-pie", "static-nopie"])
def test_socketpairs_with_queued_messages(build_target, target_runner, dump_restore, tmp_path,
                                          variant):
    target = target_runner.start(build_target("unixpair", variant))
    assert dump_restore(target, tmp_path / "img") == "PASS"


def test_absurd_buffer_size_is_refused(build_target, target_runner, engine_cli, tmp_path):
    from engine.testing import engine_fails, task_gone
    target = target_runner.start(build_target("unixpair"))
    img = tmp_path / "img"
    images = dump_to(target, img)
    files = images.read("files")
    usk = next(e for e in files if e.HasField("usk"))
    usk.usk.opts.so_sndbuf = 0xFFFFFFFF
    images.write("files", files)
    line = engine_fails("restore", "-D", img)
    assert "files.img: unix socket id" in line and "so_sndbuf" in line
    assert task_gone(target.pid)


def test_queue_for_a_non_socket_is_refused(build_target, target_runner, engine_cli, tmp_path):
    from engine.testing import engine_fails
    target = target_runner.start(build_target("unixpair"))
    img = tmp_path / "img"
    images = dump_to(target, img)
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
    usk = [e["usk"] for e in _crit(tmp_path / "img" / "files.img") if "usk" in e]
    assert len([u for u in usk if u.get("deleted")]) == 1
    assert {u.get("name_dir") for u in usk} == {None, str(target.workdir)}


@pytest.mark.parametrize("variant", ["dynamic-pie", "static-nopie"])
def test_fds_in_flight(build_target, target_runner, dump_restore, tmp_path, variant):
    target = target_runner.start(build_target("unixscm", variant))
    assert dump_restore(target, tmp_path / "img") == "PASS"
    queues = _crit(tmp_path / "img" / "sk-queues.img")
    rights = [r for e in queues for scm in e.get("scm", ()) for r in scm["rights"]]
    assert len(rights) == 6


def _crit(path):
    """Entries as Debian's crit (CRIU's own decoder) reads them."""
    import json
    import subprocess
    out = subprocess.run(["crit", "decode", "-i", str(path)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)["entries"]


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


def _sysctl(name):
    with open(f"/proc/sys/net/core/{name}") as f:
        return int(f.read())


def _first(files, **want):
    return next(e.usk for e in files if e.HasField("usk")
                and all(getattr(e.usk, k) == v for k, v in want.items()))


def _listening_dgram(files, packets):
    _first(files, type=2).state = 10
    return "files.img: unix socket id", "a dgram socket cannot be listening"


def _connecting_stream(files, packets):
    u = _first(files, type=1, state=1)
    u.state, u.peer = 2, 0
    return "files.img: unix socket id", "a stream socket connecting"


def _rcvbuf_beyond_max(files, packets):
    _first(files, type=2).opts.so_rcvbuf = 2 * _sysctl("rmem_max") + 2
    return "files.img: unix socket id", "opts.so_rcvbuf"


def _negative_peek_off(files, packets):
    _first(files, type=2).opts.so_peek_off = -5
    return "files.img: unix socket id", "opts.so_peek_off = -5"


def _absurd_queue(files, packets):
    cap = 2 * max(_sysctl("wmem_max"), _sysctl("rmem_max"))
    p, _ = packets[0]
    p.length = cap + 1
    packets[0] = (p, b"x" * (cap + 1))
    return "sk-queues.img: entry 0: length", "beyond any buffer"


def _listener_with_peer(files, packets):
    _first(files, state=10).peer = _first(files, type=2).ino
    return "files.img: unix socket id", "a listening socket has no peer"


def _queue_for_pending(files, packets):
    listener = _first(files, state=10, type=1)
    pending = next(e for e in files if e.HasField("usk") and e.usk.peer == listener.ino)
    packets[0][0].id_for = pending.id
    return f"sk-queues.img: socket id {pending.id}", "not yet accepted has no messages"


@pytest.mark.parametrize("spoil", [_listening_dgram, _connecting_stream, _rcvbuf_beyond_max,
                                   _negative_peek_off, _absurd_queue, _listener_with_peer,
                                   _queue_for_pending])
def test_hostile_image_is_refused_before_anything_starts(build_target, target_runner,
                                                         engine_cli, tmp_path, spoil):
    from engine.testing import engine_fails, task_gone
    target = target_runner.start(build_target("unixbound"))
    img = tmp_path / "img"
    images = dump_to(target, img)
    files, packets = images.read("files"), images.read("sk-queues")
    image, what = spoil(files, packets)
    images.write("files", files)
    images.write("sk-queues", packets)
    line = engine_fails("restore", "-D", img)
    assert image in line and what in line
    assert task_gone(target.pid)


def test_right_that_is_no_file_is_refused(build_target, target_runner, engine_cli, tmp_path):
    from engine.testing import engine_fails, task_gone
    target = target_runner.start(build_target("unixscm"))
    img = tmp_path / "img"
    images = dump_to(target, img)
    packets = images.read("sk-queues")
    i, (p, _) = next((i, q) for i, q in enumerate(packets) if q[0].scm)
    p.scm[0].rights[0] = 99999
    images.write("sk-queues", packets)
    line = engine_fails("restore", "-D", img)
    assert f"sk-queues.img: entry {i}: right 99999 is not a file" in line
    assert task_gone(target.pid)


@pytest.mark.parametrize("variant", ["dynamic-pie", "static-nopie"])
def test_sockets_across_tasks(build_target, target_runner, dump_restore, tmp_path, variant):
    target = target_runner.start(build_target("unixtree", variant))
    assert dump_restore(target, tmp_path / "img") == "PASS"


@pytest.mark.parametrize("kind", [(), ("--dgram",)], ids=["stream", "dgram"])
def test_a_megabyte_queue(build_target, target_runner, dump_restore, tmp_path, kind):
    target = target_runner.start(build_target("unixqueue"), "--kib", "1024", *kind)
    assert dump_restore(target, tmp_path / "img") == "PASS"


# --- the targets' checks can fail: a message taken from a queue is noticed ---

@pytest.mark.parametrize("name,key,args,want", [
    ("unixbound", "srv", (), "dgram 1"),
    ("unixscm", "receiver", (), "stream:"),
    ("unixqueue", "receiver", ("--kib", "64"), "queue ends"),
])
def test_target_detects_a_lost_message(build_target, target_runner, name, key, args, want):
    import socket
    from engine.fds import pidfd_getfd
    target = target_runner.start(build_target(name), *args)
    with socket.socket(fileno=pidfd_getfd(target.pid, target.addr(key))) as sock:
        sock.recv(1 << 20, socket.MSG_DONTWAIT)
    verdict = target.verdict()
    assert verdict.startswith("FAIL") and want in verdict, verdict


# --- refused at dump, the target left running ---

def _still_running(pid):
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0] in "RS"


def test_bytes_written_to_a_pending_connection_are_refused(build_target, target_runner,
                                                           tmp_path):
    import socket
    from engine.fds import pidfd_getfd
    from engine.testing import engine_fails
    target = target_runner.start(build_target("unixbound"))
    with socket.socket(fileno=pidfd_getfd(target.pid, target.addr("pending"))) as sock:
        sock.send(b"early")
    line = engine_fails("dump", "-t", target.pid, "-D", tmp_path / "img")
    assert "written to a connection not yet accepted" in line
    assert _still_running(target.pid)


def test_a_pending_connection_from_outside_is_refused(build_target, target_runner,
                                                      tmp_path):
    import socket
    from engine.testing import engine_fails
    target = target_runner.start(build_target("unixbound"))
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as outside:
        outside.connect(str(target.workdir / "listen.sock"))
        line = engine_fails("dump", "-t", target.pid, "-D", tmp_path / "img")
    assert "connections from outside the dumped tree" in line
    assert _still_running(target.pid)


def test_a_name_taken_by_a_file_is_refused_before_anything_starts(build_target, target_runner,
                                                                  engine_cli, tmp_path):
    from engine.testing import engine_fails, task_gone
    target = target_runner.start(build_target("unixbound"))
    engine_cli("dump", "-t", target.pid, "-D", tmp_path / "img")
    target.reap()
    (target.workdir / "dgram.sock").unlink()
    (target.workdir / "dgram.sock").write_text("not a socket")
    line = engine_fails("restore", "-D", tmp_path / "img")
    assert "files.img: unix socket id" in line and "dgram.sock exists and is not a socket" in line
    assert task_gone(target.pid)


def test_show_prints_the_queues(build_target, target_runner, engine_cli, tmp_path):
    import json
    target = target_runner.start(build_target("unixpair"))
    engine_cli("dump", "-t", target.pid, "-D", tmp_path / "img")
    shown = json.loads(engine_cli("show", tmp_path / "img").stdout)
    sizes = sorted(e["payload_bytes"] for e in shown["sk-queues.img"]["entries"])
    assert sizes == [2, 4, 4, 4, 5, 5, 6]


@pytest.mark.parametrize("name", ["unixbound", "unixscm"])
def test_dump_leaves_queues_and_peek_offsets_as_they_were(build_target, target_runner,
                                                          engine_cli, tmp_path, name):
    target = target_runner.start(build_target(name))
    engine_cli("dump", "-t", target.pid, "-D", tmp_path / "img", "--leave-running")
    assert target.verdict() == "PASS"


@pytest.mark.parametrize("variant", ["dynamic-pie", "static-nopie"])
def test_o_async_and_its_owner(build_target, target_runner, dump_restore, tmp_path, variant):
    """O_ASYNC (nginx's channels arm it by FIOASYNC) comes back with the
    SIGIO owner and signal: a write after restore signals the owner."""
    target = target_runner.start(build_target("unixasync", variant))
    assert dump_restore(target, tmp_path / "img") == "PASS"

"""sk_inet: TCP and UDP sockets, established connections through TCP_REPAIR,
the network lock, the socket owner uid, and --disable sk_inet."""
import os
import socket

import pytest

from engine.testing import dump_to


def _state(pid):
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0]


def _conns(img):
    """The connections of an image set, as the network lock names them."""
    from engine.images import ImageDir
    from plugins.sk_inet import netlock
    from plugins.sk_inet.inet import connections
    out = set()
    for a, ap, b, bp in connections(ImageDir(str(img)).read("files")):
        _, a, b = netlock._family(a, b)          # v4-mapped ones are locked as v4
        out.add((a, ap, b, bp))
    return out


def _give_up(img):
    """A dump never restored: lift the lock it left (as a restore would)."""
    from plugins.sk_inet import netlock
    netlock.unlock(list(_conns(img)))


def _streams(img):
    from engine.images import ImageDir
    images = ImageDir(str(img))
    from plugins.sk_inet import engine_register_images
    engine_register_images(images.kinds)
    from plugins.sk_inet.inet import connected
    return [images.read("tcp-stream", id=e.isk.ino)[0][0] for e in images.read("files")
            if e.HasField("isk") and connected(e.isk)]


@pytest.mark.parametrize("args", [(), ("--v6",), ("--mapped",)], ids=["v4", "v6", "mapped"])
def test_tcp_pair_listener_and_udp(build_target, target_runner, dump_restore, tmp_path, args):
    from plugins.sk_inet import netlock
    target = target_runner.start(build_target("tcppair"), *args)
    assert dump_restore(target, tmp_path / "img") == "PASS"
    assert not _conns(tmp_path / "img") & netlock.locked()


def test_full_send_queues_come_back(build_target, target_runner, dump_restore, tmp_path):
    """Receive queues full, so data waits in the send queues, partly never
    sent (unsq_len): every byte arrives once after restore."""
    target = target_runner.start(build_target("tcppair"), "--bytes", "12000000")
    assert dump_restore(target, tmp_path / "img") == "PASS"
    streams = _streams(tmp_path / "img")
    assert any(s.outq_len for s in streams) and any(s.unsq_len for s in streams)


def test_hook_engine_dump_abort(build_target, target_runner, tmp_path):
    """A dump failing after the connection was locked and put in repair mode
    (files.img cannot be written) lets it go: repair off, lock removed, the
    target runs on with its data."""
    from engine.testing import engine_fails
    from plugins.sk_inet import netlock
    target = target_runner.start(build_target("tcppair"))
    img = tmp_path / "img"
    (img / "files.img").mkdir(parents=True)
    line = engine_fails("dump", "-t", target.pid, "-D", img)
    assert "files.img" in line
    port = target.addr("port")
    assert not [c for c in netlock.locked() if port in (c[1], c[3])]
    assert target.verdict() == "PASS"


def test_leave_running_lets_the_connection_go(build_target, target_runner, engine_cli,
                                              tmp_path):
    from plugins.sk_inet import netlock
    target = target_runner.start(build_target("tcppair"))
    engine_cli("dump", "-t", target.pid, "-D", tmp_path / "img", "--leave-running")
    assert not _conns(tmp_path / "img") & netlock.locked()
    assert target.verdict() == "PASS"


def test_disabled_sk_inet_restores_sockets_closed(build_target, target_runner, dump_restore,
                                                   tmp_path):
    """--disable sk_inet: the fallback gives never-connected sockets of the
    same family and type; the rest of the process comes back."""
    target = target_runner.start(build_target("tcppair"), "--expect-closed")
    img = tmp_path / "img"
    assert dump_restore(target, img, restore_args=("--disable", "sk_inet")) == "PASS"
    from plugins.sk_inet import netlock
    assert _conns(img) and not _conns(img) & netlock.locked()


# --- the socket owner uid (sk_uid) -----------------------------------------

@pytest.fixture
def netns():
    """A network namespace of our own, lo up, counting uid 1337's packets."""
    import subprocess
    name = f"engine-skuid-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        subprocess.run(["ip", "netns", "exec", name, "nft", "-f", "-"], check=True, text=True,
                       input="table inet owner {\n chain out {\n  type filter hook output "
                             "priority 0;\n  meta skuid 1337 counter\n }\n}\n")
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def _in_netns(ns, *args, check=True):
    """`engine ARGS` run inside network namespace `ns` (sock_diag sees its sockets)."""
    import subprocess
    import sys
    from engine.testing import AUTOLOAD_ENV, REPO_ROOT
    env = dict(os.environ, **{AUTOLOAD_ENV: "1", "PYTHONPATH": str(REPO_ROOT)})
    proc = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-m", "engine",
                           *map(str, args)], capture_output=True, text=True, env=env)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def _skuid_packets(ns) -> int:
    import re
    import subprocess
    out = subprocess.run(["ip", "netns", "exec", ns, "nft", "list", "chain", "inet", "owner",
                          "out"], capture_output=True, text=True, check=True).stdout
    return int(re.search(r"counter packets (\d+)", out).group(1))


def _start_tcpuid(build_target, target_runner, netns, tmp_path):
    """The tcpuid target, started inside `netns` (where the owner rule counts)."""
    exe = build_target("tcpuid")
    wrapper = tmp_path / "in-netns"
    wrapper.write_text(f'#!/bin/sh\nexec ip netns exec {netns} {exe} "$@"\n')
    wrapper.chmod(0o755)
    return target_runner.start(wrapper)


def test_socket_owner_uid_survives(build_target, target_runner, netns, tmp_path):
    """The client socket was made under fsuid 1337: after restore the owner
    match still counts its packets, and /proc/net/tcp shows uid 1337."""
    from engine.images import ImageDir
    from engine.testing import reap_dumped_tree
    target = _start_tcpuid(build_target, target_runner, netns, tmp_path)
    img = tmp_path / "img"
    before = _skuid_packets(netns)
    assert before > 0                         # the handshake and "before"
    _in_netns(netns, "dump", "-t", target.pid, "-D", img)
    target.reap()
    reap_dumped_tree(img)
    uids = sorted(e.isk.uid for e in ImageDir(str(img)).read("files") if e.HasField("isk"))
    assert uids == [0, 0, 1337]
    _in_netns(netns, "restore", "-D", img)
    restored = _skuid_packets(netns)
    assert target.verdict() == "PASS"
    assert _skuid_packets(netns) > restored   # "after" went out of uid 1337's socket


def test_uid_without_mapping_is_refused(build_target, netns, target_runner, tmp_path):
    """Restoring where uid 1337 has no mapping (a user namespace mapping only
    root) fails before anything starts, naming the entry and the uid."""
    import subprocess
    import sys
    from engine.testing import AUTOLOAD_ENV, REPO_ROOT, reap_dumped_tree
    target = _start_tcpuid(build_target, target_runner, netns, tmp_path)
    img = tmp_path / "img"
    _in_netns(netns, "dump", "-t", target.pid, "-D", img)
    target.reap()
    reap_dumped_tree(img)
    env = dict(os.environ, **{AUTOLOAD_ENV: "1", "PYTHONPATH": str(REPO_ROOT)})
    proc = subprocess.run(["unshare", "--user", "--map-root-user", sys.executable, "-m",
                           "engine", "restore", "-D", str(img)],
                          capture_output=True, text=True, env=env)
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "files.img: inet socket id" in lines[0], proc.stderr
    assert "uid 1337 has no mapping" in lines[0]
    assert target.pid not in [int(p) for p in os.listdir("/proc") if p.isdigit()]


@pytest.mark.parametrize("drop", ["", "cap_setuid"], ids=["setfsuid", "fchown"])
def test_owned_socket_by_privilege(tmp_path, drop):
    """With CAP_SETUID the socket is made under setfsuid; without it (capsh
    drops it) it is fchown'ed; either way the kernel's sk_uid is 1337."""
    import subprocess
    import sys
    from engine.testing import REPO_ROOT
    script = tmp_path / "owned.py"
    script.write_text(
        "import os, socket\n"
        "from plugins.sk_inet.owner import owned_socket\n"
        "from engine.ns import effective_caps\n"
        "s = owned_socket(socket.AF_INET, socket.SOCK_STREAM, 6, 1337)\n"
        "s.bind(('127.0.0.1', 0)); s.listen()\n"
        "ino = str(os.fstat(s.fileno()).st_ino)\n"
        "print(effective_caps() >> 7 & 1, [l.split()[7] for l in open('/proc/net/tcp')\n"
        "                                   if l.split()[9] == ino])\n")
    cmd = [sys.executable, str(script)]
    if drop:
        cmd = ["capsh", f"--drop={drop}", "--", "-c", " ".join(cmd)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True,
                         env=dict(os.environ, PYTHONPATH=str(REPO_ROOT))).stdout
    assert out.split(None, 1) == ["0" if drop else "1", "['1337']\n"]


# --- bad images: refused before anything starts ------------------------------

def _dumped(build_target, target_runner, engine_cli, tmp_path):
    from plugins.sk_inet import engine_register_images
    target = target_runner.start(build_target("tcppair"))
    img = tmp_path / "img"
    images = dump_to(target, img)
    engine_register_images(images.kinds)
    return target, img, images


@pytest.mark.parametrize("what", ["family", "state", "src_addr", "sndbuf", "ifname",
                                  "unsq_len", "missing", "truncated"])
def test_bad_image_is_refused(build_target, target_runner, engine_cli, tmp_path, what):
    from engine.testing import engine_fails, task_gone
    from plugins.sk_inet import netlock
    target, img, images = _dumped(build_target, target_runner, engine_cli, tmp_path)
    conns = _conns(img)
    files = images.read("files")
    isk = next(e for e in files if e.HasField("isk") and e.isk.state == 1)
    stream = img / f"tcp-stream-{isk.isk.ino:x}.img"
    want = {"family": "files.img: inet socket id", "state": "files.img: inet socket id",
            "src_addr": "src_addr has 3 words", "sndbuf": "opts.so_sndbuf",
            "ifname": "ifname 'nosuch0': no such interface",
            "unsq_len": f"{stream.name}: unsq_len", "missing": f"{stream.name}: missing",
            "truncated": f"{stream.name}: entry 0"}[what]
    if what == "family":
        isk.isk.family = 99
    elif what == "state":
        isk.isk.state = 6                 # TIME_WAIT
    elif what == "src_addr":
        isk.isk.src_addr.extend([1, 2])
    elif what == "sndbuf":
        isk.isk.opts.so_sndbuf = 0
    elif what == "ifname":
        isk.isk.ifname = "nosuch0"
    elif what == "unsq_len":
        (entry, data), = images.read("tcp-stream", id=isk.isk.ino)
        entry.unsq_len = entry.outq_len + 1
        images.write("tcp-stream", [(entry, data)], id=isk.isk.ino)
    elif what == "truncated":
        stream.write_bytes(stream.read_bytes()[:-1])      # the queue, one byte short
        # engine-images.json would refuse the cut first: the plugin's own
        # check is for sets without it (CRIU's)
        (img / "engine-images.json").unlink()
    elif what == "missing":
        stream.unlink()
    images.write("files", files)
    line = engine_fails("restore", "-D", img)
    assert line.startswith("engine: error: ") and want in line, line
    assert task_gone(target.pid)
    assert conns <= netlock.locked()           # still locked, as the dump left it
    netlock.unlock(list(conns))
    assert not conns & netlock.locked()



def test_many_connections(build_target, target_runner, dump_restore, tmp_path):
    """The bench's target, smaller: 20 connections with 64 KiB queued each."""
    target = target_runner.start(build_target("tcpmany"), "--conns", "20")
    assert dump_restore(target, tmp_path / "img") == "PASS"


@pytest.mark.parametrize("args", [(), ("--v6",)], ids=["v4", "v6"])
def test_connections_not_yet_accepted(build_target, target_runner, dump_restore, tmp_path,
                                      args):
    """A listener's accept queue (both clients in the tree) comes back: the
    clients reconnect and resend what the server had not read."""
    from plugins.sk_inet import netlock
    target = target_runner.start(build_target("tcppending"), *args)
    assert dump_restore(target, tmp_path / "img") == "PASS"
    assert not _conns(tmp_path / "img") & netlock.locked()
    # The two clients, and the two server ends taken from the queue.
    assert sorted(s.inq_len for s in _streams(tmp_path / "img")) == [0, 0, 0, 3000]


def test_waiting_connections_refused_when_they_cannot_come_back(build_target, target_runner,
                                                                 tmp_path):
    """--leave-running would have to accept them away; a client outside the
    tree cannot reconnect: both refused in one line, the target runs on."""
    from engine.testing import engine_fails
    target = target_runner.start(build_target("tcppending"))
    line = engine_fails("dump", "-t", target.pid, "-D", tmp_path / "a", "--leave-running")
    assert "not yet accepted cannot be dumped with --leave-running" in line
    outsider = socket.create_connection(("127.0.0.1", target.addr("port")))
    try:
        line = engine_fails("dump", "-t", target.pid, "-D", tmp_path / "b")
        assert "a client outside the dumped tree" in line
        assert f"127.0.0.1:{outsider.getsockname()[1]}" in line
    finally:
        outsider.close()
    assert _state(target.pid) in ("S", "R")


def test_uid_fallback_restores_as_ours_and_warns(tmp_path):
    """--sk-inet-uid-fallback: an unmapped owner becomes the restorer's uid,
    with a warning (checked where uid 1337 has no mapping)."""
    import subprocess
    import sys
    from engine.testing import REPO_ROOT
    code = ("import logging; logging.basicConfig()\n"
            "from engine.images.proto import sk_inet_pb2\n"
            "from plugins.sk_inet.owner import uid_for\n"
            "print(uid_for(None, sk_inet_pb2.inet_sk_entry(ino=7, uid=1337)))\n")
    proc = subprocess.run(["unshare", "--user", "--map-root-user", sys.executable, "-c", code],
                          capture_output=True, text=True, check=True,
                          env=dict(os.environ, PYTHONPATH=str(REPO_ROOT)))
    assert proc.stdout.strip() == "0"
    assert "uid 1337 has no mapping here: restored as uid 0" in proc.stderr


def test_owner_uid_translated_through_the_restoring_user_namespace(tmp_path):
    """Images name the owner as the dumping engine's namespace does; a
    restorer in a user namespace below it (map "500 0 1": our root is its
    500) names the same user 500, with no warning."""
    import subprocess
    import sys
    from engine.testing import REPO_ROOT
    code = ("import logging; logging.basicConfig()\n"
            "from engine.images.proto import sk_inet_pb2\n"
            "from plugins.sk_inet.owner import uid_for\n"
            "print(uid_for(None, sk_inet_pb2.inet_sk_entry(ino=7, uid=0)))\n")
    proc = subprocess.run(["unshare", "--user", "--map-user=500", "--map-group=500",
                           sys.executable, "-c", code],
                          capture_output=True, text=True, check=True,
                          env=dict(os.environ, PYTHONPATH=str(REPO_ROOT)))
    assert (proc.stdout.strip(), proc.stderr) == ("500", "")


def test_engine_show_decodes_tcp_streams(build_target, target_runner, engine_cli, tmp_path):
    import json
    target = target_runner.start(build_target("tcppair"))
    engine_cli("dump", "-t", target.pid, "-D", tmp_path / "img")
    target.reap()
    shown = json.loads(engine_cli("show", tmp_path / "img").stdout)
    _give_up(tmp_path / "img")
    streams = [v["entries"][0] for k, v in shown.items() if k.startswith("tcp-stream-")]
    assert sorted(s["inq_len"] for s in streams) == [5000, 5000]
    assert all(s["payload_bytes"] == s["inq_len"] + s["outq_len"] for s in streams)
    isks = [e["isk"] for e in shown["files.img"]["entries"] if "isk" in e]
    assert {i["state"] for i in isks} == {1, 7, 10}


def test_listener_port_held_by_time_wait_is_reclaimed(build_target, target_runner,
                                                      engine_cli, tmp_path):
    """Between dump and restore a client used the listener's port as its
    ephemeral one and left a TIME_WAIT there (which SO_REUSEADDR does not
    pass): the restore destroys it and the listener comes back."""
    import time
    from engine.testing import reap_dumped_tree
    target = target_runner.start(build_target("tcppair"))
    port = target.addr("port")
    engine_cli("dump", "-t", target.pid, "-D", tmp_path / "img")
    target.reap()
    reap_dumped_tree(tmp_path / "img")
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        client = socket.socket()
        client.bind(("127.0.0.1", port))
        client.connect(server.getsockname())
        peer, _ = server.accept()
        client.close()                      # closes first: the TIME_WAIT is its
        time.sleep(0.05)
        peer.close()
    assert _time_waits(port)                 # what SO_REUSEADDR alone cannot bind over
    engine_cli("restore", "-D", tmp_path / "img")
    assert not _time_waits(port)
    assert target.verdict() == "PASS"


def _time_waits(port):
    import subprocess
    return subprocess.run(["ss", "-tnH", "state", "time-wait", "sport", "=", f":{port}"],
                          capture_output=True, text=True, check=True).stdout.strip()


@pytest.mark.parametrize("args", [(), ("--shared",)], ids=["split", "shared"])
def test_connection_between_two_tasks(build_target, target_runner, dump_restore, tmp_path,
                                      args):
    """Each end restored in its own task (each locks, rebuilds, leaves repair);
    shared: the server end is in both tasks, made once and passed."""
    target = target_runner.start(build_target("tcpfork"), *args)
    assert dump_restore(target, tmp_path / "img") == "PASS"


def test_crit_decodes_our_inet_images(build_target, target_runner, engine_cli, tmp_path):
    """Debian's crit (CRIU 3.17) reads files.img with INETSK entries and our
    tcp-stream images, queues included, as CRIU's own."""
    import json
    import subprocess
    target = target_runner.start(build_target("tcppending"))
    img = tmp_path / "img"
    dump_to(target, img)
    _give_up(img)
    files = json.loads(subprocess.run(["crit", "decode", "-i", str(img / "files.img")],
                                      capture_output=True, text=True, check=True).stdout)
    isks = [e["isk"] for e in files["entries"] if e["type"] == "INETSK"]
    assert sorted(i["state"] for i in isks) == [1, 1, 1, 1, 10]     # ESTABLISHED, LISTEN
    for path in img.glob("tcp-stream-*.img"):
        out = json.loads(subprocess.run(["crit", "decode", "-i", str(path)],
                                        capture_output=True, text=True, check=True).stdout)
        entry = out["entries"][0]
        assert out["magic"] == "TCP_STREAM" and "extra" in entry
        assert int(path.stem.split("-")[-1], 16) in {i["ino"] for i in isks}


@pytest.mark.parametrize("args", [(), ("--fill",)], ids=["fin-wait2", "fin-wait1"])
def test_half_closed_connection(build_target, target_runner, dump_restore, tmp_path, args):
    """FIN_WAIT2 and CLOSE_WAIT ends: the FIN comes back in its place, after
    the unread bytes, once; the open direction still carries data. fin-wait1:
    the FIN waits behind never-sent bytes."""
    target = target_runner.start(build_target("tcphalf"), *args)
    assert dump_restore(target, tmp_path / "img") == "PASS"
    if args:
        assert target.info["state"] == "4"              # FIN_WAIT1
        assert any(s.unsq_len for s in _streams(tmp_path / "img"))


def test_fin_from_outside_is_refused(build_target, target_runner, tmp_path):
    """A FIN received from a peer outside the tree cannot be sent again: the
    dump is refused in one line and the target runs on."""
    from engine.testing import engine_fails
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        target = target_runner.start(build_target("tcphalf"), "--connect",
                                     str(server.getsockname()[1]))
        peer, _ = server.accept()
        with peer:
            peer.shutdown(socket.SHUT_WR)      # the target's end: CLOSE_WAIT
            line = engine_fails("dump", "-t", target.pid, "-D", tmp_path / "img")
            assert "in CLOSE_WAIT: the peer that closed it is not in the dumped tree" in line
            assert target.verdict() == "PASS"

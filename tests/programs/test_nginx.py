"""nginx (Debian's nginx-light): a master and two workers, dumped and
restored while a keep-alive connection held by the test stays open: after
restore the same connection gets another response from its worker, and new
connections are served by the restored workers (issue 16)."""
from __future__ import annotations

import fcntl
import os
import socket

import pytest

from engine.testing import dump_to, engine_cli
from tests.programs import running

pytestmark = pytest.mark.slow

WORKERS = 2


def _start(tmp_path):
    exe = running.need("nginx")
    port = running.free_port()
    conf = tmp_path / "nginx.conf"
    temps = "".join(f"{kind}_temp_path {tmp_path}/{kind};\n"
                    for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    # Each response names the worker that served it ($pid).
    conf.write_text(f"daemon off;\nmaster_process on;\nworker_processes {WORKERS};\n"
                    f"pid {tmp_path}/nginx.pid;\nerror_log {tmp_path}/error.log;\n"
                    "events { worker_connections 64; }\n"
                    f"http {{\naccess_log off;\n{temps}"
                    f"server {{ listen 127.0.0.1:{port}; keepalive_timeout 300s;\n"
                    "  location / { return 200 \"$pid\"; } }\n}\n")
    target = running.start([exe, "-p", str(tmp_path), "-e", str(tmp_path / "error.log"),
                            "-c", str(conf)], tmp_path, port)
    return target, port


def _get(sock: socket.socket, keep: bool = True) -> tuple[dict, int]:
    """One HTTP/1.1 GET on sock: (headers, the serving worker's pid)."""
    sock.sendall(b"GET / HTTP/1.1\r\nHost: engine\r\nConnection: %s\r\n\r\n"
                 % (b"keep-alive" if keep else b"close"))
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(4096) or pytest.fail(f"nginx closed the connection: {data!r}")
    head, _, body = data.partition(b"\r\n\r\n")
    status, *lines = head.decode().split("\r\n")
    assert status == "HTTP/1.1 200 OK", status
    headers = dict(line.split(": ", 1) for line in lines)
    while len(body) < int(headers["Content-Length"]):
        body += sock.recv(4096)
    return headers, int(body)


def _served_by(port: int) -> int:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        return _get(sock, keep=False)[1]


def _workers(master: int) -> set[int]:
    return {int(p) for p in os.listdir("/proc") if p.isdigit()
            and _ppid(int(p)) == master}


def _ppid(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except OSError:
        return None


def _sigio_owners(pids) -> dict:
    """(pid, fd) -> SIGIO owner of each fd with O_ASYNC (nginx's channels)."""
    from engine.fds import pidfd_getfd
    owners = {}
    for pid in pids:
        for fd in map(int, os.listdir(f"/proc/{pid}/fd")):
            with open(f"/proc/{pid}/fdinfo/{fd}") as f:
                flags = int(f.read().split("flags:")[1].split()[0], 8)
            if flags & os.O_ASYNC:
                copy = pidfd_getfd(pid, fd)
                try:
                    owners[pid, fd] = fcntl.fcntl(copy, fcntl.F_GETOWN)
                finally:
                    os.close(copy)
    return owners


def test_nginx_master_workers_and_a_keepalive_connection(tmp_path):
    target, port = _start(tmp_path)
    workers = _workers(target.pid)
    assert len(workers) == WORKERS
    held = socket.create_connection(("127.0.0.1", port), timeout=10)
    headers, worker = _get(held)
    assert headers["Connection"] == "keep-alive" and worker in workers
    owners = _sigio_owners([target.pid, *workers])
    assert owners                                # O_ASYNC channels, SIGIO to the master
    img = tmp_path / "img"
    dump_to(target, img)
    engine_cli("restore", "-D", img, "--verify")
    assert _workers(target.pid) == workers
    assert _sigio_owners([target.pid, *workers]) == owners
    # The same connection, answered by the same (restored) worker...
    assert _get(held)[1] == worker
    assert _get(held)[1] == worker
    # ...and new connections, by the restored workers.
    assert {_served_by(port) for _ in range(8)} <= workers
    held.close()
    running.wait_closed(port)

    # A restore of a spoilt image set leaves nothing running, the port free.
    images = dump_to(running.Restored(target.pid), tmp_path / "again")
    pids = running.dumped_pids(images)
    assert sorted(pids) == sorted([target.pid, *workers])
    running.spoil_listener(images, port)
    line = running.refused_restore_leaves_nothing(tmp_path / "again", pids, port)
    assert f"(LISTEN on 192.0.2.1 port {port}): Cannot assign requested address" in line

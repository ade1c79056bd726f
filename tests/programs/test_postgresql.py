"""PostgreSQL (Debian's package): a server on a loopback port, with its
System V interlock segment attached by every process (in the engine's own
IPC namespace), is dumped, killed and restored while a client's connection
stays open; the client's next query is answered on that connection."""
import glob
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from engine.testing import children, engine_cli, reap_dumped_tree, task_gone

BIN = sorted(glob.glob("/usr/lib/postgresql/*/bin"))
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not BIN, reason="postgresql is installed by scripts/setup.sh")]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Client:
    """psql reading queries from a pipe: one connection for its life."""

    def __init__(self, port: int):
        self.proc = subprocess.Popen(
            ["psql", "-X", "-q", "-A", "-t", "-h", "127.0.0.1", "-p", str(port), "-U",
             "postgres", "-v", "ON_ERROR_STOP=1"], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)

    def ask(self, query: str) -> str:
        self.proc.stdin.write(query + "\n")
        self.proc.stdin.flush()
        return self.proc.stdout.readline().strip()

    def close(self):
        self.proc.kill()
        self.proc.wait()


@pytest.fixture
def postgres():
    base = Path(tempfile.mkdtemp(prefix="engine-pg-"))
    os.chmod(base, 0o755)
    as_postgres = dict(user="postgres", group="postgres", extra_groups=[])
    os.chown(base, *_ids())
    subprocess.run([f"{BIN[-1]}/initdb", "-D", str(base / "data"), "-A", "trust", "-U",
                    "postgres"], check=True, capture_output=True, cwd=base, **as_postgres)
    port = _free_port()
    server = subprocess.Popen([f"{BIN[-1]}/postgres", "-D", str(base / "data"), "-p", str(port),
                               "-k", str(base), "-c", "listen_addresses=127.0.0.1"],
                              stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True, cwd=base,
                              **as_postgres)
    deadline = time.monotonic() + 30
    while subprocess.run(["pg_isready", "-q", "-h", "127.0.0.1", "-p", str(port)]).returncode:
        assert time.monotonic() < deadline, "postgres did not start"
        time.sleep(0.1)
    yield server.pid, port
    os.kill(server.pid, signal.SIGINT)          # fast shutdown, its segment removed
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and not (task_gone(server.pid) and not children()):
        try:
            os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            pass
        time.sleep(0.05)
    shutil.rmtree(base, ignore_errors=True)


def _ids():
    import pwd
    p = pwd.getpwnam("postgres")
    return p.pw_uid, p.pw_gid


def _segment(pid: int) -> int:
    with open(f"/proc/{pid}/maps") as f:
        return next(int(line.split()[4]) for line in f if "/SYSV" in line)


def test_postgresql_answers_on_a_connection_held_through_restore(postgres, tmp_path):
    pid, port = postgres
    client = Client(port)
    try:
        assert client.ask("create table t as select 7 as x; select sum(x) from t;") == "7"
        shm_id = _segment(pid)
        img = tmp_path / "img"
        img.mkdir()
        engine_cli("dump", "-t", pid, "-D", img)
        reap_dumped_tree(img)
        # The interlock segment outlives its processes here, as after a
        # crash; on another machine it would not exist. Its id must be free.
        subprocess.run(["ipcrm", "-m", str(shm_id)], check=True)
        engine_cli("restore", "-D", img, "--verify")
        assert _segment(pid) == shm_id
        assert client.ask("insert into t values (35); select sum(x) from t;") == "42"
    finally:
        client.close()

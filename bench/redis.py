"""Dump and restore of Debian's redis-server holding 100 000 keys, the engine
beside CRIU 4.2 (issue 16, "Speed": target within 2x of CRIU both ways).

Run as root from the repo: `.venv/bin/python bench/redis.py [-n 5] [--keys 100000]`.
Each of N rounds starts a server (in the foreground, its own session) and
fills it through redis-cli --pipe; the engine dumps and restores it, then
CRIU (../shared/criu-4.2/criu, or --criu PATH) dumps and restores the same
server, so the two alternate in one run (the machine's speed drifts within
minutes). A fresh server each round: CRIU restores into a new time
namespace, which the engine does not dump yet. After each restore
redis-cli checks the keys are all there. Times
are whole commands (the engine's interpreter start included), restore
without --verify; medians and the ratio engine/CRIU are printed. CRIU is
skipped, saying why, when it cannot run here.
"""
from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from dump_restore import ROOT, become_subreaper  # noqa: E402

# ../shared/criu-4.2 beside the checkout (or beside a worktree's parent).
CRIU = next((p / "shared" / "criu-4.2" / "criu" for p in ROOT.parents
             if (p / "shared" / "criu-4.2" / "criu").exists()),
            ROOT.parent / "shared" / "criu-4.2" / "criu")
TIMEOUT = 60


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", type=int, default=5)
    ap.add_argument("--keys", type=int, default=100_000)
    ap.add_argument("--criu", type=Path, default=CRIU)
    opts = ap.parse_args()
    become_subreaper()
    with tempfile.TemporaryDirectory() as d:
        work = Path(d)
        criu = opts.criu if _criu_runs(opts.criu) else None
        tools = [("engine", Engine()), *([("CRIU 4.2", Criu(criu))] if criu else [])]
        times: dict[str, list[tuple[float, float]]] = {name: [] for name, _ in tools}
        for i in range(opts.n):
            server = Server(work, opts.keys)
            try:
                for name, tool in tools:
                    if name in times:
                        _one(server, name, tool, work / f"{name.split()[0]}-{i}", times)
            finally:
                server.kill()
        _report(times, opts)


def _one(server, name, tool, img, times) -> None:
    """One dump and restore by `tool`; a CRIU failure drops CRIU from the run."""
    img.mkdir()
    try:
        t_dump = tool.dump(server.pid, img)
        server.reap()
        t_restore = tool.restore(img)
        server.check()
    except RuntimeError as e:
        if name == "engine":
            raise SystemExit(f"engine: {e}")
        print(f"{name} skipped from here on: {e}")
        del times[name]
        return
    times[name].append((t_dump, t_restore))
    shutil.rmtree(img)


def _report(times, opts) -> None:
    med = {name: (statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs))
           for name, runs in times.items() if runs}
    print(f"redis-server, {opts.keys} keys, median of {opts.n}:")
    for name, (dump, restore) in med.items():
        print(f"  {name:9s} dump {dump * 1000:8.1f} ms   restore {restore * 1000:8.1f} ms")
    if len(med) == 2:
        (_, (ed, er)), (_, (cd, cr)) = med.items()
        print(f"  engine/CRIU  dump {ed / cd:5.2f}x      restore {er / cr:5.2f}x")


class Server:
    """redis-server in the foreground (--daemonize no), its own session."""

    def __init__(self, work: Path, keys: int):
        self.work, self.keys = work, keys
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.start()

    def start(self) -> None:
        conf = self.work / "redis.conf"
        conf.write_text(f"port {self.port}\nbind 127.0.0.1\ndaemonize no\nsave \"\"\n"
                        f"appendonly no\ndir {self.work}\nlogfile \"\"\n")
        with open(self.work / "redis.log", "ab") as log:
            self.proc = subprocess.Popen(["redis-server", str(conf)], stdin=subprocess.DEVNULL,
                                         stdout=log, stderr=log, start_new_session=True)
        self.pid = self.proc.pid
        deadline = time.monotonic() + 10
        while self.cli("PING", check=False) != "PONG":
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"redis-server did not start: {self.work / 'redis.log'}")
            time.sleep(0.01)
        self._fill()

    def _fill(self) -> None:
        out = bytearray()
        for i in range(self.keys):
            k, v = b"key:%d" % i, b"value-%d" % (i * 7919 % 1000003)
            out += b"*3\r\n$3\r\nSET\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n" % (len(k), k, len(v), v)
        subprocess.run(["redis-cli", "-p", str(self.port), "--pipe"], input=bytes(out),
                       check=True, stdout=subprocess.DEVNULL, timeout=TIMEOUT)
        self.check()

    def cli(self, *args: str, check: bool = True) -> str:
        proc = subprocess.run(["redis-cli", "-p", str(self.port), *args], capture_output=True,
                              text=True, timeout=TIMEOUT)
        if check and proc.returncode:
            raise RuntimeError(f"redis-cli {' '.join(args)}: {proc.stderr.strip()}")
        return proc.stdout.strip()

    def check(self) -> None:
        size = self.cli("DBSIZE", check=False)
        if size != str(self.keys):
            raise RuntimeError(f"after restore DBSIZE says {size!r}, want {self.keys}")

    def reap(self) -> None:
        """The dumped server is our child (the first) or came to us, the subreaper."""
        try:
            os.waitpid(self.pid, 0)
        except ChildProcessError:
            pass
        self.proc.returncode = self.proc.returncode or -9   # Popen must not reap a restored one

    def kill(self) -> None:
        try:
            os.kill(self.pid, 9)
            os.waitpid(self.pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass


def _timed(argv: list[str], env: dict | None = None, cwd: Path | None = None) -> float:
    t = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=cwd,
                          timeout=TIMEOUT)
    took = time.perf_counter() - t
    if proc.returncode:
        tail = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise RuntimeError(f"{Path(argv[0]).name} {argv[1]} exit {proc.returncode}: {tail}")
    return took


class Engine:
    def __init__(self):
        self.env = dict(os.environ, PYTHONPATH=str(ROOT))
        self.cmd = [sys.executable, "-m", "engine"]

    def dump(self, pid: int, img: Path) -> float:
        return _timed([*self.cmd, "dump", "-t", str(pid), "-D", str(img)], self.env)

    def restore(self, img: Path) -> float:
        return _timed([*self.cmd, "restore", "-D", str(img)], self.env)


class Criu:
    # A server in its own session with a listener: --shell-job and
    # --ext-unix-sk are not needed; --tcp-established in case a client is on.
    ARGS = ["--tcp-established"]

    def __init__(self, exe: Path):
        self.exe = str(exe)

    def dump(self, pid: int, img: Path) -> float:
        return _timed([self.exe, "dump", "-t", str(pid), "-D", str(img), "-o", "dump.log",
                       *self.ARGS])

    def restore(self, img: Path) -> float:
        # -d: criu exits once the tree runs (the root comes to us, the subreaper).
        return _timed([self.exe, "restore", "-D", str(img), "-o", "restore.log", "-d",
                       *self.ARGS])


def _criu_runs(exe: Path) -> bool:
    if not os.access(exe, os.X_OK):
        print(f"CRIU skipped: {exe} not found")
        return False
    proc = subprocess.run([str(exe), "check"], capture_output=True, text=True, timeout=TIMEOUT)
    if proc.returncode:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        print(f"CRIU skipped: `{exe} check` failed: {last}")
        return False
    return True


if __name__ == "__main__":
    main()

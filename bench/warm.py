"""A warm `engine service` beside CRIU 4.2's cold `criu restore`, in turns.

Run as root from the repo: `.venv/bin/python bench/warm.py [-n 5] [--only NAME]`.

Issue 19 item 2: a restore asked of a running `engine service` (CRIU's RPC,
plugins loaded and parsed before the request), timed at the client from
connect to the answer, must be at or below CRIU's cold `criu restore -d` for
a small process and 1000 fds, and within 1.5x for the 50-process tree.

Each round starts a fresh target, dumps it with CRIU and restores it with
`criu restore -d` (timed), then starts it again, dumps it with `engine dump`
(untimed: a dump is not what is measured here) and sends the service a
RESTORE request (timed). Medians and the ratio warm engine / cold CRIU are
printed. Where CRIU cannot run, the engine is measured alone, saying why.
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
import tree_threads  # noqa: E402
from vs_criu import (CRIU, _ms, _ratio, _timed, criu_commands, criu_usable,  # noqa: E402
                     engine_commands, workloads)

sys.path.insert(0, str(ROOT))
from engine.images.proto import rpc_pb2 as pb  # noqa: E402

WARM_WORKLOADS = ("small C counter", "1000 fds", "50-process tree")
TARGET = {"small C counter": 1.0, "1000 fds": 1.0, "50-process tree": 1.5}


def reap_all_but(keep: int) -> None:
    """tree_threads.reap_all, but the service (a child of this process) is
    left alone: wait for every other child, those the restores reparented
    here included."""
    while True:
        children = {int(p) for t in os.listdir("/proc/self/task")
                    for p in Path(f"/proc/self/task/{t}/children").read_text().split()}
        children.discard(keep)
        if not children:
            return
        for pid in children:
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass


def start_service(address: Path, env: dict) -> subprocess.Popen:
    service = subprocess.Popen([sys.executable, "-m", "engine", "service", "--address",
                                str(address)], env=env, cwd=ROOT,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    end = time.monotonic() + 30
    while not address.exists():
        if service.poll() is not None or time.monotonic() > end:
            raise SystemExit(f"engine service did not start: "
                             f"{service.stderr.read().decode(errors='replace')[-500:]}")
        time.sleep(0.01)
    return service


def rpc_restore(address: Path, img: Path) -> tuple[float, int]:
    """(seconds from connect to answer, restored root's pid) of one RESTORE."""
    fd = os.open(img, os.O_RDONLY | os.O_DIRECTORY)
    try:
        req = pb.criu_req(type=pb.RESTORE, opts=pb.criu_opts(
            images_dir_fd=fd, log_level=1, log_file="rpc.log"))
        t = time.perf_counter()
        with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as sock:
            sock.connect(str(address))
            sock.send(req.SerializeToString())
            resp = pb.criu_resp.FromString(sock.recv(1 << 20))
        took = time.perf_counter() - t
    finally:
        os.close(fd)
    if not resp.success:
        raise SystemExit(f"warm restore of {img} failed: {resp.cr_errmsg}")
    return took, resp.restore.pid


def one_round(w, tool: str, work: Path, criu: Path, address: Path, env: dict) -> float:
    img = work / f"img-{tool}"
    shutil.rmtree(img, ignore_errors=True)
    img.mkdir()
    proc = w.start(work)
    dump, restore = (criu_commands(criu, proc.pid, img) if tool == "criu"
                     else engine_commands(proc.pid, img))
    _timed(dump, env, ROOT)
    proc.wait()
    tree_threads.reap_all()
    if tool == "criu":
        took = _timed(restore, env, ROOT)
        pid = proc.pid
    else:
        took, pid = rpc_restore(address, img)
    w.check(pid, work, f"{tool} ({'cold' if tool == 'criu' else 'warm'})")
    tree_threads.reap_all()
    return took


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", type=int, default=5)
    ap.add_argument("--only", action="append", default=[], metavar="NAME")
    ap.add_argument("--criu", type=Path, default=CRIU)
    opts = ap.parse_args()
    become_subreaper()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPATH"] = str(ROOT)
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(ROOT / "engine"),
                    str(ROOT / "plugins")], check=True, stdout=subprocess.DEVNULL, env=env)
    why_not = criu_usable(opts.criu)
    tools = ["engine"] if why_not else ["criu", "engine"]
    if why_not:
        print(f"CRIU skipped: {why_not}")
    print(f"{'workload':18s} {'criu cold':>9s} {'engine warm':>11s}  ratio  target "
          f"(restore medians of {opts.n}, ms)")
    with tempfile.TemporaryDirectory() as d:
        work = Path(d)
        address = work / "criu.sock"
        service = start_service(address, env)
        # kill_tree (vs_criu's check) reaps through tree_threads.reap_all
        tree_threads.reap_all = lambda: reap_all_but(service.pid)
        try:
            for w in workloads(work):
                if w.name not in WARM_WORKLOADS:
                    continue
                if opts.only and not any(s in w.name for s in opts.only):
                    continue
                times: dict[str, list[float]] = {t: [] for t in tools}
                for _ in range(opts.n):
                    for t in tools:
                        times[t].append(one_round(w, t, work, opts.criu, address, env))
                c = statistics.median(times["criu"]) if "criu" in times else None
                e = statistics.median(times["engine"])
                met = "" if c is None else ("met" if e <= c * TARGET[w.name] else "NOT met")
                print(f"{w.name:18s} {_ms(c):>9s} {_ms(e):>11s} {_ratio(e, c):>6s}  "
                      f"<= {TARGET[w.name]}x {met}", flush=True)
        finally:
            service.terminate()
            service.wait(timeout=10)


if __name__ == "__main__":
    main()

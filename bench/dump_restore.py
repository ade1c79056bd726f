"""Dump and restore times of a small counter and of a 1 GiB touched buffer.

Run as root from the repo: `.venv/bin/python bench/dump_restore.py [-n 5]`.
Prints the median of N runs of `engine dump` and `engine restore` (whole
commands, interpreter start included) and, for the big buffer, GB/s. Each run
starts a fresh target, dumps it, restores it, and lets it check itself.
"""
from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TARGETS = ROOT / "tests" / "targets"


def build(name: str, out: Path, *flags: str) -> Path:
    exe = out / name
    subprocess.run(["gcc", "-O2", *flags, "-o", str(exe), str(TARGETS / f"{name}.c")],
                   check=True)
    return exe


# What every engine command loads before any work of its own: the
# interpreter and the mandated libraries (pluggy for hooks, attrs for the
# plugin specs, protobuf for images). No `engine` command can beat it.
FLOOR_IMPORTS = "import pluggy, attrs, google.protobuf.message, google.protobuf.descriptor_pool"


def import_floor(runs: int) -> float:
    """Median wall time of an interpreter that only imports FLOOR_IMPORTS."""
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        subprocess.run([sys.executable, "-c", FLOOR_IMPORTS], check=True)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def wait_for(path: Path, timeout: float = 30) -> None:
    end = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > end:
            raise SystemExit(f"timed out waiting for {path}")
        time.sleep(0.005)


def engine(*args: str) -> float:
    t = time.perf_counter()
    subprocess.run([sys.executable, "-m", "engine", *args], check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t


def one_run(exe: Path, args: list[str], work: Path) -> tuple[float, float]:
    ready, result, img = work / "ready", work / "result", work / "img"
    for p in (ready, result):
        p.unlink(missing_ok=True)
    shutil.rmtree(img, ignore_errors=True)
    proc = subprocess.Popen([str(exe), "--ready", str(ready), "--result", str(result), *args],
                            stdin=subprocess.DEVNULL)
    wait_for(ready)
    t_dump = engine("dump", "-t", str(proc.pid), "-D", str(img))
    proc.wait()
    t_restore = engine("restore", "-D", str(img))
    os.kill(proc.pid, signal.SIGTERM)
    wait_for(result)
    verdict = result.read_text().strip()
    if verdict != "PASS":
        raise SystemExit(f"{exe.name}: {verdict}")
    _reap()
    return t_dump, t_restore


def _reap() -> None:
    while True:
        try:
            if os.waitpid(-1, os.WNOHANG)[0] == 0:
                time.sleep(0.01)
        except ChildProcessError:
            return


def become_subreaper() -> None:
    """Restored tasks come back to us (PR_SET_CHILD_SUBREAPER), not to init."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from engine import libc
    libc.check(libc.prctl(libc.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0), "PR_SET_CHILD_SUBREAPER")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", type=int, default=5)
    ap.add_argument("--mib", type=int, default=1024)
    opts = ap.parse_args()
    become_subreaper()
    # The fixed cost of any `engine` run (interpreter, imports, plugin set):
    # subtracted below to show what a restore itself takes.
    startup = statistics.median(engine("plugins") for _ in range(opts.n))
    print(f"{'engine startup':18s} {startup * 1000:8.1f} ms   (`engine plugins`, median of {opts.n})")
    with tempfile.TemporaryDirectory() as d:
        work = Path(d)
        cases = [("counter", build("counter", work), [], 0),
                 (f"bigmem {opts.mib} MiB", build("bigmem", work), ["--mib", str(opts.mib)],
                  opts.mib << 20)]
        for name, exe, args, size in cases:
            runs = [one_run(exe, args, work) for _ in range(opts.n)]
            dump = statistics.median(r[0] for r in runs)
            restore = statistics.median(r[1] for r in runs)
            line = (f"{name:18s} dump {dump * 1000:8.1f} ms   restore {restore * 1000:8.1f} ms"
                    f" ({(restore - startup) * 1000:.1f} ms past startup)")
            if size:
                line += f"   dump {size / dump / 1e9:5.2f} GB/s   restore {size / restore / 1e9:5.2f} GB/s"
            print(line + f"   (median of {opts.n})")


if __name__ == "__main__":
    main()

"""The engine beside CRIU 4.2: dump and restore of the same workloads, in turns.

Run as root from the repo: `.venv/bin/python bench/vs_criu.py [-n 5] [--only NAME]`.

For each workload (issue 19's table: a small C counter, 256 MiB and 1 GiB
touched, a 50-process tree, 1000 fds, a python3 idle loop), N rounds; each
round starts a fresh target, dumps and restores it with CRIU, then does
the same with the engine (in turns, so each tool runs after the other: the
machine's speed drifts by tens of percent within minutes, so only ratios
from one run mean anything). Times are whole commands (`engine dump`, `engine restore`;
`criu dump`, `criu restore -d`), interpreter start included. It prints the
medians of both and the ratios engine / CRIU, after the import floor (an
interpreter importing only the mandated libraries). The restored target must be
alive (and, for the C protocol targets, check itself PASS), else the run
stops naming the workload and the tool.

CRIU is /work/shared/criu-4.2/criu (`--criu PATH`); where it cannot run
(`criu check` fails, or it is missing) the engine is measured alone and the
reason printed.

`--against DIR` runs another checkout of the engine (a `git worktree add DIR
REV`, or a `git archive REV` unpacked there) as a third tool in the same
rounds, and prints its medians and ratios too, and the median of the
per-round ratios this / DIR: a change's gain measured through the drift.
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
from dump_restore import ROOT, TARGETS, become_subreaper, import_floor, wait_for  # noqa: E402
from fds import MANY_FDS  # noqa: E402
from tree_threads import FANOUT, kill_tree, reap_all  # noqa: E402

# ../shared/criu-4.2 beside the checkout (or beside a worktree's parent).
CRIU = next((p / "shared" / "criu-4.2" / "criu" for p in ROOT.parents
             if (p / "shared" / "criu-4.2" / "criu").exists()),
            ROOT.parent / "shared" / "criu-4.2" / "criu")

# A python3 process doing nothing but sleep, as a user's idle script would.
IDLE_PY = """\
import sys, time
with open(sys.argv[1], "w") as f:
    f.write("ready\\n")
while True:
    time.sleep(1)
"""


class Workload:
    """How to start one target in `work` and check it once restored."""

    def __init__(self, name: str, argv: list[str], protocol: bool):
        self.name, self.argv, self.protocol = name, argv, protocol

    def start(self, work: Path) -> subprocess.Popen:
        for f in ("ready", "result"):
            (work / f).unlink(missing_ok=True)
        proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)
        wait_for(work / "ready")
        return proc

    def check(self, pid: int, work: Path, tool: str) -> None:
        """The restored target lives (and, for a protocol target, says
        PASS once sent SIGTERM); then it and what it forked are gone."""
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            raise SystemExit(f"{self.name}: {tool} restore left no process {pid}") from None
        if self.protocol:
            os.kill(pid, signal.SIGTERM)
            wait_for(work / "result")
            verdict = (work / "result").read_text().strip()
            if verdict != "PASS":
                raise SystemExit(f"{self.name}: after {tool}'s restore: {verdict}")
        kill_tree(pid)


def workloads(work: Path) -> list[Workload]:
    def gcc(name: str, src: Path, *flags: str) -> str:
        subprocess.run(["gcc", "-O2", *flags, "-o", str(work / name), str(src)], check=True)
        return str(work / name)

    (work / "fanout.c").write_text(FANOUT)
    (work / "fds.c").write_text(MANY_FDS)
    (work / "data").write_text("x" * 100)
    (work / "idle.py").write_text(IDLE_PY)
    proto = ["--ready", str(work / "ready"), "--result", str(work / "result")]
    bigmem = gcc("bigmem", TARGETS / "bigmem.c")
    return [
        Workload("small C counter", [gcc("counter", TARGETS / "counter.c"), *proto], True),
        Workload("256 MiB touched", [bigmem, *proto, "--mib", "256"], True),
        Workload("1 GiB touched", [bigmem, *proto, "--mib", "1024"], True),
        Workload("50-process tree", [gcc("fanout", work / "fanout.c"), str(work / "ready")],
                 False),
        Workload("1000 fds", [gcc("fds", work / "fds.c"), str(work / "data"),
                              str(work / "ready"), "1000", "files"], False),
        Workload("python3 idle loop", ["/usr/bin/python3", "-I", str(work / "idle.py"),
                                       str(work / "ready")], False),
    ]


def _timed(argv: list[str], env: dict, cwd: Path) -> float:
    t = time.perf_counter()
    done = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env,
                          cwd=cwd)
    took = time.perf_counter() - t
    if done.returncode:
        raise RuntimeError(done.stderr.decode(errors="replace").strip().splitlines()[-1:]
                           or [f"exit {done.returncode}"])
    return took


def engine_commands(pid: int, img: Path) -> tuple[list[str], list[str]]:
    cmd = [sys.executable, "-m", "engine"]
    return (cmd + ["dump", "-t", str(pid), "-D", str(img)],
            cmd + ["restore", "-D", str(img)])


def criu_commands(criu: Path, pid: int, img: Path) -> tuple[list[str], list[str]]:
    log = ["-o", "log.txt", "-v1"]
    return ([str(criu), "dump", "-t", str(pid), "-D", str(img), *log],
            [str(criu), "restore", "-d", "-D", str(img), *log])


def one_round(w: Workload, tool: str, work: Path, criu: Path,
              against: Path | None = None) -> tuple[float, float]:
    """Start, dump (which kills it), reap, restore, check: (dump s, restore s).
    `tool` is "engine" (this checkout), "against" (the one at `against`)
    or "criu"."""
    img = work / f"img-{tool}"
    shutil.rmtree(img, ignore_errors=True)
    img.mkdir()
    proc = w.start(work)
    dump, restore = (criu_commands(criu, proc.pid, img) if tool == "criu"
                     else engine_commands(proc.pid, img))
    # `python -m` looks in its working directory first: run each checkout's
    # engine from that checkout.
    root = against if tool == "against" else ROOT
    env = dict(os.environ, PYTHONPATH=str(root))
    try:
        t_dump = _timed(dump, env, root)
    except RuntimeError as e:
        kill_tree(proc.pid)
        raise SystemExit(f"{w.name}: {tool} dump failed: {e}") from None
    proc.wait()
    reap_all()
    try:
        t_restore = _timed(restore, env, root)
    except RuntimeError as e:
        raise SystemExit(f"{w.name}: {tool} restore failed: {e}") from None
    w.check(proc.pid, work, tool)
    return t_dump, t_restore


def criu_usable(criu: Path) -> str | None:
    """None when CRIU runs here, else why not."""
    if not os.access(criu, os.X_OK):
        return f"{criu} is missing or not executable"
    done = subprocess.run([str(criu), "check"], capture_output=True, text=True)
    if done.returncode:
        return f"`{criu} check` failed: {(done.stderr or done.stdout).strip()[-200:]}"
    return None


def _ms(x: float | None) -> str:
    return f"{x * 1000:7.1f}" if x is not None else "      -"


def _ratio(a: float, b: float | None) -> str:
    return f"{a / b:5.2f}x" if b else "    -"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", type=int, default=5)
    ap.add_argument("--only", action="append", default=[], metavar="NAME",
                    help="run only workloads whose name holds NAME (repeatable)")
    ap.add_argument("--criu", type=Path, default=CRIU)
    ap.add_argument("--against", type=Path, metavar="DIR",
                    help="another checkout of the engine, run in the same rounds")
    opts = ap.parse_args()
    become_subreaper()
    # Byte-code, as scripts/setup.sh makes it: with PYTHONDONTWRITEBYTECODE
    # (set on these machines) a checkout without it compiles every module
    # again in every run, ~0.2 s of a small restore.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    for root in [ROOT] + ([opts.against.resolve()] if opts.against else []):
        subprocess.run([sys.executable, "-m", "compileall", "-q", str(root / "engine"),
                        str(root / "plugins")], check=True, stdout=subprocess.DEVNULL, env=env)
    why_not = criu_usable(opts.criu)
    tools = ["engine"] if why_not else ["engine", "criu"]
    if opts.against:
        tools.append("against")
    if why_not:
        print(f"CRIU skipped: {why_not}")
    # No whole `engine` command can take less than this (interpreter and
    # the mandated libraries): set beside CRIU's small restore, it says how
    # near 1x a cold command can come at all.
    print(f"import floor (python + pluggy, attrs, protobuf): "
          f"{import_floor(opts.n) * 1000:.1f} ms (median of {opts.n})")
    print(f"{'workload':18s} {'criu dump':>9s} {'restore':>8s}   {'engine dump':>11s} "
          f"{'restore':>8s}   ratio dump  restore   (medians of {opts.n})")
    with tempfile.TemporaryDirectory() as d:
        work = Path(d)
        for w in workloads(work):
            if not opts.only or any(s in w.name for s in opts.only):
                report(w.name, measure(w, tools, work, opts))


def measure(w: Workload, tools: list[str], work: Path, opts) -> dict:
    """tool -> [(dump s, restore s)] of opts.n rounds, each running every
    tool once: CRIU first, then the engines in turns (this, DIR; then DIR,
    this), so each engine comes after CRIU and after the other engine
    equally often (a run slows the next: dirty pages of its images are
    written back, its tree torn down; a plain rotation of three tools gave
    one engine 20-30% more restore time than the other)."""
    against = opts.against.resolve() if opts.against else None
    times: dict[str, list[tuple[float, float]]] = {t: [] for t in tools}
    first = [t for t in tools if t == "criu"]
    engines = [t for t in tools if t != "criu"]
    for i in range(opts.n):
        for tool in first + (engines if i % 2 == 0 else engines[::-1]):
            times[tool].append(one_round(w, tool, work, opts.criu, against))
    return times


def report(name: str, times: dict) -> None:
    med = {t: (statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs))
           for t, runs in times.items()}
    c_dump, c_rest = med.get("criu", (None, None))
    e_dump, e_rest = med["engine"]
    print(f"{name:18s} {_ms(c_dump):>9s} {_ms(c_rest):>8s}   {_ms(e_dump):>11s} "
          f"{_ms(e_rest):>8s}   {_ratio(e_dump, c_dump):>10s} {_ratio(e_rest, c_rest):>8s}",
          flush=True)
    if "against" in med:
        a_dump, a_rest = med["against"]
        pairs = list(zip(times["engine"], times["against"]))
        per_dump = statistics.median(e[0] / a[0] for e, a in pairs)
        per_rest = statistics.median(e[1] / a[1] for e, a in pairs)
        print(f"{'  against':18s} {'':9s} {'':8s}   {_ms(a_dump):>11s} {_ms(a_rest):>8s}   "
              f"{_ratio(a_dump, c_dump):>10s} {_ratio(a_rest, c_rest):>8s}   "
              f"this/against: dump {per_dump:.3f} restore {per_rest:.3f}", flush=True)

if __name__ == "__main__":
    main()

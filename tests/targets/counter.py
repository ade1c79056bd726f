#!/usr/bin/python3
# engine-target: interpreter=/usr/bin/python3 ;
# what: a python3 process (stdlib only) writing an increasing counter to a
#       file every 10 ms; after restore the counter is intact and moving, a
#       bytes blob hashes the same and os.getpid() is unchanged
"""DESIGN §6 protocol target for the python interpreter itself.

Runs under the interpreter named in the header (/usr/bin/python3, Debian's
python3.11) with -I; the harness falls back to sys.executable where that is
missing. Any python3 >= 3.8 works: stdlib only.

The counter file is opened and closed on each tick, so no fd is held across
a dump; before each write the target checks that the file still holds its
previous value, which is how a test shows the check is real.
"""
import hashlib
import os
import signal
import sys
import time

TICK = 0.010


def _write_atomic(path, text):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.rename(tmp, path)


def _parse(argv):
    opts = {"--ready": None, "--result": None}
    it = iter(argv)
    for arg in it:
        if arg in opts:
            opts[arg] = os.path.abspath(next(it))
        elif arg != "--close-stdio":
            sys.exit(f"counter.py: unknown argument {arg}")
    if None in opts.values():
        sys.exit("usage: counter.py --ready FILE --result FILE")
    return opts["--ready"], opts["--result"], "--close-stdio" in argv


def main(argv):
    ready, result, close_stdio = _parse(argv)
    stop = False

    def on_term(signum, frame):
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    pid0 = os.getpid()
    blob = bytes(range(256)) * 4096 + pid0.to_bytes(4, "little")
    digest = hashlib.sha256(blob).hexdigest()
    path = os.path.join(os.path.dirname(result), "counter.txt")
    counter = 0
    failures = []

    def tick():
        nonlocal counter
        with open(path) as f:
            seen = f.read()
        if seen != f"{counter}\n" and not failures:
            failures.append(f"counter file holds {seen!r}, wrote {counter}")
        counter += 1
        with open(path, "w") as f:
            f.write(f"{counter}\n")
        time.sleep(TICK)

    with open(path, "w") as f:
        f.write("0\n")
    _write_atomic(ready, f"ready\ncounter_file={path}\npid={pid0}\n")
    if close_stdio:
        for fd in (0, 1, 2):
            os.close(fd)
    at_ready = counter
    while not stop:
        tick()
    at_stop = counter
    for _ in range(5):
        tick()

    if at_stop <= at_ready:
        failures.append(f"counter did not advance ({at_ready} -> {at_stop})")
    if counter != at_stop + 5:
        failures.append(f"counter {counter}, want {at_stop + 5}")
    if hashlib.sha256(blob).hexdigest() != digest:
        failures.append("blob hash changed")
    if os.getpid() != pid0:
        failures.append(f"os.getpid() {os.getpid()} != pid at start {pid0}")
    _write_atomic(result, f"FAIL: {failures[0]}\n" if failures else "PASS\n")


if __name__ == "__main__":
    main(sys.argv[1:])

"""Tests marked ``serial`` run while no other test runs: in no other
pytest-xdist worker, nor in another pytest run of the same user.

Tests share the machine well as long as each restores only the pids it
dumped (the kernel hands out pids in turn, so a freed pid is not handed out
again for a long while). A few do more: they check that nothing runs at
pids they picked as free, or restore CRIU's image sets at fixed pids, and
another test's restore or target may sit at those pids meanwhile. Every
test holds one lock file shared; a serial test holds it alone. A second
lock, the turnstile, is taken on the way in, so a waiting serial test is
not starved by the overlapping tests of several workers.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
from pathlib import Path

MARKER = "serial"
# Set while a test holds the lock: a pytest run that the test starts (a
# plugin author's run, tests/test_testing_plugin.py) must not wait for it.
HELD_ENV = "ENGINE_TESTING_LOCK_HELD"


def lock_path(kind: str) -> Path:
    # Per user: another user's file in sticky /tmp cannot be opened with
    # O_CREAT (fs.protected_regular).
    return Path(tempfile.gettempdir()) / f"engine-testing-{os.getuid()}.{kind}"


@contextlib.contextmanager
def suite_lock(alone: bool):
    """Hold the tests' lock, shared, or alone for a serial test."""
    if os.environ.get(HELD_ENV):
        yield
        return
    flags = os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC
    main = os.open(lock_path("lock"), flags, 0o644)
    turnstile = os.open(lock_path("turnstile"), flags, 0o644)
    try:
        fcntl.flock(turnstile, fcntl.LOCK_EX)
        try:
            fcntl.flock(main, fcntl.LOCK_EX if alone else fcntl.LOCK_SH)
        finally:
            fcntl.flock(turnstile, fcntl.LOCK_UN)
        os.environ[HELD_ENV] = "1"
        try:
            yield
        finally:
            del os.environ[HELD_ENV]
            # Unlocks the open file even if a forked child still holds it.
            fcntl.flock(main, fcntl.LOCK_UN)
    finally:
        os.close(main)
        os.close(turnstile)

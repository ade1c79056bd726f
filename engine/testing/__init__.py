"""pytest plugin for testing engine and its plugins (DESIGN §6).

Opt-in, as pytester is: ``-p engine.testing`` on the command line, or
``pytest_plugins = ["engine.testing"]`` in a conftest (this project's
tests/conftest.py). It imports only the standard library and pytest.

Fixtures:

* ``build_target(name, variant=None) -> Path`` compiles
  ``tests/targets/NAME.c`` with the flags of its header, once per session;
  ``NAME.py`` is returned as is (engine.testing.targets).
* ``target_runner.start(exe, *args) -> Target`` runs a target with
  ``--ready``/``--result`` in a fresh directory and waits for "ready"
  (engine.testing.runner).
* ``engine_cli(*args, check=True) -> CompletedProcess`` runs
  ``python -m engine`` with plugin autoload disabled
  (engine.testing.commands).
* ``dump_restore(target, images_dir) -> str`` dumps, reaps, restores and
  returns the target's verdict; ``dumped_counter`` is a counter target
  dumped and gone, for tests to restore or to spoil.

Session-wide, the pytest process becomes a child subreaper, so restored
tasks whose engine parent exits are reparented to it and can be reaped, and
processes a test leaves behind are killed and reaped after it
(engine.testing.reaper).

Marker: ``@pytest.mark.serial`` runs a test while no other test runs, in
no other pytest-xdist worker (engine.testing.serial).
"""
from __future__ import annotations

import os
import warnings

import pytest

from engine.testing.commands import (AUTOLOAD_ENV, dump_restore, dump_to, engine_cli,
                                     engine_command, engine_fails, reap_dumped_tree)
from engine.testing.reaper import (PR_GET_CHILD_SUBREAPER, PR_SET_CHILD_SUBREAPER,
                                   become_subreaper, children, is_subreaper, kill_children,
                                   pid_state, task_gone, wait_gone)
from engine.testing.runner import READY_TIMEOUT, Target, TargetRunner
from engine.testing.serial import MARKER as SERIAL_MARKER
from engine.testing.serial import suite_lock
from engine.testing.targets import (BASE_CFLAGS, NEEDS, REPO_ROOT, TARGETS_ENV, VARIANTS,
                                    TargetBuilder, TargetSpec, compile_target, list_targets,
                                    parse_header, targets_dir, unmet_needs)

__all__ = [
    "AUTOLOAD_ENV", "BASE_CFLAGS", "NEEDS", "PR_GET_CHILD_SUBREAPER", "PR_SET_CHILD_SUBREAPER",
    "READY_TIMEOUT", "REPO_ROOT", "SERIAL_MARKER", "TARGETS_ENV", "VARIANTS", "Target",
    "TargetBuilder", "TargetRunner", "TargetSpec", "become_subreaper", "children",
    "compile_target", "dump_restore", "dump_to", "engine_cli", "engine_command", "engine_fails",
    "is_subreaper", "kill_children", "list_targets", "parse_header", "pid_state",
    "reap_dumped_tree", "suite_lock", "targets_dir", "task_gone", "unmet_needs", "wait_gone",
]


# --- process hygiene: subreaper, leftovers, the tests' lock ---

def pytest_configure(config):
    config.addinivalue_line("markers", f"{SERIAL_MARKER}: runs while no other test runs "
                            "(no other xdist worker's): for tests that need pids nobody "
                            "else takes or frees meanwhile")
    os.environ[AUTOLOAD_ENV] = "1"
    try:
        become_subreaper()
    except OSError as e:  # not Linux or prctl refused: tests will show it
        warnings.warn(f"engine.testing: {e}")


def pytest_unconfigure(config):
    kill_children()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item, nextitem):
    """Setup, call and teardown of each test under the tests' lock."""
    with suite_lock(alone=item.get_closest_marker(SERIAL_MARKER) is not None):
        return (yield)


@pytest.fixture(autouse=True)
def _engine_reap_leftovers():
    """Kill and reap what a test leaves behind, so pids do not leak."""
    before = children()
    yield
    leftovers = kill_children(keep=before)
    if leftovers:
        warnings.warn(pytest.PytestWarning(
            f"engine.testing killed leftover processes {sorted(leftovers)}"))


# --- fixtures ---

@pytest.fixture(scope="session")
def _engine_target_builder(tmp_path_factory) -> TargetBuilder:
    if os.environ.get("PYTEST_XDIST_WORKER"):
        # The workers' base temps share a parent: there each target is
        # compiled once per run, not once per worker.
        outdir = tmp_path_factory.getbasetemp().parent / "engine-targets"
        outdir.mkdir(exist_ok=True)
        return TargetBuilder(outdir)
    return TargetBuilder(tmp_path_factory.mktemp("engine-targets"))


@pytest.fixture
def build_target(_engine_target_builder) -> TargetBuilder:
    """build_target(name, variant=None) -> Path of the built target."""
    return _engine_target_builder


@pytest.fixture
def target_runner(tmp_path, tmp_path_factory):
    """target_runner.start(exe, *args) -> Target, killed at teardown."""
    # Targets bind AF_UNIX sockets in their directory, whose path must fit
    # sun_path (108 bytes): not under tmp_path, which is longer in an xdist
    # worker, but in a short one that tmp_path/targets links to.
    base = tmp_path_factory.mktemp("t")
    (tmp_path / "targets").symlink_to(base)
    runner = TargetRunner(base)
    yield runner
    runner.cleanup()


@pytest.fixture(name="engine_cli")
def _engine_cli_fixture():
    """engine_cli(*args, check=True) -> CompletedProcess."""
    return engine_cli


@pytest.fixture
def dumped_counter(build_target, target_runner, tmp_path):
    """A static counter target dumped to tmp_path/img, killed and reaped:
    an image set for tests to restore or to spoil."""
    target = target_runner.start(build_target("counter", "static-nopie"))
    img = tmp_path / "img"
    dump_to(target, img)
    return target, img


@pytest.fixture(name="dump_restore")
def _dump_restore_fixture():
    """dump_restore(target, images_dir, dump_args=(), restore_args=())."""
    return dump_restore

"""engine.testing is opt-in, as pytester is: installing engine loads it
into no pytest run; a project that wants its fixtures names it, with
`-p engine.testing` or a conftest line (as tests/conftest.py does)."""
import os
import subprocess
import sys
import tomllib
from importlib.metadata import distributions

import pytest

from engine.testing import REPO_ROOT

USES_THE_FIXTURES = """
from engine.testing import is_subreaper

def test_counter_comes_back(build_target, target_runner, dump_restore, tmp_path):
    assert is_subreaper()
    target = target_runner.start(build_target("counter", "static-nopie"))
    assert dump_restore(target, tmp_path / "img") == "PASS"
"""

LOADS_NOTHING = """
import sys

def test_engine_testing_is_not_loaded():
    assert "engine.testing" not in sys.modules
"""


OVERLAPPING = """
import os
import time

import pytest


def _stay(name):
    for word in ("in", "out"):
        with open(os.environ["STAYS"], "a") as log:
            log.write(f"{name} {word}\\n")
        time.sleep(0.5)


@pytest.mark.parametrize("n", range(4))
def test_shared(n):
    _stay(f"shared{n}")


@pytest.mark.serial
def test_alone():
    _stay("alone")
"""


def _pytest_outside(project, test_text, *args, env=None):
    """pytest run on a project of its own (no conftest), as another
    project's test run would be, with this checkout importable."""
    project.mkdir()
    (project / "test_outside.py").write_text(test_text)
    env = dict(os.environ if env is None else env, PYTHONPATH=os.pathsep.join(
        filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])))
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           *args, str(project)], cwd=project, env=env,
                          capture_output=True, text=True, timeout=120)


def test_no_pytest11_entry_point_is_declared():
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    assert "pytest11" not in project.get("entry-points", {})


def test_other_projects_runs_do_not_load_it(tmp_path):
    # Every installed copy, as pytest loads them (entry_points() keeps one per name).
    if any(ep.group == "pytest11" and ep.value.startswith("engine.testing")
           for dist in distributions() for ep in dist.entry_points):
        pytest.skip("engine's installed metadata still has the pytest11 entry point "
                    "of an older checkout: reinstall engine (pip install -e .)")
    proc = _pytest_outside(tmp_path / "project", LOADS_NOTHING)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_a_plugin_author_loads_it_with_dash_p(tmp_path):
    proc = _pytest_outside(tmp_path / "project", USES_THE_FIXTURES, "-p", "engine.testing")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "1 passed" in proc.stdout


def test_a_serial_test_runs_while_no_other_test_runs(tmp_path):
    """Three xdist workers: the shared tests overlap, the serial one
    overlaps none."""
    from engine.testing.serial import HELD_ENV
    stays = tmp_path / "stays"
    # A lock of its own (TMPDIR), not the one this test holds.
    env = {k: v for k, v in os.environ.items() if k != HELD_ENV}
    env.update(STAYS=str(stays), TMPDIR=str(tmp_path))
    proc = _pytest_outside(tmp_path / "project", OVERLAPPING, "-p", "engine.testing",
                           "-n", "3", env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    inside, most = set(), 0
    for name, word in (line.split() for line in stays.read_text().splitlines()):
        if word == "in":
            assert "alone" not in inside and (name != "alone" or not inside), inside
            inside.add(name)
        else:
            inside.remove(name)
        most = max(most, len(inside))
    assert most > 1            # the workers did run tests side by side

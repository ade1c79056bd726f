"""A third-party plugin, installed from tests/thirdparty through its
engine.plugins entry point, runs its hooks inside a real restore.

engine_stamp (tests/thirdparty/engine_stamp) adds a --stamp-file option and
one node per task that appends "task PID CWD" from inside the restored task.
"""
import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def stamp_site(tmp_path_factory):
    site = tmp_path_factory.mktemp("site")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps",
                    "--no-build-isolation", "--target", str(site),
                    str(HERE / "thirdparty" / "engine_stamp")], check=True)
    return site


@pytest.fixture
def stamp_env(stamp_site):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(stamp_site), env.get("PYTHONPATH")]))
    return env


@pytest.fixture
def dumped(build_target, target_runner, engine_cli, tmp_path):
    target = target_runner.start(build_target("counter", "static-nopie"))
    engine_cli("dump", "-t", target.pid, "-D", tmp_path / "img")
    target.reap()
    return target, tmp_path / "img"


def test_hook_engine_restore_node(dumped, engine_cli, stamp_env, tmp_path):
    """The plugin's node ran inside the restored task: its pid and cwd."""
    target, img = dumped
    stamp = tmp_path / "stamp"
    engine_cli("restore", "-D", img, "--plugins", "default,stamp", "--stamp-file", stamp,
               autoload=True, env=stamp_env)
    lines = stamp.read_text().splitlines()
    assert lines[0] == f"task {target.pid} {target.workdir}"
    assert target.verdict() == "PASS"


def test_hook_engine_restore_finish(dumped, engine_cli, stamp_env, tmp_path):
    target, img = dumped
    stamp = tmp_path / "stamp"
    engine_cli("restore", "-D", img, "--plugins", "default,stamp", "--stamp-file", stamp,
               autoload=True, env=stamp_env)
    assert stamp.read_text().splitlines()[-1] == "finish"
    assert target.verdict() == "PASS"


def test_hook_engine_restore_abort(dumped, engine_cli, stamp_env, tmp_path):
    """A restore failing after the stamp node ran: abort is told, task killed."""
    target, img = dumped
    for pages in img.glob("pages-*.img"):
        pages.write_bytes(b"")
    stamp = tmp_path / "stamp"
    proc = engine_cli("restore", "-D", img, "--plugins", "default,stamp", "--stamp-file",
                      stamp, autoload=True, env=stamp_env, check=False)
    assert proc.returncode != 0
    assert stamp.read_text().splitlines()[-1].startswith("abort: ")
    assert not os.path.exists(f"/proc/{target.pid}")


def test_hook_engine_addoption(engine_cli, stamp_env):
    out = engine_cli("restore", "--help", "--plugins", "default,stamp", autoload=True,
                     env=stamp_env).stdout
    assert "--stamp-file" in out


def test_third_party_plugin_is_off_unless_named(engine_cli, stamp_env):
    out = engine_cli("plugins", autoload=True, env=stamp_env).stdout
    line = next(l for l in out.splitlines() if l.startswith("stamp"))
    assert line.split()[1] == "off" and "entry point engine_stamp" in line
    out = engine_cli("plugins", "--plugins", "default,stamp", autoload=True, env=stamp_env).stdout
    line = next(l for l in out.splitlines() if l.startswith("stamp"))
    assert line.split()[1] == "on"

"""A third-party plugin, installed from tests/thirdparty through its
engine.plugins entry point, runs its hooks inside a real restore.

engine_stamp (tests/thirdparty/engine_stamp) adds a --stamp-file option and
one node per task that appends "task PID CWD" from inside the restored task.
"""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

# One xdist worker runs them all (--dist loadgroup): one pip install of
# engine_stamp, not one per worker.
pytestmark = pytest.mark.xdist_group("thirdparty")

HERE = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def stamp_site(tmp_path_factory):
    site = tmp_path_factory.mktemp("site")
    # Built from a copy: the build writes into its source directory, which
    # another run or worker may be building from at the same time.
    source = shutil.copytree(HERE / "thirdparty" / "engine_stamp",
                             tmp_path_factory.mktemp("stamp-src") / "engine_stamp",
                             ignore=shutil.ignore_patterns("build", "*.egg-info"))
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps",
                    "--no-build-isolation", "--target", str(site), str(source)], check=True)
    return site


@pytest.fixture
def stamp_env(stamp_site):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(stamp_site), env.get("PYTHONPATH")]))
    return env


@pytest.fixture
def dumped(build_target, target_runner, engine_cli, stamp_env, tmp_path):
    target = target_runner.start(build_target("counter", "static-nopie"))
    engine_cli("dump", "-t", target.pid, "-D", tmp_path / "img", "--plugins", "default,stamp",
               autoload=True, env=stamp_env)
    target.reap()
    return target, tmp_path / "img"


def test_hook_engine_register_images(dumped, engine_cli, stamp_env):
    """The plugin's own image kind is written at dump and decoded by show."""
    target, img = dumped
    out = engine_cli("show", img, "--plugins", "default,stamp", autoload=True, env=stamp_env)
    shown = json.loads(out.stdout)["stamp.img"]
    assert shown["magic"] == "STAMP" and shown["entries"][0]["pid"] == target.pid


def test_hook_engine_dump_finish(dumped):
    """engine_dump_finish of the plugin ran after every task: stamp.img, and
    the core's inventory.img, which crit decodes."""
    target, img = dumped
    assert (img / "stamp.img").exists()
    inv = json.loads(subprocess.run(["crit", "decode", "-i", str(img / "inventory.img")],
                                    capture_output=True, text=True, check=True).stdout)
    assert inv["entries"][0]["img_version"] == 2


def test_hook_engine_restore_collect(dumped, engine_cli, stamp_env):
    """The plugin's nodes sit where hooks.toml says: after the task exists
    and its cwd is set, before its memory and registers."""
    target, img = dumped
    out = engine_cli("plan", "-D", img, "--plugins", "default,stamp", autoload=True,
                     env=stamp_env).stdout
    labels = [line.strip().split("  ")[1] for line in out.splitlines()]
    order = {label.split()[0]: i for i, label in reversed(list(enumerate(labels)))}
    assert order["fork"] < order["cwd"] < order["stamp"] < order["memory"] < order["registers"]


def test_hook_engine_restore_node(dumped, engine_cli, stamp_env, tmp_path):
    """The plugin's node ran inside the restored task: its pid and cwd."""
    target, img = dumped
    stamp = tmp_path / "stamp"
    engine_cli("restore", "-D", img, "--plugins", "default,stamp", "--stamp-file", stamp,
               autoload=True, env=stamp_env)
    lines = stamp.read_text().splitlines()
    assert lines[0] == f"task {target.pid} {target.workdir}"
    assert target.verdict() == "PASS"


def test_task_log_lines_reach_the_engine_not_the_restored_stderr(dumped, engine_cli,
                                                                 stamp_env, tmp_path):
    """The stamp node logs a warning inside the task after its fd 2 became
    the target's own stderr (target.log): the line is the engine's."""
    target, img = dumped
    proc = engine_cli("restore", "-D", img, "--plugins", "default,stamp", "--stamp-file",
                      tmp_path / "stamp", autoload=True, env=stamp_env)
    assert f"stamped task {target.pid}" in proc.stderr
    assert "stamped task" not in target.log()
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
    # A set without engine-images.json (as CRIU's), so it fails late, in memory.
    (img / "engine-images.json").unlink()
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


def test_a_node_that_never_ends_fails_the_restore_in_bounded_time(dumped, engine_cli,
                                                                  stamp_env, tmp_path):
    """issue 20: no image may hang the engine. A task stuck in a node fails
    the restore after ENGINE_NODE_TIMEOUT, naming it; nothing is left."""
    from engine.testing import task_gone
    target, img = dumped
    env = dict(stamp_env, ENGINE_NODE_TIMEOUT="2")
    proc = engine_cli("restore", "-D", img, "--plugins", "default,stamp", "--stamp-hang",
                      "--stamp-file", tmp_path / "stamps", autoload=True, env=env, check=False,
                      timeout=60)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode != 0 and len(lines) == 1, proc.stderr
    assert f"task {target.pid}: no answer within 2 s, running stamp {target.pid}" in lines[0]
    assert task_gone(target.pid)
    assert (tmp_path / "stamps").read_text().startswith("abort: ")

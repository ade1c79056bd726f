"""Running the engine from tests: ``python -m engine`` with plugin autoload
off and this checkout on PYTHONPATH, and dump/restore of a target (DESIGN
§6) with the dumped pids made free for the restore."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from engine.testing.reaper import pid_state
from engine.testing.runner import Target
from engine.testing.targets import REPO_ROOT

AUTOLOAD_ENV = "ENGINE_DISABLE_PLUGIN_AUTOLOAD"


def engine_command(*args, autoload: bool = False, env: dict | None = None
                   ) -> tuple[list[str], dict]:
    """The command line and environment of ``python -m engine ARGS``, for
    engine_cli or a test that runs the engine in the background.

    Plugin autoload is disabled unless autoload=True; the checkout is put
    on PYTHONPATH so this works without ``pip install``.
    """
    env = dict(os.environ if env is None else env)
    if autoload:
        env.pop(AUTOLOAD_ENV, None)
    else:
        env[AUTOLOAD_ENV] = "1"
    env["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    return [sys.executable, "-m", "engine", *map(str, args)], env


def engine_cli(*args: str, check: bool = True, autoload: bool = False,
               timeout: float = 120.0, env: dict | None = None,
               ) -> subprocess.CompletedProcess:
    """``python -m engine ARGS`` (engine_command), output captured."""
    cmd, env = engine_command(*args, autoload=autoload, env=env)
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env,
                          timeout=timeout)
    if check and proc.returncode:
        pytest.fail(f"$ engine {' '.join(map(str, args))}\nexit status "
                    f"{proc.returncode}\n--- stdout\n{proc.stdout}"
                    f"--- stderr\n{proc.stderr}", pytrace=False)
    return proc


def dump_restore(target: Target, images_dir: os.PathLike | str,
                 dump_args=(), restore_args=(), verify: bool = True) -> str:
    """DESIGN §6: dump, make sure it is gone, restore (with the state audit,
    --verify, unless a test names a known difference), return the verdict.
    A root that is the init of its own pid namespace comes back there with
    its pid, under another host pid (the restore's --pidfile): the target
    follows it."""
    dump_to(target, images_dir, dump_args)
    pidfile = Path(images_dir).parent / f"{Path(images_dir).name}.restored-pid"
    engine_cli("restore", "-D", str(images_dir), *(["--verify"] if verify else []),
               "--pidfile", str(pidfile), *restore_args)
    target.pid = int(pidfile.read_text())
    return target.verdict()


def dump_to(target: Target, images_dir: os.PathLike | str, dump_args=()):
    """Dump `target`, make sure it and its tree are gone (their pids free),
    and return the image set, for a test to restore or to spoil."""
    from engine.images import ImageDir
    images_dir = Path(images_dir)
    images_dir.mkdir(parents=True, exist_ok=True)
    engine_cli("dump", "-t", str(target.pid), "-D", str(images_dir), *dump_args)
    target.reap()
    target.assert_gone()
    reap_dumped_tree(images_dir)
    return ImageDir(str(images_dir))


def reap_dumped_tree(images_dir: os.PathLike | str, timeout: float = 10.0) -> None:
    """Wait until every task of a dumped tree is gone. The descendants that
    `engine dump` killed with the root come to us (the subreaper): reap them,
    so their pids are free for the restore."""
    from engine.images import ImageDir
    images = ImageDir(str(images_dir))
    pids = [e.pid for e in images.read("pstree")]
    if images.read_one("ids", id=pids[0]).pid_ns_id != \
            images.read_one("inventory").root_ids.pid_ns_id:
        # Pids of the root's own pid namespace, which died with its init
        # (the target, reaped already): nothing of it is left to wait for.
        return
    deadline = time.monotonic() + timeout
    while True:
        for pid in pids:
            try:
                os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                pass
        left = [pid for pid in pids if pid_state(pid) is not None]
        if not left:
            return
        if time.monotonic() > deadline:
            pytest.fail(f"dumped tasks {left} still exist after the dump", pytrace=False)
        time.sleep(0.005)


def engine_fails(*args: str, **kw) -> str:
    """Run ``engine ARGS`` expecting failure: non-zero exit and exactly one
    line on stderr, which is returned for the caller to check."""
    proc = engine_cli(*args, check=False, **kw)
    assert proc.returncode != 0, f"engine {' '.join(map(str, args))} succeeded"
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, f"want one line on stderr, got:\n{proc.stderr}"
    return lines[0]

"""Restores by an ordinary user (uid 1000), for real: the engine runs as
uid 1000 under setpriv, with only CAP_CHECKPOINT_RESTORE as an ambient
capability (this kernel needs no CAP_SYS_PTRACE for the user's own
processes), or none at all with --rootless."""
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from engine.testing import REPO_ROOT, Target, dump_to, reap_dumped_tree

UID = 1000
CAPS = "+checkpoint_restore"


def _python() -> str:
    """An interpreter uid 1000 may run (this one may live under /root)."""
    for exe in (sys.executable, "/usr/bin/python3"):
        probe = subprocess.run(["setpriv", f"--reuid={UID}", f"--regid={UID}", "--clear-groups",
                                exe, "-c", "import sys; print(sys.version_info[:2])"],
                               capture_output=True, text=True)
        if probe.returncode == 0 and probe.stdout.strip() == str(tuple(sys.version_info[:2])):
            return exe
    pytest.skip(f"no python {sys.version_info[:2]} that uid {UID} may run")


def _as_user(caps: bool) -> list[str]:
    cmd = ["setpriv", f"--reuid={UID}", f"--regid={UID}", "--clear-groups"]
    if caps:
        cmd += [f"--inh-caps={CAPS}", f"--ambient-caps={CAPS}"]
    return cmd


def engine_as_user(*args, caps=True, check=True):
    import site
    env = dict(os.environ, ENGINE_DISABLE_PLUGIN_AUTOLOAD="1",
               PYTHONPATH=os.pathsep.join([str(REPO_ROOT), *site.getsitepackages()]))
    proc = subprocess.run(_as_user(caps) + [_python(), "-m", "engine", *map(str, args)],
                          capture_output=True, text=True, env=env, timeout=120)
    if check and proc.returncode:
        pytest.fail(f"$ engine {' '.join(map(str, args))} (uid {UID})\n{proc.stderr}",
                    pytrace=False)
    return proc


@pytest.fixture
def user_dir():
    """A directory of uid 1000's own, reachable by it (pytest's are 0700)."""
    base = Path(tempfile.mkdtemp(prefix="engine-rootless-"))
    os.chmod(base, 0o755)
    os.chown(base, UID, UID)
    yield base
    shutil.rmtree(base, ignore_errors=True)


def start_as_user(exe, workdir: Path, *args) -> Target:
    """Run a target as uid 1000 (setpriv execs it: same pid), as
    engine.testing's runner does: own session, stdio in its directory."""
    for name in ("target.log",):
        (workdir / name).touch()
        os.chown(workdir / name, UID, UID)
    with open(workdir / "target.log", "wb") as log:
        proc = subprocess.Popen(_as_user(False) + [str(exe), "--ready", str(workdir / "ready"),
                                                   "--result", str(workdir / "result"), *args],
                                stdin=subprocess.DEVNULL, stdout=log, stderr=log, cwd=workdir,
                                start_new_session=True)
    target = Target(proc, workdir)
    target._wait_ready(10.0)
    return target


def test_user_dumps_and_restores_own_tree_with_checkpoint_restore_only(build_target, user_dir):
    exe = shutil.copy(build_target("tree"), user_dir / "tree")
    target = start_as_user(exe, user_dir)
    before = _creds(target.pid)
    img = user_dir / "img"
    engine_as_user("dump", "-t", target.pid, "-D", img)
    target.reap()
    target.assert_gone()
    reap_dumped_tree(img)
    engine_as_user("restore", "-D", img)
    # The engine's capability did not leak into the restored tasks.
    assert _creds(target.pid) == before
    assert target.verdict() == "PASS", target.log()


def _creds(pid):
    with open(f"/proc/{pid}/status") as f:
        return [line for line in f if line.startswith(("Uid", "Gid", "Groups", "Cap"))]


def test_rootless_restore_inside_new_user_and_pid_namespace(build_target, user_dir):
    exe = shutil.copy(build_target("tree"), user_dir / "tree")
    target = start_as_user(exe, user_dir)
    img = user_dir / "img"
    # Dumped by the user too, with CAP_CHECKPOINT_RESTORE; restored with none.
    engine_as_user("dump", "-t", target.pid, "-D", img)
    target.reap()
    reap_dumped_tree(img)
    pidfile = user_dir / "root.pid"
    proc = engine_as_user("restore", "-D", img, "--rootless", "--pidfile", pidfile, caps=False)
    assert proc.returncode == 0
    outer = int(pidfile.read_text())
    with open(f"/proc/{outer}/status") as f:
        nspid = next(line.split()[1:] for line in f if line.startswith("NSpid:"))
    # The dumped pid, inside the new pid namespace; the user's uid outside.
    assert nspid == [str(outer), str(target.pid)]
    assert os.stat(f"/proc/{outer}").st_uid == UID
    target.pid = outer
    assert target.verdict() == "PASS", target.log()


def test_rootless_refuses_maps_granting_ids_the_user_does_not_hold(build_target,
                                                                  target_runner, engine_cli,
                                                                  tmp_path, user_dir):
    """userns.c maps 0-65535 to 200000-265535: uid 1000 holds only itself."""
    from engine.testing import task_gone
    target = target_runner.start(build_target("userns"))
    img = user_dir / "img"
    dump_to(target, img)
    for path in [img, *img.iterdir()]:
        os.chown(path, UID, UID)
    proc = engine_as_user("restore", "-D", img, "--rootless", caps=False, check=False)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode != 0 and len(lines) == 1, proc.stderr
    assert "userns-" in lines[0] and "does not hold" in lines[0], lines[0]
    assert all(task_gone(target.addr(k)) for k in ("a", "a1", "a2", "b"))


def test_user_namespaces_of_a_user_tree_made_again_rootless(build_target, user_dir):
    """A user's task in its own user namespace (its uid as root there) with
    uts, ipc, net and mnt namespaces of it: dumped by the user with
    CAP_CHECKPOINT_RESTORE, restored with --rootless and no capability."""
    exe = shutil.copy(build_target("nsmix"), user_dir / "nsmix")
    target = start_as_user(exe, user_dir, "--user", "1", "--self-map", "1")
    img = user_dir / "img"
    engine_as_user("dump", "-t", target.pid, "-D", img)
    target.reap()
    reap_dumped_tree(img)
    pidfile = user_dir / "root.pid"
    engine_as_user("restore", "-D", img, "--rootless", "--pidfile", pidfile, caps=False)
    target.pid = int(pidfile.read_text())
    assert target.verdict() == "PASS", target.log()

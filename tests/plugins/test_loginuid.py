"""loginuid: the audit login uid (issue 15). The restoring engine is given
another login uid than the dumped task's: a wrapper writes its own
/proc/self/loginuid, then execs the engine."""
import subprocess

import pytest

from engine.testing import dump_to, engine_command, task_gone

OTHER = "4242"


def _restore_as(img, *, drop: str | None = None, verify: bool = True):
    """`engine restore` from a process whose login uid is OTHER (and
    without capability `drop`)."""
    cmd, env = engine_command("restore", "-D", img, *(["--verify"] if verify else []))
    caps = ["capsh", f"--drop={drop}", "--", "-c", 'exec "$@"', "sh"] if drop else []
    return subprocess.run(["sh", "-c", f'echo -n {OTHER} > /proc/self/loginuid && exec "$@"',
                           "sh", *caps, *cmd], capture_output=True, text=True, env=env,
                          timeout=120)


@pytest.mark.parametrize("variant", ["dynamic-pie", "static-nopie"])
def test_login_uid_comes_back_from_an_engine_with_another(build_target, target_runner,
                                                          tmp_path, variant):
    """The task's (unset here, as the engine's when dumping) comes back, in
    both threads, with the session id that goes with it; --verify compares
    loginuid and sessionid."""
    target = target_runner.start(build_target("loginuid", variant))
    if target.info["loginuid"] == OTHER:
        pytest.skip(f"this session's login uid is already {OTHER}")
    img = tmp_path / "img"
    dump_to(target, img)
    proc = _restore_as(img)
    assert proc.returncode == 0, proc.stderr
    assert target.verdict() == "PASS"


def test_changing_a_set_login_uid_without_cap_audit_control_fails_naming_it(
        build_target, target_runner, tmp_path):
    target = target_runner.start(build_target("loginuid", "static-nopie"))
    want = target.info["loginuid"]
    img = tmp_path / "img"
    dump_to(target, img)
    proc = _restore_as(img, drop="cap_audit_control")
    assert proc.returncode != 0
    assert proc.stderr.strip() == (
        f"engine: error: core-{target.pid}.img: tc.loginuid {want}: changing the engine's "
        f"login uid ({OTHER}) takes CAP_AUDIT_CONTROL, which the engine lacks")
    assert task_gone(target.pid)


def test_a_set_login_uid_comes_back(build_target, tmp_path):
    """A target and the engine dumping it in one audit session (login uid
    4244, set by the shell that starts both), restored by an engine with
    none: the image holds 4244, both threads get it back. Without --verify:
    the session id cannot come back (the kernel gives a new one with the
    login uid), and verify would name it."""
    import os
    import signal
    import time

    from engine.testing import engine_cli, reap_dumped_tree
    exe = build_target("loginuid", "static-nopie")
    work, img = tmp_path / "t", tmp_path / "img"
    work.mkdir()
    cmd, env = engine_command("dump", "-D", img)
    script = (f'echo -n 4244 > /proc/self/loginuid || exit 3\n'
              f'setsid {exe} --ready {work}/ready --result {work}/result --new-session '
              f'> {work}/log 2>&1 &\n'
              f'pid=$!; echo $pid > {work}/pid\n'
              f'while [ ! -e {work}/ready ]; do sleep 0.01; done\n'
              'exec "$@" -t "$pid"\n')
    proc = subprocess.run(["sh", "-c", script, "sh", *cmd], capture_output=True, text=True,
                          env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    pid = int((work / "pid").read_text())
    reap_dumped_tree(img)
    from engine.images import ImageDir
    assert ImageDir(str(img)).read_one("core", id=pid).tc.loginuid == 4244
    engine_cli("restore", "-D", img)
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 10
    while not (work / "result").exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert (work / "result").read_text().strip() == "PASS"
    from engine.testing.reaper import wait_gone
    assert wait_gone(pid, 10)          # it exits after its verdict: reap it (our orphan)


def test_threads_with_different_login_uids_are_refused(build_target, target_runner, tmp_path):
    """CRIU's image holds one login uid per task: the dump refuses, naming
    the thread, and the target runs on untouched."""
    from engine.testing import engine_fails
    target = target_runner.start(build_target("loginuid", "static-nopie"), "--split")
    line = engine_fails("dump", "-t", target.pid, "-D", tmp_path / "img")
    assert line.startswith(f"engine: error: task {target.pid}: thread "), line
    assert line.endswith(f"has audit login uid 4243, its leader {target.info['loginuid']}: "
                         "one per task is all the image holds"), line
    assert target.verdict() == "PASS"

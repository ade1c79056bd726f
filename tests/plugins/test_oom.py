"""oom: oom_score_adj, and the oom_adj derived from it (issue 15)."""
import subprocess

import pytest

from engine.testing import dump_to, engine_command, engine_fails, task_gone

@pytest.mark.parametrize("variant", ["dynamic-pie", "static-nopie"])
def test_oom_score_adj_comes_back(build_target, target_runner, dump_restore, tmp_path, variant):
    """713, above the engine's; --verify compares /proc/PID/oom_score_adj.
    (No task here may go below 0, the session's minimum: this machine's
    root has no CAP_SYS_RESOURCE, which -517 would take.)"""
    target = target_runner.start(build_target("oom", variant), "--value", "713")
    assert dump_restore(target, tmp_path / "img") == "PASS"


def test_oom_score_adj_below_the_engines_comes_back(build_target, target_runner, tmp_path):
    """Restored by an engine whose own is 900: the task's 713 is below it
    (allowed down to the minimum, 0 here), oom_adj following."""
    target = target_runner.start(build_target("oom", "static-nopie"), "--value", "713")
    img = tmp_path / "img"
    dump_to(target, img)
    cmd, env = engine_command("restore", "-D", img, "--verify")
    proc = subprocess.run(["sh", "-c", 'echo 900 > /proc/self/oom_score_adj && exec "$@"', "sh",
                           *cmd], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert target.verdict() == "PASS"


@pytest.mark.parametrize("value", [5000, -1001])
def test_hostile_oom_score_adj_is_refused(build_target, target_runner, tmp_path, value):
    target = target_runner.start(build_target("oom", "static-nopie"), "--value", "713")
    img = tmp_path / "img"
    images = dump_to(target, img)
    core = images.read_one("core", id=target.pid)
    core.tc.oom_score_adj = value
    images.write("core", [core], id=target.pid)
    assert engine_fails("restore", "-D", img) == (
        f"engine: error: core-{target.pid}.img: tc.oom_score_adj {value}: outside -1000..1000")
    assert task_gone(target.pid)


def test_lower_oom_score_adj_without_cap_sys_resource_fails_naming_it(
        build_target, target_runner, tmp_path):
    """Going below the minimum takes CAP_SYS_RESOURCE: an engine without it
    fails the restore in one line, and no task is left (the image says
    -517: a target without CAP_SYS_RESOURCE cannot set it itself)."""
    target = target_runner.start(build_target("oom", "static-nopie"), "--value", "713")
    img = tmp_path / "img"
    images = dump_to(target, img)
    core = images.read_one("core", id=target.pid)
    core.tc.oom_score_adj = -517
    images.write("core", [core], id=target.pid)
    cmd, env = engine_command("restore", "-D", img)
    proc = subprocess.run(["capsh", "--drop=cap_sys_resource", "--", "-c", 'exec "$@"', "sh",
                           *cmd], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].endswith(
        f"task {target.pid}: oom_score_adj -517: going below the task's minimum takes "
        "CAP_SYS_RESOURCE, which the engine lacks"), proc.stderr
    assert task_gone(target.pid)

"""pstree: whole trees come back with every pid, parent, session and group."""
import os

import pytest


def _reap_orphans():
    """The dumped tree's children were killed with it and reparented to us
    (the subreaper): reap them so their pids are free again."""
    while True:
        try:
            if os.waitpid(-1, os.WNOHANG) == (0, 0):
                import time
                time.sleep(0.01)
        except ChildProcessError:
            return


@pytest.mark.parametrize("variant", ["dynamic-pie", "static-nopie"])
def test_tree_with_sessions_groups_and_grandchild(build_target, target_runner, dump_restore,
                                                  tmp_path, variant):
    target = target_runner.start(build_target("tree", variant))
    assert dump_restore(target, tmp_path / "img") == "PASS"
    _reap_orphans()       # the grandchild the target killed comes to us


@pytest.mark.parametrize("variant,threads", [("dynamic-pie", "4"), ("static-nopie", "4"),
                                             ("dynamic-pie", "50")])
def test_threads_with_tids_tls_masks_and_blocked_waits(build_target, target_runner,
                                                       dump_restore, tmp_path, variant, threads):
    target = target_runner.start(build_target("threads", variant), "--threads", threads)
    assert dump_restore(target, tmp_path / "img") == "PASS"


def _state(pid):
    return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0]


def test_stopped_task_is_stopped_again(build_target, target_runner, engine_cli, tmp_path):
    import signal
    import time
    target = target_runner.start(build_target("counter", "static-nopie"))
    os.kill(target.pid, signal.SIGSTOP)
    while _state(target.pid) != "T":
        time.sleep(0.01)
    engine_cli("dump", "-t", target.pid, "-D", tmp_path)
    target.reap()
    engine_cli("restore", "-D", tmp_path)
    deadline = time.monotonic() + 5
    while _state(target.pid) != "T" and time.monotonic() < deadline:
        time.sleep(0.01)
    assert _state(target.pid) == "T", "restored task runs; it was stopped"
    os.kill(target.pid, signal.SIGCONT)
    assert target.verdict() == "PASS"


@pytest.mark.parametrize("variant", ["dynamic-pie", "static-nopie"])
def test_zombies_come_back_with_their_exit_status(build_target, target_runner, dump_restore,
                                                  tmp_path, variant):
    target = target_runner.start(build_target("zombie", variant))
    assert dump_restore(target, tmp_path / "img") == "PASS"


@pytest.mark.parametrize("variant", ["dynamic-pie", "static-nopie"])
def test_children_forked_by_a_sibling_are_the_parents(build_target, target_runner, engine_cli,
                                                     tmp_path, variant):
    """A parent with many children forks half of them; its first child
    forks the others (CLONE_PARENT) at the same time: they are still the
    parent's, in its session and in their groups."""
    from engine.testing import dump_to
    target = target_runner.start(build_target("fanout", variant))
    img = tmp_path / "img"
    dump_to(target, img)
    plan = engine_cli("plan", "-D", img).stdout
    assert plan.count("by its sibling") == 3, plan
    engine_cli("restore", "-D", img)
    assert target.verdict() == "PASS"


def test_leave_stopped_stops_every_task_of_the_tree(build_target, target_runner, engine_cli,
                                                    tmp_path):
    """--leave-stopped: every task of the tree, whichever tracer restored
    it, is left in a stop; continued, they run on and check their state."""
    import signal
    import time
    from engine.testing import dump_to
    target = target_runner.start(build_target("fanout"))
    img = tmp_path / "img"
    pids = [e.pid for e in dump_to(target, img).read("pstree")]
    engine_cli("restore", "--leave-stopped", "-D", img)

    def state(pid):
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]

    deadline = time.monotonic() + 10
    while any(state(pid) != "T" for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert {pid: state(pid) for pid in pids} == {pid: "T" for pid in pids}
    for pid in pids:
        os.kill(pid, signal.SIGCONT)
    assert target.verdict() == "PASS"


@pytest.mark.parametrize("target_name", ["fanout", "tree"])
def test_a_killed_engine_takes_its_tasks_with_it(build_target, target_runner, tmp_path,
                                                 target_name):
    """SIGKILL the engine while its tasks are being traced: no task of the
    tree is left running or stopped (each dies with its parent, down from
    the engine), as when a restore fails."""
    import signal
    import subprocess
    import time
    from engine.testing import children, dump_to, engine_command, task_gone
    target = target_runner.start(build_target(target_name))
    img = tmp_path / "img"
    pids = [e.pid for e in dump_to(target, img).read("pstree")]
    cmd, env = engine_command("restore", "-v", "-v", "-D", img)
    engine = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, env=env)
    for line in engine.stderr:
        if " (in tracer " in line:          # tasks forked, one being restored
            break
    engine.send_signal(signal.SIGKILL)
    engine.wait()
    engine.stderr.close()
    deadline = time.monotonic() + 5
    while True:
        _reap_exited()
        left = [pid for pid in pids if not task_gone(pid)]
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.01)
    assert not left, f"tasks {left} outlived the engine"
    while children() and time.monotonic() < deadline + 5:    # reap the dead, us alone
        _reap_exited()
        time.sleep(0.01)


def test_children_outlive_their_restored_parent(build_target, target_runner, engine_cli,
                                                tmp_path):
    """The parent-death signal a task has while it is restored is gone once
    it runs: killing the restored parent leaves its children running, as it
    did before the dump."""
    import signal
    import time
    from engine.testing import dump_to, task_gone
    target = target_runner.start(build_target("fanout"))
    img = tmp_path / "img"
    kids = [e.pid for e in dump_to(target, img).read("pstree") if e.pid != target.pid]
    engine_cli("restore", "-D", img)
    os.kill(target.pid, signal.SIGKILL)
    while not task_gone(target.pid):
        time.sleep(0.01)
    time.sleep(0.1)                       # a signal to the children would be in by now
    _reap_exited()
    assert [pid for pid in kids if task_gone(pid)] == []
    for pid in kids:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)                # ours now (the subreaper)


def _reap_exited():
    """Reap whichever of our children have exited, without waiting."""
    while True:
        try:
            if os.waitpid(-1, os.WNOHANG | 0x40000000)[0] == 0:     # __WALL
                return
        except ChildProcessError:
            return

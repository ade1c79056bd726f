"""pstree, property-based: random programs of fork / setsid / setpgid /
subreaper / exit / reap steps (up to 12 tasks) run, are dumped and restored,
and every task's (pid, ppid, pgid, sid) must be what it was. Shrunk failures
become regular tests below.
"""
import itertools
import os
import signal

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

MAX_TASKS = 12


@st.composite
def programs(draw):
    """Steps the kernel accepts, modelled as the kernel applies them: fork,
    setsid (not by a group leader), setpgid to its own or an existing group
    of its session (not by a session leader), becoming a child subreaper,
    exit (the root never; a task with children only when a subreaper above
    takes them, the nearest one: kernel/exit.c find_new_reaper), and reaping
    exited children. Exits and reaps make what needs helper tasks: sessions
    and groups whose leader is gone, orphans in another session than their
    reaper's; leaders leave their groups."""
    # task index -> ppid, sid, pgid (as indexes), state, subreaper flag
    tasks = [{"ppid": None, "sid": 0, "pgid": 0, "state": "alive", "sub": False}]
    steps = []
    if draw(st.booleans()):
        tasks[0]["sub"] = True
        steps.append("r0")

    def present(i):             # alive or a zombie: its pid, group, session exist
        return tasks[i]["state"] != "reaped"

    def reaper_of(i):           # nearest subreaper above i
        up = tasks[i]["ppid"]
        while up is not None and not tasks[up]["sub"]:
            up = tasks[up]["ppid"]
        return up

    def groups_to_join(i):
        me = tasks[i]
        return [j for j, t in enumerate(tasks) if present(j) and t["sid"] == me["sid"]
                and t["pgid"] != me["pgid"]] if me["sid"] != i else []

    def kids(i, state=("alive", "zombie")):
        return [t for t in tasks if t["ppid"] == i and t["state"] in state]

    can = {
        "f": lambda i: len(tasks) < MAX_TASKS,
        "s": lambda i: not any(present(j) and t["pgid"] == i for j, t in enumerate(tasks)),
        "g": lambda i: tasks[i]["sid"] != i and tasks[i]["pgid"] != i,
        "j": lambda i: bool(groups_to_join(i)),
        "r": lambda i: not tasks[i]["sub"],
        "x": lambda i: i != 0 and (reaper_of(i) is not None or not kids(i)),
        "w": lambda i: bool(kids(i, ("zombie",))),
    }
    # Each step picks among the tasks it is valid for, so few are wasted.
    for op, pick, pick2 in draw(st.lists(st.tuples(st.sampled_from("fffssggjjrxxww"),
                                                   st.integers(0, 63), st.integers(0, 63)),
                                         min_size=4, max_size=24)):
        cands = [i for i, t in enumerate(tasks) if t["state"] == "alive" and can[op](i)]
        if not cands:                   # nothing to do it to yet: grow the tree
            op = "f"
            cands = [i for i, t in enumerate(tasks) if t["state"] == "alive" and can[op](i)]
            if not cands:
                continue
        who = cands[pick % len(cands)]
        me = tasks[who]
        if op == "f":
            tasks.append({"ppid": who, "sid": me["sid"], "pgid": me["pgid"],
                          "state": "alive", "sub": False})
            steps.append(f"f{who}")
        elif op == "s":
            me["sid"] = me["pgid"] = who
            steps.append(f"s{who}")
        elif op == "g":
            me["pgid"] = who
            steps.append(f"g{who}")
        elif op == "j":
            others = groups_to_join(who)
            other = others[pick2 % len(others)]
            me["pgid"] = tasks[other]["pgid"]
            steps.append(f"j{who}:{other}")
        elif op == "r":
            me["sub"] = True
            steps.append(f"r{who}")
        elif op == "x":
            for t in kids(who):
                t["ppid"] = reaper_of(who)
            me["state"] = "zombie"
            steps.append(f"x{who}")
        elif op == "w":
            for t in kids(who, ("zombie",)):
                t["state"] = "reaped"
            steps.append(f"w{who}")
    return ",".join(steps) or "f0"


def _ids(pid):
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return int(f[1]), int(f[2]), int(f[3])


def _tree(root):
    kids = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                kids.setdefault(_ids(int(name))[0], []).append(int(name))
            except (OSError, IndexError):
                pass
    out, todo = {}, [root]
    while todo:
        pid = todo.pop()
        out[pid] = _ids(pid)
        todo += kids.get(pid, [])
    return out


_runs = itertools.count()


def check_program(steps, build_target, target_runner, tmp_path):
    """Run, dump, check gone and reaped, restore; the tree must be what it
    was, and the root checks every task's ids and its own subreaper flag."""
    from engine.testing import dump_to, engine_cli
    target = target_runner.start(build_target("sessions"), "--steps", steps)
    before = _tree(target.pid)
    img = tmp_path / f"img{next(_runs)}"
    try:
        dump_to(target, img)
        engine_cli("restore", "-D", str(img))
        after = _tree(target.pid)
        assert after == before, f"program {steps}"
        assert target.verdict() == "PASS", f"program {steps}"
    finally:
        _kill_and_reap(set(before) - {target.pid})


def _kill_and_reap(pids):
    """Kill the tree's tasks and reap them: they come to us (the subreaper)
    once their parents are gone, zombies too, so wait until every pid is."""
    import time
    for _ in range(10000):
        left = [pid for pid in pids if os.path.exists(f"/proc/{pid}")]
        if not left:
            return
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, os.WNOHANG)
            except (ProcessLookupError, ChildProcessError):
                pass
        time.sleep(0.001)


@pytest.mark.slow
@settings(max_examples=60, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=programs())
def test_random_session_and_group_programs(steps, build_target, target_runner, tmp_path):
    check_program(steps, build_target, target_runner, tmp_path)


@pytest.mark.parametrize("steps", [
    "f0,s1,f1,g2,f2",          # own session, a group in it, a child inheriting both
    "f0,f0,g2,j1:2,f1",        # a sibling joins a group another sibling leads
])
def test_session_and_group_programs(steps, build_target, target_runner, tmp_path):
    check_program(steps, build_target, target_runner, tmp_path)


def test_parent_moving_to_a_new_session_after_forking(build_target, target_runner, tmp_path):
    """Shrunk from the property test: task 1 forks task 2, then calls
    setsid; task 2 stays in the old session under a parent in a new one.
    The fork is planned before the parent's setsid."""
    check_program("f0,f1,s1", build_target, target_runner, tmp_path)


@pytest.mark.parametrize("steps", [
    # The leader of task 2's session exited and was reaped; task 2 went to
    # the subreaper root: a helper with pid 1 makes session 1, forks task 2
    # and exits; root reaps it.
    "r0,f0,s1,f1,x1,w0",
    # The same under a subreaper in the tree (task 1), not the root.
    "r0,f0,r1,f1,s2,f2,x2,w1",
    # The leader is a zombie: it forks the orphan, then dies as dumped.
    "r0,f0,s1,f1,x1",
    # The leader lives, in another branch: a helper with a free pid forked
    # by the leader forks the orphan (task 3) and exits; root inherits it.
    "r0,f0,s1,f1,f2,x2,w1",
    # Group 1's leader is gone: a helper with pid 1, forked by task 2,
    # makes the group, task 2 joins it, the helper exits and is reaped.
    "f0,f0,g1,j2:1,x1,w0",
    # The leader of group 1 left it: it makes the group, task 2 joins,
    # then it goes back to group 0.
    "f0,f0,g1,j2:1,j1:0",
    # Two leaders swap groups, each kept by another member (no cycle).
    "f0,f0,f0,f0,g1,g2,j3:1,j4:2,j1:4,j2:3",
    # Task 3 joins a group led in another branch (by its cousin).
    "f0,f1,g2,f0,j3:2",
    # Session 2 lives (leader task 2, under task 1); task 4 of it was
    # orphaned to the root before task 1 became a subreaper, task 6 after:
    # helpers forked by task 2 leave task 4 before task 1 gets its flag,
    # task 6 after.
    "r0,f0,f1,s2,f2,f3,x3,w2,r1,f2,f5,x5,w2",
    # Shrunk from a simulation of the generator: tasks 3 and 5 end in each
    # other's group; task 6 kept group 3 meanwhile, then left it: a helper
    # born in group 3 keeps it until task 5 is in.
    "r0,f0,g1,j1:0,f1,g1,g2,x1,x2,f0,g3,f3,x4,w0,f0,g5,r3,f3,w3,j3:5,j5:6,s6",
], ids=["session-helper", "session-helper-nested-subreaper", "zombie-leader-forks",
        "fresh-helper-from-leader", "group-helper", "leader-left-group",
        "leaders-swap-groups", "group-in-other-branch", "subreaper-after-orphaning",
        "group-keeper-helper"])
def test_sessions_and_groups_needing_helpers(steps, build_target, target_runner, tmp_path):
    check_program(steps, build_target, target_runner, tmp_path)


def _spoiled(img, edit):
    """pstree.img of a dumped counter with `edit(tree, free_pid)` applied."""
    from engine.images import ImageDir
    images = ImageDir(str(img))
    tree = images.read("pstree")
    # Below the tree's pids, which the kernel's pid counter has passed: the
    # engine's own processes never take them meanwhile.
    free = min(e.pid for e in tree) - 3
    while any(os.path.exists(f"/proc/{p}") for p in range(free, free + 3)):
        free -= 3
    edit(tree, free)
    images.write("pstree", tree)
    return free


@pytest.mark.parametrize("edit,entry,words", [
    # A session leader whose group is another one.
    (lambda tree, free: setattr(tree[0], "pgid", free), 0, "a session leader cannot leave"),
    # A group with members in two sessions.
    (lambda tree, free: tree.extend([
        _entry(free, tree[0].pid, sid=free, pgid=free),
        _entry(free + 1, tree[0].pid, sid=tree[0].sid, pgid=free)]), 2, "but in session"),
    # Two tasks, each the other's parent.
    (lambda tree, free: tree.extend([
        _entry(free, free + 1, sid=tree[0].sid, pgid=tree[0].pgid),
        _entry(free + 1, free, sid=tree[0].sid, pgid=tree[0].pgid)]), 1,
     "is not an earlier task"),
], ids=["session-leader-outside-its-group", "group-across-sessions", "parent-cycle"])
@pytest.mark.serial         # its free pids must stay free of other tests' tasks
def test_inconsistent_tree_is_refused(dumped_counter, edit, entry, words):
    """ids that no history of fork/setsid/setpgid/exit gives: refused
    before any fork, in one line naming pstree.img and the entry."""
    from engine.testing import engine_fails, task_gone
    target, img = dumped_counter
    free = _spoiled(img, edit)
    line = engine_fails("restore", "-D", img)
    assert f"pstree.img: entry {entry}:" in line and words in line, line
    assert task_gone(target.pid) and task_gone(free) and task_gone(free + 1)


def _entry(pid, ppid, sid, pgid):
    from engine.images.proto import tree_pb2
    return tree_pb2.pstree_entry(pid=pid, ppid=ppid, pgid=pgid, sid=sid, threads=[pid])


@pytest.mark.serial         # its free pids must stay free of other tests' tasks
def test_session_nobody_can_be_born_in_is_refused(dumped_counter):
    """A child in a session that neither its parent nor the parent's birth
    can give (the leader is gone), under a parent that is no child subreaper:
    no history makes that (an orphan only comes to a subreaper), and no
    helper could leave the child to that parent. Refused before any fork."""
    from engine.testing import engine_fails, task_gone
    target, img = dumped_counter
    free = _spoiled(img, lambda tree, free: tree.append(
        _entry(free, tree[0].pid, sid=free + 1, pgid=free)))
    line = engine_fails("restore", "-D", img)
    assert "pstree.img: entry 0" in line and "no helper task can give them" in line
    assert task_gone(target.pid) and task_gone(free) and task_gone(free + 1)


def test_session_helper_pid_in_use_is_refused(build_target, target_runner, tmp_path):
    """Still refused: session 1's leader was reaped and its pid is now
    another process's, so no helper can make the session for the orphan.
    The real dump is refused before any fork, naming pstree.img and the
    orphan's parent's entry; nothing of the tree runs."""
    from engine.testing import dump_to, engine_fails, task_gone
    from engine.tracer.clone import clone_with_pid
    target = target_runner.start(build_target("sessions"), "--steps", "r0,f0,s1,f1,x1,w0")
    img = tmp_path / "img"
    tree = dump_to(target, img).read("pstree")
    session = tree[1].sid
    assert len(tree) == 2 and session not in (e.pid for e in tree)
    squatter = clone_with_pid(session)
    if squatter == 0:
        os.execv("/bin/sleep", ["sleep", "1000"])
    try:
        line = engine_fails("restore", "-D", img)
    finally:
        os.kill(squatter, signal.SIGKILL)
        os.waitpid(squatter, 0)
    assert "pstree.img: entry 0:" in line and "no helper task can give them" in line, line
    assert all(task_gone(e.pid) for e in tree)

"""core: registers, FPU/AVX state, signal handlers and masks survive a restore.

Every test runs a real target, dumps it (it is killed and reaped), restores
it with the same pid, and lets the target check its own state (DESIGN §6).
"""
import json
import subprocess

import pytest


@pytest.mark.parametrize("variant", ["static-pie", "static-nopie", "dynamic-pie", "dynamic-nopie"])
def test_counter_runs_on_with_its_pid(build_target, target_runner, dump_restore, tmp_path, variant):
    target = target_runner.start(build_target("counter", variant))
    assert dump_restore(target, tmp_path / "img") == "PASS"


def test_fpu_and_avx_registers_are_kept_mid_loop(build_target, target_runner, dump_restore, tmp_path):
    target = target_runner.start(build_target("fpu"))
    assert dump_restore(target, tmp_path / "img") == "PASS"


@pytest.mark.parametrize("args", [(), ("--pending",)], ids=["plain", "pending"])
def test_signal_handlers_mask_and_altstack(build_target, target_runner, dump_restore, tmp_path, args):
    target = target_runner.start(build_target("sighandler"), *args)
    assert dump_restore(target, tmp_path / "img") == "PASS"


def test_task_blocked_in_restartable_read(build_target, target_runner, dump_restore, tmp_path):
    target = target_runner.start(build_target("readpipe"))
    assert dump_restore(target, tmp_path / "img") == "PASS"


def test_python_interpreter_runs_on(build_target, target_runner, dump_restore, tmp_path):
    target = target_runner.start(build_target("counter.py"))
    assert dump_restore(target, tmp_path / "img") == "PASS"


def test_python_of_the_engine_itself_runs_on(build_target, target_runner, engine_cli, tmp_path):
    """A target running the engine's own interpreter binary: the restored
    task still maps the exe the engine forked it with, so PR_SET_MM_MAP with
    the dumped exe's fd gives EBUSY and is retried without it (issue 19: the
    python3 idle loop of the bench failed there)."""
    import os
    import sys
    from engine.testing import dump_to
    target = target_runner.start(build_target("counter.py"), interpreter=sys.executable)
    exe = os.readlink(f"/proc/{target.pid}/exe")
    assert exe == os.path.realpath(sys.executable)
    dump_to(target, tmp_path / "img")
    engine_cli("restore", "-D", tmp_path / "img", "--verify")
    assert os.readlink(f"/proc/{target.pid}/exe") == exe
    assert target.verdict() == "PASS"


def test_hook_engine_dump_task(build_target, target_runner, engine_cli, tmp_path):
    """Each plugin's engine_dump_task wrote its per-task images, and the
    dump leaves the target running with --leave-running."""
    target = target_runner.start(build_target("counter", "static-nopie"))
    engine_cli("dump", "-t", target.pid, "-D", tmp_path, "--leave-running")
    names = {p.name for p in tmp_path.iterdir()}
    for image in (f"core-{target.pid}.img", f"mm-{target.pid}.img", f"ids-{target.pid}.img",
                  f"fs-{target.pid}.img", f"pagemap-{target.pid}.img"):
        assert image in names
    assert target.verdict() == "PASS"


def test_task_name_is_restored(build_target, target_runner, engine_cli, tmp_path):
    target = target_runner.start(build_target("counter", "static-nopie"))
    comm = open(f"/proc/{target.pid}/comm").read()
    engine_cli("dump", "-t", target.pid, "-D", tmp_path)
    target.reap()
    engine_cli("restore", "-D", tmp_path)
    assert open(f"/proc/{target.pid}/comm").read() == comm
    assert target.verdict() == "PASS"


def _open_up(path):
    """Let uid 1000 reach and write the target's dir (pytest's are 0700)."""
    import os
    from pathlib import Path
    path = Path(path)
    os.chmod(path, 0o777)
    for parent in path.parents:
        if str(parent) in ("/", "/tmp"):
            break
        os.chmod(parent, os.stat(parent).st_mode | 0o711)


@pytest.mark.parametrize("args", [(), ("--user", "1")], ids=["root-fewer-caps", "uid-1000"])
def test_credentials_and_capabilities(build_target, target_runner, dump_restore, tmp_path,
                                      args):
    import time
    target = target_runner.start(build_target("creds"), *args)
    _open_up(target.workdir)
    # As uid 1000 the target's last step is raising the ambient
    # CAP_NET_BIND_SERVICE (bit 10): dump only once /proc shows it.
    want_amb = 1 << 10 if args else 0
    deadline = time.monotonic() + 5
    while int(open(f"/proc/{target.pid}/status").read().split("CapAmb:")[1].split()[0],
              16) != want_amb:
        assert time.monotonic() < deadline, "the target did not raise its ambient cap"
        time.sleep(0.01)
    assert dump_restore(target, tmp_path / "img") == "PASS"


def _restored_core(target, dump_restore, img) -> dict:
    """dump_restore the target (it must report PASS), then its core image as
    CRIU's own decoder (crit) reads it."""
    assert dump_restore(target, img) == "PASS"
    out = subprocess.run(["crit", "decode", "-i", str(img / f"core-{target.pid}.img")],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout)["entries"][0]


def _spoiled_core(dumped, spoil) -> int:
    """Let spoil(core, pid) change the dumped counter's core image; returns
    its pid."""
    from engine.images import ImageDir
    target, img = dumped
    images = ImageDir(str(img))
    core = images.read("core", id=target.pid)[0]
    spoil(core, target.pid)
    images.write("core", [core], id=target.pid)
    return target.pid


def _refused(dumped, spoil) -> tuple[str, int]:
    """The one error line of a restore of the spoiled image, which must
    start nothing; and the pid."""
    from engine.testing import engine_fails, task_gone
    pid = _spoiled_core(dumped, spoil)
    line = engine_fails("restore", "-D", dumped[1])
    assert task_gone(pid)
    return line, pid


@pytest.mark.parametrize("variant", ["dynamic-pie", "static-nopie"])
def test_parent_death_signals(build_target, target_runner, dump_restore, tmp_path, variant):
    """A thread's parent-death signal is read back by the thread itself, and
    a grandchild's comes from the kernel when the target kills its parent;
    the target's own, whose parent is not in the tree, is dropped."""
    target = target_runner.start(build_target("pdeath", variant))
    core = _restored_core(target, dump_restore, tmp_path / "img")
    assert core["thread_core"]["pdeath_sig"] == 12          # SIGUSR2, as dumped


def test_bad_parent_death_signal_is_refused(dumped_counter):
    def spoil(core, pid):
        core.thread_core.pdeath_sig = 99
    line, pid = _refused(dumped_counter, spoil)
    assert line.endswith(f"core-{pid}.img: thread_core.pdeath_sig 99 is not a signal"), line


@pytest.mark.parametrize("variant", ["dynamic-pie", "static-nopie"])
def test_interval_timers(build_target, target_runner, dump_restore, tmp_path, variant):
    """ITIMER_REAL keeps firing after restore; ITIMER_VIRTUAL and ITIMER_PROF
    keep their intervals (the target checks them with getitimer)."""
    target = target_runner.start(build_target("itimers", variant))
    timers = _restored_core(target, dump_restore, tmp_path / "img")["tc"]["timers"]
    assert (timers["virt"]["isec"], timers["virt"]["iusec"]) == (7, 250000)
    assert (timers["real"]["isec"], timers["real"]["iusec"]) == (0, 20000)


def _with_timers(core):
    for name in ("real", "virt", "prof"):
        getattr(core.tc.timers, name).SetInParent()


@pytest.mark.parametrize("field, value", [("iusec", 1000000), ("vsec", 1 << 63)])
def test_bad_interval_timer_is_refused(dumped_counter, field, value):
    def spoil(core, pid):
        _with_timers(core)
        setattr(core.tc.timers.prof, field, value)
    line, pid = _refused(dumped_counter, spoil)
    assert line.endswith(f"core-{pid}.img: tc.timers.prof.{field} {value} is out of range"), line


@pytest.mark.parametrize("variant", ["dynamic-pie", "static-nopie"])
def test_posix_timers(build_target, target_runner, dump_restore, tmp_path, variant):
    """timer_create timers come back with their ids, clocks, intervals,
    values and signals, one of them to a thread of its own (the target
    checks them and the signals it gets)."""
    target = target_runner.start(build_target("ptimers", variant))
    posix = _restored_core(target, dump_restore, tmp_path / "img")["tc"]["timers"]["posix"]
    assert sorted((t["it_id"], t["clock_id"], t["it_sigev_notify"]) for t in posix) == [
        (0, 1, 0), (1, 0, 1), (2, 1, 4)]


@pytest.mark.parametrize("field, value, words", [
    ("it_id", 1 << 31, "it_id 2147483648 is out of range"),
    ("clock_id", 99, "clock_id 99 is not a supported clock"),
    ("it_sigev_notify", 2, "it_sigev_notify 2 is not supported"),
    ("notify_thread_id", 1, "notify_thread_id 1 is not a thread of the task"),
])
def test_bad_posix_timer_is_refused(dumped_counter, field, value, words):
    def spoil(core, pid):
        _with_timers(core)
        timer = core.tc.timers.posix.add(it_id=0, clock_id=1, si_signo=10, it_sigev_notify=4,
                                         sival_ptr=0, overrun=0, isec=0, insec=0, vsec=1,
                                         vnsec=0, notify_thread_id=pid)
        setattr(timer, field, value)
    line, pid = _refused(dumped_counter, spoil)
    assert line.endswith(f"core-{pid}.img: tc.timers.posix[0]: {words}"), line


@pytest.mark.parametrize("variant", ["dynamic-pie", "static-nopie"])
def test_resource_limits(build_target, target_runner, dump_restore, tmp_path, variant):
    """Lowered soft and hard limits come back as they were (the target
    checks them with getrlimit); crit reads all 16 from the image."""
    target = target_runner.start(build_target("rlimits", variant))
    limits = _restored_core(target, dump_restore, tmp_path / "img")["tc"]["rlimits"]["rlimits"]
    assert len(limits) == 16 and (limits[7]["cur"], limits[7]["max"]) == (200, 300)


def test_hard_limit_above_ours_is_kept_as_ours_with_a_warning(dumped_counter, engine_cli):
    """Raising a hard limit takes CAP_SYS_RESOURCE: one the engine cannot
    give comes back at the engine's own, and the restore says so."""
    import resource
    ours = resource.getrlimit(resource.RLIMIT_NOFILE)[1]

    def spoil(core, pid):
        core.tc.rlimits.rlimits[resource.RLIMIT_NOFILE].max = ours + 1
    pid = _spoiled_core(dumped_counter, spoil)
    out = engine_cli("restore", "-D", dumped_counter[1])
    assert (f"core-{pid}.img: tc.rlimits.rlimits[7]: max {ours + 1} is above this "
            f"engine's {ours}") in out.stderr, out.stderr
    assert resource.prlimit(pid, resource.RLIMIT_NOFILE)[1] == ours
    assert dumped_counter[0].verdict() == "PASS"


def test_bad_resource_limit_is_refused(dumped_counter):
    def spoil(core, pid):
        core.tc.rlimits.rlimits[3].max, core.tc.rlimits.rlimits[3].cur = 10, 20
    line, pid = _refused(dumped_counter, spoil)
    assert line.endswith(f"core-{pid}.img: tc.rlimits.rlimits[3]: cur 20 is above max 10"), line


# --- the task-state plugins: their tracer nodes and their order ---

TASK_STATE = ("mem", "threads", "rlimits", "creds", "timers", "core")


def test_task_state_plugins_run_in_their_order(build_target, target_runner, engine_cli,
                                               tmp_path):
    """Each piece of a task's state is a tracer node of its own plugin, and
    hooks.toml orders them (`engine plan --tree` names each edge's source):
    threads before what is per thread, limits before credentials, timers
    last of the state, registers after all."""
    from engine.testing import dump_to
    target = target_runner.start(build_target("ptimers", "dynamic-pie"))
    img = tmp_path / "img"
    dump_to(target, img)
    order, tree = engine_cli("plan", "-D", img, "--tree").stdout.split("\n\n", 1)
    plugin_of, tracer = {}, []           # label -> plugin; the task's tracer nodes, in order
    for line in order.splitlines():
        label, _, where = line.split("  ", 2)[-1].rpartition("  [")
        plugin, _, runs = where.rstrip("]").partition("; ")
        plugin_of[label] = plugin
        if runs == f"tracer {target.pid}":
            tracer.append(plugin)
    assert tracer == list(TASK_STATE), order
    # The order is the graph's edges from hooks.toml, not its listing order.
    before: dict[str, set[str]] = {}
    for line in tree.splitlines():
        if not line.startswith(" "):
            node = plugin_of[line.rpartition("  [")[0]]
        elif "(hooks.toml" in line:
            label = line.strip()[len("after "):].rpartition("  (")[0]
            before.setdefault(node, set()).add(plugin_of.get(label, label))
    assert {"mem"} <= before["threads"]
    assert {"threads"} <= before["rlimits"]
    assert {"threads", "rlimits"} <= before["creds"]
    assert {"threads", "rlimits", "creds"} <= before["timers"]
    assert set(TASK_STATE[:-1]) <= before["core"]


def test_timers_disabled_refuse_a_set_holding_timers(build_target, target_runner, engine_cli,
                                                    tmp_path):
    from engine.testing import dump_to, engine_fails, task_gone
    target = target_runner.start(build_target("itimers", "static-nopie"))
    img = tmp_path / "img"
    dump_to(target, img)
    line = engine_fails("restore", "-D", img, "--disable", "timers")
    assert line.endswith(f"core-{target.pid}.img: tc.timers: needs timers, provided by plugin "
                         "timers, which is disabled"), line
    assert task_gone(target.pid)


def test_timers_disabled_restore_a_set_without_timers(dumped_counter, engine_cli):
    target, img = dumped_counter
    engine_cli("restore", "-D", img, "--disable", "timers")
    assert target.verdict() == "PASS"


@pytest.mark.parametrize("name", ["threads", "rlimits", "creds", "core"])
def test_task_state_every_task_holds_cannot_be_disabled(dumped_counter, name):
    from engine.testing import engine_fails
    line = engine_fails("restore", "-D", dumped_counter[1], "--disable", name)
    assert line.endswith(f"plugin {name} cannot be disabled"), line


@pytest.mark.parametrize("field, value, want", [
    ("cs", 0x23, "thread_info.gpregs.cs 0x23 is not a native x86_64 selector (0x33)"),
    ("ss", 0, "thread_info.gpregs.ss 0x0 is not a native x86_64 selector (0x2b)"),
    ("ds", 0x7, "thread_info.gpregs.ds 0x7 is not a native x86_64 selector (0x0 or 0x2b)"),
    ("fs", 0x2, "thread_info.gpregs.fs 0x2 is not a native x86_64 selector"),
    ("gs_base", 1 << 63, f"thread_info.gpregs.gs_base {1 << 63:#x} is past the end of user"),
    ("ip", 1 << 63, f"thread_info.gpregs.ip {1 << 63:#x} is past the end of user"),
])
def test_register_the_kernel_will_not_take_is_refused(dumped_counter, field, value, want):
    """A 32-bit code segment (issue 20: cs 0x23 made the restore spin
    forever), a selector PTRACE_SETREGS refuses, an LDT one, a base past
    user space: refused before anything starts, in one line, in bounded time."""
    from engine.testing import engine_fails, task_gone

    def spoil(core, pid):
        setattr(core.thread_info.gpregs, field, value)
    pid = _spoiled_core(dumped_counter, spoil)
    line = engine_fails("restore", "-D", dumped_counter[1], timeout=60)
    assert task_gone(pid)
    assert line.endswith(f"core-{pid}.img: {want}") or f"core-{pid}.img: {want}" in line, line

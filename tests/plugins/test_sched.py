"""sched: each thread's policy, RT priority, nice, CPU affinity and timer
slack (issue 15)."""
import ctypes
import json
import os
import shutil
import subprocess

import pytest

from engine.testing import dump_to, engine_cli, engine_fails, task_gone

SCHED_FIFO, SCHED_BATCH, SCHED_RESET_ON_FORK = 1, 3, 0x40000000


def _tids(images, pid):
    return sorted(next(e for e in images.read("pstree") if e.pid == pid).threads)


@pytest.mark.parametrize("variant", ["dynamic-pie", "static-nopie"])
def test_each_thread_keeps_its_scheduling(build_target, target_runner, dump_restore,
                                          tmp_path, variant):
    """Main thread SCHED_FIFO 17 with reset-on-fork, nice -4, on one CPU;
    thread A nice 7, slack 123457 ns; thread B nice 3, SCHED_BATCH: each
    reads its own back (--verify compares the main thread's)."""
    target = target_runner.start(build_target("sched", variant))
    assert dump_restore(target, tmp_path / "img") == "PASS"


def test_images_hold_criu_fields_and_crit_decodes_them(build_target, target_runner, tmp_path):
    target = target_runner.start(build_target("sched", "static-nopie"))
    images = dump_to(target, tmp_path / "img")
    tids = _tids(images, target.pid)
    cores = {tid: images.read_one("core", id=tid).thread_core for tid in tids}
    main = cores[target.pid]
    assert (main.sched_policy, main.sched_prio, main.sched_nice) == \
        (SCHED_FIFO | SCHED_RESET_ON_FORK, 17, -4)
    assert len(main.cpu_affinity) == 1 and bin(main.cpu_affinity[0]).count("1") == 1
    assert sorted((c.sched_nice, c.sched_policy, c.timerslack_ns) for tid, c in cores.items()
                  if tid != target.pid) == [(3, SCHED_BATCH, 50000), (7, 0, 123457)]
    if shutil.which("crit") is None:
        pytest.skip("no crit")
    out = subprocess.run(["crit", "decode", "-i", str(tmp_path / "img" / f"core-{target.pid}.img")],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    decoded = json.loads(out.stdout)["entries"][0]["thread_core"]
    assert (decoded["sched_policy"], decoded["sched_prio"], decoded["sched_nice"]) == \
        (SCHED_FIFO | SCHED_RESET_ON_FORK, 17, -4)


def test_image_without_extensions_keeps_the_engines(build_target, target_runner, dump_restore,
                                                    tmp_path):
    """CRIU writes no timer slack or affinity: a set without them restores,
    each thread keeping the engine's (thread A's nice still comes back)."""
    target = target_runner.start(build_target("sched", "static-nopie"), "--plain")
    img = tmp_path / "img"
    images = dump_to(target, img)
    for tid in _tids(images, target.pid):
        core = images.read_one("core", id=tid)
        core.thread_core.ClearField("timerslack_ns")
        core.thread_core.ClearField("cpu_affinity")
        images.write("core", [core], id=tid)
    engine_cli("restore", "-D", img, "--verify")
    assert target.verdict() == "PASS"


def _sched_setattr_deadline(pid):
    """SCHED_DEADLINE from outside: 1 ms every 100 ms (sched_setattr(2))."""
    import struct
    # struct sched_attr: size, policy, flags, nice, priority, runtime, deadline, period
    attr = ctypes.create_string_buffer(struct.pack("<IIQiIQQQ", 48, 6, 0, 0, 0, 1_000_000,
                                                   100_000_000, 100_000_000))
    sys_sched_setattr = 314
    libc = ctypes.CDLL(None, use_errno=True)
    r = libc.syscall(ctypes.c_long(sys_sched_setattr), ctypes.c_long(pid),
                     ctypes.c_void_p(ctypes.addressof(attr)), ctypes.c_long(0))
    if r != 0:
        pytest.skip(f"sched_setattr(SCHED_DEADLINE): {os.strerror(ctypes.get_errno())}")


def test_sched_deadline_is_refused_at_dump(build_target, target_runner, tmp_path):
    target = target_runner.start(build_target("counter"))
    _sched_setattr_deadline(target.pid)
    line = engine_fails("dump", "-t", target.pid, "-D", tmp_path / "img")
    assert line == (f"engine: error: task {target.pid}: SCHED_DEADLINE: its runtime, deadline "
                    "and period have no field in the image")
    assert not task_gone(target.pid)
    os.sched_setscheduler(target.pid, os.SCHED_OTHER, os.sched_param(0))
    assert target.verdict() == "PASS"


def _spoil(field, value):
    def spoil(tc):
        if field == "cpu_affinity":
            del tc.cpu_affinity[:]
            tc.cpu_affinity.extend(value)
        else:
            setattr(tc, field, value)
    return spoil


@pytest.mark.parametrize("field, value, want", [
    ("sched_policy", 4, "thread_core.sched_policy 0x4: not a scheduling policy of Linux"),
    ("sched_policy", 6, "thread_core.sched_policy 6: SCHED_DEADLINE without its runtime, "
                        "deadline and period"),
    ("sched_nice", 99, "thread_core.sched_nice 99: outside -20..19"),
    ("sched_prio", 100, "thread_core.sched_prio 100: outside 1..99 for SCHED_FIFO"),
    ("cpu_affinity", [0, 1 << 3], "thread_core.cpu_affinity 67: no CPU of this machine"),
    ("cpu_affinity", [0], "thread_core.cpu_affinity none: no CPU of this machine"),
])
def test_hostile_scheduling_is_refused(build_target, target_runner, tmp_path, field, value,
                                       want):
    target = target_runner.start(build_target("sched", "static-nopie"))
    img = tmp_path / "img"
    images = dump_to(target, img)
    core = images.read_one("core", id=target.pid)
    _spoil(field, value)(core.thread_core)
    images.write("core", [core], id=target.pid)
    line = engine_fails("restore", "-D", img)
    assert line.startswith(f"engine: error: core-{target.pid}.img: {want}"), line
    assert task_gone(target.pid)


def test_hostile_timer_slack_of_a_thread_is_refused(build_target, target_runner, tmp_path):
    target = target_runner.start(build_target("sched", "static-nopie"))
    img = tmp_path / "img"
    images = dump_to(target, img)
    tid = next(t for t in _tids(images, target.pid) if t != target.pid)
    core = images.read_one("core", id=tid)
    core.thread_core.timerslack_ns = 1 << 63
    images.write("core", [core], id=tid)
    assert engine_fails("restore", "-D", img) == (
        f"engine: error: core-{tid}.img: thread_core.timerslack_ns {1 << 63}: no call sets it")
    assert task_gone(target.pid)


def test_real_time_without_cap_sys_nice_fails_naming_it(build_target, target_runner,
                                                        tmp_path):
    """An engine without CAP_SYS_NICE (and no RLIMIT_RTPRIO) cannot give
    SCHED_FIFO back: refused before anything starts, in one line."""
    target = target_runner.start(build_target("sched", "static-nopie"))
    img = tmp_path / "img"
    dump_to(target, img)
    from engine.testing import engine_command
    cmd, env = engine_command("restore", "-D", img)
    proc = subprocess.run(["capsh", "--drop=cap_sys_nice", "--", "-c",
                           'ulimit -r 0 && exec "$@"', "sh", *cmd],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode != 0
    assert proc.stderr.strip() == (
        f"engine: error: core-{target.pid}.img: thread_core.sched_policy SCHED_FIFO priority "
        "17: setting it takes CAP_SYS_NICE, which the engine lacks")
    assert task_gone(target.pid)

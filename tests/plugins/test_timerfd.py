"""timerfd: clocks, intervals, time left, settime flags, unread expirations;
hostile images."""
import pytest

from engine.testing import dump_to


@pytest.mark.parametrize("variant", ["dynamic-pie", "static-nopie"])
def test_timerfd_clocks_and_expirations(build_target, target_runner, dump_restore, tmp_path,
                                        variant):
    """BOOTTIME every 7.123 s, REALTIME absolute with CANCEL_ON_SET, an
    expired periodic MONOTONIC one never read, a BOOTTIME_ALARM one, one
    never armed: each comes back, the periodic one with every expiration
    missed before the dump and still firing."""
    target = target_runner.start(build_target("timerfd", variant))
    assert dump_restore(target, tmp_path / "img") == "PASS"


def test_missed_periods_are_counted_at_dump(build_target, target_runner, tmp_path):
    """The kernel shows ticks 1 for an expired periodic timer never read; the
    dump writes every missed period (>= the 14 the target slept through), and
    the time to the next period."""
    target = target_runner.start(build_target("timerfd"))
    images = dump_to(target, tmp_path / "img")
    target.kill()
    periodic = [e.tfd for e in images.read("files")
                if e.HasField("tfd") and e.tfd.insec == 10_000_000]
    assert len(periodic) == 1 and periodic[0].ticks >= 14, periodic
    assert (periodic[0].vsec, periodic[0].vnsec) != (0, 0), periodic


@pytest.mark.parametrize("field, value, want", [
    ("clockid", 4, "clockid 4 is not one of REALTIME (0), MONOTONIC (1), BOOTTIME (7), "
                   "REALTIME_ALARM (8), BOOTTIME_ALARM (9)"),
    ("vnsec", 1_000_000_000, "vnsec 1000000000 is not under a second"),
    ("insec", 2**64 - 1, "insec 18446744073709551615 is not under a second"),
    ("isec", 2**63, "isec 9223372036854775808 is over the largest time"),
    ("settime_flags", 4, "settime_flags 0x4 hold unknown bits 0x4"),
    ("flags", 0o2 | 0o100, "flags 0o102 hold unknown bits 0o100"),
])
def test_hostile_timerfd_is_refused(build_target, target_runner, engine_cli, tmp_path,
                                    field, value, want):
    """files.img edited with the protobuf classes: one line naming the image,
    the entry and the field; no task left."""
    from engine.testing import engine_fails, task_gone
    target = target_runner.start(build_target("timerfd"))
    img = tmp_path / "img"
    images = dump_to(target, img)
    files = images.read("files")
    victim = next(e for e in files if e.HasField("tfd"))
    setattr(victim.tfd, field, value)
    images.write("files", files)
    line = engine_fails("restore", "-D", img)
    assert f"files.img: TIMERFD id {victim.id}: {want}" in line, line
    assert task_gone(target.pid)


def test_crit_decodes_timerfd(build_target, target_runner, tmp_path):
    """Debian's crit decodes the tfd bodies: clocks and intervals as dumped."""
    import json
    import shutil
    import subprocess
    if shutil.which("crit") is None:
        pytest.skip("crit is not installed")
    target = target_runner.start(build_target("timerfd"))
    img = tmp_path / "img"
    dump_to(target, img)
    target.kill()
    out = subprocess.run(["crit", "decode", "-i", str(img / "files.img")],
                         capture_output=True, text=True, check=True).stdout
    bodies = [e["tfd"] for e in json.loads(out)["entries"] if "tfd" in e]
    assert sorted(b["clockid"] for b in bodies) == [0, 1, 1, 7, 9]
    boot = next(b for b in bodies if b["clockid"] == 7)
    assert (boot["isec"], boot["insec"]) == (7, 123000000)
    assert next(b for b in bodies if b["clockid"] == 0)["settime_flags"] == 3

"""signalfd: masks, flags, a signal pending through the dump; hostile images."""
import pytest

from engine.testing import dump_to


@pytest.mark.parametrize("variant", ["dynamic-pie", "static-nopie"])
def test_signalfd_mask_flags_and_pending_signal(build_target, target_runner, dump_restore,
                                                tmp_path, variant):
    """SIGUSR2|SIGWINCH and SIGRTMIN+5 masks, O_NONBLOCK and FD_CLOEXEC come
    back; the SIGWINCH queued before the dump (the task's pending signal, put
    back by the core plugin) is read through the restored signalfd."""
    target = target_runner.start(build_target("signalfd", variant))
    assert dump_restore(target, tmp_path / "img") == "PASS"


@pytest.mark.parametrize("field, value, want", [
    ("sigmask", 1 << 8, "sigmask 0x100 holds SIGKILL or SIGSTOP"),
    ("flags", 0o2 | 0o1000000, "flags 0o1000002 hold unknown bits 0o1000000"),
])
def test_hostile_signalfd_is_refused(build_target, target_runner, engine_cli, tmp_path,
                                     field, value, want):
    """files.img edited with the protobuf classes: one line naming the image,
    the entry and the field; no task left."""
    from engine.testing import engine_fails, task_gone
    target = target_runner.start(build_target("signalfd"))
    img = tmp_path / "img"
    images = dump_to(target, img)
    files = images.read("files")
    victim = next(e for e in files if e.HasField("sgfd"))
    setattr(victim.sgfd, field, value)
    images.write("files", files)
    line = engine_fails("restore", "-D", img)
    assert f"files.img: SIGNALFD id {victim.id}: {want}" in line, line
    assert task_gone(target.pid)


def test_crit_decodes_signalfd(build_target, target_runner, tmp_path):
    """Debian's crit decodes the sgfd bodies: the masks as dumped."""
    import json
    import shutil
    import signal
    import subprocess
    if shutil.which("crit") is None:
        pytest.skip("crit is not installed")
    target = target_runner.start(build_target("signalfd"))
    img = tmp_path / "img"
    dump_to(target, img)
    target.kill()
    out = subprocess.run(["crit", "decode", "-i", str(img / "files.img")],
                         capture_output=True, text=True, check=True).stdout
    masks = sorted(e["sgfd"]["sigmask"] for e in json.loads(out)["entries"] if "sgfd" in e)
    both = (1 << (signal.SIGUSR2 - 1)) | (1 << (signal.SIGWINCH - 1))
    assert masks == sorted([both, 1 << (signal.SIGRTMIN + 5 - 1)])

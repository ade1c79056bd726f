"""mmflags: coredump filter, THP disabled, dumpable (issue 15)."""
import json
import shutil
import subprocess

import pytest

from engine.testing import dump_to, engine_command, engine_fails, task_gone


@pytest.mark.parametrize("variant, args", [("dynamic-pie", ()), ("static-nopie", ("--advised",))])
def test_address_space_flags_come_back(build_target, target_runner, dump_restore, tmp_path,
                                       variant, args):
    """coredump filter 0x2b, THP disabled (EXCEPT_ADVISED too), not
    dumpable; --verify compares coredump_filter and THP_enabled."""
    target = target_runner.start(build_target("mmflags", variant), *args)
    assert dump_restore(target, tmp_path / "img") == "PASS"


def test_images_hold_criu_fields_and_crit_decodes_them(build_target, target_runner, tmp_path):
    target = target_runner.start(build_target("mmflags", "static-nopie"), "--advised")
    mm = dump_to(target, tmp_path / "img").read_one("mm", id=target.pid)
    assert (mm.dumpable, mm.thp_disabled, mm.thp_disable_flags, mm.coredump_filter) == \
        (0, True, 2, 0x2b)
    if shutil.which("crit") is None:
        pytest.skip("no crit")
    out = subprocess.run(["crit", "decode", "-i", str(tmp_path / "img" / f"mm-{target.pid}.img")],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    decoded = json.loads(out.stdout)["entries"][0]
    assert (decoded["dumpable"], decoded["thp_disabled"]) == (0, True)


@pytest.mark.parametrize("field, value, want", [
    ("coredump_filter", 0x400, "coredump_filter 0x400: bits 0x400 are not Linux's"),
    ("thp_disable_flags", 4, "thp_disable_flags 0x4: not PR_SET_THP_DISABLE flags "
                             "(thp_disabled true)"),
    ("dumpable", 7, "dumpable 7: not 0, 1 or 2"),
])
def test_hostile_address_space_flags_are_refused(build_target, target_runner, tmp_path,
                                                 field, value, want):
    target = target_runner.start(build_target("mmflags", "static-nopie"))
    img = tmp_path / "img"
    images = dump_to(target, img)
    mm = images.read_one("mm", id=target.pid)
    setattr(mm, field, value)
    images.write("mm", [mm], id=target.pid)
    assert engine_fails("restore", "-D", img) == \
        f"engine: error: mm-{target.pid}.img: {want}"
    assert task_gone(target.pid)


def test_not_dumpable_without_cap_sys_ptrace_fails_naming_it(build_target, target_runner,
                                                             tmp_path):
    """Not dumpable, the task would shut out an engine without
    CAP_SYS_PTRACE before its registers: refused before anything starts."""
    target = target_runner.start(build_target("mmflags", "static-nopie"))
    img = tmp_path / "img"
    dump_to(target, img)
    cmd, env = engine_command("restore", "-D", img)
    proc = subprocess.run(["capsh", "--drop=cap_sys_ptrace", "--", "-c", 'exec "$@"', "sh",
                           *cmd], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode != 0
    assert proc.stderr.strip() == (
        f"engine: error: mm-{target.pid}.img: dumpable 0: the engine would lose its access to "
        "the task before its registers (that takes CAP_SYS_PTRACE, which the engine lacks)")
    assert task_gone(target.pid)

"""seccomp: strict mode, filters and no_new_privs come back in every thread,
and a restored sandboxed task stays sandboxed (issues 15, 20). Each target
checks its own sandbox after restore (the blocked calls still fail with
their errno or kill, /proc/thread-self/status Seccomp, Seccomp_filters,
NoNewPrivs); --verify compares the three for the task too."""
import os
import shutil
import subprocess

import pytest

from engine.images import ImageDir
from engine.testing import dump_to, engine_fails, reap_dumped_tree, task_gone

from tests.plugins import test_rootless as rootless
from tests.plugins.test_rootless import engine_as_user, start_as_user

user_dir = rootless.user_dir          # the fixture: a directory uid 1000 owns

SECCOMP_FILTER_FLAG_TSYNC, SECCOMP_FILTER_FLAG_LOG = 1, 2
MODE_FILTER = 2


@pytest.mark.parametrize("variant", ["dynamic-pie", "static-nopie"])
def test_filter_with_no_new_privs_comes_back(build_target, target_runner, dump_restore,
                                            tmp_path, variant):
    """The first target of this resource: acct(2) still fails with EPERM."""
    target = target_runner.start(build_target("seccomp", variant))
    assert dump_restore(target, tmp_path / "img") == "PASS"


@pytest.mark.parametrize("variant", ["dynamic-pie", "static-nopie"])
def test_stacked_filters_come_back(build_target, target_runner, dump_restore, tmp_path,
                                   variant):
    """getppid fails with EL2HLT (first filter), syslog kills a forked child
    with SIGSYS (second filter, SECCOMP_FILTER_FLAG_LOG); the image holds
    them as CRIU's does: the oldest named by the core, `prev` to the newer."""
    target = target_runner.start(build_target("sandbox", variant))
    img = tmp_path / "img"
    assert dump_restore(target, img) == "PASS"
    images = ImageDir(str(img))
    tc = images.read_one("core", id=target.pid).thread_core
    assert tc.seccomp_mode == MODE_FILTER and tc.creds.no_new_privs == 1
    filters = images.read_one("seccomp").seccomp_filters
    oldest = filters[tc.seccomp_filter]
    newest = filters[oldest.prev]
    assert not newest.HasField("prev") and len(filters) == 2
    assert newest.flags & SECCOMP_FILTER_FLAG_LOG and not oldest.flags & SECCOMP_FILTER_FLAG_LOG


def test_filters_inherited_by_a_child_come_back(build_target, target_runner, dump_restore,
                                               tmp_path):
    """A child forked under both filters shares them with its parent: the
    image holds the chain once, both tasks get it back and check it."""
    target = target_runner.start(build_target("sandbox", "dynamic-pie"), "--fork")
    img = tmp_path / "img"
    assert dump_restore(target, img) == "PASS"
    assert len(ImageDir(str(img)).read_one("seccomp").seccomp_filters) == 2


def test_filter_refusing_the_tracers_last_calls_comes_back(build_target, target_runner,
                                                          dump_restore, tmp_path):
    """munmap fails with EPERM under the leader's filter: the tracer's own
    last calls (the scratch page's munmap, the parent-death signal) still
    run, unfiltered, and the task keeps the filter."""
    target = target_runner.start(build_target("sandbox", "static-nopie"), "--nomunmap")
    assert dump_restore(target, tmp_path / "img") == "PASS"


def test_threads_with_different_filters_come_back(build_target, target_runner, dump_restore,
                                                  tmp_path):
    """Three threads share the getppid filter; one added its own (getpgrp:
    EDOM) that the others must not get. Identical chains are written once."""
    target = target_runner.start(build_target("sandbox", "dynamic-pie"), "--threads")
    img = tmp_path / "img"
    assert dump_restore(target, img) == "PASS"
    assert len(ImageDir(str(img)).read_one("seccomp").seccomp_filters) == 3


def test_tsync_filter_comes_back_in_every_thread(build_target, target_runner, dump_restore,
                                                 tmp_path):
    """A filter installed with TSYNC after the threads started: written as
    CRIU does (the leader's with TSYNC, none for the others), back in each."""
    target = target_runner.start(build_target("sandbox", "dynamic-pie"), "--tsync")
    img = tmp_path / "img"
    assert dump_restore(target, img) == "PASS"
    images = ImageDir(str(img))
    filters = images.read_one("seccomp").seccomp_filters
    assert len(filters) == 1 and filters[0].flags & SECCOMP_FILTER_FLAG_TSYNC


@pytest.mark.parametrize("variant", ["dynamic-pie", "static-nopie"])
def test_strict_mode_thread_comes_back(build_target, target_runner, dump_restore, tmp_path,
                                       variant):
    """A thread in strict mode, blocked in read(2): it still may only read,
    write and exit, and answers over its pipes after restore."""
    target = target_runner.start(build_target("sandbox", variant), "--strict")
    assert dump_restore(target, tmp_path / "img") == "PASS"


def test_no_new_privs_alone_comes_back(build_target, target_runner, dump_restore, tmp_path):
    target = target_runner.start(build_target("sandbox", "static-nopie"), "--nnp")
    img = tmp_path / "img"
    assert dump_restore(target, img) == "PASS"
    assert not ImageDir(str(img)).exists("seccomp")


@pytest.mark.parametrize("flag, want", [
    ("--notify", "seccomp filter 0 may return SECCOMP_RET_USER_NOTIF (a user-notification "
                 "listener): not supported"),
    ("--dropcap", "a seccomp filter without no_new_privs, in a thread without CAP_SYS_ADMIN: "
                  "restoring it needs one or the other"),
])
def test_unrestorable_sandbox_is_refused_and_target_untouched(build_target, target_runner,
                                                              tmp_path, flag, want):
    target = target_runner.start(build_target("sandbox", "dynamic-pie"), flag)
    line = engine_fails("dump", "-t", str(target.pid), "-D", str(tmp_path / "img"))
    assert line == f"engine: error: task {target.pid}: {want}"
    assert target.verdict() == "PASS"


# --- hostile images: one line naming image and field, nothing started -----------

def _spoil_filters(images, edit):
    entry = images.read_one("seccomp")
    edit(entry.seccomp_filters)
    images.write("seccomp", [entry])


def _jump_past_the_end(filters):
    filters[0].filter = bytes([0x15, 0, 9, 0, 0, 0, 0, 0]) + bytes(filters[0].filter[8:])


def _loop(filters):
    newest = next(i for i, f in enumerate(filters) if not f.HasField("prev"))
    filters[newest].prev = next(i for i, f in enumerate(filters) if f.HasField("prev"))


@pytest.mark.parametrize("edit, want", [
    (_jump_past_the_end, "seccomp.img: seccomp_filters[0].filter: instruction 0: jump past "
                         "the end"),
    (lambda fs: setattr(fs[0], "filter", b"\x06\x00\x00\x00\x00\x00"),
     "seccomp.img: seccomp_filters[0].filter: 6 bytes, not a whole number of 8-byte "
     "instructions"),
    (lambda fs: setattr(fs[1], "prev", 7),
     "seccomp.img: seccomp_filters[1].prev 7: seccomp.img holds 2 filters"),
    (_loop, "seccomp.img: seccomp_filters[0].prev 1: the chain loops"),
    (lambda fs: setattr(fs[0], "flags", 8),
     "seccomp.img: seccomp_filters[0].flags 0x8: only TSYNC, LOG and SPEC_ALLOW come back"),
])
def test_hostile_seccomp_image_is_refused(build_target, target_runner, tmp_path, edit, want):
    target = target_runner.start(build_target("sandbox", "static-nopie"))
    img = tmp_path / "img"
    dump_to(target, img)
    _spoil_filters(ImageDir(str(img)), edit)
    assert engine_fails("restore", "-D", img) == f"engine: error: {want}"
    assert task_gone(target.pid)


@pytest.mark.parametrize("field, value, want", [
    ("seccomp_filter", 5, "thread_core.seccomp_filter 5: seccomp.img holds 2 filters"),
    ("no_new_privs", 3, "thread_core.creds.no_new_privs 3 is not 0 or 1"),
    ("seccomp_img", None, "thread_core.seccomp_filter: seccomp.img is missing"),
    ("seccomp_mode", 7, "thread_core.seccomp_mode is not a mode Linux has"),
])
def test_hostile_core_fields_are_refused(build_target, target_runner, tmp_path, field, value,
                                         want):
    target = target_runner.start(build_target("sandbox", "static-nopie"))
    img = tmp_path / "img"
    dump_to(target, img)
    images = ImageDir(str(img))
    core = images.read_one("core", id=target.pid)
    if field == "seccomp_filter":
        core.thread_core.seccomp_filter = value
    elif field == "no_new_privs":
        core.thread_core.creds.no_new_privs = value
    elif field == "seccomp_mode":
        # protobuf keeps a value its enum lacks among the unknown fields:
        # field 11, varint
        tc = type(core.thread_core)()
        tc.ParseFromString(core.thread_core.SerializeToString(deterministic=True)
                           + bytes([11 << 3, value]))
        core.thread_core.CopyFrom(tc)
    else:
        os.unlink(images.path("seccomp"))
        # engine-images.json would name the missing file first: the plugin's
        # own check is for sets without it (CRIU's)
        os.unlink(os.path.join(images.dir, "engine-images.json"))
    images.write("core", [core], id=target.pid)
    assert engine_fails("restore", "-D", img) == f"engine: error: core-{target.pid}.img: {want}"
    assert task_gone(target.pid)


# --- as an ordinary user ------------------------------------------------------------

def test_rootless_restores_no_new_privs(build_target, user_dir):
    exe = shutil.copy(build_target("sandbox", "static-nopie"), user_dir / "sandbox")
    target = start_as_user(exe, user_dir, "--nnp")
    img = user_dir / "img"
    engine_as_user("dump", "-t", target.pid, "-D", img)
    target.reap()
    reap_dumped_tree(img)
    pidfile = user_dir / "root.pid"
    engine_as_user("restore", "-D", img, "--rootless", "--pidfile", pidfile, caps=False)
    target.pid = int(pidfile.read_text())
    assert target.verdict() == "PASS", target.log()


def test_rootless_refuses_a_filter_it_cannot_keep(build_target, user_dir):
    """Dumped by root, restored by the user with --rootless: the tracer
    could not suspend the filter for its last calls; refused, nothing left."""
    exe = shutil.copy(build_target("sandbox", "static-nopie"), user_dir / "sandbox")
    target = start_as_user(exe, user_dir)
    img = user_dir / "img"
    dump_to(target, img)
    target.reap()
    subprocess.run(["chown", "-R", "1000:1000", str(img)], check=True)
    proc = engine_as_user("restore", "-D", img, "--rootless", caps=False, check=False)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode != 0 and len(lines) == 1, proc.stderr
    assert "PTRACE_O_SUSPEND_SECCOMP" in lines[0] and "--rootless" in lines[0], lines[0]


def test_user_dump_refuses_a_filter_it_cannot_read(build_target, user_dir):
    """With CAP_CHECKPOINT_RESTORE only, the dump can neither read the
    filters nor suspend them for its injected calls: refused, target kept."""
    exe = shutil.copy(build_target("sandbox", "static-nopie"), user_dir / "sandbox")
    target = start_as_user(exe, user_dir)
    proc = engine_as_user("dump", "-t", target.pid, "-D", user_dir / "img", check=False)
    assert proc.returncode != 0 and proc.stderr.strip() == (
        f"engine: error: task {target.pid}: seccomp (mode 2) without CAP_SYS_ADMIN to "
        "suspend it while the dump runs is not supported"), proc.stderr
    assert target.verdict() == "PASS", target.log()

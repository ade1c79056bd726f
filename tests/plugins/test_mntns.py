"""A container-like mount tree (tests/targets/mounttree.c): a child
pivot_roots into a bind of the host's "/" with proc, sysfs, a tmpfs /dev,
devpts, mqueue, an external bind, a read-only bind, a shared tmpfs and a
slave of it, a masked path. Dumped whole (--external names the external
bind), rebuilt at restore from --root and --external, checked from inside."""
import pytest

from engine.testing import dump_to, engine_fails, pid_state, task_gone


def _dir(tmp_path):
    d = tmp_path / "tree"
    for sub in ("root", "ext", "extsrc", "rosrc", "robind", "shared", "slave"):
        (d / sub).mkdir(parents=True)
    (d / "rosrc" / "file").write_text("ro-data")
    (d / "masked").write_text("")
    # What the external mount holds at restore: the host's own directory.
    host = tmp_path / "host-ext"
    host.mkdir()
    (host / "file").write_text("outside")
    return d, host


def _start(build_target, target_runner, tmp_path, *args):
    d, host = _dir(tmp_path)
    target = target_runner.start(build_target("mounttree"), "--dir", str(d), *args)
    return target, d, host


@pytest.mark.parametrize("who", [(), ("--self",)], ids=["child-in-tree", "root-in-tree"])
def test_container_tree_comes_back(build_target, target_runner, dump_restore, tmp_path, who):
    target, d, host = _start(build_target, target_runner, tmp_path, *who)
    verdict = dump_restore(target, tmp_path / "img",
                           dump_args=["--external", f"mnt[{d}/ext]:extkey"],
                           restore_args=["--root", "/", "--external", f"mnt[extkey]:{host}"])
    assert verdict == "PASS", target.log()


def test_tree_images_hold_every_mount(build_target, target_runner, engine_cli, tmp_path):
    target, d, host = _start(build_target, target_runner, tmp_path)
    images = dump_to(target, tmp_path / "img", ["--external", f"mnt[{d}/ext]:extkey"])
    ns_id = images.read_one("ids", id=target.addr("c")).mnt_ns_id
    mounts = {m.mountpoint: m for m in images.read("mountpoints", id=ns_id)}
    assert mounts["/"].whole_tree
    assert (mounts["/proc"].fsname, mounts["/dev/pts"].fstype) == ("proc", 6)
    assert mounts[f"{d}/ext"].ext_key == "extkey"
    assert mounts[f"{d}/slave"].master_id == mounts[f"{d}/shared"].shared_id != 0
    assert mounts[f"{d}/robind"].flags & 1


def test_unnamed_external_is_refused_at_dump(build_target, target_runner, engine_cli, tmp_path):
    target, d, host = _start(build_target, target_runner, tmp_path)
    line = engine_fails("dump", "-t", str(target.pid), "-D", str(tmp_path / "img"))
    assert f"{d}/ext" in line and "--external" in line, line
    assert pid_state(target.pid) is not None


@pytest.mark.parametrize("edit, restore_args, words", [
    (lambda ms: setattr(ms[-1], "mountpoint", "/a/../etc"), None, "clean absolute"),
    (lambda ms: (setattr(ms[1], "fstype", 77), setattr(ms[1], "fsname", "nofs")), None,
     "made anew"),
    (None, ["--root", "/"], "ext_key 'extkey'"),
    (None, ["--external", "mnt[extkey]:/tmp"], "--root"),
], ids=["dotdot", "fstype", "ext-key-missing", "root-missing"])
def test_bad_tree_images_are_refused(build_target, target_runner, engine_cli, tmp_path,
                                     edit, restore_args, words):
    target, d, host = _start(build_target, target_runner, tmp_path)
    img = tmp_path / "img"
    images = dump_to(target, img, ["--external", f"mnt[{d}/ext]:extkey"])
    ns_id = images.read_one("ids", id=target.addr("c")).mnt_ns_id
    if edit:
        mounts = images.read("mountpoints", id=ns_id)
        # entry 1 is a new filesystem (proc, sysfs or the /dev tmpfs), not a bind.
        edit(mounts)
        images.write("mountpoints", mounts, id=ns_id)
    args = restore_args or ["--root", "/", "--external", f"mnt[extkey]:{host}"]
    line = engine_fails("restore", "-D", img, *args)
    assert words in line, line
    assert task_gone(target.pid) and task_gone(target.addr("c"))


def test_criu_command_restores_the_tree(build_target, target_runner, engine_cli, tmp_path):
    """The engine's `criu` takes CRIU's --root and --external mnt[KEY]:PATH."""
    import subprocess
    import sys

    from engine.testing import engine_command
    target, d, host = _start(build_target, target_runner, tmp_path)
    img = tmp_path / "img"
    dump_to(target, img, ["--external", f"mnt[{d}/ext]:extkey"])
    _, env = engine_command()
    proc = subprocess.run([sys.executable, "-m", "engine.criu_cli", "restore", "-d", "-D",
                           str(img), "--root", "/", "--external", f"mnt[extkey]:{host}"],
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert target.verdict() == "PASS", target.log()


def test_rpc_root_and_ext_mnt_become_the_engines_options():
    from engine.images.proto import rpc_pb2
    from engine.rpc import options
    opts = rpc_pb2.criu_opts(images_dir_fd=3, root="/rootfs")
    opts.ext_mnt.add(key="extkey", val="/host/dir")
    argv = options.to_argv(opts, options.RESTORE, "/img", [])
    assert argv == ["-D", "/img", "--root", "/rootfs", "--external", "mnt[extkey]:/host/dir"]

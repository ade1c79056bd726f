"""emptyns: `restore --empty-ns net`, RPC empty_ns (issue 18, item 4)."""
import os
import subprocess

from engine.testing import dump_restore, dump_to, engine_cli


def _net(pid):
    return os.stat(f"/proc/{pid}/ns/net").st_ino


def test_empty_ns_net_gives_the_tree_a_fresh_network_namespace(build_target, target_runner,
                                                                tmp_path):
    """A task and its child, dumped in the engine's network namespace: both
    come back in one new one, empty (loopback down), and run on. (Without
    --verify: its fingerprint names the engine's namespace, the known
    difference asked for.)"""
    target = target_runner.start(build_target("cgroup", "static-nopie"))
    img = tmp_path / "img"
    images = dump_to(target, img)
    pids = [e.pid for e in images.read("pstree")]
    assert len(pids) == 2
    engine_cli("restore", "-D", str(img), "--empty-ns", "net")
    fresh = {_net(pid) for pid in pids}
    assert len(fresh) == 1 and fresh != {_net("self")}
    link = subprocess.run(["nsenter", "-t", str(pids[0]), "-n", "ip", "-o", "link", "show", "lo"],
                          capture_output=True, text=True, check=True).stdout
    assert "state DOWN" in link or "<LOOPBACK>" in link, link
    assert target.verdict() == "PASS"


def test_without_empty_ns_the_tree_stays_in_the_engines(build_target, target_runner,
                                                        tmp_path):
    target = target_runner.start(build_target("cgroup", "static-nopie"))
    assert dump_restore(target, tmp_path / "img") == "PASS"


def test_rpc_options_map_to_the_engines():
    """runc's empty_ns (CLONE_NEWNET), manage_cgroups_mode, cg_root and
    freeze_cgroup become the engine's options; other empty_ns bits are
    refused, naming the option."""
    import pytest
    from engine.images.proto import rpc_pb2 as pb
    from engine.rpc import options
    opts = pb.criu_opts(images_dir_fd=3, empty_ns=0x40000000, manage_cgroups=True,
                        manage_cgroups_mode=pb.FULL)
    opts.cg_root.add(ctrl="pids", path="/moved")
    assert options.to_argv(opts, options.RESTORE, "D", []) == [
        "-D", "D", "--cgroup-root", "pids:/moved", "--manage-cgroups", "full",
        "--empty-ns", "net"]
    dump = pb.criu_opts(images_dir_fd=3, freeze_cgroup="/sys/fs/cgroup/x", leave_stopped=True)
    assert options.to_argv(dump, options.DUMP, "D", []) == [
        "-D", "D", "--freeze-cgroup", "/sys/fs/cgroup/x", "--leave-stopped"]
    with pytest.raises(options.Refused, match="option empty_ns is not supported"):
        options.to_argv(pb.criu_opts(images_dir_fd=3, empty_ns=0x20000000), options.RESTORE,
                        "D", [])

"""pstree: the tree's pids, session and process group come back."""
import json

from engine.testing import dump_to


def test_hook_engine_dump_tree(build_target, target_runner, engine_cli, tmp_path):
    """The dumped tree names the task with its real parent, group and session;
    the restored task is again the leader of its own session (the target
    runner makes it one), checked from /proc after restore."""
    target = target_runner.start(build_target("counter", "static-nopie"))
    stat = open(f"/proc/{target.pid}/stat").read().rsplit(")", 1)[1].split()
    img = tmp_path / "img"
    dump_to(target, img)
    entry = json.loads(engine_cli("show", img).stdout)["pstree.img"]["entries"][0]
    assert (entry["pid"], entry["pgid"], entry["sid"]) == (target.pid, int(stat[2]), int(stat[3]))
    engine_cli("restore", "-D", img)
    after = open(f"/proc/{target.pid}/stat").read().rsplit(")", 1)[1].split()
    assert (int(after[2]), int(after[3])) == (target.pid, target.pid)
    assert target.verdict() == "PASS"

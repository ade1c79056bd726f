"""sk_netlink: port ids, groups, peers, flags and filters; unread messages
refused at dump; hostile images refused at collect."""
import pytest

from engine.testing import dump_to


@pytest.mark.parametrize("variant", ["dynamic-pie", "static-nopie"])
def test_netlink_sockets_come_back(build_target, target_runner, dump_restore, tmp_path,
                                   variant):
    """Route sockets on chosen port ids with RTMGRP_LINK|RTMGRP_IPV4_ROUTE,
    group 33, a peer, EXT_ACK, a buffer size; a generic socket with a filter;
    an autobound audit socket: the target checks each itself."""
    target = target_runner.start(build_target("sk_netlink", variant))
    assert dump_restore(target, tmp_path / "img") == "PASS"


def test_netlink_sockets_in_a_network_namespace_of_their_own(build_target, target_runner,
                                                            dump_restore, tmp_path):
    """The same sockets made after unshare(CLONE_NEWNET): sock_diag is asked in
    that namespace (the engine's lists none of them), and each comes back there."""
    target = target_runner.start(build_target("sk_netlink"), "--netns")
    assert dump_restore(target, tmp_path / "img") == "PASS"


def test_socket_of_another_network_namespace_is_refused(build_target, target_runner,
                                                       tmp_path):
    """Sockets made before the task moved to a new network namespace cannot be
    made again by it: the dump fails naming the fd, the target runs on."""
    from engine.testing import engine_fails, task_gone
    target = target_runner.start(build_target("sk_netlink"), "--netns-after")
    line = engine_fails("dump", "-t", str(target.pid), "-D", str(tmp_path / "img"))
    assert f"task {target.pid}: fd " in line, line
    assert "a socket of another network namespace than its task's" in line, line
    assert not task_gone(target.pid), "a refused dump must leave the target running"


def test_netlink_entries_hold_what_criu_writes(build_target, target_runner, tmp_path):
    """The NETLINKSK entries hold what CRIU's would: protocol, port id, the
    groups bitmap, the connected peer."""
    target = target_runner.start(build_target("sk_netlink"))
    images = dump_to(target, tmp_path / "img")
    socks = {(n.protocol, n.portid): n for n in
             (e.nlsk for e in images.read("files") if e.HasField("nlsk"))}
    a, b = socks[(0, 0x4e4c01)], socks[(0, 0x4e4c02)]
    assert list(a.groups) == [0x1 | 0x40] and a.state != 1
    assert list(b.groups) == [0, 1] and b.state == 1 and b.dst_portid == 0x4e4c01
    assert a.nl_opts == 1 << 11                      # NETLINK_EXT_ACK
    generic = next(n for (proto, _), n in socks.items() if proto == 16)
    assert generic.portid == 0 and list(generic.opts.so_filter) == [0x06 << 48 | 0x4e4c]


def test_unread_netlink_messages_are_refused(build_target, target_runner, tmp_path):
    """A route socket with an answer waiting (as CRIU, a netlink queue is not
    restored): the dump fails naming the fd, and the target runs on."""
    from engine.testing import engine_fails, task_gone
    target = target_runner.start(build_target("sk_netlink"), "--unread")
    line = engine_fails("dump", "-t", str(target.pid), "-D", str(tmp_path / "img"))
    assert f"task {target.pid}: fd " in line and "(socket:[" in line, line
    assert "a netlink socket with unread messages" in line, line
    assert not task_gone(target.pid), "a refused dump must leave the target running"


def _first(files, **match):
    return next(e for e in files if e.HasField("nlsk")
                and all(getattr(e.nlsk, k) == v for k, v in match.items()))


@pytest.mark.parametrize("field, value, want", [
    ("protocol", 32, "protocol 32 is not a netlink protocol (under 32)"),
    ("state", 3, "state 3 is not a netlink socket state"),
    ("nl_opts", 1 << 20, "nl_opts 0x100000 hold unknown bits 0x100000"),
    ("dst_group", 40, "dst_group 40 is over 32"),
    ("groups", [1] * 64, "groups has 64 words, more than 32"),
    ("so_rcvbuf", 0, "opts.so_rcvbuf = 0 is not a buffer size"),
    ("so_bound_dev", "x" * 16, f"opts.so_bound_dev '{'x' * 16}' is longer than an interface name"),
])
def test_hostile_netlink_entry_is_refused(build_target, target_runner, tmp_path, field,
                                          value, want):
    """files.img edited with the protobuf classes: one line naming the image,
    the socket and the field; no task left."""
    from engine.testing import engine_fails, task_gone
    target = target_runner.start(build_target("sk_netlink"))
    img = tmp_path / "img"
    images = dump_to(target, img)
    files = images.read("files")
    victim = _first(files, portid=0x4e4c02)
    n = victim.nlsk
    if field == "groups":
        del n.groups[:]
        n.groups.extend(value)
    elif field.startswith("so_"):
        setattr(n.opts, field, value)
    else:
        setattr(n, field, value)
    images.write("files", files)
    line = engine_fails("restore", "-D", img)
    assert f"files.img: netlink socket id {victim.id}: {want}" in line, line
    assert task_gone(target.pid)


def test_disabled_plugin_refuses_the_image(build_target, target_runner, tmp_path):
    from engine.testing import engine_fails, task_gone
    target = target_runner.start(build_target("sk_netlink"))
    img = tmp_path / "img"
    dump_to(target, img)
    line = engine_fails("restore", "--disable", "sk_netlink", "-D", img)
    assert "file:NETLINKSK" in line, line
    assert task_gone(target.pid)


def test_socket_refusals_in_the_ledger_are_raised_by_their_plugins():
    """Each refusal plugins/fates/ledger.py gives sk_netlink, sk_packet or
    sk_inet is raised, in those words, by that plugin's code."""
    import re
    from pathlib import Path

    from plugins.fates import ledger
    root = Path(__file__).resolve().parents[2] / "plugins"
    missing = []
    for _, key, fate in ledger.every_fate():
        if fate.fate == "refused" and fate.by in ("sk_netlink", "sk_packet", "sk_inet"):
            source = "".join(p.read_text() for p in (root / fate.by).glob("*.py"))
            # string literals split over lines joined back
            if fate.what not in re.sub(r'"\s+f?"', "", source):
                missing.append((fate.by, fate.what))
    assert not missing, f"refused in the ledger, never in the plugin's words: {missing}"

"""sk_inet: TCP and UDP sockets, established connections through TCP_REPAIR,
the network lock, the socket owner uid, and --disable sk_inet."""
import pytest


@pytest.mark.parametrize("args", [(), ("--v6",), ("--mapped",)], ids=["v4", "v6", "mapped"])
def test_tcp_pair_listener_and_udp(build_target, target_runner, dump_restore, tmp_path, args):
    from plugins.sk_inet import netlock
    target = target_runner.start(build_target("tcppair"), *args)
    assert dump_restore(target, tmp_path / "img") == "PASS"
    assert not netlock.locked()

"""sk_inet: TCP and UDP sockets, established connections through TCP_REPAIR,
the network lock, the socket owner uid, and --disable sk_inet."""
import pytest


def _conns(img):
    """The connections of an image set, as the network lock names them."""
    from engine.images import ImageDir
    from plugins.sk_inet import _addr
    out = set()
    for e in ImageDir(str(img)).read("files"):
        i = e.isk
        if e.HasField("isk") and i.state == 1 and i.proto == 6:
            out.add((_addr(i.family, i.src_addr), i.src_port, _addr(i.family, i.dst_addr),
                     i.dst_port))
    return out


def _streams(img):
    from engine.images import ImageDir
    images = ImageDir(str(img))
    from engine.images.kinds import ImageKind  # noqa: F401 - registered below
    from plugins.sk_inet import engine_register_images
    engine_register_images(images.kinds)
    return [images.read("tcp-stream", id=e.isk.ino)[0][0] for e in images.read("files")
            if e.HasField("isk") and e.isk.state == 1 and e.isk.proto == 6]


@pytest.mark.parametrize("args", [(), ("--v6",), ("--mapped",)], ids=["v4", "v6", "mapped"])
def test_tcp_pair_listener_and_udp(build_target, target_runner, dump_restore, tmp_path, args):
    from plugins.sk_inet import netlock
    target = target_runner.start(build_target("tcppair"), *args)
    assert dump_restore(target, tmp_path / "img") == "PASS"
    assert not _conns(tmp_path / "img") & netlock.locked()


def test_full_send_queues_come_back(build_target, target_runner, dump_restore, tmp_path):
    """Receive queues full, so data waits in the send queues, partly never
    sent (unsq_len): every byte arrives once after restore."""
    target = target_runner.start(build_target("tcppair"), "--bytes", "12000000")
    assert dump_restore(target, tmp_path / "img") == "PASS"
    streams = _streams(tmp_path / "img")
    assert any(s.outq_len for s in streams) and any(s.unsq_len for s in streams)

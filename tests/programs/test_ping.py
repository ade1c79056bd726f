"""ping 127.0.0.1 (iputils, as root: raw ICMP sockets with ICMP_FILTER, a
classic filter holding its ident, SO_TIMESTAMP, IP_RECVERR) counts on after
restore with the next sequence number."""
import re

import pytest

from tests.programs._netsk import Program, need

pytestmark = pytest.mark.slow


def _seqs(text: str) -> list[int]:
    return [int(n) for n in re.findall(r"icmp_seq=(\d+)", text)]


def _spoil(files) -> None:
    """An ICMP filter of two words on the raw ICMP socket (it takes one)."""
    raw = next(e.isk for e in files if e.HasField("isk") and e.isk.ip_opts.raw.icmpv_filter
               and e.isk.family == 2)
    raw.ip_opts.raw.icmpv_filter.append(0)


def test_ping_counts_on_after_restore(tmp_path):
    """Also: a restore of a spoiled copy of its images fails first, leaving
    nothing running."""
    ping = Program([need("ping"), "-i", "0.2", "127.0.0.1"], tmp_path / "ping.out")
    try:
        ping.wait_for(r"icmp_seq=3 ")
        ping.dump(tmp_path / "img")
        before = _seqs(ping.text())
        line = ping.spoiled_restore_fails(tmp_path / "img", _spoil)
        assert "ip_opts.raw.icmpv_filter has 2 words" in line, line
        ping.restore(tmp_path / "img")
        ping.wait_for(rf"icmp_seq={before[-1] + 3} ", start=len(ping.text()) - 1)
    finally:
        ping.stop()
    seqs = _seqs(ping.text())
    after = seqs[len(before):]
    assert before == list(range(1, len(before) + 1)), before
    # The next request is the next number; its reply is lost only when the
    # dump came between a request and its reply (the queued reply is dropped).
    assert after[0] in (before[-1] + 1, before[-1] + 2), (before, after)
    assert after == list(range(after[0], after[0] + len(after))), after
    assert "packets transmitted" in ping.text()

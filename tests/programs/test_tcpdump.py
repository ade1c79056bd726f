"""`tcpdump -i lo -w FILE`: libpcap captures through a TPACKET_V3 ring it
maps (PACKET_RX_RING + mmap of the socket). The engine cannot map a socket
again at restore (memory is the mem plugin's, which makes no socket
mappings), so sk_packet refuses the ring at dump, naming it, and tcpdump is
left running untouched: packets sent after the refused dump are captured.
(Restoring the ring, as CRIU does, is not done: see sk_packet's docstring.)"""
import signal
import socket
import struct
import time

import pytest

from engine.testing import engine_fails, task_gone
from tests.programs._netsk import Program, need

pytestmark = pytest.mark.slow

MARK = b"netsk-tcpdump-after-the-dump"


def _send_marks(port: int, count: int = 5) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for _ in range(count):
            s.sendto(MARK, ("127.0.0.1", port))


def _captured(pcap: bytes) -> int:
    """How many packets of the pcap file hold MARK."""
    count, off = 0, 24                       # the global header
    while off + 16 <= len(pcap):
        caplen = struct.unpack_from("<I", pcap, off + 8)[0]
        count += MARK in pcap[off + 16:off + 16 + caplen]
        off += 16 + caplen
    return count


def test_tcpdump_ring_is_refused_and_tcpdump_runs_on(tmp_path):
    pcap = tmp_path / "lo.pcap"
    tcpdump = Program([need("tcpdump"), "-i", "lo", "-Z", "root", "-U", "-w", str(pcap),
                       "udp port 9"], tmp_path / "tcpdump.out")
    try:
        tcpdump.wait_for(r"listening on lo")
        line = engine_fails("dump", "-t", str(tcpdump.pid), "-D", str(tmp_path / "img"))
        assert f"task {tcpdump.pid}: fd " in line, line
        assert "a packet socket with a TPACKET ring mapped (rx ring" in line, line
        assert not task_gone(tcpdump.pid), "a refused dump must leave tcpdump running"
        _send_marks(9)
        deadline = time.monotonic() + 10     # a ring block is handed over when full or old
        while _captured(pcap.read_bytes()) < 5 and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        tcpdump.stop(signal.SIGINT)
    # lo shows each datagram twice (sent and received)
    assert _captured(pcap.read_bytes()) >= 5, tcpdump.text()

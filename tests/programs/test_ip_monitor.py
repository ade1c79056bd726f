"""`ip monitor route` (iproute2: a NETLINK_ROUTE socket bound to the route
groups, NETLINK_EXT_ACK on) reports a route added after restore. The routes
go to a table of their own (4242), unreachable ones: nothing is routed by
them, and they are deleted after."""
import subprocess
import time

import pytest

from tests.programs._netsk import Program, need

pytestmark = pytest.mark.slow

TABLE = "4242"


def _route(action: str, prefix: str, check: bool = True) -> None:
    subprocess.run([need("ip"), "route", action, "unreachable", prefix, "table", TABLE],
                   check=check, capture_output=True)


def _spoil(files) -> None:
    next(e.nlsk for e in files if e.HasField("nlsk")).protocol = 99


def test_ip_monitor_reports_a_route_added_after_restore(tmp_path):
    """Also: a restore of a spoiled copy of its images fails first, leaving
    nothing running."""
    monitor = Program([need("ip"), "monitor", "route"], tmp_path / "monitor.out")
    try:
        # it prints no banner: it listens once it reports a route
        deadline = time.monotonic() + 10
        while "192.0.2.77" not in monitor.text() and time.monotonic() < deadline:
            _route("add", "192.0.2.77/32")
            _route("del", "192.0.2.77/32")
            time.sleep(0.05)
        monitor.wait_for(r"192\.0\.2\.77", timeout=1)
        monitor.dump(tmp_path / "img")
        seen = len(monitor.text())
        line = monitor.spoiled_restore_fails(tmp_path / "img", _spoil)
        assert "protocol 99 is not a netlink protocol" in line, line
        monitor.restore(tmp_path / "img")
        _route("add", "198.51.100.78/32")
        line = monitor.wait_for(r"^.*198\.51\.100\.78.*$", start=seen).group(0)
    finally:
        _route("del", "192.0.2.77/32", check=False)
        _route("del", "198.51.100.78/32", check=False)
        monitor.stop()
    assert "unreachable 198.51.100.78" in line and f"table {TABLE}" in line, line

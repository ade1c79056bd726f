"""redis-server (Debian's), a few thousand keys, dumped and restored while a
client connection held by the test (outside the dumped tree) stays open:
after restore the same connection reads the keys and writes new ones, and a
new connection works (issue 16)."""
from __future__ import annotations

import socket

import pytest

from engine.testing import dump_to, engine_cli
from tests.programs import running

pytestmark = pytest.mark.slow

KEYS = 5000


class Redis:
    """A RESP client on one TCP connection (the protocol is public and small)."""

    def __init__(self, port: int):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.reader = self.sock.makefile("rb")

    def close(self):
        self.reader.close()
        self.sock.close()

    def send(self, *commands: tuple) -> None:
        out = bytearray()
        for args in commands:
            out += b"*%d\r\n" % len(args)
            for a in map(str, args):
                out += b"$%d\r\n%s\r\n" % (len(a.encode()), a.encode())
        self.sock.sendall(out)

    def reply(self):
        line = self.reader.readline()
        kind, rest = line[:1], line[1:-2]
        if kind == b"+":
            return rest.decode()
        if kind == b"-":
            raise AssertionError(f"redis error: {rest.decode()}")
        if kind == b":":
            return int(rest)
        if kind == b"$":
            n = int(rest)
            return None if n < 0 else self.reader.read(n + 2)[:-2].decode()
        if kind == b"*":
            return [self.reply() for _ in range(int(rest))]
        raise AssertionError(f"redis: unexpected reply {line!r}")

    def call(self, *args):
        self.send(args)
        return self.reply()

    def set_many(self, items: dict) -> None:
        """SETs pipelined: one write, then every +OK."""
        self.send(*(("SET", k, v) for k, v in items.items()))
        assert [self.reply() for _ in items] == ["OK"] * len(items)


def _start(tmp_path):
    exe = running.need("redis-server")
    port = running.free_port()
    conf = tmp_path / "redis.conf"
    conf.write_text(f"port {port}\nbind 127.0.0.1\ndaemonize no\nsave \"\"\n"
                    f"appendonly no\ndir {tmp_path}\nlogfile \"\"\n")
    return running.start([exe, str(conf)], tmp_path, port), port


def _keys(first: int, count: int, tag: str) -> dict:
    return {f"key:{i}": f"{tag}-{i * 7919 % 100003}" for i in range(first, first + count)}


def test_redis_keeps_its_keys_and_its_client(tmp_path):
    target, port = _start(tmp_path)
    held = Redis(port)
    keys = _keys(0, KEYS, "before")
    held.set_many(keys)
    assert held.call("DBSIZE") == KEYS
    held_id = held.call("CLIENT", "ID")
    img = tmp_path / "img"
    dump_to(target, img)
    engine_cli("restore", "-D", img, "--verify")
    # The same connection, through the restored server: the same client, the keys...
    assert held.call("CLIENT", "ID") == held_id
    assert held.call("DBSIZE") == KEYS
    sample = sorted(keys)[::97]
    assert held.call("MGET", *sample) == [keys[k] for k in sample]
    assert f"process_id:{target.pid}\r" in held.call("INFO", "server")
    # ...and new ones written through it, read back on a new connection.
    more = _keys(KEYS, 500, "after")
    held.set_many(more)
    fresh = Redis(port)
    assert fresh.call("DBSIZE") == KEYS + len(more)
    assert fresh.call("GET", "key:5123") == more["key:5123"]
    assert fresh.call("GET", "key:17") == keys["key:17"]
    held.close()
    fresh.close()
    running.wait_closed(port)

    # A restore of a spoilt image set leaves nothing running, the port free.
    images = dump_to(running.Restored(target.pid), tmp_path / "again")
    running.spoil_listener(images, port)
    line = running.refused_restore_leaves_nothing(tmp_path / "again",
                                                  running.dumped_pids(images), port)
    assert "files.img: inet socket id" in line, line
    assert f"(LISTEN on 192.0.2.1 port {port}): Cannot assign requested address" in line

"""Where a request's notifies are sent: hooks of a plugin registered for that
request alone, so the core knows nothing of the RPC.

CRIU's points (criu/action-scripts.c) and where the engine sends them:
  pre-dump        before anything is frozen (requests.py)
  network-lock    once every task is frozen, before the first is dumped
  post-dump       once the image set is complete, the tree still frozen
                  (a failed answer resumes the tree, as CRIU does)
  pre-restore     before the images are read (requests.py)
  setup-namespaces, post-setup-namespaces (with the root's pid),
  post-restore (with the root's pid), network-unlock, pre-resume
                  every task stopped, fully restored, before the release
  post-resume     once the tree runs
Approximate: CRIU sends setup-namespaces once the root task's namespaces
exist and before the rest is restored; here the whole tree exists by then.
Not sent: query-ext-files (no external files), orphan-pts-master (no
terminals), status-ready (no lazy pages or page server).
"""
from __future__ import annotations

from engine import hookimpl


class Notifier:
    """The notify plugin of one request on `channel`."""

    NAME = "rpc-notify"

    def __init__(self, channel):
        self.channel = channel
        self.sent: list[str] = []
        self._locked = False

    def send(self, script: str, pid: int | None = None) -> None:
        self.channel.notify(script, pid)
        self.sent.append(script)

    @hookimpl
    def engine_dump_task(self, ctx, task):
        if not self._locked:         # the tasks are all frozen before the first
            self._locked = True
            self.send("network-lock")

    @hookimpl
    def engine_dump_written(self, ctx):
        self.send("post-dump")

    @hookimpl
    def engine_restore_ready(self, ctx):
        root = ctx.started[0]
        self.send("setup-namespaces", root)
        self.send("post-setup-namespaces")
        self.send("post-restore", root)
        self.send("network-unlock")
        self.send("pre-resume")

    @hookimpl
    def engine_restore_finish(self, ctx):
        self.send("post-resume")

"""How a dumped tree is born again: who forks whom, when, and which helper
tasks stand in for session and group leaders that are gone (criu/pstree.c:
prepare_pstree_ids, TASK_HELPER).

The kernel's rules this plans around: a child is born in its parent's
session and group; setsid() makes a new session and group and fails for a
group leader; setpgid() joins only a group of the caller's own session, and
a group or session lives as long as one member does (a zombie counts, a
reaped task does not). A task's session is therefore fixed at its birth
unless it leads one, so:

* A task in session S that does not lead it is forked by its parent after
  the parent's setsid when the parent is in S; before it, when the parent was
  born in S (that need climbs the tree: `born`); otherwise its dumped parent
  must be a child subreaper (orphans are only found in a dumped tree under
  one) and someone else forks it and dies: a helper with pid S that calls
  setsid, when no task of the tree has that pid, a zombie of S whose orphans
  go to that parent, or a helper with a free pid forked by a task of S whose
  nearest subreaper is that parent. A subreaper met on the way up may get
  its flag (a node of its own) only after that death: it became one after
  the orphaning. The helper exits once its children are forked and their
  reaper has its flag back, and the task that forked it reaps it: no helper
  is left at release.
* A group G is made by the task with pid G (setsid or setpgid(0, 0)); its
  members join it. A leader that left its group makes it first and leaves
  once one member (the keeper) is in, or a helper born in the group when
  every member left a group too. A group whose leader is gone is made
  by a helper with pid G, forked by a member, which exits after every
  member joined.
* A parent with four children or more, all in one set of namespaces, forks
  the first and half of the rest; the first forks the other half with
  CLONE_PARENT (still the parent's children) before its own setsid or
  setpgid, so both fork at once on two CPUs (forks of a large interpreter
  are about 1 ms each).
Anything else (orphans of a session no task of it can leave to their reaper,
a helper pid in use, a cycle) is refused here, before any fork, naming pstree.img and the entry.
"""
from __future__ import annotations

import graphlib

import attrs

from engine.graph import Node

RESERVED_PIDS = 300        # criu/pstree.c: helpers never take pids below this
SIBLING_FORKS_FROM = 4     # children of one parent from which a sibling forks half


class PlanError(ValueError):
    """The tree cannot be born again: one line naming pstree.img and the entry."""


@attrs.define(eq=False)
class Proc:
    """A task of pstree.img, or a helper task made only for the restore."""
    pid: int
    sid: int | None                 # None: a helper that only passes on a session
    pgid: int | None
    forker: int | None              # the process that forks it; None: the engine
    index: int | None = None        # pstree.img entry; None for helpers
    helper: str = ""                # "", "session", "group", "fresh" or "keeper"
    early: bool = False             # forked before its forker's setsid
    zombie: int | None = None       # wait status of a dumped zombie
    subreaper: bool = False         # PR_SET_CHILD_SUBREAPER
    leads: bool = False             # makes group `pid` (setsid or setpgid(0, 0))
    joins: bool = False             # joins group `pgid` (setpgid(0, pgid))
    keeper: int | None = None       # a leader that left: the member it waits for
    by_sibling: int | None = None   # forked by this sibling (CLONE_PARENT), not its forker
    reaper: int | None = None       # who inherits the children it forks and leaves
    bypass: list[int] = attrs.Factory(list)   # subreapers flagged only after it exits
    after_deaths: list[int] = attrs.Factory(list)   # a subreaper: who dies before its flag

    @property
    def exits(self) -> bool:
        return bool(self.helper) or self.zombie is not None

    def __str__(self) -> str:
        return f"{self.helper} helper {self.pid}" if self.helper else f"task {self.pid}"


def plan(entries, zombies: dict[int, int], subreapers: set[int], pid_free,
         siblings_may_fork=lambda: False) -> list[Node]:
    """The pstree nodes of the restore graph (entries: validated, parents
    first). `siblings_may_fork()`, asked once the tree is found sound: every
    task in the same namespaces, so a child may be forked by a sibling."""
    p = _Planner(entries, zombies, subreapers, pid_free)
    p.check()
    p.births()
    p.groups()
    if siblings_may_fork():
        p.sibling_forks()
    return p.nodes()


class _Planner:
    def __init__(self, entries, zombies, subreapers, pid_free):
        self.entries = entries
        self.root = entries[0]
        self.by_pid = {e.pid: e for e in entries}
        self.kids: dict[int, list] = {}
        for e in entries[1:]:
            self.kids.setdefault(e.ppid, []).append(e)
        self.procs = {e.pid: Proc(pid=e.pid, sid=e.sid, pgid=e.pgid, forker=e.ppid or None,
                                  index=i, zombie=zombies.get(e.pid),
                                  subreaper=e.pid in subreapers and e.pid not in zombies)
                      for i, e in enumerate(entries)}
        self.pid_free = pid_free
        self.taken = set(self.by_pid) | {e.sid for e in entries} | {e.pgid for e in entries}
        self.next_free = min(self.by_pid) - 1

    def refuse(self, pid: int, why: str):
        proc = self.procs[pid]
        return PlanError(f"pstree.img: entry {proc.index}: task {pid}: {why}")

    # --- consistency: what no history of fork/setsid/setpgid/exit makes ----

    def check(self) -> None:
        group_sid: dict[int, tuple[int, int]] = {}
        for e in self.entries:
            if e.sid == e.pid and e.pgid != e.pid:
                raise self.refuse(e.pid, f"leads session {e.sid} but is in group {e.pgid} "
                                  "(a session leader cannot leave its group)")
            leader = self.by_pid.get(e.sid)
            if leader is not None and leader.sid != e.sid:
                raise self.refuse(e.pid, f"is in session {e.sid}, whose leader {e.sid} is in "
                                  f"session {leader.sid}")
            first = group_sid.setdefault(e.pgid, (e.sid, e.pid))
            if first[0] != e.sid:
                raise self.refuse(e.pid, f"is in group {e.pgid} of session {first[0]} "
                                  f"(as task {first[1]}), but in session {e.sid}")
        for g, (sid, member) in group_sid.items():
            leader = self.by_pid.get(g)
            if leader is not None and leader.sid != sid:
                raise self.refuse(member, f"group {g} is in session {sid}, its leader {g} "
                                  f"in session {leader.sid}")
            if g != sid and any(e.sid == g for e in self.entries):
                raise self.refuse(member, f"group {g} is in session {sid}, but there is a "
                                  f"session {g}: group {g} can only be in it")

    # --- births -------------------------------------------------------------

    def _need(self, e, born) -> int | None:
        """The session `e` must be born in: its own unless it leads one."""
        return e.sid if e.sid != e.pid else born.get(e.pid)

    def births(self) -> None:
        """Children before parents: the session each task must be born in
        (CRIU's born_sid), then for each child who forks it."""
        born: dict[int, int | None] = {}
        used_sessions: set[int] = set()
        for e in reversed(self.entries):
            kids = self.kids.get(e.pid, [])
            needs = {c.pid: self._need(c, born) for c in kids}
            wants = sorted({w for w in needs.values() if w is not None and w != e.sid})
            helpers, direct = {}, []
            for w in wants:
                h = self._helper_for(e, w, [c for c in kids if needs[c.pid] == w],
                                     used_sessions)
                if h is None:
                    direct.append(w)
                else:
                    helpers[w] = h
            if len(direct) > 1 or (direct and (e.sid != e.pid or e is self.root)):
                raise self.refuse(e.pid, f"children in sessions {direct} cannot all be born "
                                  "under it, and no helper task can give them (it is no "
                                  "child subreaper, or no task of those sessions is "
                                  "under it)")
            born[e.pid] = direct[0] if direct else None
            for c in kids:
                w = needs[c.pid]
                if w is None or w == e.sid:
                    continue
                if w == born[e.pid]:
                    self.procs[c.pid].early = True
                    continue
                helper = helpers[w]
                if helper.pid not in self.procs:
                    self.procs[helper.pid] = helper
                    if helper.helper == "session":
                        used_sessions.add(helper.pid)
                # The parent must be a subreaper again before the forker dies.
                helper.reaper = e.pid
                self.procs[c.pid].forker = helper.pid

    def _helper_for(self, parent, session: int, kids, used_sessions) -> Proc | None:
        """Who can fork `kids` into `session` and leave them to `parent` when
        it exits: a zombie-to-be of that session (it forks them, then dies,
        as it most likely did), a helper with the session's pid, or a helper
        forked by a task of the session; None when nobody can. A forker
        under a subreaper closer than `parent` will do too, when that one
        gets its flag only after the forker died (it became a subreaper
        after the orphaning): preferred last."""
        if parent.pid not in self.procs or not self.procs[parent.pid].subreaper:
            return None
        if session not in self.by_pid and session not in used_sessions:
            if self.pid_free(session):
                return Proc(pid=session, sid=session, pgid=session, forker=parent.pid,
                            helper="session", leads=True)
        for late in (False, True):
            for e in self.entries:
                proc = self.procs[e.pid]
                if (e.sid != session or e.pid == parent.pid
                        or any(self._descends(e.pid, k.pid) for k in kids)):
                    continue
                # A dying task's orphans go to a subreaper above it, never
                # itself; a helper's go to its forker first.
                path = self._subreapers_up_to(e.ppid if proc.zombie is not None else e.pid,
                                              parent.pid)
                if path is None or (path and not late):
                    continue
                if proc.zombie is None:
                    proc = Proc(pid=self._free_pid(), sid=session, pgid=None, forker=e.pid,
                                helper="fresh")
                proc.bypass += path
                return proc
        return None

    def _subreapers_up_to(self, pid: int, reaper: int) -> list[int] | None:
        """The subreapers met from `pid` up before `reaper`, which orphans of
        a child of `pid` would go to first (kernel/exit.c: find_new_reaper);
        None when `reaper` is no ancestor."""
        met = []
        while pid:
            if pid == reaper:
                return met
            if self.procs[pid].subreaper:
                met.append(pid)
            pid = self.by_pid[pid].ppid
        return None

    def _descends(self, pid: int, ancestor: int) -> bool:
        while pid:
            if pid == ancestor:
                return True
            pid = self.by_pid[pid].ppid
        return False

    def _free_pid(self) -> int:
        """A pid for a fresh helper: below the tree's, which the kernel's pid
        counter has passed, so nothing new takes it meanwhile."""
        while self.next_free > RESERVED_PIDS:
            pid, self.next_free = self.next_free, self.next_free - 1
            if pid not in self.taken and pid not in self.procs and self.pid_free(pid):
                return pid
        raise PlanError("pstree.img: no free pid for a helper task")

    # --- groups -------------------------------------------------------------

    def groups(self) -> None:
        members: dict[int, list[Proc]] = {}
        for e in self.entries:
            members.setdefault(e.pgid, []).append(self.procs[e.pid])
            if e.pgid != e.pid:
                self.procs[e.pid].joins = True
        for g, ms in members.items():
            if g in self.by_pid:
                leader = self.procs[g]
                leader.leads = True
                if leader.pgid != g:
                    # It left: it makes the group, a member comes in, then it
                    # goes. When every member left a group of its own too
                    # (leaders that swapped groups), a helper born in the
                    # group keeps it until they are all in: another member
                    # kept it once, and left.
                    stays = [m for m in ms if not self._leaves(m)]
                    if not stays:
                        keeper = Proc(pid=self._free_pid(), sid=leader.sid, pgid=g,
                                      forker=leader.pid, helper="keeper")
                        self.procs[keeper.pid] = keeper
                        stays = [keeper]
                    leader.keeper = stays[0].pid
            elif g in self.procs:
                pass                        # the session helper with that pid makes it
            elif g == self.root.pgid and self.root.sid != self.root.pid:
                pass                        # the caller's group, inherited (--shell-job)
            elif self.pid_free(g):
                forker = ([m for m in ms if m.zombie is None] or ms)[0]
                self.procs[g] = Proc(pid=g, sid=forker.sid, pgid=g, forker=forker.pid,
                                     helper="group", leads=True)
            else:
                raise self.refuse(ms[0].pid, f"group {g} has no leader in the tree and pid "
                                  f"{g} is in use: no helper can make it")

    def _leaves(self, proc: Proc) -> bool:
        return proc.pgid != proc.pid and any(e.pgid == proc.pid for e in self.entries)

    # --- forks by siblings -------------------------------------------------

    def sibling_forks(self) -> None:
        """A parent with many children forks the first and half of the rest;
        the first forks the other half with CLONE_PARENT (their parent is
        still the parent) at the same time, on another CPU. It does so
        before its own setsid or setpgid, so each is born in the session the
        parent gives it; the namespaces it may join first are theirs too
        (siblings_may_fork). Only plain children (not forked early, not
        helpers, not zombies) of a parent that stays."""
        kids: dict[int, list[Proc]] = {}
        for proc in self.procs.values():
            if proc.forker is not None and not (proc.early or proc.exits):
                kids.setdefault(proc.forker, []).append(proc)
        for forker, plain in kids.items():
            if self.procs[forker].exits or len(plain) < SIBLING_FORKS_FROM:
                continue
            for proc in plain[2::2]:
                proc.by_sibling = plain[0].pid

    # --- nodes --------------------------------------------------------------

    def nodes(self) -> list[Node]:
        procs = list(self.procs.values())
        out: dict[str, Node] = {}

        def add(kind, proc, where_pid, after, label):
            key = f"pstree:{kind}:{proc.pid}"
            provides = []
            if kind == "fork":
                # The task exists; it is born in the pid namespace whoever
                # provides ("pidns", pid) made ready in its forker.
                provides, after = [("task", proc.pid)], after + [("pidns", proc.pid)]
                if where_pid is not None and where_pid == proc.forker and not proc.early:
                    # A child inherits its forker's controlling terminal at
                    # birth only (no later call gives it one): after whoever
                    # provides ("ctty", forker) made it. (A sibling's forks
                    # come after its own fork, which came after this.)
                    after.append(("ctty", where_pid))
            elif kind == "ids" and proc.leads:
                # Its session or group exists from here on (a terminal's
                # controlling session, foreground group).
                provides = [("group", proc.pid)]
                if proc.sid == proc.pid:
                    provides.append(("session", proc.pid))
            out[key] = Node(key=key, plugin="pstree", where="engine" if where_pid is None
                            else "task", pid=where_pid, data=proc, after=after,
                            provides=provides, label=label)

        sibling_forks: dict[int, list[str]] = {}     # sibling -> the forks it does
        for proc in procs:
            if proc.by_sibling is not None:
                sibling_forks.setdefault(proc.by_sibling, []).append(f"pstree:fork:{proc.pid}")
        for proc in procs:
            f = proc.forker
            if f is None:
                add("fork", proc, None, [], f"fork {proc}")
            elif proc.early:
                add("fork", proc, f, [f"pstree:fork:{f}"],
                    f"fork {proc} from {f} (before its setsid)")
            elif proc.by_sibling is not None:
                add("fork", proc, proc.by_sibling, [f"pstree:fork:{proc.by_sibling}"],
                    f"fork {proc} from {f} by its sibling {proc.by_sibling} (CLONE_PARENT)")
            else:
                add("fork", proc, f, [f"pstree:ids:{f}"], f"fork {proc} from {f}")
            if proc.pid in sibling_forks:
                # Its parent replies at once: it starts its forks meanwhile.
                out[f"pstree:fork:{proc.pid}"].yields = True
            early = [f"pstree:fork:{c.pid}" for c in procs if c.forker == proc.pid and c.early]
            early += sibling_forks.get(proc.pid, [])
            what = []
            if proc.leads:
                what.append(f"session {proc.pid}" if proc.sid == proc.pid
                            else f"group {proc.pid}")
            add("ids", proc, proc.pid, [f"pstree:fork:{proc.pid}"] + early,
                f"{', '.join(what) or 'session ' + str(proc.sid) + ' from birth'} in {proc}")
        for proc in procs:
            if proc.subreaper:
                # Its own node: a forker whose orphans must pass it by dies
                # first (and the node waits until it is dead: exit is async).
                proc.after_deaths = [f.pid for f in procs if proc.pid in f.bypass]
                add("reaper", proc, proc.pid, [f"pstree:ids:{proc.pid}"]
                    + [f"pstree:exit:{f}" for f in proc.after_deaths],
                    f"{proc} becomes a child subreaper"
                    + (f" once {proc.after_deaths} died" if proc.after_deaths else ""))
        for proc in procs:
            if proc.joins:
                after = [f"pstree:ids:{proc.pid}"]
                maker = self.procs.get(proc.pgid)
                if maker is not None and maker is not proc:
                    after.append(f"pstree:ids:{maker.pid}")
                if proc.keeper is not None:
                    kept = "ids" if self.procs[proc.keeper].helper else "join"
                    after.append(f"pstree:{kept}:{proc.keeper}")
                add("join", proc, proc.pid, after, f"{proc} joins group {proc.pgid}")
        for proc in procs:
            if proc.helper:
                add("reap", proc, proc.forker, [f"pstree:exit:{proc.pid}"],
                    f"{proc.forker} reaps {proc}")
        for proc in procs:
            if not proc.exits:
                continue
            # Last in its task: after everything it does, forks and reaps.
            after = [k for k, n in out.items() if n.pid == proc.pid]
            if proc.helper and proc.pgid is not None:
                # The group it made or keeps must outlive the last member's join.
                after += [k for k, n in out.items()
                          if k.startswith("pstree:join:") and n.data.pgid == proc.pgid]
            if proc.reaper is not None:
                after.append(f"pstree:reaper:{proc.reaper}")
            add("exit", proc, proc.pid, after,
                f"{proc} exits" + (" (zombie)" if proc.zombie is not None else ""))
        self._check_order(out)
        return list(out.values())

    def _check_order(self, nodes: dict[str, Node]) -> None:
        ts = graphlib.TopologicalSorter({k: [a for a in n.after if isinstance(a, str)]
                                         for k, n in nodes.items()})
        try:
            ts.prepare()
        except graphlib.CycleError as e:
            cycle = e.args[1]
            first = next((nodes[k].data for k in cycle if not nodes[k].data.helper),
                         nodes[cycle[0]].data)
            raise PlanError(f"pstree.img: entry {first.index}: {first}: its sessions and "
                            "groups cannot be made in any order: "
                            + " => ".join(str(nodes[k]) for k in cycle)) from None

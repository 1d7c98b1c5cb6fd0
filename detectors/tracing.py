"""Loops traced to their parent result, wherever their statements ran.

An N+1 is a loop over the rows of one earlier result: each iteration's statement carries a key that
result returned (an owner id, a row to update). Traced by those keys (keyed hashes of values, never the
values), a loop is found across the unit boundaries that hide it otherwise: one transaction per
iteration (an ORM's save()), a pooled connection handed back between iterations (a job loop), or the
iterations spread over a pool's connections at once (Promise.all, asyncio.gather).

Pure bookkeeping over statements: the pipeline feeds it each statement with the keys it carries (its
tenant values left out: every statement of a tenant shares those) and asks, as time passes, for the
groups that are complete. What it holds is bounded in bytes (``LoopMemory``); past the bound new
parents and iterations are not followed, and counted.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

from detectors.fingerprint import Fingerprint
from detectors.units import HASH_BYTES, Statement

WINDOW_S = 10.0  # a parent's keys are followed this long after it ran
QUIET_S = 1.0  # a group is judged once no iteration has come for this long
# Outside the parent's own piece of work (another connection of the pool, or the same connection after a
# pool reset), each iteration must start this soon after the parent or the loop's previous iteration
FANOUT_S = 1.0
MIN_PARENT_ROWS = 3
MIN_KEYS = 3  # distinct keys from the parent: one value shared by all iterations proves nothing
MIN_KEYS_OUTSIDE = 5  # ... and more for iterations outside its piece of work, where requests could mix
MAX_PARENTS = 512  # per application and database
MAX_GROUPS = 2048
KEPT_CHILDREN = 64  # iterations a group keeps as examples (all are counted)
KEPT_KEYS = 256
PARENT_BYTES = 400  # a parent's record and its index entries beyond its hashes
GROUP_BYTES = 600


class LoopMemory:
    """The bytes the loop trackers (this one and ``detectors.bursts``) hold, under one limit."""

    def __init__(self, limit: int):
        self.limit = limit
        self.used = 0
        self.evicted = 0  # parents, iterations or bursts not followed for want of room

    def take(self, n: int) -> bool:
        if self.used + n > self.limit:
            self.evicted += 1
            return False
        self.used += n
        return True

    def give(self, n: int) -> None:
        self.used -= n


@dataclass(slots=True)
class Parent:
    seq: int
    fp: Fingerprint
    conn_id: int
    run: int
    started_at: float
    end: float
    rows: int  # result rows hashed
    truncated: bool  # it returned more rows than were hashed: some iterations' keys cannot be traced
    hashes: frozenset
    # the keys of its own rows: a loop that writes per row (an UPDATE, an INSERT about each row) uses
    # these, not the rows' references to other tables (the owner of each contact)
    own: frozenset
    # table -> the values of its columns that name that table's rows (contacts.owner_id names users), and
    # the values of columns the catalog could not place; None when nothing was placed
    named: dict | None = None
    unplaced: frozenset = frozenset()
    own_tables: frozenset = frozenset()  # the tables its own keys are of (contacts for contacts.id)
    cost: int = 0

    def holds(self, key: str, table: str | None, write: bool) -> bool:
        """Whether a statement's key for ``table``'s rows (None: unknown) is one of this result's keys: the
        same value naming the same table's rows (small ids of different tables are equal by chance). A
        write must use a key of the result's own rows."""
        if key not in (self.own if write else self.hashes):
            return False
        if table is None or self.named is None:
            return True
        if write and self.own_tables and table not in self.own_tables:
            return False
        return key in self.named.get(table, ()) or key in self.unplaced


@dataclass(slots=True)
class Group:
    parent: Parent
    fp_id: str
    children: list[Statement] = field(default_factory=list)  # the first KEPT_CHILDREN iterations
    count: int = 0  # iterations
    round_trips: int = 0  # iterations not pipelined behind another
    keys: set = field(default_factory=set)  # per iteration, the set of its keys the parent returned
    last_at: float = 0.0
    last_end: float = 0.0
    inside: bool = True  # every iteration ran in the parent's piece of work (its connection's run)
    connections: set = field(default_factory=set)
    transactions: set = field(default_factory=set)
    cost: int = GROUP_BYTES

    @property
    def min_keys(self) -> int:
        return MIN_KEYS if self.inside else MIN_KEYS_OUTSIDE


class Tracer:
    def __init__(self, memory: LoopMemory | None = None) -> None:
        self.memory = memory or LoopMemory(16 << 20)
        # (database, application) -> seq -> Parent, oldest first; and hash -> seqs of the parents holding it
        self._parents: dict[tuple[str, str], OrderedDict[int, Parent]] = {}
        self._index: dict[tuple[str, str], dict[str, list[int]]] = {}
        self._groups: dict[tuple[int, str], Group] = {}
        # (database, application, shape) -> the latest group whose parent was cut short: its later
        # iterations carry keys past the hashed rows
        self._open: dict[tuple[str, str, str], Group] = {}
        self._seq = 0

    def observe(self, stmt: Statement, keys: tuple[str, ...], hashes: tuple | None = None,
                previous: Callable[[Statement], Statement | None] | None = None,
                tables: tuple[str | None, ...] | None = None) -> None:
        """``stmt`` as a possible iteration (its ``keys``, each naming a row of ``tables``, None where
        unknown), then as a possible parent: ``hashes``, the values of its result rows that could key a
        loop (its tenant column's left out), those of them that are keys of its own rows, and per table the
        values naming its rows (see Parent); by default all of them, unplaced. ``previous(stmt)``: what
        its connection ran before it in the same piece of work (asked only when it matters)."""
        ev = stmt.event
        where = (ev.database, ev.application_name)
        now = ev.started_at
        if keys and (where in self._index or self._open):
            self._child(stmt, keys, tables or (None,) * len(keys), where, now, previous or (lambda _s: None))
        if len(ev.result_hashes) >= MIN_PARENT_ROWS and ev.sqlstate is None:
            if hashes is None:
                every = frozenset(h for row in ev.result_hashes for h in row if h is not None)
                hashes = (every, every, None, frozenset(), frozenset())
            self._parent(stmt, hashes, where, now)

    def _admits(self, p: Parent, stmt: Statement, group: Group | None, previous, now: float) -> bool | None:
        """Whether ``stmt`` may be an iteration of a loop over ``p``: True inside the parent's piece of
        work, False outside it, None not at all."""
        if p.conn_id == stmt.event.conn_id and p.run == stmt.run:
            return True
        # outside the parent's piece of work, an iteration is all its connection is doing (a statement after
        # the connection's own request work is that request's), and follows the parent or the loop's
        # previous iteration closely
        before = previous(stmt)
        if before is not None and before.loop != p.seq:
            return None
        since = group.last_end if group is not None else p.end
        return False if now - since <= FANOUT_S else None

    def _child(self, stmt: Statement, keys: tuple[str, ...], tables: tuple, where: tuple[str, str], now: float,
               previous) -> None:
        index = self._index.get(where)
        parents = self._parents.get(where)
        groups = self._groups
        fp_id = stmt.fp.id
        write = stmt.fp.kind != "SELECT"
        best: Parent | None = None
        inside = False
        for key, table in zip(keys, tables, strict=False) if index else ():
            for seq in index.get(key, ()):
                p = parents.get(seq)
                if p is None or (best is not None and p.seq <= best.seq) or now - p.started_at > WINDOW_S \
                        or p.started_at >= now or not p.holds(key, table, write):
                    continue
                admitted = self._admits(p, stmt, groups.get((p.seq, fp_id)), previous, now)
                if admitted is not None:
                    best, inside = p, admitted
        if best is None:
            # past the hashed rows of a parent cut short, the same shape goes on in the same rhythm
            group = self._open.get((*where, fp_id))
            if group is None or self._admits(group.parent, stmt, group, previous, now) is None \
                    or now - group.last_end > FANOUT_S:
                return
            self._add(group, stmt, None, group.inside and group.parent.conn_id == stmt.event.conn_id
                      and group.parent.run == stmt.run)
            return
        group = groups.get((best.seq, fp_id))
        if group is None:
            cost = GROUP_BYTES + stmt.fp.size
            if len(groups) >= MAX_GROUPS or not self.memory.take(cost):
                return
            group = groups[(best.seq, fp_id)] = Group(best, fp_id, cost=cost)
            if best.truncated:
                self._open[(*where, fp_id)] = group
        self._add(group, stmt, frozenset(k for k, t in zip(keys, tables, strict=False) if best.holds(k, t, write)),
                  inside)

    def _add(self, group: Group, stmt: Statement, matched: frozenset | None, inside: bool) -> None:
        ev = stmt.event
        if len(group.children) < KEPT_CHILDREN:
            cost = stmt.cost
            if not self.memory.take(cost):
                return
            group.children.append(stmt)
            group.cost += cost
        group.count += 1
        if not ev.pipelined:
            group.round_trips += 1
        if matched is not None and len(group.keys) < KEPT_KEYS:
            group.keys.add(matched)
        group.last_at = ev.started_at
        group.last_end = max(group.last_end, stmt.end)
        group.inside = group.inside and inside
        if len(group.connections) < 64:
            group.connections.add(ev.conn_id)
        if stmt.tx and len(group.transactions) < KEPT_KEYS:
            group.transactions.add((ev.conn_id, stmt.tx))
        stmt.traced = True
        stmt.loop = group.parent.seq

    def _parent(self, stmt: Statement, hashes: tuple, where: tuple[str, str], now: float) -> None:
        every, own, named, unplaced, own_tables = hashes
        if len(every) < MIN_PARENT_ROWS:
            return
        # (its shape is charged too: the caches may drop it while the parent keeps it)
        held = len(own) if own is not every else 0
        held += sum(map(len, named.values())) if named else 0
        cost = PARENT_BYTES + stmt.fp.size + HASH_BYTES * (2 * len(every) + held + len(unplaced))
        if not self.memory.take(cost):
            return
        ev = stmt.event
        self._seq += 1
        parent = Parent(self._seq, stmt.fp, ev.conn_id, stmt.run, ev.started_at, stmt.end, len(ev.result_hashes),
                        (ev.rows or 0) > len(ev.result_hashes), every, own, named, unplaced, own_tables, cost)
        parents = self._parents.setdefault(where, OrderedDict())
        index = self._index.setdefault(where, {})
        parents[parent.seq] = parent
        for h in every:
            index.setdefault(h, []).append(parent.seq)
        while parents and (len(parents) > MAX_PARENTS or now - next(iter(parents.values())).started_at > WINDOW_S):
            self._forget(where, parents.popitem(last=False)[1])

    def _forget(self, where: tuple[str, str], parent: Parent) -> None:
        index = self._index[where]
        for h in parent.hashes:
            seqs = index.get(h)
            if seqs is not None:
                try:
                    seqs.remove(parent.seq)
                except ValueError:
                    pass
                if not seqs:
                    del index[h]
        self.memory.give(parent.cost)

    def expire(self, now: float) -> None:
        """Forget parents past their window in applications that have gone quiet."""
        for where, parents in list(self._parents.items()):
            while parents and now - next(iter(parents.values())).started_at > WINDOW_S:
                self._forget(where, parents.popitem(last=False)[1])
            if not parents:
                del self._parents[where]
                self._index.pop(where, None)

    def due(self, now: float, final: bool = False, closed: int | None = None) -> list[list[Group]]:
        """Complete groups (quiet for QUIET_S, or all at the end; with ``closed``, those that ran all on
        that connection, which ended), the groups of one parent together."""
        done = [k for k, g in self._groups.items()
                if final or now - g.last_at >= QUIET_S or (g.inside and g.parent.conn_id == closed)]
        by_parent: dict[int, list[Group]] = {}
        for k in done:
            group = self._groups.pop(k)
            self.memory.give(group.cost)
            by_parent.setdefault(group.parent.seq, []).append(group)
        if done:
            self._open = {k: g for k, g in self._open.items() if (g.parent.seq, g.fp_id) in self._groups}
        if final:
            self.expire(float("inf"))
        elif closed is None:
            self.expire(now)
        return list(by_parent.values())

    def __len__(self) -> int:
        return sum(len(p) for p in self._parents.values())

"""The tenant check: which tenant tables a statement can reach beyond one tenant, and how badly.

The seeds' risk (seed 002) is a statement that can see or change several tenants' rows (``SELECT * FROM
leads``, an aggregate without ``team_id``) and an id taken from the request with no tenant check. What
ORMs send all day is neither: a row fetched or saved by its primary key after a tenant-filtered query
returned that key, a relation joined along a foreign key from a tenant-filtered table, a login lookup by
a unique token. So, per tenant table instance of the statement:

- pinned to a tenant (= / IN / ANY on its tenant column, or joined on it, or joined by a unique key to a
  pinned instance, either way round): fine;
- pinned by one of its unique keys (at most one row per key): fine when each key came from a tenant-checked
  result or statement (``Provenance``: keyed hashes the session and its application saw); a lookup by a
  unique key that is not the primary key (a session token, an API key: a login) is fine too; a primary key
  from nowhere is the request's id with no tenant check: a warning for a read, an error for a write;
- neither: it reaches every tenant's rows: an error for a read, critical for a write.

Row-level security on every table concerned lowers each by one. ``[detectors] tenant_free`` names tables
(or table.column lookups) a team declares tenant-free.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

from detectors.config import DetectorConfig
from detectors.fingerprint import Fingerprint
from detectors.rules import Occurrence, lower
from detectors.schema import ANY, Schema
from detectors.units import Statement

UNPINNED, BY_KEY, BY_LOOKUP = "unpinned", "key", "lookup"

# (table, tenant column, rls, how, key columns, the table whose rows the key values name)
Gap = tuple[str, str, bool, str, tuple[str, ...], str]


def tenant_gaps(fp: Fingerprint, schema: Schema, config: DetectorConfig) -> list[Gap]:
    """Tenant tables the statement does not pin to a tenant, memoized per shape and catalog snapshot."""
    return schema.remember(("tenant", fp.id, config.tenant_columns, config.tenant_free),
                           lambda: _gaps(fp, schema, config))


def _free(config: DetectorConfig, table: str, pinned: set[str]) -> bool:
    free = config.tenant_free
    return bool(free) and (table in free or any(f"{table}.{c}" in free for c in pinned))


def _gaps(fp: Fingerprint, schema: Schema, config: DetectorConfig) -> list[Gap]:
    names = config.tenant_columns
    if fp.kind == "INSERT":
        if not fp.insert_columns:
            return []
        gaps = []
        for t in fp.tables[:1]:
            table = schema.get(t)
            col = table.tenant_column(names) if table else None
            if col and col not in fp.insert_columns and not _free(config, t, set()):
                gaps.append((t, col, table.rls, UNPINNED, (), t))
        return gaps
    scopes = fp.filter_scopes
    views = [_ScopeView(sc, schema, names) for sc in scopes]
    # A derived table (a subquery in FROM) whose own conditions pin every tenant table in it is a pinned
    # row source: joining a table to it by a unique key pins that table (users JOIN (team-filtered
    # counts) ON users.id = counts.user_id). Children come first in traverse order.
    self_pinned = [False] * len(scopes)
    for i, view in enumerate(views):
        derived = {alias for alias, child in view.sc.derived if self_pinned[child]}
        pinned = view.pin(derived, set(), set(), set())
        inner = all(self_pinned[child] for _a, child in view.sc.derived)
        self_pinned[i] = inner and (bool(view.instances) or bool(view.sc.derived)) and \
            all(a in pinned for a in view.instances)
    external: list[set[str]] = [set() for _ in scopes]
    pinned_refs: list[set[tuple[str, str]]] = [set() for _ in scopes]  # (alias, tenant column) pinned here or above
    pinned_above: list[set[str]] = [set() for _ in scopes]  # aliases of pinned tenant instances here or above
    gaps: dict[str, Gap] = {}
    for i in reversed(range(len(scopes))):  # traverse order puts children first: walk from the root down
        view = views[i]
        sc = view.sc
        enclosing = sc.parent is not None and sc.parent > i
        outer = pinned_refs[sc.parent] if enclosing else set()
        outer_aliases = pinned_above[sc.parent] if enclosing else set()
        derived = {alias for alias, child in sc.derived if self_pinned[child]}
        pinned = view.pin(derived, external[i], outer, outer_aliases)
        instances = view.instances
        pinned_refs[i] = outer | {(a, instances[a][1]) for a in pinned if a in instances}
        pinned_above[i] = (outer_aliases - set(view.tables)) | {a for a in pinned if a in instances}
        for alias, child in sc.derived:  # an outer pin on a derived table's column reaches its tables
            for ref in sc.pins:
                if ref[0] in (alias, None):
                    external[child].add(ref[1])
            for x, y in sc.equalities:
                for p, q in ((x, y), (y, x)):
                    if p[0] == alias and any(a in pinned for a in view.owners(q)):
                        external[child].add(p[1])
        for a, (name, col, rls) in instances.items():
            if a in pinned or name in gaps:
                continue
            cols = view.columns_of(a)
            if _free(config, name, cols):
                continue
            table = view.tables[a]
            key = table.key_pinned(cols)
            # by a reference to a tenant table's row (an owner's activities): scoped to that row's tenant; a
            # reference to a table every tenant shares (a category) scopes nothing
            reference = next(((c, ref) for c, ref in table.foreign_keys if set(c) <= cols
                              and _tenant_table(schema, ref, names)), None) or next(
                (((c,), ref) for c in sorted(cols) if (ref := schema.names(table, c)) not in (None, name)
                 and (ref == ANY or _tenant_table(schema, ref, names))), None)
            if key is not None and (key == table.primary_key or fp.kind != "SELECT"):
                gaps[name] = (name, col, rls, BY_KEY, key, name)
            elif key is not None:  # a read by a unique key other than the primary key: a login lookup by token
                gaps[name] = (name, col, rls, BY_LOOKUP, key, name)
            elif reference is not None:
                # by a foreign key (an owner's activities): the rows of one referenced row, whose tenant the
                # key's provenance tells
                gaps[name] = (name, col, rls, BY_KEY, reference[0], reference[1])
            else:
                gaps[name] = (name, col, rls, UNPINNED, (), name)
    return list(gaps.values())


def _tenant_table(schema: Schema, name: str, names: tuple[str, ...]) -> bool:
    table = schema.get(name)
    return table is not None and table.tenant_column(names) is not None


class _ScopeView:
    """One scope's table instances resolved against the catalog, and how its conditions pin them."""

    def __init__(self, sc, schema: Schema, names: tuple[str, ...]):
        self.sc = sc
        self.tables: dict[str, object] = {}
        self.instances: dict[str, tuple[str, str, bool]] = {}  # alias -> (table, tenant column, rls)
        for alias, name in sc.tables:
            table = schema.get(name)
            if table is None:
                continue
            self.tables[alias] = table
            col = table.tenant_column(names)
            if col:
                self.instances[alias] = (name, col, table.rls)

    def owners(self, ref) -> list[str]:
        """The tenant instances ``ref`` (alias, column) is the tenant column of."""
        alias, column = ref
        instances = self.instances
        if alias is not None:
            return [alias] if alias in instances and instances[alias][1] == column else []
        return [a for a, (_, col, _) in instances.items() if col == column]

    def columns_of(self, alias: str) -> set[str]:
        return {c for a, c in self.sc.pins if a == alias or (a is None and len(self.tables) == 1)}

    def unique(self, alias: str | None, column: str) -> bool:
        if alias is None and len(self.tables) == 1:
            alias = next(iter(self.tables))
        table = self.tables.get(alias)
        return table is not None and table.key_pinned({column}) is not None

    def pin(self, derived: set[str], external: set[str], outer: set, outer_aliases: set[str]) -> set[str]:
        """The aliases pinned to one tenant: by the tenant column (= value, or joined to a pinned one's), by
        a unique-key join to a pinned row source either way round (a relation along a foreign key), or
        correlated with a pinned instance of an enclosing query. ``derived``: pinned derived tables."""
        sc = self.sc
        instances = self.instances
        pinned = {a for ref in sc.pins for a in self.owners(ref)} | derived
        for a, (_, col, _) in instances.items():
            if col in external and ("*" in sc.outputs or col in sc.outputs or not sc.outputs):
                pinned.add(a)
        for x, y in sc.equalities:  # correlated with the enclosing query
            for p, q in ((x, y), (y, x)):
                if p[0] in self.tables:
                    continue
                if p in outer:  # j.team_id = c.team_id with c pinned
                    pinned.update(self.owners(q))
                elif p[0] in outer_aliases and q[0] in instances and self.unique(q[0], q[1]):
                    pinned.add(q[0])  # owner.id = contacts.owner_id, contacts pinned (a lateral join)
        changed = True
        while changed:
            changed = False
            for x, y in sc.equalities:
                # a join on the tenant column to a pinned instance pins the other side
                linked = self.owners(x) + self.owners(y)
                if self.owners(x) and self.owners(y) and any(a in pinned for a in linked):
                    for a in linked:
                        if a not in pinned:
                            pinned.add(a)
                            changed = True
                # a join by a unique key, either way round, ties each row to a pinned row source's row
                # (select_related, joinedload, Drizzle's with:, TypeORM relations)
                for (pa, pc), (qa, qc) in ((x, y), (y, x)):
                    if pa in pinned and qa in instances and qa not in pinned and \
                            (self.unique(qa, qc) or self.unique(pa, pc)):
                        pinned.add(qa)
                        changed = True
        return pinned


KnownKeys = Callable[[Statement, str, tuple[str, ...], str], bool | None]
# Whose rows a read by a key of unknown provenance returned: FIRST (the piece of work had used no tenant
# yet), SAME (the tenant it was working for), OTHER, or None (cannot tell). FIRST and OTHER are decided
# by what follows: the load of the signed-in user by the id its session holds is followed by work for
# that user's tenant; an id from the request is not.
RowsTenant = Callable[[Statement, str], str | None]
FIRST, SAME, OTHER = "first", "same", "other"


def cross_tenant(s: Statement, schema: Schema, config: DetectorConfig, known: KnownKeys | None = None,
                 rows: RowsTenant | None = None) -> list[Occurrence]:
    """``known(statement, table, key columns, named table)``: True when the statement's values for the
    table's key columns came from a tenant-checked result or statement as keys of the named table, False
    when they did not, None when they cannot be read. A read by such a key is then judged by the rows it
    returned (``rows``): another tenant's row than the piece of work's is a warning; the first tenant row
    of a piece of work (the signed-in user, loaded by the id its session holds) or one of its own tenant
    is fine once what follows works for that row's tenant; when it cannot be told, an info."""
    fp = s.fp
    if fp.kind not in ("SELECT", "INSERT", "UPDATE", "DELETE") or not schema.loaded or s.event.sqlstate:
        return []
    gaps = tenant_gaps(fp, schema, config)
    if not gaps:
        return []
    reached = [g for g in gaps if g[3] == UNPINNED]
    by_key = [g for g in gaps if g[3] == BY_KEY and (known is None or known(s, g[0], g[4], g[5]) is False)]
    read = fp.kind == "SELECT"
    unsure = False
    pending = None
    if by_key and read and rows is not None and not reached:
        verdicts = [rows(s, g[0]) for g in by_key]
        for verdict in (OTHER, FIRST):
            if verdict in verdicts:
                by_key = [g for g, v in zip(by_key, verdicts, strict=True) if v == verdict]
                pending = verdict
                break
        else:
            by_key = [g for g, v in zip(by_key, verdicts, strict=True) if v is None]
            unsure = True
    if not reached and not by_key:
        return []
    write = fp.kind in ("UPDATE", "DELETE")
    if reached:
        concern = reached
        severity = {"SELECT": "error", "UPDATE": "critical", "DELETE": "critical", "INSERT": "warning"}[fp.kind]
        what = ", ".join(f"{t}.{c}" for t, c, *_ in concern)
        message = f"{fp.kind} on tenant data without a tenant filter on {what}"
    else:
        concern = by_key
        severity = "error" if write else "info" if unsure else "warning"
        what = ", ".join(f"{t} by {'/'.join(k)}" for t, _c, _r, _h, k, _e in concern)
        message = (f"{fp.kind} of {what} with a key that no tenant-checked query returned: an id taken from the "
                   f"request with no tenant check")
        if pending == OTHER:
            message += "; it returned another tenant's row than the one its piece of work was using"
        elif pending == FIRST:
            message += "; nothing after it worked for that row's tenant (as after loading the signed-in user)"
    if all(g[2] for g in concern):
        severity = lower(severity)
        message += " (row-level security is on)"
    if fp.kind == "INSERT":
        fix = f"Set the tenant column on every row: add {', '.join(c for _, c, *_ in concern)} to the INSERT column list."
    else:
        fix = ("Constrain every tenant table to the caller's tenant: "
               + " AND ".join(f"{t}.{c} = $tenant" for t, c, *_ in concern)
               + " (or enable row-level security on these tables).")
    return [Occurrence(
        kind="cross_tenant", fingerprint=fp.id, severity=severity, confidence=0.9 if fp.parsed else 0.5,
        statements=[s], suggestion=fix, tables=fp.tables, example=fp.text, message=message,
        extra={"unfiltered": [f"{t}.{c}" for t, c, *_ in concern], **({"pending": pending} if pending else {})},
    )]


# ------------------------------------------------------------------ where keys came from

KEPT_PER_SESSION = 1024
KEPT_PER_APPLICATION = 8192
MAX_APPLICATIONS = 1024
ENTRY_BYTES = 200  # a key's slot: its hash, when it was seen, the tables it names (shared)
APPLICATION_WINDOW_S = 30.0  # a key returned on another connection of the application is trusted this long
FANOUT_S = 1.0  # a result cut short vouches for the keys of its table on the application's other connections this long


class Provenance:
    """Which rows the values tenant-checked statements returned or were given name: per keyed hash, the
    tables it is a key of (``contacts`` for contacts.id and for activities.contact_id), per connection
    and (recently) per application. A later statement may use those keys without a tenant filter of its
    own. Bounded by count; dropped with the connection."""

    def __init__(self, limit: int = 8 << 20) -> None:
        self.limit = limit  # bytes, at ENTRY_BYTES a key
        self.entries = 0
        self.evicted = 0  # sessions' keys dropped for want of room
        self._sessions: OrderedDict[int, OrderedDict[str, tuple[float, tuple]]] = OrderedDict()
        self._applications: dict[tuple[str, str], OrderedDict[str, tuple[float, tuple]]] = {}
        self._sets: dict = {}  # the few distinct sets of tables, shared by every key
        self._tenants: dict[int, tuple[int, set]] = {}  # conn -> (its piece of work, the tenant values it used)
        # tenant-checked tables whose rows were not all hashed: per connection, and per application
        self._truncated: dict[int, dict[str, float]] = {}
        self._app_truncated: dict[tuple[str, str], dict[str, float]] = {}

    def learn(self, s: Statement, keys, tables: tuple[str, ...], truncated: bool) -> None:
        """``keys``: (the table they are keys of, or ANY; their hashes)."""
        ev = s.event
        now = ev.started_at
        session = self._sessions.get(ev.conn_id)
        if session is None:
            session = self._sessions[ev.conn_id] = OrderedDict()
        where = (ev.database, ev.application_name)
        application = self._applications.get(where)
        if application is None:
            if len(self._applications) >= MAX_APPLICATIONS:
                self.entries -= len(self._applications.pop(next(iter(self._applications))))
            application = self._applications[where] = OrderedDict()
        sets = self._sets
        room = self.limit // ENTRY_BYTES
        caps = ((session, min(KEPT_PER_SESSION, room // 4)), (application, min(KEPT_PER_APPLICATION, room // 2)))
        for entity, hashes in keys:
            if entity is None:
                continue
            one = (entity,)
            one = sets.setdefault(one, one)
            for h in hashes:
                if h is None:
                    continue
                for memory, limit in caps:
                    old = memory.get(h)
                    if old is None:
                        memory[h] = (now, one)
                        self.entries += 1
                        if len(memory) > limit:  # the earliest learned go first (one seen again keeps its place)
                            memory.popitem(last=False)
                            self.entries -= 1
                    elif entity in old[1]:
                        memory[h] = (now, old[1])
                    else:
                        entities = (*old[1], entity)
                        memory[h] = (now, sets.setdefault(entities, entities) if len(sets) < 4096 else entities)
        while self.entries > room and len(self._sessions) > 1:
            self.entries -= len(self._sessions.popitem(last=False)[1])  # the oldest session's keys
            self.evicted += 1
        while self.entries > room and len(self._applications) > 1:
            self.entries -= len(self._applications.pop(next(iter(self._applications))))
            self.evicted += 1
        if truncated:
            marks = self._truncated.setdefault(ev.conn_id, {})
            shared = self._app_truncated.get(where)
            if shared is None:
                if len(self._app_truncated) >= MAX_APPLICATIONS:
                    del self._app_truncated[next(iter(self._app_truncated))]
                shared = self._app_truncated[where] = {}
            for t in tables:
                marks[t] = now
                shared[t] = s.end
                if len(shared) > KEPT_PER_SESSION:
                    shared.pop(next(iter(shared)))

    def known(self, s: Statement, hashes: list[str], table: str, schema: Schema) -> bool:
        ev = s.event
        session = self._sessions.get(ev.conn_id, {})
        application = self._applications.get((ev.database, ev.application_name), {})
        now = ev.started_at

        def vouched(h: str) -> bool:
            for memory, window in ((session, None), (application, APPLICATION_WINDOW_S)):
                seen = memory.get(h)
                if seen is not None and (window is None or now - seen[0] <= window) \
                        and (table == ANY or table in seen[1] or ANY in seen[1]):
                    return True
            return False

        if hashes and all(vouched(h) for h in hashes):
            return True
        # A tenant-checked result had more rows than were hashed: keys of its table, or of a table it refers
        # to (a page of contacts, then each contact's owner), are presumed to come from it, on its connection
        # for a while, on the application's others (a fan-out of the page's ids) just after it.
        for marks, window in ((self._truncated.get(ev.conn_id), APPLICATION_WINDOW_S),
                              (self._app_truncated.get((ev.database, ev.application_name)), FANOUT_S)):
            if not marks:
                continue
            for t, at in marks.items():
                if now - at > window:
                    continue
                if t == table or table == ANY:
                    return True
                referring = schema.get(t)
                if referring is not None and table in referring.references:
                    return True
        return False

    def note_tenants(self, s: Statement, hashes) -> None:
        """The tenant values a tenant-checked statement used or returned: what its piece of work is for."""
        ev = s.event
        run, seen = self._tenants.get(ev.conn_id, (None, None))
        if run != s.run or seen is None:
            seen = set()
            self._tenants[ev.conn_id] = (s.run, seen)
        if len(seen) < 64:
            seen.update(h for h in hashes if h)

    def tenants(self, s: Statement) -> set[str]:
        """The tenant values the statement's piece of work used before it."""
        run, seen = self._tenants.get(s.event.conn_id, (None, None))
        return seen if run == s.run and seen else set()

    def forget(self, conn_id: int) -> None:
        self.entries -= len(self._sessions.pop(conn_id, ()))
        self._truncated.pop(conn_id, None)
        self._tenants.pop(conn_id, None)

    @property
    def used(self) -> int:
        return self.entries * ENTRY_BYTES

    def __len__(self) -> int:
        return sum(map(len, self._sessions.values())) + sum(map(len, self._applications.values()))
